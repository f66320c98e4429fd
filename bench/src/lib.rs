//! `kangaroo-bench`: measurements a person can read at a glance.
//!
//! [`packing`] measures the orchestrator's packing on seeded synthetic workloads: heuristic cost
//! against the exact solver and the LP lower bound, saving against one VM per instance, and the
//! time of a placement decision. [`run`] measures the switch against the Linux bridge and the
//! kernel's VXLAN on the same topologies ([`net`]), in one run, with [`pingpong`] for latency
//! and [`plot`] for the charts; [`sweep`] measures how the switch scales with learned MACs,
//! ports and peers.

pub mod gen;
pub mod measure;
pub mod net;
pub mod packing;
pub mod pingpong;
pub mod plot;
pub mod run;
pub mod sweep;
