//! Host agents on etcd: each holds a heartbeat lease under `agents/HOST` (with its switch's
//! public key), follows `assign/HOST/`, and reports; the leader lists live agents and is woken
//! when a lease expires.

use super::*;

impl EtcdStore {
    /// The hosts whose agent holds a lease now, with the public key each reported for its
    /// switch (`public_key` in its report), if any.
    ///
    /// # Errors
    /// etcd failed.
    pub fn live_agents(&self) -> Result<BTreeMap<String, Option<String>>, StoreError> {
        let p = self.key("agents/");
        let q = p.clone();
        let kvs = self.run("listing the agents", move |mut c| async move {
            Ok(c.get(q, Some(GetOptions::new().with_prefix()))
                .await?
                .take_kvs())
        })?;
        Ok(kvs
            .iter()
            .filter_map(|kv| {
                let host = std::str::from_utf8(kv.key())
                    .ok()?
                    .strip_prefix(p.as_str())?
                    .to_owned();
                let key = serde_json::from_slice::<serde_json::Value>(kv.value())
                    .ok()
                    .and_then(|v| v.get("public_key")?.as_str().map(str::to_owned));
                Some((host, key))
            })
            .collect())
    }

    /// Calls `gone` whenever an agent's heartbeat key goes (its lease expired or was
    /// revoked), so that the leader marks the host lost at once rather than at its next sweep.
    /// Only deletions are watched (heartbeats put every lease/3 would be most of the traffic);
    /// the watch is made again after a lost connection.
    pub fn watch_agents_gone(&self, gone: Arc<dyn Fn() + Send + Sync>) {
        let p = self.key("agents/");
        let mut c = self.shared.client.clone();
        self.shared.spawn(async move {
            loop {
                let opts = WatchOptions::new()
                    .with_prefix()
                    .with_filters([WatchFilterType::NoPut]);
                if let Ok(mut w) = c.watch(p.clone(), Some(opts)).await {
                    while let Ok(Some(m)) = w.message().await {
                        if !m.events().is_empty() {
                            gone();
                        }
                        if m.canceled() {
                            break;
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
    }

    /// Holds `host`'s heartbeat in the background: a lease of `ttl` under `agents/HOST`,
    /// whose value `report` makes afresh every `ttl`/3 (what the agent observes), and at once
    /// when `kick` is notified. A lease lost while etcd was away is granted anew. Stops when
    /// `stop` is set, without revoking the lease (to the controller, that is a dead host).
    pub fn heartbeat(
        &self,
        host: &str,
        ttl: Duration,
        report: Arc<dyn Fn() -> serde_json::Value + Send + Sync>,
        kick: Arc<tokio::sync::Notify>,
        stop: Arc<AtomicBool>,
    ) {
        let key = self.key(&format!("agents/{host}"));
        let ttl_s = i64::try_from(ttl.as_secs().max(1)).unwrap_or(5);
        let every = (ttl / 3).max(Duration::from_millis(200));
        let mut c = self.shared.client.clone();
        self.shared.spawn(async move {
            let mut lease: Option<i64> = None;
            while !stop.load(Ordering::SeqCst) {
                let id = match lease {
                    Some(id) => id,
                    None => match c.lease_grant(ttl_s, None).await {
                        Ok(l) => *lease.insert(l.id()),
                        Err(_) => {
                            tokio::time::sleep(Duration::from_millis(500)).await;
                            continue;
                        }
                    },
                };
                let body = report().to_string();
                let put = c
                    .put(key.clone(), body, Some(PutOptions::new().with_lease(id)))
                    .await;
                let kept = match put {
                    Ok(_) => c.lease_keep_alive(id).await.ok(),
                    Err(_) => None,
                };
                let renewed = match kept {
                    Some((mut k, mut s)) => {
                        k.keep_alive().await.is_ok()
                            && matches!(s.message().await, Ok(Some(r)) if r.ttl() > 0)
                    }
                    None => false,
                };
                if !renewed {
                    // etcd is away, or the lease expired meanwhile: a new one next time.
                    lease = None;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
                let _ = tokio::time::timeout(every, kick.notified()).await;
            }
        });
    }

    /// Runs the agent of `host` in the background: it holds a lease of `ttl` under
    /// `agents/HOST` (its heartbeat, with what it last observed), reads the VMs assigned to the
    /// host, gives them to `apply` (which makes them so and returns the names it observes
    /// running) and does so again after every change it watches. After a lost connection the
    /// watch resumes at the revision after the last change it saw (none is missed or seen twice);
    /// if etcd compacted that history, it reads the assignments again. The agent stops when
    /// `stop` is set, without giving up its lease: to the controller, that is a dead host.
    pub fn run_agent(&self, host: String, ttl: Duration, apply: AgentApply, stop: Arc<AtomicBool>) {
        let me = self.clone();
        self.shared.spawn(async move {
            me.agent(host, ttl, apply, stop).await;
        });
    }

    async fn agent(&self, host: String, ttl: Duration, apply: AgentApply, stop: Arc<AtomicBool>) {
        let prefix = self.key(&format!("assign/{host}/"));
        // What the agent observed and the revision it had seen, for its heartbeat.
        let observed: Arc<Mutex<(Vec<String>, i64)>> = Arc::default();
        let kick = Arc::new(tokio::sync::Notify::new());
        {
            let observed = observed.clone();
            self.heartbeat(
                &host,
                ttl,
                Arc::new(move || {
                    let o = observed.lock().unwrap_or_else(|p| p.into_inner());
                    serde_json::json!({ "observed": o.0, "revision": o.1, "at_ms": now_ms() })
                }),
                kick.clone(),
                stop.clone(),
            );
        }
        let report = |desired: &BTreeMap<String, crate::model::NestedVm>, seen: i64| {
            let names = apply(desired);
            *observed.lock().unwrap_or_else(|p| p.into_inner()) = (names, seen);
            kick.notify_one();
        };
        let mut c = self.shared.client.clone();
        let mut desired: BTreeMap<String, crate::model::NestedVm> = BTreeMap::new();
        let mut next: Option<i64> = None;
        while !stop.load(Ordering::SeqCst) {
            if next.is_none() {
                // (Re)read every assignment.
                match c
                    .get(prefix.clone(), Some(GetOptions::new().with_prefix()))
                    .await
                {
                    Ok(r) => {
                        desired.clear();
                        for kv in r.kvs() {
                            if let Ok(vm) =
                                serde_json::from_slice::<crate::model::NestedVm>(kv.value())
                            {
                                desired.insert(vm.name.to_string(), vm);
                            }
                        }
                        next = Some(r.header().map_or(0, |h| h.revision()) + 1);
                    }
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        continue;
                    }
                }
            }
            report(&desired, next.unwrap_or(1) - 1);
            let opts = WatchOptions::new()
                .with_prefix()
                .with_start_revision(next.unwrap_or(0));
            let Ok(mut w) = c.watch(prefix.clone(), Some(opts)).await else {
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            };
            while let Ok(Some(m)) = w.message().await {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                if m.compact_revision() > 0 {
                    next = None;
                    break;
                }
                if m.events().is_empty() {
                    continue;
                }
                for e in m.events() {
                    let Some(kv) = e.kv() else { continue };
                    next = Some(kv.mod_revision() + 1);
                    let name = std::str::from_utf8(kv.key())
                        .ok()
                        .and_then(|k| k.strip_prefix(prefix.as_str()))
                        .unwrap_or("")
                        .to_owned();
                    match e.event_type() {
                        EventType::Delete => {
                            desired.remove(&name);
                        }
                        EventType::Put => {
                            if let Ok(vm) =
                                serde_json::from_slice::<crate::model::NestedVm>(kv.value())
                            {
                                desired.insert(name, vm);
                            }
                        }
                    }
                }
                report(&desired, next.unwrap_or(1) - 1);
                if m.canceled() {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
