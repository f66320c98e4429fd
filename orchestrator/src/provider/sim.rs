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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::ProviderKind;

    #[test]
    fn a_simulated_host_is_a_record_that_runs_at_once() {
        let p = SimProvider::new(ProviderInfo {
            name: Name::new("east").unwrap(),
            kind: ProviderKind::Sim,
            region: "r".into(),
            catalog: "c".into(),
            instance_types: Vec::new(),
        });
        let r = p.reserve(&State::default()).unwrap();
        assert_eq!(r.state, HostState::Running);
        assert_eq!(r.underlay, None);
        let n = Name::new("h1").unwrap();
        p.release(&State::default(), &n).unwrap();
        assert!(p.power_off(&State::default(), &n).is_empty());
        assert!(
            p.owned().unwrap().is_empty(),
            "nothing exists outside the state"
        );
        assert_eq!(p.info().name.as_str(), "east");
    }
}
