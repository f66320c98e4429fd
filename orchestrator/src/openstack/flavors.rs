//! Flavors: the nested-VM sizes the compute API offers, Nova's defaults or the tenant's own
//! (`kangaroo serve --flavors FILE`).

use std::path::Path;

use serde::Deserialize;

use crate::model::{self, QUARTERS_PER_VCPU, VM_MEMORY_GRANULARITY_MIB};

/// A flavor: a nested-VM size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flavor {
    /// Its id and name.
    pub id: String,
    /// vCPUs in quarters.
    pub cpu_quarters: u32,
    /// Memory.
    pub ram_mib: u64,
}

/// The default flavors: Nova's names at sizes that suit nested VMs.
pub fn default_flavors() -> Vec<Flavor> {
    [
        ("m1.tiny", 1, 256),
        ("m1.small", 1, 512),
        ("m1.medium", 2, 1024),
        ("m1.large", 2, 2048),
        ("m1.xlarge", 4, 4096),
    ]
    .iter()
    .map(|(n, c, m)| Flavor {
        id: (*n).to_owned(),
        cpu_quarters: c * QUARTERS_PER_VCPU,
        ram_mib: *m,
    })
    .collect()
}

/// Why a flavors file was refused.
#[derive(Debug, thiserror::Error)]
pub enum FlavorError {
    /// The file cannot be read.
    #[error("reading {path}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Not TOML of the expected shape.
    #[error("{0}")]
    Toml(String),
    /// No entry.
    #[error("no [[flavor]] entry")]
    Empty,
    /// An entry's field is wrong.
    #[error("flavor {index} ({name:?}): {field}: {message}")]
    Entry {
        /// 1-based position in the file.
        index: usize,
        /// Its name.
        name: String,
        /// The field.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    flavor: Vec<Entry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    name: String,
    vcpus: f64,
    memory: String,
}

/// Parses a flavors file's text:
///
/// ```toml
/// [[flavor]]
/// name = "web"
/// vcpus = 0.5
/// memory = "512MiB"
/// ```
///
/// # Errors
/// A TOML error, or the entry and field at fault: a bad or repeated name (names starting with
/// `kg-` are kept for sizes no flavor has), vCPUs not a multiple of 0.25, memory not a multiple
/// of 256 MiB; or no flavor at all.
pub fn parse_flavors(text: &str) -> Result<Vec<Flavor>, FlavorError> {
    let f: File = toml::from_str(text).map_err(|e| FlavorError::Toml(e.to_string()))?;
    if f.flavor.is_empty() {
        return Err(FlavorError::Empty);
    }
    let mut out: Vec<Flavor> = Vec::new();
    for (i, e) in f.flavor.iter().enumerate() {
        let at = |field: &'static str, message: String| FlavorError::Entry {
            index: i + 1,
            name: e.name.clone(),
            field,
            message,
        };
        model::Name::new(&e.name).map_err(|x| at("name", x.to_string()))?;
        if e.name.starts_with("kg-") {
            return Err(at(
                "name",
                "names starting with \"kg-\" are reserved".into(),
            ));
        }
        if out.iter().any(|o| o.id == e.name) {
            return Err(at("name", "repeated".into()));
        }
        let q = model::parse_vcpus(e.vcpus).map_err(|x| at("vcpus", x.to_string()))?;
        let m = model::parse_memory(&e.memory).map_err(|x| at("memory", x.to_string()))?;
        if m % VM_MEMORY_GRANULARITY_MIB != 0 {
            return Err(at(
                "memory",
                format!("{} is not a multiple of 256 MiB", e.memory),
            ));
        }
        out.push(Flavor {
            id: e.name.clone(),
            cpu_quarters: q,
            ram_mib: m,
        });
    }
    Ok(out)
}

/// Reads a flavors file.
///
/// # Errors
/// The file cannot be read, or [`parse_flavors`] refuses it (the caller names the file).
pub fn load_flavors(path: &Path) -> Result<Vec<Flavor>, FlavorError> {
    let text = std::fs::read_to_string(path).map_err(|source| FlavorError::Read {
        path: path.display().to_string(),
        source,
    })?;
    parse_flavors(&text)
}

/// The flavor of a VM's size: a listed flavor when one matches, else a private one whose id
/// spells the size (`kg-<quarter vCPUs>q-<MiB>`), so every server's flavor can be shown.
pub fn flavor_of(list: &[Flavor], cpu_quarters: u32, ram_mib: u64) -> Flavor {
    list.iter()
        .find(|f| f.cpu_quarters == cpu_quarters && f.ram_mib == ram_mib)
        .cloned()
        .unwrap_or_else(|| Flavor {
            id: format!("kg-{cpu_quarters}q-{ram_mib}"),
            cpu_quarters,
            ram_mib,
        })
}

/// The flavor with id `id` (or a URL ending in it): a listed one, or a `kg-` size.
pub fn find_flavor(list: &[Flavor], id: &str) -> Option<Flavor> {
    let id = id.rsplit('/').next().unwrap_or(id);
    if let Some(f) = list.iter().find(|f| f.id == id) {
        return Some(f.clone());
    }
    let (q, m) = id.strip_prefix("kg-")?.split_once("q-")?;
    let (q, m) = (q.parse().ok()?, m.parse().ok()?);
    (q > 0 && m > 0).then_some(Flavor {
        id: id.to_owned(),
        cpu_quarters: q,
        ram_mib: m,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flavors_cover_every_size() {
        let d = default_flavors();
        assert_eq!(find_flavor(&d, "m1.small").map(|f| f.ram_mib), Some(512));
        assert_eq!(flavor_of(&d, 4, 512).id, "m1.small");
        let odd = flavor_of(&d, 2, 768);
        assert_eq!(odd.id, "kg-2q-768");
        assert_eq!(find_flavor(&d, &odd.id), Some(odd));
        assert_eq!(
            find_flavor(&d, "http://x/compute/flavors/m1.tiny").map(|f| f.id),
            Some("m1.tiny".to_owned())
        );
        for bad in ["m9.huge", "kg-0q-512", "kg-1q-", "kg-xq-1"] {
            assert_eq!(find_flavor(&d, bad), None, "{bad}");
        }
    }

    #[test]
    fn flavor_files() {
        let f = parse_flavors(
            "[[flavor]]\nname = \"web\"\nvcpus = 0.5\nmemory = \"768MiB\"\n\n[[flavor]]\nname = \"db\"\nvcpus = 2\nmemory = \"4GiB\"\n",
        )
        .unwrap();
        assert_eq!(
            f,
            [
                Flavor {
                    id: "web".into(),
                    cpu_quarters: 2,
                    ram_mib: 768
                },
                Flavor {
                    id: "db".into(),
                    cpu_quarters: 8,
                    ram_mib: 4096
                },
            ]
        );
        for (text, needle) in [
            ("", "missing field `flavor`"),
            ("flavor = []", "no [[flavor]]"),
            ("[[flavor]]\nname = \"Web\"\nvcpus = 1\nmemory = \"1GiB\"", "flavor 1 (\"Web\"): name"),
            ("[[flavor]]\nname = \"kg-1\"\nvcpus = 1\nmemory = \"1GiB\"", "reserved"),
            ("[[flavor]]\nname = \"a\"\nvcpus = 0.3\nmemory = \"1GiB\"", "flavor 1 (\"a\"): vcpus"),
            ("[[flavor]]\nname = \"a\"\nvcpus = 1\nmemory = \"100MiB\"", "multiple of 256"),
            ("[[flavor]]\nname = \"a\"\nvcpus = 1\nmemory = \"1GiB\"\n[[flavor]]\nname = \"a\"\nvcpus = 1\nmemory = \"1GiB\"", "flavor 2 (\"a\"): name: repeated"),
            ("[[flavor]]\nname = \"a\"\nvcpus = 1\nmemory = \"1GiB\"\ndisk = 4", "unknown field `disk`"),
        ] {
            let e = parse_flavors(text).unwrap_err().to_string();
            assert!(e.contains(needle), "{text:?}: {e}");
        }
    }
}
