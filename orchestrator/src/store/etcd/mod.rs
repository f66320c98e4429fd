//! The distributed store: the same state on etcd, for several controllers.
//!
//! Layout under the prefix (`/kangaroo/` unless the URL names another):
//! - `rev`: the store's revision (decimal), advanced by every commit;
//! - `hosts/NAME`, `networks/NAME`, `vms/NAME`, `meta`: the records, JSON, as in the embedded
//!   store;
//! - `leader`: the elected controller's API address, bound to its lease;
//! - `token`: the tenant API token every controller accepts.
//!
//! A commit is one etcd transaction: it compares `rev` with the revision the caller read and
//! the leader key's create revision with the one this controller won the election at (the
//! fence: a controller that lost its lease can no longer write, even if it does not know yet),
//! then writes every record and the new `rev` together. A read is one range request, so it sees
//! one etcd revision.
//!
//! etcd's client is asynchronous; the [`Store`] trait is not (the service runs on the blocking
//! pool and on plain threads). Every call runs on this store's own one-thread runtime and the
//! caller waits on a channel, so a call works from any thread, inside a runtime or not.

mod agents;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, PutOptions, Txn, TxnOp,
    TxnOpResponse, WatchFilterType, WatchOptions,
};

use super::{Op, Role, State, Store, StoreError};

/// How long one etcd call may take before the store reports etcd unavailable.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest response accepted (a whole state of ten thousand VMs is a few MiB).
const MAX_MESSAGE: usize = 256 << 20;

/// Where the state lives on etcd: `etcd://HOST:PORT[,HOST:PORT…][/PREFIX]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdUrl {
    /// `http://HOST:PORT` for each member.
    pub endpoints: Vec<String>,
    /// Key prefix, starting and ending with `/`.
    pub prefix: String,
}

impl std::str::FromStr for EtcdUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<EtcdUrl, String> {
        let rest = s
            .strip_prefix("etcd://")
            .ok_or_else(|| format!("{s:?}: an etcd store is etcd://HOST:PORT[/PREFIX]"))?;
        let (hosts, path) = match rest.split_once('/') {
            Some((h, p)) => (h, p.trim_matches('/')),
            None => (rest, ""),
        };
        let mut endpoints = Vec::new();
        for h in hosts.split(',') {
            let ok = h
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !ok {
                return Err(format!(
                    "{s:?}: member {h:?} is not HOST:PORT (etcd://127.0.0.1:2379)"
                ));
            }
            endpoints.push(format!("http://{h}"));
        }
        if path
            .chars()
            .any(|c| !(c.is_ascii_alphanumeric() || "-_./".contains(c)))
        {
            return Err(format!(
                "{s:?}: the prefix {path:?} may hold letters, digits and - _ . / only"
            ));
        }
        let prefix = if path.is_empty() {
            "/kangaroo/".to_owned()
        } else {
            format!("/{path}/")
        };
        Ok(EtcdUrl { endpoints, prefix })
    }
}

impl std::fmt::Display for EtcdUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hosts: Vec<&str> = self
            .endpoints
            .iter()
            .map(|e| e.trim_start_matches("http://"))
            .collect();
        write!(
            f,
            "etcd://{}{}",
            hosts.join(","),
            self.prefix.trim_end_matches('/')
        )
    }
}

struct Shared {
    /// Always `Some` until dropped (taken to shut down without blocking).
    rt: Option<tokio::runtime::Runtime>,
    client: Client,
    url: EtcdUrl,
    role: Mutex<Role>,
    /// Set by [`EtcdStore::resign`]: this controller no longer campaigns.
    resigned: AtomicBool,
}

impl Shared {
    fn spawn(&self, f: impl Future<Output = ()> + Send + 'static) {
        if let Some(rt) = &self.rt {
            rt.spawn(f);
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // The last handle may drop inside another runtime, where blocking is not allowed.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// The state on etcd (cheap to clone: clones share one connection).
#[derive(Clone)]
pub struct EtcdStore {
    shared: Arc<Shared>,
}

fn etcd_err(what: &'static str, e: etcd_client::Error) -> StoreError {
    StoreError::Etcd {
        what,
        source: Box::new(e),
    }
}

impl EtcdStore {
    /// Connects to `url`. The store starts as a standby: it writes only once
    /// [`EtcdStore::campaign`] made it the leader.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] if no member answers.
    pub fn connect(url: &EtcdUrl) -> Result<EtcdStore, StoreError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("kangaroo-etcd")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Db(Box::new(e)))?;
        let opts = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(3))
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(3))
            .with_keep_alive_while_idle(true);
        let endpoints = url.endpoints.clone();
        let client = rt
            .block_on(async move {
                let c = Client::connect(endpoints, Some(opts)).await?;
                // Connecting is lazy; one read proves a member answers.
                let mut probe = c.clone();
                probe
                    .get("/", Some(GetOptions::new().with_count_only()))
                    .await?;
                Ok::<_, etcd_client::Error>(c)
            })
            .map_err(|e| StoreError::Unavailable(format!("{url}: {e}")))?;
        Ok(EtcdStore {
            shared: Arc::new(Shared {
                rt: Some(rt),
                client,
                url: url.clone(),
                role: Mutex::new(Role::Standby { leader: None }),
                resigned: AtomicBool::new(false),
            }),
        })
    }

    /// The URL this store was opened with.
    pub fn url(&self) -> &EtcdUrl {
        &self.shared.url
    }

    fn key(&self, k: &str) -> String {
        format!("{}{k}", self.shared.url.prefix)
    }

    fn set_role(&self, r: Role) {
        *self.shared.role.lock().unwrap_or_else(|p| p.into_inner()) = r;
    }

    /// Runs `f` on the store's runtime and waits for it, from any thread.
    fn run<T, F>(&self, what: &'static str, f: impl FnOnce(Client) -> F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, etcd_client::Error>> + Send + 'static,
    {
        let fut = f(self.shared.client.clone());
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.shared.spawn(async move {
            let _ = tx.send(tokio::time::timeout(CALL_TIMEOUT, fut).await);
        });
        match rx.recv() {
            Ok(Ok(Ok(v))) => Ok(v),
            Ok(Ok(Err(e))) => Err(etcd_err(what, e)),
            Ok(Err(_)) => Err(StoreError::Unavailable(format!(
                "{}: no answer to {what} within {} s",
                self.shared.url,
                CALL_TIMEOUT.as_secs()
            ))),
            Err(_) => Err(StoreError::Unavailable(format!(
                "{}: the etcd client stopped",
                self.shared.url
            ))),
        }
    }

    /// The value stored at `name` under the prefix, or `make()` stored there if there is none
    /// yet (the first controller's value wins; every other one reads it).
    ///
    /// # Errors
    /// etcd failed.
    pub fn shared_value(
        &self,
        name: &str,
        make: impl FnOnce() -> String,
    ) -> Result<String, StoreError> {
        let key = self.key(name);
        let fresh = make();
        let txn = Txn::new()
            .when([Compare::version(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.clone(), fresh.clone(), None)])
            .or_else([TxnOp::get(key, None)]);
        let r = self.run(
            "a shared value",
            move |mut c| async move { c.txn(txn).await },
        )?;
        if r.succeeded() {
            return Ok(fresh);
        }
        for op in r.op_responses() {
            if let TxnOpResponse::Get(g) = op {
                if let Some(kv) = g.kvs().first() {
                    return Ok(String::from_utf8_lossy(kv.value()).into_owned());
                }
            }
        }
        Err(StoreError::Unavailable(format!(
            "{}: {name} was neither created nor read",
            self.shared.url
        )))
    }

    /// Starts the election in the background: this controller leads while it holds the
    /// `leader` key, bound to a lease of `ttl` that it keeps alive. `changed(true)` runs when it
    /// becomes the leader and `changed(false)` when it stops being it; both on a plain thread.
    pub fn campaign(
        &self,
        advertise: String,
        ttl: Duration,
        changed: Arc<dyn Fn(bool) + Send + Sync>,
    ) {
        let me = self.clone();
        self.shared.spawn(async move {
            me.elect(advertise, ttl, changed).await;
        });
    }

    async fn elect(
        &self,
        advertise: String,
        ttl: Duration,
        changed: Arc<dyn Fn(bool) + Send + Sync>,
    ) {
        let key = self.key("leader");
        let ttl_s = i64::try_from(ttl.as_secs().max(1)).unwrap_or(5);
        let mut c = self.shared.client.clone();
        let notify = |lead: bool| {
            let f = changed.clone();
            std::thread::spawn(move || f(lead));
        };
        while !self.shared.resigned.load(Ordering::SeqCst) {
            let lease = match c.lease_grant(ttl_s, None).await {
                Ok(l) => l.id(),
                Err(e) => {
                    eprintln!("kangaroo: election: cannot get a lease from etcd: {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            let txn = Txn::new()
                .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(
                    key.clone(),
                    advertise.clone(),
                    Some(PutOptions::new().with_lease(lease)),
                )])
                .or_else([TxnOp::get(key.clone(), None)]);
            let r = match c.txn(txn).await {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("kangaroo: election: {e}");
                    let _ = c.lease_revoke(lease).await;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            let at = r.header().map_or(0, |h| h.revision());
            if r.succeeded() {
                // The put happened at the transaction's revision: that is the key's create
                // revision, which every commit from now on compares.
                self.set_role(Role::Leader { fence: at });
                eprintln!(
                    "kangaroo: leading the controllers on {} (lease {ttl_s} s)",
                    self.shared.url
                );
                notify(true);
                self.hold(&mut c, &key, lease, at, ttl).await;
                let _ = c.lease_revoke(lease).await;
                self.set_role(Role::Standby { leader: None });
                eprintln!("kangaroo: no longer the leader (the lease was lost)");
                notify(false);
                continue;
            }
            let _ = c.lease_revoke(lease).await;
            let leader = r.op_responses().into_iter().find_map(|op| match op {
                TxnOpResponse::Get(g) => g
                    .kvs()
                    .first()
                    .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()),
                _ => None,
            });
            eprintln!(
                "kangaroo: standing by; the leader is {}",
                leader.as_deref().unwrap_or("unknown")
            );
            self.set_role(Role::Standby { leader });
            // Wait for the leader key to go (its lease expired or it resigned), then run again.
            let opts = WatchOptions::new().with_start_revision(at + 1);
            match c.watch(key.clone(), Some(opts)).await {
                Ok(mut w) => loop {
                    match w.message().await {
                        Ok(Some(m)) => {
                            if m.events()
                                .iter()
                                .any(|e| e.event_type() == EventType::Delete)
                            {
                                break;
                            }
                            if m.canceled() {
                                break;
                            }
                        }
                        Ok(None) | Err(_) => {
                            tokio::time::sleep(Duration::from_millis(500)).await;
                            break;
                        }
                    }
                },
                Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
    }

    /// Stops campaigning and steps down if this controller leads: deletes the leader key (if it
    /// is still this controller's), so a standby takes over at once instead of after the lease.
    pub fn resign(&self) {
        self.shared.resigned.store(true, Ordering::SeqCst);
        let Role::Leader { fence } = self.role() else {
            return;
        };
        self.set_role(Role::Standby { leader: None });
        let key = self.key("leader");
        let txn = Txn::new()
            .when([Compare::create_revision(
                key.clone(),
                CompareOp::Equal,
                fence,
            )])
            .and_then([TxnOp::delete(key, None)]);
        if let Err(e) = self.run("resigning", move |mut c| async move { c.txn(txn).await }) {
            eprintln!("kangaroo: resigning the leadership: {e}");
        }
    }

    /// Keeps `lease` alive while this controller leads: until etcd says the lease is gone, no
    /// renewal succeeds for `ttl`, the leader key is no longer the one created at `fence`, or a
    /// commit found another leader or [`EtcdStore::resign`] stepped down.
    async fn hold(&self, c: &mut Client, key: &str, lease: i64, fence: i64, ttl: Duration) {
        let every = (ttl / 3).max(Duration::from_millis(200));
        let (mut keeper, mut stream) = match c.lease_keep_alive(lease).await {
            Ok(k) => k,
            Err(e) => {
                eprintln!("kangaroo: election: keep-alive: {e}");
                return;
            }
        };
        let mut last_ok = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(every).await;
            if self.role() != (Role::Leader { fence }) {
                return;
            }
            if let Ok(Ok(g)) = tokio::time::timeout(every, c.get(key, None)).await {
                if g.kvs().first().map(|kv| kv.create_revision()) != Some(fence) {
                    return;
                }
            }
            let renewed = async {
                keeper.keep_alive().await?;
                stream.message().await
            };
            match tokio::time::timeout(every, renewed).await {
                Ok(Ok(Some(resp))) if resp.ttl() > 0 => last_ok = tokio::time::Instant::now(),
                Ok(Ok(Some(_))) => return,
                Ok(Ok(None)) | Ok(Err(_)) => {
                    // The stream broke (etcd restarted): open a new one for the same lease.
                    match c.lease_keep_alive(lease).await {
                        Ok(k) => {
                            (keeper, stream) = k;
                            last_ok = tokio::time::Instant::now();
                        }
                        Err(_) if last_ok.elapsed() < ttl => {}
                        Err(_) => return,
                    }
                }
                Err(_) if last_ok.elapsed() < ttl => {}
                Err(_) => return,
            }
        }
    }

    /// Follows every commit by any controller: `f` gets each one's record changes and the
    /// store revision it made, in order, on one thread of its own; or [`Followed::Reload`] when
    /// the changes cannot be given (etcd compacted the history the watch needed, or a record
    /// does not decode). It starts at the current etcd revision; after a lost connection the
    /// watch resumes at the revision after the last change it saw, so no commit is missed or
    /// delivered twice. The receiver compares revisions to tell a gap (reload) from its own
    /// commits (skip).
    pub fn follow(&self, f: Arc<dyn Fn(Followed) + Send + Sync>) {
        let (tx, rx) = std::sync::mpsc::channel::<Followed>();
        let spawned = std::thread::Builder::new()
            .name("kangaroo-follow".into())
            .spawn(move || {
                while let Ok(c) = rx.recv() {
                    f(c);
                }
            });
        if let Err(e) = spawned {
            eprintln!("kangaroo: cannot start the store watcher: {e}");
            return;
        }
        let me = self.clone();
        self.shared.spawn(async move {
            // The records and `rev` sort between `hosts/` and `vms/…`; agents' reports and
            // assignments sort before, so a standby is not woken by every heartbeat.
            let (from, to) = (me.key("hosts/"), me.key("vms0"));
            let mut c = me.shared.client.clone();
            let mut next: Option<i64> = None;
            loop {
                let mut opts = WatchOptions::new().with_range(to.clone());
                if let Some(r) = next {
                    opts = opts.with_start_revision(r);
                }
                if let Ok(mut w) = c.watch(from.clone(), Some(opts)).await {
                    while let Ok(Some(m)) = w.message().await {
                        if m.compact_revision() > 0 {
                            next = None;
                            if tx.send(Followed::Reload).is_err() {
                                return;
                            }
                            break;
                        }
                        // One commit is one etcd revision: group the events by it.
                        let mut group: Option<(i64, Vec<Op>, Option<u64>, bool)> = None;
                        for e in m.events() {
                            let Some(kv) = e.kv() else { continue };
                            let at = kv.mod_revision();
                            next = Some(at + 1);
                            if group.as_ref().is_some_and(|g| g.0 != at) {
                                if let Some(g) = group.take() {
                                    if tx.send(flush(g)).is_err() {
                                        return;
                                    }
                                }
                            }
                            let g = group.get_or_insert_with(|| (at, Vec::new(), None, false));
                            let put = e.event_type() == EventType::Put;
                            match me.change(kv.key(), put.then(|| kv.value())) {
                                Ok(Change::Op(op)) => g.1.push(*op),
                                Ok(Change::Rev(r)) => g.2 = Some(r),
                                Ok(Change::Other) => {}
                                Err(_) => g.3 = true,
                            }
                        }
                        if let Some(g) = group.take() {
                            if tx.send(flush(g)).is_err() {
                                return;
                            }
                        }
                        if m.canceled() {
                            break;
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
    }

    /// What the change of `key` (its new value, or `None` if deleted) does to the state;
    /// an error if a record or the revision does not decode. `load` and `follow` both read
    /// records through it.
    fn change(&self, key: &[u8], value: Option<&[u8]>) -> Result<Change, StoreError> {
        let Some(k) = std::str::from_utf8(key)
            .ok()
            .and_then(|k| k.strip_prefix(self.shared.url.prefix.as_str()))
        else {
            return Ok(Change::Other);
        };
        let name = |table: &'static str, n: &str| {
            crate::model::Name::new(n).map_err(|e| {
                StoreError::Db(format!("the key {table}/{n} is not a name: {e}").into())
            })
        };
        let op = if let Some(n) = k.strip_prefix("hosts/") {
            match value {
                Some(v) => Op::PutHost(parse("hosts", n, v)?),
                None => Op::DeleteHost(name("hosts", n)?),
            }
        } else if let Some(n) = k.strip_prefix("networks/") {
            match value {
                Some(v) => Op::PutNetwork(parse("networks", n, v)?),
                None => Op::DeleteNetwork(name("networks", n)?),
            }
        } else if let Some(n) = k.strip_prefix("vms/") {
            match value {
                Some(v) => Op::PutVm(parse("vms", n, v)?),
                None => Op::DeleteVm(name("vms", n)?),
            }
        } else if k == "meta" {
            match value {
                Some(v) => Op::PutMeta(parse("meta", "meta", v)?),
                None => return Ok(Change::Other),
            }
        } else if k == "rev" {
            return match value {
                Some(v) => revision(v).map(Change::Rev),
                None => Ok(Change::Other),
            };
        } else {
            return Ok(Change::Other);
        };
        Ok(Change::Op(Box::new(op)))
    }
}

/// A commit as [`EtcdStore::follow`] reports it.
#[derive(Debug, Clone, PartialEq)]
pub enum Followed {
    /// The record changes of one commit, and the store revision it made.
    Commit {
        /// The changes, as the committer's ops would apply them.
        ops: Vec<Op>,
        /// The store revision after it.
        rev: u64,
    },
    /// Changes were missed or cannot be decoded: read the whole state again.
    Reload,
}

enum Change {
    Op(Box<Op>),
    Rev(u64),
    Other,
}

fn flush((_, ops, rev, bad): (i64, Vec<Op>, Option<u64>, bool)) -> Followed {
    match (rev, bad) {
        (Some(rev), false) => Followed::Commit { ops, rev },
        // A group without `rev` is not a commit (the leader key or the token changed).
        (None, false) if ops.is_empty() => Followed::Commit { ops, rev: 0 },
        _ => Followed::Reload,
    }
}

/// The key/value writes of a batch: the records, and each VM once more under `assign/HOST/`
/// (what that host's agent watches). The last write of a key wins, as applying the ops in
/// order would (etcd refuses a transaction that names a key twice).
impl EtcdStore {
    fn writes(&self, ops: &[Op]) -> Result<BTreeMap<String, Option<Vec<u8>>>, StoreError> {
        // Where the VMs these ops touch are now. The transaction's revision compare makes
        // this read consistent: if anything changed since, the commit fails as a conflict.
        let names: BTreeSet<String> = ops
            .iter()
            .filter_map(|op| match op {
                Op::PutVm(v) => Some(v.name.to_string()),
                Op::DeleteVm(n) => Some(n.to_string()),
                _ => None,
            })
            .collect();
        let mut at: BTreeMap<String, String> = BTreeMap::new();
        if !names.is_empty() {
            let gets: Vec<TxnOp> = names
                .iter()
                .map(|n| TxnOp::get(self.key(&format!("vms/{n}")), None))
                .collect();
            let r = self.run(
                "reading the VMs a commit changes",
                move |mut c| async move { c.txn(Txn::new().and_then(gets)).await },
            )?;
            for op in r.op_responses() {
                if let TxnOpResponse::Get(g) = op {
                    for kv in g.kvs() {
                        let vm: crate::model::NestedVm =
                            parse("vms", &String::from_utf8_lossy(kv.key()), kv.value())?;
                        at.insert(vm.name.to_string(), vm.host.to_string());
                    }
                }
            }
        }
        let mut w: BTreeMap<String, Option<Vec<u8>>> = BTreeMap::new();
        for op in ops {
            match op {
                Op::PutHost(h) => {
                    w.insert(self.key(&format!("hosts/{}", h.name)), Some(encode(h)?));
                }
                Op::DeleteHost(n) => {
                    w.insert(self.key(&format!("hosts/{n}")), None);
                }
                Op::PutNetwork(n) => {
                    w.insert(self.key(&format!("networks/{}", n.name)), Some(encode(n)?));
                }
                Op::DeleteNetwork(n) => {
                    w.insert(self.key(&format!("networks/{n}")), None);
                }
                Op::PutVm(v) => {
                    let bytes = encode(v)?;
                    let name = v.name.to_string();
                    if let Some(old) = at.get(&name) {
                        if old != v.host.as_str() {
                            w.insert(self.key(&format!("assign/{old}/{name}")), None);
                        }
                    }
                    w.insert(
                        self.key(&format!("assign/{}/{name}", v.host)),
                        Some(bytes.clone()),
                    );
                    w.insert(self.key(&format!("vms/{name}")), Some(bytes));
                    at.insert(name, v.host.to_string());
                }
                Op::DeleteVm(n) => {
                    let name = n.to_string();
                    if let Some(old) = at.remove(&name) {
                        w.insert(self.key(&format!("assign/{old}/{name}")), None);
                    }
                    w.insert(self.key(&format!("vms/{name}")), None);
                }
                Op::PutMeta(m) => {
                    w.insert(self.key("meta"), Some(encode(m)?));
                }
            }
        }
        Ok(w)
    }
}

/// What an agent does with its host's assigned VMs: makes them so and returns the names of
/// those it observes running.
pub type AgentApply =
    Arc<dyn Fn(&BTreeMap<String, crate::model::NestedVm>) -> Vec<String> + Send + Sync>;

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn parse<T: for<'de> serde::Deserialize<'de>>(
    table: &'static str,
    key: &str,
    v: &[u8],
) -> Result<T, StoreError> {
    serde_json::from_slice(v).map_err(|source| StoreError::Corrupt {
        table,
        key: key.to_owned(),
        source,
    })
}

fn encode<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(v).map_err(|e| StoreError::Db(Box::new(e)))
}

fn revision(v: &[u8]) -> Result<u64, StoreError> {
    std::str::from_utf8(v)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            StoreError::Db(
                format!(
                    "the stored revision {:?} is not a number",
                    String::from_utf8_lossy(v)
                )
                .into(),
            )
        })
}

impl Store for EtcdStore {
    fn load(&self) -> Result<(State, u64), StoreError> {
        let p = self.shared.url.prefix.clone();
        let kvs = self.run("reading the state", move |c| async move {
            let mut kv = c.kv_client().max_decoding_message_size(MAX_MESSAGE);
            Ok(kv
                .get(p, Some(GetOptions::new().with_prefix()))
                .await?
                .take_kvs())
        })?;
        let mut s = State::default();
        let mut rev = 0;
        for kv in &kvs {
            match self.change(kv.key(), Some(kv.value()))? {
                Change::Op(op) => s.apply(std::slice::from_ref(&*op)),
                Change::Rev(r) => rev = r,
                Change::Other => {}
            }
        }
        Ok((s, rev))
    }

    fn commit(&self, expected: u64, ops: &[Op]) -> Result<u64, StoreError> {
        let fence = match self.role() {
            Role::Leader { fence } => fence,
            Role::Standby { leader } => return Err(StoreError::NotLeader { leader }),
            Role::Sole => 0,
        };
        let rev_key = self.key("rev");
        let leader_key = self.key("leader");
        let next = expected + 1;
        let mut when = vec![if expected == 0 {
            Compare::version(rev_key.clone(), CompareOp::Equal, 0)
        } else {
            Compare::value(rev_key.clone(), CompareOp::Equal, expected.to_string())
        }];
        if fence > 0 {
            when.push(Compare::create_revision(
                leader_key.clone(),
                CompareOp::Equal,
                fence,
            ));
        }
        let mut then = vec![TxnOp::put(rev_key.clone(), next.to_string(), None)];
        for (k, v) in self.writes(ops)? {
            then.push(match v {
                Some(v) => TxnOp::put(k, v, None),
                None => TxnOp::delete(k, None),
            });
        }
        let txn = Txn::new()
            .when(when)
            .and_then(then)
            .or_else([TxnOp::get(rev_key, None), TxnOp::get(leader_key, None)]);
        let r = self.run("committing", move |mut c| async move { c.txn(txn).await })?;
        if r.succeeded() {
            return Ok(next);
        }
        let mut found = 0;
        let mut leader = None;
        for (i, op) in r.op_responses().into_iter().enumerate() {
            if let TxnOpResponse::Get(g) = op {
                if let Some(kv) = g.kvs().first() {
                    if i == 0 {
                        found = revision(kv.value())?;
                    } else {
                        leader = Some(String::from_utf8_lossy(kv.value()).into_owned());
                    }
                }
            }
        }
        if found != expected {
            return Err(StoreError::Conflict { expected, found });
        }
        // The revision matched, so the fence did not: another controller leads now.
        self.set_role(Role::Standby {
            leader: leader.clone(),
        });
        Err(StoreError::NotLeader { leader })
    }

    fn role(&self) -> Role {
        self.shared
            .role
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn describe(&self) -> String {
        self.shared.url.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_with_clear_errors() {
        let u: EtcdUrl = "etcd://127.0.0.1:2379".parse().unwrap();
        assert_eq!(u.endpoints, ["http://127.0.0.1:2379"]);
        assert_eq!(u.prefix, "/kangaroo/");
        assert_eq!(u.to_string(), "etcd://127.0.0.1:2379/kangaroo");
        let u: EtcdUrl = "etcd://a:1,b:2/tenants/acme/".parse().unwrap();
        assert_eq!(u.endpoints, ["http://a:1", "http://b:2"]);
        assert_eq!(u.prefix, "/tenants/acme/");
        for (bad, says) in [
            ("http://a:1", "etcd://HOST:PORT"),
            ("etcd://a", "is not HOST:PORT"),
            ("etcd://a:x", "is not HOST:PORT"),
            ("etcd://:1", "is not HOST:PORT"),
            ("etcd://a:1/b c", "may hold"),
        ] {
            let e = bad.parse::<EtcdUrl>().unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
