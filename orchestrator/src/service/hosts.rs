//! Hosts: renting (for a request or for a placement), releasing, and their tunnels.

use serde::{Deserialize, Serialize};

use super::*;
use crate::model::{self, Host, HostState, Name};
use crate::store::{Op, State};

/// Request to rent a host.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HostRequest {
    /// Name (generated when absent).
    pub name: Option<String>,
    /// Provider (the first configured when absent).
    pub provider: Option<String>,
    /// Instance type from the provider's catalog.
    pub instance_type: String,
}

impl Service {
    /// Hosts.
    pub fn hosts(&self) -> Vec<Host> {
        self.lock().state.hosts.values().cloned().collect()
    }

    /// Rents a host of type `t` from `provider` for a placement: adds it to `ops` and names it.
    pub(super) fn rent(
        &self,
        g: &Inner,
        meta: &mut crate::store::Meta,
        provider: &Provider,
        t: &Name,
        ops: &mut Vec<Op>,
    ) -> Result<Name, ServiceError> {
        let ty = provider
            .instance_types
            .iter()
            .find(|i| &i.name == t)
            .ok_or_else(|| ServiceError::Conflict(format!("type {t} vanished")))?;
        let host = self.new_host(g, meta, provider, ty, None, ops)?;
        let n = host.name.clone();
        ops.push(Op::PutHost(host));
        Ok(n)
    }

    pub(super) fn new_host(
        &self,
        g: &Inner,
        meta: &mut crate::store::Meta,
        provider: &Provider,
        ty: &model::InstanceType,
        name: Option<Name>,
        pending: &[Op],
    ) -> Result<Host, ServiceError> {
        // Hosts of this transaction count too (their addresses are taken).
        let mut view = State {
            hosts: g.state.hosts.clone(),
            ..State::default()
        };
        for op in pending {
            if let Op::PutHost(h) = op {
                view.hosts.insert(h.name.clone(), h.clone());
            }
        }
        let crate::provider::Reservation { state, underlay } =
            self.renter(&provider.name).reserve(&view)?;
        let name = name.unwrap_or_else(|| loop {
            meta.next_host += 1;
            if let Ok(n) = Name::new(&format!("host-{}", meta.next_host)) {
                if !g.state.hosts.contains_key(&n) {
                    break n;
                }
            }
        });
        Ok(Host {
            name,
            provider: provider.name.clone(),
            instance_type: ty.clone(),
            state,
            underlay,
            rented_at: meta.clock_secs,
            agent: false,
            public_key: None,
        })
    }

    /// Rents a host.
    ///
    /// # Errors
    /// Unknown provider or type, a taken name.
    pub fn add_host(&self, req: &HostRequest) -> Result<Host, ServiceError> {
        let provider = self.provider(req.provider.as_deref())?;
        let ty = provider
            .instance_types
            .iter()
            .find(|t| t.name.as_str() == req.instance_type)
            .ok_or_else(|| {
                invalid(
                    "instance_type",
                    format!(
                        "{} is not in catalog {}",
                        req.instance_type, provider.catalog
                    ),
                )
            })?;
        let name = req
            .name
            .as_deref()
            .map(|n| name_field("name", n))
            .transpose()?;
        let mut g = self.lock();
        if let Some(n) = &name {
            if g.state.hosts.contains_key(n) {
                return Err(ServiceError::Conflict(format!("host {n} already exists")));
            }
        }
        let mut meta = g.state.meta.clone();
        let host = self.new_host(&g, &mut meta, provider, ty, name, &[])?;
        self.commit(&mut g, vec![Op::PutMeta(meta), Op::PutHost(host.clone())])?;
        drop(g);
        if host.state == HostState::Provisioning {
            if let Err(e) = self.realize_pending_hosts() {
                // Nothing of it stays: neither the record nor what was made.
                self.forget_host(&host.name);
                return Err(e);
            }
        }
        Ok(self
            .lock()
            .state
            .hosts
            .get(&host.name)
            .cloned()
            .unwrap_or(host))
    }

    /// Releases `name` for real and removes its record (a failed rent's clean-up).
    pub(super) fn forget_host(&self, name: &Name) {
        let mut g = self.lock();
        let provider = g.state.hosts.get(name).map(|h| h.provider.clone());
        if provider.is_some() {
            let _ = self.commit(&mut g, vec![Op::DeleteHost(name.clone())]);
        }
        let state = g.state.clone();
        drop(g);
        if let Some(p) = provider {
            let _ = self.renter(&p).release(&state, name);
        }
    }

    /// The tunnels of local host `name`'s switch: to which hosts, encrypted or not, and a
    /// secure tunnel's path.
    ///
    /// # Errors
    /// No such host, a simulated one, or its switch does not answer.
    pub fn host_tunnels(
        &self,
        name: &str,
    ) -> Result<Vec<crate::infra::realize::Tunnel>, ServiceError> {
        let state = self.snapshot();
        let n = Name::new(name)
            .ok()
            .filter(|n| state.hosts.contains_key(n))
            .ok_or_else(|| ServiceError::NotFound {
                kind: "host",
                name: name.to_owned(),
            })?;
        let provider = state.hosts.get(&n).map_or("", |h| h.provider.as_str());
        let Some(r) = self.realizer.as_ref().filter(|r| r.is_local(provider)) else {
            return Err(ServiceError::Conflict(format!(
                "host {n} is simulated: it has no switch and no tunnels"
            )));
        };
        Ok(r.tunnels(&state, &n)?)
    }

    /// Releases a host that runs no VM.
    ///
    /// # Errors
    /// Not found, or VMs still on it.
    pub fn remove_host(&self, name: &str) -> Result<(), ServiceError> {
        let mut g = self.lock();
        let n = Name::new(name).map_err(|_| ServiceError::NotFound {
            kind: "host",
            name: name.to_owned(),
        })?;
        let Some(provider) = g.state.hosts.get(&n).map(|h| h.provider.clone()) else {
            return Err(ServiceError::NotFound {
                kind: "host",
                name: name.to_owned(),
            });
        };
        let on: Vec<String> = g
            .state
            .vms
            .values()
            .filter(|v| v.host == n)
            .map(|v| v.name.to_string())
            .collect();
        if !on.is_empty() {
            return Err(ServiceError::Conflict(format!(
                "host {n} still runs {}: migrate or delete them first",
                on.join(", ")
            )));
        }
        self.commit(&mut g, vec![Op::DeleteHost(n.clone())])?;
        let state = g.state.clone();
        drop(g);
        // The record is gone; a release that fails here is retried by the reconciler (it
        // removes what the state does not have).
        self.renter(&provider).release(&state, &n)?;
        Ok(())
    }
}
