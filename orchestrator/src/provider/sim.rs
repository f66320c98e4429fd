//! The `sim` provider: a host is a record, rented and released at once; nothing runs.

use super::{Provider, ProviderError, ProviderInfo, Reservation};
use crate::model::{Host, HostState, Name};
use crate::store::State;

/// A simulated provider.
#[derive(Debug, Clone)]
pub struct SimProvider {
    info: ProviderInfo,
}

impl SimProvider {
    /// A simulated provider described by `info`.
    pub fn new(info: ProviderInfo) -> SimProvider {
        SimProvider { info }
    }
}

impl Provider for SimProvider {
    fn info(&self) -> &ProviderInfo {
        &self.info
    }

    fn reserve(&self, _state: &State) -> Result<Reservation, ProviderError> {
        Ok(Reservation {
            state: HostState::Running,
            underlay: None,
        })
    }

    fn rent(&self, _state: &State, _host: &Host) -> Result<(), ProviderError> {
        Ok(())
    }

    fn release(&self, _state: &State, _name: &Name) -> Result<(), ProviderError> {
        Ok(())
    }

    fn power_off(&self, _state: &State, _name: &Name) -> Vec<String> {
        Vec::new()
    }

    fn owned(&self) -> Result<Vec<String>, ProviderError> {
        // Nothing exists outside the state.
        Ok(Vec::new())
    }
}
