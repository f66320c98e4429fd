//! Two `kangaroo serve` controllers on one etcd driving the local cloud: writes through the
//! standby reach the leader, the leader is killed with -9 in the middle of a deployment and
//! the standby finishes it, and both reconnect after etcd restarts.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{
    apply_shop_until_first_vm, serial, skip_reason, web_page, where_vms_run, Etcd, Serve, Teardown,
};
use serde_json::Value;

fn controller(s: &Serve) -> Value {
    s.json(&["controller"])
}

fn wait_for<T>(what: &str, secs: u64, mut f: impl FnMut() -> Option<T>) -> (T, Duration) {
    let t0 = Instant::now();
    loop {
        if let Some(v) = f() {
            return (v, t0.elapsed());
        }
        assert!(
            t0.elapsed() < Duration::from_secs(secs),
            "{what}: not within {secs} s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn controllers_on_etcd_fail_over_during_a_deployment_and_reconnect_after_etcd_restarts() {
    let _serial = serial();
    if let Some(why) = skip_reason(false) {
        println!("skipping: {why}");
        return;
    }
    let mut etcd = match Etcd::start() {
        Ok(e) => e,
        Err(why) => {
            println!("skipping: {why}");
            return;
        }
    };
    let dir = std::env::temp_dir().join(format!("kgr-fo-{:08x}", rand::random::<u32>()));
    std::fs::create_dir_all(&dir).unwrap();
    let _teardown = Teardown(dir.clone());
    let prefix = kangaroo_orchestrator::server::local_prefix(&dir);
    // Below the ephemeral range (32768-), where a restarted server could find its port taken
    // by an outgoing connection.
    let pa = 20000 + (rand::random::<u16>() % 12000);
    let pb = pa + 1;

    let mut a = Serve::start_on_etcd(&dir, pa, &etcd);
    wait_for("a leads", 15, || {
        (controller(&a)["role"] == "leader").then_some(())
    });
    let b = Serve::start_on_etcd(&dir, pb, &etcd);
    let (cb, _) = wait_for("b stands by", 15, || {
        let c = controller(&b);
        (c["role"] == "standby" && c["leader"].is_string()).then_some(c)
    });
    assert_eq!(cb["leader"], a.url, "{cb}");
    assert!(cb["store"].as_str().unwrap().starts_with("etcd://"), "{cb}");

    // A write through the standby is done by the leader, and the standby serves it back.
    b.ok(&[
        "network",
        "create",
        "shop",
        "--vni",
        "100",
        "--subnet",
        "192.168.100.0/24",
    ]);
    let nets = a.json(&["network", "ls"]);
    assert!(
        nets.to_string().contains("shop"),
        "the leader has it: {nets}"
    );
    wait_for("the standby serves the new network", 5, || {
        b.json(&["network", "ls"])
            .to_string()
            .contains("shop")
            .then_some(())
    });

    // Deploy the web shop (11 VMs) through the standby and kill -9 the leader while it is
    // making the deployment real.
    let apply = apply_shop_until_first_vm(&dir, &b.url, 60);
    a.kill9();
    let killed = Instant::now();
    let _ = apply.wait_with_output();
    let made = kangaroo_orchestrator::sys::netns_with_prefix(&format!("{prefix}-v-")).len();
    println!("leader killed -9 with {made} of 11 VMs made");

    // b leads within the lease (2 s) plus a renewal, and its reconciler completes the
    // deployment: every VM runs exactly once, on the host the state names.
    wait_for("b leads", 15, || {
        (controller(&b)["role"] == "leader").then_some(())
    });
    let took = killed.elapsed();
    println!(
        "b leads {:.2} s after the leader was killed",
        took.as_secs_f64()
    );
    let (placed, done) = wait_for("b completes the deployment", 120, || {
        let w = where_vms_run(&prefix, &b);
        (w.len() == 11 && w.iter().all(|(_, h, on)| on.len() == 1 && &on[0] == h)).then_some(w)
    });
    println!(
        "deployment completed by the new leader {:.1} s after it took over",
        done.as_secs_f64()
    );
    for (vm, host, on) in &placed {
        assert_eq!(on, &vec![host.clone()], "VM {vm} runs once, on {host}");
    }
    let vms = b.json(&["vm", "ls"]);
    let ip_of = |name: &str| {
        vms.as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == name)
            .unwrap()["ip"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let page = web_page(
        &b,
        "web-1",
        &ip_of("web-2"),
        "web-2",
        "web-1 reaches web-2 after the fail-over",
    );
    println!("web-1 -> web-2 after the fail-over: {}", page.trim());

    // The old leader comes back as a standby of b.
    let a = Serve::start_on_etcd(&dir, pa, &etcd);
    let (ca, _) = wait_for("a stands by", 15, || {
        let c = controller(&a);
        (c["role"] == "standby" && c["leader"].is_string()).then_some(c)
    });
    assert_eq!(ca["leader"], b.url, "{ca}");

    // Rent a host and move a VM to it, both through the standby: the leader does them.
    let other = "spare".to_owned();
    a.ok(&[
        "host",
        "add",
        "m5.large",
        "--name",
        &other,
        "--provider",
        "cloud-a",
    ]);
    a.ok(&["vm", "migrate", "cache", "--to", &other]);
    wait_for("the standby sees the move", 5, || {
        let v = a.json(&["vm", "show", "cache"]);
        (v["host"] == other.as_str()).then_some(())
    });
    let w = where_vms_run(&prefix, &b);
    let cache = w.iter().find(|(v, _, _)| v == "cache").unwrap();
    assert_eq!(cache.2, vec![other.clone()], "cache runs once, on {other}");

    // etcd restarts (kill -9): both controllers reconnect, one leads, and a write through
    // the standby succeeds and shows on both.
    let rev_before = controller(&b)["revision"].as_u64().unwrap();
    etcd.restart();
    let restarted = Instant::now();
    wait_for("a write succeeds after the etcd restart", 30, || {
        let (ok, _) = a.cli(&[
            "network",
            "create",
            "after",
            "--vni",
            "101",
            "--subnet",
            "192.168.101.0/24",
        ]);
        ok.then_some(())
    });
    println!(
        "first write after the etcd restart: {:.2} s",
        restarted.elapsed().as_secs_f64()
    );
    wait_for("both controllers serve the write", 10, || {
        let (ra, rb) = (controller(&a), controller(&b));
        (ra["revision"] == rb["revision"]
            && ra["revision"].as_u64().unwrap() > rev_before
            && a.json(&["network", "ls"]).to_string().contains("after"))
        .then_some(())
    });
    let roles: Vec<String> = [&a, &b]
        .iter()
        .map(|s| controller(s)["role"].as_str().unwrap().to_owned())
        .collect();
    let leaders = roles.iter().filter(|r| *r == "leader").count();
    assert_eq!(leaders, 1, "exactly one leader: {roles:?}");
    println!(
        "etcd database after the test: {} KiB",
        etcd.db_bytes() / 1024
    );
}

/// The host whose agent pid file is `host`'s, and whether that agent runs.
fn agent_alive(dir: &std::path::Path, host: &str) -> bool {
    let p = dir.join("local/hosts").join(host).join("agent.pid");
    kangaroo_orchestrator::sys::live_pid(&p).is_some()
}

fn agent_log(dir: &std::path::Path, host: &str) -> String {
    std::fs::read_to_string(dir.join("local/hosts").join(host).join("agent.log"))
        .unwrap_or_default()
}

/// Every VM of `s`'s state runs exactly once, on its recorded host (within `secs`).
fn all_in_place(prefix: &str, s: &Serve, n: usize, secs: u64, what: &str) -> Duration {
    let (_, took) = wait_for(what, secs, || {
        let w = where_vms_run(prefix, s);
        (w.len() == n && w.iter().all(|(_, h, on)| on.len() == 1 && &on[0] == h)).then_some(())
    });
    took
}

#[test]
fn local_hosts_driven_by_agents_survive_a_leader_kill_an_agent_kill_and_an_etcd_restart() {
    let _serial = serial();
    if let Some(why) = skip_reason(false) {
        println!("skipping: {why}");
        return;
    }
    let mut etcd = match Etcd::start() {
        Ok(e) => e,
        Err(why) => {
            println!("skipping: {why}");
            return;
        }
    };
    let dir = std::env::temp_dir().join(format!("kgr-ag-{:08x}", rand::random::<u32>()));
    std::fs::create_dir_all(&dir).unwrap();
    let _teardown = Teardown(dir.clone());
    let prefix = kangaroo_orchestrator::server::local_prefix(&dir);
    // Below the ephemeral range (32768-), where a restarted server could find its port taken
    // by an outgoing connection.
    let pa = 20000 + (rand::random::<u16>() % 12000);
    let pb = pa + 1;
    let extra = [
        "--local-agents",
        "--on-host-lost",
        "recreate",
        "--reconcile-secs",
        "2",
    ];
    let mut a = Serve::start_on_etcd_with(&dir, pa, &etcd, &extra);
    wait_for("a leads", 15, || {
        (controller(&a)["role"] == "leader").then_some(())
    });
    let b = Serve::start_on_etcd_with(&dir, pb, &etcd, &extra);
    wait_for("b stands by", 15, || {
        let c = controller(&b);
        (c["role"] == "standby" && c["leader"].is_string()).then_some(())
    });
    b.ok(&[
        "network",
        "create",
        "shop",
        "--vni",
        "100",
        "--subnet",
        "192.168.100.0/24",
    ]);

    // The web shop through the standby; the leader is killed once the first VM exists.
    let apply = apply_shop_until_first_vm(&dir, &b.url, 60);
    a.kill9();
    let _ = apply.wait_with_output();
    wait_for("b leads", 15, || {
        (controller(&b)["role"] == "leader").then_some(())
    });
    let took = all_in_place(&prefix, &b, 11, 120, "the agents complete the deployment");
    println!(
        "deployment in place {:.1} s after b took over",
        took.as_secs_f64()
    );
    // Each host has its own agent process, which started the host's switch (a controller
    // driving agents never does), and reports: its record says so.
    let hosts = b.json(&["host", "ls"]);
    let names: Vec<String> = hosts
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["name"].as_str().unwrap().to_owned())
        .collect();
    assert!(!names.is_empty());
    for h in &names {
        assert!(agent_alive(&dir, h), "host {h} has a live agent");
        // An agent logs what it did when its pass ends.
        let started = format!("host {h}: switch (re)started");
        let t0 = Instant::now();
        while !agent_log(&dir, h).contains(&started) && t0.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let log = agent_log(&dir, h);
        let procs = std::process::Command::new("pgrep")
            .args(["-af", &format!("agent .*--host {h}$")])
            .output()
            .unwrap();
        assert!(
            log.contains(&started),
            "agent of {h} started its switch:\n{log}\nagent processes:\n{}\nserver log:\n{}\nfiles:\n{}\nswitch log:\n{}",
            String::from_utf8_lossy(&procs.stdout),
            b.log(),
            String::from_utf8_lossy(
                &std::process::Command::new("ls")
                    .args(["-la", "--time-style=full-iso"])
                    .arg(dir.join("local/hosts").join(h))
                    .output()
                    .unwrap()
                    .stdout
            ),
            std::fs::read_to_string(dir.join("local/hosts").join(h).join("switch.log"))
                .unwrap_or_default()
        );
    }
    wait_for("every host's record shows its agent", 10, || {
        let hs = b.json(&["host", "ls"]);
        hs.as_array()
            .unwrap()
            .iter()
            .all(|h| h["agent"] == true)
            .then_some(())
    });
    let serve_log = b.log();
    assert!(
        !serve_log.contains("switch (re)started"),
        "no controller started a switch:\n{serve_log}"
    );
    let vms = b.json(&["vm", "ls"]);
    let ip_of = |vms: &Value, name: &str| {
        vms.as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == name)
            .unwrap()["ip"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let page = web_page(
        &b,
        "web-1",
        &ip_of(&vms, "web-2"),
        "web-2",
        "web-1 reaches web-2",
    );
    println!(
        "web-1 -> web-2 through the agents' switches: {}",
        page.trim()
    );

    // A new host (its agent started when it is rented) and a move to it.
    let a = Serve::start_on_etcd_with(&dir, pa, &etcd, &extra);
    wait_for("a stands by", 15, || {
        (controller(&a)["role"] == "standby").then_some(())
    });
    a.ok(&[
        "host",
        "add",
        "m5.large",
        "--name",
        "spare",
        "--provider",
        "cloud-a",
    ]);
    let t0 = Instant::now();
    a.ok(&["vm", "migrate", "cache", "--to", "spare"]);
    println!(
        "cache moved to the new host in {:.2} s",
        t0.elapsed().as_secs_f64()
    );
    let v = b.json(&["vm", "show", "cache"]);
    assert_eq!(v["host"], "spare", "{v}");
    assert!(v.get("moving_to").is_none_or(Value::is_null), "{v}");
    all_in_place(&prefix, &b, 11, 30, "cache runs once, on spare");
    let page = web_page(
        &b,
        "web-1",
        &ip_of(&vms, "cache"),
        "cache",
        "web-1 reaches cache",
    );
    println!("web-1 -> cache on spare: {}", page.trim());

    // spare's agent dies: the host is lost within the lease (2 s) and the leader's sweep
    // (1 s), and cache is re-created on another host, whose agent makes it.
    let pid = kangaroo_orchestrator::sys::live_pid(&dir.join("local/hosts/spare/agent.pid"))
        .expect("spare's agent runs");
    kangaroo_orchestrator::sys::process::signal_pid(pid, libc::SIGKILL);
    let killed = Instant::now();
    wait_for("spare is lost", 10, || {
        let hs = b.json(&["host", "ls"]);
        hs.as_array()
            .unwrap()
            .iter()
            .any(|h| h["name"] == "spare" && h["state"] == "lost")
            .then_some(())
    });
    let lost_after = killed.elapsed();
    println!(
        "spare lost {:.2} s after its agent was killed",
        lost_after.as_secs_f64()
    );
    assert!(lost_after < Duration::from_secs(4), "{lost_after:?}");
    let v = b.json(&["vm", "show", "cache"]);
    assert_ne!(v["host"], "spare", "cache re-created elsewhere: {v}");
    assert_eq!(v["state"], "running", "{v}");
    let took = all_in_place(&prefix, &b, 11, 30, "cache runs once, on its new host");
    println!(
        "cache running on {} {:.1} s after spare was lost",
        v["host"],
        took.as_secs_f64()
    );

    // A VM created now is made by its host's agent as soon as it sees the commit.
    let hosts_before = b.json(&["host", "ls"]).as_array().unwrap().len();
    let t0 = Instant::now();
    a.ok(&[
        "vm",
        "create",
        "early",
        "--vcpus",
        "0.25",
        "--memory",
        "256MiB",
        "--network",
        "shop",
    ]);
    let answered = t0.elapsed();
    all_in_place(&prefix, &b, 12, 30, "early runs on its host");
    let ran = t0.elapsed();
    let early = b.json(&["vm", "show", "early"]);
    let rented = b.json(&["host", "ls"]).as_array().unwrap().len() > hosts_before;
    println!(
        "VM created through the standby: answered in {:.2} s, running on {} {:.2} s after the request ({})",
        answered.as_secs_f64(),
        early["host"],
        ran.as_secs_f64(),
        if rented {
            "a host rented for it: its agent and switch started first"
        } else {
            "on a host already running"
        }
    );

    // etcd restarts: the agents and controllers reconnect; a VM created afterwards is made
    // by its host's agent, and every VM is still in place.
    etcd.restart();
    let restarted = Instant::now();
    wait_for("a create succeeds after the etcd restart", 30, || {
        let (ok, _) = a.cli(&[
            "vm",
            "create",
            "late",
            "--vcpus",
            "0.25",
            "--memory",
            "256MiB",
            "--network",
            "shop",
        ]);
        ok.then_some(())
    });
    let took = all_in_place(&prefix, &b, 13, 30, "late runs on its host");
    println!(
        "VM created after the etcd restart running {:.1} s after the restart ({:.1} s after its create)",
        restarted.elapsed().as_secs_f64(),
        took.as_secs_f64()
    );
    let late = b.json(&["vm", "show", "late"]);
    let host = late["host"].as_str().unwrap();
    assert!(agent_alive(&dir, host), "late's host {host} has its agent");
    let vms = b.json(&["vm", "ls"]);
    // Its host and web-1's peer with each other (their agents saw the new host).
    let web1_host = b.json(&["vm", "show", "web-1"])["host"]
        .as_str()
        .unwrap()
        .to_owned();
    let peers_of = |h: &str| -> Vec<String> {
        let (ok, out) = b.cli(&["--json", "host", "tunnels", h]);
        if !ok {
            return Vec::new();
        }
        serde_json::from_str::<Value>(&out)
            .ok()
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|t| t["peer"].as_str().map(str::to_owned))
            .collect()
    };
    let t0 = Instant::now();
    while !(peers_of(host).contains(&web1_host) && peers_of(&web1_host).contains(&host.to_owned()))
    {
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "{host} and {web1_host} peer: {:?} / {:?}\nagent of {host}:\n{}\nagent of {web1_host}:\n{}",
            peers_of(host),
            peers_of(&web1_host),
            agent_log(&dir, host),
            agent_log(&dir, &web1_host)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let switch = |h: &str, path: &str| {
        let sock = dir.join("local/hosts").join(h).join("switch.sock");
        let o = std::process::Command::new("curl")
            .args(["-s", "-m", "2", "--unix-socket"])
            .arg(&sock)
            .arg(format!("http://switch{path}"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let diag = || {
        [host, web1_host.as_str()]
            .iter()
            .map(|h| {
                format!(
                    "== {h}\nagent:\n{}\nports: {}\npeers: {}\nfdb: {}\n",
                    agent_log(&dir, h),
                    switch(h, "/v1/ports"),
                    switch(h, "/v1/peers"),
                    switch(h, "/v1/fdb")
                )
            })
            .collect::<String>()
    };
    let reached = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        web_page(
            &b,
            "late",
            &ip_of(&vms, "web-1"),
            "web-1",
            "late reaches web-1",
        )
    }));
    assert!(
        reached.is_ok(),
        "late reaches web-1\n{}\nvms: {vms}\nserver log:\n{}",
        diag(),
        b.log()
    );
    let roles: Vec<String> = [&a, &b]
        .iter()
        .map(|s| controller(s)["role"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        roles.iter().filter(|r| *r == "leader").count(),
        1,
        "exactly one leader: {roles:?}"
    );
}
