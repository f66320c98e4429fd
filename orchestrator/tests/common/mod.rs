//! What the orchestrator's end-to-end tests share: skipping with a reason, the guest image,
//! `kangaroo serve` as a child process, teardown of everything a server made, and probes
//! into namespaces.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub fn target_dir() -> PathBuf {
    // tests run from the package directory; binaries are in the workspace's target directory.
    PathBuf::from(env!("CARGO_BIN_EXE_kangaroo"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

pub fn switch_bin() -> Option<PathBuf> {
    let p = target_dir().join("kangaroo-switch");
    p.is_file().then_some(p)
}

pub fn skip_reason(need_qemu: bool) -> Option<String> {
    if not_root() {
        return Some("needs root (namespaces, taps, XDP)".into());
    }
    if switch_bin().is_none() {
        return Some(format!(
            "no kangaroo-switch in {} (build the workspace first: cargo build)",
            target_dir().display()
        ));
    }
    if need_qemu
        && Command::new("qemu-system-x86_64")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .map_or(true, |s| !s.success())
    {
        return Some("qemu-system-x86_64 is not installed (scripts/install-deps.sh)".into());
    }
    None
}

pub fn not_root() -> bool {
    // The effective uid from /proc (no libc call).
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u != "0"))
        })
        .unwrap_or(true)
}

/// The guest image, built on first use into the target directory (or `KANGAROO_GUEST_DIR`).
pub fn guest_image() -> Result<PathBuf, String> {
    let dir = std::env::var_os("KANGAROO_GUEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("guest"));
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/build-guest-image.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg(&dir)
        .output()
        .map_err(|e| format!("{}: {e}", script.display()))?;
    if !out.status.success() {
        return Err(format!(
            "building the guest image: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(dir)
}

/// The guest image when the QEMU tests can run here; otherwise `None`, having printed why.
pub fn qemu_ready() -> Option<PathBuf> {
    if let Some(why) = skip_reason(true) {
        println!("skipping: {why}");
        return None;
    }
    match guest_image() {
        Ok(d) => Some(d),
        Err(e) => {
            println!("skipping: {e}");
            None
        }
    }
}

pub fn in_ns(ns: &str, args: &[&str]) -> std::process::Output {
    Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .output()
        .unwrap()
}

pub fn http(ns: &str, ip: Ipv4Addr, path: &str) -> Option<String> {
    let url = format!("http://{ip}{path}");
    let o = in_ns(ns, &["curl", "-s", "-m", "2", &url]);
    o.status
        .success()
        .then(|| String::from_utf8_lossy(&o.stdout).trim().to_owned())
}

pub fn field(text: &str, key: &str) -> Option<String> {
    text.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        .map(str::to_owned)
}

pub fn wait_http(ns: &str, ip: Ipv4Addr, secs: u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(t) = http(ns, ip, "/") {
            return t;
        }
        assert!(
            Instant::now() < deadline,
            "{ip} answers HTTP within {secs} s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The tests here run one at a time: QEMU under TCG and a dozen namespaces are heavy for a
/// small machine, and the migration's interruption is measured.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

pub fn local_mode() -> String {
    std::env::var("KGR_LOCAL_MODE").unwrap_or_else(|_| "tc".to_owned())
}

/// `kangaroo serve` with two local providers, as a child process.
pub struct Serve {
    pub child: Option<std::process::Child>,
    pub dir: PathBuf,
    pub url: String,
}

impl Serve {
    pub fn start(dir: &std::path::Path, port: u16) -> Serve {
        Serve::start_with(dir, port, "netns", &[])
    }

    pub fn start_with(
        dir: &std::path::Path,
        port: u16,
        driver: &str,
        env: &[(&str, &std::path::Path)],
    ) -> Serve {
        Serve::start_args(dir, port, driver, env, &[])
    }

    /// One of several controllers on `etcd` (sharing `dir`, where the local cloud lives).
    pub fn start_on_etcd(dir: &std::path::Path, port: u16, etcd: &Etcd) -> Serve {
        Serve::start_on_etcd_with(dir, port, etcd, &[])
    }

    pub fn start_on_etcd_with(
        dir: &std::path::Path,
        port: u16,
        etcd: &Etcd,
        extra: &[&str],
    ) -> Serve {
        let url = etcd.url();
        let mut args = vec!["--store", url.as_str(), "--lease-secs", "2"];
        args.extend_from_slice(extra);
        Serve::start_args(dir, port, "netns", &[], &args)
    }

    pub fn start_args(
        dir: &std::path::Path,
        port: u16,
        driver: &str,
        env: &[(&str, &std::path::Path)],
        extra: &[&str],
    ) -> Serve {
        let url = format!("http://127.0.0.1:{port}");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("serve.log"))
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_kangaroo"))
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--provider",
                "cloud-a=local:ec2-2026",
                "--provider",
                "cloud-b=local:ec2-2014",
                "--vm-driver",
                driver,
                "--switch-mode",
                &local_mode(),
            ])
            // Reconciling only at start-up and on request unless the test asks otherwise.
            .args(if extra.contains(&"--reconcile-secs") {
                &[][..]
            } else {
                &["--reconcile-secs", "0"][..]
            })
            .args(extra)
            .env("KANGAROO_DATA_DIR", dir)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log.try_clone().unwrap())
            .spawn()
            .unwrap();
        let s = Serve {
            child: Some(child),
            dir: dir.to_owned(),
            url,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            let o = Command::new("curl")
                .args(["-fsS", "-m", "1", &format!("{}/health", s.url)])
                .output()
                .unwrap();
            if o.status.success() {
                return s;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("kangaroo serve answers: {}", s.log());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("serve.log")).unwrap_or_default()
    }

    pub fn cli(&self, args: &[&str]) -> (bool, String) {
        let o = Command::new(env!("CARGO_BIN_EXE_kangaroo"))
            .args(args)
            .env("KANGAROO_DATA_DIR", &self.dir)
            .env("KANGAROO_URL", &self.url)
            .output()
            .unwrap();
        (
            o.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
        )
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let (ok, out) = self.cli(args);
        assert!(ok, "kangaroo {args:?}: {out}\nserver log:\n{}", self.log());
        out
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut full = vec!["--json"];
        full.extend_from_slice(args);
        serde_json::from_str(&self.ok(&full)).unwrap()
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A one-member etcd on loopback ports, its data in a temporary directory removed on drop.
pub struct Etcd {
    child: Option<std::process::Child>,
    pub dir: tempfile::TempDir,
    pub port: u16,
    peer: u16,
}

impl Etcd {
    /// Starts etcd, or says why it cannot (no `etcd` binary: `scripts/install-deps.sh`
    /// installs Debian's etcd-server).
    pub fn start() -> Result<Etcd, String> {
        if Command::new("etcd").arg("--version").output().is_err() {
            return Err("no etcd binary (Debian's etcd-server; scripts/install-deps.sh)".into());
        }
        // Below the ephemeral range (32768-) and the range the tests' servers use (20000-), so
        // a restart finds its ports free: even numbers, the peer port one above.
        let port = 10000 + 2 * (rand::random::<u16>() % 4900);
        let mut e = Etcd {
            child: None,
            dir: tempfile::tempdir().unwrap(),
            port,
            peer: port + 1,
        };
        e.spawn();
        Ok(e)
    }

    pub fn url(&self) -> String {
        format!("etcd://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let client = format!("http://127.0.0.1:{}", self.port);
        let peer = format!("http://127.0.0.1:{}", self.peer);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("etcd.log"))
            .unwrap();
        let child = Command::new("etcd")
            .args(["--name", "t", "--data-dir"])
            .arg(self.dir.path().join("data"))
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
                "--initial-cluster",
                &format!("t={peer}"),
                "--max-txn-ops",
                "10000",
                "--max-request-bytes",
                "33554432",
                "--logger",
                "zap",
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let o = Command::new("curl")
                .args(["-fsS", "-m", "1", &format!("{client}/health")])
                .output()
                .unwrap();
            if String::from_utf8_lossy(&o.stdout).contains("true") {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("etcd did not come up: {}", self.log());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }

    /// kill -9.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// kill -9, then start again on the same ports and data.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// The size of etcd's database file, bytes.
    pub fn db_bytes(&self) -> u64 {
        std::fs::metadata(self.dir.path().join("data/member/snap/db"))
            .map(|m| m.len())
            .unwrap_or(0)
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts `kangaroo apply -f examples/shop.toml` (the web shop, 11 VMs) against the server at
/// `url` and returns it once the first VM's namespace exists (or after `secs`), so the caller
/// can kill the server in the middle of making the deployment real.
pub fn apply_shop_until_first_vm(
    dir: &std::path::Path,
    url: &str,
    secs: u64,
) -> std::process::Child {
    let prefix = kangaroo_orchestrator::server::local_prefix(dir);
    let workload = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/shop.toml");
    let apply = Command::new(env!("CARGO_BIN_EXE_kangaroo"))
        .args(["apply", "-f", &workload.display().to_string()])
        .env("KANGAROO_DATA_DIR", dir)
        .env("KANGAROO_URL", url)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline
        && kangaroo_orchestrator::sys::netns_with_prefix(&format!("{prefix}-v-")).is_empty()
    {
        std::thread::sleep(Duration::from_millis(5));
    }
    apply
}

/// The page `from` (a `netns` VM) gets from `http://IP/`, once it names `want` (within 15 s).
pub fn web_page(s: &Serve, from: &str, ip: &str, want: &str, what: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let url = format!("http://{ip}/");
        let (ok, out) = s.cli(&["vm", "exec", from, "--", "curl", "-s", "-m", "2", &url]);
        if ok && out.starts_with(&format!("name={want}")) {
            return out;
        }
        assert!(
            Instant::now() < deadline,
            "{what} ({from} -> {want}): {out}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits for the `kangaroo serve` child writing `log` to say where it listens (it was started
/// with `--listen 127.0.0.1:0`, so no port can be taken already) and returns `http://ADDR`;
/// panics with the log if the child exits first.
pub fn served_url(child: &mut std::process::Child, log: &std::path::Path) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(rest) = text.split("serving the API on ").nth(1) {
            return rest
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_owned();
        }
        if let Ok(Some(st)) = child.try_wait() {
            panic!("kangaroo serve exited ({st}):\n{text}");
        }
        assert!(
            Instant::now() < deadline,
            "kangaroo serve did not start:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The hosts each VM's port is on (a VM made twice would show two).
pub fn where_vms_run(prefix: &str, s: &Serve) -> Vec<(String, String, Vec<String>)> {
    let vms = s.json(&["vm", "ls"]);
    let hosts: Vec<String> = s
        .json(&["host", "ls"])
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["name"].as_str().unwrap().to_owned())
        .collect();
    vms.as_array()
        .unwrap()
        .iter()
        .map(|v| {
            let name = v["name"].as_str().unwrap().to_owned();
            let port = kangaroo_orchestrator::driver::interface_name("kn", &name);
            let on = hosts
                .iter()
                .filter(|h| {
                    kangaroo_orchestrator::sys::link_exists(&format!("{prefix}-h-{h}"), &port)
                })
                .cloned()
                .collect();
            (name, v["host"].as_str().unwrap_or("").to_owned(), on)
        })
        .collect()
}

/// Removes every namespace and process of the server with `dir`, whatever happened.
pub struct Teardown(pub PathBuf);

/// The pid files of the hosts' agents under `dir`.
pub fn agent_pidfiles(dir: &std::path::Path) -> Vec<PathBuf> {
    let hosts = dir.join("local/hosts");
    std::fs::read_dir(hosts)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path().join("agent.pid"))
                .filter(|p| p.exists())
                .collect()
        })
        .unwrap_or_default()
}

impl Drop for Teardown {
    fn drop(&mut self) {
        // Agents run in the root namespace: they go by their pid files.
        for p in agent_pidfiles(&self.0) {
            kangaroo_orchestrator::sys::stop_pidfile(&p, Duration::from_secs(3));
        }
        let prefix = kangaroo_orchestrator::server::local_prefix(&self.0);
        for ns in kangaroo_orchestrator::sys::netns_with_prefix(&format!("{prefix}-")) {
            let _ = kangaroo_orchestrator::sys::delete_netns(&ns);
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn qemu_copies(dir: &std::path::Path, vm: &str) -> Vec<(String, i32)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.ends_with(format!("vms/{vm}/qemu.pid")) {
                let host = p
                    .parent()
                    .and_then(|v| v.parent())
                    .and_then(|v| v.parent())
                    .and_then(|h| h.file_name())
                    .map(|h| h.to_string_lossy().into_owned())
                    .unwrap_or_default();
                if let Some(pid) = kangaroo_orchestrator::sys::live_pid(&p) {
                    out.push((host, pid));
                }
            }
        }
    }
    out.sort();
    out
}
