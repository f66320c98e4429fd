//! Small system calls the standard library does not wrap. All `unsafe` here.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::AsRawFd;

/// Moves the calling thread into the network namespace `ns` (an open `/run/netns/NAME` or
/// `/proc/PID/ns/net`). Interface indexes in BPF map updates and XDP test runs then resolve
/// there.
///
/// # Errors
/// The OS error (`EPERM` without `CAP_SYS_ADMIN`, `EINVAL` for a file that is not a network
/// namespace).
pub fn enter_netns(ns: &std::fs::File) -> io::Result<()> {
    // SAFETY: `ns` is an open file for the duration of the call; setns only reads the
    // descriptor and changes this thread's namespace.
    let r = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
