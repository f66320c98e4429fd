//! A small client of QEMU's machine protocol (QMP): one JSON object per line, a greeting,
//! capabilities negotiation, then commands answered by `return` or `error`, with asynchronous
//! `event`s in between (skipped).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use crate::sys::{InfraError, Result};

/// A QMP connection.
pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    what: String,
}

impl Qmp {
    /// Connects to the QMP socket at `path` and negotiates capabilities.
    ///
    /// # Errors
    /// If the socket is missing, QEMU does not greet, or refuses capabilities.
    pub fn connect(path: &Path) -> Result<Qmp> {
        let what = format!("QMP {}", path.display());
        let s = UnixStream::connect(path).map_err(|e| InfraError::new(&what, e))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| InfraError::new(&what, e))?;
        let writer = s.try_clone().map_err(|e| InfraError::new(&what, e))?;
        let mut q = Qmp {
            reader: BufReader::new(s),
            writer,
            what,
        };
        let greeting = q.read()?;
        if greeting.get("QMP").is_none() {
            return Err(InfraError::new(
                &q.what,
                format!("unexpected greeting {greeting}"),
            ));
        }
        q.execute("qmp_capabilities", None)?;
        Ok(q)
    }

    fn read(&mut self) -> Result<Value> {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .map_err(|e| InfraError::new(&self.what, e))?;
        if n == 0 {
            return Err(InfraError::new(&self.what, "QEMU closed the connection"));
        }
        serde_json::from_str(&line)
            .map_err(|e| InfraError::new(&self.what, format!("{e}: {}", line.trim())))
    }

    /// Runs `command` with `arguments`; returns its `return` value.
    ///
    /// # Errors
    /// QEMU's error (class and description), or a broken connection.
    pub fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value> {
        let mut msg = json!({ "execute": command });
        if let Some(a) = arguments {
            msg["arguments"] = a;
        }
        let mut line = msg.to_string();
        line.push('\n');
        self.writer
            .write_all(line.as_bytes())
            .map_err(|e| InfraError::new(&self.what, e))?;
        loop {
            let v = self.read()?;
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = v.get("error") {
                return Err(InfraError::new(
                    format!("{}: {command}", self.what),
                    format!(
                        "{}: {}",
                        e.get("class").and_then(Value::as_str).unwrap_or("Error"),
                        e.get("desc").and_then(Value::as_str).unwrap_or("")
                    ),
                ));
            }
            // An event: skip it.
        }
    }

    /// The run state (`running`, `paused`, `inmigrate`, `postmigrate`, …).
    ///
    /// # Errors
    /// As [`Qmp::execute`].
    pub fn status(&mut self) -> Result<String> {
        let v = self.execute("query-status", None)?;
        Ok(v.get("status")
            .and_then(Value::as_str)
            .unwrap_or("unknown")
            .to_owned())
    }
}
