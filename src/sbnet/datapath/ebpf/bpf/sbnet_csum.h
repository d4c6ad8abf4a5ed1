/* Checksums checked before a ct(), as the slow path's conntrack checks them: a packet it would call invalid goes up (sbnet_ct.h includes it). */
#ifndef SBNET_CSUM_H
#define SBNET_CSUM_H

/* conntrack_extract: the IPv4 header's checksum, and TCP's, UDP's (IPv4: 0 is none),
 * ICMP's and ICMPv6's over the IP payload; a wrong one is +inv there, so such a packet is
 * not taken for its connection's here.  A partial checksum (the sender left it to the
 * NIC, the slow path completes it) or one a NIC checked (CHECKSUM_UNNECESSARY) is right
 * by the kernel's own account: only the others are summed, in chunks bpf_csum_diff takes. */
#define CHECKSUM_UNNECESSARY 1
#define CSUM_CHUNK 512
#define CSUM_CHUNKS 18        /* 9,216 bytes: a jumbo frame's payload; a longer one goes up */

static __always_inline __u32 csum_fold32(__s64 s)
{
	__u32 v = (__u32)s;

	v = (v & 0xFFFF) + (v >> 16);
	v = (v & 0xFFFF) + (v >> 16);
	return v;
}

/* The sum of an IPv4 packet's pseudo-header (its header in buf; ICMP has none), built at
 * buf + 64: addresses, a zero, the protocol, the length. */
static __always_inline __s64 pseudo4(__u8 *buf, __u8 proto, int len)
{
	if (proto == 1)
		return 0;
	__builtin_memcpy(buf + 64, buf + 12, 8);
	buf[72] = 0;
	buf[73] = proto;
	buf[74] = len >> 8;
	buf[75] = len & 0xFF;
	buf[76] = buf[77] = buf[78] = buf[79] = 0;
	return bpf_csum_diff(0, 0, (__be32 *)(buf + 64), 16, 0);
}

/* 1 when the one's complement sum of `len` bytes at `off` (an skb's, or an XDP frame's:
 * xdp, a constant, so each program keeps only its own load helper), added to `sum`,
 * does not fold to all ones; buf: CSUM_CHUNK + 3 bytes to load them into. */
static __always_inline int csum_rest_bad(void *ctx, const int xdp, __u8 *buf, int off, int len,
					 __s64 sum)
{
	if (len < 0 || len > CSUM_CHUNK * CSUM_CHUNKS)
		return 1;
	for (int i = 0; i < CSUM_CHUNKS; i++) {
		int at = i * CSUM_CHUNK;
		if (at >= len)
			break;
		int n = len - at;
		if (n > CSUM_CHUNK)
			n = CSUM_CHUNK;
		if (n <= 0)
			return 1;
		if (xdp ? bpf_xdp_load_bytes(ctx, off + at, buf, n) : bpf_skb_load_bytes(ctx, off + at, buf, n))
			return 1;
		/* The last chunk padded with zeros to a word (the sum pads an odd byte so). */
		buf[n] = 0;
		buf[n + 1] = 0;
		buf[n + 2] = 0;
		__u32 n4 = (n + 3) & ~3;
		if (n4 > CSUM_CHUNK)
			n4 = CSUM_CHUNK;
		sum = bpf_csum_diff(0, 0, (__be32 *)buf, n4, (__u32)sum);
	}
	return csum_fold32(sum) != 0xFFFF;
}

/* 1 when the slow path's conntrack would find a checksum of the packet wrong (or this
 * cannot tell), 0 when they are right.  A global function: verified once, its chunk loop
 * not once per path of its caller. */
__attribute__((noinline))
int csum_bad(struct __sk_buff *skb, struct pkt *pp)
{
	__u32 zero = 0;
	struct scratch *sc;

	if (!skb || !pp)
		return 1;
	__u32 st = ip_summed(skb);
	if (st == CHECKSUM_PARTIAL || st == CHECKSUM_UNNECESSARY)
		return 0;
	sc = bpf_map_lookup_elem(&scratch, &zero);
	if (!sc)
		return 1;
	__u8 *buf = sc->pkt;
	int l3 = pp->l3, l4 = pp->l4, end;
	__u8 proto;
	__s64 sum;

	if (l3 < 14 || l3 > 18 || l4 < l3 || l4 > l3 + 60)
		return 1;
	if (pp->ipv == 4) {
		__u32 hl = l4 - l3;
		if (hl < 20 || hl > 60 || (hl & 3) || bpf_skb_load_bytes(skb, l3, buf, hl))
			return 1;
		if (csum_fold32(bpf_csum_diff(0, 0, (__be32 *)buf, hl, 0)) != 0xFFFF)
			return 1;
		end = l3 + ((buf[2] << 8) | buf[3]);
		proto = buf[9];
		if (proto == 17) {
			__u8 c[2];
			if (bpf_skb_load_bytes(skb, l4 + 6, c, 2))
				return 1;
			if (!c[0] && !c[1])
				return 0;               /* no UDP checksum */
		}
		sum = pseudo4(buf, proto, end - l4);
	} else if (pp->ipv == 6) {
		if (l4 != l3 + 40 || bpf_skb_load_bytes(skb, l3, buf, 40))
			return 1;
		end = l4 + ((buf[4] << 8) | buf[5]);
		proto = buf[6];
		/* The pseudo-header: addresses, the 32-bit length, three zeros, next header. */
		__builtin_memcpy(buf + 64, buf + 8, 32);
		__u32 len = end - l4;
		buf[96] = len >> 24;
		buf[97] = len >> 16;
		buf[98] = len >> 8;
		buf[99] = len;
		buf[100] = buf[101] = buf[102] = 0;
		buf[103] = proto;
		sum = bpf_csum_diff(0, 0, (__be32 *)(buf + 64), 40, 0);
	} else {
		return 1;
	}
	if (proto != 6 && proto != 17 && proto != (pp->ipv == 4 ? 1 : 58))
		return 0;                       /* no L4 checksum conntrack reads */
	return csum_rest_bad(skb, 0, buf, l4, end - l4, sum);
}

#endif
