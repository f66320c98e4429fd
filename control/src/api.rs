//! The request bodies of the switch's control API, shared by the switch (which reads them,
//! refusing unknown fields) and its clients (which write them).

use serde::{Deserialize, Serialize};

use crate::config::{PeerSection, PortSection};

/// `POST /v1/ports`: take over an interface as a port (the same as a `[[port]]` of the file).
pub type PortRequest = PortSection;

/// `POST /v1/fdb`: a static entry, toward a local port or a peer's VTEP.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FdbRequest {
    /// Network.
    pub vni: u32,
    /// MAC address.
    pub mac: String,
    /// A local port ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    /// ... or a peer's VTEP address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vtep: Option<String>,
}

/// `POST /v1/peers`: a peer switch (the same as a `[[peer]]` of the file).
pub type PeerRequest = PeerSection;

/// `PUT /v1/peers/{address}/endpoint`: where a secure peer is reached now.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointRequest {
    /// `ADDRESS:PORT`.
    pub endpoint: String,
}

/// `POST /v1/arp`: an ARP suppression entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ArpRequest {
    /// Network.
    pub vni: u32,
    /// IPv4 address.
    pub ip: String,
    /// Its MAC.
    pub mac: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_round_trip_and_refuse_unknown_fields() {
        let p = PeerRequest {
            address: "10.0.0.2".into(),
            public_key: Some("a2V5".into()),
            ..PeerRequest::default()
        };
        let v = serde_json::to_value(&p).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"address": "10.0.0.2", "public_key": "a2V5"})
        );
        assert_eq!(serde_json::from_value::<PeerRequest>(v).unwrap(), p);
        let e = serde_json::from_str::<PortRequest>(r#"{"interface":"a","vni":1,"vlan":2}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("vlan"), "{e}");
    }
}
