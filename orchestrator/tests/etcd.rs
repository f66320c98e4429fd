//! The etcd store against a real etcd on loopback: compare-and-swap commits, the election and
//! its fence, watches that survive an etcd restart, and controllers failing over.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Etcd;
use kangaroo_orchestrator::model::{Host, HostState, InstanceType, Name};
use kangaroo_orchestrator::store::etcd::{EtcdStore, EtcdUrl};
use kangaroo_orchestrator::store::{Op, Role, Store, StoreError};

fn host(name: &str) -> Host {
    Host {
        name: Name::new(name).unwrap(),
        provider: Name::new("sim").unwrap(),
        instance_type: InstanceType {
            name: Name::new("m5.large").unwrap(),
            vcpus: 2,
            memory_mib: 8192,
            price_per_hour: 0.096,
        },
        state: HostState::Running,
        underlay: None,
        rented_at: 0,
    }
}

fn etcd_or_skip() -> Option<Etcd> {
    match Etcd::start() {
        Ok(e) => Some(e),
        Err(why) => {
            println!("skipping: {why}");
            None
        }
    }
}

fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(secs) {
        if f() {
            return t0.elapsed();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{what}: not within {secs} s");
}

fn is_leader(s: &EtcdStore) -> bool {
    matches!(s.role(), Role::Leader { .. })
}

#[test]
fn commits_are_compare_and_swap_fenced_by_the_election_and_survive_an_etcd_restart() {
    let Some(mut etcd) = etcd_or_skip() else {
        return;
    };
    let url: EtcdUrl = format!("{}/t1", etcd.url()).parse().unwrap();
    let a = EtcdStore::connect(&url).unwrap();
    assert_eq!(a.load().unwrap().1, 0, "a fresh prefix is empty");
    // Not elected yet: no write.
    assert!(matches!(
        a.commit(0, &[Op::PutHost(host("h0"))]),
        Err(StoreError::NotLeader { leader: None })
    ));
    let (tx, rx) = std::sync::mpsc::channel();
    a.campaign(
        "http://a".into(),
        Duration::from_secs(30),
        Arc::new(move |l| {
            let _ = tx.send(l);
        }),
    );
    assert_eq!(rx.recv_timeout(Duration::from_secs(10)), Ok(true));
    assert!(is_leader(&a));

    // Compare-and-swap on the revision.
    assert_eq!(a.commit(0, &[Op::PutHost(host("h1"))]).unwrap(), 1);
    assert!(matches!(
        a.commit(0, &[Op::PutHost(host("h2"))]),
        Err(StoreError::Conflict {
            expected: 0,
            found: 1
        })
    ));
    assert_eq!(
        a.commit(
            1,
            &[
                Op::PutHost(host("h2")),
                Op::DeleteHost(Name::new("h1").unwrap())
            ]
        )
        .unwrap(),
        2
    );

    // A second controller stands by, names the leader, cannot write, and sees every commit.
    let b = EtcdStore::connect(&url).unwrap();
    b.campaign("http://b".into(), Duration::from_secs(30), Arc::new(|_| {}));
    wait_for("b knows the leader", 10, || {
        b.role()
            == Role::Standby {
                leader: Some("http://a".into()),
            }
    });
    assert!(matches!(
        b.commit(2, &[Op::PutHost(host("h3"))]),
        Err(StoreError::NotLeader { leader: Some(l) }) if l == "http://a"
    ));
    let seen = Arc::new(Mutex::new(Vec::new()));
    {
        let seen = seen.clone();
        b.watch_commits(Arc::new(move |rev| seen.lock().unwrap().push(rev)));
    }
    std::thread::sleep(Duration::from_millis(300));
    let (st, rev) = b.load().unwrap();
    assert_eq!(rev, 2);
    assert_eq!(
        st.hosts.keys().map(|k| k.as_str()).collect::<Vec<_>>(),
        ["h2"]
    );

    // etcd restarts (kill -9): the leader keeps its lease, commits succeed again once etcd
    // is back, and b's watch resumes without missing the commit made right after.
    assert_eq!(a.commit(2, &[Op::PutHost(host("h3"))]).unwrap(), 3);
    wait_for("b's watch sees revision 3", 10, || {
        seen.lock().unwrap().last() == Some(&3)
    });
    etcd.restart();
    let t0 = Instant::now();
    let mut r = a.commit(3, &[Op::PutHost(host("h4"))]);
    while r.is_err() && t0.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(100));
        r = a.commit(3, &[Op::PutHost(host("h4"))]);
    }
    assert_eq!(r.unwrap(), 4, "{}", etcd.log());
    println!("first commit after the etcd restart: {:?}", t0.elapsed());
    wait_for("b's watch resumes and sees revision 4", 20, || {
        seen.lock().unwrap().last() == Some(&4)
    });
    let revs = seen.lock().unwrap().clone();
    let mut sorted = revs.clone();
    sorted.dedup();
    assert_eq!(sorted, revs, "no commit delivered twice: {revs:?}");
    assert!(revs.ends_with(&[3, 4]), "{revs:?}");

    // The fence: revoke a's lease behind its back (as if it had been paused past the
    // lease). Its next renewal is 10 s away, so it still believes it leads; its commit is
    // refused by etcd all the same, and b takes over.
    let revoked = {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let mut c =
                etcd_client::Client::connect([format!("http://127.0.0.1:{}", etcd.port)], None)
                    .await
                    .unwrap();
            let g = c.get("/t1/leader", None).await.unwrap();
            let lease = g.kvs()[0].lease();
            c.lease_revoke(lease).await.unwrap();
        });
        Instant::now()
    };
    assert!(is_leader(&a), "a has not noticed yet");
    assert!(matches!(
        a.commit(4, &[Op::PutHost(host("h5"))]),
        Err(StoreError::NotLeader { .. })
    ));
    wait_for("b leads", 10, || is_leader(&b));
    println!(
        "b took over {:?} after a's lease was revoked",
        revoked.elapsed()
    );
    assert_eq!(b.commit(4, &[Op::PutHost(host("h5"))]).unwrap(), 5);
    let (st, _) = a.load().unwrap();
    assert_eq!(
        st.hosts.keys().map(|k| k.as_str()).collect::<Vec<_>>(),
        ["h2", "h3", "h4", "h5"]
    );
}

#[test]
fn a_standby_takes_over_within_the_lease_when_the_leader_stops() {
    let Some(etcd) = etcd_or_skip() else {
        return;
    };
    let url: EtcdUrl = format!("{}/t2", etcd.url()).parse().unwrap();
    let a = EtcdStore::connect(&url).unwrap();
    a.campaign("http://a".into(), Duration::from_secs(2), Arc::new(|_| {}));
    wait_for("a leads", 10, || is_leader(&a));
    let b = EtcdStore::connect(&url).unwrap();
    b.campaign("http://b".into(), Duration::from_secs(2), Arc::new(|_| {}));
    wait_for("b stands by", 10, || {
        b.role()
            == Role::Standby {
                leader: Some("http://a".into()),
            }
    });
    // Stepping down hands over at once.
    let t0 = Instant::now();
    a.resign();
    wait_for("b leads after a resigned", 5, || is_leader(&b));
    println!("hand-over after a resignation: {:?}", t0.elapsed());
    assert!(!is_leader(&a));
    // A leader that just dies is replaced once its lease runs out: the kill -9 test in
    // tests/failover.rs measures that with whole controllers.
}

#[test]
fn a_bad_etcd_url_or_a_dead_etcd_is_a_clear_error() {
    let e = "etcd://nohost".parse::<EtcdUrl>().unwrap_err();
    assert!(e.contains("HOST:PORT"), "{e}");
    // Nothing listens on port 1.
    let url: EtcdUrl = "etcd://127.0.0.1:1".parse().unwrap();
    let e = EtcdStore::connect(&url).err().unwrap();
    assert!(
        e.to_string().contains("etcd://127.0.0.1:1"),
        "the error names the store: {e}"
    );
}
