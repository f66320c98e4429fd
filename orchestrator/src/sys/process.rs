//! Detached processes named by pid files that cannot be mistaken for another process.
//!
//! A pid file holds `PID START BOOT`: the pid, the process's start time (clock ticks after
//! boot, from `/proc/PID/stat`) and the kernel's boot id. A pid is believed only while the
//! process with it started at that time in this boot, so a pid file left from before a reboot,
//! or a pid reused since, never gets another process signalled. Signals go through a pidfd
//! opened before the check, so the process checked is the process signalled.

#![allow(unsafe_code)]

use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;

/// A process as a pid file names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The process id.
    pub pid: i32,
    /// Start time in clock ticks after boot (`/proc/PID/stat` field 22).
    pub start: u64,
    /// `/proc/sys/kernel/random/boot_id`.
    pub boot: String,
}

impl Identity {
    /// The running process `pid`, if there is one.
    pub fn of(pid: i32) -> Option<Identity> {
        Some(Identity {
            pid,
            start: start_time(pid)?,
            boot: boot_id()?,
        })
    }

    /// The pid file's line.
    pub fn line(&self) -> String {
        format!("{} {} {}\n", self.pid, self.start, self.boot)
    }

    /// Parses a pid file's text; `None` for anything but the three fields (a bare pid, as
    /// older versions wrote, names no process this code can vouch for).
    pub fn parse(text: &str) -> Option<Identity> {
        let mut f = text.split_whitespace();
        let id = Identity {
            pid: f.next()?.parse().ok().filter(|p| *p > 0)?,
            start: f.next()?.parse().ok()?,
            boot: f.next()?.to_string(),
        };
        f.next().is_none().then_some(id)
    }

    /// Whether this process is still running (not a zombie).
    pub fn running(&self) -> bool {
        super::alive(self.pid) && Identity::of(self.pid).as_ref() == Some(self)
    }
}

/// The process named by `pidfile`, if it is running.
pub fn read(pidfile: &Path) -> Option<Identity> {
    let id = Identity::parse(&std::fs::read_to_string(pidfile).ok()?)?;
    id.running().then_some(id)
}

/// Start time of `pid` in clock ticks after boot.
fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name start at field 3; the start time is 22.
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(19)?.parse().ok()
}

fn boot_id() -> Option<String> {
    let id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    Some(id.trim().to_string())
}

/// Sends `signal` to the process `pidfile` names, if it runs; true if it was sent.
pub fn signal(pidfile: &Path, signal: libc::c_int) -> bool {
    let Ok(text) = std::fs::read_to_string(pidfile) else {
        return false;
    };
    let Some(id) = Identity::parse(&text) else {
        return false;
    };
    match pidfd_open(id.pid) {
        // The descriptor names whichever process had the pid when it was opened: if that is
        // the one the file names now, it is the one the signal reaches.
        Some(fd) => id.running() && pidfd_send_signal(&fd, signal),
        // No pidfds (Linux before 5.3): the check and the signal are a moment apart.
        None => id.running() && signal_pid(id.pid, signal),
    }
}

fn pidfd_open(pid: i32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1; no memory
    // is passed.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let fd = i32::try_from(fd).ok().filter(|fd| *fd >= 0)?;
    // SAFETY: `fd` was just returned by the kernel and is owned by nothing else.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn pidfd_send_signal(fd: &OwnedFd, signal: libc::c_int) -> bool {
    use std::os::fd::AsRawFd;
    // SAFETY: a valid pidfd, a signal number, a null siginfo (the kernel fills in a default)
    // and no flags.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    r == 0
}

/// Sends `signal` to `pid` as it is now (for pids just listed, such as a namespace's).
pub fn signal_pid(pid: i32, signal: libc::c_int) -> bool {
    // SAFETY: kill takes a pid and a signal number; no memory is passed.
    unsafe { libc::kill(pid, signal) == 0 }
}

/// Raises this process's soft limit of open files to its hard limit (as a server that holds
/// a descriptor per client should); returns the soft limit in force afterwards.
pub fn raise_open_files_limit() -> u64 {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the limits into the struct it is given, which lives here.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) } != 0 {
        return 1024;
    }
    if l.rlim_cur < l.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: l.rlim_max,
            rlim_max: l.rlim_max,
        };
        // SAFETY: setrlimit reads the struct it is given, which lives here.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            return raised.rlim_cur;
        }
    }
    l.rlim_cur
}

/// In a child between fork and exec: files and sockets it creates are private (mode 0600,
/// directories 0700), whatever this process's umask.
pub fn private_files(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the forked child before exec; umask is async-signal-safe,
    // allocates nothing and cannot fail.
    unsafe {
        cmd.pre_exec(|| {
            libc::umask(0o077);
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_file_lines_round_trip_and_nothing_else_parses() {
        let me = Identity::of(std::process::id() as i32).unwrap();
        assert_eq!(Identity::parse(&me.line()), Some(me.clone()));
        assert!(me.running());
        for bad in [
            "",
            "123",
            "123 4",
            "x 4 b",
            "-1 4 b",
            "0 4 b",
            "1 2 b extra",
        ] {
            assert_eq!(Identity::parse(bad), None, "{bad:?}");
        }
        let later = Identity {
            start: me.start + 1,
            ..me
        };
        assert!(!later.running(), "another start time is another process");
    }
}
