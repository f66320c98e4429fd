//! `kangaroo-bench`, the harness that measures the switch against the Linux bridge and kernel VXLAN
//! side by side.
//!
//! The harness arrives in its own change; this crate holds its place in the workspace.
