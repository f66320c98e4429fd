//! `kangaroo`, the orchestrator: priced catalogs, cost-aware packing, nested-VM lifecycle and the
//! tenant API.
//!
//! The orchestrator core arrives in its own change; this crate holds its place in the workspace.
