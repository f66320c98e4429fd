//! The control API: HTTP/1.1 + JSON on a Unix socket (mode 0600), served by a thread of its own.
//!
//! Handlers never touch the switch directly. Each request becomes a [`Job`], a closure sent over a
//! channel to the datapath thread, which runs it between two polls with `&mut Switch` and sends
//! the answer back; the datapath is woken from its idle sleep through a socket pair. So the data
//! path takes no lock, and every change lands between two batches.
//!
//! | method | path | what |
//! |---|---|---|
//! | GET | `/v1/health` | liveness |
//! | GET, POST | `/v1/ports` | list; add `{"interface", "vni", "mac"?, "ips"?}` |
//! | DELETE | `/v1/ports/{interface}` | remove |
//! | GET, POST | `/v1/fdb` | list; add a static entry `{"vni", "mac", "interface"}` |
//! | DELETE | `/v1/fdb/{vni}/{mac}` | remove an entry |
//! | POST | `/v1/arp` | add a static ARP entry `{"vni", "ip", "mac"}` |
//! | GET | `/v1/stats` | counters (JSON) |
//! | GET | `/metrics` | counters (Prometheus text format) |

use std::io::Write;
use std::net::Ipv4Addr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Json, Router};
use serde::Serialize;
use serde_json::{json, Value};

use kangaroo_control::api::{ArpRequest, EndpointRequest, FdbRequest, PeerRequest, PortRequest};
use kangaroo_control::extract::Param;

use crate::clock::Timestamp;
use crate::fdb::Dest;
use crate::mac::MacAddr;
use crate::pipeline::{PortConfig, TablesError};
use crate::stats::DropReason;
use crate::switch::Switch;
use crate::tunnel::Vni;

/// Work for the datapath thread.
pub type Job = Box<dyn FnOnce(&mut Switch, Timestamp) + Send>;

/// The control side's handle on the datapath workers.
#[derive(Clone)]
pub struct Datapath {
    workers: std::sync::Arc<Vec<WorkerHandle>>,
    /// Serializes changes that must succeed on every worker or on none.
    changes: std::sync::Arc<tokio::sync::Mutex<()>>,
}

struct WorkerHandle {
    jobs: mpsc::Sender<Job>,
    wake: UnixStream,
}

/// A worker's side: jobs to run and the descriptor that wakes it.
pub struct JobQueue {
    jobs: mpsc::Receiver<Job>,
    wake: UnixStream,
}

/// A job queue for one datapath worker and the handle that feeds it.
///
/// # Errors
/// If the wake-up socket pair cannot be created.
pub fn job_queue() -> std::io::Result<(Datapath, JobQueue)> {
    let (d, mut qs) = job_queues(1)?;
    let q = qs
        .pop()
        .ok_or_else(|| std::io::Error::other("no job queue"))?;
    Ok((d, q))
}

/// Job queues for `n` datapath workers (at least one) and the handle that feeds them all.
///
/// # Errors
/// If a wake-up socket pair cannot be created.
pub fn job_queues(n: usize) -> std::io::Result<(Datapath, Vec<JobQueue>)> {
    let mut handles = Vec::new();
    let mut queues = Vec::new();
    for _ in 0..n.max(1) {
        let (a, b) = UnixStream::pair()?;
        b.set_nonblocking(true)?;
        a.set_nonblocking(true)?;
        let (tx, rx) = mpsc::channel();
        handles.push(WorkerHandle { jobs: tx, wake: a });
        queues.push(JobQueue { jobs: rx, wake: b });
    }
    Ok((
        Datapath {
            workers: std::sync::Arc::new(handles),
            changes: std::sync::Arc::new(tokio::sync::Mutex::new(())),
        },
        queues,
    ))
}

impl JobQueue {
    /// The descriptor to include in the idle `poll(2)`.
    pub fn wake_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.wake.as_raw_fd()
    }

    /// Empties the wake-up socket. Call it after an idle wait, not on every loop: a job is queued
    /// before its wake-up byte is written, so whatever woke the wait is in the queue by now.
    pub fn drain_wake(&mut self) {
        let mut buf = [0u8; 64];
        while std::io::Read::read(&mut &self.wake, &mut buf).is_ok_and(|n| n > 0) {}
    }

    /// Runs every queued job (no system call when there is none); returns how many ran.
    pub fn run(&mut self, sw: &mut Switch, now: Timestamp) -> usize {
        let mut n = 0;
        while let Ok(job) = self.jobs.try_recv() {
            job(sw, now);
            n += 1;
        }
        n
    }
}

impl Datapath {
    /// Number of workers.
    pub fn workers(&self) -> usize {
        self.workers.len()
    }

    fn submit<T: Send + 'static>(
        &self,
        worker: usize,
        f: impl FnOnce(&mut Switch, Timestamp) -> T + Send + 'static,
    ) -> Result<tokio::sync::oneshot::Receiver<T>, ApiError> {
        let w = self
            .workers
            .get(worker)
            .ok_or_else(|| ApiError::internal("no such datapath worker"))?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |sw, now| {
            let _ = tx.send(f(sw, now));
        });
        w.jobs
            .send(job)
            .map_err(|_| ApiError::internal("the datapath has stopped"))?;
        let _ = (&w.wake).write(&[1]);
        Ok(rx)
    }

    /// Runs `f` on the first worker (reads: the workers share counters and learn from each
    /// other, so one answers for all) and returns its result.
    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Switch, Timestamp) -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        self.submit(0, f)?
            .await
            .map_err(|_| ApiError::internal("the datapath dropped the request"))
    }

    /// Runs `f` on every worker (configuration changes) and returns their results in worker
    /// order.
    async fn run_all<T: Send + 'static>(
        &self,
        f: impl Fn(&mut Switch, Timestamp) -> T + Clone + Send + 'static,
    ) -> Result<Vec<T>, ApiError> {
        let mut pending = Vec::with_capacity(self.workers.len());
        for i in 0..self.workers.len() {
            pending.push(self.submit(i, f.clone())?);
        }
        let mut out = Vec::with_capacity(pending.len());
        for rx in pending {
            out.push(
                rx.await
                    .map_err(|_| ApiError::internal("the datapath dropped the request"))?,
            );
        }
        Ok(out)
    }

    /// Runs `f` on every worker and returns the first worker's result; the others are the same
    /// change on identical configuration, so they agree.
    async fn run_each<T: Send + 'static>(
        &self,
        f: impl Fn(&mut Switch, Timestamp) -> T + Clone + Send + 'static,
    ) -> Result<T, ApiError> {
        let _serial = self.changes.lock().await;
        self.run_all(f)
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| ApiError::internal("no datapath worker"))
    }
}

/// An error answer: status and a JSON body naming the problem.
#[derive(Debug)]
pub struct ApiError(StatusCode, String, Option<&'static str>);

impl ApiError {
    fn internal(m: &str) -> ApiError {
        ApiError(StatusCode::INTERNAL_SERVER_ERROR, m.to_owned(), None)
    }
    fn bad(field: &'static str, m: impl ToString) -> ApiError {
        ApiError(StatusCode::BAD_REQUEST, m.to_string(), Some(field))
    }
    fn not_found(m: impl ToString) -> ApiError {
        ApiError(StatusCode::NOT_FOUND, m.to_string(), None)
    }
    fn conflict(m: impl ToString) -> ApiError {
        ApiError(StatusCode::CONFLICT, m.to_string(), None)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut e = json!({ "status": self.0.as_u16(), "message": self.1 });
        if let Some(f) = self.2 {
            e["field"] = json!(f);
        }
        (self.0, Json(json!({ "error": e }))).into_response()
    }
}

impl kangaroo_control::extract::PathRejection for ApiError {
    fn bad_path(message: String) -> ApiError {
        ApiError::bad("path", message)
    }
}

fn body<T: serde::de::DeserializeOwned>(b: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(b).map_err(|e| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!("request body: {e}"),
            Some("body"),
        )
    })
}

/// A port as listed.
#[derive(Debug, Serialize)]
pub struct PortInfo {
    /// Port id.
    pub id: u16,
    /// Interface.
    pub interface: String,
    /// Network.
    pub vni: u32,
    /// Port security MAC.
    pub mac: Option<String>,
    /// Port security IPs.
    pub ips: Vec<Ipv4Addr>,
    /// Traffic counters.
    pub counters: crate::stats::PortCounters,
    /// Counters of the port's backend (AF_XDP: checksum repairs, transmit drops).
    pub backend: std::collections::BTreeMap<&'static str, u64>,
}

fn ports(sw: &Switch) -> Vec<PortInfo> {
    sw.tables()
        .ports()
        .map(|(id, c)| PortInfo {
            id: id.get(),
            interface: sw.port_name(id).unwrap_or_default().to_owned(),
            vni: c.vni.get(),
            mac: c.mac.map(|m| m.to_string()),
            ips: c.ips.clone(),
            counters: sw.stats().port(id).snapshot(),
            backend: sw.port_counters(id).into_iter().collect(),
        })
        .collect()
}

fn endpoint_of(key: &'static str, e: &str) -> Result<std::net::SocketAddrV4, ApiError> {
    e.parse()
        .map_err(|_| ApiError::bad(key, format!("{e:?} is not an IPv4 address and port")))
}

fn peers_json(sw: &Switch) -> Vec<Value> {
    sw.tables()
        .peers()
        .map(|t| {
            t.iter()
                .map(|(id, p)| {
                    let vnis = match &p.vnis {
                        crate::tunnel::PeerVnis::All => Value::String("all".into()),
                        crate::tunnel::PeerVnis::Only(v) => {
                            json!(v.iter().map(|x| x.get()).collect::<Vec<_>>())
                        }
                    };
                    let secure = sw
                        .secure()
                        .filter(|_| p.overhead > 0)
                        .and_then(|s| s.status().into_iter().find(|x| x.vtep == p.addr));
                    json!({ "address": p.addr.to_string(), "vnis": vnis,
                            "learned_macs": sw.tables().fdb.owned_by(Dest::Vtep(id)),
                            "encryption": if secure.is_some() { "required" } else { "off" },
                            "secure": secure })
                })
                .collect()
        })
        .unwrap_or_default()
}

async fn list_peers(State(d): State<Datapath>) -> Result<Json<Vec<Value>>, ApiError> {
    Ok(Json(d.run(|sw, _| peers_json(sw)).await?))
}

async fn add_peer(State(d): State<Datapath>, b: Bytes) -> Result<Json<Vec<Value>>, ApiError> {
    let r: PeerRequest = body(&b)?;
    let addr: Ipv4Addr = r
        .address
        .parse()
        .map_err(|_| ApiError::bad("address", format!("{:?} is not an IPv4 address", r.address)))?;
    let vnis = match &r.vnis {
        None => crate::tunnel::PeerVnis::All,
        Some(v) => crate::tunnel::PeerVnis::Only(
            v.iter()
                .map(|x| vni_of("vnis", *x))
                .collect::<Result<Vec<_>, _>>()?,
        ),
    };
    let public_key = r
        .public_key
        .as_deref()
        .map(|k| k.parse::<crate::secure::PublicKey>())
        .transpose()
        .map_err(|e| ApiError::bad("public_key", e.to_string()))?;
    let endpoint = r
        .endpoint
        .as_deref()
        .map(|e| endpoint_of("endpoint", e))
        .transpose()?;
    let spec = match (r.encryption, public_key) {
        (Some(crate::secure::Encryption::Off), _) | (None, None) => {
            if endpoint.is_some() {
                return Err(ApiError::bad(
                    "endpoint",
                    "an endpoint is only for a peer with encryption \"required\"",
                ));
            }
            None
        }
        (_, None) => {
            return Err(ApiError::bad(
                "encryption",
                "\"required\" needs the peer's public_key",
            ))
        }
        (_, Some(public_key)) => Some(crate::secure::PeerSpec {
            vtep: addr,
            public_key,
            endpoint,
        }),
    };
    d.run_each(move |sw, _| {
        if sw.tables().peers().and_then(|t| t.id_of(addr)).is_some() {
            return Err(ApiError::conflict(format!("peer {addr} already exists")));
        }
        if let Some(spec) = &spec {
            let Some(secure) = sw.secure() else {
                return Err(ApiError::conflict(
                    "this switch has no [secure] section: it has no key for secure tunnels",
                ));
            };
            secure
                .add_peer(spec)
                .map_err(|e| ApiError::conflict(e.to_string()))?;
        }
        sw.add_peer(addr, MacAddr::ZERO, vnis.clone())
            .map(|_| peers_json(sw))
            .inspect_err(|_| {
                if spec.is_some() {
                    if let Some(s) = sw.secure() {
                        s.remove_peer(addr);
                    }
                }
            })
            .map_err(|e| match e {
                crate::switch::SwitchError::Tables(TablesError::NoUplink) => {
                    ApiError::conflict("no [uplink] is configured: peers need one")
                }
                e => ApiError::conflict(e),
            })
    })
    .await?
    .map(Json)
}

async fn remove_peer(
    State(d): State<Datapath>,
    Param(address, _): Param<String, ApiError>,
) -> Result<StatusCode, ApiError> {
    let addr: Ipv4Addr = address
        .parse()
        .map_err(|_| ApiError::bad("address", format!("{address:?} is not an IPv4 address")))?;
    d.run_each(move |sw, _| {
        sw.remove_peer(addr)
            .map(|_| {
                if let Some(s) = sw.secure() {
                    s.remove_peer(addr);
                }
                StatusCode::NO_CONTENT
            })
            .map_err(|_| ApiError::not_found(format!("no peer {addr}")))
    })
    .await?
}

fn secure_json(sw: &Switch) -> Option<Value> {
    sw.secure().map(|s| {
        json!({
            "public_key": s.public_key(),
            "port": s.port(),
            "counters": s.counters().snapshot().into_iter().collect::<std::collections::BTreeMap<_, _>>(),
            "peers": s.status(),
            "public_endpoint": s.public_endpoint(),
            "rendezvous": s.rendezvous_status(),
        })
    })
}

async fn get_secure(State(d): State<Datapath>) -> Result<Json<Value>, ApiError> {
    d.run(|sw, _| {
        secure_json(sw).ok_or_else(|| {
            ApiError::not_found("this switch has no [secure] section: no secure tunnels")
        })
    })
    .await?
    .map(Json)
}

async fn set_endpoint(
    State(d): State<Datapath>,
    Param(address, _): Param<String, ApiError>,
    b: Bytes,
) -> Result<Json<Value>, ApiError> {
    let addr: Ipv4Addr = address
        .parse()
        .map_err(|_| ApiError::bad("address", format!("{address:?} is not an IPv4 address")))?;
    let r: EndpointRequest = body(&b)?;
    let endpoint = endpoint_of("endpoint", &r.endpoint)?;
    d.run(move |sw, _| {
        let Some(s) = sw.secure() else {
            return Err(ApiError::not_found(
                "this switch has no [secure] section: no secure tunnels",
            ));
        };
        if !s.set_endpoint(addr, endpoint) {
            return Err(ApiError::not_found(format!("no secure peer {addr}")));
        }
        Ok(json!(s.status().into_iter().find(|x| x.vtep == addr)))
    })
    .await?
    .map(Json)
}

fn vni_of(field: &'static str, v: u32) -> Result<Vni, ApiError> {
    Vni::new(v).map_err(|e| ApiError::bad(field, e))
}

fn mac_of(field: &'static str, m: &str) -> Result<MacAddr, ApiError> {
    m.parse()
        .map_err(|e: crate::mac::MacParseError| ApiError::bad(field, e))
}

async fn health() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// The ports as every worker sees them, with the backend counters (one backend per worker)
/// summed; the traffic counters are shared already.
async fn all_ports(d: &Datapath) -> Result<Vec<PortInfo>, ApiError> {
    let mut each = d.run_all(|sw, _| ports(sw)).await?.into_iter();
    let mut merged = each.next().unwrap_or_default();
    for other in each {
        for p in other {
            if let Some(m) = merged.iter_mut().find(|m| m.interface == p.interface) {
                for (k, v) in p.backend {
                    *m.backend.entry(k).or_default() += v;
                }
            }
        }
    }
    Ok(merged)
}

async fn list_ports(State(d): State<Datapath>) -> Result<Json<Vec<PortInfo>>, ApiError> {
    Ok(Json(all_ports(&d).await?))
}

async fn add_port(State(d): State<Datapath>, b: Bytes) -> Result<Json<Vec<PortInfo>>, ApiError> {
    let r: PortRequest = body(&b)?;
    if !crate::config::valid_ifname(&r.interface) {
        return Err(ApiError::bad(
            "interface",
            format!("{:?} is not a valid interface name", r.interface),
        ));
    }
    let vni = vni_of("vni", r.vni)?;
    let mac = r.mac.as_deref().map(|m| mac_of("mac", m)).transpose()?;
    let mut ips = Vec::new();
    for ip in &r.ips {
        ips.push(
            ip.parse::<Ipv4Addr>()
                .map_err(|_| ApiError::bad("ips", format!("{ip:?} is not an IPv4 address")))?,
        );
    }
    let cfg = PortConfig { vni, mac, ips };
    let interface = r.interface.clone();
    let _serial = d.changes.lock().await;
    let results = d
        .run_all(move |sw, _| {
            if sw.port_id(&interface).is_some() {
                return Err(ApiError::conflict(format!("{interface} is already a port")));
            }
            sw.open_port(&interface, cfg.clone())
                .map(|_| ())
                .map_err(|e| ApiError::bad("interface", e))
        })
        .await?;
    if let Some(err) = results.iter().position(Result::is_err) {
        // All or nothing: release the port on the workers that did open it (changes are
        // serialized, so the port did not exist anywhere before this request).
        if results.iter().any(Result::is_ok) {
            let interface = r.interface.clone();
            d.run_all(move |sw, _| {
                if let Some(id) = sw.port_id(&interface) {
                    let _ = sw.remove_port(id);
                }
            })
            .await?;
        }
        return Err(results
            .into_iter()
            .nth(err)
            .and_then(Result::err)
            .unwrap_or_else(|| ApiError::internal("lost the error")));
    }
    Ok(Json(all_ports(&d).await?))
}

async fn remove_port(
    State(d): State<Datapath>,
    Param(ifname, _): Param<String, ApiError>,
) -> Result<StatusCode, ApiError> {
    d.run_each(move |sw, _| {
        let id = sw
            .port_id(&ifname)
            .ok_or_else(|| ApiError::not_found(format!("no port {ifname}")))?;
        sw.remove_port(id)
            .map_err(|e| ApiError::internal(&e.to_string()))?;
        Ok(StatusCode::NO_CONTENT)
    })
    .await?
}

async fn list_fdb(State(d): State<Datapath>) -> Result<Json<Vec<Value>>, ApiError> {
    Ok(Json(
        d.run(|sw, now| {
            sw.tables()
                .fdb
                .entries()
                .filter(|(_, e)| e.is_static || now.since(e.last_seen) < sw.tables().fdb.config().aging)
                .map(|(k, e)| {
                    let dest = match e.dest {
                        Dest::Port(p) => json!({ "interface": sw.port_name(p) }),
                        Dest::Vtep(p) => json!({ "vtep": sw.tables().peers().and_then(|t| t.get(p)).map(|x| x.addr.to_string()) }),
                    };
                    json!({ "vni": k.vni.get(), "mac": k.mac.to_string(), "static": e.is_static, "dest": dest,
                            "age_secs": now.since(e.last_seen).as_secs() })
                })
                .collect()
        })
        .await?,
    ))
}

async fn add_fdb(State(d): State<Datapath>, b: Bytes) -> Result<StatusCode, ApiError> {
    let r: FdbRequest = body(&b)?;
    let vni = vni_of("vni", r.vni)?;
    let mac = mac_of("mac", &r.mac)?;
    let vtep = match (&r.interface, &r.vtep) {
        (Some(_), None) => None,
        (None, Some(v)) => Some(
            v.parse::<Ipv4Addr>()
                .map_err(|_| ApiError::bad("vtep", format!("{v:?} is not an IPv4 address")))?,
        ),
        _ => {
            return Err(ApiError::bad(
                "interface",
                "give exactly one of \"interface\" (a local port) and \"vtep\" (a peer)",
            ))
        }
    };
    let interface = r.interface.clone().unwrap_or_default();
    d.run_each(move |sw, now| {
        let dest = match vtep {
            None => Dest::Port(
                sw.port_id(&interface)
                    .ok_or_else(|| ApiError::bad("interface", format!("no port {interface}")))?,
            ),
            Some(a) => Dest::Vtep(
                sw.tables()
                    .peers()
                    .and_then(|t| t.id_of(a))
                    .ok_or_else(|| ApiError::bad("vtep", format!("no peer {a}")))?,
            ),
        };
        sw.add_static_fdb(vni, mac, dest, now)
            .map_err(ApiError::conflict)?;
        Ok(StatusCode::NO_CONTENT)
    })
    .await?
}

async fn remove_fdb(
    State(d): State<Datapath>,
    Param((vni, mac), _): Param<(u32, String), ApiError>,
) -> Result<StatusCode, ApiError> {
    let vni = vni_of("vni", vni)?;
    let mac = mac_of("mac", &mac)?;
    d.run_each(move |sw, _| {
        if sw.remove_fdb(vni, mac) {
            Ok(StatusCode::NO_CONTENT)
        } else {
            Err(ApiError::not_found(format!(
                "no FDB entry {mac} in VNI {vni}"
            )))
        }
    })
    .await?
}

async fn add_arp(State(d): State<Datapath>, b: Bytes) -> Result<StatusCode, ApiError> {
    let r: ArpRequest = body(&b)?;
    let vni = vni_of("vni", r.vni)?;
    let mac = mac_of("mac", &r.mac)?;
    let ip: Ipv4Addr =
        r.ip.parse()
            .map_err(|_| ApiError::bad("ip", format!("{:?} is not an IPv4 address", r.ip)))?;
    d.run_each(move |sw, now| {
        sw.add_static_arp(vni, ip, mac, now)
            .map(|_| StatusCode::NO_CONTENT)
            .map_err(ApiError::conflict)
    })
    .await?
}

/// Every counter of the switch as JSON (the body of `GET /v1/stats`).
pub fn stats_json(sw: &Switch) -> Value {
    let s = sw.stats();
    let drops: serde_json::Map<String, Value> = DropReason::ALL
        .iter()
        .map(|r| (r.name().to_owned(), json!(s.drops(*r))))
        .collect();
    json!({
        "ports": ports(sw),
        "uplink": s.uplink.snapshot(),
        "uplink_backend": sw.uplink_counters().into_iter().collect::<std::collections::BTreeMap<_, _>>(),
        "drops": drops,
        "events": s.events.snapshot(),
        "fdb_entries": sw.tables().fdb.len(),
        "arp_entries": sw.tables().arp.len(),
        "datapath": {
            "mode": sw.mode(),
            "counters": sw.datapath_counters().into_iter().collect::<std::collections::BTreeMap<_, _>>(),
        },
        "secure": sw.secure().map(|s| s.counters().snapshot().into_iter().collect::<std::collections::BTreeMap<_, _>>()),
    })
}

async fn stats(State(d): State<Datapath>) -> Result<Json<Value>, ApiError> {
    let mut v = d.run(|sw, _| stats_json(sw)).await?;
    if d.workers() > 1 {
        v["ports"] = serde_json::to_value(all_ports(&d).await?).unwrap_or(Value::Null);
        v["workers"] = json!(d.workers());
    }
    Ok(Json(v))
}

async fn metrics(State(d): State<Datapath>) -> Result<Response, ApiError> {
    let all = all_ports(&d).await?;
    let text = d
        .run(move |sw, _| {
            let s = sw.stats();
            let mut out = String::new();
            out += "# HELP kangaroo_switch_drops_total Frames dropped, by reason.\n# TYPE kangaroo_switch_drops_total counter\n";
            for r in DropReason::ALL {
                out += &format!("kangaroo_switch_drops_total{{reason=\"{}\"}} {}\n", r.name(), s.drops(*r));
            }
            for (metric, help) in [("rx_packets", "Frames received"), ("rx_bytes", "Bytes received"), ("tx_packets", "Frames sent"), ("tx_bytes", "Bytes sent")] {
                out += &format!("# HELP kangaroo_switch_port_{metric}_total {help}, per port.\n# TYPE kangaroo_switch_port_{metric}_total counter\n");
                for p in &all {
                    let c = p.counters;
                    let v = match metric {
                        "rx_packets" => c.rx_packets,
                        "rx_bytes" => c.rx_bytes,
                        "tx_packets" => c.tx_packets,
                        _ => c.tx_bytes,
                    };
                    out += &format!("kangaroo_switch_port_{metric}_total{{interface=\"{}\"}} {v}\n", p.interface);
                }
            }
            let ev = serde_json::to_value(s.events.snapshot()).unwrap_or(Value::Null);
            if let Some(m) = ev.as_object() {
                for (k, v) in m {
                    out += &format!("# TYPE kangaroo_switch_{k}_total counter\nkangaroo_switch_{k}_total {v}\n");
                }
            }
            out += &format!("# TYPE kangaroo_switch_fdb_entries gauge\nkangaroo_switch_fdb_entries {}\n", sw.tables().fdb.len());
            let ports = &all;
            if ports.iter().any(|p| !p.backend.is_empty()) {
                out += "# HELP kangaroo_switch_port_backend_total Counters of the port backend (AF_XDP), per port.\n# TYPE kangaroo_switch_port_backend_total counter\n";
                for p in ports {
                    for (k, v) in &p.backend {
                        out += &format!("kangaroo_switch_port_backend_total{{interface=\"{}\",counter=\"{k}\"}} {v}\n", p.interface);
                    }
                }
            }
            if let Some(sec) = sw.secure() {
                out += "# HELP kangaroo_switch_secure_total Secure-tunnel events, by kind.\n# TYPE kangaroo_switch_secure_total counter\n";
                for (k, v) in sec.counters().snapshot() {
                    out += &format!("kangaroo_switch_secure_total{{event=\"{k}\"}} {v}\n");
                }
            }
            let xdp = sw.datapath_counters();
            if !xdp.is_empty() {
                out += "# HELP kangaroo_switch_xdp_frames_total Frames seen by the XDP program, by outcome (summed over CPUs).\n# TYPE kangaroo_switch_xdp_frames_total counter\n";
                for (k, v) in xdp {
                    out += &format!("kangaroo_switch_xdp_frames_total{{outcome=\"{k}\"}} {v}\n");
                }
            }
            out
        })
        .await?;
    Ok(([("content-type", "text/plain; version=0.0.4")], text).into_response())
}

/// The routes.
pub fn router(d: Datapath) -> Router {
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/ports", get(list_ports).post(add_port))
        .route("/v1/ports/{interface}", delete(remove_port))
        .route("/v1/fdb", get(list_fdb).post(add_fdb))
        .route("/v1/fdb/{vni}/{mac}", delete(remove_fdb))
        .route("/v1/arp", axum::routing::post(add_arp))
        .route("/v1/peers", get(list_peers).post(add_peer))
        .route("/v1/peers/{address}", delete(remove_peer))
        .route(
            "/v1/peers/{address}/endpoint",
            axum::routing::put(set_endpoint),
        )
        .route("/v1/secure", get(get_secure))
        .route("/v1/stats", get(stats))
        .route("/metrics", get(metrics))
        .fallback(|| async { ApiError::not_found("no such route") })
        .method_not_allowed_fallback(|m: axum::http::Method| async move {
            ApiError(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("method {m} is not allowed on this route"),
                None,
            )
        })
        .with_state(d)
}

/// Serves the control API on `path` (created with mode 0600; an existing stale socket is
/// replaced) until `shutdown` resolves; removes the socket file afterwards.
///
/// # Errors
/// If the socket cannot be created.
pub fn serve(
    path: &Path,
    d: Datapath,
    shutdown: tokio::sync::oneshot::Receiver<()>,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    use anyhow::Context;
    use std::os::unix::fs::DirBuilderExt;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
    }
    if path.exists() {
        // A socket someone answers on belongs to a running switch: two switches on the same
        // interfaces would both forward every frame. Only a dead socket is replaced.
        if UnixStream::connect(path).is_ok() {
            anyhow::bail!(
                "control socket {} is in use: another kangaroo-switch is running with it; stop it first",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("removing stale socket {}", path.display()))?;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let listener = {
        let _g = rt.enter();
        let std = bind_private(path)
            .with_context(|| format!("binding control socket {}", path.display()))?;
        std.set_nonblocking(true)?;
        tokio::net::UnixListener::from_std(std)
            .with_context(|| format!("binding control socket {}", path.display()))?
    };
    let path: PathBuf = path.to_owned();
    Ok(std::thread::spawn(move || {
        rt.block_on(async move {
            let _ = axum::serve(listener, router(d))
                .with_graceful_shutdown(async {
                    let _ = shutdown.await;
                })
                .await;
        });
        let _ = std::fs::remove_file(&path);
    }))
}

/// Binds a Unix socket at `path` that is mode 0600 from the moment the path exists: it is bound
/// in a private directory (0700, beside `path`), made 0600 there and renamed into place, so no
/// connection can be opened while it has the umask's mode.
fn bind_private(path: &Path) -> std::io::Result<std::os::unix::net::UnixListener> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("the socket path has no file name"))?;
    let staging = path.with_file_name(format!(
        ".{}.{:08x}",
        name.to_string_lossy(),
        rand::random::<u32>()
    ));
    std::fs::DirBuilder::new().mode(0o700).create(&staging)?;
    let inside = staging.join("s");
    let bound = std::os::unix::net::UnixListener::bind(&inside).and_then(|l| {
        std::fs::set_permissions(&inside, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&inside, path)?;
        Ok(l)
    });
    let _ = std::fs::remove_file(&inside);
    let _ = std::fs::remove_dir(&staging);
    bound
}

#[cfg(test)]
mod tests {
    use super::*;
    use kangaroo_control::client::request;

    /// The socket path never exists with another mode than 0600, not even for a moment: a
    /// connection made while it was wider (bound with the umask's mode, changed afterwards)
    /// stayed open.
    #[test]
    fn the_socket_is_private_from_the_moment_it_exists() {
        use std::os::unix::fs::PermissionsExt;
        use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
        let path = temp_socket();
        let done = std::sync::Arc::new(AtomicBool::new(false));
        let wider = std::sync::Arc::new(AtomicU32::new(0));
        let watcher = {
            let (path, done, wider) = (path.clone(), done.clone(), wider.clone());
            std::thread::spawn(move || {
                let mut looks = 0u64;
                while !done.load(Ordering::Relaxed) && looks < 50_000_000 {
                    looks += 1;
                    if let Ok(m) = std::fs::symlink_metadata(&path) {
                        let mode = m.permissions().mode() & 0o777;
                        if mode != 0o600 {
                            wider.store(mode, Ordering::Relaxed);
                        }
                    }
                }
            })
        };
        for _ in 0..2000 {
            let l = bind_private(&path).unwrap();
            assert_eq!(
                std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
            drop(l);
            std::fs::remove_file(&path).unwrap();
            if wider.load(Ordering::Relaxed) != 0 {
                break;
            }
        }
        done.store(true, Ordering::Relaxed);
        watcher.join().unwrap();
        assert_eq!(
            wider.load(Ordering::Relaxed),
            0,
            "the socket existed with mode {:o}",
            wider.load(Ordering::Relaxed)
        );
        let parent = path.parent().unwrap();
        let strays: Vec<_> = std::fs::read_dir(parent)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with(".kgr-ctl-"))
            .collect();
        assert!(strays.is_empty(), "staging left behind: {strays:?}");
    }

    fn temp_socket() -> PathBuf {
        std::env::temp_dir().join(format!(
            "kgr-ctl-{}-{:x}.sock",
            std::process::id(),
            rand::random::<u64>()
        ))
    }

    #[test]
    fn a_live_socket_is_never_taken_over_and_a_stale_one_is_replaced() {
        let path = temp_socket();
        let live = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let (d, _q) = job_queue().unwrap();
        let (_tx, rx) = tokio::sync::oneshot::channel();
        let e = serve(&path, d.clone(), rx).err().unwrap().to_string();
        assert!(e.contains("in use"), "{e}");
        drop(live); // the file stays, nobody answers: stale
        assert!(path.exists());
        let (tx, rx) = tokio::sync::oneshot::channel();
        let handle = serve(&path, d, rx).unwrap();
        let (status, body) = request(&path, "GET", "/v1/health", None).unwrap();
        assert_eq!((status, body.contains("ok")), (200, true));
        tx.send(()).unwrap();
        handle.join().unwrap();
        assert!(!path.exists(), "the socket is removed on shutdown");
    }

    /// Found by the `control_api` fuzz target: a method no route has was answered 405 with an
    /// empty body instead of the API's JSON error.
    #[test]
    fn fuzz_control_api_unknown_method_answers_json_405() {
        let path = temp_socket();
        let (d, _q) = job_queue().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let handle = serve(&path, d, rx).unwrap();
        for (method, route) in [("DELDTE", "/v1/peers/10.0.0.2"), ("PUT", "/v1/ports")] {
            let (status, body) = request(&path, method, route, None).unwrap();
            assert_eq!(status, 405, "{method} {route}: {body}");
            let v: Value = serde_json::from_str(&body).unwrap();
            let m = v["error"]["message"].as_str().unwrap();
            assert!(m.contains(method), "{m}");
        }
        tx.send(()).unwrap();
        handle.join().unwrap();
    }

    /// Found by the `control_api` fuzz target: a path parameter that does not parse (a VNI that
    /// is not a number, a segment that is not UTF-8) was answered with axum's plain-text
    /// rejection instead of the API's JSON error.
    #[test]
    fn fuzz_control_api_bad_path_parameter_answers_json_400() {
        let path = temp_socket();
        let (d, _q) = job_queue().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let handle = serve(&path, d, rx).unwrap();
        for route in [
            "/v1/fdb/1%EF%BF%BD%EF%BF%BD/02:00:00:00:00:07",
            "/v1/fdb/99999999999/02:00:00:00:00:07",
            "/v1/ports/%FF%FE",
            "/v1/peers/%C3%28",
        ] {
            let (status, body) = request(&path, "DELETE", route, None).unwrap();
            assert_eq!(status, 400, "{route}: {body}");
            let v: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(v["error"]["field"], "path", "{route}: {v}");
            assert!(v["error"]["message"].is_string(), "{route}: {v}");
        }
        tx.send(()).unwrap();
        handle.join().unwrap();
    }
}
