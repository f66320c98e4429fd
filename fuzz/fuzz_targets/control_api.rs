//! The switch's control API (the HTTP requests `kangaroo-switch ctl` and the orchestrator send
//! over the control socket), against a running datapath worker with in-memory ports.
//!
//! Oracles: never panics, never answers 5xx (a bad request is the client's error, and the
//! worker is alive), every error body is JSON with an `error.message`, and the datapath keeps
//! answering: a health check after the input's requests succeeds.

#![no_main]
#![deny(unsafe_code)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use kangaroo_fuzz::{assert_json_error, call, requests, runtime, small_switch, MemoryOpener};
use kangaroo_switch::control;
use kangaroo_switch::{Switch, Timestamp};
use libfuzzer_sys::fuzz_target;

/// A datapath worker thread running jobs as the daemon's does (polling every 200 µs instead of
/// waiting on its wake-up descriptor).
struct Worker {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Worker {
    fn start(mut q: control::JobQueue) -> Worker {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut sw = Switch::new(small_switch());
            sw.set_opener(Box::new(MemoryOpener));
            let mut now = Timestamp::from_secs(1);
            while !s.load(Ordering::Relaxed) {
                std::thread::sleep(std::time::Duration::from_micros(200));
                q.drain_wake();
                now = now.plus(std::time::Duration::from_millis(10));
                q.run(&mut sw, now);
                sw.poll(now);
            }
        });
        Worker {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let reqs = requests(data, 16);
    let (d, q) = match control::job_queue() {
        Ok(x) => x,
        Err(e) => panic!("job queue: {e}"),
    };
    let _worker = Worker::start(q);
    let router = control::router(d);
    let rt = runtime();
    rt.block_on(async {
        for r in &reqs {
            let Some(req) = r.build(None) else {
                continue;
            };
            let (status, body) = call(&router, req).await;
            assert!(
                status < 500,
                "{r:?} answered {status}: {}",
                String::from_utf8_lossy(&body)
            );
            assert_json_error(r, status, &body);
        }
        let health = axum::http::Request::get("/v1/health").body(axum::body::Body::empty());
        let Ok(req) = health else {
            panic!("health request");
        };
        let (status, _) = call(&router, req).await;
        assert_eq!(status, 200, "the datapath stopped answering");
    });
});
