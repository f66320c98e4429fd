//! Tenant networks (one VNI and IPv4 subnet each).

use serde::{Deserialize, Serialize};

use super::*;
use crate::model::{self, Network};
use crate::store::Op;

/// Request to create a network.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NetworkRequest {
    /// Name.
    pub name: String,
    /// VNI (1–16777215).
    pub vni: u32,
    /// IPv4 subnet, e.g. `192.168.10.0/24`.
    pub subnet: String,
}

/// The network created on first use when a workload names none.
pub const DEFAULT_NETWORK: (&str, u32, &str) = ("default", 1, "10.0.0.0/16");

impl Service {
    /// Networks.
    pub fn networks(&self) -> Vec<Network> {
        self.lock().state.networks.values().cloned().collect()
    }

    /// Creates a network.
    ///
    /// # Errors
    /// Invalid fields, a taken name or VNI.
    pub fn create_network(&self, req: &NetworkRequest) -> Result<Network, ServiceError> {
        let name = name_field("name", &req.name)?;
        let vni = model::check_vni(req.vni).map_err(|e| invalid("vni", e))?;
        let (subnet, prefix) =
            model::parse_subnet(&req.subnet).map_err(|e| invalid("subnet", e))?;
        let mut g = self.lock();
        if g.state.networks.contains_key(&name) {
            return Err(ServiceError::Conflict(format!(
                "network {name} already exists"
            )));
        }
        if let Some(o) = g.state.networks.values().find(|n| n.vni == vni) {
            return Err(ServiceError::Conflict(format!(
                "VNI {vni} is already used by network {}",
                o.name
            )));
        }
        let n = Network {
            name,
            vni,
            subnet,
            prefix,
        };
        self.commit(&mut g, vec![Op::PutNetwork(n.clone())])?;
        Ok(n)
    }

    /// Deletes a network no VM uses.
    ///
    /// # Errors
    /// Not found, or in use.
    pub fn delete_network(&self, name: &str) -> Result<(), ServiceError> {
        let mut g = self.lock();
        let Some(n) = g
            .state
            .networks
            .keys()
            .find(|k| k.as_str() == name)
            .cloned()
        else {
            return Err(ServiceError::NotFound {
                kind: "network",
                name: name.to_owned(),
            });
        };
        if let Some(v) = g.state.vms.values().find(|v| v.network == n) {
            return Err(ServiceError::Conflict(format!(
                "network {n} is used by VM {}",
                v.name
            )));
        }
        self.commit(&mut g, vec![Op::DeleteNetwork(n)])
    }
}
