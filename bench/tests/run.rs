//! `kangaroo-bench run` end to end (root): a tiny suite produces a valid result file, report and
//! chart; an interrupted run leaves no namespace and no process behind.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

fn skip_reason() -> Option<String> {
    let root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false);
    if !root {
        return Some("needs root (namespaces)".into());
    }
    let switch =
        PathBuf::from(env!("CARGO_BIN_EXE_kangaroo-bench")).with_file_name("kangaroo-switch");
    if !switch.is_file() {
        return Some(format!("{} is not built", switch.display()));
    }
    None
}

fn out_dir(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("kb-test-{tag}-{:08x}", rand_u32()))
}

fn rand_u32() -> u32 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    t.subsec_nanos() ^ std::process::id()
}

fn num(v: &Value, p: &str) -> f64 {
    v.pointer(p).and_then(Value::as_f64).unwrap_or(f64::NAN)
}

#[test]
fn a_tiny_suite_writes_valid_results() {
    if let Some(why) = skip_reason() {
        println!("skipping: {why}");
        return;
    }
    let out = out_dir("tiny");
    let o = Command::new(env!("CARGO_BIN_EXE_kangaroo-bench"))
        .args([
            "run",
            "--contenders",
            "bridge,kangaroo-xdp",
            "--workloads",
            "udp-rr,frames-64",
            "--reps",
            "1",
            "--seconds",
            "1",
            "--sweeps",
            "none",
            "--out",
        ])
        .arg(&out)
        // The frames come from the last fallback, AF_PACKET, whatever this kernel allows.
        .env("KANGAROO_BENCH_REFUSE", "live-frames,afxdp")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    assert_eq!(r["schema"], "kangaroo-bench/1");
    for k in ["kernel", "cpu_model", "git_revision"] {
        assert!(
            r["machine"][k].as_str().is_some_and(|s| !s.is_empty()),
            "machine.{k}: {r}"
        );
    }
    assert!(r["machine"]["cores"].as_u64().unwrap() >= 1);
    assert_eq!(r["interrupted"], false);
    let samples = r["samples"].as_array().unwrap();
    assert_eq!(samples.len(), 4, "{samples:?}");
    for s in samples.iter().filter(|s| s["workload"] == "frames-64") {
        assert_eq!(s["unit"], "Mpps");
        assert!(num(s, "/value") > 0.0, "a measured figure: {s}");
        assert_eq!(s["generator"], "packet", "the generator is recorded: {s}");
        assert_eq!(s["extra"]["generator"], "packet", "{s}");
    }
    let frames = r["summary"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["contender"] == "kangaroo-xdp" && x["workload"] == "frames-64")
        .unwrap();
    assert_eq!(frames["generator"], "packet", "{frames}");
    assert!(
        num(frames, "/ratio") > 0.0,
        "same generator, so a ratio: {frames}"
    );
    for s in samples.iter().filter(|s| s["workload"] == "udp-rr") {
        assert!(s.get("generator").is_none(), "{s}");
        assert_eq!(s["unit"], "us p50");
        let p50 = num(s, "/value");
        assert!(p50 > 0.0 && p50 < 100_000.0, "{s}");
        assert!(num(s, "/extra/p99_us") >= p50, "{s}");
        assert_eq!(s["extra"]["lost"], 0, "{s}");
    }
    let summary = r["summary"].as_array().unwrap();
    let k = summary
        .iter()
        .find(|x| x["contender"] == "kangaroo-xdp" && x["workload"] == "udp-rr")
        .unwrap();
    assert_eq!(k["baseline"], "bridge");
    assert!(num(k, "/ratio") > 0.0, "{k}");
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        report.contains("## udp-rr") && report.contains("x bridge"),
        "{report}"
    );
    assert!(report.contains("| bridge | packet |"), "{report}");
    let svg = std::fs::read_to_string(out.join("udp-rr.svg")).unwrap();
    assert!(svg.starts_with("<svg"));
    println!("{report}");
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn tiny_sweeps_write_valid_results() {
    if let Some(why) = skip_reason() {
        println!("skipping: {why}");
        return;
    }
    let out = out_dir("sweeps");
    let o = Command::new(env!("CARGO_BIN_EXE_kangaroo-bench"))
        .args([
            "run",
            "--contenders",
            "none",
            "--sweeps",
            "fdb-size,ports,peers",
            "--fdb-sizes",
            "3000",
            "--port-counts",
            "3",
            "--peer-counts",
            "3",
            "--reps",
            "1",
            "--seconds",
            "1",
            "--out",
        ])
        .arg(&out)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    let r: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    assert_eq!(r["schema"], "kangaroo-bench/1");
    assert!(r["samples"].as_array().unwrap().is_empty());
    let sweeps = r["sweeps"].as_array().unwrap();
    // Three sweeps, one point each, two figures per point.
    assert_eq!(sweeps.len(), 6, "{sweeps:?}");
    let first_generator =
        sweeps.iter().find(|s| s["figure"] != "udp-rr").unwrap()["generator"].clone();
    for s in sweeps {
        assert_eq!(s["mode"], "xdp", "{s}");
        assert!(num(s, "/value") > 0.0, "a measured figure: {s}");
        if s["figure"] != "udp-rr" {
            // The fastest generator this kernel allows, and the same one for every figure.
            let g = s["generator"].as_str().unwrap_or("none");
            assert!(["live-frames", "afxdp"].contains(&g), "{s}");
            assert_eq!(s["generator"], first_generator, "{s}");
        }
    }
    let find = |sweep: &str, figure: &str| {
        sweeps
            .iter()
            .find(|s| s["sweep"] == sweep && s["figure"] == figure)
            .unwrap_or_else(|| panic!("no {sweep}/{figure} in {sweeps:?}"))
    };
    // The table really held the MACs: 3,000 sources plus the two VMs.
    let fdb = find("fdb-size", "frames-64");
    assert_eq!(fdb["x"], 3000);
    assert!(num(fdb, "/extra/fdb_entries") >= 3002.0, "{fdb}");
    assert!(num(fdb, "/extra/received") > 0.0, "{fdb}");
    assert_eq!(find("ports", "udp-rr")["x"], 3);
    // Broadcast reached the real peer, and the two further peers got their copies too.
    let bum = find("peers", "bum-64");
    assert_eq!(bum["extra"]["expected_copies_per_frame"], 3);
    assert!(num(bum, "/extra/received_at_peer_b") > 0.0, "{bum}");
    assert!(num(bum, "/extra/copies_at_other_peers") > 0.0, "{bum}");
    let summary = r["sweep_summary"].as_array().unwrap();
    assert_eq!(summary.len(), 6, "{summary:?}");
    assert!(summary.iter().all(|x| num(x, "/ratio_to_first") == 1.0));
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    for h in ["## Sweep: fdb-size", "## Sweep: ports", "## Sweep: peers"] {
        assert!(report.contains(h), "{h} in {report}");
    }
    for f in [
        "sweep-fdb-size-frames-64.svg",
        "sweep-ports-udp-rr.svg",
        "sweep-peers-bum-64.svg",
    ] {
        let svg = std::fs::read_to_string(out.join(f)).unwrap();
        assert!(svg.starts_with("<svg"), "{f}");
    }
    println!("{report}\n{err}");
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn an_interrupted_run_leaves_nothing_behind() {
    if let Some(why) = skip_reason() {
        println!("skipping: {why}");
        return;
    }
    let out = out_dir("int");
    // Its own process group, as a terminal's Ctrl-C would reach it and its children.
    let mut child = {
        use std::os::unix::process::CommandExt;
        Command::new(env!("CARGO_BIN_EXE_kangaroo-bench"))
            .args([
                "run",
                "--contenders",
                "kangaroo-afxdp-overlay,kernel-vxlan",
                "--workloads",
                "tcp-1",
                "--reps",
                "3",
                "--seconds",
                "5",
                "--out",
            ])
            .arg(&out)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap()
    };
    let prefix = format!("kb{:x}-", child.id());
    // Interrupt in the middle of a measurement: once its namespaces exist and traffic runs.
    let deadline = Instant::now() + Duration::from_secs(30);
    while kangaroo_bench::net::namespaces_with_prefix(&prefix).len() < 4 {
        assert!(Instant::now() < deadline, "the run built its topology");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_secs(2));
    let pgid = format!("-{}", child.id());
    assert!(Command::new("kill")
        .args(["-INT", "--", &pgid])
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the run stops after Ctrl-C");
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    println!("exit {status}; stderr:\n{err}");
    assert_eq!(status.code(), Some(130), "{err}");
    let left = kangaroo_bench::net::namespaces_with_prefix(&prefix);
    assert!(left.is_empty(), "namespaces left: {left:?}");
    let procs = Command::new("pgrep")
        .args(["-f", &prefix])
        .output()
        .unwrap();
    assert!(
        procs.stdout.is_empty(),
        "processes left: {}",
        String::from_utf8_lossy(&procs.stdout)
    );
    // No XDP program survives either: every interface it used was inside those namespaces.
    let r: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    assert_eq!(r["interrupted"], true);
    let _ = std::fs::remove_dir_all(&out);
}
