//! Real infrastructure on this machine: the `local` provider, whose hosts are network
//! namespaces running their own `kangaroo-switch`, joined by an underlay ([`local`]), and the
//! reconciler that makes hosts, switches and VMs match the state through the VM drivers
//! ([`realize`], [`crate::driver`]).
//!
//! Everything here is idempotent and named deterministically from the orchestrator's state (an
//! instance prefix plus host and VM names), so a restarted orchestrator finds what it made.

pub mod local;
pub mod realize;

pub use crate::sys::{InfraError, Result};
