//! Workload files: what a tenant wants to run, for `kangaroo plan` and `kangaroo apply`.
//!
//! ```toml
//! catalog = "ec2-2026"              # a built-in catalog or a catalog file path
//! app = "shop"                      # optional: labels every VM (moved together by `app migrate`)
//! [packing]                         # optional
//! reserve_vcpus = 0.25              # per host, for the hypervisor and switch (default 0)
//! reserve_memory = "256MiB"         # default 0
//! cpu_overcommit = 1.0              # vCPUs sold per physical vCPU (default 1)
//! [[vm]]
//! name = "web"                      # with count > 1: web-1 … web-N
//! count = 3
//! vcpus = 2                         # multiples of 0.25
//! memory = "4GiB"                   # multiples of 256 MiB
//! affinity = "shop"                 # optional
//! anti_affinity = "web-spread"      # optional
//! network = "blue"                  # optional (default "default")
//! image = "busybox"                 # optional
//! ```

use serde::Deserialize;

use crate::model::{parse_memory, parse_vcpus, Name, Resources, VM_MEMORY_GRANULARITY_MIB};
use crate::packing::{Demand, PackOptions};

/// A parsed, validated workload.
#[derive(Debug, Clone, PartialEq)]
pub struct Workload {
    /// Catalog name or path.
    pub catalog: String,
    /// The application every VM of the workload belongs to.
    pub app: Option<Name>,
    /// Packing options.
    pub options: PackOptions,
    /// The VMs, with `count` expanded.
    pub vms: Vec<VmRequest>,
}

/// One nested VM to place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmRequest {
    /// What to place.
    pub demand: Demand,
    /// Network to attach to.
    pub network: Name,
    /// Guest image.
    pub image: String,
}

/// A workload file that is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorkloadError {
    /// TOML syntax or shape (the message names line, column and key).
    #[error("workload: {0}")]
    Parse(String),
    /// A field of one `[[vm]]` entry.
    #[error("workload: vm[{index}] ({name}): {field}: {what}")]
    Vm {
        /// Index of the entry.
        index: usize,
        /// Its name as written.
        name: String,
        /// The field.
        field: &'static str,
        /// What is wrong.
        what: String,
    },
    /// A `[packing]` field.
    #[error("workload: packing.{field}: {what}")]
    Packing {
        /// The field.
        field: &'static str,
        /// What is wrong.
        what: String,
    },
    /// Two VMs would have the same name.
    #[error("workload: VM name {0} is used twice")]
    Duplicate(String),
    /// No VMs.
    #[error("workload: no [[vm]] entries")]
    Empty,
    /// The `app` label.
    #[error("workload: app: {0}")]
    App(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    catalog: String,
    #[serde(default)]
    app: Option<String>,
    #[serde(default)]
    packing: Option<PackingFile>,
    #[serde(default)]
    vm: Vec<VmFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PackingFile {
    reserve_vcpus: Option<f64>,
    reserve_memory: Option<String>,
    cpu_overcommit: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VmFile {
    name: String,
    count: Option<u32>,
    vcpus: f64,
    memory: String,
    affinity: Option<String>,
    anti_affinity: Option<String>,
    network: Option<String>,
    image: Option<String>,
}

/// Largest `count` accepted for one entry.
pub const MAX_COUNT: u32 = 100_000;

/// Most VMs one workload may describe, all entries together: a plan is computed per request,
/// so this bounds what one request can cost the controller.
pub const MAX_VMS: usize = 20_000;

impl Workload {
    /// Parses and validates workload text.
    ///
    /// # Errors
    /// [`WorkloadError`] naming the entry and field at fault.
    pub fn parse(text: &str) -> Result<Workload, WorkloadError> {
        let f: File = toml::from_str(text)
            .map_err(|e| WorkloadError::Parse(e.to_string().trim_end().to_owned()))?;
        let mut options = PackOptions::default();
        if let Some(p) = f.packing {
            if let Some(v) = p.reserve_vcpus {
                options.reserve.cpu_quarters = if v == 0.0 {
                    0
                } else {
                    parse_vcpus(v).map_err(|e| WorkloadError::Packing {
                        field: "reserve_vcpus",
                        what: e.to_string(),
                    })?
                };
            }
            if let Some(m) = p.reserve_memory {
                options.reserve.memory_mib =
                    parse_memory(&m).map_err(|e| WorkloadError::Packing {
                        field: "reserve_memory",
                        what: e.to_string(),
                    })?;
            }
            if let Some(o) = p.cpu_overcommit {
                if !(o.is_finite() && (1.0..=16.0).contains(&o)) {
                    return Err(WorkloadError::Packing {
                        field: "cpu_overcommit",
                        what: format!("{o} is not between 1 and 16"),
                    });
                }
                options.cpu_overcommit = o;
            }
        }
        let mut vms = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        for (index, v) in f.vm.into_iter().enumerate() {
            let bad = |field: &'static str, what: String| WorkloadError::Vm {
                index,
                name: v.name.clone(),
                field,
                what,
            };
            let name = Name::new(&v.name).map_err(|e| bad("name", e.to_string()))?;
            let cpu = parse_vcpus(v.vcpus).map_err(|e| bad("vcpus", e.to_string()))?;
            let mem = parse_memory(&v.memory).map_err(|e| bad("memory", e.to_string()))?;
            if mem % VM_MEMORY_GRANULARITY_MIB != 0 {
                return Err(bad(
                    "memory",
                    format!(
                        "{} is not a multiple of {VM_MEMORY_GRANULARITY_MIB} MiB",
                        v.memory
                    ),
                ));
            }
            let opt_name =
                |field: &'static str, s: &Option<String>| -> Result<Option<Name>, WorkloadError> {
                    s.as_deref()
                        .map(Name::new)
                        .transpose()
                        .map_err(|e| bad(field, e.to_string()))
                };
            let affinity = opt_name("affinity", &v.affinity)?;
            let anti = opt_name("anti_affinity", &v.anti_affinity)?;
            let network = opt_name("network", &v.network)?
                .unwrap_or_else(|| Name::new("default").unwrap_or_else(|_| name.clone()));
            let count = v.count.unwrap_or(1);
            if count == 0 || count > MAX_COUNT {
                return Err(bad(
                    "count",
                    format!("{count} is not between 1 and {MAX_COUNT}"),
                ));
            }
            // Checked before expanding: nothing is allocated for a workload that is too large.
            if vms.len() + count as usize > MAX_VMS {
                return Err(bad(
                    "count",
                    format!(
                        "{count} more VMs make {} in all: a workload may have at most {MAX_VMS}",
                        vms.len() + count as usize
                    ),
                ));
            }
            for k in 1..=count {
                let n = if count == 1 {
                    name.clone()
                } else {
                    Name::new(&format!("{}-{k}", v.name)).map_err(|e| bad("name", e.to_string()))?
                };
                if !seen.insert(n.clone()) {
                    return Err(WorkloadError::Duplicate(n.to_string()));
                }
                vms.push(VmRequest {
                    demand: Demand {
                        name: n,
                        resources: Resources::new(cpu, mem),
                        affinity: affinity.clone(),
                        anti_affinity: anti.clone(),
                    },
                    network: network.clone(),
                    image: v.image.clone().unwrap_or_else(|| "busybox".to_owned()),
                });
            }
        }
        if vms.is_empty() {
            return Err(WorkloadError::Empty);
        }
        let app = f
            .app
            .map(|a| Name::new(&a).map_err(|e| WorkloadError::App(e.to_string())))
            .transpose()?;
        Ok(Workload {
            catalog: f.catalog,
            app,
            options,
            vms,
        })
    }

    /// The demands, for packing.
    pub fn demands(&self) -> Vec<Demand> {
        self.vms.iter().map(|v| v.demand.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
catalog = "ec2-2026"
[packing]
reserve_vcpus = 0.25
reserve_memory = "256MiB"
[[vm]]
name = "web"
count = 3
vcpus = 0.5
memory = "1GiB"
affinity = "shop"
anti_affinity = "web-spread"
[[vm]]
name = "db"
vcpus = 2
memory = "8GiB"
affinity = "shop"
"#;

    #[test]
    fn the_total_of_all_entries_is_capped_before_anything_is_expanded() {
        let entries = |n: usize, count: u32| {
            let mut t = "catalog = 'ec2-2026'\n".to_owned();
            for i in 0..n {
                t.push_str(&format!(
                    "[[vm]]\nname = 'v{i}'\nvcpus = 0.25\nmemory = '256MiB'\ncount = {count}\n"
                ));
            }
            t
        };
        // 200 entries of 100,000 each (20 million VMs): refused at once, naming the entry.
        let started = std::time::Instant::now();
        let e = Workload::parse(&entries(200, MAX_COUNT))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("vm[0]") && e.contains("count") && e.contains("at most 20000"),
            "{e}"
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        let e = Workload::parse(&entries(2, 15_000))
            .unwrap_err()
            .to_string();
        assert!(e.contains("vm[1]") && e.contains("30000 in all"), "{e}");
        assert_eq!(
            Workload::parse(&entries(2, 10_000)).unwrap().vms.len(),
            MAX_VMS
        );
    }

    #[test]
    fn parses_and_expands_counts() {
        let w = Workload::parse(EXAMPLE).unwrap();
        assert_eq!(w.catalog, "ec2-2026");
        assert_eq!(w.options.reserve, Resources::new(1, 256));
        let names: Vec<_> = w.vms.iter().map(|v| v.demand.name.to_string()).collect();
        assert_eq!(names, ["web-1", "web-2", "web-3", "db"]);
        assert_eq!(w.vms[0].demand.resources, Resources::new(2, 1024));
        assert_eq!(w.vms[3].network.as_str(), "default");
    }

    #[test]
    fn rejections_name_the_entry_and_field() {
        let cases = [
            ("catalog='c'\n[[vm]]\nname='a'\nvcpus=0.3\nmemory='1GiB'\n", "vm[0] (a): vcpus"),
            ("catalog='c'\n[[vm]]\nname='a'\nvcpus=1\nmemory='100MiB'\n", "vm[0] (a): memory"),
            ("catalog='c'\n[[vm]]\nname='A'\nvcpus=1\nmemory='1GiB'\n", "vm[0] (A): name"),
            ("catalog='c'\n[[vm]]\nname='a'\nvcpus=1\nmemory='1GiB'\ncolour='red'\n", "colour"),
            ("catalog='c'\n[[vm]]\nname='a'\nvcpus=1\nmemory='1GiB'\ncount=0\n", "count"),
            ("catalog='c'\n[packing]\ncpu_overcommit=0.5\n[[vm]]\nname='a'\nvcpus=1\nmemory='1GiB'\n", "packing.cpu_overcommit"),
            ("catalog='c'\n[[vm]]\nname='a'\nvcpus=1\nmemory='1GiB'\n[[vm]]\nname='a'\nvcpus=1\nmemory='1GiB'\n", "used twice"),
            ("catalog='c'\n", "no [[vm]]"),
            ("[[vm]]\nname='a'\nvcpus=1\nmemory='1GiB'\n", "catalog"),
        ];
        for (text, expect) in cases {
            let e = Workload::parse(text).unwrap_err().to_string();
            assert!(e.contains(expect), "{e:?} should mention {expect:?}");
        }
    }
}
