//! The service on simulated providers, without root: placement and renting, migration
//! bookkeeping, lost-host policies, application migration, and state that survives a restart.

use std::collections::BTreeMap;

use super::*;
use crate::model::{Host, HostState, NestedVm, VmState};
use crate::store::RedbStore;

struct Fixture {
    dir: tempfile::TempDir,
    service: Service,
}

const PROVIDERS: [(&str, &str); 2] = [("east", "ec2-2026"), ("west", "ec2-2014")];

fn open(dir: &std::path::Path) -> Service {
    let store = RedbStore::open(dir).unwrap();
    let providers: Vec<(String, String)> = PROVIDERS
        .iter()
        .map(|(n, c)| ((*n).to_owned(), (*c).to_owned()))
        .collect();
    Service::new(Box::new(store), &providers, PackOptions::default()).unwrap()
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let service = open(dir.path());
    service
        .create_network(&NetworkRequest {
            name: "net".into(),
            vni: 7,
            subnet: "192.168.7.0/24".into(),
        })
        .unwrap();
    Fixture { dir, service }
}

fn vm(name: &str, vcpus: f64, memory: &str) -> VmRequest {
    VmRequest {
        name: name.into(),
        vcpus,
        memory: memory.into(),
        network: "net".into(),
        image: None,
        driver: None,
        app: None,
        affinity: None,
        anti_affinity: None,
        host: None,
        provider: None,
    }
}

fn host_of(s: &Service, vm: &str) -> Host {
    let v = s.vm(vm).unwrap();
    s.hosts().into_iter().find(|h| h.name == v.host).unwrap()
}

#[test]
fn a_vm_rents_the_cheapest_host_that_fits_and_the_next_packs_beside_it() {
    let f = fixture();
    let s = &f.service;
    let a = s.create_vm(&vm("a", 0.5, "512MiB")).unwrap();
    assert_eq!(s.hosts().len(), 1, "the first VM rents one host");
    let h = host_of(s, "a");
    assert_eq!(
        h.provider.as_str(),
        "east",
        "the first provider is the default"
    );
    assert_eq!(h.state, HostState::Running, "a simulated host runs at once");
    // The cheapest type of the catalog that holds the VM.
    let east = &s.providers()[0];
    let cheapest = east
        .instance_types
        .iter()
        .filter(|t| {
            let cap = s.options().usable(t);
            cap.cpu_quarters >= 2 && cap.memory_mib >= 512
        })
        .map(|t| t.price_per_hour)
        .fold(f64::INFINITY, f64::min);
    assert_eq!(h.instance_type.price_per_hour, cheapest, "{h:?}");
    // Addresses from .2, MACs derived from them.
    assert_eq!(a.ip.to_string(), "192.168.7.2");
    assert_eq!(a.mac, "02:6b:c0:a8:07:02");
    // A second small VM goes beside it when it fits, and gets the next address.
    let cap = s.options().usable(&h.instance_type);
    assert!(
        cap.cpu_quarters >= 4 && cap.memory_mib >= 1024,
        "the cheapest type holds two such VMs: {cap:?}"
    );
    let b = s.create_vm(&vm("b", 0.5, "512MiB")).unwrap();
    assert_eq!(b.host, a.host, "packed on the rented host");
    assert_eq!(b.ip.to_string(), "192.168.7.3");
    assert_eq!(s.hosts().len(), 1);
    // The bill counts the one host.
    let bill = s.billing();
    assert!((bill.cost_per_hour - h.instance_type.price_per_hour).abs() < 1e-9);
}

#[test]
fn anti_affinity_spreads_and_requests_that_cannot_fit_change_nothing() {
    let f = fixture();
    let s = &f.service;
    for n in ["x", "y"] {
        let mut r = vm(n, 0.25, "256MiB");
        r.anti_affinity = Some("ha".into());
        s.create_vm(&r).unwrap();
    }
    assert_ne!(s.vm("x").unwrap().host, s.vm("y").unwrap().host);
    let rev = s.revision();
    let before = s.snapshot();
    // Larger than every instance type.
    let e = s.create_vm(&vm("huge", 4096.0, "4TiB")).unwrap_err();
    assert!(
        matches!(e, ServiceError::Conflict(_) | ServiceError::Invalid { .. }),
        "{e}"
    );
    // A name taken, a network that does not exist.
    assert!(s.create_vm(&vm("x", 0.25, "256MiB")).is_err());
    let mut r = vm("z", 0.25, "256MiB");
    r.network = "nowhere".into();
    let e = s.create_vm(&r).unwrap_err();
    assert!(
        matches!(&e, ServiceError::Invalid { field, .. } if field == "network"),
        "{e}"
    );
    assert_eq!(e.to_string(), "network: no network named nowhere");
    assert_eq!(s.revision(), rev, "a refused request commits nothing");
    assert_eq!(s.snapshot(), before);
}

#[test]
fn state_survives_a_restart() {
    let f = fixture();
    f.service.create_vm(&vm("a", 1.0, "1GiB")).unwrap();
    let before = f.service.snapshot();
    let rev = f.service.revision();
    let Fixture { dir, service } = f;
    drop(service);
    let again = open(dir.path());
    assert_eq!(again.snapshot(), before);
    assert_eq!(again.revision(), rev);
}

#[test]
fn a_migration_moves_the_record_or_leaves_it_as_it_was() {
    let f = fixture();
    let s = &f.service;
    s.create_vm(&vm("a", 0.5, "512MiB")).unwrap();
    // Another host of the same provider to move to.
    let to = s
        .add_host(&HostRequest {
            name: Some("spare".into()),
            provider: Some("east".into()),
            instance_type: host_of(s, "a").instance_type.name.to_string(),
        })
        .unwrap();
    let moved = s
        .migrate_vm("a", &MigrateRequest { to: "spare".into() })
        .unwrap();
    assert_eq!(moved.host, to.name);
    assert_eq!(moved.moving_to, None, "no move left recorded as in flight");
    assert_eq!(s.task("a"), None, "the task ended with the operation");
    assert_eq!(moved.ip, s.vm("a").unwrap().ip, "the address moves with it");
    // Back is fine; to a host that does not exist is refused and changes nothing.
    let rev = s.revision();
    let e = s
        .migrate_vm(
            "a",
            &MigrateRequest {
                to: "nowhere".into(),
            },
        )
        .unwrap_err();
    assert!(
        matches!(e, ServiceError::NotFound { kind: "host", .. }),
        "{e}"
    );
    assert_eq!(s.revision(), rev);
    assert_eq!(s.vm("a").unwrap().host, to.name);
    // A host that is full is refused with what is free and what is needed.
    let tiny = s
        .add_host(&HostRequest {
            name: Some("tiny".into()),
            provider: Some("east".into()),
            instance_type: cheapest_type(s, "east"),
        })
        .unwrap();
    let cap = s.options().usable(&tiny.instance_type);
    let mut filler = vm("filler", f64::from(cap.cpu_quarters) / 4.0, "256MiB");
    filler.memory = format!("{}MiB", cap.memory_mib / 256 * 256);
    filler.host = Some("tiny".into());
    s.create_vm(&filler).unwrap();
    let e = s
        .migrate_vm("a", &MigrateRequest { to: "tiny".into() })
        .unwrap_err()
        .to_string();
    assert!(e.contains("free") && e.contains("needs"), "{e}");
    assert_eq!(s.vm("a").unwrap().host, to.name, "the refused move left it");
}

fn cheapest_type(s: &Service, provider: &str) -> String {
    let p = s
        .providers()
        .iter()
        .find(|p| p.name.as_str() == provider)
        .unwrap();
    p.instance_types
        .iter()
        .min_by(|a, b| a.price_per_hour.total_cmp(&b.price_per_hour))
        .unwrap()
        .name
        .to_string()
}

/// Two hosts with agents, one VM on each, then host `h1`'s agent stops reporting.
/// Returns the fixture, what the sweep reported and `v1` as it was before.
fn lose_a_host(policy: HostLostPolicy) -> (Fixture, Vec<String>, NestedVm) {
    let f = fixture();
    let s = &f.service;
    let ty = host_of_type(s);
    for h in ["h1", "h2"] {
        s.add_host(&HostRequest {
            name: Some(h.into()),
            provider: Some("east".into()),
            instance_type: ty.clone(),
        })
        .unwrap();
    }
    for (v, h) in [("v1", "h1"), ("v2", "h2")] {
        let mut r = vm(v, 0.25, "256MiB");
        r.host = Some(h.into());
        s.create_vm(&r).unwrap();
    }
    let both: BTreeMap<String, Option<String>> = [("h1".into(), None), ("h2".into(), None)]
        .into_iter()
        .collect();
    s.sweep_agents(&both, policy).unwrap();
    assert!(s.hosts().iter().all(|h| h.agent), "agents recorded");
    let only_h2: BTreeMap<String, Option<String>> =
        [("h2".into(), Some("key2".into()))].into_iter().collect();
    let v1 = s.vm("v1").unwrap();
    let report = s.sweep_agents(&only_h2, policy).unwrap();
    (f, report, v1)
}

fn host_of_type(s: &Service) -> String {
    // A type with room for a few small VMs.
    let p = &s.providers()[0];
    p.instance_types
        .iter()
        .filter(|t| s.options().usable(t).cpu_quarters >= 8)
        .min_by(|a, b| a.price_per_hour.total_cmp(&b.price_per_hour))
        .unwrap()
        .name
        .to_string()
}

#[test]
fn a_lost_host_leaves_its_vms_lost_and_gets_them_back_with_its_agent() {
    let (f, report, _) = lose_a_host(HostLostPolicy::Leave);
    let s = &f.service;
    let state = |h: &str| {
        s.hosts()
            .into_iter()
            .find(|x| x.name.as_str() == h)
            .unwrap()
    };
    assert_eq!(state("h1").state, HostState::Lost, "{report:?}");
    assert_eq!(state("h2").public_key.as_deref(), Some("key2"));
    assert_eq!(s.vm("v1").unwrap().state, VmState::Lost);
    assert_eq!(s.vm("v2").unwrap().state, VmState::Running);
    assert!(
        report.iter().any(|l| l.contains("host h1 is lost")),
        "{report:?}"
    );
    // The agent comes back: the host and its VM run again.
    let both: BTreeMap<String, Option<String>> = [("h1".into(), None), ("h2".into(), None)]
        .into_iter()
        .collect();
    let report = s.sweep_agents(&both, HostLostPolicy::Leave).unwrap();
    assert!(
        report.iter().any(|l| l.contains("h1 is back")),
        "{report:?}"
    );
    assert_eq!(state("h1").state, HostState::Running);
    assert_eq!(s.vm("v1").unwrap().state, VmState::Running);
}

#[test]
fn a_lost_host_s_vms_are_recreated_elsewhere_keeping_name_address_and_mac() {
    let (f, report, before_sweep) = lose_a_host(HostLostPolicy::Recreate);
    let s = &f.service;
    let v1 = s.vm("v1").unwrap();
    assert_eq!(v1.host.as_str(), "h2", "{report:?}");
    assert_eq!(v1.state, VmState::Running);
    assert_eq!((v1.ip, v1.mac.clone()), (before_sweep.ip, before_sweep.mac));
    assert!(
        report.iter().any(|l| l.contains("VM v1 re-created on h2")),
        "{report:?}"
    );
}

#[test]
fn an_application_moves_to_another_provider_and_its_hosts_are_released() {
    let f = fixture();
    let s = &f.service;
    for n in ["web", "db", "cache"] {
        let mut r = vm(n, 0.5, "512MiB");
        r.app = Some("shop".into());
        s.create_vm(&r).unwrap();
    }
    let mut other = vm("other", 0.5, "512MiB");
    other.app = Some("blog".into());
    other.anti_affinity = Some("apart".into());
    s.create_vm(&other).unwrap();
    let r = s
        .migrate_app("shop", &AppMigrateRequest { to: "west".into() })
        .unwrap();
    assert_eq!(r.moved.len(), 3, "{r:?}");
    assert!(!r.rented.is_empty());
    for m in &r.moved {
        let h = host_of(s, m.vm.as_str());
        assert_eq!(h.provider.as_str(), "west", "{m:?}");
        assert_eq!(m.to, h.name);
    }
    // The other application stays where it was; hosts left empty are released.
    assert_eq!(host_of(s, "other").provider.as_str(), "east");
    for h in &r.released {
        assert!(s.hosts().iter().all(|x| &x.name != h), "{h} released");
    }
    assert!(s
        .hosts()
        .iter()
        .all(|h| s.snapshot().vms.values().any(|v| v.host == h.name)));
    // Moving it again is a no-op: every member is already there.
    let again = s
        .migrate_app("shop", &AppMigrateRequest { to: "west".into() })
        .unwrap();
    assert!(
        again.moved.is_empty() && again.rented.is_empty(),
        "{again:?}"
    );
    // Unknown applications and providers are named.
    assert!(matches!(
        s.migrate_app("nope", &AppMigrateRequest { to: "west".into() })
            .unwrap_err(),
        ServiceError::NotFound {
            kind: "application",
            ..
        }
    ));
    assert!(matches!(
        s.migrate_app("shop", &AppMigrateRequest { to: "mars".into() })
            .unwrap_err(),
        ServiceError::NotFound {
            kind: "provider",
            ..
        }
    ));
}

#[test]
fn provider_kinds_come_from_the_settings_and_unreal_local_hosts_are_records() {
    let dir = tempfile::tempdir().unwrap();
    let providers = vec![
        ("here".to_owned(), "local:ec2-2026".to_owned()),
        ("there".to_owned(), "ec2-2014".to_owned()),
    ];
    let s = Service::new(
        Box::new(RedbStore::open(dir.path()).unwrap()),
        &providers,
        PackOptions::default(),
    )
    .unwrap();
    let kinds: Vec<ProviderKind> = s.providers().iter().map(|p| p.kind).collect();
    assert_eq!(kinds, [ProviderKind::Local, ProviderKind::Sim]);
    assert_eq!(s.local_providers(), ["here"]);
    assert_eq!(s.providers()[0].catalog, "ec2-2026");
    // Without a realizer nothing is made real: the host is a record that runs at once.
    let h = s
        .add_host(&HostRequest {
            name: None,
            provider: Some("here".into()),
            instance_type: cheapest_type(&s, "here"),
        })
        .unwrap();
    assert_eq!((h.state, h.underlay), (HostState::Running, None));
    // Released through its provider, the record goes.
    s.remove_host(h.name.as_str()).unwrap();
    assert!(s.hosts().is_empty());
    let e = s.remove_host(h.name.as_str()).unwrap_err();
    assert!(
        matches!(e, ServiceError::NotFound { kind: "host", .. }),
        "{e}"
    );
}
