/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The contract between the switch's XDP programs and user space: map names, key and value
 * layouts, and counter indices. `src/lib.rs` mirrors every type here with `#[repr(C)]` structs
 * whose sizes and offsets are asserted at compile time; change both together.
 *
 * Byte order: addresses and ports are stored as they appear on the wire (network order);
 * everything else is host order.
 */
#ifndef KANGAROO_ABI_H
#define KANGAROO_ABI_H

/* Ports the program can steer (slots in the port table). */
#define KG_MAX_PORTS 1024
/* Receive queues per port that can have an AF_XDP socket. */
#define KG_MAX_QUEUES 16
/* Entries in the XSKMAP: one per (port slot, queue). */
#define KG_MAX_SOCKETS (KG_MAX_PORTS * KG_MAX_QUEUES)
/* Port-security IPv4 addresses per port the fast path checks (more: the port is not fast). */
#define KG_MAX_IPS 4
/* FDB entries the kernel mirror holds by default (the loader resizes it to the switch's fdb.capacity). */
#define KG_FDB_ENTRIES 262144
/* ARP entries the kernel mirror holds. */
#define KG_ARP_ENTRIES 65536
/* Peer VTEPs. */
#define KG_MAX_PEERS 4096
/* Bytes of outer headers a VXLAN encapsulation adds (Ethernet 14, IPv4 20, UDP 8, VXLAN 8). */
#define KG_OUTER_LEN 50

/* kg_port.flags */
/* Frames on this interface go to user space through its AF_XDP sockets. */
#define KG_PORT_F_STEER 1u
/* Frames whose fate the maps decide are handled in the kernel (mode "xdp"). */
#define KG_PORT_F_FAST 2u
/* Port security: only `mac` may be the source MAC. */
#define KG_PORT_F_MAC 4u
/* Port security: only `ips` may be the source IPv4 (IPv4 and ARP sender). */
#define KG_PORT_F_IPS 8u

/* Value of the `kg_ports` hash map, keyed by the interface's ifindex (__u32). */
struct kg_port {
	/* The port's slot: its sockets sit at XSKMAP index slot * KG_MAX_QUEUES + queue. */
	__u32 slot;
	/* KG_PORT_F_* */
	__u32 flags;
	/* The port's network. */
	__u32 vni;
	/* Port security MAC (KG_PORT_F_MAC). */
	__u8 mac[6];
	/* Entries of `ips` in use (KG_PORT_F_IPS). */
	__u8 n_ips;
	__u8 pad;
	/* Port security IPv4 addresses, network order. */
	__u32 ips[KG_MAX_IPS];
	/* Mode "tc": the ifindex of the port's punt device, where frames for user space go
	 * (0: none yet, such frames are dropped and counted as no_socket). */
	__u32 punt;
};

/* kg_uplink.flags */
/* The uplink program hands VXLAN from peers to user space. */
#define KG_UPLINK_F_ENABLED 1u
/* The uplink program decapsulates known traffic itself (mode "xdp"). */
#define KG_UPLINK_F_FAST 2u

/* The one value of the `kg_uplink_cfg` array: where VXLAN for this host arrives. */
struct kg_uplink {
	/* This host's VTEP address, network byte order. */
	__u32 addr;
	/* The VXLAN UDP port, network byte order. */
	__u16 port;
	__u16 pad;
	/* The uplink's slot in the XSKMAP (as for ports). */
	__u32 slot;
	/* KG_UPLINK_F_* */
	__u32 flags;
};

/* Key of the `kg_fdb` hash map: a MAC address within one network. */
struct kg_fdb_key {
	__u32 vni;
	__u8 mac[6];
	__u16 pad;
};

/* kg_fdb_val.kind */
#define KG_DEST_PORT 1u
#define KG_DEST_VTEP 2u

/* Value of the `kg_fdb` hash map. */
struct kg_fdb_val {
	/* KG_DEST_* */
	__u32 kind;
	/* KG_DEST_PORT: the port's ifindex; KG_DEST_VTEP: the peer's id (index in `kg_vteps`). */
	__u32 target;
	/* Set by the programs when the station is seen as a source; cleared by user space, which
	 * then keeps its own entry alive. */
	__u32 hit;
	/* KG_FDB_F_* */
	__u32 flags;
};

/* kg_fdb_val.flags */
/* KG_DEST_PORT: the port is one end of a veth pair; mode "tc" forwards into the other end
 * directly (bpf_redirect_peer). */
#define KG_FDB_F_PEER 1u

/* Key of the `kg_arp` hash map. */
struct kg_arp_key {
	__u32 vni;
	/* Network order. */
	__u32 ip;
};

/* Value of the `kg_arp` hash map. */
struct kg_arp_val {
	__u8 mac[6];
	__u16 pad;
};

/* Value of the `kg_vteps` array, indexed by peer id: how to reach a peer. */
struct kg_vtep {
	/* Outer Ethernet/IPv4/UDP/VXLAN headers; the IPv4 total length and checksum, the UDP
	 * source port and length and the VNI are filled in per frame. */
	__u8 hdr[KG_OUTER_LEN];
	/* Nonzero when `hdr` holds a resolved next-hop MAC and the peer may be used. */
	__u16 valid;
	/* The peer's address, network order. */
	__u32 addr;
	/* The uplink's ifindex (the redirect target). */
	__u32 uplink;
	/* Longest inner frame that fits the underlay MTU. */
	__u32 max_inner;
};

/* Key of the `kg_peer_vnis` hash map: a network shared with a peer (value: __u32 1). */
struct kg_peer_vni {
	/* The peer's address, network order. */
	__u32 addr;
	__u32 vni;
};

/* Indices of the per-CPU counters in the `kg_counters` array (one __u64 each). */
enum kg_counter {
	/* Frames handed to an AF_XDP socket. */
	KG_CTR_TO_SOCKET = 0,
	/* Frames on a port whose receive queue has no socket (passed to the kernel). */
	KG_CTR_NO_SOCKET = 1,
	/* Frames on an interface that is not a port, or not steered (passed to the kernel). */
	KG_CTR_NOT_PORT = 2,
	/* Frames the socket redirect failed for (socket ring full: dropped by the kernel). */
	KG_CTR_REDIRECT_FAILED = 3,
	/* Uplink: VXLAN from a configured peer handed to an AF_XDP socket. */
	KG_CTR_UPLINK_TO_SOCKET = 4,
	/* Uplink: VXLAN to our port from an address that is not a peer (passed to the kernel,
	 * where the switch's UDP socket receives it, counts it and drops it). */
	KG_CTR_UPLINK_NOT_PEER = 5,
	/* Uplink: anything else (the host's own traffic), passed to the kernel untouched. */
	KG_CTR_UPLINK_PASS = 6,
	/* Fast path: known local unicast redirected to the destination port. */
	KG_CTR_FAST_LOCAL = 7,
	/* Fast path: ARP request answered from the ARP map (XDP_TX). */
	KG_CTR_FAST_ARP_REPLY = 8,
	/* Fast path: known remote unicast encapsulated and redirected to the uplink. */
	KG_CTR_FAST_ENCAP = 9,
	/* Fast path: VXLAN decapsulated and redirected to the destination port. */
	KG_CTR_FAST_DECAP = 10,
	/* Fast path: a guest's partial TCP/UDP checksum completed in the kernel. */
	KG_CTR_FAST_CSUM = 11,
	/* Frames cut short inside a header the program reads (handed to user space, which
	 * counts and drops them). */
	KG_CTR_MALFORMED = 12,
	/* Fast path: the redirect to a port or the uplink failed. */
	KG_CTR_FAST_REDIRECT_FAILED = 13,
	/* Storm control: a BUM frame over its port's limit, dropped before user space. */
	KG_CTR_STORM_BUM = 14,
	/* Storm control: a frame from a station the FDB does not know, over its port's limit of
	 * new stations, dropped before user space. */
	KG_CTR_STORM_NEW_MAC = 15,
	KG_CTR_COUNT = 16,
};

/* Value of the `kg_storm_cfg` array (one entry): the per-port storm limits, as the switch's
 * `[storm]` configuration sets them. A rate of 0 turns a limit off. */
struct kg_storm_cfg {
	__u32 bum_rate;
	__u32 bum_burst;
	__u32 new_rate;
	__u32 new_burst;
};

/* Value of the per-CPU `kg_storm` hash map, keyed by port ifindex: the port's token buckets
 * (tokens in billionths, refilled by the nanosecond). Made by the program on first use. */
struct kg_storm_bucket {
	__u64 bum_tokens;
	__u64 bum_last;
	__u64 new_tokens;
	__u64 new_last;
};

#endif
