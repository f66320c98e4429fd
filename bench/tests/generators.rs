//! `kangaroo-bench flood` end to end (root): each frame generator puts its frames on a veth pair
//! between two namespaces of the test's own, and `auto` falls back in order when a generator is
//! refused (forced with `KANGAROO_BENCH_REFUSE`, so the fallbacks run on machines that allow
//! every generator too).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Output};

use serde_json::Value;

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

fn ip(args: &[&str]) {
    let o = Command::new("ip").args(args).output().unwrap();
    assert!(
        o.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Two namespaces joined by a veth pair (`tx0` in the sender, `rx0` in the receiver), removed on
/// drop, also when the test panics.
struct Wire {
    tx: String,
    rx: String,
}

impl Wire {
    fn new(tag: &str) -> Wire {
        let id = format!("{:x}{tag}", std::process::id());
        let w = Wire {
            tx: format!("kbg{id}-tx"),
            rx: format!("kbg{id}-rx"),
        };
        ip(&["netns", "add", &w.tx]);
        ip(&["netns", "add", &w.rx]);
        ip(&[
            "link", "add", "tx0", "netns", &w.tx, "type", "veth", "peer", "name", "rx0", "netns",
            &w.rx,
        ]);
        ip(&["-n", &w.tx, "link", "set", "tx0", "up"]);
        ip(&["-n", &w.rx, "link", "set", "rx0", "up"]);
        w
    }

    /// Frames `rx0` took in (delivered or dropped for lack of room).
    fn arrived(&self) -> (u64, u64) {
        let read = |c: &str| -> u64 {
            let o = Command::new("ip")
                .args(["netns", "exec", &self.rx, "cat"])
                .arg(format!("/sys/class/net/rx0/statistics/{c}"))
                .output()
                .unwrap();
            String::from_utf8_lossy(&o.stdout).trim().parse().unwrap()
        };
        (read("rx_packets"), read("rx_dropped"))
    }

    fn flood(&self, generator: &str, refuse: &str) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.tx])
            .arg(env!("CARGO_BIN_EXE_kangaroo-bench"))
            .args([
                "flood",
                "tx0",
                "--src-mac",
                "02:00:00:00:0c:01",
                "--dst-mac",
                "02:00:00:00:0c:02",
                "--src-ip",
                "10.98.0.1",
                "--dst-ip",
                "10.98.0.2",
                "--seconds",
                "0.5",
                "--generator",
                generator,
            ])
            .env("KANGAROO_BENCH_REFUSE", refuse)
            .output()
            .unwrap()
    }

    /// Floods and checks that what the generator says it sent reached the other end; returns
    /// its report.
    fn flood_ok(&self, generator: &str, refuse: &str) -> Value {
        let before = self.arrived();
        let o = self.flood(generator, refuse);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "flood --generator {generator}: {err}");
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        let after = self.arrived();
        let sent = v["sent"].as_u64().unwrap();
        let (got, dropped) = (after.0 - before.0, after.1 - before.1);
        println!("{generator} (refusing {refuse:?}): {v}; rx0 got {got}, dropped {dropped}\n{err}");
        assert!(sent > 1000, "a real flood: {v}");
        assert!(got > 0, "frames reached rx0: {v}");
        // Every frame counted as sent went onto the wire: the receiver took it or dropped it.
        assert!(
            got + dropped >= sent,
            "rx0 saw {got} + {dropped} dropped of {sent} sent: {v}"
        );
        assert!(v["pps"].as_f64().unwrap() > 0.0, "{v}");
        v
    }
}

impl Drop for Wire {
    fn drop(&mut self) {
        for ns in [&self.tx, &self.rx] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

#[test]
fn each_generator_puts_its_frames_on_the_wire() {
    if !is_root() {
        println!("skipping: needs root (namespaces)");
        return;
    }
    let w = Wire::new("each");
    for g in ["afxdp", "packet"] {
        let v = w.flood_ok(g, "");
        assert_eq!(v["generator"], g, "{v}");
        assert_eq!(v["passed_over"], serde_json::json!([]), "{v}");
    }
    // Live frames: refused on some machines (EPERM where root lacks CAP_SYS_RESOURCE).
    let o = w.flood("live-frames", "");
    if o.status.success() {
        let v = w.flood_ok("live-frames", "");
        assert_eq!(v["generator"], "live-frames", "{v}");
    } else {
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("live-frames"), "the refusal names it: {err}");
        println!("skipping the live-frames generator: this kernel refuses it: {err}");
    }
}

#[test]
fn auto_falls_back_in_order() {
    if !is_root() {
        println!("skipping: needs root (namespaces)");
        return;
    }
    let w = Wire::new("auto");
    let v = w.flood_ok("auto", "live-frames");
    assert_eq!(v["generator"], "afxdp", "{v}");
    assert_eq!(v["passed_over"][0]["generator"], "live-frames", "{v}");
    assert!(
        v["passed_over"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("KANGAROO_BENCH_REFUSE"),
        "{v}"
    );
    let v = w.flood_ok("auto", "live-frames,afxdp");
    assert_eq!(v["generator"], "packet", "{v}");
    assert_eq!(v["passed_over"].as_array().unwrap().len(), 2, "{v}");
    // With nothing refused, auto takes the fastest the kernel allows.
    let v = w.flood_ok("auto", "");
    let g = v["generator"].as_str().unwrap();
    assert!(["live-frames", "afxdp"].contains(&g), "{v}");
    if g == "afxdp" {
        let why = v["passed_over"][0]["reason"].as_str().unwrap();
        println!("live frames refused here: {why}");
        assert_eq!(v["passed_over"][0]["generator"], "live-frames", "{v}");
    }
    // Nothing left: a clear failure naming every generator and why.
    let o = w.flood("auto", "live-frames,afxdp,packet");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    for g in ["live-frames", "afxdp", "packet"] {
        assert!(err.contains(&format!("{g}: refused")), "{err}");
    }
    // A name that is not a generator is an error, not a silent default.
    let o = w.flood("auto", "dpdk");
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("KANGAROO_BENCH_REFUSE"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}
