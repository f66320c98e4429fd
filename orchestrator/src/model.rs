//! The orchestrator's vocabulary: resources, instance types, hosts, networks, nested VMs,
//! placements, and the validated names and quantities they are built from.
//!
//! vCPUs are counted in quarters (0.25 vCPU granularity) and memory in MiB, so every capacity
//! check is exact integer arithmetic.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Validation errors, each naming what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    /// A name that is not 1–63 characters of `a-z 0-9 - . _` starting with a letter or digit.
    #[error("invalid name {0:?}: use 1-63 characters of a-z, 0-9, '-', '.', '_', starting with a letter or digit")]
    Name(String),
    /// A vCPU amount that is not a positive multiple of 0.25.
    #[error("invalid vcpus {0}: must be a positive multiple of 0.25")]
    Vcpus(String),
    /// A memory amount that cannot be parsed or is not positive.
    #[error("invalid memory {0:?}: expected a positive amount with a MiB or GiB suffix, e.g. \"512MiB\" or \"4GiB\"")]
    Memory(String),
    /// Memory not a multiple of the required granularity.
    #[error("invalid memory {0:?}: must be a multiple of {1} MiB")]
    MemoryGranularity(String, u64),
    /// An IPv4 subnet that cannot be parsed.
    #[error("invalid subnet {0:?}: expected a.b.c.d/len with len between 8 and 30")]
    Subnet(String),
    /// A VNI out of range.
    #[error("invalid VNI {0}: must be between 1 and 16777215")]
    Vni(u32),
}

/// A validated name (of a VM, host, network, group, provider, catalog or instance type).
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(try_from = "String", into = "String")]
#[schema(value_type = String, example = "web-1")]
pub struct Name(String);

impl Name {
    /// Validates `s` as a name.
    ///
    /// # Errors
    /// [`ModelError::Name`].
    pub fn new(s: &str) -> Result<Name, ModelError> {
        let ok = !s.is_empty()
            && s.len() <= 63
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b))
            && s.bytes()
                .next()
                .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        if ok {
            Ok(Name(s.to_owned()))
        } else {
            Err(ModelError::Name(s.to_owned()))
        }
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Name {
    type Error = ModelError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Name::new(&s)
    }
}

impl From<Name> for String {
    fn from(n: Name) -> String {
        n.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Name {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Name::new(s)
    }
}

/// Quarter-vCPU units per vCPU.
pub const QUARTERS_PER_VCPU: u32 = 4;

/// Parses a vCPU amount ("2", "0.5") into quarters.
///
/// # Errors
/// [`ModelError::Vcpus`] unless it is a positive multiple of 0.25 (at most 4096 vCPUs).
pub fn parse_vcpus(v: f64) -> Result<u32, ModelError> {
    let q = v * f64::from(QUARTERS_PER_VCPU);
    if !(q.is_finite() && (1.0..=4096.0 * 4.0).contains(&q) && (q - q.round()).abs() < 1e-9) {
        return Err(ModelError::Vcpus(v.to_string()));
    }
    // Range-checked above.
    Ok(q.round() as u32)
}

/// Renders quarters as a vCPU amount ("2", "0.5").
pub fn format_vcpus(quarters: u32) -> String {
    let whole = quarters / QUARTERS_PER_VCPU;
    match quarters % QUARTERS_PER_VCPU {
        0 => whole.to_string(),
        1 => format!("{whole}.25"),
        2 => format!("{whole}.5"),
        _ => format!("{whole}.75"),
    }
}

/// Parses "512MiB", "4GiB", "3.75GiB" into MiB.
///
/// # Errors
/// [`ModelError::Memory`] for anything else or a non-positive or fractional-MiB amount.
pub fn parse_memory(s: &str) -> Result<u64, ModelError> {
    let err = || ModelError::Memory(s.to_owned());
    let t = s.trim();
    let (num, mult) = if let Some(n) = t.strip_suffix("GiB") {
        (n, 1024.0)
    } else if let Some(n) = t.strip_suffix("MiB") {
        (n, 1.0)
    } else {
        return Err(err());
    };
    let v: f64 = num.trim().parse().map_err(|_| err())?;
    let mib = v * mult;
    if !(mib.is_finite()
        && (1.0..=16.0 * 1024.0 * 1024.0).contains(&mib)
        && (mib - mib.round()).abs() < 1e-6)
    {
        return Err(err());
    }
    // Range-checked above.
    Ok(mib.round() as u64)
}

/// Renders MiB as "4GiB" or "384MiB".
pub fn format_memory(mib: u64) -> String {
    if mib.is_multiple_of(1024) {
        format!("{}GiB", mib / 1024)
    } else if (mib * 4).is_multiple_of(1024) {
        format!("{}GiB", mib as f64 / 1024.0)
    } else {
        format!("{mib}MiB")
    }
}

/// Memory granularity of nested VMs.
pub const VM_MEMORY_GRANULARITY_MIB: u64 = 256;

/// An amount of CPU and memory.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Default,
    Serialize,
    Deserialize,
    PartialOrd,
    Ord,
    utoipa::ToSchema,
)]
pub struct Resources {
    /// vCPUs in quarters.
    pub cpu_quarters: u32,
    /// Memory in MiB.
    pub memory_mib: u64,
}

impl Resources {
    /// `cpu_quarters` quarters and `memory_mib` MiB.
    pub const fn new(cpu_quarters: u32, memory_mib: u64) -> Resources {
        Resources {
            cpu_quarters,
            memory_mib,
        }
    }

    /// True if `self` fits within `cap`.
    pub fn fits_in(&self, cap: &Resources) -> bool {
        self.cpu_quarters <= cap.cpu_quarters && self.memory_mib <= cap.memory_mib
    }

    /// Component-wise sum, saturating.
    pub fn plus(&self, o: &Resources) -> Resources {
        Resources {
            cpu_quarters: self.cpu_quarters.saturating_add(o.cpu_quarters),
            memory_mib: self.memory_mib.saturating_add(o.memory_mib),
        }
    }

    /// Component-wise difference, saturating at zero.
    pub fn minus(&self, o: &Resources) -> Resources {
        Resources {
            cpu_quarters: self.cpu_quarters.saturating_sub(o.cpu_quarters),
            memory_mib: self.memory_mib.saturating_sub(o.memory_mib),
        }
    }
}

/// A rentable machine size with its price.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InstanceType {
    /// e.g. `m5.large`.
    pub name: Name,
    /// Whole vCPUs.
    pub vcpus: u32,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// List price, in the catalog's currency per hour.
    pub price_per_hour: f64,
}

impl InstanceType {
    /// Raw resources of the type.
    pub fn resources(&self) -> Resources {
        Resources::new(
            self.vcpus.saturating_mul(QUARTERS_PER_VCPU),
            self.memory_mib,
        )
    }

    /// The family: the part of the name before the first '.', e.g. `m5`.
    pub fn family(&self) -> &str {
        self.name.as_str().split('.').next().unwrap_or("")
    }
}

/// A tenant L2 network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Network {
    /// Name.
    pub name: Name,
    /// VXLAN network identifier.
    pub vni: u32,
    /// IPv4 subnet address.
    #[schema(value_type = String, example = "192.168.10.0")]
    pub subnet: Ipv4Addr,
    /// Prefix length.
    pub prefix: u8,
}

/// Parses "10.0.0.0/24".
///
/// # Errors
/// [`ModelError::Subnet`].
pub fn parse_subnet(s: &str) -> Result<(Ipv4Addr, u8), ModelError> {
    let err = || ModelError::Subnet(s.to_owned());
    let (a, l) = s.split_once('/').ok_or_else(err)?;
    let addr: Ipv4Addr = a.parse().map_err(|_| err())?;
    let len: u8 = l.parse().map_err(|_| err())?;
    if !(8..=30).contains(&len) {
        return Err(err());
    }
    let mask = u32::MAX << (32 - u32::from(len));
    Ok((Ipv4Addr::from(addr.to_bits() & mask), len))
}

/// Validates a VNI.
///
/// # Errors
/// [`ModelError::Vni`] outside 1..=16777215.
pub fn check_vni(v: u32) -> Result<u32, ModelError> {
    if (1..=0x00ff_ffff).contains(&v) {
        Ok(v)
    } else {
        Err(ModelError::Vni(v))
    }
}

/// Lifecycle of a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum HostState {
    /// Being rented.
    Provisioning,
    /// Rented and usable.
    Running,
    /// Being released.
    Releasing,
    /// Its agent stopped renewing its lease (etcd store): presumed dead. Its VMs are `lost`
    /// or were re-created elsewhere, as `--on-host-lost` says; it comes back `running` if its
    /// agent does.
    Lost,
}

/// An infrastructure VM rented from a provider.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Host {
    /// Name.
    pub name: Name,
    /// The provider it is rented from.
    pub provider: Name,
    /// The instance type.
    pub instance_type: InstanceType,
    /// Lifecycle state.
    pub state: HostState,
    /// Its address on the underlay, once known.
    #[schema(value_type = Option<String>)]
    pub underlay: Option<Ipv4Addr>,
    /// When it was rented, in seconds on the provider's billing clock.
    pub rented_at: u64,
    /// A `kangaroo agent` has reported for it (etcd store): its lease is its heartbeat, and the
    /// host is `lost` when the lease expires.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub agent: bool,
    /// The public key of its switch's secure tunnels, as its agent reported it (hosts driven
    /// by agents learn each other's keys from these).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
}

/// Lifecycle of a nested VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum VmState {
    /// Placed, not started.
    Stopped,
    /// Running.
    Running,
    /// On a host that was lost, and not re-created elsewhere.
    Lost,
}

/// A tenant's workload VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NestedVm {
    /// Name.
    pub name: Name,
    /// vCPUs in quarters.
    pub cpu_quarters: u32,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// Guest image.
    pub image: String,
    /// Nested-VM driver on local hosts (`qemu`, `netns`); the server's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<crate::driver::VmDriverKind>,
    /// The application it belongs to (moved together by an application migration).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub app: Option<Name>,
    /// The network it is attached to.
    pub network: Name,
    /// MAC address assigned from the network.
    pub mac: String,
    /// IPv4 address assigned from the network.
    #[schema(value_type = String)]
    pub ip: Ipv4Addr,
    /// Keep on one host with the other members, when it fits.
    pub affinity: Option<Name>,
    /// Never on one host with another member.
    pub anti_affinity: Option<Name>,
    /// Lifecycle state.
    pub state: VmState,
    /// The host it is placed on.
    pub host: Name,
    /// When it was created, seconds since the Unix epoch (0 for VMs created before it was
    /// recorded).
    #[serde(default)]
    pub created_at: u64,
    /// The host a live migration in flight moves it to (recorded before the transfer starts,
    /// cleared with the host change when it ends): agents leave such a VM alone, and a
    /// controller taking over settles it from the copies it finds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub moving_to: Option<Name>,
}

impl NestedVm {
    /// Resources the VM needs.
    pub fn resources(&self) -> Resources {
        Resources::new(self.cpu_quarters, self.memory_mib)
    }
}

/// A nested VM's host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// The VM.
    pub vm: Name,
    /// Its host.
    pub host: Name,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["web", "web-1", "m5.large", "a_b", "9lives"] {
            assert!(Name::new(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Web", "-x", ".x", "a b", "é", &"x".repeat(64)] {
            assert_eq!(
                Name::new(bad),
                Err(ModelError::Name(bad.to_owned())),
                "{bad}"
            );
        }
    }

    #[test]
    fn vcpus() {
        assert_eq!(parse_vcpus(2.0), Ok(8));
        assert_eq!(parse_vcpus(0.5), Ok(2));
        assert_eq!(parse_vcpus(0.25), Ok(1));
        assert!(parse_vcpus(0.3).is_err());
        assert!(parse_vcpus(0.0).is_err());
        assert!(parse_vcpus(-1.0).is_err());
        assert!(parse_vcpus(f64::NAN).is_err());
        assert_eq!(format_vcpus(2), "0.5");
        assert_eq!(format_vcpus(9), "2.25");
    }

    #[test]
    fn memory() {
        assert_eq!(parse_memory("4GiB"), Ok(4096));
        assert_eq!(parse_memory("3.75GiB"), Ok(3840));
        assert_eq!(parse_memory("512MiB"), Ok(512));
        for bad in ["4GB", "4", "", "-1GiB", "0MiB", "1.5MiB", "xGiB"] {
            assert!(parse_memory(bad).is_err(), "{bad}");
        }
        assert_eq!(format_memory(4096), "4GiB");
        assert_eq!(format_memory(3840), "3.75GiB");
        assert_eq!(format_memory(300), "300MiB");
    }

    #[test]
    fn subnets_and_vnis() {
        assert_eq!(
            parse_subnet("10.1.2.3/24"),
            Ok((Ipv4Addr::new(10, 1, 2, 0), 24))
        );
        for bad in ["10.0.0.0", "10.0.0.0/31", "10.0.0/24", "x/24"] {
            assert!(parse_subnet(bad).is_err(), "{bad}");
        }
        assert!(check_vni(0).is_err());
        assert!(check_vni(1 << 24).is_err());
        assert_eq!(check_vni(100), Ok(100));
    }

    #[test]
    fn resources_arithmetic() {
        let a = Resources::new(4, 1024);
        let b = Resources::new(8, 512);
        assert!(!a.fits_in(&b));
        assert_eq!(a.plus(&b), Resources::new(12, 1536));
        assert_eq!(a.minus(&b), Resources::new(0, 512));
    }
}
