/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The contract between the switch's XDP program and user space: map names, key and value
 * layouts, and counter indices. `src/lib.rs` mirrors every type here with `#[repr(C)]` structs
 * whose sizes and offsets are asserted at compile time; change both together.
 */
#ifndef KANGAROO_ABI_H
#define KANGAROO_ABI_H

/* Ports the program can steer (slots in the port table). */
#define KG_MAX_PORTS 1024
/* Receive queues per port that can have an AF_XDP socket. */
#define KG_MAX_QUEUES 16
/* Entries in the XSKMAP: one per (port slot, queue). */
#define KG_MAX_SOCKETS (KG_MAX_PORTS * KG_MAX_QUEUES)

/* kg_port.flags */
/* Frames on this interface go to user space through its AF_XDP sockets. */
#define KG_PORT_F_STEER 1u

/* Value of the `kg_ports` hash map, keyed by the interface's ifindex (__u32). */
struct kg_port {
	/* The port's slot: its sockets sit at XSKMAP index slot * KG_MAX_QUEUES + queue. */
	__u32 slot;
	/* KG_PORT_F_* */
	__u32 flags;
};

/* kg_uplink.flags */
/* The uplink program hands VXLAN from peers to user space. */
#define KG_UPLINK_F_ENABLED 1u

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
	KG_CTR_COUNT = 7,
};

#endif
