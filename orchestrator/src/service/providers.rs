//! The providers hosts are rented from, each with its priced catalog.

use serde::Serialize;

use super::*;
use crate::model::{self, Name};

/// What renting a host from a provider means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema, clap::ValueEnum)]
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

/// A provider hosts can be rented from.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Provider {
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

impl Service {
    /// The names of the `local` providers, in order.
    pub fn local_providers(&self) -> Vec<String> {
        self.providers
            .iter()
            .filter(|p| p.kind == ProviderKind::Local)
            .map(|p| p.name.to_string())
            .collect()
    }

    /// The providers.
    pub fn providers(&self) -> &[Provider] {
        &self.providers
    }

    pub(super) fn provider(&self, name: Option<&str>) -> Result<&Provider, ServiceError> {
        match name {
            None => self
                .providers
                .first()
                .ok_or_else(|| ServiceError::Conflict("no provider configured".into())),
            Some(n) => self
                .providers
                .iter()
                .find(|p| p.name.as_str() == n)
                .ok_or_else(|| ServiceError::NotFound {
                    kind: "provider",
                    name: n.to_owned(),
                }),
        }
    }
}
