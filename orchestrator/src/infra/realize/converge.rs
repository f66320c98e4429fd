//! Convergence: one pass that makes every local host, switch, peer set, FDB entry and VM match
//! the state, finishes or undoes interrupted migrations, removes what the state does not have,
//! and fences lost hosts.

use super::*;

impl Realizer {
    /// One convergence pass over the whole `state` (see the module documentation). Where
    /// this process drives every host, each host's part ([`Realizer::converge_host`]) runs
    /// here; where agents drive them, only what crosses hosts does: interrupted migrations,
    /// stray copies, the rendezvous and what released hosts left behind.
    pub fn converge(&self, state: &State) -> ConvergeReport {
        let mut r = self.converge_except(state, &BTreeSet::new());
        let more = self.remove_leftovers(&|| state.clone());
        r.repaired.extend(more.repaired);
        r.errors.extend(more.errors);
        r
    }

    /// As [`Realizer::converge`], leaving the VMs named in `busy` (operations of this process
    /// in flight on them) as they are, and without removing leftovers
    /// ([`Realizer::remove_leftovers`]).
    pub fn converge_except(&self, state: &State, busy: &BTreeSet<String>) -> ConvergeReport {
        let _g = self.guard();
        let mut r = ConvergeReport::default();
        let hosts = self.hosts(state);
        let whole = self.drive == Drive::Whole;
        // The rendezvous runs while there are hosts to serve (restarted with its key if it died).
        if !hosts.is_empty()
            && self.cloud.config().secure != SecurePolicy::Off
            && !self.cloud.rendezvous_alive()
        {
            match self.cloud.ensure_rendezvous() {
                Ok(_) => r.repaired.push("the rendezvous (re)started".into()),
                Err(e) => r.errors.push(crate::sys::report(&e)),
            }
        }
        if let Err(e) = self.sync_rendezvous(state) {
            r.errors.push(crate::sys::report(&e));
        }
        let local: Vec<(&Host, HostRef)> = state
            .hosts
            .values()
            .filter_map(|h| Some((h, self.host_ref(h)?)))
            .collect();
        if whole {
            for (h, hr) in &local {
                self.host_level(state, h, hr, &mut r);
            }
        }
        let mut skip = self.settle_copies(state, &hosts, busy, &mut r);
        skip.adopted.extend(busy.iter().cloned());
        if whole {
            for (_, hr) in &local {
                self.vm_level(state, hr, &skip, &mut r);
            }
        }
        r
    }

    /// One host's part of convergence: what its agent does, and what this process does for
    /// every local host when it drives them all. Its switch runs and peers with every other
    /// host; its VMs run or are stopped as recorded (one with a migration in flight is left
    /// to the migration); its switch's static FDB entries say where every running VM is; VMs
    /// on it that the state does not have go.
    pub fn converge_host(&self, state: &State, name: &str) -> ConvergeReport {
        let _g = self.guard();
        let mut r = ConvergeReport::default();
        let Some((h, hr)) = state
            .hosts
            .values()
            .find(|h| h.name.as_str() == name)
            .and_then(|h| Some((h, self.host_ref(h)?)))
        else {
            return r;
        };
        if self.host_level(state, h, &hr, &mut r) {
            self.vm_level(state, &hr, &Skip::default(), &mut r);
        }
        r
    }

    /// The host's switch and its peers. Whether the switch is up.
    pub(super) fn host_level(
        &self,
        state: &State,
        h: &Host,
        hr: &HostRef,
        r: &mut ConvergeReport,
    ) -> bool {
        let was_alive = self.cloud.switch_alive(hr);
        let res = if self.drive == Drive::Whole {
            self.ensure_host_locked(state, h)
        } else {
            self.cloud.ensure_switch(hr).and_then(|()| {
                let all = self.hosts(state);
                let keys = self.keys(state, &all);
                self.cloud
                    .set_peers(hr, &self.peers_of(state, &all, &keys, hr))
            })
        };
        match res {
            Ok(()) => {
                if !was_alive {
                    r.repaired
                        .push(format!("host {}: switch (re)started", h.name));
                }
                true
            }
            Err(e) => {
                r.errors.push(crate::sys::report(&e));
                self.cloud.switch_alive(hr)
            }
        }
    }

    /// The VMs of host `hr`, its static FDB entries, and VMs on it the state does not have.
    pub(super) fn vm_level(
        &self,
        state: &State,
        hr: &HostRef,
        skip: &Skip,
        r: &mut ConvergeReport,
    ) {
        let moving =
            |v: &NestedVm| v.moving_to.is_some() && !skip.settled.contains(v.name.as_str());
        for vm in state.vms.values().filter(|v| {
            v.host.as_str() == hr.name && !moving(v) && !skip.adopted.contains(v.name.as_str())
        }) {
            let (spec, driver) =
                match Self::spec(state, vm).and_then(|s| Ok((s, self.driver_of(vm)?))) {
                    Ok(s) => s,
                    Err(e) => {
                        r.errors.push(crate::sys::report(&e));
                        continue;
                    }
                };
            let res = match vm.state {
                VmState::Running => {
                    if driver.status(hr, &spec) != VmStatus::Running {
                        r.repaired
                            .push(format!("VM {}: started on {}", vm.name, hr.name));
                    }
                    // Where it is, every switch learns below (this one) or from its own agent.
                    self.cloud.create_vm(driver.as_ref(), &[], hr, &spec)
                }
                VmState::Stopped => driver.stop(hr, &spec),
                // Its host was lost: nothing there to make or stop.
                VmState::Lost => Ok(()),
            };
            if let Err(e) = res {
                r.errors.push(crate::sys::report(&e));
            }
        }
        if let Err(e) = self.sync_fdb(state, hr, skip, &moving) {
            r.errors.push(crate::sys::report(&e));
        }
        // VMs on it the state does not have at all (deleted while nobody drove this host).
        for d in self.drivers.values() {
            for name in d.list(hr) {
                if state.vms.keys().any(|k| k.as_str() == name) {
                    continue;
                }
                let spec = VmSpec {
                    name: name.clone(),
                    cpu_quarters: 0,
                    memory_mib: 0,
                    mac: String::new(),
                    ip: Ipv4Addr::UNSPECIFIED,
                    prefix: 0,
                    vni: 0,
                    probe: None,
                };
                let _ = self.cloud.detach(hr, &d.port_name(&spec));
                match d.destroy(hr, &spec) {
                    Ok(()) => r.repaired.push(format!(
                        "VM {name}: removed from {} (not in the state)",
                        hr.name
                    )),
                    Err(e) => r.errors.push(crate::sys::report(&e)),
                }
            }
        }
    }

    /// Host `hr`'s static FDB entries: every running VM, at its port here or at its host's
    /// VTEP (hosts this switch peers with). A VM being moved keeps whatever entry it has: the
    /// migration updates it.
    pub(super) fn sync_fdb(
        &self,
        state: &State,
        hr: &HostRef,
        skip: &Skip,
        moving: &dyn Fn(&NestedVm) -> bool,
    ) -> Result<()> {
        let peers: BTreeSet<Ipv4Addr> = self
            .cloud
            .peers(hr)?
            .into_iter()
            .map(|p| p.address)
            .collect();
        let underlay: BTreeMap<&str, Ipv4Addr> = state
            .hosts
            .values()
            .filter(|h| self.is_local(h.provider.as_str()))
            .filter_map(|h| Some((h.name.as_str(), h.underlay?)))
            .collect();
        let mut want = BTreeMap::new();
        let mut keep = BTreeSet::new();
        for vm in state.vms.values() {
            let Some(net) = state.networks.get(&vm.network) else {
                continue;
            };
            let key = (net.vni, vm.mac.to_ascii_lowercase());
            if moving(vm) || skip.adopted.contains(vm.name.as_str()) {
                keep.insert(key);
                continue;
            }
            if vm.state != VmState::Running {
                continue;
            }
            if vm.host.as_str() == hr.name {
                if let (Ok(spec), Ok(d)) = (Self::spec(state, vm), self.driver_of(vm)) {
                    want.insert(key, FdbDest::Port(d.port_name(&spec)));
                }
            } else if let Some(a) = underlay.get(vm.host.as_str()).filter(|a| peers.contains(a)) {
                want.insert(key, FdbDest::Vtep(*a));
            }
        }
        self.cloud.sync_static_fdb(hr, &want, &keep)
    }

    /// Copies of VMs found on other hosts than their records name: an interrupted migration
    /// (finished: the VM is adopted where it runs; undone: the copy goes) or a stray (it
    /// goes, so that no VM runs twice). Answers what the hosts' part must leave alone this
    /// pass.
    pub(super) fn settle_copies(
        &self,
        state: &State,
        hosts: &[HostRef],
        busy: &BTreeSet<String>,
        r: &mut ConvergeReport,
    ) -> Skip {
        let mut skip = Skip::default();
        let whole = self.drive == Drive::Whole;
        for vm in state
            .vms
            .values()
            .filter(|v| !busy.contains(v.name.as_str()))
        {
            let Some(home) = state.hosts.get(&vm.host).and_then(|h| self.host_ref(h)) else {
                continue;
            };
            let (spec, driver) =
                match Self::spec(state, vm).and_then(|s| Ok((s, self.driver_of(vm)?))) {
                    Ok(s) => s,
                    Err(e) => {
                        r.errors.push(crate::sys::report(&e));
                        continue;
                    }
                };
            // Where agents drive the hosts, a copy counts only on the recorded destination of
            // a migration or on a lost host: anywhere else it may be a change (a re-creation)
            // committed after `state` was read, which its host's agent is making now.
            let counts = |h: &HostRef| {
                whole
                    || vm.moving_to.as_ref().is_some_and(|m| m.as_str() == h.name)
                    || state
                        .hosts
                        .values()
                        .any(|x| x.name.as_str() == h.name && x.state == HostState::Lost)
            };
            let copies = |driver: &dyn VmDriver| -> Vec<(&HostRef, VmStatus)> {
                hosts
                    .iter()
                    .filter(|h| h.name != home.name && counts(h))
                    .map(|h| (h, driver.status(h, &spec)))
                    .filter(|(_, s)| *s != VmStatus::Absent)
                    .collect()
            };
            // Copies elsewhere: an interrupted migration. It may still be transferring (QEMU
            // goes on without the orchestrator): it is brought to an end first, so that the
            // statuses judged below are final and the decision cannot race the hand-over.
            // The record names the source (it changes only once a migration succeeded), so
            // the source's side is settled; a destination that received everything is then
            // given a moment to start running.
            let mut elsewhere = copies(driver.as_ref());
            if !elsewhere.is_empty() {
                driver.settle(&home, &spec);
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
                loop {
                    elsewhere = copies(driver.as_ref());
                    let final_ = driver.status(&home, &spec) == VmStatus::Running
                        || elsewhere.iter().all(|(_, s)| *s != VmStatus::Incoming);
                    if final_ || std::time::Instant::now() > deadline {
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
            }
            let here = driver.status(&home, &spec);
            // Where agents drive the hosts, only the recorded destination of a migration is
            // adopted; any other copy is a stray (a lost host's, whose VMs were re-created).
            let running_elsewhere = elsewhere
                .iter()
                .filter(|(h, _)| {
                    whole || vm.moving_to.as_ref().is_some_and(|m| m.as_str() == h.name)
                })
                .find(|(_, s)| *s == VmStatus::Running)
                .map(|(h, _)| (*h).clone());
            if here != VmStatus::Running && vm.state == VmState::Running {
                if let Some(h) = running_elsewhere {
                    // The migration completed; the record did not.
                    let port = driver.port_name(&spec);
                    let _ = self.cloud.destroy_vm(driver.as_ref(), &[], &home, &spec);
                    match self
                        .cloud
                        .attach(&h, &port, &spec)
                        .and_then(|()| self.cloud.publish_location(hosts, &spec, &h, &port))
                    {
                        Ok(()) => r.adopted.push((vm.name.to_string(), h.name.clone())),
                        Err(e) => r.errors.push(crate::sys::report(&e)),
                    }
                    skip.adopted.insert(vm.name.to_string());
                    continue;
                }
            }
            for (h, _) in &elsewhere {
                if let Err(e) = self.cloud.destroy_vm(driver.as_ref(), &[], h, &spec) {
                    r.errors.push(crate::sys::report(&e));
                } else {
                    r.repaired
                        .push(format!("VM {}: stray copy on {} removed", vm.name, h.name));
                }
            }
            if vm.moving_to.is_some() {
                // Its migration is over: it stays where its record says.
                r.settled.push(vm.name.to_string());
                skip.settled.insert(vm.name.to_string());
            }
        }
        skip
    }

    /// Removes namespaces of hosts and VMs the state does not have (released or deleted while
    /// the orchestrator was down or interrupted). The namespaces are listed first and `current`
    /// read after: a namespace exists only once its record was committed, so one made by an
    /// agent for a VM created meanwhile is in that state and stays.
    pub fn remove_leftovers(&self, current: &dyn Fn() -> State) -> ConvergeReport {
        let found = self.cloud.leftovers();
        // Read before the realizer's lock is taken: callers hold their state's lock before
        // this one, never after.
        let state = current();
        let _g = self.guard();
        let mut r = ConvergeReport::default();
        let known: BTreeSet<String> = self.hosts(&state).into_iter().map(|h| h.netns).collect();
        let host_prefix = format!("{}-h-", self.cloud.config().prefix);
        let vm_prefix = format!("{}-v-", self.cloud.config().prefix);
        for ns in found {
            if let Some(name) = ns.strip_prefix(&vm_prefix) {
                if !state.vms.keys().any(|k| k.as_str() == name) {
                    match crate::sys::delete_netns(&ns) {
                        Ok(()) => r.repaired.push(format!("VM {name}: namespace removed")),
                        Err(e) => r.errors.push(crate::sys::report(&e)),
                    }
                }
                continue;
            }
            if let Some(name) = ns.strip_prefix(&host_prefix) {
                if !known.contains(&ns) {
                    if self.agents_drive() {
                        self.cloud
                            .stop_agent(&self.cloud.host_ref(name, Ipv4Addr::UNSPECIFIED));
                    }
                    match self.cloud.release_host(name) {
                        Ok(()) => r
                            .repaired
                            .push(format!("host {name}: released (not in the state)")),
                        Err(e) => r.errors.push(crate::sys::report(&e)),
                    }
                }
            }
        }
        r
    }

    /// Releases everything of every local host in `state` and the underlay (for `kangaroo
    /// down`-style teardown and tests).
    pub fn release_all(&self, state: &State) {
        let _g = self.guard();
        for vm in state.vms.values() {
            if let (Some(h), Ok(spec), Ok(d)) = (
                state.hosts.get(&vm.host).and_then(|h| self.host_ref(h)),
                Self::spec(state, vm),
                self.driver_of(vm),
            ) {
                let _ = d.destroy(&h, &spec);
            }
        }
        for h in self.hosts(state) {
            let _ = self.cloud.release_host(&h.name);
        }
        let _ = self.cloud.release_underlay();
    }

    /// Stops every VM of lost host `name` where it can still be reached, before its VMs are
    /// re-created elsewhere: fencing, so that a host that only lost its agent (or its link to
    /// the store) keeps no running copy. Answers what it did, a line each.
    pub fn fence(&self, state: &State, name: &str) -> Vec<String> {
        // No realizer lock: its caller holds the state's lock, which is taken before this
        // one, never after; a reconcile pass at most removes the same copies.
        let mut out = Vec::new();
        let Some(hr) = state
            .hosts
            .values()
            .find(|h| h.name.as_str() == name)
            .and_then(|h| self.host_ref(h))
        else {
            return out;
        };
        for vm in state.vms.values().filter(|v| v.host.as_str() == name) {
            let (Ok(spec), Ok(d)) = (Self::spec(state, vm), self.driver_of(vm)) else {
                continue;
            };
            if d.status(&hr, &spec) == VmStatus::Absent {
                continue;
            }
            let _ = self.cloud.detach(&hr, &d.port_name(&spec));
            out.push(match d.destroy(&hr, &spec) {
                Ok(()) => format!("VM {}: stopped on lost host {name} (fenced)", vm.name),
                Err(e) => format!(
                    "VM {}: fencing it on lost host {name} failed: {}",
                    vm.name,
                    crate::sys::report(&e)
                ),
            });
        }
        out
    }

    /// The VMs of `state` its driver reports running on local host `h`.
    pub fn running_on(&self, state: &State, h: &Host) -> Vec<String> {
        let Some(hr) = self.host_ref(h) else {
            return Vec::new();
        };
        state
            .vms
            .values()
            .filter(|v| v.host == h.name)
            .filter(|v| {
                matches!(
                    (Self::spec(state, v), self.driver_of(v)),
                    (Ok(spec), Ok(d)) if d.status(&hr, &spec) == VmStatus::Running
                )
            })
            .map(|v| v.name.to_string())
            .collect()
    }
}
