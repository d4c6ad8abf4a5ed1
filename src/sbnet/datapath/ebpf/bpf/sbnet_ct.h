/* ct() in the kernel tier: connections in the `conns` maps, UDP, ICMP query and TCP ones committed here, events up the ring (sbnet_dp.bpf.c includes it). */
#ifndef SBNET_CT_H
#define SBNET_CT_H

#include "sbnet_tcp.h"
#include "sbnet_csum.h"

/* A connection committed, established or handed over here, told to the slow path.  No
 * wake-up: the kernel has forwarded the packet already (a handover's packet follows it
 * up and wakes the reader), so the slow path takes the event at its next drain. */
struct ct_event_rec {
	struct sb_upcall u;
	struct sb_ct_event e;
};

static __always_inline void ct_event(struct sb_ct_key *ck, struct sb_tcp_peer *tcp, __u32 what)
{
	struct ct_event_rec *ev = bpf_ringbuf_reserve(&upcalls, sizeof(*ev), 0);

	if (!ev) {
		count(ST_CT_EVENT_LOST);
		return;
	}
	__builtin_memset(ev, 0, sizeof(*ev));
	ev->u.reason = what;
	ev->u.caplen = sizeof(ev->e);
	ev->e.key = *ck;
	ev->e.tcp[0] = tcp[0];
	ev->e.tcp[1] = tcp[1];
	bpf_ringbuf_submit(ev, BPF_RB_NO_WAKEUP);
	count(what);
}

static __always_inline void ct_reverse(struct sb_ct_key *rk, struct sb_ct_key *ck)
{
	rk->zone = ck->zone;
	rk->proto = ck->proto;
	rk->pad = 0;
	if (ck->proto == 1) {
		/* An ICMP query keeps its id; its type and answer's type swap (icmp_ports). */
		rk->sport = ck->sport;
		rk->dport = (__u16)(ck->dport >> 8 | ck->dport << 8);
	} else {
		rk->sport = ck->dport;
		rk->dport = ck->sport;
	}
	rk->src = ck->dst;
	rk->dst = ck->src;
}

/* One more connection committed here in `zone`, unless that passes the zone's limit
 * (then -1: the slow path commits it, or refuses it as its conntrack does). */
static __always_inline int zone_take(__u16 zone)
{
	__u32 z = zone;
	struct sb_zone *zl = bpf_map_lookup_elem(&zone_limits, &z);
	__u64 *kc = bpf_map_lookup_elem(&zone_commits, &z);

	if (!zl || !kc)
		return -1;
	__u64 before = __sync_fetch_and_add(kc, 1);
	if (zl->limit && zl->base + (__s64)before >= (__s64)zl->limit) {
		__sync_fetch_and_sub(kc, 1);
		count(ST_CT_ZONE_FULL);
		return -1;
	}
	return 0;
}

static __always_inline void zone_give_back(__u16 zone)
{
	__u32 z = zone;
	__u64 *kc = bpf_map_lookup_elem(&zone_commits, &z);

	if (kc)
		__sync_fetch_and_sub(kc, 1);
}

/* Both directions of a connection committed here (v: the original direction's entry,
 * the reply one made from it); -1 when the zone is full or the map would not take it. */
static __always_inline int ct_commit(struct sb_ct_key *ck, struct sb_ct_val *v, __u32 rstate)
{
	struct sb_ct_key rk;

	if (zone_take(ck->zone))
		return -1;
	if (bpf_map_update_elem(&conns, ck, v, BPF_NOEXIST))
		goto fail;              /* full, or committed meanwhile */
	ct_reverse(&rk, ck);
	v->state = rstate;
	v->packets = 0;
	v->bytes = 0;
	if (bpf_map_update_elem(&conns, &rk, v, BPF_NOEXIST)) {
		bpf_map_delete_elem(&conns, ck);
		goto fail;
	}
	ct_event(ck, v->tcp, ST_CT_COMMIT);
	return 0;
fail:
	zone_give_back(ck->zone);
	return -1;
}

/* A zeroed connection entry to fill (per-CPU scratch: the stack is short). */
static __always_inline struct sb_ct_val *ct_blank(void)
{
	__u32 zero = 0;
	struct scratch *sc = bpf_map_lookup_elem(&scratch, &zero);

	if (!sc)
		return 0;
	__builtin_memset(&sc->ctv, 0, sizeof(sc->ctv));
	return &sc->ctv;
}

static __always_inline void ct_md(struct sb_key *k, __u32 state, __u16 zone, __u32 mark)
{
	k->w[K_CT_STATE] = state;
	k->w[K_CT_ZONE] = zone;
	k->w[K_CT_MARK] = mark;
}

/* ct() of a UDP connection or ICMP query the map does not hold (CFG_F_KERNEL_CT):
 * +trk+new, as the slow path says of a connection it never saw; a commit puts both directions in the map
 * (the reply one awaiting its first packet).  -1: the slow path must do it. */
static __always_inline int ct_new(struct sb_key *k, struct sb_ct_key *ck, struct sb_act *a,
				  __u32 bytes)
{
	if (a->w & CT_F_COMMIT) {
		struct sb_ct_val *v = ct_blank();

		if (!v)
			return -1;
		v->state = CS_TRK | CS_NEW;
		v->packets = 1;
		v->bytes = bytes;
		v->used = bpf_ktime_get_ns();
		if (ct_commit(ck, v, CS_TRK | CS_NEW | CS_RPL))
			return -1;
	}
	ct_md(k, CS_TRK | CS_NEW, a->h, 0);
	return 0;
}

/* A TCP connection in its handshake goes to the slow path: an event with its peers as
 * they were (the packet that follows it up is run there on them), both entries punted. */
static __always_inline void ct_handover(struct sb_ct_key *ck, struct sb_ct_val *cv, int reply)
{
	struct sb_ct_key rk, *ok = ck;

	ct_reverse(&rk, ck);
	if (reply)
		ok = &rk;
	ct_event(ok, cv->tcp, ST_CT_HANDOVER);
	cv->state = 0;
	struct sb_ct_val *rv = bpf_map_lookup_elem(&conns, &rk);
	if (rv)
		rv->state = 0;
}

/* ct() of an IPv4 TCP segment whose connection the map holds in its handshake or not at
 * all (CFG_F_KERNEL_CT): a SYN is +new (a commit opens the connection here, its peers as
 * conntrack_tcp's tcp_new_conn), the handshake's segments run the state machine, and once
 * both ends are established the connection is the map's like any other.  Anything else
 * (not a SYN without an entry, an invalid segment, a new mark) goes up; a connection in
 * its handshake goes with it.  A global function: the verifier checks it once. */
__attribute__((noinline))
int ct_tcp(struct __sk_buff *skb, struct pkt *p, struct sb_key *k, struct sb_act *a, __u32 bytes)
{
	struct sb_ct_key ck = {};
	__u32 zero = 0;
	struct scratch *sc = bpf_map_lookup_elem(&scratch, &zero);

	if (!skb || !p || !k || !a || !sc || !(p->cfg_flags & CFG_F_KERNEL_CT))
		return -1;
	struct tcp_seg *s = &sc->seg;
	ck.zone = a->h;
	ck.proto = 6;
	ck.sport = k->w[K_TP_SRC];
	ck.dport = k->w[K_TP_DST];
	ck.src = k->w[K_NW_SRC];
	ck.dst = k->w[K_NW_DST];
	__u32 flags = k->w[K_TCP_FLAGS];
	struct sb_ct_val *cv = bpf_map_lookup_elem(&conns, &ck);
	if (!cv && !(a->w & (CT_F_COMMIT | CT_F_NAT_NEW)) && !tcp_invalid_flags(flags) &&
	    (flags & (TH_SYN | TH_ACK)) != (TH_SYN | TH_ACK)) {
		/* Without commit, a segment of a connection nothing holds (the map holds every
		 * one the slow path has in this zone) is +new and stored nowhere, a mid-stream
		 * one too (tcp_valid_new): a member's replies on its own host, whose load-
		 * balancer zone never saw the connection the client's host DNATed. */
		ct_md(k, CS_TRK | CS_NEW, a->h, 0);
		return 0;
	}
	if (!cv) {
		if ((a->w & (CT_F_MARK | CT_F_NAT_NEW)) || tcp_invalid_flags(flags) ||
		    (flags & (TH_SYN | TH_ACK)) != TH_SYN || tcp_read(skb, p, flags, s))
			return -1;
		if (a->w & CT_F_COMMIT) {
			struct sb_ct_val *v = ct_blank();

			if (!v)
				return -1;
			v->state = CS_TRK | CS_OPENING;
			v->packets = 1;
			v->bytes = bytes;
			v->used = bpf_ktime_get_ns();
			tcp_new_peers(&v->tcp[0], &v->tcp[1], s);
			if (ct_commit(&ck, v, CS_TRK | CS_OPENING | CS_RPL))
				return -1;
		}
		ct_md(k, CS_TRK | CS_NEW, a->h, 0);
		return 0;
	}
	__u32 state = cv->state;
	if (!(state & CS_OPENING))
		return -1;              /* changed meanwhile */
	int reply = (state & CS_RPL) != 0;
	if (((a->w & CT_F_MARK) && ((cv->mark & a->b) != (a->a & a->b))) ||
	    tcp_read(skb, p, flags, s)) {
		ct_handover(&ck, cv, reply);
		return -1;
	}
	struct sb_tcp_peer *peers = sc->peers;
	peers[0] = cv->tcp[0];
	peers[1] = cv->tcp[1];
	int r = reply ? tcp_update(&peers[1], &peers[0], s, p->cfg_flags & CFG_F_TCP_LIBERAL)
		      : tcp_update(&peers[0], &peers[1], s, p->cfg_flags & CFG_F_TCP_LIBERAL);
	struct sb_ct_key rk;
	ct_reverse(&rk, &ck);
	struct sb_ct_val *rv = bpf_map_lookup_elem(&conns, &rk);
	if ((r != UPD_VALID && r != UPD_VALID_NEW) || !rv) {
		ct_handover(&ck, cv, reply);
		return -1;
	}
	cv->tcp[0] = peers[0];
	cv->tcp[1] = peers[1];
	rv->tcp[0] = peers[0];
	rv->tcp[1] = peers[1];
	if (peers[0].state == TCPS_ESTABLISHED && peers[1].state == TCPS_ESTABLISHED) {
		/* The handshake is complete: established both ways, the slow path told. */
		cv->state = reply ? CS_TRK | CS_EST | CS_RPL : CS_TRK | CS_EST;
		rv->state = reply ? CS_TRK | CS_EST : CS_TRK | CS_EST | CS_RPL;
		ct_event(reply ? &rk : &ck, peers, ST_CT_EST);
	}
	__sync_fetch_and_add(&cv->packets, 1);
	__sync_fetch_and_add(&cv->bytes, bytes);
	cv->used = bpf_ktime_get_ns();
	ct_md(k, r == UPD_VALID_NEW ? CS_TRK | CS_NEW : CS_TRK | CS_EST | (reply ? CS_RPL : 0),
	      a->h, cv->mark);
	return 0;
}

/* ct(nat) of a packet of a NATed connection: its addresses and ports to the tuple the entry
 * names (the other direction's, reversed), the checksums updated incrementally
 * (bpf_l3/l4_csum_replace also keep a CHECKSUM_PARTIAL packet's pseudo-header sum right),
 * and the key with them, so later passes match the translated packet. */
static __always_inline void ct_nat(struct __sk_buff *skb, struct sb_key *k, struct pkt *p,
				   struct sb_ct_nat *n)
{
	keep_orig(k, p);
	if (p->ipv == 4) {
		if (k->w[K_NW_SRC] != n->src[1])
			set_ip4_addr(skb, p, 12, n->src[1]);
		if (k->w[K_NW_DST] != n->dst[1])
			set_ip4_addr(skb, p, 16, n->dst[1]);
		k->w[K_NW_SRC] = (__u32)n->src[1];
		k->w[K_NW_DST] = (__u32)n->dst[1];
	} else {
		if (k->w[K_IPV6_SRC_HI] != n->src[0] || k->w[K_IPV6_SRC_LO] != n->src[1])
			set_ip6_addr(skb, p, 8, n->src[0], n->src[1]);
		if (k->w[K_IPV6_DST_HI] != n->dst[0] || k->w[K_IPV6_DST_LO] != n->dst[1])
			set_ip6_addr(skb, p, 24, n->dst[0], n->dst[1]);
		k->w[K_IPV6_SRC_HI] = n->src[0];
		k->w[K_IPV6_SRC_LO] = n->src[1];
		k->w[K_IPV6_DST_HI] = n->dst[0];
		k->w[K_IPV6_DST_LO] = n->dst[1];
	}
	/* An ICMP query keeps its id (the reference translates ports of TCP and UDP only);
	 * its key's "ports" are its type and code. */
	if (p->l4proto == 6 || p->l4proto == 17) {
		if (k->w[K_TP_SRC] != n->sport)
			set_port(skb, p, 0, n->sport);
		if (k->w[K_TP_DST] != n->dport)
			set_port(skb, p, 2, n->dport);
		k->w[K_TP_SRC] = n->sport;
		k->w[K_TP_DST] = n->dport;
	}
	count(ST_CT_NAT);
}

/* A packet of a connection the map holds (cv: its direction's entry, `state` the ct_state it
 * gives): counters, and the ct fields; an established one's state over what a ct() of the
 * same zone said before (as the slow path keeps it), translated by ct(nat) if NATed. */
static __always_inline void ct_hit(struct __sk_buff *skb, struct sb_key *k, struct pkt *p,
				   struct sb_act *a, struct sb_ct_val *cv, __u32 state, __u32 bytes)
{
	__sync_fetch_and_add(&cv->packets, 1);
	__sync_fetch_and_add(&cv->bytes, bytes);
	cv->used = bpf_ktime_get_ns();
	if ((state & CS_EST) && k->w[K_CT_ZONE] == a->h)
		state |= k->w[K_CT_STATE] & ~CS_NEW;
	if ((state & CS_EST) && (a->w & CT_F_NAT) && cv->nat.flags) {
		state |= cv->nat.flags & (CS_SNAT | CS_DNAT);
		ct_nat(skb, k, p, &cv->nat);
	}
	ct_md(k, state, a->h, cv->mark);
}

/* An ICMP query's ports as the connection maps key them (layout.key_ports): its id, and
 * its type << 8 | its answer's type; -1 for any other ICMP message (an error quoting a
 * connection is +rel, a type without a connection +inv: the slow path's). */
static __always_inline int icmp_ports(struct __sk_buff *skb, struct sb_key *k, struct pkt *p,
				      __u16 *sport, __u16 *dport)
{
	__u32 t = k->w[K_TP_SRC];
	__u32 rev;
	__be16 id;

	if (k->w[K_TP_DST] != 0)
		return -1;              /* a query with a code is no query to conntrack */
	if (p->ipv == 6) {
		if (t != 128 && t != 129)
			return -1;
		rev = t ^ 1;            /* echo request 128 <-> reply 129 */
	} else if (t == 8 || t == 0) {
		rev = t ^ 8;            /* echo request 8 <-> reply 0 */
	} else if (t >= 13 && t <= 16) {
		rev = t & 1 ? t + 1 : t - 1;  /* timestamp 13 <-> 14, information 15 <-> 16 */
	} else {
		return -1;
	}
	if (bpf_skb_load_bytes(skb, p->l4 + 4, &id, 2))
		return -1;
	*sport = bpf_ntohs(id);
	*dport = t << 8 | rev;
	return 0;
}

/* ct() of an IPv6 packet: only established TCP/UDP connections and ICMPv6 echo
 * conversations the slow path handed down are in `conns6`; anything else (a new
 * connection, FIN, SYN, RST, an ICMPv6 error) goes up. */
static __always_inline int ct_lookup6(struct __sk_buff *skb, struct sb_key *k, struct pkt *p,
				      struct sb_act *a, __u32 bytes)
{
	struct sb_ct6_key ck = {};
	struct sb_ct_val *cv;

	if (p->l4 < 0 || (p->l4proto != 6 && p->l4proto != 17 && p->l4proto != 58))
		return -1;
	if (p->l4proto == 6 && (k->w[K_TCP_FLAGS] & 0x07))
		return -1;
	ck.zone = a->h;
	ck.proto = p->l4proto;
	ck.sport = k->w[K_TP_SRC];
	ck.dport = k->w[K_TP_DST];
	if (p->l4proto == 58 && icmp_ports(skb, k, p, &ck.sport, &ck.dport))
		return -1;
	ck.src[0] = k->w[K_IPV6_SRC_HI];
	ck.src[1] = k->w[K_IPV6_SRC_LO];
	ck.dst[0] = k->w[K_IPV6_DST_HI];
	ck.dst[1] = k->w[K_IPV6_DST_LO];
	cv = bpf_map_lookup_elem(&conns6, &ck);
	if (!cv || (cv->state & (CS_TRK | CS_EST)) != (CS_TRK | CS_EST))
		return -1;
	if ((a->w & CT_F_MARK) && ((cv->mark & a->b) != (a->a & a->b)))
		return -1;
	count(ST_CT6);
	ct_hit(skb, k, p, a, cv, cv->state, bytes);
	return 0;
}

/* ct() for a connection in the map: fills the key's ct fields; -1 if the slow path must,
 * 1 if ct_tcp must (called by the program's loop: the call chain's stack is short). */
static __always_inline int ct_lookup(struct __sk_buff *skb, struct sb_key *k, struct pkt *p,
				     struct sb_act *a, __u32 bytes)
{
	struct sb_ct_key ck = {};
	struct sb_ct_val *cv;

	/* Translated by a ct() of this zone already: the slow path finds its connection by
	 * the reverse tuple and translates nothing twice. */
	if (k->w[K_CT_ZONE] == a->h && (k->w[K_CT_STATE] & (CS_SNAT | CS_DNAT)))
		return -1;
	if (p->l4 < 0 || csum_bad(skb, p))
		return -1;
	if (p->ipv == 6)
		return ct_lookup6(skb, k, p, a, bytes);
	if (p->ipv != 4)
		return -1;
	ck.zone = a->h;
	ck.src = k->w[K_NW_SRC];
	ck.dst = k->w[K_NW_DST];
	int opens = 1;                  /* a packet that may open a connection */
	if (k->w[K_NW_PROTO] == 1) {
		/* An ICMP query, a connection like UDP's; only a request opens one (a reply
		 * without its request is the slow path's +inv). */
		ck.proto = 1;
		if (icmp_ports(skb, k, p, &ck.sport, &ck.dport))
			return -1;
		__u32 t = k->w[K_TP_SRC];
		opens = t == 8 || t == 13 || t == 15;
		cv = bpf_map_lookup_elem(&conns, &ck);
	} else {
		if (p->l4proto != 6 && p->l4proto != 17)
			return -1;
		ck.proto = p->l4proto;
		ck.sport = k->w[K_TP_SRC];
		ck.dport = k->w[K_TP_DST];
		cv = bpf_map_lookup_elem(&conns, &ck);
		if (p->l4proto == 6 && (!cv || (cv->state & CS_OPENING)))
			return 1;
		/* FIN, SYN and RST change an established connection's state: the slow path's
		 * conntrack sees them. */
		if (p->l4proto == 6 && (k->w[K_TCP_FLAGS] & 0x07))
			return -1;
	}
	if (!cv) {
		if (opens && (p->cfg_flags & CFG_F_KERNEL_CT) && !(a->w & (CT_F_MARK | CT_F_NAT_NEW)))
			return ct_new(k, &ck, a, bytes);
		return -1;
	}
	__u32 state = cv->state;
	if (!(state & CS_TRK))
		return -1;                      /* held by the slow path alone */
	if ((a->w & CT_F_MARK) && ((cv->mark & a->b) != (a->a & a->b)))
		return -1;                      /* a new mark: the slow path commits it */
	if (state == (CS_TRK | CS_NEW | CS_RPL)) {
		/* The first reply: the connection is established, both ways. */
		struct sb_ct_key ok;
		struct sb_ct_val *ov;

		state = CS_TRK | CS_EST | CS_RPL;
		cv->state = state;
		ct_reverse(&ok, &ck);
		ov = bpf_map_lookup_elem(&conns, &ok);
		if (ov)
			ov->state = CS_TRK | CS_EST;
		ct_event(&ok, cv->tcp, ST_CT_EST);
	}
	ct_hit(skb, k, p, a, cv, state, bytes);
	return 0;
}

#endif
