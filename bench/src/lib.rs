//! `kangaroo-bench`: measurements a person can read at a glance.
//!
//! [`packing`] measures the orchestrator's packing on seeded synthetic workloads: heuristic cost
//! against the exact solver and the LP lower bound, saving against one VM per instance, and the
//! time of a placement decision. The whole-system throughput harness (switch against the Linux
//! bridge and kernel VXLAN) joins it with the switch daemon.

pub mod packing;
