/* The megaflow lookup: tuple space search over the mask list, a per-CPU mask cache in front (sbnet_dp.bpf.c includes it). */
#ifndef SBNET_LOOKUP_H
#define SBNET_LOOKUP_H

/* Which mask position last found a megaflow for a packet of this hash (OVS's kernel
 * datapath keeps the same cache, by skb hash).  A packet tries that mask first and the
 * others only when it misses there: a search of the whole list is a masked copy and a hash
 * of the 248-byte key per mask, each touching a random bucket of the flows table, and on
 * real traffic (caches and TLB cold between packets) those misses cost microseconds.
 * Any mask the key matches under is a right answer: megaflows do not overlap (the
 * reference switch orders its subtables by hits, MegaflowCache.resort). */
#define MC_N 256
struct mc_ent {
	__u32 tag;            /* the key's hash */
	__u32 pos;            /* mask position + 1 (0: empty) */
};
struct mask_cache {
	struct mc_ent e[MC_N];
};
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct mask_cache);
} mask_cache SEC(".maps");

/* A hash of the words that tell one flow's packets from another's, pass and ct_state
 * included (the passes of one packet hit different masks). */
static __always_inline __u32 key_hash(struct sb_key *k)
{
	static const __u8 slots[] = {
		K_RECIRC_ID, K_IN_PORT, K_ETH_SRC, K_ETH_DST, K_ETH_TYPE, K_VLAN_TCI, K_NW_SRC,
		K_NW_DST, K_IPV6_SRC_LO, K_IPV6_DST_LO, K_NW_PROTO, K_TP_SRC, K_TP_DST,
		K_TUN_ID, K_TUN_SRC, K_CT_STATE, K_CT_ZONE,
	};
	__u64 h = 0x9E3779B97F4A7C15ull;

#pragma unroll
	for (int i = 0; i < (int)sizeof(slots); i++)
		h = (h ^ k->w[slots[i]]) * 0xFF51AFD7ED558CCDull;
	return (__u32)(h ^ (h >> 32));
}

/* The search starts at the mask position the cache holds for the key's hash (0 when it
 * holds none) and goes round the list from there: one loop, one lookup site, so the
 * verifier walks it no more often than a plain scan.  mc 0: a plain scan (the XDP
 * program's three unrolled passes through the cache are past the verifier's limit). */
static __always_inline struct sb_flow *lookup(struct sb_key *k, struct sb_fkey *fk, __u32 n_masks,
					      struct mask_cache *mc)
{
	struct mc_ent *e = 0;
	__u32 start = 0;

	if (mc) {
		__u32 h = key_hash(k);
		e = &mc->e[h & (MC_N - 1)];
		if (e->tag == h && e->pos && e->pos <= n_masks)
			start = e->pos - 1;
		e->tag = h;
	}
	for (__u32 i = 0; i < MAX_MASKS; i++) {
		if (i >= n_masks)
			break;
		__u32 pos = start + i;
		if (pos >= n_masks)
			pos -= n_masks;
		struct sb_mask *m = bpf_map_lookup_elem(&masks, &pos);
		if (!m)
			break;
		fk->mask_id = m->id;
		fk->pad = 0;
		for (int j = 0; j < K_NWORDS; j++)
			fk->w[j] = k->w[j] & m->w[j];
		struct sb_flow *f = bpf_map_lookup_elem(&flows, fk);
		if (f) {
			if (e)
				e->pos = pos + 1;
			return f;
		}
	}
	if (e)
		e->pos = 0;
	return 0;
}

static __always_inline struct mask_cache *mask_cache_get(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&mask_cache, &zero);
}

#endif
