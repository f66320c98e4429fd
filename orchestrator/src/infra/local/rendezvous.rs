//! The local cloud's rendezvous: the process in the router namespace that secure peers find
//! each other through (and that relays when no direct path opens), and its members.

use super::*;

impl LocalCloud {
    pub(super) fn rendezvous_dir(&self) -> PathBuf {
        self.cfg.state_dir.join("rendezvous")
    }

    /// The rendezvous' configuration for `members` (VTEP address, public key).
    ///
    /// # Errors
    /// The file cannot be written as TOML.
    pub(super) fn rendezvous_config(&self, members: &[(Ipv4Addr, String)]) -> Result<String> {
        RendezvousFile {
            listen: RENDEZVOUS.to_string(),
            key_file: self.rendezvous_dir().join("rendezvous.key"),
            relay: Some(true),
            member: members
                .iter()
                .map(|(vtep, key)| MemberSection {
                    vtep: vtep.to_string(),
                    public_key: key.clone(),
                })
                .collect(),
        }
        .to_toml("Written by kangaroo: the local cloud's rendezvous.")
        .map_err(|e| InfraError::new("writing the rendezvous' configuration", e))
    }

    /// Whether the rendezvous is running.
    pub fn rendezvous_alive(&self) -> bool {
        sys::live_pid(&self.rendezvous_dir().join("rendezvous.pid")).is_some()
    }

    /// Starts the rendezvous in the router namespace unless it runs (its key pair is made at
    /// first start and kept until the underlay is released) and answers its public key.
    ///
    /// # Errors
    /// The router namespace, the key or the process cannot be made.
    pub fn ensure_rendezvous(&self) -> Result<String> {
        let ns = self.router_netns();
        sys::ensure_netns(&ns)?;
        sys::run(&["ip", "-n", &ns, "link", "set", "lo", "up"])?;
        let addr = format!("{}/32", RENDEZVOUS.ip());
        sys::run(&["ip", "-n", &ns, "addr", "replace", &addr, "dev", "lo"])?;
        let dir = self.rendezvous_dir();
        crate::sys::private_dir(&dir)
            .map_err(|e| InfraError::new(format!("creating {}", dir.display()), e))?;
        let config = dir.join("rendezvous.toml");
        if !config.exists() {
            write_atomically(&config, &self.rendezvous_config(&[])?)?;
        }
        let bin = self.cfg.switch_bin.display().to_string();
        let cfg_path = config.display().to_string();
        let key = sys::run(&[&bin, "rendezvous", "-c", &cfg_path, "--public-key"])?
            .trim()
            .to_owned();
        let pid = dir.join("rendezvous.pid");
        if sys::live_pid(&pid).is_none() {
            let log = dir.join("rendezvous.log");
            let _ = std::fs::remove_file(&log);
            sys::spawn_detached(&ns, &[&bin, "rendezvous", "-c", &cfg_path], &log, &pid)?;
            // Until it has its signal handlers, a SIGHUP (new members) would end it.
            let ready =
                || std::fs::read_to_string(&log).is_ok_and(|l| l.contains("rendezvous running"));
            let step = "starting the rendezvous";
            let r = sys::wait_for(step, Duration::from_secs(10), || {
                ready() || sys::live_pid(&pid).is_none()
            });
            if r.is_err() || !ready() {
                return Err(not_started(step, &log));
            }
        }
        Ok(key)
    }

    /// Whether the rendezvous was set up (its configuration exists).
    pub fn rendezvous_configured(&self) -> bool {
        self.rendezvous_dir().join("rendezvous.toml").exists()
    }

    /// The public key of the rendezvous a controller set up (an agent's switch needs it).
    ///
    /// # Errors
    /// The rendezvous is not set up yet, or its key cannot be read.
    pub fn rendezvous_key(&self) -> Result<String> {
        let config = self.rendezvous_dir().join("rendezvous.toml");
        if !config.exists() {
            return Err(InfraError::new(
                "the rendezvous' key",
                format!("{} does not exist yet", config.display()),
            ));
        }
        let bin = self.cfg.switch_bin.display().to_string();
        let cfg_path = config.display().to_string();
        Ok(
            sys::run(&[&bin, "rendezvous", "-c", &cfg_path, "--public-key"])?
                .trim()
                .to_owned(),
        )
    }

    /// The rendezvous' members now (VTEP address, public key), from its file.
    pub fn rendezvous_members(&self) -> Vec<(Ipv4Addr, String)> {
        let path = self.rendezvous_dir().join("rendezvous.toml");
        std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| config::parse::<RendezvousFile>(&path.display().to_string(), &t).ok())
            .map(|f| {
                f.member
                    .into_iter()
                    .filter_map(|m| Some((m.vtep.parse().ok()?, m.public_key)))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Makes `vtep` a member of the rendezvous with `key` (replacing what it had).
    ///
    /// # Errors
    /// The file cannot be written.
    pub fn add_rendezvous_member(&self, vtep: Ipv4Addr, key: &str) -> Result<()> {
        let mut members = self.rendezvous_members();
        members.retain(|(v, k)| *v != vtep && k != key);
        members.push((vtep, key.to_owned()));
        self.set_rendezvous_members(&members)
    }

    /// Makes the rendezvous' members exactly `members` (VTEP address, public key): the file is
    /// rewritten and the running rendezvous told (SIGHUP) when they changed.
    ///
    /// # Errors
    /// The file cannot be written.
    pub fn set_rendezvous_members(&self, members: &[(Ipv4Addr, String)]) -> Result<()> {
        let dir = self.rendezvous_dir();
        let config = dir.join("rendezvous.toml");
        let mut members = members.to_vec();
        members.sort();
        let text = self.rendezvous_config(&members)?;
        if std::fs::read_to_string(&config).ok().as_deref() == Some(text.as_str()) {
            return Ok(());
        }
        write_atomically(&config, &text)?;
        sys::process::signal(&dir.join("rendezvous.pid"), libc::SIGHUP);
        Ok(())
    }
}
