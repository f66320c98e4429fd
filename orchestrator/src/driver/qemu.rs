//! The `qemu` nested-VM driver: each VM is a `qemu-system-x86_64` process in its host's
//! namespace, controlled over QMP, its NIC a virtio-net device on a tap device that the host's
//! switch takes as a port. Live migration is QEMU's, over TCP on the underlay.
//!
//! The guest boots the image of `scripts/build-guest-image.sh`: a kernel and an initramfs that
//! read the VM's name and address from the kernel command line and serve an HTTP counter.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::qmp::Qmp;
use super::{HostRef, MigrationStats, VmDriver, VmSpec, VmStatus};
use crate::sys;
use crate::sys::{InfraError, Result};

/// Settings of the `qemu` driver.
#[derive(Debug, Clone)]
pub struct QemuConfig {
    /// The QEMU binary.
    pub binary: String,
    /// Directory with `vmlinuz` and `initrd.img`.
    pub image_dir: PathBuf,
    /// `-machine accel=`: `tcg`, `kvm`, or `kvm:tcg`.
    pub accel: String,
    /// Upper bound of the guest memory actually given (the VM's size still counts in
    /// placement); MiB.
    pub max_memory_mib: u64,
    /// The user QEMU runs as once it has opened its tap, sockets and files (`-runas`); `None`
    /// leaves it root. Default `nobody`, or `KANGAROO_QEMU_USER` (empty: root).
    pub run_as: Option<String>,
    /// QEMU's seccomp sandbox (`-sandbox on`: no obsolete system calls, no spawning, no
    /// resource control; set-uid calls only for `-runas`, after which it cannot regain root).
    pub sandbox: bool,
}

impl Default for QemuConfig {
    fn default() -> QemuConfig {
        QemuConfig {
            binary: "qemu-system-x86_64".to_owned(),
            image_dir: PathBuf::from(
                std::env::var_os("KANGAROO_GUEST_DIR")
                    .unwrap_or_else(|| "/var/cache/kangaroo/guest".into()),
            ),
            accel: "tcg".to_owned(),
            max_memory_mib: 256,
            run_as: match std::env::var("KANGAROO_QEMU_USER") {
                Ok(u) if u.is_empty() => None,
                Ok(u) => Some(u),
                Err(_) => Some("nobody".to_owned()),
            },
            sandbox: true,
        }
    }
}

/// The driver.
#[derive(Debug, Clone)]
pub struct QemuDriver {
    cfg: QemuConfig,
}

/// Files of one VM on one host.
struct Files {
    dir: PathBuf,
    qmp: PathBuf,
    pid: PathBuf,
    log: PathBuf,
}

impl QemuDriver {
    /// A driver with `cfg`.
    ///
    /// # Errors
    /// If the guest image is missing (it names the script that builds it).
    pub fn new(cfg: QemuConfig) -> Result<QemuDriver> {
        for f in ["vmlinuz", "initrd.img"] {
            let p = cfg.image_dir.join(f);
            if !p.is_file() {
                return Err(InfraError::new(
                    "the qemu driver's guest image",
                    format!(
                        "{} is missing: build it with scripts/build-guest-image.sh {}",
                        p.display(),
                        cfg.image_dir.display()
                    ),
                ));
            }
        }
        Ok(QemuDriver { cfg })
    }

    fn files(host: &HostRef, vm: &VmSpec) -> Files {
        let dir = host.dir.join("vms").join(&vm.name);
        Files {
            qmp: dir.join("qmp.sock"),
            pid: dir.join("qemu.pid"),
            log: dir.join("console.log"),
            dir,
        }
    }

    fn qmp(host: &HostRef, vm: &VmSpec) -> Result<Qmp> {
        Qmp::connect(&Self::files(host, vm).qmp)
    }

    fn ensure_tap(&self, host: &HostRef, vm: &VmSpec) -> Result<String> {
        let tap = self.port_name(vm);
        if !super::claim_link(&host.netns, &tap, &super::vm_owner(vm))? {
            sys::run(&[
                "ip",
                "-n",
                &host.netns,
                "tuntap",
                "add",
                "dev",
                &tap,
                "mode",
                "tap",
            ])?;
        }
        super::mark_link(&host.netns, &tap, &super::vm_owner(vm))?;
        sys::run(&[
            "ip",
            "-n",
            &host.netns,
            "link",
            "set",
            &tap,
            "mtu",
            "1500",
            "up",
        ])?;
        Ok(tap)
    }

    fn launch(&self, host: &HostRef, vm: &VmSpec, incoming: Option<u16>) -> Result<()> {
        let f = Self::files(host, vm);
        crate::sys::private_dir(&f.dir)
            .map_err(|e| InfraError::new(format!("creating {}", f.dir.display()), e))?;
        let _ = std::fs::remove_file(&f.qmp);
        let tap = self.ensure_tap(host, vm)?;
        let mem = vm
            .memory_mib
            .min(self.cfg.max_memory_mib)
            .max(64)
            .to_string();
        let kernel = self.cfg.image_dir.join("vmlinuz");
        let initrd = self.cfg.image_dir.join("initrd.img");
        let mut append = format!(
            "console=ttyS0 quiet panic=-1 kangaroo.name={} kangaroo.ip={}/{}",
            vm.name, vm.ip, vm.prefix
        );
        if let Some(p) = vm.probe {
            append.push_str(&format!(" kangaroo.probe={p}"));
        }
        let machine = format!("q35,accel={}", self.cfg.accel);
        let netdev = format!("tap,id=n0,ifname={tap},script=no,downscript=no");
        let device = format!("virtio-net-pci,netdev=n0,mac={},romfile=", vm.mac);
        let qmp = format!("unix:{},server=on,wait=off", f.qmp.display());
        let serial = format!("file:{}", f.log.display());
        let mut args: Vec<String> = vec![
            self.cfg.binary.clone(),
            "-name".into(),
            vm.name.clone(),
            "-machine".into(),
            machine,
            "-cpu".into(),
            "qemu64".into(),
            "-smp".into(),
            "1".into(),
            "-m".into(),
            mem,
            "-nographic".into(),
            "-nodefaults".into(),
            "-no-user-config".into(),
            "-no-reboot".into(),
            "-serial".into(),
            serial,
            "-kernel".into(),
            kernel.display().to_string(),
            "-initrd".into(),
            initrd.display().to_string(),
            "-append".into(),
            append,
            "-netdev".into(),
            netdev,
            "-device".into(),
            device,
            "-qmp".into(),
            qmp,
        ];
        if self.cfg.sandbox {
            args.push("-sandbox".into());
            args.push(
                "on,obsolete=deny,elevateprivileges=allow,spawn=deny,resourcecontrol=deny".into(),
            );
        }
        if let Some(user) = &self.cfg.run_as {
            args.push("-runas".into());
            args.push(user.clone());
        }
        if let Some(port) = incoming {
            args.push("-incoming".into());
            args.push(format!("tcp:{}:{port}", host.underlay));
        }
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        sys::spawn_detached(&host.netns, &argv, &f.dir.join("qemu.log"), &f.pid)?;
        let want = if incoming.is_some() {
            "inmigrate"
        } else {
            "running"
        };
        let mut last = String::new();
        let r = sys::wait_for(
            &format!("QEMU of {} on {}", vm.name, host.name),
            Duration::from_secs(20),
            || {
                if sys::live_pid(&f.pid).is_none() {
                    last = "exited".into();
                    return true;
                }
                match Qmp::connect(&f.qmp).and_then(|mut q| q.status()) {
                    Ok(s) => {
                        let done = s == want;
                        last = s;
                        done
                    }
                    Err(_) => false,
                }
            },
        );
        if r.is_err() || last != want {
            let log = std::fs::read_to_string(f.dir.join("qemu.log")).unwrap_or_default();
            sys::stop_pidfile(&f.pid, Duration::from_secs(2));
            return Err(InfraError::new(
                format!("starting QEMU for {} on {}", vm.name, host.name),
                format!(
                    "state {last:?}, wanted {want:?}; {}",
                    log.lines().last().unwrap_or("no output")
                ),
            ));
        }
        Ok(())
    }

    /// Quits the QEMU of `vm` on `host` (QMP `quit`, then signals) and waits for it.
    fn quit(host: &HostRef, vm: &VmSpec) {
        let f = Self::files(host, vm);
        if let Some(pid) = sys::live_pid(&f.pid) {
            if let Ok(mut q) = Qmp::connect(&f.qmp) {
                let _ = q.execute("quit", None);
            }
            let deadline = Instant::now() + Duration::from_secs(3);
            while sys::alive(pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        sys::stop_pidfile(&f.pid, Duration::from_secs(2));
        let _ = std::fs::remove_file(&f.qmp);
    }

    /// Waits up to 10 s for the migrated `vm` on `dst` to run, resuming it if it came up
    /// paused.
    fn confirm_running(dst: &HostRef, vm: &VmSpec) -> Result<()> {
        let mut d = Self::qmp(dst, vm)?;
        let mut state = d.status()?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while state != "running" && Instant::now() < deadline {
            if state == "paused" || state == "postmigrate" {
                d.execute("cont", None)?;
            }
            std::thread::sleep(Duration::from_millis(10));
            state = d.status()?;
        }
        if state != "running" {
            return Err(InfraError::new(
                format!("starting {} on {}", vm.name, dst.name),
                format!("the destination is {state} after the migration"),
            ));
        }
        Ok(())
    }

    /// The console output of `vm` on `host` (for diagnostics).
    pub fn console(host: &HostRef, vm: &VmSpec) -> String {
        std::fs::read_to_string(Self::files(host, vm).log).unwrap_or_default()
    }
}

fn num(v: &Value, path: &str) -> u64 {
    v.pointer(path).and_then(Value::as_u64).unwrap_or(0)
}

impl VmDriver for QemuDriver {
    fn kind(&self) -> super::VmDriverKind {
        super::VmDriverKind::Qemu
    }

    fn live_migration(&self) -> bool {
        true
    }

    fn port_name(&self, vm: &VmSpec) -> String {
        super::interface_name("kt", &vm.name)
    }

    fn create(&self, host: &HostRef, vm: &VmSpec) -> Result<()> {
        if self.status(host, vm) == VmStatus::Running {
            return Ok(());
        }
        // A guest paused with its state intact (a migration's source after the hand-over, or a
        // copy a failed migration left paused) is resumed: relaunching would reboot it.
        if sys::live_pid(&Self::files(host, vm).pid).is_some() {
            if let Ok(mut q) = Self::qmp(host, vm) {
                let s = q.status().unwrap_or_default();
                if matches!(s.as_str(), "paused" | "postmigrate") && q.execute("cont", None).is_ok()
                {
                    let deadline = Instant::now() + Duration::from_secs(5);
                    while Instant::now() < deadline {
                        if q.status().is_ok_and(|s| s == "running") {
                            return Ok(());
                        }
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
            }
        }
        Self::quit(host, vm);
        self.launch(host, vm, None)
    }

    fn start(&self, host: &HostRef, vm: &VmSpec) -> Result<()> {
        self.create(host, vm)
    }

    fn stop(&self, host: &HostRef, vm: &VmSpec) -> Result<()> {
        Self::quit(host, vm);
        Ok(())
    }

    fn destroy(&self, host: &HostRef, vm: &VmSpec) -> Result<()> {
        Self::quit(host, vm);
        super::delete_own_link(&host.netns, &self.port_name(vm), &super::vm_owner(vm))?;
        let _ = std::fs::remove_dir_all(Self::files(host, vm).dir);
        Ok(())
    }

    fn status(&self, host: &HostRef, vm: &VmSpec) -> VmStatus {
        let f = Self::files(host, vm);
        if sys::live_pid(&f.pid).is_none() {
            return if sys::netns_exists(&host.netns)
                && sys::link_exists(&host.netns, &self.port_name(vm))
            {
                VmStatus::Stopped
            } else {
                VmStatus::Absent
            };
        }
        match Self::qmp(host, vm).and_then(|mut q| q.status()) {
            Ok(s) if s == "running" => VmStatus::Running,
            Ok(s) if s == "inmigrate" => VmStatus::Incoming,
            _ => VmStatus::Stopped,
        }
    }

    fn list(&self, host: &HostRef) -> Vec<String> {
        super::vms_with_file(host, "qemu.pid")
    }

    fn prepare_incoming(&self, dst: &HostRef, vm: &VmSpec, port: u16) -> Result<()> {
        Self::quit(dst, vm);
        self.launch(dst, vm, Some(port))
    }

    fn migrate_out(
        &self,
        src: &HostRef,
        dst: &HostRef,
        vm: &VmSpec,
        port: u16,
        progress: &mut dyn FnMut(&str),
    ) -> Result<MigrationStats> {
        let step = format!(
            "live-migrating {} from {} to {}",
            vm.name, src.name, dst.name
        );
        let mut q = Self::qmp(src, vm)?;
        // Short pauses, and no bandwidth cap below what the underlay carries.
        q.execute(
            "migrate-set-parameters",
            Some(json!({ "downtime-limit": 50, "max-bandwidth": 4_000_000_000u64 })),
        )?;
        let started = Instant::now();
        q.execute(
            "migrate",
            Some(json!({ "uri": format!("tcp:{}:{port}", dst.underlay) })),
        )?;
        let deadline = started + Duration::from_secs(120);
        let mut last_report = Instant::now();
        let info = loop {
            let info = q.execute("query-migrate", None)?;
            let status = info
                .get("status")
                .and_then(Value::as_str)
                .unwrap_or("none")
                .to_owned();
            match status.as_str() {
                "completed" => break info,
                "failed" | "cancelled" => {
                    let why = info
                        .get("error-desc")
                        .and_then(Value::as_str)
                        .unwrap_or("no reason given")
                        .to_owned();
                    let _ = resume(&mut q);
                    return Err(InfraError::new(&step, format!("{status}: {why}")));
                }
                _ => {}
            }
            if Instant::now() > deadline {
                let _ = q.execute("migrate_cancel", None);
                let _ = resume(&mut q);
                return Err(InfraError::new(&step, "did not complete in 120 s"));
            }
            if last_report.elapsed() >= Duration::from_millis(500) {
                last_report = Instant::now();
                progress(&format!(
                    "{status}: {} of {} MiB sent",
                    num(&info, "/ram/transferred") >> 20,
                    num(&info, "/ram/total") >> 20
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let stats = MigrationStats {
            total_ms: num(&info, "/total-time").max(started.elapsed().as_millis() as u64),
            downtime_ms: num(&info, "/downtime"),
            transferred_bytes: num(&info, "/ram/transferred"),
        };
        // The destination runs on its own once the state has arrived; make sure. A destination
        // that died or never ran after the source finished sending is stopped for good and the
        // source (paused, its state intact) runs again: one copy, where the record says.
        if let Err(e) = Self::confirm_running(dst, vm) {
            Self::quit(dst, vm);
            let _ = resume(&mut q);
            return Err(InfraError::new(&step, e));
        }
        progress(&format!(
            "completed in {} ms, downtime {} ms, {} MiB",
            stats.total_ms,
            stats.downtime_ms,
            stats.transferred_bytes >> 20
        ));
        // The source (paused for good) is the caller's to destroy, after it has told the
        // switches where the VM is now.
        Ok(stats)
    }

    fn settle(&self, host: &HostRef, vm: &VmSpec) {
        let Ok(mut q) = Self::qmp(host, vm) else {
            return;
        };
        let status = |q: &mut Qmp| {
            q.execute("query-migrate", None)
                .ok()
                .and_then(|i| i.get("status").and_then(Value::as_str).map(str::to_owned))
                .unwrap_or_default()
        };
        let in_flight = |s: &str| {
            matches!(
                s,
                "setup" | "active" | "pre-switchover" | "device" | "postcopy-active" | "cancelling"
            )
        };
        if !in_flight(&status(&mut q)) {
            return;
        }
        // Cancelled now, the migration leaves the source running; if it completes first,
        // the destination runs and the source is paused for good. Either way, one copy runs.
        let _ = q.execute("migrate_cancel", None);
        let deadline = Instant::now() + Duration::from_secs(10);
        while in_flight(&status(&mut q)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = resume_unless_handed_over(&mut q);
    }
}

/// Resumes a source whose migration did not complete (cancelled or failed leaves it paused
/// when it was in the hand-over); one whose migration completed stays paused for good.
fn resume_unless_handed_over(q: &mut Qmp) -> Result<()> {
    let s = q.status()?;
    if s == "paused" {
        q.execute("cont", None)?;
    }
    Ok(())
}

/// Lets a source whose migration failed run again.
fn resume(q: &mut Qmp) -> Result<()> {
    let s = q.status()?;
    if s != "running" {
        q.execute("cont", None)?;
    }
    Ok(())
}

/// Whether `path` is a built guest image directory.
pub fn image_present(path: &Path) -> bool {
    path.join("vmlinuz").is_file() && path.join("initrd.img").is_file()
}
