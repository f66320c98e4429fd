//! Desired state (hosts, networks, nested VMs, and the billing clock) behind the [`Store`] trait.
//!
//! Contract:
//! - [`Store::load`] returns the whole state and its revision.
//! - [`Store::commit`] applies a batch of operations in one transaction if and only if the store is
//!   still at the expected revision (compare-and-swap), and advances the revision by one. A crash
//!   at any point leaves either the old state or the new one, never a mix.
//!
//! [`RedbStore`] keeps the state in an embedded `redb` database (one file under the data
//! directory, one controller). [`etcd::EtcdStore`] keeps it on etcd for several controllers, of
//! which the elected one writes ([`Store::role`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::model::{Host, Name, NestedVm, Network};

pub mod etcd;

/// Who may write through a store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// The only controller (the embedded store).
    Sole,
    /// The elected leader; `fence` is the etcd revision it won at, compared by every commit.
    Leader {
        /// The leader key's create revision.
        fence: i64,
    },
    /// A standby: reads only; `leader` is the leader's API address when one is known.
    Standby {
        /// The leader's API address.
        leader: Option<String>,
    },
}

/// Bookkeeping kept with the state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// The simulated billing clock, seconds.
    pub clock_secs: u64,
    /// Counter for generated host names.
    pub next_host: u64,
    /// Each host's agent credential, as the hex SHA-256 of the secret issued at its join
    /// (the secret itself is only ever with the agent).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub agent_credentials: std::collections::BTreeMap<String, String>,
}

/// Everything the orchestrator remembers.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct State {
    /// Rented hosts.
    pub hosts: BTreeMap<Name, Host>,
    /// Tenant networks.
    pub networks: BTreeMap<Name, Network>,
    /// Nested VMs.
    pub vms: BTreeMap<Name, NestedVm>,
    /// Bookkeeping.
    pub meta: Meta,
}

/// One change.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// Create or replace a host.
    PutHost(Host),
    /// Remove a host.
    DeleteHost(Name),
    /// Create or replace a network.
    PutNetwork(Network),
    /// Remove a network.
    DeleteNetwork(Name),
    /// Create or replace a VM.
    PutVm(NestedVm),
    /// Remove a VM.
    DeleteVm(Name),
    /// Replace the bookkeeping.
    PutMeta(Meta),
}

impl State {
    /// Applies `ops` in memory (what a successful commit did to the stored state).
    pub fn apply(&mut self, ops: &[Op]) {
        for op in ops {
            match op {
                Op::PutHost(h) => {
                    self.hosts.insert(h.name.clone(), h.clone());
                }
                Op::DeleteHost(n) => {
                    self.hosts.remove(n);
                }
                Op::PutNetwork(n) => {
                    self.networks.insert(n.name.clone(), n.clone());
                }
                Op::DeleteNetwork(n) => {
                    self.networks.remove(n);
                }
                Op::PutVm(v) => {
                    self.vms.insert(v.name.clone(), v.clone());
                }
                Op::DeleteVm(n) => {
                    self.vms.remove(n);
                }
                Op::PutMeta(m) => self.meta = m.clone(),
            }
        }
    }
}

/// Store errors.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another writer committed first.
    #[error("state changed concurrently (expected revision {expected}, found {found})")]
    Conflict {
        /// The revision the caller read.
        expected: u64,
        /// The revision now stored.
        found: u64,
    },
    /// The database could not be opened.
    #[error("cannot open the state database {path}")]
    Open {
        /// Its path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A database operation failed.
    #[error("state database error")]
    Db(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// This controller is a standby: the leader writes.
    #[error("this controller is a standby; {}", match leader { Some(l) => format!("the leader is {l}"), None => "no leader is elected yet".to_owned() })]
    NotLeader {
        /// The leader's API address, when known.
        leader: Option<String>,
    },
    /// The distributed store does not answer.
    #[error("the state store is unavailable: {0}")]
    Unavailable(String),
    /// An etcd request failed.
    #[error("etcd failed while {what}")]
    Etcd {
        /// What was being done.
        what: &'static str,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A stored record does not decode.
    #[error("corrupt record {table}/{key}")]
    Corrupt {
        /// The table.
        table: &'static str,
        /// The key.
        key: String,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
}

/// Desired state, persisted.
pub trait Store: Send + Sync {
    /// The whole state and its revision.
    ///
    /// # Errors
    /// [`StoreError`].
    fn load(&self) -> Result<(State, u64), StoreError>;

    /// Applies `ops` atomically if the store is at revision `expected`; returns the new revision.
    ///
    /// # Errors
    /// [`StoreError::Conflict`] if another commit happened since `expected`; others on I/O.
    fn commit(&self, expected: u64, ops: &[Op]) -> Result<u64, StoreError>;

    /// Whether this controller may commit.
    fn role(&self) -> Role {
        Role::Sole
    }

    /// Where the state lives, for people.
    fn describe(&self) -> String {
        "embedded".to_owned()
    }
}

const HOSTS: TableDefinition<&str, &[u8]> = TableDefinition::new("hosts");
const NETWORKS: TableDefinition<&str, &[u8]> = TableDefinition::new("networks");
const VMS: TableDefinition<&str, &[u8]> = TableDefinition::new("vms");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const REVISION_KEY: &str = "revision";
const META_KEY: &str = "meta";

fn db_err(e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::Db(Box::new(e))
}

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(v).map_err(db_err)
}

/// The embedded store: one redb file.
pub struct RedbStore {
    db: Database,
}

impl RedbStore {
    /// File name of the database inside the data directory.
    pub const FILE: &'static str = "state.redb";

    /// Opens (or creates) the store in `dir`.
    ///
    /// # Errors
    /// [`StoreError::Open`] if the directory or database cannot be opened (for example, another
    /// `kangaroo serve` holds it).
    pub fn open(dir: &Path) -> Result<RedbStore, StoreError> {
        let path = dir.join(Self::FILE);
        let open_err = |e: Box<dyn std::error::Error + Send + Sync>| StoreError::Open {
            path: path.clone(),
            source: e,
        };
        crate::sys::private_dir(dir).map_err(|e| open_err(Box::new(e)))?;
        let db = Database::create(&path).map_err(|e| open_err(Box::new(e)))?;
        let w = db.begin_write().map_err(db_err)?;
        for t in [HOSTS, NETWORKS, VMS, META] {
            w.open_table(t).map_err(db_err)?;
        }
        w.commit().map_err(db_err)?;
        Ok(RedbStore { db })
    }
}

fn read_all<T: for<'de> Deserialize<'de>>(
    txn: &redb::ReadTransaction,
    def: TableDefinition<&str, &[u8]>,
    table: &'static str,
) -> Result<Vec<T>, StoreError> {
    let t = txn.open_table(def).map_err(db_err)?;
    let mut out = Vec::new();
    for row in t.iter().map_err(db_err)? {
        let (k, v) = row.map_err(db_err)?;
        let item = serde_json::from_slice(v.value()).map_err(|source| StoreError::Corrupt {
            table,
            key: k.value().to_owned(),
            source,
        })?;
        out.push(item);
    }
    Ok(out)
}

fn revision_of(bytes: Option<&[u8]>) -> u64 {
    bytes
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0)
}

impl Store for RedbStore {
    fn load(&self) -> Result<(State, u64), StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let mut s = State::default();
        for h in read_all::<Host>(&txn, HOSTS, "hosts")? {
            s.hosts.insert(h.name.clone(), h);
        }
        for n in read_all::<Network>(&txn, NETWORKS, "networks")? {
            s.networks.insert(n.name.clone(), n);
        }
        for v in read_all::<NestedVm>(&txn, VMS, "vms")? {
            s.vms.insert(v.name.clone(), v);
        }
        let meta = txn.open_table(META).map_err(db_err)?;
        if let Some(m) = meta.get(META_KEY).map_err(db_err)? {
            s.meta = serde_json::from_slice(m.value()).map_err(|source| StoreError::Corrupt {
                table: "meta",
                key: META_KEY.to_owned(),
                source,
            })?;
        }
        let rev = revision_of(
            meta.get(REVISION_KEY)
                .map_err(db_err)?
                .as_ref()
                .map(|g| g.value()),
        );
        Ok((s, rev))
    }

    fn commit(&self, expected: u64, ops: &[Op]) -> Result<u64, StoreError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        let next = {
            let mut meta = txn.open_table(META).map_err(db_err)?;
            let found = revision_of(
                meta.get(REVISION_KEY)
                    .map_err(db_err)?
                    .as_ref()
                    .map(|g| g.value()),
            );
            if found != expected {
                return Err(StoreError::Conflict { expected, found });
            }
            let next = found + 1;
            meta.insert(REVISION_KEY, next.to_be_bytes().as_slice())
                .map_err(db_err)?;
            let mut hosts = txn.open_table(HOSTS).map_err(db_err)?;
            let mut networks = txn.open_table(NETWORKS).map_err(db_err)?;
            let mut vms = txn.open_table(VMS).map_err(db_err)?;
            for op in ops {
                match op {
                    Op::PutHost(h) => {
                        hosts
                            .insert(h.name.as_str(), encode(h)?.as_slice())
                            .map_err(db_err)?;
                    }
                    Op::DeleteHost(n) => {
                        hosts.remove(n.as_str()).map_err(db_err)?;
                    }
                    Op::PutNetwork(n) => {
                        networks
                            .insert(n.name.as_str(), encode(n)?.as_slice())
                            .map_err(db_err)?;
                    }
                    Op::DeleteNetwork(n) => {
                        networks.remove(n.as_str()).map_err(db_err)?;
                    }
                    Op::PutVm(v) => {
                        vms.insert(v.name.as_str(), encode(v)?.as_slice())
                            .map_err(db_err)?;
                    }
                    Op::DeleteVm(n) => {
                        vms.remove(n.as_str()).map_err(db_err)?;
                    }
                    Op::PutMeta(m) => {
                        meta.insert(META_KEY, encode(m)?.as_slice())
                            .map_err(db_err)?;
                    }
                }
            }
            next
        };
        txn.commit().map_err(db_err)?;
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{HostState, InstanceType};

    fn host(name: &str) -> Host {
        Host {
            name: Name::new(name).unwrap(),
            provider: Name::new("sim").unwrap(),
            instance_type: InstanceType {
                name: Name::new("m5.large").unwrap(),
                vcpus: 2,
                memory_mib: 8192,
                price_per_hour: 0.096,
            },
            state: HostState::Running,
            underlay: None,
            rented_at: 0,
            agent: false,
            public_key: None,
        }
    }

    #[test]
    fn commits_are_compare_and_swap_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = RedbStore::open(dir.path()).unwrap();
            let (st, rev) = s.load().unwrap();
            assert_eq!((st, rev), (State::default(), 0));
            assert_eq!(
                s.commit(
                    0,
                    &[
                        Op::PutHost(host("h1")),
                        Op::PutMeta(Meta {
                            clock_secs: 5,
                            next_host: 2,
                            ..Meta::default()
                        })
                    ]
                )
                .unwrap(),
                1
            );
            assert!(matches!(
                s.commit(0, &[Op::PutHost(host("h2"))]),
                Err(StoreError::Conflict {
                    expected: 0,
                    found: 1
                })
            ));
            assert_eq!(
                s.commit(
                    1,
                    &[
                        Op::PutHost(host("h2")),
                        Op::DeleteHost(Name::new("h1").unwrap())
                    ]
                )
                .unwrap(),
                2
            );
        }
        let s = RedbStore::open(dir.path()).unwrap();
        let (st, rev) = s.load().unwrap();
        assert_eq!(rev, 2);
        assert_eq!(
            st.hosts.keys().map(|k| k.as_str()).collect::<Vec<_>>(),
            ["h2"]
        );
        assert_eq!(st.meta.clock_secs, 5);
        let mut mem = State::default();
        mem.apply(&[
            Op::PutHost(host("h1")),
            Op::PutMeta(Meta {
                clock_secs: 5,
                next_host: 2,
                ..Meta::default()
            }),
        ]);
        mem.apply(&[
            Op::PutHost(host("h2")),
            Op::DeleteHost(Name::new("h1").unwrap()),
        ]);
        assert_eq!(mem, st, "in-memory apply matches what was stored");
    }

    #[test]
    fn a_second_opener_gets_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let _a = RedbStore::open(dir.path()).unwrap();
        let e = RedbStore::open(dir.path()).err().unwrap();
        assert!(e.to_string().contains("state.redb"), "{e}");
    }
}
