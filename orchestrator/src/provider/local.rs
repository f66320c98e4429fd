//! The `local` provider: a host is a network namespace on this machine with its own switch, on
//! the provider's underlay subnet, made and released through the [`Realizer`].

use std::sync::Arc;

use super::{Provider, ProviderError, ProviderInfo, Reservation};
use crate::infra::realize::Realizer;
use crate::model::{Host, HostState, Name};
use crate::store::State;
use crate::sys::InfraError;

/// A local provider.
pub struct LocalProvider {
    info: ProviderInfo,
    realizer: Arc<Realizer>,
}

impl LocalProvider {
    /// The local provider described by `info`, realised by `realizer` (which must list it among
    /// its local providers).
    pub fn new(info: ProviderInfo, realizer: Arc<Realizer>) -> LocalProvider {
        LocalProvider { info, realizer }
    }

    fn err(&self, source: InfraError) -> ProviderError {
        ProviderError::Infra {
            provider: self.info.name.clone(),
            cause: source,
        }
    }
}

impl Provider for LocalProvider {
    fn info(&self) -> &ProviderInfo {
        &self.info
    }

    fn reserve(&self, state: &State) -> Result<Reservation, ProviderError> {
        let underlay = self
            .realizer
            .allocate_underlay(state, self.info.name.as_str())
            .map_err(|e| self.err(e))?;
        Ok(Reservation {
            state: HostState::Provisioning,
            underlay: Some(underlay),
        })
    }

    fn rent(&self, state: &State, host: &Host) -> Result<(), ProviderError> {
        self.realizer
            .ensure_host(state, host)
            .map_err(|e| self.err(e))
    }

    fn release(&self, state: &State, name: &Name) -> Result<(), ProviderError> {
        self.realizer
            .release_host(state, name.as_str())
            .map_err(|e| self.err(e))
    }

    fn power_off(&self, state: &State, name: &Name) -> Vec<String> {
        self.realizer.fence(state, name.as_str())
    }

    fn owned(&self) -> Result<Vec<String>, ProviderError> {
        self.realizer
            .owned_hosts(self.info.name.as_str())
            .map_err(|e| self.err(e))
    }
}
