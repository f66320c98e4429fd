//! A local host's switch: its configuration file and process, and everything done through
//! its control API (ports, peers, static FDB entries, secure-tunnel status).

use super::*;

impl LocalCloud {
    /// Whether the switch of `host` is running and answering.
    pub fn switch_alive(&self, host: &HostRef) -> bool {
        sys::live_pid(&host.dir.join("switch.pid")).is_some()
            && Client::new(Self::socket(host)).get("/v1/stats").is_ok()
    }

    /// Starts the switch of `host` unless it is running (a restarted switch gets its ports,
    /// peers and entries back from the caller's reconciliation).
    ///
    /// # Errors
    /// The switch does not start; the error carries its last log line.
    pub fn ensure_switch(&self, host: &HostRef) -> Result<()> {
        if self.switch_alive(host) {
            return Ok(());
        }
        let pid = host.dir.join("switch.pid");
        sys::stop_pidfile(&pid, Duration::from_secs(3));
        let socket = Self::socket(host);
        let _ = std::fs::remove_file(&socket);
        let config = host.dir.join("switch.toml");
        let mut file = SwitchFile {
            mode: Some(self.cfg.switch_mode),
            control_socket: Some(socket.clone()),
            uplink: Some(UplinkSection {
                interface: "ul0".to_owned(),
                address: host.underlay.to_string(),
                udp_port: None,
                mtu: Some(UNDERLAY_MTU as usize),
            }),
            ..SwitchFile::default()
        };
        let secure = self.cfg.secure != SecurePolicy::Off;
        if secure {
            // The host's key pair is kept in its directory, so a restarted switch has the key
            // its peers know. The rendezvous tells it where peers are and relays when no
            // direct path opens.
            let rendezvous_key = if self.agent {
                self.rendezvous_key()?
            } else {
                self.ensure_rendezvous()?
            };
            file.secure = Some(SecureSection {
                key_file: Some(host.dir.join("switch.key")),
                rendezvous: Some(RENDEZVOUS.to_string()),
                rendezvous_key: Some(rendezvous_key),
                ..SecureSection::default()
            });
        }
        let text = file
            .to_toml(&format!("Written by kangaroo for host {}.", host.name))
            .map_err(|e| InfraError::new(format!("writing {}", config.display()), e))?;
        std::fs::write(&config, text)
            .map_err(|e| InfraError::new(format!("writing {}", config.display()), e))?;
        let bin = self.cfg.switch_bin.display().to_string();
        let cfg_path = config.display().to_string();
        if secure {
            // The key pair is made now and the rendezvous told, so that the switch's first
            // handshake with it is answered (a refused one is retried only after 5 s).
            let key = sys::run(&[&bin, "public-key", "-c", &cfg_path])?
                .trim()
                .to_owned();
            if !self.agent {
                self.add_rendezvous_member(host.underlay, &key)?;
            }
        }
        let log = host.dir.join("switch.log");
        sys::spawn_detached(
            &host.netns,
            &[&bin, "run", "--config", &cfg_path],
            &log,
            &pid,
        )?;
        let step = format!("starting the switch of {}", host.name);
        let r = sys::wait_for(&step, Duration::from_secs(15), || {
            socket.exists() || sys::live_pid(&pid).is_none()
        });
        if r.is_err() || sys::live_pid(&pid).is_none() {
            return Err(not_started(step, &log));
        }
        Ok(())
    }

    /// Makes the static FDB entries of `host`'s switch exactly `want` ((VNI, MAC) to a port
    /// or a VTEP), leaving entries in `keep` as they are (VMs being moved). Only what differs
    /// is changed.
    ///
    /// # Errors
    /// The first control request that failed (the others are still tried).
    pub fn sync_static_fdb(
        &self,
        host: &HostRef,
        want: &BTreeMap<(u32, String), FdbDest>,
        keep: &std::collections::BTreeSet<(u32, String)>,
    ) -> Result<()> {
        let socket = Self::socket(host);
        let have: BTreeMap<(u32, String), FdbDest> = Client::new(&socket)
            .get("/v1/fdb")?
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|e| e.get("static").and_then(Value::as_bool) == Some(true))
                    .filter_map(|e| {
                        let vni = u32::try_from(e.get("vni")?.as_u64()?).ok()?;
                        let mac = e.get("mac")?.as_str()?.to_ascii_lowercase();
                        let dest = e.get("dest")?;
                        let d = match (dest.get("interface"), dest.get("vtep")) {
                            (Some(Value::String(i)), _) => FdbDest::Port(i.clone()),
                            (_, Some(Value::String(v))) => FdbDest::Vtep(v.parse().ok()?),
                            _ => return None,
                        };
                        Some(((vni, mac), d))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let mut first = None;
        for (k, d) in want.iter().filter(|(k, d)| have.get(*k) != Some(*d)) {
            let _ = Client::new(&socket).delete(&format!("/v1/fdb/{}/{}", k.0, k.1));
            let (interface, vtep) = match d {
                FdbDest::Port(i) => (Some(i.clone()), None),
                FdbDest::Vtep(v) => (None, Some(v.to_string())),
            };
            let body = FdbRequest {
                vni: k.0,
                mac: k.1.clone(),
                interface,
                vtep,
            };
            if let Err(e) = Client::new(&socket).post("/v1/fdb", &body) {
                first.get_or_insert(e);
            }
        }
        for k in have
            .keys()
            .filter(|k| !want.contains_key(*k) && !keep.contains(*k))
        {
            if let Err(e) = Client::new(&socket).delete(&format!("/v1/fdb/{}/{}", k.0, k.1)) {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), |e| Err(e.into()))
    }

    /// The rendezvous' state as the host `host`'s switch sees it (`GET /v1/secure`'s
    /// `rendezvous`), when it has one.
    ///
    /// # Errors
    /// The switch does not answer.
    pub fn rendezvous_status(&self, host: &HostRef) -> Result<Option<Value>> {
        Ok(self
            .secure_status(host)?
            .and_then(|v| v.get("rendezvous").filter(|r| !r.is_null()).cloned()))
    }

    /// `GET /v1/secure` of `host`'s switch (`None` when it has no secure tunnels).
    pub(super) fn secure_status(&self, host: &HostRef) -> Result<Option<Value>> {
        match Client::new(Self::socket(host)).get("/v1/secure") {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.status() == Some(404) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The public key of `host`'s switch (`None` when it has no secure tunnels).
    ///
    /// # Errors
    /// The switch does not answer.
    pub fn public_key(&self, host: &HostRef) -> Result<Option<String>> {
        Ok(self
            .secure_status(host)?
            .and_then(|v| v.get("public_key")?.as_str().map(str::to_owned)))
    }

    /// The switch's own view of its peers (`GET /v1/peers`).
    ///
    /// # Errors
    /// The control request that failed.
    pub fn peer_status(&self, host: &HostRef) -> Result<Vec<Value>> {
        let v = Client::new(Self::socket(host)).get("/v1/peers")?;
        Ok(v.as_array().cloned().unwrap_or_default())
    }

    /// The peers `host`'s switch has now.
    ///
    /// # Errors
    /// The control request that failed.
    pub fn peers(&self, host: &HostRef) -> Result<Vec<WantedPeer>> {
        Ok(self
            .peer_status(host)?
            .iter()
            .filter_map(|p| {
                Some(WantedPeer {
                    address: p.get("address")?.as_str()?.parse().ok()?,
                    public_key: p
                        .get("secure")
                        .and_then(|s| s.get("public_key"))
                        .and_then(Value::as_str)
                        .map(str::to_owned),
                })
            })
            .collect())
    }

    /// Makes `host`'s switch peer with exactly `peers`: a peer whose tunnel changed (a key
    /// given, changed or taken away) is removed and added again.
    ///
    /// # Errors
    /// The control request that failed.
    pub fn set_peers(&self, host: &HostRef, peers: &[WantedPeer]) -> Result<()> {
        let socket = Self::socket(host);
        let have = self.peers(host)?;
        for p in have.iter().filter(|p| !peers.contains(p)) {
            Client::new(&socket).delete(&format!("/v1/peers/{}", p.address))?;
        }
        for p in peers.iter().filter(|p| !have.contains(p)) {
            let body = PeerRequest {
                address: p.address.to_string(),
                public_key: p.public_key.clone(),
                encryption: p
                    .public_key
                    .as_ref()
                    .map(|_| kangaroo_control::config::Encryption::Required),
                ..PeerRequest::default()
            };
            Client::new(&socket).post("/v1/peers", &body)?;
        }
        Ok(())
    }

    /// Makes `interface` a port of `host`'s switch for `vm` (port security: its MAC and
    /// address). Idempotent.
    ///
    /// # Errors
    /// The control request that failed.
    pub fn attach(&self, host: &HostRef, interface: &str, vm: &VmSpec) -> Result<()> {
        let socket = Self::socket(host);
        let ports = Client::new(&socket).get("/v1/ports")?;
        let present = ports.as_array().is_some_and(|a| {
            a.iter()
                .any(|p| p.get("interface").and_then(Value::as_str) == Some(interface))
        });
        if !present {
            Client::new(&socket).post(
                "/v1/ports",
                &PortRequest {
                    interface: interface.to_owned(),
                    vni: vm.vni,
                    mac: Some(vm.mac.clone()),
                    ips: vec![vm.ip.to_string()],
                },
            )?;
        }
        Ok(())
    }

    /// Removes port `interface` from `host`'s switch, if it is there.
    ///
    /// # Errors
    /// The control request that failed (a missing switch is not an error).
    pub fn detach(&self, host: &HostRef, interface: &str) -> Result<()> {
        let socket = Self::socket(host);
        if !socket.exists() {
            return Ok(());
        }
        match Client::new(&socket).delete(&format!("/v1/ports/{interface}")) {
            Ok(_) => Ok(()),
            Err(e) if e.status() == Some(404) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Tells every switch in `hosts` where `vm` is: its port on `at`, the VTEP of `at`
    /// elsewhere (static entries: no switch waits for learning after a move).
    ///
    /// # Errors
    /// The first control request that failed (the others are still tried).
    pub fn publish_location(
        &self,
        hosts: &[HostRef],
        vm: &VmSpec,
        at: &HostRef,
        interface: &str,
    ) -> Result<()> {
        let mut first = None;
        for h in hosts {
            let here = h.name == at.name;
            let body = FdbRequest {
                vni: vm.vni,
                mac: vm.mac.clone(),
                interface: here.then(|| interface.to_owned()),
                vtep: (!here).then(|| at.underlay.to_string()),
            };
            let socket = Self::socket(h);
            let _ = Client::new(&socket).delete(&format!("/v1/fdb/{}/{}", vm.vni, vm.mac));
            if let Err(e) = Client::new(&socket).post("/v1/fdb", &body) {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), |e| Err(e.into()))
    }

    /// Forgets `vm` on every switch in `hosts`.
    pub fn unpublish(&self, hosts: &[HostRef], vm: &VmSpec) {
        for h in hosts {
            let _ = Client::new(Self::socket(h)).delete(&format!("/v1/fdb/{}/{}", vm.vni, vm.mac));
        }
    }
}
