// SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0)
/* sbnet's kernel tier: TC ingress program running the megaflow cache the reference switch fills.
 *
 * parse -> masked lookup over the mask list (tuple space, as OVS's kernel datapath)
 * -> the megaflow's datapath actions -> per-entry counters.  A miss, a packet this
 * program does not parse the way the reference switch does, or a ct() of a connection
 * the slow path has not handed down goes up through the `upcalls` ring buffer and is
 * consumed here (TC_ACT_SHOT): the slow path executes it and installs the megaflow.
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_core_read.h>

#include "sbnet_dp.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define ETH_P_ARP 0x0806
#define ETH_P_RARP 0x8035
#define ETH_P_8021Q 0x8100
#define ETH_P_8021AD 0x88A8
#define VLAN_CFI 0x1000

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct sb_config);
} config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_MASKS);
	__type(key, __u32);
	__type(value, struct sb_mask);
} masks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);     /* the loader sets the capacity */
	__type(key, struct sb_fkey);
	__type(value, struct sb_flow);
} flows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, struct sb_port);
} ports SEC(".maps");

/* A direct-mapped copy of `ports`, which the slow path writes alongside it (a port whose
 * slot another holds is in `ports` only).  Every run looks its ingress port up first: a
 * hash lookup is a bucket and an element, on real traffic two cold misses (about 1 us of a
 * 5-8 us run at 100 pings/s, timed with bpf_ktime_get_ns), an array slot one line. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, PORT_SLOTS);
	__type(key, __u32);
	__type(value, struct sb_port_slot);
} port_slots SEC(".maps");

static __always_inline struct sb_port_slot *port_slot(__u32 ifindex)
{
	__u32 at = ifindex & (PORT_SLOTS - 1);
	struct sb_port_slot *ps = bpf_map_lookup_elem(&port_slots, &at);

	return ps && ifindex && ps->ifindex == ifindex ? ps : 0;
}

static __always_inline struct sb_port *port_get(__u32 ifindex)
{
	struct sb_port_slot *ps = port_slot(ifindex);

	if (ps)
		return &ps->port;
	return bpf_map_lookup_elem(&ports, &ifindex);
}

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);     /* the loader sets the capacity */
	__type(key, struct sb_ct_key);
	__type(value, struct sb_ct_val);
} conns SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);     /* the loader sets the capacity */
	__type(key, struct sb_ct6_key);
	__type(value, struct sb_ct_val);
} conns6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, struct sb_zone);
} zone_limits SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, __u64);
} zone_commits SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, struct sb_meter);
} meters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, ST_N);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 22);
} upcalls SEC(".maps");

/* Upcall budget per ingress port: a token bucket (tokens scaled by 1e9). */
struct upcall_bucket {
	__u64 tokens;
	__u64 last;
};
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, struct upcall_bucket);
} upcall_budget SEC(".maps");

/* Test mode only (CFG_F_TEST): what the last BPF_PROG_RUN did. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct sb_trace_hdr);
} trace_hdr SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_OUT);
	__type(key, __u32);
	__type(value, struct sb_trace_out);
} trace_out SEC(".maps");

/* The fields of a TCP segment conntrack's state machine reads (sbnet_tcp.h). */
struct tcp_seg {
	__u32 seq;
	__u32 ack;
	__u32 win;
	__u32 plen;
	__u32 flags;
	__u32 wscale;         /* the SYN's window scale option (WSCALE_FLAG when present) */
};

struct scratch {
	struct sb_key key;
	struct sb_key orig;     /* the key as parsed: what restore() puts back */
	struct sb_fkey fk;
	struct sb_ct_val ctv;   /* a connection being committed */
	struct sb_tcp_peer peers[2];  /* a handshake's peers being updated */
	__u8 opts[40];          /* a SYN's TCP options */
	struct tcp_seg seg;     /* the segment being tracked */
	struct sb_upcall up;
	__u8 pkt[UPCALL_BYTES];
};
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct scratch);
} scratch SEC(".maps");

/* Where the headers are, as the parser found them; -1 none. */
struct pkt {
	int l3;
	int l4;
	__u8 ipv;              /* 4, 6 or 0 */
	__u8 l4proto;          /* TCP/UDP/ICMPv6 whose checksum covers the pseudo-header */
	__u8 tunnel_set;
	__u8 test;
	__u8 last_peer;        /* the pending output's port is a PORT_F_PEER veth */
	__u8 pad[3];
	__u32 ifindex;
	__u32 n_out;
	__u32 last_out;        /* ifindex of the pending (last) output, 0: none */
	__u64 tun_id;
	__u32 tun_dst;
	__u32 tun_src;
	__u32 cfg_flags;       /* sb_config.flags */
	__u32 modified;        /* a header was rewritten (a set, a NAT): restore() before an upcall */
	__u32 held_out;        /* ifindex of a held VIF this packet is not sent to (sbnet_hold.h) */
};

/* Before the first header rewrite of a packet: its key as parsed, for restore(). */
static __always_inline void keep_orig(struct sb_key *k, struct pkt *p)
{
	__u32 zero = 0;
	struct scratch *sc;

	if (p->modified)
		return;
	sc = bpf_map_lookup_elem(&scratch, &zero);
	if (!sc)
		return;
	__builtin_memcpy(&sc->orig, k, sizeof(sc->orig));
	p->modified = 1;
}

static __always_inline void count(__u32 which)
{
	__u64 *c = bpf_map_lookup_elem(&stats, &which);

	if (c)
		*c += 1;
}

#include "sbnet_parse.h"
#include "sbnet_hold.h"

static __always_inline __u32 l4_csum_off(struct pkt *p)
{
	if (p->l4proto == 6)
		return p->l4 + 16;
	if (p->l4proto == 17)
		return p->l4 + 6;
	if (p->l4proto == 58)
		return p->l4 + 2;
	return 0;
}

static __always_inline __u64 l4_csum_flags(struct pkt *p)
{
	return p->l4proto == 17 ? BPF_F_MARK_MANGLED_0 : 0;
}

static __always_inline void set_ip4_addr(struct __sk_buff *skb, struct pkt *p, int at, __u32 addr)
{
	__be32 old, new = bpf_htonl(addr);

	if (p->ipv != 4 || bpf_skb_load_bytes(skb, p->l3 + at, &old, 4))
		return;
	bpf_skb_store_bytes(skb, p->l3 + at, &new, 4, 0);
	bpf_l3_csum_replace(skb, p->l3 + 10, old, new, 4);
	if (p->l4 >= 0 && (p->l4proto == 6 || p->l4proto == 17))
		bpf_l4_csum_replace(skb, l4_csum_off(p), old, new,
				    BPF_F_PSEUDO_HDR | 4 | l4_csum_flags(p));
}

static __always_inline void set_ip4_word(struct __sk_buff *skb, struct pkt *p, int at, int hi,
					 __u8 value, __u8 bits)
{
	__u8 w[2], o[2];

	if (p->ipv != 4 || bpf_skb_load_bytes(skb, p->l3 + at, w, 2))
		return;
	o[0] = w[0];
	o[1] = w[1];
	w[hi ? 0 : 1] = (w[hi ? 0 : 1] & ~bits) | (value & bits);
	bpf_skb_store_bytes(skb, p->l3 + at, w, 2, 0);
	bpf_l3_csum_replace(skb, p->l3 + 10, *(__u16 *)o, *(__u16 *)w, 2);
}

static __always_inline void set_ip6_addr(struct __sk_buff *skb, struct pkt *p, int at,
					 __u64 hi, __u64 lo)
{
	__be64 old[2], new[2];

	if (p->ipv != 6 || bpf_skb_load_bytes(skb, p->l3 + at, old, 16))
		return;
	new[0] = bpf_cpu_to_be64(hi);
	new[1] = bpf_cpu_to_be64(lo);
	bpf_skb_store_bytes(skb, p->l3 + at, new, 16, 0);
	if (p->l4 >= 0 && p->l4proto) {
		__s64 diff = bpf_csum_diff((__be32 *)old, 16, (__be32 *)new, 16, 0);
		bpf_l4_csum_replace(skb, l4_csum_off(p), 0, diff,
				    BPF_F_PSEUDO_HDR | l4_csum_flags(p));
	}
}

static __always_inline void set_ip6_vtc(struct __sk_buff *skb, struct pkt *p, __u32 value,
					__u32 bits)
{
	__be32 w;

	if (p->ipv != 6 || bpf_skb_load_bytes(skb, p->l3, &w, 4))
		return;
	__u32 v = bpf_ntohl(w);
	v = (v & ~bits) | (value & bits);
	w = bpf_htonl(v);
	bpf_skb_store_bytes(skb, p->l3, &w, 4, 0);
}

static __always_inline void set_port(struct __sk_buff *skb, struct pkt *p, int at, __u16 port)
{
	__be16 old, new = bpf_htons(port);

	if (p->l4 < 0 || (p->l4proto != 6 && p->l4proto != 17))
		return;
	if (bpf_skb_load_bytes(skb, p->l4 + at, &old, 2))
		return;
	bpf_skb_store_bytes(skb, p->l4 + at, &new, 2, 0);
	bpf_l4_csum_replace(skb, l4_csum_off(p), old, new, 2 | l4_csum_flags(p));
}

static __always_inline void set_mac(struct __sk_buff *skb, int at, __u64 mac)
{
	__u8 m[6] = {mac >> 40, mac >> 32, mac >> 24, mac >> 16, mac >> 8, mac};

	bpf_skb_store_bytes(skb, at, m, 6, 0);
}

/* Test mode: keep a copy of the packet as it leaves on `ifindex`, the n-th output. */
static __always_inline void trace_output(struct __sk_buff *skb, struct pkt *p, __u32 ifindex,
					 __u32 n)
{
	struct sb_trace_out *t;
	__u32 len = skb->len;

	if (n >= MAX_OUT)
		return;
	t = bpf_map_lookup_elem(&trace_out, &n);
	if (!t)
		return;
	t->ifindex = ifindex;
	t->len = len;
	t->vlan = skb->vlan_present ? (bpf_ntohs(skb->vlan_proto) << 16) | (skb->vlan_tci & 0xFFFF) : 0;
	t->tun = p->tunnel_set;
	t->tun_id = p->tun_id;
	t->tun_dst = p->tun_dst;
	t->tun_src = p->tun_src;
	t->mark = skb->mark;
	if (len > TRACE_BYTES)
		len = TRACE_BYTES;
	if (len > 0 && len <= TRACE_BYTES)
		bpf_skb_load_bytes(skb, 0, t->data, len);
}

/* An output is pending until the packet would change under it: then (send_pending) a clone
 * leaves with the packet as it is, so it carries what the actions before it set and nothing
 * after (a tunnel key, a VLAN, an address).  The last one is the program's redirect. */
static __always_inline void send_pending(struct __sk_buff *skb, struct pkt *p)
{
	if (!p->last_out)
		return;
	if (p->test)
		trace_output(skb, p, p->last_out, p->n_out - 1);
	else if (bpf_clone_redirect(skb, p->last_out, 0))
		count(ST_OUTPUT_ERR);
	p->last_out = 0;
}

static __always_inline void output(struct __sk_buff *skb, struct pkt *p, struct sb_act *a)
{
	send_pending(skb, p);
	if (hold_skip(p->held_out, a->w))
		return;
	p->last_out = a->w;
	p->last_peer = a->h & OUT_F_PEER;
	p->n_out++;
}

static __always_inline int set_tunnel(struct __sk_buff *skb, struct pkt *p, struct sb_act *a)
{
	struct bpf_tunnel_key tk = {};

	tk.tunnel_id = (__u32)a->a;
	tk.remote_ipv4 = a->w;
	tk.local_ipv4 = (__u32)a->b;
	tk.tunnel_ttl = 64;
	p->tunnel_set = 1;
	p->tun_id = a->a;
	p->tun_dst = a->w;
	p->tun_src = (__u32)a->b;
	if (p->test)
		return 0;
	return bpf_skb_set_tunnel_key(skb, &tk, sizeof(tk), BPF_F_ZERO_CSUM_TX);
}

/* Token bucket; 1 when the packet passes. */
static __always_inline int meter(__u32 id, __u32 bytes)
{
	struct sb_meter *m = bpf_map_lookup_elem(&meters, &id);
	__u64 now = bpf_ktime_get_ns();
	int pass = 0;

	if (!m)
		return 0;
	bpf_spin_lock(&m->lock);
	__u64 cap = m->burst * 1000000000ull;
	__u64 idle = now - m->last;
	if (idle > 10000000000ull)
		idle = 10000000000ull;  /* a bucket fills within seconds: no overflow after long idles */
	__u64 t = m->tokens + idle * m->rate;
	if (t > cap || t < m->tokens)
		t = cap;
	__u64 cost = (m->pkts ? 1 : (__u64)bytes) * 1000000000ull;
	if (t >= cost) {
		t -= cost;
		pass = 1;
		m->passed++;
		m->passed_bytes += bytes;
	} else {
		m->dropped++;
		m->dropped_bytes += bytes;
	}
	m->tokens = t;
	m->last = now;
	bpf_spin_unlock(&m->lock);
	return pass;
}

#include "sbnet_ct.h"

enum { ACT_NEXT, ACT_RECIRC, ACT_STOP, ACT_UPCALL, ACT_CT_TCP };

/* One datapath action.  A global function: the verifier checks it once, not once per
 * action slot of every path through the interpreter loop. */
__attribute__((noinline))
int do_action(struct __sk_buff *skb, struct pkt *pp, struct sb_key *k, struct sb_act *a,
	      __u32 wire)
{
	if (!skb || !pp || !k || !a)
		return ACT_STOP;
	struct pkt p = *pp;
	int r = ACT_NEXT;

	if (a->op != OP_OUTPUT && a->op != OP_METER && a->op != OP_CT && a->op != OP_RECIRC)
		send_pending(skb, &p);          /* this action changes the packet or its metadata */
	if (a->op >= OP_SET_ETH_SRC && a->op <= OP_SET_TP_DST)
		keep_orig(k, &p);
	switch (a->op) {
	case OP_OUTPUT:
		output(skb, &p, a);
		break;
	case OP_PUSH_VLAN:
		bpf_skb_vlan_push(skb, bpf_htons(a->w), a->h);
		reoffset(skb, &p);
		break;
	case OP_POP_VLAN:
		bpf_skb_vlan_pop(skb);
		reoffset(skb, &p);
		break;
	/* Sets keep the key as the packet now is: a later pass (after ct) matches on it. */
	case OP_SET_ETH_SRC:
		set_mac(skb, 6, a->a);
		k->w[K_ETH_SRC] = a->a;
		break;
	case OP_SET_ETH_DST:
		set_mac(skb, 0, a->a);
		k->w[K_ETH_DST] = a->a;
		break;
	case OP_SET_IP4_SRC:
		set_ip4_addr(skb, &p, 12, a->w);
		if (p.ipv == 4)
			k->w[K_NW_SRC] = a->w;
		break;
	case OP_SET_IP4_DST:
		set_ip4_addr(skb, &p, 16, a->w);
		if (p.ipv == 4)
			k->w[K_NW_DST] = a->w;
		break;
	case OP_SET_IP4_TOS:
		set_ip4_word(skb, &p, 0, 0, a->h, a->w);
		if (p.ipv == 4)
			k->w[K_NW_TOS] = (k->w[K_NW_TOS] & ~(__u64)a->w) | (a->h & a->w);
		break;
	case OP_SET_IP4_TTL:
		set_ip4_word(skb, &p, 8, 1, a->h, 0xFF);
		if (p.ipv == 4)
			k->w[K_NW_TTL] = a->h & 0xFF;
		break;
	case OP_SET_IP6_SRC:
		set_ip6_addr(skb, &p, 8, a->a, a->b);
		if (p.ipv == 6) {
			k->w[K_IPV6_SRC_HI] = a->a;
			k->w[K_IPV6_SRC_LO] = a->b;
		}
		break;
	case OP_SET_IP6_DST:
		set_ip6_addr(skb, &p, 24, a->a, a->b);
		if (p.ipv == 6) {
			k->w[K_IPV6_DST_HI] = a->a;
			k->w[K_IPV6_DST_LO] = a->b;
		}
		break;
	case OP_SET_IP6_TCLASS:
		set_ip6_vtc(skb, &p, (__u32)a->h << 20, a->w << 20);
		if (p.ipv == 6)
			k->w[K_NW_TOS] = (k->w[K_NW_TOS] & ~(__u64)a->w) | (a->h & a->w);
		break;
	case OP_SET_IP6_LABEL:
		set_ip6_vtc(skb, &p, a->w, 0xFFFFF);
		if (p.ipv == 6)
			k->w[K_IPV6_LABEL] = a->w & 0xFFFFF;
		break;
	case OP_SET_IP6_HLIMIT: {
		__u8 h = a->h;
		if (p.ipv == 6 && p.l3 >= 0 && p.l3 < 64) {
			bpf_skb_store_bytes(skb, p.l3 + 7, &h, 1, 0);
			k->w[K_NW_TTL] = h;
		}
		break;
	}
	case OP_SET_TP_SRC:
		set_port(skb, &p, 0, a->h);
		if (p.l4 >= 0 && (p.l4proto == 6 || p.l4proto == 17))
			k->w[K_TP_SRC] = a->h;
		break;
	case OP_SET_TP_DST:
		set_port(skb, &p, 2, a->h);
		if (p.l4 >= 0 && (p.l4proto == 6 || p.l4proto == 17))
			k->w[K_TP_DST] = a->h;
		break;
	case OP_SET_MARK:
		skb->mark = a->w;
		break;
	case OP_SET_TUNNEL:
		if (set_tunnel(skb, &p, a))
			count(ST_OUTPUT_ERR);
		break;
	case OP_METER:
		if (!meter(a->w, wire)) {
			count(ST_METER_DROP);
			r = ACT_STOP;
		}
		break;
	case OP_CT: {
		int c = ct_lookup(skb, k, &p, a, wire);
		if (c)
			r = c > 0 ? ACT_CT_TCP : ACT_UPCALL;
		break;
	}
	case OP_RECIRC:
		k->w[K_RECIRC_ID] = a->w;
		r = ACT_RECIRC;
		break;
	default:
		count(ST_PUNT_ACTION);
		r = ACT_STOP;
	}
	*pp = p;
	return r;
}

#include "sbnet_lookup.h"

/* A packet going up after the kernel rewrote its headers (sets, or a NAT, before a ct()
 * that must go up): the headers put back as parsed, checksums updated again, so the slow
 * path, which runs it from the first table, sees the packet that arrived.  Every header
 * rewrite the kernel does before a ct() is one its key keeps (layout._KEY_SETS). */
__attribute__((noinline))
int restore(struct __sk_buff *skb, struct pkt *p, struct sb_key *o, struct sb_key *k)
{
	if (!skb || !p || !o || !k)
		return -1;
	if (k->w[K_ETH_SRC] != o->w[K_ETH_SRC])
		set_mac(skb, 6, o->w[K_ETH_SRC]);
	if (k->w[K_ETH_DST] != o->w[K_ETH_DST])
		set_mac(skb, 0, o->w[K_ETH_DST]);
	if (p->ipv == 4) {
		if (k->w[K_NW_SRC] != o->w[K_NW_SRC])
			set_ip4_addr(skb, p, 12, o->w[K_NW_SRC]);
		if (k->w[K_NW_DST] != o->w[K_NW_DST])
			set_ip4_addr(skb, p, 16, o->w[K_NW_DST]);
		if (k->w[K_NW_TOS] != o->w[K_NW_TOS])
			set_ip4_word(skb, p, 0, 0, o->w[K_NW_TOS], 0xFF);
		if (k->w[K_NW_TTL] != o->w[K_NW_TTL])
			set_ip4_word(skb, p, 8, 1, o->w[K_NW_TTL], 0xFF);
	} else if (p->ipv == 6) {
		if (k->w[K_IPV6_SRC_HI] != o->w[K_IPV6_SRC_HI] || k->w[K_IPV6_SRC_LO] != o->w[K_IPV6_SRC_LO])
			set_ip6_addr(skb, p, 8, o->w[K_IPV6_SRC_HI], o->w[K_IPV6_SRC_LO]);
		if (k->w[K_IPV6_DST_HI] != o->w[K_IPV6_DST_HI] || k->w[K_IPV6_DST_LO] != o->w[K_IPV6_DST_LO])
			set_ip6_addr(skb, p, 24, o->w[K_IPV6_DST_HI], o->w[K_IPV6_DST_LO]);
		if (k->w[K_NW_TOS] != o->w[K_NW_TOS])
			set_ip6_vtc(skb, p, (__u32)o->w[K_NW_TOS] << 20, 0xFF << 20);
		if (k->w[K_IPV6_LABEL] != o->w[K_IPV6_LABEL])
			set_ip6_vtc(skb, p, o->w[K_IPV6_LABEL], 0xFFFFF);
		if (k->w[K_NW_TTL] != o->w[K_NW_TTL] && p->l3 >= 0 && p->l3 < 64) {
			__u8 h = o->w[K_NW_TTL];
			bpf_skb_store_bytes(skb, p->l3 + 7, &h, 1, 0);
		}
	}
	if (k->w[K_TP_SRC] != o->w[K_TP_SRC])
		set_port(skb, p, 0, o->w[K_TP_SRC]);
	if (k->w[K_TP_DST] != o->w[K_TP_DST])
		set_port(skb, p, 2, o->w[K_TP_DST]);
	return 0;
}

/* A packet going up always wakes the slow path: the ring's default wakes the reader only
 * when it has read everything before the record, and a connection event (committed
 * without a wake-up, sbnet_ct.h) left unread in front would hold the packet until the
 * reader's poll timed out. */
#define UPCALL_WAKEUP BPF_RB_FORCE_WAKEUP

/* Send the packet up: it is the slow path's now.  Returns the TC verdict. */
static __always_inline int upcall(struct __sk_buff *skb, struct scratch *s, struct pkt *p,
				  struct sb_config *cfg, __u32 reason)
{
	struct sb_upcall *u = &s->up;
	__u32 len = skb->len;
	__u32 in_port = s->key.w[K_IN_PORT];

	count(reason);
	if (cfg->upcall_rate) {
		struct upcall_bucket *ub = bpf_map_lookup_elem(&upcall_budget, &in_port);
		__u64 now = bpf_ktime_get_ns();
		__u64 cap = (__u64)cfg->upcall_burst * 1000000000ull;
		if (!ub) {
			struct upcall_bucket fresh = {cap, now};
			bpf_map_update_elem(&upcall_budget, &in_port, &fresh, BPF_ANY);
			ub = bpf_map_lookup_elem(&upcall_budget, &in_port);
			if (!ub)
				return TC_ACT_SHOT;
		}
		__u64 t = ub->tokens + (now - ub->last) * cfg->upcall_rate;
		if (t > cap || t < ub->tokens)
			t = cap;
		ub->last = now;
		if (t < 1000000000ull) {
			ub->tokens = t;
			count(ST_UPCALL_LIMITED);
			return TC_ACT_SHOT;
		}
		ub->tokens = t - 1000000000ull;
	}
	if (p->test) {
		trace_output(skb, p, 0, 0);     /* BPF_PROG_RUN: what went up, in the first slot */
		return TC_ACT_SHOT;
	}
	u->ifindex = skb->ingress_ifindex;
	u->in_port = in_port;
	u->len = len;
	u->reason = reason;
	u->flags = (s->key.w[K_TUN_DST] ? UP_F_TUN : 0) | (csum_partial(skb) ? UP_F_CSUM_PARTIAL : 0)
		   | (p->held_out ? UP_F_HELD : 0);
	u->tun_id = s->key.w[K_TUN_ID];
	u->tun_src = s->key.w[K_TUN_SRC];
	u->tun_dst = s->key.w[K_TUN_DST];
	u->vlan = skb->vlan_present ? (bpf_ntohs(skb->vlan_proto) << 16) | (skb->vlan_tci & 0xFFFF) : 0;
	u->gso_size = skb->gso_size;
	if (len > UPCALL_BYTES && len <= UPCALL_MAX) {
		/* A GSO packet: a record of its own room, the slow path segments it. */
		struct sb_upcall *big = bpf_ringbuf_reserve(&upcalls, sizeof(*u) + UPCALL_MAX, 0);

		if (!big) {
			count(ST_UPCALL_LOST);
			return TC_ACT_SHOT;
		}
		*big = *u;
		big->caplen = len;
		if (bpf_skb_load_bytes(skb, 0, (void *)(big + 1), len)) {
			bpf_ringbuf_discard(big, 0);
			count(ST_UPCALL_LOST);
			return TC_ACT_SHOT;
		}
		bpf_ringbuf_submit(big, UPCALL_WAKEUP);
		count(ST_UPCALL);
		return TC_ACT_SHOT;
	}
	if (len > UPCALL_BYTES)
		len = UPCALL_BYTES;
	u->caplen = 0;
	if (len > 0 && len <= UPCALL_BYTES && !bpf_skb_load_bytes(skb, 0, s->pkt, len))
		u->caplen = len;
	__u32 caplen = u->caplen;
	if (caplen > UPCALL_BYTES)
		caplen = UPCALL_BYTES;
	if (bpf_ringbuf_output(&upcalls, u, sizeof(*u) + caplen, UPCALL_WAKEUP))
		count(ST_UPCALL_LOST);
	else
		count(ST_UPCALL);
	return TC_ACT_SHOT;
}

SEC("tc")
int sbnet_ingress(struct __sk_buff *skb)
{
	__u32 zero = 0;
	struct sb_config *cfg = bpf_map_lookup_elem(&config, &zero);
	struct scratch *s = bpf_map_lookup_elem(&scratch, &zero);
	struct sb_trace_hdr *th = 0;
	struct pkt p = {};
	__u32 ifindex;

	if (!cfg || !s)
		return TC_ACT_OK;
	/* Both read unconditionally: the verifier refuses a context offset chosen at run time. */
	__u32 cb0 = *(volatile __u32 *)&skb->cb[0];
	__u32 ingress = *(volatile __u32 *)&skb->ingress_ifindex;

	p.test = cfg->flags & CFG_F_TEST;
	p.cfg_flags = cfg->flags;
	ifindex = p.test ? cb0 : ingress;
	struct sb_port *port = port_get(ifindex);
	if (!port)
		return TC_ACT_OK;               /* not a port of the switch */
	if (p.test) {
		th = bpf_map_lookup_elem(&trace_hdr, &zero);
		if (!th)
			return TC_ACT_OK;
		th->n_out = 0;
		th->verdict = 0;
		th->mf_id = 0;
		th->passes = 0;
	}
	if (port->flags & PORT_F_HELD)
		hold_release(port, ifindex);
	struct sb_key *k = &s->key;
	for (int j = 0; j < K_NWORDS; j++)
		k->w[j] = 0;
	k->w[K_IN_PORT] = port->ofport;
	if (port->flags & PORT_F_TUNNEL) {
		if (p.test) {
			k->w[K_TUN_ID] = skb->cb[1];
			k->w[K_TUN_SRC] = skb->cb[2];
			k->w[K_TUN_DST] = skb->cb[3];
		} else {
			struct bpf_tunnel_key tk = {};
			if (bpf_skb_get_tunnel_key(skb, &tk, sizeof(tk), 0))
				return upcall(skb, s, &p, cfg, ST_PUNT_PARSE);
			k->w[K_TUN_ID] = tk.tunnel_id;
			k->w[K_TUN_SRC] = tk.remote_ipv4;
			k->w[K_TUN_DST] = tk.local_ipv4;
		}
	}
	if ((port->flags & PORT_F_TUNNEL) && (cfg->flags & CFG_F_HOLDS))
		p.held_out = hold_target(skb, k->w[K_TUN_SRC]);
	if (parse(skb, k, &p)) {
		if (th)
			th->verdict = VERDICT_UPCALL;
		return upcall(skb, s, &p, cfg, ST_PUNT_PARSE);
	}
	/* The frame's length on the wire, as the reference switch counts it. */
	__u32 wire = skb->len + (skb->vlan_present ? 4 : 0);
	__u32 passes = 0;
	struct mask_cache *mc = mask_cache_get();

	for (int pass = 0; pass < MAX_PASSES; pass++) {
		struct sb_flow *f = lookup(k, &s->fk, cfg->n_masks, mc);
		if (!f) {
			if (th)
				th->verdict = VERDICT_UPCALL;
			if (p.n_out)
				break;                  /* outputs already made: nothing to hand up */
			if (p.modified)
				restore(skb, &p, &s->orig, k);
			return upcall(skb, s, &p, cfg, pass ? ST_CT_MISS : ST_MISS);
		}
		passes++;
		if (th) {
			if (passes == 1)
				th->mf_id = f->mf_id;   /* the megaflow of the packet's first pass */
			th->passes = passes;
		}
		__sync_fetch_and_add(&f->packets, 1);
		__sync_fetch_and_add(&f->bytes, wire);
		f->used = bpf_ktime_get_ns();
		if (k->w[K_TCP_FLAGS] & ~f->tcp_flags)
			__sync_fetch_and_or(&f->tcp_flags, (__u32)k->w[K_TCP_FLAGS]);
		count(ST_HIT);
		int recirc = 0;
		__u32 n = f->n_acts;
		for (__u32 i = 0; i < MAX_ACTS; i++) {
			if (i >= n)
				break;
			int r = do_action(skb, &p, k, &f->acts[i], wire);
			if (r == ACT_CT_TCP)
				r = ct_tcp(skb, &p, k, &f->acts[i], wire) ? ACT_UPCALL : ACT_NEXT;
			if (r == ACT_RECIRC) {
				recirc = 1;
				break;
			}
			if (r == ACT_STOP)
				goto done;
			if (r == ACT_UPCALL) {
				if (th)
					th->verdict = VERDICT_UPCALL;
				if (p.n_out)
					goto done;
				if (p.modified)
					restore(skb, &p, &s->orig, k);
				return upcall(skb, s, &p, cfg, ST_CT_MISS);
			}
		}
		if (!recirc)
			break;
	}
done:
	if (!p.n_out) {
		count(ST_DROP);
		if (th && !th->verdict)
			th->verdict = VERDICT_DROP;
		return TC_ACT_SHOT;
	}
	if (th) {
		th->n_out = p.n_out;
		if (!th->verdict)
			th->verdict = VERDICT_FORWARD;
	}
	if (!p.last_out)
		return TC_ACT_SHOT;             /* every output has left as a clone */
	if (p.test)
		trace_output(skb, &p, p.last_out, p.n_out - 1);
	if (p.last_peer)
		return bpf_redirect_peer(p.last_out, 0);
	return bpf_redirect(p.last_out, 0);
}

#include "sbnet_xdp.h"
