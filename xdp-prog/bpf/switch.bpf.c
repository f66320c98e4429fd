// SPDX-License-Identifier: Apache-2.0
/*
 * Kangaroo switch: the XDP program attached to every port interface.
 *
 * It steers each frame a port receives into that port's AF_XDP socket for the receive queue it
 * arrived on, where the user-space switch takes its decision. Frames it must not take (an
 * interface that is not a port, a queue without a socket) go on to the kernel with XDP_PASS.
 * Every outcome is counted per CPU.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/udp.h>
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
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, __u32);
} kg_peers SEC(".maps");

static __always_inline void count(__u32 which)
{
	__u64 *c = bpf_map_lookup_elem(&kg_counters, &which);

	if (c)
		*c += 1;
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
	__u32 queue = ctx->rx_queue_index;

	if (queue >= KG_MAX_QUEUES || port->slot >= KG_MAX_PORTS) {
		count(KG_CTR_NO_SOCKET);
		return XDP_PASS;
	}
	__u32 index = port->slot * KG_MAX_QUEUES + queue;

	if (!bpf_map_lookup_elem(&kg_xsks, &index)) {
		count(KG_CTR_NO_SOCKET);
		return XDP_PASS;
	}
	long action = bpf_redirect_map(&kg_xsks, index, XDP_ABORTED);

	if (action == XDP_REDIRECT)
		count(KG_CTR_TO_SOCKET);
	else
		count(KG_CTR_REDIRECT_FAILED);
	return action;
}

/*
 * The uplink program: VXLAN for this host from a configured peer goes to the uplink's AF_XDP
 * socket; everything else (the host's own traffic, VXLAN from strangers) goes on to the kernel.
 */
SEC("xdp")
int kangaroo_uplink(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	__u32 zero = 0;
	struct kg_uplink *up = bpf_map_lookup_elem(&kg_uplink_cfg, &zero);
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);

	if (!up || !(up->flags & KG_UPLINK_F_ENABLED) || (void *)(ip + 1) > end ||
	    eth->h_proto != bpf_htons(ETH_P_IP) || ip->protocol != IPPROTO_UDP ||
	    ip->daddr != up->addr || ip->ihl < 5) {
		count(KG_CTR_UPLINK_PASS);
		return XDP_PASS;
	}
	struct udphdr *udp = (void *)ip + ip->ihl * 4;

	if ((void *)(udp + 1) > end || udp->dest != up->port) {
		count(KG_CTR_UPLINK_PASS);
		return XDP_PASS;
	}
	__u32 src = ip->saddr;

	if (!bpf_map_lookup_elem(&kg_peers, &src)) {
		count(KG_CTR_UPLINK_NOT_PEER);
		return XDP_PASS;
	}
	__u32 queue = ctx->rx_queue_index;

	if (queue >= KG_MAX_QUEUES || up->slot >= KG_MAX_PORTS) {
		count(KG_CTR_NO_SOCKET);
		return XDP_PASS;
	}
	__u32 index = up->slot * KG_MAX_QUEUES + queue;

	if (!bpf_map_lookup_elem(&kg_xsks, &index)) {
		count(KG_CTR_NO_SOCKET);
		return XDP_PASS;
	}
	long action = bpf_redirect_map(&kg_xsks, index, XDP_ABORTED);

	if (action == XDP_REDIRECT)
		count(KG_CTR_UPLINK_TO_SOCKET);
	else
		count(KG_CTR_REDIRECT_FAILED);
	return action;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
