// SPDX-License-Identifier: Apache-2.0
/*
 * Kangaroo switch: the XDP programs on port interfaces and on the uplink.
 *
 * User space is the authority: it learns, floods, answers what it must, and keeps the maps below
 * in sync with its tables. These programs only act on what the maps already decide, and hand
 * everything else to the user-space switch through AF_XDP sockets.
 *
 * Port program (kangaroo_port), per frame:
 *   not a port, or not steered            -> XDP_PASS (not_port)
 *   port not in fast mode                  -> AF_XDP (to_socket)
 *   malformed, multicast source, VLAN,
 *   port security not obviously met,
 *   source not learned on this port        -> AF_XDP (user space learns, counts, drops)
 *   ARP request answerable from kg_arp     -> reply in place, back out of the port
 *                                              (fast_arp_reply)
 *   IPv4 to a known local port             -> complete a partial checksum, redirect (fast_local)
 *   IPv4 to a known remote VTEP            -> complete, encapsulate, redirect to the uplink
 *                                              (fast_encap)
 *   anything else (BUM, unknown, IPv6...)  -> AF_XDP
 *
 * Uplink program (kangaroo_uplink), per frame:
 *   not VXLAN for this host                -> XDP_PASS (uplink_pass)
 *   from an address that is not a peer     -> XDP_PASS (uplink_not_peer; user space drops it)
 *   fast mode, VNI shared with the peer, inner source known behind that peer, inner
 *   destination a known local port         -> decapsulate, redirect (fast_decap)
 *   anything else from a peer              -> AF_XDP (uplink_to_socket)
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/udp.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "abi.h"

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, KG_MAX_PORTS);
	__type(key, __u32);
	__type(value, struct kg_port);
} kg_ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, KG_MAX_SOCKETS);
	__type(key, __u32);
	__type(value, __u32);
} kg_xsks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_DEVMAP_HASH);
	__uint(max_entries, KG_MAX_PORTS + 1);
	__type(key, __u32);
	__type(value, __u32);
} kg_devs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, KG_CTR_COUNT);
	__type(key, __u32);
	__type(value, __u64);
} kg_counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct kg_uplink);
} kg_uplink_cfg SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct kg_storm_cfg);
} kg_storm_cfg SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, KG_MAX_PORTS);
	__type(key, __u32);
	__type(value, struct kg_storm_bucket);
} kg_storm SEC(".maps");

/* Peer address (network order) -> peer id. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, KG_MAX_PEERS);
	__type(key, __u32);
	__type(value, __u32);
} kg_peers SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, KG_MAX_PEERS * 16);
	__type(key, struct kg_peer_vni);
	__type(value, __u32);
} kg_peer_vnis SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, KG_MAX_PEERS);
	__type(key, __u32);
	__type(value, struct kg_vtep);
} kg_vteps SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, KG_FDB_ENTRIES);
	__type(key, struct kg_fdb_key);
	__type(value, struct kg_fdb_val);
} kg_fdb SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, KG_ARP_ENTRIES);
	__type(key, struct kg_arp_key);
	__type(value, struct kg_arp_val);
} kg_arp SEC(".maps");

/* Keeps clang from rewriting a bounds check into arithmetic on the packet end, which the
 * verifier refuses. */
#define opaque(x) asm volatile("" : "+r"(x))

/* Longest L4 segment whose checksum the fast path completes (4-byte words). */
#define MAX_L4_WORDS 1024

struct arp_eth_ipv4 {
	__be16 htype;
	__be16 ptype;
	__u8 hlen;
	__u8 plen;
	__be16 op;
	__u8 sha[6];
	__u8 spa[4];
	__u8 tha[6];
	__u8 tpa[4];
} __attribute__((packed));

static __always_inline void count(__u32 which)
{
	__u64 *c = bpf_map_lookup_elem(&kg_counters, &which);

	if (c)
		*c += 1;
}

static __always_inline int to_socket(struct xdp_md *ctx, __u32 slot, __u32 ok_counter)
{
	__u32 queue = ctx->rx_queue_index;

	if (queue >= KG_MAX_QUEUES || slot >= KG_MAX_PORTS) {
		count(KG_CTR_NO_SOCKET);
		return XDP_PASS;
	}
	__u32 index = slot * KG_MAX_QUEUES + queue;

	if (!bpf_map_lookup_elem(&kg_xsks, &index)) {
		count(KG_CTR_NO_SOCKET);
		return XDP_PASS;
	}
	long action = bpf_redirect_map(&kg_xsks, index, XDP_ABORTED);

	count(action == XDP_REDIRECT ? ok_counter : KG_CTR_REDIRECT_FAILED);
	return action;
}

static __always_inline __u16 fold(__u64 s)
{
	s = (s & 0xffffffff) + (s >> 32);
	s = (s & 0xffffffff) + (s >> 32);
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return (__u16)s;
}

static __always_inline int mac_eq(const __u8 *a, const __u8 *b)
{
	return a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3] && a[4] == b[4] &&
	       a[5] == b[5];
}

static __always_inline void mac_copy(__u8 *dst, const __u8 *src)
{
	dst[0] = src[0];
	dst[1] = src[1];
	dst[2] = src[2];
	dst[3] = src[3];
	dst[4] = src[4];
	dst[5] = src[5];
}

#define KG_TOKEN 1000000000ull

/* Takes one token from a bucket of `burst` filled at `rate` a second; 0 if it is empty. */
static __always_inline int storm_take(__u64 *tokens, __u64 *last, __u64 now, __u32 rate,
				      __u32 burst)
{
	__u64 cap = (__u64)(burst ? burst : 1) * KG_TOKEN;
	__u64 elapsed = now - *last;

	/* At most a second of refill at once: rate * elapsed stays within 64 bits. */
	if (elapsed > KG_TOKEN)
		elapsed = KG_TOKEN;
	*last = now;
	__u64 t = *tokens + elapsed * rate;

	if (t > cap)
		t = cap;
	if (t < KG_TOKEN) {
		*tokens = t;
		return 0;
	}
	*tokens = t - KG_TOKEN;
	return 1;
}

/* Storm control in front of the slow path: 1 if the frame on port `ifindex` is over one of
 * its port's limits (counted; the caller drops it), 0 to hand it to user space. The buckets are
 * per CPU, as user space's are per worker. User space applies the same limits to what passes. */
static __always_inline int storm_drop(struct kg_port *port, __u32 ifindex, void *data, void *end)
{
	__u32 zero = 0;
	struct kg_storm_cfg *cfg = bpf_map_lookup_elem(&kg_storm_cfg, &zero);

	if (!cfg || (!cfg->bum_rate && !cfg->new_rate))
		return 0;
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > end)
		return 0;
	int bum = eth->h_dest[0] & 1;
	int fresh = 0;

	/* Only a fast port's program has the FDB mirror to tell a new station by (mode "afxdp"
	 * keeps none: every source would look new); there user space alone limits them. */
	if (cfg->new_rate && (port->flags & KG_PORT_F_FAST) && !(eth->h_source[0] & 1)) {
		struct kg_fdb_key sk = { .vni = port->vni };

		mac_copy(sk.mac, eth->h_source);
		fresh = !bpf_map_lookup_elem(&kg_fdb, &sk);
	}
	if (!(bum && cfg->bum_rate) && !fresh)
		return 0;
	__u64 now = bpf_ktime_get_ns();
	struct kg_storm_bucket *b = bpf_map_lookup_elem(&kg_storm, &ifindex);

	if (!b) {
		struct kg_storm_bucket full = {
			.bum_tokens = (__u64)cfg->bum_burst * KG_TOKEN,
			.bum_last = now,
			.new_tokens = (__u64)cfg->new_burst * KG_TOKEN,
			.new_last = now,
		};

		bpf_map_update_elem(&kg_storm, &ifindex, &full, BPF_NOEXIST);
		b = bpf_map_lookup_elem(&kg_storm, &ifindex);
		if (!b)
			return 0;
	}
	if (fresh && !storm_take(&b->new_tokens, &b->new_last, now, cfg->new_rate, cfg->new_burst)) {
		count(KG_CTR_STORM_NEW_MAC);
		return 1;
	}
	if (bum && cfg->bum_rate &&
	    !storm_take(&b->bum_tokens, &b->bum_last, now, cfg->bum_rate, cfg->bum_burst)) {
		count(KG_CTR_STORM_BUM);
		return 1;
	}
	return 0;
}

/*
 * Completes a TCP/UDP checksum the sender left partial (the field holds the pseudo-header sum;
 * XDP carries no metadata saying so), as the user-space switch does. Returns 0 when the frame can
 * go on (nothing to do, or completed), -1 when it must go to user space (malformed, too long).
 * Sums are of 16-bit words as loaded (host order) and stored back the same way, which is
 * byte-order independent for ones'-complement arithmetic.
 */
static __always_inline int fix_l4_csum(void *end, struct iphdr *ip)
{
	if (ip->protocol != IPPROTO_TCP && ip->protocol != IPPROTO_UDP)
		return 0;
	if (ip->frag_off & bpf_htons(0x3fff))
		return 0;
	__u32 ihl = ip->ihl * 4;
	__u32 tot = bpf_ntohs(ip->tot_len);

	if (ihl < 20 || tot < ihl)
		return -1;
	__u32 l4_len = tot - ihl;

	if (l4_len > MAX_L4_WORDS * 4)
		return -1;
	void *l4 = (void *)ip + ihl;
	__u16 *fieldp;

	if (ip->protocol == IPPROTO_TCP) {
		if (l4 + 18 > end || l4_len < 18)
			return -1;
		fieldp = l4 + 16;
	} else {
		if (l4 + 8 > end || l4_len < 8)
			return -1;
		fieldp = l4 + 6;
	}
	__u16 field = *fieldp;

	if (ip->protocol == IPPROTO_UDP && field == 0)
		return 0;
	__u64 ps = (ip->saddr & 0xffff) + (ip->saddr >> 16) + (ip->daddr & 0xffff) +
		   (ip->daddr >> 16) + ((__u32)ip->protocol << 8) + bpf_htons((__u16)l4_len);
	__u16 pseudo = fold(ps);

	if (field != pseudo && !((field ^ pseudo) == 0xffff && (pseudo == 0 || pseudo == 0xffff)))
		return 0;
	__u64 s = 0;
	__u32 words = l4_len / 4;
	__u32 *p = l4;

	for (__u32 i = 0; i < MAX_L4_WORDS; i++) {
		if (i >= words)
			break;
		__u32 *next = p + 1;

		opaque(next);
		if ((void *)next > end)
			return -1;
		s += *p;
		p = next;
	}
	__u8 *t = (__u8 *)p;

	if (l4_len & 2) {
		__u8 *lim = t + 2;

		opaque(lim);
		if ((void *)lim > end)
			return -1;
		s += *(__u16 *)t;
		t += 2;
	}
	if (l4_len & 1) {
		__u8 *lim = t + 1;

		opaque(lim);
		if ((void *)lim > end)
			return -1;
		s += *t;
	}
	if (fold(s + pseudo) == 0xffff)
		return 0; /* a finished checksum that equals the pseudo-header sum */
	__u16 c = ~fold(s);

	if (ip->protocol == IPPROTO_UDP && c == 0)
		c = 0xffff;
	*fieldp = c;
	count(KG_CTR_FAST_CSUM);
	return 0;
}

static __always_inline __u64 rotl(__u64 x, int r)
{
	return (x << r) | (x >> (64 - r));
}

/* The inner flow hash, identical to `tunnel::flow_hash` in user space. */
static __always_inline __u32 flow_hash(void *data, void *end)
{
	__u8 *f = data;
	__u64 a = 0, b = 0;

	if (data + 14 > end)
		return 0;
	for (int i = 0; i < 12; i++)
		a ^= (__u64)f[i] << ((i % 8) * 8);
	if (f[12] == 0x08 && f[13] == 0x00 && data + 34 <= end) {
		__u64 addrs = 0;

		for (int i = 26; i < 34; i++)
			addrs = (addrs << 8) | f[i];
		__u8 proto = f[23];

		b = addrs ^ ((__u64)proto << 56);
		__u32 ihl = (f[14] & 0x0f) * 4;
		int unfragmented = (f[20] & 0x3f) == 0 && f[21] == 0;

		if (unfragmented && (proto == 6 || proto == 17)) {
			__u8 *l4 = f + 14 + ihl;

			if ((void *)(l4 + 4) <= end) {
				__u32 ports = ((__u32)l4[0] << 24) | ((__u32)l4[1] << 16) |
					      ((__u32)l4[2] << 8) | l4[3];

				a ^= (__u64)ports << 16;
			}
		}
	}
	const __u64 seed = 0x9e3779b97f4a7c15ULL;
	__u64 x = a ^ seed;

	x += rotl(b, 29) ^ rotl(seed, 17);
	x ^= x >> 33;
	x *= 0xff51afd7ed558ccdULL;
	x ^= x >> 33;
	x *= 0xc4ceb9fe1a85ec53ULL;
	x ^= x >> 33;
	return (__u32)(x ^ (x >> 32));
}

/* The peer's template, if it is usable (next hop resolved) and the peer shares `vni`. */
static __always_inline struct kg_vtep *usable_vtep(__u32 peer, __u32 vni)
{
	struct kg_vtep *v = bpf_map_lookup_elem(&kg_vteps, &peer);

	if (!v || !v->valid)
		return 0;
	struct kg_peer_vni pv = { .addr = v->addr, .vni = vni };

	if (!bpf_map_lookup_elem(&kg_peer_vnis, &pv))
		return 0;
	return v;
}

/* Writes the outer Ethernet/IPv4/UDP/VXLAN headers from `v`'s template into the KG_OUTER_LEN
 * bytes at `data` (bounds-checked by the caller), with the per-frame fields for an
 * `inner_len`-byte inner frame: IPv4 length and checksum, UDP source port from the flow hash,
 * UDP length, VNI. */
static __always_inline void write_outer(void *data, struct kg_vtep *v, __u32 inner_len,
					__u32 hash, __u32 vni)
{
	__builtin_memcpy(data, v->hdr, KG_OUTER_LEN);
	struct iphdr *ip = data + 14;
	struct udphdr *udp = data + 34;
	__u8 *vx = data + 42;

	ip->tot_len = bpf_htons(inner_len + 36);
	ip->check = 0;
	__u16 *w = (__u16 *)ip;
	__u64 s = 0;

	for (int i = 0; i < 10; i++)
		s += w[i];
	ip->check = ~fold(s);
	udp->source = bpf_htons(49152 | (hash & 0x3fff));
	udp->len = bpf_htons(inner_len + 16);
	udp->check = 0;
	vx[4] = vni >> 16;
	vx[5] = vni >> 8;
	vx[6] = vni;
}

/* Encapsulates the frame toward peer `peer` in `vni` and redirects it to the uplink.
 * Returns -1 (frame untouched) when user space must handle it. */
static __always_inline int encap(struct xdp_md *ctx, __u32 peer, __u32 vni)
{
	struct kg_vtep *v = usable_vtep(peer, vni);

	if (!v)
		return -1;
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	__u32 inner_len = end - data;

	if (inner_len > v->max_inner || inner_len > 0xffff - 64)
		return -1;
	__u32 hash = flow_hash(data, end);

	if (bpf_xdp_adjust_head(ctx, -KG_OUTER_LEN))
		return -1;
	data = (void *)(long)ctx->data;
	end = (void *)(long)ctx->data_end;
	if (data + KG_OUTER_LEN > end)
		return -1;
	write_outer(data, v, inner_len, hash, vni);
	long action = bpf_redirect_map(&kg_devs, v->uplink, 0);

	count(action == XDP_REDIRECT ? KG_CTR_FAST_ENCAP : KG_CTR_FAST_REDIRECT_FAILED);
	return action;
}

static __always_inline int ip_allowed(struct kg_port *port, __u32 ip)
{
	if (!(port->flags & KG_PORT_F_IPS))
		return 1;
	for (int i = 0; i < KG_MAX_IPS; i++) {
		if (i >= port->n_ips)
			break;
		if (port->ips[i] == ip)
			return 1;
	}
	return 0;
}

/* Answers an ARP request from the ARP map in place. Returns XDP_TX, or -1 for user space. */
static __always_inline int arp_reply(struct ethhdr *eth, void *end, struct kg_port *port)
{
	struct arp_eth_ipv4 *arp = (void *)(eth + 1);

	if ((void *)(arp + 1) > end)
		return -1;
	if (arp->htype != bpf_htons(1) || arp->ptype != bpf_htons(ETH_P_IP) || arp->hlen != 6 ||
	    arp->plen != 4 || arp->op != bpf_htons(1))
		return -1;
	if (!mac_eq(arp->sha, eth->h_source))
		return -1;
	__u32 spa, tpa;

	__builtin_memcpy(&spa, arp->spa, 4);
	__builtin_memcpy(&tpa, arp->tpa, 4);
	/* Probes (sender 0.0.0.0) and gratuitous requests are for user space to see. */
	if (spa == 0 || spa == tpa || !ip_allowed(port, spa))
		return -1;
	struct kg_arp_key k = { .vni = port->vni, .ip = tpa };
	struct kg_arp_val *a = bpf_map_lookup_elem(&kg_arp, &k);

	if (!a)
		return -1;
	__u8 answer[6];

	mac_copy(answer, a->mac);
	mac_copy(eth->h_dest, eth->h_source);
	mac_copy(eth->h_source, answer);
	arp->op = bpf_htons(2);
	mac_copy(arp->tha, arp->sha);
	__builtin_memcpy(arp->tpa, &spa, 4);
	mac_copy(arp->sha, answer);
	__builtin_memcpy(arp->spa, &tpa, 4);
	count(KG_CTR_FAST_ARP_REPLY);
	return XDP_TX;
}

/* What the port decision tree concluded (port_decide). */
enum kg_action {
	/* User space decides (learning, BUM, unknown, anything unusual). */
	KG_ACT_SOCKET = 0,
	/* An ARP reply was written in place: send it back out of the port. */
	KG_ACT_ARP_REPLY = 1,
	/* Known unicast to the local port `target` (its ifindex). */
	KG_ACT_LOCAL = 2,
	/* Known unicast behind the peer `target` (its id), in `vni`. */
	KG_ACT_ENCAP = 3,
};

struct kg_verdict {
	__u32 target;
	__u32 vni;
	/* KG_FDB_F_* of the destination entry. */
	__u32 flags;
};

/*
 * The port decision tree, shared by the XDP and tc entry points: port security, source learned
 * on this port, ARP answerable from the map, IPv4 unicast to a known destination. `complete_csum`
 * completes partial checksums (XDP, which carries no checksum metadata); tc leaves them to the
 * skb's offload state. The caller has checked that the port is steered and fast.
 */
static __always_inline int port_decide(struct kg_port *port, __u32 ifindex, void *data, void *end,
				       struct kg_verdict *v, int complete_csum)
{
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > end) {
		count(KG_CTR_MALFORMED);
		return KG_ACT_SOCKET;
	}
	if ((eth->h_source[0] & 1) ||
	    ((port->flags & KG_PORT_F_MAC) && !mac_eq(eth->h_source, port->mac)))
		return KG_ACT_SOCKET;
	/* The source must already be learned on this very port: new and moved stations are
	 * user space's to learn. */
	struct kg_fdb_key sk = { .vni = port->vni };

	mac_copy(sk.mac, eth->h_source);
	struct kg_fdb_val *src = bpf_map_lookup_elem(&kg_fdb, &sk);

	if (!src || src->kind != KG_DEST_PORT || src->target != ifindex)
		return KG_ACT_SOCKET;
	if (!src->hit)
		src->hit = 1;
	if (eth->h_proto == bpf_htons(ETH_P_ARP))
		return arp_reply(eth, end, port) < 0 ? KG_ACT_SOCKET : KG_ACT_ARP_REPLY;
	if (eth->h_proto != bpf_htons(ETH_P_IP) || (eth->h_dest[0] & 1))
		return KG_ACT_SOCKET;
	struct iphdr *ip = (void *)(eth + 1);

	if ((void *)(ip + 1) > end) {
		count(KG_CTR_MALFORMED);
		return KG_ACT_SOCKET;
	}
	if (ip->version != 4 || !ip_allowed(port, ip->saddr))
		return KG_ACT_SOCKET;
	struct kg_fdb_key dk = { .vni = port->vni };

	mac_copy(dk.mac, eth->h_dest);
	struct kg_fdb_val *dst = bpf_map_lookup_elem(&kg_fdb, &dk);

	if (!dst || (dst->kind == KG_DEST_PORT && dst->target == ifindex))
		return KG_ACT_SOCKET;
	__u32 kind = dst->kind;

	v->target = dst->target;
	v->flags = dst->flags;
	v->vni = port->vni;
	if (kind != KG_DEST_PORT && kind != KG_DEST_VTEP)
		return KG_ACT_SOCKET;
	if (complete_csum && fix_l4_csum(end, ip) < 0) {
		count(KG_CTR_MALFORMED);
		return KG_ACT_SOCKET;
	}
	return kind == KG_DEST_PORT ? KG_ACT_LOCAL : KG_ACT_ENCAP;
}

SEC("xdp")
int kangaroo_port(struct xdp_md *ctx)
{
	__u32 ifindex = ctx->ingress_ifindex;
	struct kg_port *port = bpf_map_lookup_elem(&kg_ports, &ifindex);

	if (!port || !(port->flags & KG_PORT_F_STEER)) {
		count(KG_CTR_NOT_PORT);
		return XDP_PASS;
	}
	__u32 slot = port->slot;
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;

	if (!(port->flags & KG_PORT_F_FAST)) {
		if (storm_drop(port, ifindex, data, end))
			return XDP_DROP;
		return to_socket(ctx, slot, KG_CTR_TO_SOCKET);
	}
	struct kg_verdict v = {};

	switch (port_decide(port, ifindex, data, end, &v, 1)) {
	case KG_ACT_ARP_REPLY:
		/* Back out of the port it came in on. A redirect to the port itself rather than
		 * XDP_TX: on veth, XDP_TX frames built from an skb did not reach the VM. */
		return bpf_redirect_map(&kg_devs, ifindex, XDP_TX);
	case KG_ACT_LOCAL: {
		long action = bpf_redirect_map(&kg_devs, v.target, 0);

		count(action == XDP_REDIRECT ? KG_CTR_FAST_LOCAL : KG_CTR_FAST_REDIRECT_FAILED);
		return action;
	}
	case KG_ACT_ENCAP: {
		int r = encap(ctx, v.target, v.vni);

		if (r >= 0)
			return r;
		break;
	}
	default:
		break;
	}
	/* After encap() gave up, the frame is as it arrived; re-read its bounds. */
	data = (void *)(long)ctx->data;
	end = (void *)(long)ctx->data_end;
	if (storm_drop(port, ifindex, data, end))
		return XDP_DROP;
	return to_socket(ctx, slot, KG_CTR_TO_SOCKET);
}

/* What the uplink decision tree concluded (uplink_decide). */
enum kg_uplink_action {
	/* Not VXLAN from a peer for this host: the host's own traffic. */
	KG_UP_PASS = 0,
	/* VXLAN to our port from an address that is not a peer. */
	KG_UP_NOT_PEER = 1,
	/* VXLAN from a peer that user space must handle. */
	KG_UP_SOCKET = 2,
	/* Known traffic to the local port `target`: strip the outer 50 bytes and forward. */
	KG_UP_DECAP = 3,
};

/*
 * The uplink decision tree, shared by the XDP and tc entry points. Only the plain case is
 * decapsulated in the kernel: a 20-byte outer IPv4 header, no outer UDP checksum to verify,
 * unfragmented, exactly the I flag, a VNI shared with the peer, the inner source known behind
 * that peer and the inner destination a known local port. With `inner_ipv4_only` (tc, where the
 * skb's protocol must stay IPv4) other inner types go to user space.
 */
static __always_inline int uplink_decide(struct kg_uplink *up, void *data, void *end,
					 struct kg_verdict *v, int complete_csum,
					 int inner_ipv4_only)
{
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);

	if (!up || !(up->flags & KG_UPLINK_F_ENABLED) || (void *)(ip + 1) > end ||
	    eth->h_proto != bpf_htons(ETH_P_IP) || ip->protocol != IPPROTO_UDP ||
	    ip->daddr != up->addr || ip->ihl < 5)
		return KG_UP_PASS;
	__u32 ihl = ip->ihl * 4;
	struct udphdr *udp = (void *)ip + ihl;

	if ((void *)(udp + 1) > end || udp->dest != up->port)
		return KG_UP_PASS;
	__u32 src_addr = ip->saddr;
	__u32 *peer = bpf_map_lookup_elem(&kg_peers, &src_addr);

	if (!peer)
		return KG_UP_NOT_PEER;
	if (!(up->flags & KG_UPLINK_F_FAST))
		return KG_UP_SOCKET;
	__u8 *vx = (void *)(udp + 1);
	struct ethhdr *inner = (void *)(vx + 8);

	if (ihl != 20 || udp->check != 0 || (ip->frag_off & bpf_htons(0x3fff)) ||
	    (void *)(inner + 1) > end || vx[0] != 0x08) {
		if ((void *)(inner + 1) > end)
			count(KG_CTR_MALFORMED);
		return KG_UP_SOCKET;
	}
	__u32 vni = ((__u32)vx[4] << 16) | ((__u32)vx[5] << 8) | vx[6];
	struct kg_peer_vni pv = { .addr = src_addr, .vni = vni };

	if (!bpf_map_lookup_elem(&kg_peer_vnis, &pv) || (inner->h_dest[0] & 1))
		return KG_UP_SOCKET;
	if (inner_ipv4_only && inner->h_proto != bpf_htons(ETH_P_IP))
		return KG_UP_SOCKET;
	struct kg_fdb_key sk = { .vni = vni };

	mac_copy(sk.mac, inner->h_source);
	struct kg_fdb_val *src = bpf_map_lookup_elem(&kg_fdb, &sk);

	if (!src || src->kind != KG_DEST_VTEP || src->target != *peer)
		return KG_UP_SOCKET;
	struct kg_fdb_key dk = { .vni = vni };

	mac_copy(dk.mac, inner->h_dest);
	struct kg_fdb_val *dst = bpf_map_lookup_elem(&kg_fdb, &dk);

	if (!dst || dst->kind != KG_DEST_PORT)
		return KG_UP_SOCKET;
	if (!src->hit)
		src->hit = 1;
	v->target = dst->target;
	v->flags = dst->flags;
	v->vni = vni;
	if (complete_csum && inner->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *iip = (void *)(inner + 1);

		if ((void *)(iip + 1) > end || fix_l4_csum(end, iip) < 0) {
			count(KG_CTR_MALFORMED);
			return KG_UP_SOCKET;
		}
	}
	return KG_UP_DECAP;
}

SEC("xdp")
int kangaroo_uplink(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	__u32 zero = 0;
	struct kg_uplink *up = bpf_map_lookup_elem(&kg_uplink_cfg, &zero);
	struct kg_verdict v = {};

	switch (uplink_decide(up, data, end, &v, 1, 0)) {
	case KG_UP_PASS:
		count(KG_CTR_UPLINK_PASS);
		return XDP_PASS;
	case KG_UP_NOT_PEER:
		count(KG_CTR_UPLINK_NOT_PEER);
		return XDP_PASS;
	case KG_UP_DECAP: {
		if (bpf_xdp_adjust_head(ctx, KG_OUTER_LEN))
			break;
		long action = bpf_redirect_map(&kg_devs, v.target, 0);

		count(action == XDP_REDIRECT ? KG_CTR_FAST_DECAP : KG_CTR_FAST_REDIRECT_FAILED);
		return action;
	}
	default:
		break;
	}
	/* up is non-null here: uplink_decide passes a missing configuration. */
	return up ? to_socket(ctx, up->slot, KG_CTR_UPLINK_TO_SOCKET) : XDP_PASS;
}

/*
 * The tc (clsact ingress) entry points: the same decision trees on socket buffers, which keep the
 * guests' segmentation and checksum offloads (a 64 KiB TCP super-frame is switched as one).
 * Forwarding uses bpf_redirect_peer into a veth's other end (KG_FDB_F_PEER) and bpf_redirect
 * elsewhere; encapsulation uses bpf_skb_adjust_room with the UDP tunnel flags, so the kernel
 * segments the super-frame (or hands it to the next virtual link whole). The slow path is a
 * redirect to the port's punt device (a tap the user-space switch reads): no frame reaches user
 * space twice, and none that the fast path handles reaches it at all.
 */

/* Bytes the tc programs read directly: outer Ethernet/IPv4/UDP/VXLAN, inner Ethernet and IPv4
 * (84), or the port's Ethernet, IPv4 and L4 ports / ARP. */
#define TC_PULL 96

/* Pulls the first TC_PULL bytes (or the whole frame, if shorter) into the linear area. */
static __always_inline int tc_pull(struct __sk_buff *skb)
{
	__u32 want = skb->len < TC_PULL ? skb->len : TC_PULL;

	return bpf_skb_pull_data(skb, want);
}

static __always_inline int tc_forward(__u32 ifindex, __u32 flags)
{
	if (flags & KG_FDB_F_PEER)
		return bpf_redirect_peer(ifindex, 0);
	return bpf_redirect(ifindex, 0);
}

static __always_inline int tc_punt(struct __sk_buff *skb, struct kg_port *port, __u32 ifindex)
{
	if (storm_drop(port, ifindex, (void *)(long)skb->data, (void *)(long)skb->data_end))
		return TC_ACT_SHOT;
	if (!port->punt) {
		count(KG_CTR_NO_SOCKET);
		return TC_ACT_SHOT;
	}
	count(KG_CTR_TO_SOCKET);
	return bpf_redirect(port->punt, 0);
}

/* Encapsulates toward peer `peer` in `vni` and redirects to the uplink. Returns -1 (frame
 * untouched) when user space must handle it. */
static __always_inline int tc_encap(struct __sk_buff *skb, __u32 peer, __u32 vni)
{
	struct kg_vtep *v = usable_vtep(peer, vni);

	if (!v)
		return -1;
	__u32 inner_len = skb->len;
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;

	/* The outer IPv4 length must fit 16 bits. A plain frame must fit the tunnel itself; a
	 * super-frame is cut into segments of its headers plus gso_size, and each of those must
	 * fit (they do when the guest's MTU leaves room for the outer headers). */
	if (inner_len > 0xffff - 36)
		return -1;
	if (skb->gso_size) {
		struct iphdr *ip = data + 14;

		if ((void *)(ip + 1) > end)
			return -1;
		__u32 ihl = ip->ihl * 4;
		__u32 l4 = 8;

		if (ip->protocol == IPPROTO_TCP) {
			__u8 *doff = (void *)ip + ihl + 12;

			if ((void *)(doff + 1) > end)
				return -1;
			l4 = (*doff >> 4) * 4;
		}
		if (14 + ihl + l4 + skb->gso_size > v->max_inner)
			return -1;
	} else if (inner_len > v->max_inner) {
		return -1;
	}
	__u32 hash = flow_hash(data, end);
	__u64 flags = BPF_F_ADJ_ROOM_FIXED_GSO | BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 |
		      BPF_F_ADJ_ROOM_ENCAP_L4_UDP | BPF_F_ADJ_ROOM_ENCAP_L2_ETH |
		      ((__u64)14 << BPF_ADJ_ROOM_ENCAP_L2_SHIFT);

	if (bpf_skb_adjust_room(skb, KG_OUTER_LEN, BPF_ADJ_ROOM_MAC, flags))
		return -1;
	data = (void *)(long)skb->data;
	end = (void *)(long)skb->data_end;
	if (data + KG_OUTER_LEN + 14 > end) {
		/* The room is there but not linear: cannot happen after adjust_room, which
		 * pushes into the headroom; the frame is no longer what the sender sent. */
		count(KG_CTR_FAST_REDIRECT_FAILED);
		return TC_ACT_SHOT;
	}
	/* The room went in after the Ethernet header: that header becomes the inner one. */
	__builtin_memcpy(data + KG_OUTER_LEN, data, 14);
	write_outer(data, v, inner_len, hash, vni);
	long action = bpf_redirect(v->uplink, 0);

	count(action == TC_ACT_REDIRECT ? KG_CTR_FAST_ENCAP : KG_CTR_FAST_REDIRECT_FAILED);
	return action;
}

SEC("classifier")
int kangaroo_tc_port(struct __sk_buff *skb)
{
	__u32 ifindex = skb->ifindex;
	struct kg_port *port = bpf_map_lookup_elem(&kg_ports, &ifindex);

	if (!port || !(port->flags & KG_PORT_F_STEER)) {
		count(KG_CTR_NOT_PORT);
		return TC_ACT_OK;
	}
	if (!(port->flags & KG_PORT_F_FAST) || tc_pull(skb))
		return tc_punt(skb, port, ifindex);
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct kg_verdict v = {};

	switch (port_decide(port, ifindex, data, end, &v, 0)) {
	case KG_ACT_ARP_REPLY:
		return bpf_redirect(ifindex, 0);
	case KG_ACT_LOCAL: {
		long action = tc_forward(v.target, v.flags);

		count(action == TC_ACT_REDIRECT ? KG_CTR_FAST_LOCAL : KG_CTR_FAST_REDIRECT_FAILED);
		return action;
	}
	case KG_ACT_ENCAP: {
		int r = tc_encap(skb, v.target, v.vni);

		if (r >= 0)
			return r;
		break;
	}
	default:
		break;
	}
	return tc_punt(skb, port, ifindex);
}

SEC("classifier")
int kangaroo_tc_uplink(struct __sk_buff *skb)
{
	__u32 zero = 0;
	struct kg_uplink *up = bpf_map_lookup_elem(&kg_uplink_cfg, &zero);

	if (tc_pull(skb)) {
		count(KG_CTR_UPLINK_PASS);
		return TC_ACT_OK;
	}
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct kg_verdict v = {};

	switch (uplink_decide(up, data, end, &v, 0, 1)) {
	case KG_UP_PASS:
		count(KG_CTR_UPLINK_PASS);
		return TC_ACT_OK;
	case KG_UP_NOT_PEER:
		count(KG_CTR_UPLINK_NOT_PEER);
		return TC_ACT_OK;
	case KG_UP_DECAP: {
		/* The 50 bytes after the outer Ethernet header (outer IPv4/UDP/VXLAN and the
		 * inner Ethernet header) are removed, and the inner header takes the outer's
		 * place. */
		__u8 inner[14];

		if (data + KG_OUTER_LEN + 14 > end)
			break;
		__builtin_memcpy(inner, data + KG_OUTER_LEN, 14);
		if (bpf_skb_adjust_room(skb, -KG_OUTER_LEN, BPF_ADJ_ROOM_MAC,
					BPF_F_ADJ_ROOM_FIXED_GSO))
			break;
		data = (void *)(long)skb->data;
		end = (void *)(long)skb->data_end;
		if (data + 14 > end) {
			count(KG_CTR_FAST_REDIRECT_FAILED);
			return TC_ACT_SHOT;
		}
		__builtin_memcpy(data, inner, 14);
		long action = tc_forward(v.target, v.flags);

		count(action == TC_ACT_REDIRECT ? KG_CTR_FAST_DECAP : KG_CTR_FAST_REDIRECT_FAILED);
		return action;
	}
	default:
		break;
	}
	/* The switch's UDP socket receives it through the host's stack. */
	count(KG_CTR_UPLINK_TO_SOCKET);
	return TC_ACT_OK;
}

/*
 * A measurement sink for benchmarks: drops every frame at the earliest point, so a receiver's
 * own stack does not bound the frame rate being measured (the interface's XDP drop counter
 * counts them). Never attached by the switch.
 */
SEC("xdp")
int kangaroo_sink(struct xdp_md *ctx)
{
	return XDP_DROP;
}

/*
 * The same sink at tc ingress, for receivers that frames reach past their XDP hook (forwarded
 * into them with bpf_redirect_peer, as mode "tc" does): the interface's receive counter counts
 * them. Never attached by the switch.
 */
SEC("classifier/sink")
int kangaroo_tc_sink(struct __sk_buff *skb)
{
	return TC_ACT_SHOT;
}

/* The benchmarks' frame generator's target: entry 0 holds the ifindex frames are sent out of. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} kg_gen_target SEC(".maps");

/*
 * The benchmarks' frame generator, run with BPF_PROG_TEST_RUN in live-frames mode: every run
 * transmits the test frame out of the interface in kg_gen_target (its ndo_xdp_xmit), with no
 * socket buffer on the way, as a hardware traffic generator would put it on the wire. Never
 * attached by the switch.
 */
SEC("xdp")
int kangaroo_gen(struct xdp_md *ctx)
{
	__u32 zero = 0;
	__u32 *ifindex = bpf_map_lookup_elem(&kg_gen_target, &zero);

	if (!ifindex || !*ifindex)
		return XDP_ABORTED;
	return bpf_redirect(*ifindex, 0);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
