//! Running system tools (`ip`, `ethtool`) and managing detached processes by pid file.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub mod process;

/// Why an infrastructure step failed: the step, with its cause as the error's source.
#[derive(Debug)]
pub struct InfraError {
    /// The step, e.g. `starting the switch of host-1`.
    pub step: String,
    /// Why it failed.
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

impl std::fmt::Display for InfraError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.step)
    }
}

impl std::error::Error for InfraError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.source.as_ref())
    }
}

impl InfraError {
    /// An error for `step` caused by `cause` (an error, or a message).
    pub fn new(
        step: impl Into<String>,
        cause: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> InfraError {
        InfraError {
            step: step.into(),
            source: cause.into(),
        }
    }
}

impl From<kangaroo_control::client::ClientError> for InfraError {
    fn from(e: kangaroo_control::client::ClientError) -> InfraError {
        InfraError::new("the switch's control API", e)
    }
}

/// `e` and every cause below it, joined by `: ` (what a message to a person shows).
pub fn report(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        out.push_str(": ");
        out.push_str(&s.to_string());
        next = s.source();
    }
    out
}

/// Result of an infrastructure step.
pub type Result<T> = std::result::Result<T, InfraError>;

/// 32-bit FNV-1a, for short deterministic interface names.
pub fn short_hash(s: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in s.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// Runs `args[0]` with the rest; an error names the command and carries its stderr.
pub fn run(args: &[&str]) -> Result<String> {
    let (prog, rest) = args
        .split_first()
        .ok_or_else(|| InfraError::new("running a command", "empty command line"))?;
    let out = Command::new(prog)
        .args(rest)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| InfraError::new(args.join(" "), e))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(InfraError::new(
            args.join(" "),
            format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ))
    }
}

/// Runs `args` inside network namespace `ns`.
pub fn run_in(ns: &str, args: &[&str]) -> Result<String> {
    let mut full = vec!["ip", "netns", "exec", ns];
    full.extend_from_slice(args);
    run(&full)
}

/// Whether network namespace `ns` exists.
pub fn netns_exists(ns: &str) -> bool {
    Path::new("/run/netns").join(ns).exists()
}

/// Creates network namespace `ns` with loopback up, unless it exists.
pub fn ensure_netns(ns: &str) -> Result<()> {
    if !netns_exists(ns) {
        run(&["ip", "netns", "add", ns])?;
    }
    run(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
    Ok(())
}

/// Deletes network namespace `ns` if it exists, with every process still in it (its
/// interfaces go with it).
pub fn delete_netns(ns: &str) -> Result<()> {
    if netns_exists(ns) {
        if let Ok(pids) = run(&["ip", "netns", "pids", ns]) {
            let pids: Vec<i32> = pids
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect();
            for pid in &pids {
                process::signal_pid(*pid, libc::SIGKILL);
            }
            let deadline = Instant::now() + Duration::from_secs(2);
            while pids.iter().any(|p| alive(*p)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        run(&["ip", "netns", "del", ns])?;
    }
    Ok(())
}

/// Whether interface `ifname` exists in namespace `ns`.
pub fn link_exists(ns: &str, ifname: &str) -> bool {
    Command::new("ip")
        .args(["-n", ns, "link", "show", "dev", ifname])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Network namespaces whose names start with `prefix`.
pub fn netns_with_prefix(prefix: &str) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with(prefix))
        .collect();
    out.sort();
    out
}

/// The pid in `pidfile` if the process it names is running: the one started with that pid
/// ([`process::Identity`]), not whichever holds the pid now.
pub fn live_pid(pidfile: &Path) -> Option<i32> {
    process::read(pidfile).map(|p| p.pid)
}

/// Whether process `pid` exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(s) => s
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => false,
    }
}

/// Stops the process `pidfile` names, if it runs: SIGTERM, then SIGKILL after `grace`; removes
/// the file.
pub fn stop_pidfile(pidfile: &Path, grace: Duration) {
    if let Some(p) = process::read(pidfile) {
        process::signal(pidfile, libc::SIGTERM);
        let deadline = Instant::now() + grace;
        while p.running() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if p.running() {
            process::signal(pidfile, libc::SIGKILL);
            let deadline = Instant::now() + Duration::from_secs(2);
            while p.running() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
    let _ = std::fs::remove_file(pidfile);
}

/// Creates `dir` and any missing parents with mode 0700 (never the umask's mode).
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Writes `text` to `path`, created with mode 0600 (an existing file keeps its mode).
pub fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?
        .write_all(text.as_bytes())
}

/// Starts `args` inside namespace `ns` (this process's own when empty) as a detached process
/// (its own process group: it outlives the orchestrator), output appended to `log`, and writes
/// its pid to `pidfile`.
pub fn spawn_detached(ns: &str, args: &[&str], log: &Path, pidfile: &Path) -> Result<i32> {
    use std::os::unix::process::CommandExt;
    let step = format!("starting {} in {ns}", args.first().copied().unwrap_or("?"));
    let out = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(log)
    }
    .map_err(|e| InfraError::new(&step, format!("{}: {e}", log.display())))?;
    let err = out
        .try_clone()
        .map_err(|e| InfraError::new(&step, format!("{}: {e}", log.display())))?;
    // An empty `ns` is this process's own namespace.
    let mut cmd = if ns.is_empty() {
        let mut c = Command::new(args.first().copied().unwrap_or("false"));
        c.args(args.iter().skip(1));
        c
    } else {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns]).args(args);
        c
    };
    process::private_files(&mut cmd);
    let child = cmd
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
        .map_err(|e| InfraError::new(&step, e))?;
    let pid = i32::try_from(child.id()).map_err(|e| InfraError::new(&step, e))?;
    // `ip netns exec` execs the program: the pid is the program's. The child is reaped by a
    // thread so it never lingers as a zombie while this process lives.
    std::thread::spawn(move || {
        let mut child = child;
        let _ = child.wait();
    });
    // A process that already exited has no identity: its pid file names nothing.
    let line = process::Identity::of(pid).map_or_else(|| format!("{pid} 0 -\n"), |p| p.line());
    write_private(pidfile, &line)
        .map_err(|e| InfraError::new(&step, format!("{}: {e}", pidfile.display())))?;
    Ok(pid)
}

/// Waits until `ready` holds, up to `timeout`; `what` names it in the error.
pub fn wait_for(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if ready() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(InfraError::new(
                what,
                format!("not ready after {:.1} s", timeout.as_secs_f64()),
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod error_tests {
    use super::*;

    #[test]
    fn a_step_keeps_its_cause_as_the_source() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let e = InfraError::new("starting the switch of h1", io);
        assert_eq!(e.to_string(), "starting the switch of h1");
        assert_eq!(report(&e), "starting the switch of h1: no such file");
        let outer = InfraError::new("renting h1", e);
        assert_eq!(
            report(&outer),
            "renting h1: starting the switch of h1: no such file"
        );
        let msg = InfraError::new("a step", "a message");
        assert_eq!(report(&msg), "a step: a message");
    }
}

#[cfg(test)]
mod process_tests {
    use super::*;

    fn temp() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    /// A pid file that names a process this code did not start (left from before a reboot, or
    /// the pid reused since) never gets that process signalled.
    #[test]
    fn a_pid_file_naming_another_process_is_never_signalled() {
        let dir = temp();
        let mut victim = Command::new("sleep").arg("30").spawn().unwrap();
        let pid = victim.id() as i32;
        let file = dir.path().join("stale.pid");
        for stale in [
            format!("{pid}\n"),
            format!("{pid} 1 {}\n", boot_id_for_test()),
            format!("{pid} {} 00000000-0000-0000-0000-000000000000\n", 1),
        ] {
            std::fs::write(&file, &stale).unwrap();
            assert_eq!(live_pid(&file), None, "{stale:?} names another process");
            std::fs::write(&file, &stale).unwrap();
            stop_pidfile(&file, Duration::from_millis(100));
            assert!(alive(pid), "{stale:?}: an unrelated process was signalled");
        }
        victim.kill().unwrap();
        victim.wait().unwrap();

        // What this code started, it finds and stops.
        let started = spawn_detached(
            "",
            &["sleep", "30"],
            &dir.path().join("log"),
            &dir.path().join("own.pid"),
        )
        .unwrap();
        assert_eq!(live_pid(&dir.path().join("own.pid")), Some(started));
        stop_pidfile(&dir.path().join("own.pid"), Duration::from_secs(2));
        assert!(!alive(started));
    }

    fn boot_id_for_test() -> String {
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .unwrap()
            .trim()
            .to_string()
    }

    /// What a detached process creates (QEMU's QMP socket, its logs) is private to root
    /// whatever the caller's umask.
    #[test]
    fn detached_processes_create_private_files() {
        let dir = temp();
        let log = dir.path().join("log");
        let pid = spawn_detached("", &["sh", "-c", "umask"], &log, &dir.path().join("p")).unwrap();
        wait_for("sh", Duration::from_secs(5), || !alive(pid)).unwrap();
        assert_eq!(std::fs::read_to_string(&log).unwrap().trim(), "0077");
    }

    #[test]
    fn directories_are_created_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = temp();
        let deep = dir.path().join("a/b");
        private_dir(&deep).unwrap();
        for d in [dir.path().join("a"), deep] {
            let mode = std::fs::metadata(&d).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o700, "{}", d.display());
        }
    }
}
