/* Layouts shared by the kernel tier's program and its Python map codecs (sbnet.datapath.ebpf.layout).
 *
 * Every struct here is read and written from Python with struct formats of the same
 * field order; tests/ebpf/test_layout.py checks the two agree.
 */
#ifndef SBNET_DP_H
#define SBNET_DP_H

/* The kernel flow key: one 64-bit word per supported key slot, values exactly as
 * sbnet.flows.fields stores them (host-order integers).  Order = KEY_SLOTS in layout.py. */
enum sb_slot {
	K_RECIRC_ID, K_IN_PORT, K_ETH_SRC, K_ETH_DST, K_ETH_TYPE, K_VLAN_TCI, K_VLAN_TPID,
	K_NW_SRC, K_NW_DST, K_IPV6_SRC_HI, K_IPV6_SRC_LO, K_IPV6_DST_HI, K_IPV6_DST_LO,
	K_IPV6_LABEL, K_NW_PROTO, K_NW_TOS, K_NW_TTL, K_NW_FRAG, K_TP_SRC, K_TP_DST,
	K_TCP_FLAGS, K_ARP_SHA, K_ARP_THA, K_TUN_ID, K_TUN_SRC, K_TUN_DST, K_TUN_FLAGS,
	K_CT_STATE, K_CT_ZONE, K_CT_MARK,
	K_NWORDS
};

#define MAX_MASKS 32
#define MAX_ACTS 16
#define MAX_OUT 16        /* outputs traced per packet in test mode */
#define TRACE_BYTES 2048  /* bytes of each traced output kept */
#define UPCALL_BYTES 2048 /* a missed packet up to this long goes up in a record its size */
#define UPCALL_MAX 65536  /* longer (GSO) ones in a record of this room; past it truncated */
#define MAX_PASSES 3      /* datapath passes per packet (ct + recirc) */

struct sb_key {
	__u64 w[K_NWORDS];
};

struct sb_fkey {          /* flows map key: the mask's id, then the masked words */
	__u32 mask_id;
	__u32 pad;
	__u64 w[K_NWORDS];
};

struct sb_mask {          /* masks map value (array index = position in the mask list) */
	__u32 id;
	__u32 pad;
	__u64 w[K_NWORDS];
};

enum sb_op {
	OP_OUTPUT = 1,        /* w = ifindex, h = OUT_F_PEER or 0 */
	OP_PUSH_VLAN,         /* h = tci (present bit cleared), w = tpid */
	OP_POP_VLAN,
	OP_SET_ETH_SRC,       /* a = 48-bit MAC */
	OP_SET_ETH_DST,
	OP_SET_IP4_SRC,       /* w = address */
	OP_SET_IP4_DST,
	OP_SET_IP4_TOS,       /* h = new tos byte, w = bits of it to change */
	OP_SET_IP4_TTL,       /* h = ttl */
	OP_SET_IP6_SRC,       /* a = hi, b = lo */
	OP_SET_IP6_DST,
	OP_SET_IP6_TCLASS,    /* h = tclass byte, w = bits to change */
	OP_SET_IP6_LABEL,     /* w = label */
	OP_SET_IP6_HLIMIT,    /* h = hop limit */
	OP_SET_TP_SRC,        /* h = port (TCP or UDP, by the packet's protocol) */
	OP_SET_TP_DST,
	OP_SET_MARK,          /* w = skb mark */
	OP_SET_TUNNEL,        /* a = tun_id, w = remote IPv4, b = local IPv4 (0: the device's) */
	OP_METER,             /* w = meter id */
	OP_CT,                /* h = zone, w = flags (CT_F_*), a = mark value, b = mark mask */
	OP_RECIRC,            /* w = recirc id */
};

/* The output's port is a PORT_F_PEER veth, told in the action so that a packet's last
 * output needs no lookup of its port (a cold one costs 0.3 us on real traffic). */
#define OUT_F_PEER 1

#define CT_F_COMMIT 1
#define CT_F_MARK 2
#define CT_F_NAT 4        /* ct(nat...): a connection's translation applies to its packets */
#define CT_F_NAT_NEW 8    /* nat(src=...) or nat(dst=...): a new connection gets one (slow path) */

struct sb_act {
	__u16 op;
	__u16 h;
	__u32 w;
	__u64 a;
	__u64 b;
};

struct sb_flow {          /* flows map value */
	__u64 packets;
	__u64 bytes;
	__u64 used;           /* bpf_ktime_get_ns() of the last packet (CLOCK_MONOTONIC) */
	__u32 mf_id;
	__u32 tcp_flags;      /* OR of the TCP flags seen */
	__u32 n_acts;
	__u32 pad;
	struct sb_act acts[MAX_ACTS];
};

struct sb_port {          /* ports map value, keyed by ifindex */
	__u32 ofport;
	__u32 flags;          /* PORT_F_* */
};
#define PORT_F_TUNNEL 1   /* a collect_md tunnel device: read the tunnel key on ingress */
#define PORT_F_XDP_OUT 2  /* the XDP program may redirect frames to it (sbnet_xdp.h) */
#define PORT_F_PEER 4     /* a veth whose other end is in another namespace: the last output
			   * goes straight into that end's ingress (bpf_redirect_peer), not
			   * through this end's transmit and the backlog queue */
#define PORT_F_HELD 8     /* a VIF whose VM is arriving by live migration (sbnet_hold.h):
			   * its first frame releases the hold */

#define PORT_SLOTS 1024   /* port_slots entries: 16 kB, one kmalloc'd block */
struct sb_port_slot {     /* port_slots value, at ifindex % PORT_SLOTS */
	__u32 ifindex;        /* 0: empty */
	struct sb_port port;
};

struct sb_config {
	__u32 n_masks;
	__u32 flags;          /* CFG_F_* */
	__u32 upcall_rate;    /* upcalls per second per port (0: unlimited) */
	__u32 upcall_burst;
};
#define CFG_F_TEST 1      /* BPF_PROG_RUN: ingress port and tunnel key from cb[], outputs traced */
#define CFG_F_KERNEL_CT 2 /* UDP connections, IPv4 ICMP queries and TCP SYNs unknown to
			   * the map are +new here; ct(commit) of one, its first reply (UDP,
			   * ICMP) or its handshake (TCP) are done here and told up the ring */
#define CFG_F_TCP_LIBERAL 4 /* the slow path's conntrack is liberal about TCP windows */
#define CFG_F_HOLDS 8     /* some VIF is held (sbnet_hold.h): tunnel frames are looked up */

/* ct_state bits (sbnet.flows.fields.CT_STATE_BITS, as OVS). */
#define CS_NEW 0x01
#define CS_EST 0x02
#define CS_RPL 0x08
#define CS_INV 0x10
#define CS_TRK 0x20
#define CS_SNAT 0x40
#define CS_DNAT 0x80
/* Not a ct_state bit: the entry of a TCP connection whose handshake this program tracks
 * (committed here, not yet established both ways); its peers run the state machine. */
#define CS_OPENING 0x10000

/* Connections, one entry per direction: those the slow path committed (established,
 * or UDP still awaiting its reply), and with CFG_F_KERNEL_CT the UDP and TCP ones
 * committed here.  state: the ct_state of this direction's packets; CS_TRK|CS_NEW|CS_RPL
 * is the reply direction of a UDP connection awaiting its first reply (that reply
 * establishes it); CS_TRK|CS_OPENING[|CS_RPL] a TCP connection in its handshake, its
 * packets' ct_state from the state machine over `tcp`; 0 (no CS_TRK) a connection the
 * slow path holds in a way this map cannot: its packets go up.  ICMP echo (and timestamp,
 * information) conversations are here once the slow path saw them answered: +trk+est. */
struct sb_ct_key {
	__u16 zone;
	__u8 proto;
	__u8 pad;
	__u16 sport;          /* host order; an ICMP query: its id */
	__u16 dport;          /* an ICMP query: its type << 8 | its answer's type */
	__u32 src;            /* IPv4, host order */
	__u32 dst;
};
/* One end of a TCP connection, as sbnet.datapath.conntrack_tcp (OVS conntrack-tcp.c) keeps it. */
struct sb_tcp_peer {
	__u32 seqlo;
	__u32 seqhi;
	__u32 max_win;
	__u8 wscale;
	__u8 state;           /* TCPS_*, numbered as conntrack_tcp */
	__u16 pad;
};
/* The IPv6 connection map's key: established connections the slow path committed only
 * (ICMPv6 echo keyed as ICMP is in sb_ct_key). */
struct sb_ct6_key {
	__u16 zone;
	__u8 proto;
	__u8 pad;
	__u16 sport;          /* host order */
	__u16 dport;
	__u64 src[2];         /* high, low 64 bits, host order (the key slots' words) */
	__u64 dst[2];
};
/* A NATed connection's translation of this direction's packets (ct(nat) on an established
 * connection): the tuple they leave with, which is the other direction's reversed. */
struct sb_ct_nat {
	__u32 flags;          /* CS_SNAT or CS_DNAT: the ct_state bit they get; 0: no NAT */
	__u16 sport;          /* host order */
	__u16 dport;
	__u64 src[2];         /* IPv6 high, low; IPv4 in src[1] */
	__u64 dst[2];
};
struct sb_ct_val {
	__u32 state;          /* ct_state bits for packets in this direction (+trk+est[+rpl]) */
	__u32 mark;
	__u64 packets;
	__u64 bytes;
	__u64 used;
	struct sb_tcp_peer tcp[2];  /* TCP in its handshake: original sender first (both entries) */
	struct sb_ct_nat nat;
};

/* A connection event's body (after its sb_upcall header). */
struct sb_ct_event {
	struct sb_ct_key key; /* the original direction */
	struct sb_tcp_peer tcp[2];
};

/* Zone limits for the connections committed here, by zone (array index).  The slow path
 * writes sb_zone (limit 0: none; base: the connections its conntrack holds in the zone
 * less the commits of this program it has taken up); the program counts its commits
 * in zone_commits and commits no more once base + commits reaches the limit. */
struct sb_zone {
	__u32 limit;
	__u32 pad;
	__s64 base;           /* may be negative: commits taken up whose connections have gone */
};

/* An arriving VM's VIF while it is held (holds map value, keyed by the VIF's ifindex):
 * tunnel frames to `mac` are dropped until the VIF's first frame, which stamps `released`. */
#define MAX_INSIDE 4
struct sb_hold {
	__u64 mac;            /* 48-bit, as the key's eth words */
	__u64 since;          /* bpf_ktime_get_ns() clock (CLOCK_MONOTONIC): when held */
	__u64 released;       /* when the VIF's first frame released it; 0: still held */
	__u64 dropped;        /* tunnel frames kept from the VIF for it */
	__u32 flags;          /* HOLD_F_* */
	__u32 relay_src;      /* HOLD_F_RELAY: the tunnel endpoint of the host the VM left */
	__u64 router_mac;     /* HOLD_F_RELAY: its router's MAC on the VM's network */
	__u32 inside[2 * MAX_INSIDE];  /* HOLD_F_RELAY: (address, mask) of the router's subnets */
	__u32 n_inside;
	__u32 pad;
};
#define HOLD_F_RELAY 2    /* released, and the VM announced by the slow path: what the host
			   * it left relays of its floating IP's traffic is kept from the VIF
			   * until the hold goes */

struct sb_meter {
	__u64 rate;           /* tokens per second: bytes (kbps meters) or packets (pktps) */
	__u64 burst;          /* bucket size, in tokens */
	__u64 tokens;         /* scaled by 1e9 (token-nanoseconds) */
	__u64 last;           /* ns */
	__u32 pkts;           /* 1: count packets, 0: bytes */
	__u32 pad;
	__u64 passed;
	__u64 dropped;
	__u64 passed_bytes;
	__u64 dropped_bytes;
	struct bpf_spin_lock lock;
	__u32 pad2;
};

/* ct_nat: packets translated by ct(nat); ct6: IPv6 packets of connections in the map. */
enum sb_stat {
	ST_HIT, ST_MISS, ST_PUNT_PARSE, ST_PUNT_ACTION, ST_UPCALL, ST_UPCALL_LOST,
	ST_UPCALL_LIMITED, ST_DROP, ST_METER_DROP, ST_CT_MISS, ST_OUTPUT_ERR,
	ST_CT_COMMIT, ST_CT_EST, ST_CT_EVENT_LOST, ST_CT_HANDOVER, ST_CT_ZONE_FULL,
	ST_CT_NAT, ST_CT6,
	ST_N
};

struct sb_trace_hdr {     /* test mode: what the last packet did */
	__u32 n_out;
	__u32 verdict;        /* VERDICT_* */
	__u32 mf_id;          /* megaflow of the first pass */
	__u32 passes;
};
#define VERDICT_FORWARD 1
#define VERDICT_DROP 2
#define VERDICT_UPCALL 3

struct sb_trace_out {
	__u32 ifindex;
	__u32 len;            /* skb->len at the output (without an accelerated VLAN tag) */
	__u32 vlan;           /* accelerated tag: tpid << 16 | tci, 0: none */
	__u32 tun;            /* 1: a tunnel key was set */
	__u64 tun_id;
	__u32 tun_dst;
	__u32 tun_src;
	__u32 mark;
	__u32 pad;
	__u8 data[TRACE_BYTES];
};

/* Ring buffer record header; the packet bytes follow.  A connection event (reason
 * ST_CT_COMMIT, ST_CT_EST or ST_CT_HANDOVER, len 0) is followed by an sb_ct_event
 * instead: a commit here, a first reply or handshake completed here, or a TCP
 * connection in its handshake handed to the slow path with the peers as they were
 * before the packet that follows it up the ring. */
struct sb_upcall {
	__u32 ifindex;
	__u32 in_port;
	__u32 len;            /* whole packet length (an accelerated VLAN tag re-inserted) */
	__u32 caplen;         /* bytes that follow */
	__u32 reason;         /* ST_MISS, ST_PUNT_PARSE, ST_PUNT_ACTION, ST_CT_MISS */
	__u32 flags;          /* UP_F_* */
	__u64 tun_id;
	__u32 tun_src;
	__u32 tun_dst;
	__u32 vlan;           /* accelerated tag, as in sb_trace_out */
	__u32 gso_size;       /* a GSO packet's segment payload size (0: not GSO) */
};

#define UP_F_TUN 1          /* it came through a tunnel (tun_* hold its key) */
#define UP_F_CSUM_PARTIAL 2 /* its L4 checksum is partial (the sender left it to the NIC):
			     * the slow path completes it; any other is left as it came */
#define UP_F_HELD 4         /* a copy for a held VIF (sbnet_hold.h): the slow path switches
			     * it without sending it into that VIF, however late it takes it */

#endif
