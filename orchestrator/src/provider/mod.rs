//! Providers: where hosts come from. A provider rents a host of one of its catalog's instance
//! types, releases it, powers it off to fence a host that was lost, and lists the machines it
//! has, so a restarted controller finds what a crash left between renting and recording.
//!
//! The service decides (which type, how many, where VMs go) and records; a provider only does.
//! Renting is two steps so that a crash loses nothing: [`Provider::reserve`] says what the
//! host's record starts as (committed with the decision), [`Provider::rent`] makes it real and
//! is repeated by the reconciler until it succeeds. Every method is idempotent.
//!
//! Implementations: [`sim::SimProvider`] (a record only, billed on a simulated clock) and
//! [`local::LocalProvider`] (network namespaces on this machine with their own switches).

pub mod local;
pub mod sim;

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::model::{self, Host, HostState, Name};
use crate::store::State;
use crate::sys::InfraError;

/// What renting a host from a provider means.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema, clap::ValueEnum,
)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    /// A record in the state: instant, billed on a simulated clock, nothing runs.
    Sim,
    /// Hosts are network namespaces on this machine with their own switches; VMs run under the
    /// configured driver.
    Local,
}

impl ProviderKind {
    /// Name in the API and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            ProviderKind::Sim => "sim",
            ProviderKind::Local => "local",
        }
    }

    /// The kind and catalog of a provider's catalog setting: `local:CATALOG` for a local
    /// provider, `CATALOG` for a simulated one.
    pub fn from_setting(setting: &str) -> (ProviderKind, &str) {
        match setting.strip_prefix("local:") {
            Some(c) => (ProviderKind::Local, c),
            None => (ProviderKind::Sim, setting),
        }
    }
}

impl std::fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What a provider is: its name, kind, region and priced catalog (as the API lists it).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ProviderInfo {
    /// Name.
    pub name: Name,
    /// What renting from it means.
    pub kind: ProviderKind,
    /// Region.
    pub region: String,
    /// Name of its catalog.
    pub catalog: String,
    /// Its instance types.
    pub instance_types: Vec<model::InstanceType>,
}

/// What a new host's record starts as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reservation {
    /// `running` when renting is instant, else `provisioning` until [`Provider::rent`] is done.
    pub state: HostState,
    /// Its address on the underlay, when the provider assigns one up front.
    pub underlay: Option<Ipv4Addr>,
}

/// Why a provider step failed.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// The infrastructure step failed.
    #[error("provider {provider}")]
    Infra {
        /// The provider.
        provider: Name,
        /// The step and its cause.
        #[source]
        cause: InfraError,
    },
}

/// A provider of hosts.
pub trait Provider: Send + Sync {
    /// Its name, kind, region and catalog.
    fn info(&self) -> &ProviderInfo;

    /// What a new host's record starts as; `state` holds every host, those of the same
    /// transaction included (so addresses are not handed out twice).
    ///
    /// # Errors
    /// The provider cannot take another host (its address space is full).
    fn reserve(&self, state: &State) -> Result<Reservation, ProviderError>;

    /// Makes the reserved `host` real (a machine, its switch); nothing if it already is.
    ///
    /// # Errors
    /// The step that failed; the reconciler tries again.
    fn rent(&self, state: &State, host: &Host) -> Result<(), ProviderError>;

    /// Releases host `name`; nothing if it is gone.
    ///
    /// # Errors
    /// The step that failed; the reconciler releases what the state does not have.
    fn release(&self, state: &State, name: &Name) -> Result<(), ProviderError>;

    /// Powers host `name` off so that a host presumed lost cannot come back with copies of
    /// VMs re-created elsewhere; returns what was done, a line each, for the log.
    fn power_off(&self, state: &State, name: &Name) -> Vec<String>;

    /// The names of the hosts this provider has now, recorded or not.
    ///
    /// # Errors
    /// They cannot be listed.
    fn owned(&self) -> Result<Vec<String>, ProviderError>;
}
