//! UDP request/response latency: one datagram out, wait for it back, repeat.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{json, Value};

/// Echoes every datagram on `listen` back to its sender, for at most `seconds`.
///
/// # Errors
/// The socket cannot be bound.
pub fn serve(listen: SocketAddr, seconds: f64) -> anyhow::Result<()> {
    let s = UdpSocket::bind(listen).with_context(|| format!("binding {listen}"))?;
    s.set_read_timeout(Some(Duration::from_millis(200)))?;
    let deadline = Instant::now() + Duration::from_secs_f64(seconds.clamp(0.1, 3600.0));
    let mut buf = [0u8; 2048];
    while Instant::now() < deadline {
        if let Ok((n, from)) = s.recv_from(&mut buf) {
            let _ = s.send_to(&buf[..n], from);
        }
    }
    Ok(())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Sends `count` requests to `to`, one at a time (a reply or a 1 s timeout before the next);
/// returns the round-trip figures in microseconds and the losses.
///
/// # Errors
/// The socket cannot be set up, or nothing came back (to the first 5 requests, or at all).
pub fn client(to: SocketAddr, count: u32) -> anyhow::Result<Value> {
    let s = UdpSocket::bind("0.0.0.0:0")?;
    s.connect(to)
        .with_context(|| format!("connecting to {to}"))?;
    let mut buf = [0u8; 64];
    let mut rtts = Vec::with_capacity(count as usize);
    let mut lost = 0u32;
    // Warm-up: resolution and learning along the path are not part of the figure.
    s.set_read_timeout(Some(Duration::from_millis(200)))?;
    for _ in 0..10 {
        let _ = s.send(&[0u8; 32]);
        let _ = s.recv(&mut buf);
    }
    s.set_read_timeout(Some(Duration::from_secs(1)))?;
    for i in 0..count {
        // A path that answers nothing is a result, not something to wait out.
        if rtts.is_empty() && lost >= 5 {
            anyhow::bail!("no reply from {to} to the first {lost} requests");
        }
        let mut msg = [0u8; 32];
        msg[..4].copy_from_slice(&i.to_be_bytes());
        let t = Instant::now();
        s.send(&msg)?;
        loop {
            match s.recv(&mut buf) {
                Ok(n) if n >= 4 && buf[..4] == i.to_be_bytes() => {
                    rtts.push(t.elapsed().as_secs_f64() * 1e6);
                    break;
                }
                Ok(_) => continue, // a late reply to an earlier request
                Err(_) => {
                    lost += 1;
                    break;
                }
            }
        }
    }
    anyhow::ensure!(!rtts.is_empty(), "no reply from {to} to {count} requests");
    rtts.sort_by(f64::total_cmp);
    let mean = rtts.iter().sum::<f64>() / rtts.len() as f64;
    Ok(json!({
        "count": count,
        "lost": lost,
        "p50_us": percentile(&rtts, 0.5),
        "p99_us": percentile(&rtts, 0.99),
        "min_us": rtts[0],
        "max_us": rtts[rtts.len() - 1],
        "mean_us": mean,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_over_loopback() {
        let probe = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = probe.local_addr().unwrap();
        drop(probe);
        let server = std::thread::spawn(move || serve(addr, 3.0));
        std::thread::sleep(Duration::from_millis(100));
        let v = client(addr, 200).unwrap();
        assert_eq!(v["lost"], 0);
        let (p50, p99) = (v["p50_us"].as_f64().unwrap(), v["p99_us"].as_f64().unwrap());
        assert!(p50 > 0.0 && p50 <= p99, "{v}");
        server.join().unwrap().unwrap();
    }

    #[test]
    fn percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 51.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert!(percentile(&[], 0.5).is_nan());
    }
}
