/* The kernel tier's parser: the flow key with the reference parser's semantics (sbnet_dp.bpf.c includes it). */
#ifndef SBNET_PARSE_H
#define SBNET_PARSE_H

/* The kernel's checksum state of the packet, read through its sk_buff (CO-RE: only the
 * field's name is taken from here, its place from the kernel's BTF). */
struct sk_buff {
	__u8 ip_summed:2;
} __attribute__((preserve_access_index));
extern void *bpf_cast_to_kern_ctx(void *) __ksym;
#define CHECKSUM_PARTIAL 3

static __always_inline __u32 ip_summed(struct __sk_buff *ctx)
{
	struct sk_buff *skb = bpf_cast_to_kern_ctx(ctx);

	return BPF_CORE_READ_BITFIELD(skb, ip_summed);
}

/* The packet's L4 checksum is a partial one its sender left to the NIC: the bytes going up
 * hold the pseudo-header's sum there, not the checksum. */
static __always_inline int csum_partial(struct __sk_buff *ctx)
{
	return ip_summed(ctx) == CHECKSUM_PARTIAL;
}

static __always_inline __u64 mac48(const __u8 *m)
{
	return ((__u64)m[0] << 40) | ((__u64)m[1] << 32) | ((__u64)m[2] << 24) |
	       ((__u64)m[3] << 16) | ((__u64)m[4] << 8) | m[5];
}

static __always_inline __u64 be64(const __u8 *b)
{
	return ((__u64)b[0] << 56) | ((__u64)b[1] << 48) | ((__u64)b[2] << 40) |
	       ((__u64)b[3] << 32) | ((__u64)b[4] << 24) | ((__u64)b[5] << 16) |
	       ((__u64)b[6] << 8) | b[7];
}

/* Transport fields; returns 0, or -1 where the reference parser would flag an error. */
static __always_inline int parse_l4(struct __sk_buff *skb, struct sb_key *k, struct pkt *p,
				    int off, int end, __u8 proto, int v6)
{
	__u8 b[20];
	int size = end - off;

	if (proto == 6) {               /* TCP */
		if (size < 20 || bpf_skb_load_bytes(skb, off, b, 20))
			return -1;
		int doff = (b[12] >> 4) * 4;
		if (doff < 20 || doff > size)
			return -1;
		k->w[K_TP_SRC] = (b[0] << 8) | b[1];
		k->w[K_TP_DST] = (b[2] << 8) | b[3];
		k->w[K_TCP_FLAGS] = ((b[12] << 8) | b[13]) & 0x0FFF;
		p->l4 = off;
		p->l4proto = 6;
		return 0;
	}
	if (proto == 17 || proto == 132) {  /* UDP, SCTP */
		int need = proto == 17 ? 8 : 12;
		if (size < need || bpf_skb_load_bytes(skb, off, b, 4))
			return -1;
		k->w[K_TP_SRC] = (b[0] << 8) | b[1];
		k->w[K_TP_DST] = (b[2] << 8) | b[3];
		p->l4 = off;
		p->l4proto = proto;
		return 0;
	}
	if ((!v6 && (proto == 1 || proto == 2)) || (v6 && proto == 58)) {  /* ICMP, IGMP, ICMPv6 */
		if (size < 8 || bpf_skb_load_bytes(skb, off, b, 2))
			return -1;
		/* Neighbour discovery fills fields this key does not hold: the slow path parses it. */
		if (v6 && (b[0] == 135 || b[0] == 136) && b[1] == 0)
			return -1;
		k->w[K_TP_SRC] = b[0];
		k->w[K_TP_DST] = b[1];
		p->l4 = off;
		p->l4proto = v6 ? 58 : 0;
		return 0;
	}
	return 0;
}

/* The flow key of the packet, with the reference parser's semantics; -1: not parsed here. */
static __always_inline int parse(struct __sk_buff *skb, struct sb_key *k, struct pkt *p)
{
	__u8 b[40];
	int len = skb->len;
	int off = 14;
	__u16 et;

	p->l3 = -1;
	p->l4 = -1;
	p->ipv = 0;
	p->l4proto = 0;
	if (len < 14 || bpf_skb_load_bytes(skb, 0, b, 14))
		return -1;
	k->w[K_ETH_DST] = mac48(b);
	k->w[K_ETH_SRC] = mac48(b + 6);
	et = (b[12] << 8) | b[13];
	if (skb->vlan_present) {
		k->w[K_VLAN_TCI] = (skb->vlan_tci & 0xFFFF) | VLAN_CFI;
		k->w[K_VLAN_TPID] = bpf_ntohs(skb->vlan_proto);
		if (et == ETH_P_8021Q || et == ETH_P_8021AD)
			return -1;              /* a second tag: the slow path keeps both */
	} else if (et == ETH_P_8021Q || et == ETH_P_8021AD) {
		if (len < 18 || bpf_skb_load_bytes(skb, 14, b, 4))
			return -1;
		k->w[K_VLAN_TCI] = ((b[0] << 8) | b[1]) | VLAN_CFI;
		k->w[K_VLAN_TPID] = et;
		et = (b[2] << 8) | b[3];
		off = 18;
		if (et == ETH_P_8021Q || et == ETH_P_8021AD)
			return -1;
	}
	if (et < 0x600)
		return -1;                      /* 802.3 length field (LLC/SNAP) */
	k->w[K_ETH_TYPE] = et;
	if (et == ETH_P_IP) {
		int size = len - off;
		if (size < 20 || bpf_skb_load_bytes(skb, off, b, 20))
			return -1;
		int ihl = (b[0] & 15) * 4;
		int tot = (b[2] << 8) | b[3];
		if (ihl < 20 || ihl > tot || tot > size)
			return -1;
		p->l3 = off;
		p->ipv = 4;
		k->w[K_NW_SRC] = ((__u32)b[12] << 24) | (b[13] << 16) | (b[14] << 8) | b[15];
		k->w[K_NW_DST] = ((__u32)b[16] << 24) | (b[17] << 16) | (b[18] << 8) | b[19];
		k->w[K_NW_PROTO] = b[9];
		k->w[K_NW_TOS] = b[1];
		k->w[K_NW_TTL] = b[8];
		__u16 frag = ((b[6] << 8) | b[7]) & 0x3FFF;
		if (frag)
			k->w[K_NW_FRAG] = 1 | ((frag & 0x1FFF) ? 2 : 0);
		if (frag & 0x1FFF)
			return 0;               /* later fragment: no transport header */
		return parse_l4(skb, k, p, off + ihl, off + tot, b[9], 0);
	}
	if (et == ETH_P_IPV6) {
		int size = len - off;
		if (size < 40 || bpf_skb_load_bytes(skb, off, b, 40))
			return -1;
		int plen = (b[4] << 8) | b[5];
		if (plen + 40 > size)
			return -1;
		__u8 nh = b[6];
		if (nh == 0 || nh == 43 || nh == 60 || nh == 51 || nh == 44)
			return -1;              /* extension headers: the slow path walks them */
		p->l3 = off;
		p->ipv = 6;
		k->w[K_IPV6_SRC_HI] = be64(b + 8);
		k->w[K_IPV6_SRC_LO] = be64(b + 16);
		k->w[K_IPV6_DST_HI] = be64(b + 24);
		k->w[K_IPV6_DST_LO] = be64(b + 32);
		k->w[K_IPV6_LABEL] = ((b[1] & 0x0F) << 16) | (b[2] << 8) | b[3];
		k->w[K_NW_TOS] = ((b[0] & 0x0F) << 4) | (b[1] >> 4);
		k->w[K_NW_TTL] = b[7];
		k->w[K_NW_PROTO] = nh;
		return parse_l4(skb, k, p, off + 40, off + 40 + plen, nh, 1);
	}
	if (et == ETH_P_ARP || et == ETH_P_RARP) {
		if (len - off < 28 || bpf_skb_load_bytes(skb, off, b, 28))
			return -1;
		if (b[0] == 0 && b[1] == 1 && b[2] == 0x08 && b[3] == 0 && b[4] == 6 && b[5] == 4) {
			__u16 op = (b[6] << 8) | b[7];
			k->w[K_NW_SRC] = ((__u32)b[14] << 24) | (b[15] << 16) | (b[16] << 8) | b[17];
			k->w[K_NW_DST] = ((__u32)b[24] << 24) | (b[25] << 16) | (b[26] << 8) | b[27];
			k->w[K_NW_PROTO] = op <= 0xFF ? op : 0;
			k->w[K_ARP_SHA] = mac48(b + 8);
			k->w[K_ARP_THA] = mac48(b + 18);
		}
		return 0;
	}
	if (et == 0x8847 || et == 0x8848 || et == 0x894F)
		return -1;                      /* MPLS, NSH */
	return 0;
}

/* Header offsets after a VLAN push or pop (an in-band tag moves the L3 header). */
static __always_inline void reoffset(struct __sk_buff *skb, struct pkt *p)
{
	__u8 b[2];
	int l3 = 14;

	if (p->l3 < 0)
		return;
	if (!bpf_skb_load_bytes(skb, 12, b, 2)) {
		__u16 et = (b[0] << 8) | b[1];
		if (et == ETH_P_8021Q || et == ETH_P_8021AD)
			l3 = 18;
	}
	if (p->l4 >= 0)
		p->l4 += l3 - p->l3;
	p->l3 = l3;
}

#endif
