//! The client of a switch's control API: HTTP/1.1 over its Unix socket, one request per
//! connection, JSON in and out. Used by `kangaroo-switch ctl`, the orchestrator's agents and the
//! tests; the one place that speaks the socket's wire format from the client side.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

/// How long a request may take to be written or answered.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket cannot be reached.
    #[error("connecting to {} (is kangaroo-switch running?)", socket.display())]
    Connect {
        /// The control socket.
        socket: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Writing the request or reading the answer failed (or timed out).
    #[error("{method} {path} on {}", socket.display())]
    Io {
        /// The control socket.
        socket: PathBuf,
        /// The request's method.
        method: String,
        /// The request's path.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The answer is not HTTP.
    #[error("{method} {path} on {}: a malformed answer ({what})", socket.display())]
    Malformed {
        /// The control socket.
        socket: PathBuf,
        /// The request's method.
        method: String,
        /// The request's path.
        path: String,
        /// What is wrong with it.
        what: &'static str,
    },
    /// The switch refused the request.
    #[error("{method} {path} on {}: {status}: {message}", socket.display())]
    Status {
        /// The control socket.
        socket: PathBuf,
        /// The request's method.
        method: String,
        /// The request's path.
        path: String,
        /// The HTTP status.
        status: u16,
        /// The switch's message (`error.message` of its JSON error), or the body.
        message: String,
    },
    /// A body that is not the JSON expected.
    #[error("{method} {path} on {}: the body", socket.display())]
    Json {
        /// The control socket.
        socket: PathBuf,
        /// The request's method.
        method: String,
        /// The request's path.
        path: String,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
}

impl ClientError {
    /// The HTTP status of a refusal (`None` for other failures).
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// An answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// HTTP status.
    pub status: u16,
    /// Body (de-chunked).
    pub body: String,
}

impl Response {
    /// The body as JSON: `null` when empty, a JSON string when it is not JSON.
    pub fn json(&self) -> Value {
        if self.body.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&self.body).unwrap_or_else(|_| Value::String(self.body.clone()))
        }
    }

    /// The message of an error answer: `error.message` of the JSON error, else the body.
    pub fn message(&self) -> String {
        let v = self.json();
        v.pointer("/error/message")
            .and_then(Value::as_str)
            .map_or_else(|| self.body.trim().to_owned(), str::to_owned)
    }
}

/// A client of one control socket.
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
    timeout: Duration,
}

impl Client {
    /// A client of `socket` with the default [`TIMEOUT`].
    pub fn new(socket: impl Into<PathBuf>) -> Client {
        Client {
            socket: socket.into(),
            timeout: TIMEOUT,
        }
    }

    /// The socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Sends `method path` with `body` as JSON; any status is an answer.
    ///
    /// # Errors
    /// [`ClientError::Connect`], [`ClientError::Io`], [`ClientError::Malformed`].
    pub fn send<B: Serialize + ?Sized>(
        &self,
        method: &str,
        path: &str,
        body: Option<&B>,
    ) -> Result<Response, ClientError> {
        let io = |source| ClientError::Io {
            socket: self.socket.clone(),
            method: method.to_owned(),
            path: path.to_owned(),
            source,
        };
        let malformed = |what| ClientError::Malformed {
            socket: self.socket.clone(),
            method: method.to_owned(),
            path: path.to_owned(),
            what,
        };
        let payload = match body {
            Some(b) => serde_json::to_string(b).map_err(|source| ClientError::Json {
                socket: self.socket.clone(),
                method: method.to_owned(),
                path: path.to_owned(),
                source,
            })?,
            None => String::new(),
        };
        let mut s = UnixStream::connect(&self.socket).map_err(|source| ClientError::Connect {
            socket: self.socket.clone(),
            source,
        })?;
        s.set_read_timeout(Some(self.timeout)).map_err(io)?;
        s.set_write_timeout(Some(self.timeout)).map_err(io)?;
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: kangaroo-switch\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            payload.len()
        );
        s.write_all(head.as_bytes()).map_err(io)?;
        s.write_all(payload.as_bytes()).map_err(io)?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).map_err(io)?;
        let text = String::from_utf8_lossy(&raw);
        let (head, rest) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| malformed("no end of headers"))?;
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| malformed("no status"))?;
        let chunked = head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked");
        let body = if chunked {
            dechunk(rest).ok_or_else(|| malformed("a broken chunked body"))?
        } else {
            rest.to_owned()
        };
        Ok(Response { status, body })
    }

    /// Sends `method path` with `body`; a 2xx answer's JSON (`null` when empty), else
    /// [`ClientError::Status`].
    ///
    /// # Errors
    /// As [`Client::send`], [`ClientError::Status`] for a refusal, [`ClientError::Json`] for a
    /// 2xx body that is not JSON.
    pub fn call<B: Serialize + ?Sized>(
        &self,
        method: &str,
        path: &str,
        body: Option<&B>,
    ) -> Result<Value, ClientError> {
        let r = self.send(method, path, body)?;
        if !(200..300).contains(&r.status) {
            return Err(ClientError::Status {
                socket: self.socket.clone(),
                method: method.to_owned(),
                path: path.to_owned(),
                status: r.status,
                message: r.message(),
            });
        }
        if r.body.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&r.body).map_err(|source| ClientError::Json {
            socket: self.socket.clone(),
            method: method.to_owned(),
            path: path.to_owned(),
            source,
        })
    }

    /// `GET path`.
    ///
    /// # Errors
    /// As [`Client::call`].
    pub fn get(&self, path: &str) -> Result<Value, ClientError> {
        self.call::<Value>("GET", path, None)
    }

    /// `POST path` with `body`.
    ///
    /// # Errors
    /// As [`Client::call`].
    pub fn post<B: Serialize + ?Sized>(&self, path: &str, body: &B) -> Result<Value, ClientError> {
        self.call("POST", path, Some(body))
    }

    /// `DELETE path`.
    ///
    /// # Errors
    /// As [`Client::call`].
    pub fn delete(&self, path: &str) -> Result<Value, ClientError> {
        self.call::<Value>("DELETE", path, None)
    }
}

/// One request with the default timeout; the answer's status and body whatever the status (for
/// tests and tools that look at refusals themselves).
///
/// # Errors
/// As [`Client::send`].
pub fn request(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<(u16, String), ClientError> {
    Client::new(socket)
        .send(method, path, body)
        .map(|r| (r.status, r.body))
}

/// Joins a chunked body; `None` if a chunk is cut short or its size is not hex.
fn dechunk(mut s: &str) -> Option<String> {
    let mut out = String::new();
    loop {
        let (size, rest) = s.split_once("\r\n")?;
        let n = usize::from_str_radix(size.trim(), 16).ok()?;
        if n == 0 {
            return Some(out);
        }
        out.push_str(rest.get(..n)?);
        s = rest.get(n..)?.strip_prefix("\r\n")?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn chunked_bodies_are_joined() {
        assert_eq!(
            dechunk("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n").as_deref(),
            Some("hello world")
        );
        assert_eq!(
            dechunk("3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n").as_deref(),
            Some("abcde")
        );
        assert_eq!(dechunk("zz\r\n"), None);
        assert_eq!(dechunk("9\r\nshort\r\n"), None);
    }

    /// Serves one connection on a fresh socket with `answer`; returns the client and what the
    /// server read.
    fn serve_once(
        answer: &'static str,
    ) -> (Client, std::thread::JoinHandle<String>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let l = UnixListener::bind(&path).unwrap();
        let t = std::thread::spawn(move || {
            let (mut c, _) = l.accept().unwrap();
            let mut buf = [0u8; 4096];
            let n = c.read(&mut buf).unwrap();
            c.write_all(answer.as_bytes()).unwrap();
            String::from_utf8_lossy(&buf[..n]).into_owned()
        });
        (Client::new(path), t, dir)
    }

    #[test]
    fn a_request_and_its_answer() {
        let (c, t, _d) = serve_once(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n7\r\n{\"a\":1}\r\n0\r\n\r\n",
        );
        let v = c
            .post("/v1/peers", &serde_json::json!({"address": "10.0.0.1"}))
            .unwrap();
        assert_eq!(v, serde_json::json!({"a": 1}));
        let req = t.join().unwrap();
        assert!(req.starts_with("POST /v1/peers HTTP/1.1\r\n"), "{req}");
        assert!(req.contains("Content-Length: 22\r\n"), "{req}");
        assert!(req.ends_with("{\"address\":\"10.0.0.1\"}"), "{req}");
    }

    #[test]
    fn a_refusal_carries_the_status_and_message() {
        let (c, t, _d) = serve_once(
            "HTTP/1.1 404 Not Found\r\nContent-Length: 46\r\n\r\n{\"error\":{\"message\":\"no port veth9\",\"x\":1}}  ",
        );
        let e = c.delete("/v1/ports/veth9").unwrap_err();
        t.join().unwrap();
        assert_eq!(e.status(), Some(404));
        let m = e.to_string();
        assert!(
            m.contains("DELETE /v1/ports/veth9") && m.ends_with("404: no port veth9"),
            "{m}"
        );
    }

    #[test]
    fn an_absent_switch_is_a_connect_error() {
        let d = tempfile::tempdir().unwrap();
        let e = Client::new(d.path().join("none.sock"))
            .get("/v1/health")
            .unwrap_err();
        assert!(matches!(e, ClientError::Connect { .. }), "{e:?}");
        assert!(e.to_string().contains("is kangaroo-switch running?"), "{e}");
    }

    #[test]
    fn a_non_http_answer_is_malformed() {
        let (c, t, _d) = serve_once("garbage");
        let e = c.get("/v1/health").unwrap_err();
        t.join().unwrap();
        assert!(matches!(e, ClientError::Malformed { .. }), "{e:?}");
    }
}
