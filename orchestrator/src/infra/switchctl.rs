//! A client of a `kangaroo-switch` control socket (HTTP/1.1 over a Unix socket).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use super::{InfraError, Result};

/// Sends `method path` with an optional JSON body; returns the status and the body text.
pub fn request(socket: &Path, method: &str, path: &str, body: Option<&Value>) -> Result<Value> {
    let step = format!("switch {}: {method} {path}", socket.display());
    let mut s = UnixStream::connect(socket).map_err(|e| InfraError::new(&step, e))?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(10)));
    let body = body.map(Value::to_string).unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: switch\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes())
        .map_err(|e| InfraError::new(&step, e))?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)
        .map_err(|e| InfraError::new(&step, e))?;
    let text = String::from_utf8_lossy(&resp);
    let (head, payload) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| InfraError::new(&step, "a response without headers"))?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| InfraError::new(&step, "a response without a status"))?;
    let payload = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(payload)
    } else {
        payload.to_owned()
    };
    if !(200..300).contains(&status) {
        return Err(InfraError::new(
            &step,
            format!("{status}: {}", payload.trim()),
        ));
    }
    if payload.trim().is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_str(&payload).map_err(|e| InfraError::new(&step, e))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_bodies_are_joined() {
        assert_eq!(dechunk("3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"), "abcde");
        assert_eq!(dechunk("zz\r\n"), "");
    }
}
