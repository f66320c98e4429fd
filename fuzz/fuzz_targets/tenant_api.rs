//! The orchestrator's tenant API on arbitrary requests, against a store in a temporary
//! directory, with simulated providers.
//!
//! Oracles: never panics, never answers 500 (that is the store or the server failing, not the
//! client); every error is the API's JSON error body; without the right token nothing but the
//! health check and the OpenStack face's public routes (version discovery, asking for a token)
//! is answered 2xx; and the state survives a restart: the store reopened from disk
//! holds exactly what the service held.

#![no_main]
#![deny(unsafe_code)]

use std::sync::Arc;

use kangaroo_fuzz::{assert_json_error, call, requests, runtime};
use kangaroo_orchestrator::api;
use kangaroo_orchestrator::packing::PackOptions;
use kangaroo_orchestrator::service::Service;
use kangaroo_orchestrator::store::RedbStore;
use libfuzzer_sys::fuzz_target;

const TOKEN: &str = "fuzz-token";

fn service(dir: &std::path::Path) -> Service {
    let store = match RedbStore::open(dir) {
        Ok(s) => s,
        Err(e) => panic!("store: {e}"),
    };
    let providers = [
        ("sim".to_owned(), "ec2-2026".to_owned()),
        ("old".to_owned(), "ec2-2014".to_owned()),
    ];
    match Service::new(Box::new(store), &providers, PackOptions::default()) {
        Ok(s) => s,
        Err(e) => panic!("service: {e:#}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let reqs = requests(data, 12);
    // On tmpfs where there is one: the store syncs every commit, and the oracle is about what
    // the store holds, not the disk's speed.
    let shm = std::path::Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        tempfile::tempdir_in(shm)
    } else {
        tempfile::tempdir()
    };
    let dir = match dir {
        Ok(d) => d,
        Err(e) => panic!("tempdir: {e}"),
    };
    let svc = Arc::new(service(dir.path()));
    let (router, _doc) = api::router(svc.clone(), TOKEN);
    let rt = runtime();
    rt.block_on(async {
        for r in &reqs {
            let auth = match r.bad_auth {
                None => Some("Bearer fuzz-token"),
                Some(false) => None,
                Some(true) => Some("Bearer fuzz-tokem"),
            };
            let Some(req) = r.build(auth) else {
                continue;
            };
            let path = req.uri().path().to_owned();
            let (status, body) = call(&router, req).await;
            let text = String::from_utf8_lossy(&body);
            assert_ne!(status, 500, "{r:?} answered 500: {text}");
            assert_json_error(r, status, &body);
            let public = path == "/health"
                || kangaroo_orchestrator::openstack::is_public(r.method.as_str(), &path);
            if !matches!(auth, Some("Bearer fuzz-token")) && !public {
                assert!(
                    !(200..300).contains(&status),
                    "{r:?} answered {status} without the token"
                );
            }
        }
    });
    let before = svc.snapshot();
    drop(router);
    drop(rt);
    match Arc::try_unwrap(svc) {
        Ok(s) => drop(s),
        Err(_) => panic!("the service is still shared after the requests"),
    }
    let after = service(dir.path()).snapshot();
    assert_eq!(before, after, "the state reopened from disk differs");
});
