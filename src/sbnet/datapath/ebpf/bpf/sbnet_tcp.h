/* TCP connection tracking of a handshake, as sbnet.datapath.conntrack_tcp (OVS conntrack-tcp.c, pf's sequence tracking) does it. */
#ifndef SBNET_TCP_H
#define SBNET_TCP_H

/* Peer states, numbered as conntrack_tcp (OVS CT_DPIF_TCPS_*); the machine compares them. */
enum {
	TCPS_CLOSED, TCPS_LISTEN, TCPS_SYN_SENT, TCPS_SYN_RECV, TCPS_ESTABLISHED,
	TCPS_CLOSE_WAIT, TCPS_FIN_WAIT_1, TCPS_CLOSING, TCPS_LAST_ACK, TCPS_FIN_WAIT_2,
	TCPS_TIME_WAIT,
};
#define TH_FIN 0x01
#define TH_SYN 0x02
#define TH_RST 0x04
#define TH_PSH 0x08
#define TH_ACK 0x10
#define TH_URG 0x20
#define WSCALE_FLAG 0x80
#define WSCALE_UNKNOWN 0x40
#define WSCALE_MASK 0x0F
#define MAX_WSCALE 14
#define MAXACKWINDOW (0xFFFF + 1500)

/* Update results (OVS enum ct_update_res). */
enum { UPD_VALID, UPD_INVALID, UPD_NEW, UPD_VALID_NEW };

static __always_inline int seq_geq(__u32 a, __u32 b)
{
	return (__s32)(a - b) >= 0;
}

static __always_inline int seq_gt(__u32 a, __u32 b)
{
	return (__s32)(a - b) > 0;
}

/* tcp_invalid_flags(): combinations no stack sends. */
static __always_inline int tcp_invalid_flags(__u32 f)
{
	if (f & TH_SYN) {
		if (f & (TH_RST | TH_FIN))
			return 1;
	} else if (!(f & (TH_ACK | TH_RST))) {
		return 1;
	}
	return !(f & TH_ACK) && (f & (TH_FIN | TH_PSH | TH_URG));
}

struct wscale_walk {
	int n;
	int i;
	int ws;
};

/* One option of tcp_get_wscale()'s walk over the options in scratch (a bpf_loop step:
 * the verifier checks it once). */
static long wscale_step(__u64 idx, struct wscale_walk *w)
{
	__u32 zero = 0;
	struct scratch *sc = bpf_map_lookup_elem(&scratch, &zero);
	int i = w->i;

	if (!sc || w->n - i < 3 || i < 0 || i > 37)
		return 1;
	__u8 kind = sc->opts[i];
	if (kind == 0)
		return 1;
	if (kind == 1) {
		w->i = i + 1;
		return 0;
	}
	__u8 len = sc->opts[i + 1];
	if (kind == 3) {
		__u8 ws = sc->opts[i + 2];
		w->ws = (ws < MAX_WSCALE ? ws : MAX_WSCALE) | WSCALE_FLAG;
	}
	w->i = i + (len < 2 ? 2 : len);
	return 0;
}

/* tcp_get_wscale() of the n bytes of options at `off`. */
static __always_inline int tcp_wscale(struct __sk_buff *skb, int off, int n)
{
	__u32 zero = 0;
	struct scratch *sc = bpf_map_lookup_elem(&scratch, &zero);
	struct wscale_walk w = {};

	if (!sc || n <= 0 || n > 40 || bpf_skb_load_bytes(skb, off, sc->opts, n))
		return 0;
	w.n = n;
	bpf_loop(40, wscale_step, &w, 0);
	return w.ws;
}

/* The segment at p->l4 of an IPv4 packet; -1 if it cannot be read. */
static __always_inline int tcp_read(struct __sk_buff *skb, struct pkt *p, __u32 flags,
				    struct tcp_seg *s)
{
	__u8 h[20], ip[4];

	if (p->l3 < 0 || p->l4 < 0 || bpf_skb_load_bytes(skb, p->l4, h, 20) ||
	    bpf_skb_load_bytes(skb, p->l3, ip, 4))
		return -1;
	int hl = p->l4 - p->l3;
	int tot = (ip[2] << 8) | ip[3];
	int doff = (h[12] >> 4) * 4;
	s->seq = ((__u32)h[4] << 24) | (h[5] << 16) | (h[6] << 8) | h[7];
	s->ack = ((__u32)h[8] << 24) | (h[9] << 16) | (h[10] << 8) | h[11];
	s->win = (h[14] << 8) | h[15];
	s->plen = tot - hl - doff;
	s->flags = flags;
	s->wscale = (flags & TH_SYN) && doff > 20 ? tcp_wscale(skb, p->l4 + 20, doff - 20) : 0;
	return 0;
}

/* tcp_new_conn(): the peers of a connection its first segment (a SYN) opens. */
static __always_inline void tcp_new_peers(struct sb_tcp_peer *src, struct sb_tcp_peer *dst,
					  struct tcp_seg *s)
{
	__u32 sws = s->wscale & WSCALE_MASK;
	__u32 mw = s->win ? s->win : 1;

	src->seqlo = s->seq;
	src->seqhi = s->seq + s->plen + 2;       /* + 1, + 1 for the SYN */
	src->max_win = (mw + (1u << sws) - 1) >> sws;
	src->wscale = s->wscale;
	src->state = TCPS_SYN_SENT;
	src->pad = 0;
	dst->seqlo = 0;
	dst->seqhi = 1;
	dst->max_win = 1;
	dst->wscale = 0;
	dst->state = TCPS_CLOSED;
	dst->pad = 0;
}

static __always_inline void tcp_slide(struct sb_tcp_peer *src, struct sb_tcp_peer *dst,
				      __u32 win, __u32 end, __u32 ack, __u32 sws)
{
	if (src->max_win < win)
		src->max_win = win;
	if (seq_gt(end, src->seqlo))
		src->seqlo = end;
	__u32 sw = win << sws;
	if (seq_geq(ack + sw, dst->seqhi))
		dst->seqhi = ack + (sw ? sw : 1);
}

/* tcp_conn_update() of the segment sent by `src` to `dst`; updates both.  A global
 * function: the verifier checks its branches once. */
__attribute__((noinline))
int tcp_update(struct sb_tcp_peer *src, struct sb_tcp_peer *dst, struct tcp_seg *s, int liberal)
{
	if (!src || !dst || !s)
		return UPD_INVALID;
	__u32 flags = s->flags;

	if (tcp_invalid_flags(flags))
		return UPD_INVALID;
	if ((flags & (TH_SYN | TH_ACK)) == TH_SYN) {
		if (dst->state >= TCPS_FIN_WAIT_2 && src->state >= TCPS_FIN_WAIT_2)
			return UPD_NEW;
		if (src->state <= TCPS_SYN_SENT) {
			src->state = TCPS_SYN_SENT;
			return UPD_VALID_NEW;
		}
	}
	__u32 sws = 0, dws = 0;
	if ((src->wscale & WSCALE_FLAG) && (dst->wscale & WSCALE_FLAG) && !(flags & TH_SYN)) {
		sws = src->wscale & WSCALE_MASK;
		dws = dst->wscale & WSCALE_MASK;
	} else if ((src->wscale & WSCALE_UNKNOWN) && (dst->wscale & WSCALE_UNKNOWN) &&
		   !(flags & TH_SYN)) {
		sws = dws = MAX_WSCALE;
	}
	__u32 win = s->win, seq = s->seq, orig_seq = s->seq, ack = s->ack;
	__u32 end = seq + s->plen + ((flags & TH_SYN) ? 1 : 0) + ((flags & TH_FIN) ? 1 : 0);
	int check_ackskew = 1;

	if (src->state < TCPS_SYN_SENT) {
		/* The first segment from this end. */
		if ((flags & TH_SYN) && (dst->wscale & WSCALE_FLAG)) {
			src->wscale = s->wscale;
			if (src->wscale & WSCALE_FLAG) {
				sws = src->wscale & WSCALE_MASK;
				win = (win + (1u << sws) - 1) >> sws;
				dws = dst->wscale & WSCALE_MASK;
			} else {
				dst->max_win = (dst->max_win << (dst->wscale & WSCALE_MASK)) & 0xFFFF;
				dst->wscale = 0;
			}
		}
		src->seqlo = seq;
		src->state = TCPS_SYN_SENT;
		__u32 dw = dst->max_win << dws;
		__u32 lim = end + (dw ? dw : 1);
		if (src->seqhi == 1 || seq_geq(lim, src->seqhi)) {
			src->seqhi = lim;
			check_ackskew = 0;
		}
		if (win > src->max_win)
			src->max_win = win;
	}
	if (!(flags & TH_ACK))
		ack = dst->seqlo;
	else if (ack == 0 && (flags & (TH_ACK | TH_RST)) == (TH_ACK | TH_RST))
		ack = dst->seqlo;
	if (seq == end)
		seq = end = src->seqlo;
	__s64 ackskew = check_ackskew ? (__s64)(__s32)(dst->seqlo - ack) : 0;
	int in_window = seq_geq(src->seqhi, end) &&
			seq_geq(seq, src->seqlo - (dst->max_win << dws)) &&
			ackskew >= -MAXACKWINDOW && ackskew <= ((__s64)MAXACKWINDOW << sws) &&
			(!(flags & TH_RST) || orig_seq == src->seqlo ||
			 orig_seq == src->seqlo + 1 || orig_seq + 1 == src->seqlo);
	if (in_window || liberal) {
		tcp_slide(src, dst, win, end, ack, sws);
		if ((flags & TH_SYN) && src->state < TCPS_SYN_SENT)
			src->state = TCPS_SYN_SENT;
		if ((flags & TH_FIN) && src->state < TCPS_CLOSING)
			src->state = TCPS_CLOSING;
		if (flags & TH_ACK) {
			if (dst->state == TCPS_SYN_SENT)
				dst->state = TCPS_ESTABLISHED;
			else if (dst->state == TCPS_CLOSING)
				dst->state = TCPS_FIN_WAIT_2;
		}
		if (flags & TH_RST)
			src->state = dst->state = TCPS_TIME_WAIT;
		return UPD_VALID;
	}
	if ((dst->state < TCPS_SYN_SENT || dst->state >= TCPS_FIN_WAIT_2 ||
	     src->state >= TCPS_FIN_WAIT_2) &&
	    seq_geq(src->seqhi + MAXACKWINDOW, end) && seq_geq(seq, src->seqlo - MAXACKWINDOW)) {
		/* Shotgunned SYNs, a picked-up stream, or funk right after close. */
		tcp_slide(src, dst, win, end, ack, sws);
		if ((flags & TH_FIN) && src->state < TCPS_CLOSING)
			src->state = TCPS_CLOSING;
		if (flags & TH_RST)
			src->state = dst->state = TCPS_TIME_WAIT;
		return UPD_VALID;
	}
	return UPD_INVALID;
}

#endif
