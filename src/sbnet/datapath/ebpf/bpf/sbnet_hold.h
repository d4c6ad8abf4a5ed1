/* The arrival hold of a live migration, as the reference switch's underlay filter (sbnet.datapath.holdfilter).
 *
 * While a VM migrates every host sends its traffic to both the source and the
 * destination.  Until the VM runs at the destination, what reaches the destination by a
 * tunnel for the VM's MAC is not delivered into its VIF; otherwise the VIF, which nobody
 * reads yet, keeps it, and the VM gets it on arrival, stale, as duplicates (and TCP
 * discards them by PAWS).  Unlike the reference switch's socket filter, the frame is
 * still switched: its megaflows and the kernel's connection entries are in place when
 * the VM's own traffic starts (the reference prewarms them instead).  The VIF's first
 * frame (the VM's announcement, an acknowledgement) releases the hold at once, in the
 * kernel, with no round trip to the slow path.
 */
#ifndef SBNET_HOLD_H
#define SBNET_HOLD_H

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, __u32);               /* the held VIF's ifindex */
	__type(value, struct sb_hold);
} holds SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, __u64);               /* the arriving VM's MAC */
	__type(value, __u32);             /* its VIF's ifindex (holds' key) */
} held_macs SEC(".maps");

/* A frame from a held VIF: the VM runs here now.  Every frame of a held port comes
 * here (the XDP program passes them to this one), so the first one is never missed.  The
 * MAC's entry stays until the hold goes (release()): the slow path, once it has sent the
 * VM's announcements, may keep what the old host relays from the VIF (HOLD_F_RELAY). */
static __always_inline void hold_release(struct sb_port *port, __u32 ifindex)
{
	struct sb_hold *h;
	struct sb_port_slot *ps = port_slot(ifindex);
	struct sb_port *hp = bpf_map_lookup_elem(&ports, &ifindex);

	/* Both copies (port is one of them): the slow path reads the hash's. */
	__sync_fetch_and_and(&port->flags, ~(__u32)PORT_F_HELD);
	if (ps)
		__sync_fetch_and_and(&ps->port.flags, ~(__u32)PORT_F_HELD);
	if (hp)
		__sync_fetch_and_and(&hp->flags, ~(__u32)PORT_F_HELD);
	h = bpf_map_lookup_elem(&holds, &ifindex);
	if (h && !h->released)
		h->released = bpf_ktime_get_ns();
}

static __always_inline __u64 mac_at(struct __sk_buff *skb, __u32 off)
{
	__u8 d[6];

	if (bpf_skb_load_bytes(skb, off, d, 6))
		return 0;
	return (__u64)d[0] << 40 | (__u64)d[1] << 32 | (__u64)d[2] << 24 | (__u64)d[3] << 16
	       | (__u64)d[4] << 8 | d[5];
}

/* A copy of the VM's floating-IP traffic the host it left relays (holdfilter.Relay): by
 * tunnel from that host, routed from its router's MAC, IPv4 from outside the router's
 * subnets. */
static __always_inline int hold_relayed(struct __sk_buff *skb, struct sb_hold *h, __u32 tun_src)
{
	__be16 proto;
	__be32 src;

	if (tun_src != h->relay_src || mac_at(skb, 6) != h->router_mac)
		return 0;
	if (bpf_skb_load_bytes(skb, 12, &proto, 2) || proto != bpf_htons(ETH_P_IP)
	    || bpf_skb_load_bytes(skb, 26, &src, 4))
		return 0;
	__u32 a = bpf_ntohl(src);
	for (int i = 0; i < MAX_INSIDE; i++) {
		if (i < h->n_inside && (a & h->inside[2 * i + 1]) == h->inside[2 * i])
			return 0;
	}
	return 1;
}

/* A tunnel frame: the held VIF its destination MAC is (0: none).  The frame goes through
 * the pipeline as any other (its megaflows are set up, its connection followed, as the
 * VM's traffic will need them once it runs here); only its copy for that VIF is not
 * sent (hold_skip).  After the VM's first frame, only what its old host relays. */
static __always_inline __u32 hold_target(struct __sk_buff *skb, __u32 tun_src)
{
	__u64 mac = mac_at(skb, 0);
	__u32 *ifindex;
	struct sb_hold *h;

	ifindex = bpf_map_lookup_elem(&held_macs, &mac);
	if (!ifindex)
		return 0;
	h = bpf_map_lookup_elem(&holds, ifindex);
	if (!h || (h->released && !((h->flags & HOLD_F_RELAY) && hold_relayed(skb, h, tun_src))))
		return 0;
	return *ifindex;
}

/* An output to the held VIF of the packet's destination: 1 when it is not to be sent. */
static __always_inline int hold_skip(__u32 held_out, __u32 ifindex)
{
	struct sb_hold *h;

	if (!held_out || ifindex != held_out)
		return 0;
	h = bpf_map_lookup_elem(&holds, &ifindex);
	if (h)
		__sync_fetch_and_add(&h->dropped, 1);
	return 1;
}

#endif
