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
    let pa = 20000 + (rand::random::<u16>() % 20000);
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
    let made = kangaroo_orchestrator::infra::sys::netns_with_prefix(&format!("{prefix}-v-")).len();
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
