//! The providers hosts are rented from, each with its priced catalog.

use super::*;
use std::sync::Arc;

use crate::model::Name;

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

    /// The provider behind the description named `name` (a simulated one for a name the
    /// configuration no longer has: its hosts are records only).
    pub(super) fn renter(&self, name: &Name) -> Arc<dyn crate::provider::Provider> {
        self.providers
            .iter()
            .position(|p| &p.name == name)
            .and_then(|i| self.renters.get(i).cloned())
            .unwrap_or_else(|| {
                Arc::new(crate::provider::sim::SimProvider::new(Provider {
                    name: name.clone(),
                    kind: ProviderKind::Sim,
                    region: String::new(),
                    catalog: String::new(),
                    instance_types: Vec::new(),
                }))
            })
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
