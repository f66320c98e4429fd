//! Provider catalogs: the instance types a provider rents, with their list prices.
//!
//! Catalogs are TOML files (format in docs/orchestrator.md). `ec2-2014` and `ec2-2026` ship inside
//! the binary; any other catalog is a file path. Loading validates every entry and names the
//! offending instance and field on error.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::model::{parse_memory, InstanceType, ModelError, Name};

/// A provider's priced catalog.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Catalog {
    /// Catalog name (`ec2-2026`, or the file stem).
    pub name: String,
    /// The provider.
    pub provider: String,
    /// The region the prices apply to.
    pub region: String,
    /// Currency of the prices.
    pub currency: String,
    /// Instance types.
    pub instances: Vec<InstanceType>,
}

/// The catalogs that ship with Kangaroo.
pub const BUILTIN: &[(&str, &str)] = &[
    ("ec2-2014", include_str!("../catalogs/ec2-2014.toml")),
    ("ec2-2026", include_str!("../catalogs/ec2-2026.toml")),
];

/// Errors loading a catalog.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// Not a built-in name and not a readable file.
    #[error("catalog {name:?}: not a built-in catalog ({builtins}) and not a readable file")]
    NotFound {
        /// What was asked for.
        name: String,
        /// The built-in names.
        builtins: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// TOML syntax or shape error (the message names the line and field).
    #[error("catalog {name}: {message}")]
    Parse {
        /// The catalog.
        name: String,
        /// The parser's message.
        message: String,
    },
    /// An instance entry is invalid.
    #[error("catalog {name}: instance[{index}] ({instance}): {what}")]
    Invalid {
        /// The catalog.
        name: String,
        /// Index of the entry.
        index: usize,
        /// Its name.
        instance: String,
        /// What is wrong.
        what: String,
    },
    /// Two entries share a name.
    #[error("catalog {name}: instance type {instance} is listed twice")]
    Duplicate {
        /// The catalog.
        name: String,
        /// The repeated name.
        instance: String,
    },
    /// No instance types at all.
    #[error("catalog {0}: no instance types")]
    Empty(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogFile {
    provider: String,
    region: String,
    #[serde(default = "usd")]
    currency: String,
    #[serde(rename = "instance", default)]
    instances: Vec<InstanceFile>,
}

fn usd() -> String {
    "USD".to_owned()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InstanceFile {
    name: String,
    vcpus: u32,
    memory: String,
    price_per_hour: f64,
}

impl Catalog {
    /// Parses catalog text.
    ///
    /// # Errors
    /// [`CatalogError`] naming the entry and field at fault.
    pub fn parse(name: &str, text: &str) -> Result<Catalog, CatalogError> {
        let f: CatalogFile = toml::from_str(text).map_err(|e| CatalogError::Parse {
            name: name.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        if f.instances.is_empty() {
            return Err(CatalogError::Empty(name.to_owned()));
        }
        let mut instances: Vec<InstanceType> = Vec::with_capacity(f.instances.len());
        for (index, i) in f.instances.into_iter().enumerate() {
            let invalid = |what: String| CatalogError::Invalid {
                name: name.to_owned(),
                index,
                instance: i.name.clone(),
                what,
            };
            let n = Name::new(&i.name).map_err(|e| invalid(format!("name: {e}")))?;
            if i.vcpus == 0 || i.vcpus > 4096 {
                return Err(invalid(format!(
                    "vcpus: {} is not between 1 and 4096",
                    i.vcpus
                )));
            }
            let memory_mib =
                parse_memory(&i.memory).map_err(|e: ModelError| invalid(format!("memory: {e}")))?;
            if !(i.price_per_hour.is_finite() && i.price_per_hour > 0.0) {
                return Err(invalid(format!(
                    "price_per_hour: {} is not a positive price",
                    i.price_per_hour
                )));
            }
            if instances.iter().any(|x| x.name == n) {
                return Err(CatalogError::Duplicate {
                    name: name.to_owned(),
                    instance: i.name,
                });
            }
            instances.push(InstanceType {
                name: n,
                vcpus: i.vcpus,
                memory_mib,
                price_per_hour: i.price_per_hour,
            });
        }
        Ok(Catalog {
            name: name.to_owned(),
            provider: f.provider,
            region: f.region,
            currency: f.currency,
            instances,
        })
    }

    /// A built-in catalog by name, or a catalog file by path.
    ///
    /// # Errors
    /// [`CatalogError`].
    pub fn load(name_or_path: &str) -> Result<Catalog, CatalogError> {
        if let Some((n, text)) = BUILTIN.iter().find(|(n, _)| *n == name_or_path) {
            return Catalog::parse(n, text);
        }
        let path = Path::new(name_or_path);
        let text = std::fs::read_to_string(path).map_err(|source| CatalogError::NotFound {
            name: name_or_path.to_owned(),
            builtins: BUILTIN
                .iter()
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
                .join(", "),
            source,
        })?;
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or(name_or_path);
        Catalog::parse(stem, &text)
    }

    /// Every built-in catalog.
    ///
    /// # Errors
    /// Only if a shipped file is broken (a test guards against that).
    pub fn builtins() -> Result<Vec<Catalog>, CatalogError> {
        BUILTIN.iter().map(|(n, t)| Catalog::parse(n, t)).collect()
    }

    /// The instance type named `name`.
    pub fn get(&self, name: &str) -> Option<&InstanceType> {
        self.instances.iter().find(|i| i.name.as_str() == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_parse_with_the_list_prices() {
        let cats = Catalog::builtins().unwrap();
        assert_eq!(cats.len(), 2);
        let c14 = Catalog::load("ec2-2014").unwrap();
        assert_eq!(c14.instances.len(), 9);
        let m3 = c14.get("m3.medium").unwrap();
        assert_eq!(
            (m3.vcpus, m3.memory_mib, m3.price_per_hour),
            (1, 3840, 0.067)
        );
        assert_eq!(c14.get("c3.8xlarge").unwrap().price_per_hour, 1.680);
        let c26 = Catalog::load("ec2-2026").unwrap();
        assert_eq!(c26.instances.len(), 18);
        let t3 = c26.get("t3.micro").unwrap();
        assert_eq!(
            (t3.vcpus, t3.memory_mib, t3.price_per_hour),
            (2, 1024, 0.0104)
        );
        assert_eq!(c26.get("c5.9xlarge").unwrap().memory_mib, 72 * 1024);
        assert_eq!(c26.get("r6i.4xlarge").unwrap().price_per_hour, 1.008);
        assert_eq!(c26.get("m5.large").unwrap().family(), "m5");
    }

    #[test]
    fn errors_name_the_entry_and_field() {
        let e = Catalog::parse("x", "provider='p'\nregion='r'\n[[instance]]\nname='a.b'\nvcpus=2\nmemory='2GB'\nprice_per_hour=0.1\n").unwrap_err();
        assert!(e.to_string().contains("instance[0] (a.b): memory"), "{e}");
        let e = Catalog::parse("x", "provider='p'\nregion='r'\ncolour='red'\n").unwrap_err();
        assert!(e.to_string().contains("colour"), "{e}");
        let e = Catalog::parse("x", "provider='p'\nregion='r'\n[[instance]]\nname='a'\nvcpus=2\nmemory='2GiB'\nprice_per_hour=-1\n").unwrap_err();
        assert!(e.to_string().contains("price_per_hour"), "{e}");
        let e = Catalog::parse("x", "provider='p'\nregion='r'\n").unwrap_err();
        assert!(matches!(e, CatalogError::Empty(_)));
        let dup = "provider='p'\nregion='r'\n[[instance]]\nname='a'\nvcpus=2\nmemory='2GiB'\nprice_per_hour=1\n[[instance]]\nname='a'\nvcpus=2\nmemory='2GiB'\nprice_per_hour=1\n";
        assert!(matches!(
            Catalog::parse("x", dup),
            Err(CatalogError::Duplicate { .. })
        ));
        assert!(matches!(
            Catalog::load("/nonexistent/cat.toml"),
            Err(CatalogError::NotFound { .. })
        ));
    }

    #[test]
    fn user_catalog_files_load_by_path() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("mycloud.toml");
        std::fs::write(&p, "provider='mine'\nregion='home'\ncurrency='EUR'\n[[instance]]\nname='small'\nvcpus=1\nmemory='1GiB'\nprice_per_hour=0.01\n").unwrap();
        let c = Catalog::load(p.to_str().unwrap()).unwrap();
        assert_eq!(
            (c.name.as_str(), c.currency.as_str(), c.instances.len()),
            ("mycloud", "EUR", 1)
        );
    }
}
