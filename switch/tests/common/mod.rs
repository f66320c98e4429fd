//! Helpers shared by the root end-to-end tests: namespaces, VMs, the daemon, traffic tools.
//! Every namespace and interface has a name unique to the test process and is removed on drop.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

pub fn sh(args: &[&str]) -> Output {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("running {args:?}: {e}"))
}

pub fn ok(args: &[&str]) {
    let o = sh(args);
    assert!(
        o.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Why these tests cannot run here, if they cannot.
pub fn skip_reason() -> Option<String> {
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    if uid.as_deref() != Some("0") {
        return Some("needs root for network namespaces and AF_PACKET".into());
    }
    for tool in ["ip", "iperf3", "ping"] {
        if Command::new(tool)
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_err()
        {
            return Some(format!(
                "{tool} is not installed (scripts/install-deps.sh installs it)"
            ));
        }
    }
    None
}

pub static SEQ: AtomicU32 = AtomicU32::new(0);

/// A network namespace removed on drop.
pub struct Netns(pub String);

impl Netns {
    pub fn new(role: &str) -> Netns {
        let name = format!(
            "kgr{}-{}-{role}",
            std::process::id() % 100_000,
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        ok(&["ip", "netns", "add", &name]);
        ok(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        Netns(name)
    }

    pub fn exec(&self, args: &[&str]) -> Output {
        let mut full = vec!["ip", "netns", "exec", &self.0];
        full.extend_from_slice(args);
        sh(&full)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// A nested VM: a namespace whose eth0 is one end of a veth pair; the other end, `host_if`, is in
/// the host namespace.
pub struct Vm {
    pub ns: Netns,
    pub host_if: String,
    pub ip: String,
}

pub fn vm(host: &Netns, idx: u32, ip: &str) -> Vm {
    vm_with_queues(host, idx, ip, 1)
}

/// A VM whose veth pair has `queues` receive and transmit queues on each end.
pub fn vm_with_queues(host: &Netns, idx: u32, ip: &str, queues: u32) -> Vm {
    let ns = Netns::new(&format!("vm{idx}"));
    let host_if = format!("kgr{}p{idx}", SEQ.load(Ordering::Relaxed));
    let q = queues.to_string();
    ok(&[
        "ip",
        "link",
        "add",
        &host_if,
        "numtxqueues",
        &q,
        "numrxqueues",
        &q,
        "netns",
        &host.0,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "numtxqueues",
        &q,
        "numrxqueues",
        &q,
        "netns",
        &ns.0,
    ]);
    ok(&["ip", "-n", &host.0, "link", "set", &host_if, "up"]);
    ok(&[
        "ip",
        "-n",
        &ns.0,
        "addr",
        "add",
        &format!("{ip}/24"),
        "dev",
        "eth0",
    ]);
    ok(&[
        "ip",
        "-n",
        &ns.0,
        "link",
        "set",
        "eth0",
        "address",
        &format!("02:00:00:00:00:{idx:02x}"),
    ]);
    ok(&["ip", "-n", &ns.0, "link", "set", "eth0", "up"]);
    Vm {
        ns,
        host_if,
        ip: ip.to_owned(),
    }
}

/// The switch daemon, stopped on drop.
pub struct Daemon(pub Option<Child>, std::path::PathBuf);

impl Daemon {
    /// Starts the daemon with `config` plus a control socket in a fresh directory.
    pub fn start(host: &Netns, config: &str) -> (Daemon, tempdir::Dir) {
        let dir = tempdir::Dir::new();
        let path = dir.0.join("switch.toml");
        let socket = dir.0.join("switch.sock");
        // The daemon's log goes to a file (a pipe nobody reads could fill and block it); it is
        // printed when the daemon fails or the test panics.
        // It lives outside `dir`, which a test may drop first.
        let log = std::env::temp_dir().join(format!(
            "kgr-switch-{}-{:x}.log",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::write(
            &path,
            format!("control_socket = {:?}\n{config}", socket.to_str().unwrap()),
        )
        .unwrap();
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &host.0,
                env!("CARGO_BIN_EXE_kangaroo-switch"),
                "run",
                "--config",
                path.to_str().unwrap(),
            ])
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        // Wait for the control socket (bounded); a daemon that exits says why.
        let mut child = child;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() && Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "the daemon exited ({status}): {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            socket.exists(),
            "control socket {} appeared",
            socket.display()
        );
        (Daemon(Some(child), log), dir)
    }

    /// SIGTERM, wait, and return the counters it printed.
    pub fn stop(mut self) -> Value {
        let child = self.0.take().unwrap();
        ok(&["kill", "-TERM", &child.id().to_string()]);
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "daemon exit: {:?}\n{}",
            out.status,
            std::fs::read_to_string(&self.1).unwrap_or_default()
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "daemon report: {e}: {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
            if std::thread::panicking() {
                eprintln!(
                    "--- daemon log ({}) ---\n{}--- end of daemon log ---",
                    self.1.display(),
                    std::fs::read_to_string(&self.1).unwrap_or_default()
                );
            }
        }
        let _ = std::fs::remove_file(&self.1);
    }
}

pub mod tempdir {
    pub struct Dir(pub std::path::PathBuf);
    impl Dir {
        pub fn new() -> Dir {
            let d = std::env::temp_dir().join(format!(
                "kgr-netns-{}-{:x}",
                std::process::id(),
                rand::random::<u64>()
            ));
            std::fs::create_dir_all(&d).unwrap();
            Dir(d)
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Runs `kangaroo-switch ctl --socket <dir>/switch.sock ARGS`; returns success and output.
pub fn ctl(dir: &tempdir::Dir, args: &[&str]) -> (bool, String) {
    let socket = dir.0.join("switch.sock");
    let mut full = vec!["--socket", socket.to_str().unwrap()];
    full.extend_from_slice(args);
    let mut cmd = vec!["ctl"];
    cmd.extend(full);
    let out = Command::new(env!("CARGO_BIN_EXE_kangaroo-switch"))
        .args(&cmd)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

pub fn ping(from: &Vm, to: &str, count: u32) -> bool {
    from.ns
        .exec(&["ping", "-c", &count.to_string(), "-i", "0.2", "-W", "1", to])
        .status
        .success()
}

/// Runs iperf3 from `client` to `server` for `secs`; returns the received bits/s.
pub fn iperf(client: &Vm, server: &Vm, secs: u32, udp: bool) -> (f64, Value) {
    let port = 5201 + SEQ.fetch_add(1, Ordering::Relaxed) % 1000;
    let mut srv = Command::new("ip")
        .args([
            "netns",
            "exec",
            &server.ns.0,
            "iperf3",
            "-s",
            "-1",
            "-p",
            &port.to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let mut args = vec!["timeout", "20", "iperf3", "-J", "-c", &server.ip, "-t"];
    let secs_s = secs.to_string();
    let port_s = port.to_string();
    args.extend_from_slice(&[&secs_s, "-p", &port_s]);
    if udp {
        args.extend_from_slice(&["-u", "-b", "100M"]);
    }
    let out = client.ns.exec(&args);
    let _ = srv.kill();
    let _ = srv.wait();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    if let Some(e) = v.get("error") {
        eprintln!("iperf3 {} -> {}: {e}", client.ip, server.ip);
    }
    let bps = if udp {
        v.pointer("/end/sum/bits_per_second")
    } else {
        v.pointer("/end/sum_received/bits_per_second")
    };
    (bps.and_then(Value::as_f64).unwrap_or(0.0), v)
}

/// True if an XDP program, or one of the switch's tc programs, is attached to `ifname` in `ns`.
pub fn program_attached(ns: &Netns, ifname: &str) -> bool {
    let o = sh(&["ip", "-n", &ns.0, "-d", "link", "show", "dev", ifname]);
    let text = String::from_utf8_lossy(&o.stdout);
    if text.contains("prog/xdp") || text.contains(" xdp ") || text.contains("xdpgeneric") {
        return true;
    }
    tcx_attached(ns, ifname)
}

/// True if a process in `ns` holds a tcx link on `ifname` (found in the link descriptors'
/// `fdinfo`: Debian's bpftool predates tcx and cannot list them).
pub fn tcx_attached(ns: &Netns, ifname: &str) -> bool {
    use std::os::unix::fs::MetadataExt;
    let o = sh(&[
        "ip",
        "netns",
        "exec",
        &ns.0,
        "cat",
        &format!("/sys/class/net/{ifname}/ifindex"),
    ]);
    let Ok(ifindex) = String::from_utf8_lossy(&o.stdout).trim().parse::<u32>() else {
        return false;
    };
    let Ok(ns_ino) = std::fs::metadata(format!("/run/netns/{}", ns.0)).map(|m| m.ino()) else {
        return false;
    };
    let want_ns = format!("net:[{ns_ino}]");
    let want_if = format!("ifindex:\t{ifindex}\n");
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return false;
    };
    procs.flatten().any(|p| {
        let dir = p.path();
        let in_ns =
            std::fs::read_link(dir.join("ns/net")).is_ok_and(|l| l.to_string_lossy() == want_ns);
        in_ns
            && std::fs::read_dir(dir.join("fdinfo")).is_ok_and(|fds| {
                fds.flatten().any(|f| {
                    std::fs::read_to_string(f.path())
                        .is_ok_and(|t| t.contains("link_type:\ttcx\n") && t.contains(&want_if))
                })
            })
    })
}

/// Lengths of the first `count` TCP frames `tcpdump` sees on `ifname` in `ns` within `secs`
/// seconds, while something else makes traffic.
pub fn tcp_frame_lengths(ns: &str, ifname: &str, count: u32, secs: u32) -> Vec<usize> {
    let secs = secs.to_string();
    let count = count.to_string();
    let o = sh(&[
        "ip", "netns", "exec", ns, "timeout", &secs, "tcpdump", "-nn", "-e", "-i", ifname, "-c",
        &count, "tcp",
    ]);
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| {
            // "... ethertype IPv4 (0x0800), length 65226: 10.0.0.1.5201 > ..."
            let rest = l.split(", length ").nth(1)?;
            rest.split(':').next()?.trim().parse().ok()
        })
        .collect()
}

/// Attaches an XDP program that passes every frame (the switch's port program with empty maps)
/// to `ifname` in `ns`: a veth that receives frames the XDP fast path redirects to it needs one
/// (a tap or a physical NIC does not). Detached when the interface goes.
pub fn xdp_pass(ns: &Netns, ifname: &str) {
    let path = std::env::temp_dir().join(format!("kgr-pass-{}.o", std::process::id()));
    if !path.exists() {
        std::fs::write(&path, kangaroo_xdp::OBJECT).unwrap();
    }
    ok(&[
        "ip",
        "-n",
        &ns.0,
        "link",
        "set",
        "dev",
        ifname,
        "xdpdrv",
        "obj",
        path.to_str().unwrap(),
        "sec",
        "xdp",
    ]);
}

/// The timestamps of the echo replies in the output of `ping -D`.
pub fn reply_times(out: &str) -> Vec<f64> {
    out.lines()
        .filter(|l| l.contains("bytes from"))
        .filter_map(|l| l.strip_prefix('[')?.split(']').next()?.parse().ok())
        .collect()
}

/// Tests that measure throughput take this alone; the others share it, so that no other test's
/// traffic competes for the cores while a figure is measured.
static CORES: std::sync::RwLock<()> = std::sync::RwLock::new(());

/// The cores for a test that measures: no other test holding [`shared`] runs meanwhile.
pub fn exclusive() -> std::sync::RwLockWriteGuard<'static, ()> {
    CORES.write().unwrap_or_else(|p| p.into_inner())
}

/// A test that does not measure: runs beside the others, never beside an [`exclusive`] one.
pub fn shared() -> std::sync::RwLockReadGuard<'static, ()> {
    CORES.read().unwrap_or_else(|p| p.into_inner())
}

/// A host on the underlay: a namespace whose `ul0` is bridged into the underlay namespace.
pub fn underlay_host(ul: &Netns, role: &str, addr: &str, fast: bool) -> Netns {
    let ns = Netns::new(role);
    let peer = format!("ku{}{role}", SEQ.fetch_add(1, Ordering::Relaxed));
    ok(&[
        "ip", "link", "add", "ul0", "netns", &ns.0, "type", "veth", "peer", "name", &peer, "netns",
        &ul.0,
    ]);
    ok(&[
        "ip", "-n", &ul.0, "link", "set", &peer, "master", "br0", "up",
    ]);
    // The underlay side takes frames the XDP fast path redirects out of `ul0` (a veth needs an
    // XDP program for that; a physical NIC does not).
    if fast {
        xdp_pass(ul, &peer);
    }
    ok(&[
        "ip",
        "-n",
        &ns.0,
        "addr",
        "add",
        &format!("{addr}/24"),
        "dev",
        "ul0",
    ]);
    ok(&["ip", "-n", &ns.0, "link", "set", "ul0", "up"]);
    ns
}

/// The datapath modes a multi-mode test runs, in `all`'s order: every one, or those named in
/// `KGR_MODES` (comma-separated).
pub fn modes(all: &[&'static str]) -> Vec<&'static str> {
    match std::env::var("KGR_MODES") {
        Ok(m) => all
            .iter()
            .copied()
            .filter(|x| m.split(',').any(|y| y == *x))
            .collect(),
        Err(_) => all.to_vec(),
    }
}

/// An underlay: a namespace with a bridge `br0` that [`underlay_host`]s join.
pub fn underlay_bridge() -> Netns {
    let ul = Netns::new("ul");
    ok(&["ip", "-n", &ul.0, "link", "add", "br0", "type", "bridge"]);
    ok(&["ip", "-n", &ul.0, "link", "set", "br0", "up"]);
    ul
}

/// `ctl secure` as JSON.
pub fn secure(dir: &tempdir::Dir) -> Value {
    let (ok, out) = ctl(dir, &["--json", "secure"]);
    assert!(ok, "{out}");
    serde_json::from_str(&out).unwrap()
}

/// Waits (bounded) until `vm` reaches `to`.
pub fn reachable(vm: &Vm, to: &str, secs: u64) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if ping(vm, to, 1) {
            return true;
        }
    }
    false
}
