//! Serving the API over HTTP/1.1 with explicit limits: a bounded number of connections, a
//! deadline for each request's headers (which also closes idle keep-alive connections), and a
//! graceful shutdown that lets requests in flight finish.
//!
//! `axum::serve` has neither: with no timer, hyper's header timeout never fires, so a client
//! that opens connections and sends nothing holds a file descriptor each for as long as it
//! likes, until the process runs out of them and the API, the store and the switch control
//! calls all fail.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower::ServiceExt;

/// The limits of one HTTP server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// Connections open at once; further clients wait in the kernel's backlog until one closes.
    pub max_connections: usize,
    /// Time a client has to send a request's headers, from the moment the connection can take
    /// one (accepted, or the previous response sent): idle connections close after it.
    pub header_timeout: Duration,
}

impl Default for HttpLimits {
    fn default() -> HttpLimits {
        HttpLimits {
            max_connections: 1024,
            header_timeout: Duration::from_secs(10),
        }
    }
}

/// File descriptors kept for everything but client connections (the store, switch control
/// sockets, QMP, logs, child processes' pipes).
const RESERVED_FDS: u64 = 256;

impl HttpLimits {
    /// These limits with `max_connections` no more than the open-file limit allows, keeping
    /// [`RESERVED_FDS`] for the rest of the process.
    pub fn within(self, open_files: u64) -> HttpLimits {
        let room = open_files.saturating_sub(RESERVED_FDS).max(16);
        HttpLimits {
            max_connections: self
                .max_connections
                .min(usize::try_from(room).unwrap_or(usize::MAX)),
            ..self
        }
    }
}

/// Serves `app` on `listener` within `limits` (over TLS with `tls`) until `shutdown` resolves;
/// then stops accepting and waits up to 10 s for the requests in flight. A TLS handshake has
/// the header deadline to finish.
///
/// # Errors
/// Never for a failed connection (it is logged and the server goes on); only if the listener
/// itself is gone.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: HttpLimits,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    let mut warned_full = false;
    loop {
        let slot = tokio::select! {
            s = slots.clone().acquire_owned() => match s {
                Ok(s) => s,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        if slots.available_permits() == 0 && !warned_full {
            eprintln!(
                "kangaroo: {} connections open, the most the API takes: further clients wait",
                limits.max_connections
            );
            warned_full = true;
        } else if slots.available_permits() > 0 {
            warned_full = false;
        }
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of descriptors (EMFILE/ENFILE) or a connection reset before it was
                    // taken: wait a moment rather than spin.
                    eprintln!("kangaroo: accepting a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let (app, watcher, acceptor) = (app.clone(), graceful.watcher(), acceptor.clone());
        tokio::spawn(async move {
            // Errors here are one client's (a timeout, a reset, a failed handshake): nothing
            // for the server.
            match acceptor {
                None => connection(stream, false, app, limits, watcher).await,
                Some(a) => {
                    if let Ok(Ok(tls)) =
                        tokio::time::timeout(limits.header_timeout, a.accept(stream)).await
                    {
                        connection(tls, true, app, limits, watcher).await;
                    }
                }
            }
            drop(slot);
        });
    }
    drop(listener);
    if tokio::time::timeout(Duration::from_secs(10), graceful.shutdown())
        .await
        .is_err()
    {
        eprintln!("kangaroo: requests still running 10 s after the shutdown began; leaving them");
    }
    Ok(())
}

/// Serves one connection (`https`: over TLS) until it closes, or the shutdown tells it to
/// finish.
async fn connection<I>(
    io: I,
    https: bool,
    app: Router,
    limits: HttpLimits,
    watcher: hyper_util::server::graceful::Watcher,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = TowerToHyperService::new(app.map_request(move |r: hyper::Request<Incoming>| {
        let mut r = r.map(Body::new);
        if https {
            // Handlers that build URLs (the OpenStack catalog) see the scheme the client used;
            // a header the client sent itself is replaced.
            r.headers_mut().insert(
                "x-forwarded-proto",
                axum::http::HeaderValue::from_static("https"),
            );
        }
        r
    }));
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .serve_connection(TokioIo::new(io), service);
    let _ = watcher.watch(conn).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_bounded_by_the_open_file_limit() {
        let l = HttpLimits::default();
        assert_eq!(l.within(1 << 20).max_connections, 1024);
        assert_eq!(l.within(1024).max_connections, 1024 - 256);
        assert_eq!(l.within(10).max_connections, 16);
    }
}
