/* The kernel tier at XDP: a VIF's untagged IPv4 packets whose whole path the maps decide (megaflows, established connections, one output) forwarded before an skb exists; anything else passes to the TC program (sbnet_dp.bpf.c includes it). */
#ifndef SBNET_XDP_H
#define SBNET_XDP_H

/* What the XDP program did (its own counters: the TC program's `stats` count hits in both). */
enum { XS_FORWARD, XS_PASS, XS_N };
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, XS_N);
	__type(key, __u32);
	__type(value, __u64);
} xdp_stats SEC(".maps");

/* The key being worked on (per CPU: the stack is short). */
struct xdp_keys {
	struct sb_key key;
	struct sb_fkey fk;
	__u8 buf[CSUM_CHUNK + 8];     /* a frame's bytes being summed (xdp_csum_bad) */
};
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct xdp_keys);
} xdp_scratch SEC(".maps");

/* A packet's path worked out before anything is counted or written: the megaflow of each
 * pass and the connection entry its ct() found, the output (on the stack: map values
 * cannot hold the pointers). */
struct xdp_plan {
	struct sb_key *key;
	struct sb_fkey *fk;
	struct sb_flow *flows[MAX_PASSES];
	struct sb_ct_val *conns[MAX_PASSES];
	__u32 n_flows;
	__u32 out;            /* ifindex of the one output */
};

static __always_inline void xdp_count(__u32 which)
{
	__u64 *c = bpf_map_lookup_elem(&xdp_stats, &which);

	if (c)
		*c += 1;
}

/* The flow key of an untagged IPv4 TCP/UDP/ICMP packet, as parse() makes it; -1 for any
 * other packet (the TC program parses it).  icmp_id: an ICMP message's identifier word. */
static __always_inline int xdp_parse(struct xdp_md *ctx, struct sb_key *k, __u32 *l4proto,
				     __u32 *icmp_id)
{
	__u8 *d = (void *)(long)ctx->data;
	__u8 *end = (void *)(long)ctx->data_end;

	if (d + 34 > end)
		return -1;
	if (d[12] != 0x08 || d[13] != 0x00)
		return -1;                      /* IPv4 only, untagged */
	__u8 *ip = d + 14;
	int ihl = (ip[0] & 15) * 4;
	int tot = (ip[2] << 8) | ip[3];
	int size = end - ip;
	if ((ip[0] >> 4) != 4 || ihl < 20 || ihl > tot || tot > size)
		return -1;
	if (((ip[6] << 8) | ip[7]) & 0x3FFF)
		return -1;                      /* fragments: the TC program */
	k->w[K_ETH_DST] = mac48(d);
	k->w[K_ETH_SRC] = mac48(d + 6);
	k->w[K_ETH_TYPE] = ETH_P_IP;
	k->w[K_NW_SRC] = ((__u32)ip[12] << 24) | (ip[13] << 16) | (ip[14] << 8) | ip[15];
	k->w[K_NW_DST] = ((__u32)ip[16] << 24) | (ip[17] << 16) | (ip[18] << 8) | ip[19];
	k->w[K_NW_PROTO] = ip[9];
	k->w[K_NW_TOS] = ip[1];
	k->w[K_NW_TTL] = ip[8];
	__u8 *l4 = ip + ihl;
	int l4size = tot - ihl;
	if (l4 + 8 > end)
		return -1;
	*l4proto = ip[9];
	__u32 ck;
	if (ip[9] == 6) {
		if (l4 + 20 > end)
			return -1;
		int doff = (l4[12] >> 4) * 4;
		if (l4size < 20 || doff < 20 || doff > l4size)
			return -1;
		k->w[K_TCP_FLAGS] = ((l4[12] << 8) | l4[13]) & 0x0FFF;
		ck = (l4[16] << 8) | l4[17];
	} else if (ip[9] == 17) {
		if (l4size < 8)
			return -1;
		ck = (l4[6] << 8) | l4[7];
	} else if (ip[9] == 1) {
		if (l4size < 8)
			return -1;
		k->w[K_TP_SRC] = l4[0];
		k->w[K_TP_DST] = l4[1];
		*icmp_id = (l4[4] << 8) | l4[5];
		return 0;
	} else {
		return -1;
	}
	k->w[K_TP_SRC] = (l4[0] << 8) | l4[1];
	k->w[K_TP_DST] = (l4[2] << 8) | l4[3];
	/* A sender that left its checksum to the NIC (CHECKSUM_PARTIAL: a VM or a stack with
	 * checksum offload) put only the pseudo-header's sum there; an XDP frame loses the
	 * skb state that says so, so such a packet goes to the TC program (a complete
	 * checksum equal to that sum by chance goes there too, which is merely slower). */
	__u32 sum = ((ip[12] << 8) | ip[13]) + ((ip[14] << 8) | ip[15]) +
		    ((ip[16] << 8) | ip[17]) + ((ip[18] << 8) | ip[19]) + ip[9] + l4size;
	sum = (sum & 0xFFFF) + (sum >> 16);
	sum = (sum & 0xFFFF) + (sum >> 16);
	if (ck == sum)
		return -1;
	return 0;
}

/* ct() of an established connection, as ct_lookup() does it for one the map holds with
 * +est, without touching the entry (xdp_apply counts it): its key in *ck; -1: anything
 * else, which the TC program does (a new or opening connection, FIN/SYN/RST, NAT, a new
 * mark). */
static __always_inline int xdp_ct(struct sb_key *k, struct sb_act *a, __u32 l4proto,
				  __u32 icmp_id, struct sb_ct_key *ck)
{
	if (k->w[K_CT_ZONE] == a->h && (k->w[K_CT_STATE] & (CS_SNAT | CS_DNAT)))
		return -1;
	ck->zone = a->h;
	ck->proto = l4proto;
	ck->pad = 0;
	ck->src = k->w[K_NW_SRC];
	ck->dst = k->w[K_NW_DST];
	if (l4proto == 1) {
		__u32 t = k->w[K_TP_SRC];
		if (k->w[K_TP_DST] != 0 || !(t == 8 || t == 0))
			return -1;              /* echo only here; other queries: the TC program */
		ck->sport = icmp_id;
		ck->dport = t << 8 | (t ^ 8);
	} else {
		if (l4proto == 6 && (k->w[K_TCP_FLAGS] & 0x07))
			return -1;
		ck->sport = k->w[K_TP_SRC];
		ck->dport = k->w[K_TP_DST];
	}
	struct sb_ct_val *cv = bpf_map_lookup_elem(&conns, ck);
	if (!cv)
		return -1;
	__u32 state = cv->state;
	if ((state & (CS_TRK | CS_EST | CS_OPENING)) != (CS_TRK | CS_EST))
		return -1;
	if ((a->w & CT_F_MARK) && ((cv->mark & a->b) != (a->a & a->b)))
		return -1;
	if ((a->w & CT_F_NAT) && cv->nat.flags)
		return -1;
	if (k->w[K_CT_ZONE] == a->h)
		state |= k->w[K_CT_STATE] & ~CS_NEW;
	ct_md(k, state, a->h, cv->mark);
	return 0;
}

/* 1 when the slow path's conntrack would find a checksum of the frame wrong (its IPv4
 * header's, or TCP's, UDP's, ICMP's: xdp_parse took untagged IPv4 only, and no partial
 * checksum), as csum_bad() checks a packet at TC; the frame then passes to the TC
 * program, which sends it up. */
__attribute__((noinline))
int xdp_csum_bad(struct xdp_md *ctx)
{
	__u32 zero = 0;
	struct xdp_keys *xk = bpf_map_lookup_elem(&xdp_scratch, &zero);

	if (!ctx || !xk)
		return 1;
	__u8 *buf = xk->buf;
	if (bpf_xdp_load_bytes(ctx, 14, buf, 20))
		return 1;
	__u32 ihl = (buf[0] & 15) * 4;
	if (ihl < 20 || ihl > 60 || bpf_xdp_load_bytes(ctx, 14, buf, ihl))
		return 1;
	if (csum_fold32(bpf_csum_diff(0, 0, (__be32 *)buf, ihl, 0)) != 0xFFFF)
		return 1;
	int len = ((buf[2] << 8) | buf[3]) - ihl;
	__u8 proto = buf[9];
	if (proto == 17) {
		__u8 c[2];
		if (bpf_xdp_load_bytes(ctx, 14 + ihl + 6, c, 2))
			return 1;
		if (!c[0] && !c[1])
			return 0;               /* no UDP checksum */
	}
	return csum_rest_bad(ctx, 1, buf, 14 + ihl, len, pseudo4(buf, proto, len));
}

/* What one pass's actions did (xdp_actions). */
struct xdp_pass {
	struct sb_ct_key ck;  /* the connection its ct() found (proto 0: none) */
	__u32 out;            /* ifindex of its output (0: none) */
};

/* One megaflow's actions as far as this program runs them: ct() of an established
 * connection (one a pass), Ethernet and TTL sets (into the key) and one output, last, to
 * a port that takes XDP frames (1 after a recirculation, 0 after the output); -1 for
 * anything else.  A global function: the verifier checks it once. */
__attribute__((noinline))
int xdp_actions(struct sb_flow *f, struct sb_key *k, struct xdp_pass *o, __u32 l4proto,
		__u32 icmp_id)
{
	if (!f || !k || !o)
		return -1;
	o->ck.proto = 0;
	o->out = 0;
	__u32 n = f->n_acts;
	for (__u32 i = 0; i < MAX_ACTS; i++) {
		if (i >= n)
			break;
		struct sb_act *a = &f->acts[i];
		if (o->out)
			return -1;              /* an action after the output */
		if (a->op == OP_OUTPUT) {
			__u32 ifindex = a->w;
			struct sb_port *to = bpf_map_lookup_elem(&ports, &ifindex);
			if (!to || !(to->flags & PORT_F_XDP_OUT))
				return -1;
			o->out = ifindex;
		} else if (a->op == OP_SET_ETH_SRC) {
			k->w[K_ETH_SRC] = a->a;
		} else if (a->op == OP_SET_ETH_DST) {
			k->w[K_ETH_DST] = a->a;
		} else if (a->op == OP_SET_IP4_TTL) {
			k->w[K_NW_TTL] = a->h & 0xFF;
		} else if (a->op == OP_CT) {
			if (o->ck.proto || xdp_ct(k, a, l4proto, icmp_id, &o->ck))
				return -1;
		} else if (a->op == OP_RECIRC) {
			k->w[K_RECIRC_ID] = a->w;
			return 1;
		} else {
			return -1;
		}
	}
	return o->out ? 0 : -1;
}

/* The packet's whole path through the maps, nothing counted yet: 0 and the plan filled
 * when this program can take it, -1 when the TC program must. */
static __always_inline int xdp_plan(struct xdp_plan *pl, __u32 n_masks, __u32 l4proto,
				    __u32 icmp_id)
{
	struct xdp_pass o = {};

#pragma unroll
	for (int pass = 0; pass < MAX_PASSES; pass++) {
		struct sb_flow *f = lookup(pl->key, pl->fk, n_masks, 0);
		if (!f)
			return -1;
		pl->flows[pass] = f;
		pl->n_flows = pass + 1;
		int r = xdp_actions(f, pl->key, &o, l4proto, icmp_id);
		if (r < 0)
			return -1;
		if (o.ck.proto) {
			pl->conns[pass] = bpf_map_lookup_elem(&conns, &o.ck);
			if (!pl->conns[pass])
				return -1;
		}
		if (r == 0) {
			pl->out = o.out;
			return 0;
		}
	}
	return -1;
}

/* The plan carried out: every megaflow and connection entry counted as the TC program
 * counts them, the headers set to the key's final values, the frame redirected. */
static __always_inline int xdp_apply(struct xdp_md *ctx, struct xdp_plan *pl, __u32 wire)
{
	__u8 *d = (void *)(long)ctx->data;
	__u8 *end = (void *)(long)ctx->data_end;
	__u64 now = bpf_ktime_get_ns();
	struct sb_key *k = pl->key;

#pragma unroll
	for (int i = 0; i < MAX_PASSES; i++) {
		struct sb_flow *f = pl->flows[i];
		struct sb_ct_val *cv = pl->conns[i];
		if (i >= pl->n_flows || !f)
			break;
		__sync_fetch_and_add(&f->packets, 1);
		__sync_fetch_and_add(&f->bytes, wire);
		f->used = now;
		if (k->w[K_TCP_FLAGS] & ~f->tcp_flags)
			__sync_fetch_and_or(&f->tcp_flags, (__u32)k->w[K_TCP_FLAGS]);
		count(ST_HIT);
		if (cv) {
			__sync_fetch_and_add(&cv->packets, 1);
			__sync_fetch_and_add(&cv->bytes, wire);
			cv->used = now;
		}
	}
	if (d + 34 > end)
		return XDP_ABORTED;
	for (int i = 0; i < 6; i++) {
		d[i] = k->w[K_ETH_DST] >> (40 - 8 * i);
		d[6 + i] = k->w[K_ETH_SRC] >> (40 - 8 * i);
	}
	__u8 *ip = d + 14;
	__u8 ttl = k->w[K_NW_TTL];
	if (ip[8] != ttl) {
		/* RFC 1624 over the TTL/protocol word. */
		__u16 old = (ip[8] << 8) | ip[9], new = (ttl << 8) | ip[9];
		__u32 sum = (__u16)~((ip[10] << 8) | ip[11]) + (__u16)~old + new;
		sum = (sum & 0xFFFF) + (sum >> 16);
		sum = (sum & 0xFFFF) + (sum >> 16);
		sum = ~sum & 0xFFFF;
		ip[8] = ttl;
		ip[10] = sum >> 8;
		ip[11] = sum;
	}
	xdp_count(XS_FORWARD);
	return bpf_redirect(pl->out, 0);
}

/* Test mode (CFG_F_TEST): the ingress port BPF_PROG_RUN cannot give (it takes real
 * devices only), and what the last run did, in trace_hdr and trace_out[0]. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} xdp_test_in SEC(".maps");

static __always_inline void xdp_trace(struct xdp_plan *pl, int forwarded)
{
	__u32 zero = 0;
	struct sb_trace_hdr *th = bpf_map_lookup_elem(&trace_hdr, &zero);
	struct sb_trace_out *t = bpf_map_lookup_elem(&trace_out, &zero);

	if (!th || !t)
		return;
	th->n_out = forwarded;
	th->verdict = forwarded ? VERDICT_FORWARD : 0;
	th->mf_id = forwarded && pl->flows[0] ? pl->flows[0]->mf_id : 0;
	th->passes = forwarded ? pl->n_flows : 0;
	t->ifindex = forwarded ? pl->out : 0;
}

SEC("xdp")
int sbnet_xdp(struct xdp_md *ctx)
{
	__u32 zero = 0;
	struct sb_config *cfg = bpf_map_lookup_elem(&config, &zero);
	struct xdp_keys *xk = bpf_map_lookup_elem(&xdp_scratch, &zero);
	__u32 ifindex = ctx->ingress_ifindex;
	__u32 l4proto = 0;
	__u32 icmp_id = 0;
	struct xdp_plan plan = {};
	struct xdp_plan *pl = &plan;

	if (!cfg || !xk)
		return XDP_PASS;
	pl->key = &xk->key;
	pl->fk = &xk->fk;
	int test = cfg->flags & CFG_F_TEST;
	if (test) {
		__u32 *in = bpf_map_lookup_elem(&xdp_test_in, &zero);
		if (!in)
			return XDP_PASS;
		ifindex = *in;
	}
	struct sb_port *port = bpf_map_lookup_elem(&ports, &ifindex);
	/* A held VIF's frames go to the TC program, whose first one releases the hold. */
	if (!port || (port->flags & (PORT_F_TUNNEL | PORT_F_HELD))) {
		if (test)
			xdp_trace(pl, 0);
		return XDP_PASS;
	}
	struct sb_key *k = pl->key;
	for (int j = 0; j < K_NWORDS; j++)
		k->w[j] = 0;
	k->w[K_IN_PORT] = port->ofport;
	int ok = !xdp_parse(ctx, k, &l4proto, &icmp_id) && !xdp_plan(pl, cfg->n_masks, l4proto, icmp_id);
	int ct = 0;
	for (int i = 0; i < MAX_PASSES; i++)
		ct |= pl->conns[i] != 0;
	if (!ok || (ct && xdp_csum_bad(ctx))) {
		xdp_count(XS_PASS);
		if (test)
			xdp_trace(pl, 0);
		return XDP_PASS;
	}
	if (test)
		xdp_trace(pl, 1);
	return xdp_apply(ctx, pl, (long)ctx->data_end - (long)ctx->data);
}

#endif
