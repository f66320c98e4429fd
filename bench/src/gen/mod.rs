//! The 64-byte frame generators behind `kangaroo-bench flood`, fastest first:
//! [`live::LiveGen`] (`BPF_PROG_TEST_RUN` live frames: the kernel transmits from a page pool),
//! [`afxdp::AfXdpGen`] (an AF_XDP socket's transmit ring, copy mode on veth) and
//! [`packet::PacketGen`] (AF_PACKET, 64 frames per `sendmmsg`).
//!
//! [`flood`] with [`Choice::Auto`] opens the first one the kernel allows and says which it used
//! and why the faster ones were passed over; figures from different generators are different
//! measurements, so results carry the generator's name with every sample. The environment
//! variable [`REFUSE_ENV`] names generators to treat as refused (comma-separated), so the
//! fallbacks can be exercised on a machine that allows them all.

pub mod afxdp;
pub mod live;
pub mod packet;

use std::time::{Duration, Instant};

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// Generators to treat as refused by the kernel, comma-separated names (tests of the fallbacks).
pub const REFUSE_ENV: &str = "KANGAROO_BENCH_REFUSE";

/// A frame generator.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum Generator {
    /// `BPF_PROG_TEST_RUN` in live-frames mode (Linux ≥ 5.18; some machines refuse it).
    #[value(alias = "xdp")]
    LiveFrames,
    /// An AF_XDP socket's transmit ring.
    Afxdp,
    /// AF_PACKET with `sendmmsg`.
    Packet,
}

impl Generator {
    /// Every generator, in the order [`Choice::Auto`] tries them (fastest first).
    pub const FALLBACK: [Generator; 3] =
        [Generator::LiveFrames, Generator::Afxdp, Generator::Packet];

    /// Name on the command line and in results.
    pub fn name(self) -> &'static str {
        match self {
            Generator::LiveFrames => "live-frames",
            Generator::Afxdp => "afxdp",
            Generator::Packet => "packet",
        }
    }

    /// Parses a name (`xdp` is the older name of `live-frames`).
    ///
    /// # Errors
    /// An unknown name, with the list.
    pub fn parse(s: &str) -> anyhow::Result<Generator> {
        match s {
            "xdp" => Ok(Generator::LiveFrames),
            _ => Generator::FALLBACK
                .into_iter()
                .find(|g| g.name() == s)
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "unknown generator {s:?}; known: {}",
                        Generator::FALLBACK.map(Generator::name).join(", ")
                    )
                }),
        }
    }
}

impl std::fmt::Display for Generator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Which generator to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    /// The first of [`Generator::FALLBACK`] the kernel allows.
    Auto,
    /// This one, or fail.
    Only(Generator),
}

impl Choice {
    /// Parses `auto` or a generator's name.
    ///
    /// # Errors
    /// An unknown name, with the list.
    pub fn parse(s: &str) -> anyhow::Result<Choice> {
        if s == "auto" {
            Ok(Choice::Auto)
        } else {
            Generator::parse(s)
                .map(Choice::Only)
                .map_err(|e| anyhow::anyhow!("{e}, or auto"))
        }
    }

    /// The name `parse` takes back.
    pub fn name(self) -> &'static str {
        match self {
            Choice::Auto => "auto",
            Choice::Only(g) => g.name(),
        }
    }

    fn candidates(self) -> Vec<Generator> {
        match self {
            Choice::Auto => Generator::FALLBACK.to_vec(),
            Choice::Only(g) => vec![g],
        }
    }
}

/// Where to send: the interface by name and index.
#[derive(Debug, Clone)]
pub struct Target {
    /// Interface name.
    pub name: String,
    /// Its index in the caller's network namespace.
    pub ifindex: u32,
}

impl Target {
    /// Looks `name` up in the caller's network namespace.
    ///
    /// # Errors
    /// No such interface.
    pub fn lookup(name: &str) -> anyhow::Result<Target> {
        let ifindex: u32 = std::fs::read_to_string(format!("/sys/class/net/{name}/ifindex"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .with_context(|| format!("no interface {name}"))?;
        Ok(Target {
            name: name.to_owned(),
            ifindex,
        })
    }
}

/// What a flood did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Flood {
    /// The generator that sent.
    pub generator: Generator,
    /// Frames sent.
    pub sent: u64,
    /// Frames the kernel refused because a queue was full (AF_PACKET only).
    pub refused: u64,
    /// Seconds spent sending.
    pub seconds: f64,
    /// Generators passed over, each with the reason.
    pub passed_over: Vec<(Generator, String)>,
}

impl Flood {
    /// Frames per second.
    pub fn pps(&self) -> f64 {
        self.sent as f64 / self.seconds.max(f64::MIN_POSITIVE)
    }
}

enum Open {
    Live(live::LiveGen),
    AfXdp(afxdp::AfXdpGen),
    Packet(packet::PacketGen),
}

fn open(g: Generator, target: &Target, frame: &[u8]) -> anyhow::Result<Open> {
    Ok(match g {
        Generator::LiveFrames => Open::Live(live::LiveGen::open(target.ifindex, frame)?),
        Generator::Afxdp => Open::AfXdp(afxdp::AfXdpGen::open(&target.name, frame)?),
        Generator::Packet => Open::Packet(packet::PacketGen::open(&target.name, frame)?),
    })
}

/// The generators [`REFUSE_ENV`] names.
///
/// # Errors
/// A name that is not a generator's.
pub fn refused_by_env() -> anyhow::Result<Vec<Generator>> {
    match std::env::var(REFUSE_ENV) {
        Ok(v) => v
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(Generator::parse)
            .collect::<anyhow::Result<_>>()
            .with_context(|| format!("{REFUSE_ENV}={v:?}")),
        Err(_) => Ok(Vec::new()),
    }
}

/// Sends `frame` out of `target` for `seconds` with the first generator of `choice` that opens
/// (and is not in `refuse`); `on_pass_over` hears of each generator passed over as it happens.
///
/// # Errors
/// No candidate opened (every reason is in the message), or the one that opened failed while
/// sending.
pub fn flood(
    choice: Choice,
    target: &Target,
    frame: &[u8],
    seconds: f64,
    refuse: &[Generator],
    mut on_pass_over: impl FnMut(Generator, &str),
) -> anyhow::Result<Flood> {
    let mut passed_over = Vec::new();
    for g in choice.candidates() {
        let opened = if refuse.contains(&g) {
            Err(anyhow::anyhow!("refused ({REFUSE_ENV})"))
        } else {
            open(g, target, frame)
        };
        let gen = match opened {
            Ok(o) => o,
            Err(e) => {
                let why = format!("{e:#}");
                on_pass_over(g, &why);
                passed_over.push((g, why));
                continue;
            }
        };
        let started = Instant::now();
        let deadline = started + Duration::from_secs_f64(seconds);
        let (sent, refused) = match gen {
            Open::Live(mut l) => (l.run_until(deadline)?, 0),
            Open::AfXdp(mut a) => (a.run_until(deadline)?, 0),
            Open::Packet(mut p) => p.run_until(deadline)?,
        };
        return Ok(Flood {
            generator: g,
            sent,
            refused,
            seconds: started.elapsed().as_secs_f64(),
            passed_over,
        });
    }
    let reasons: Vec<String> = passed_over
        .iter()
        .map(|(g, why)| format!("{g}: {why}"))
        .collect();
    anyhow::bail!(
        "no frame generator could be opened ({})",
        reasons.join("; ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for g in Generator::FALLBACK {
            assert_eq!(Generator::parse(g.name()).unwrap(), g);
            assert_eq!(Choice::parse(g.name()).unwrap(), Choice::Only(g));
            assert_eq!(
                serde_json::to_value(g).unwrap(),
                serde_json::Value::from(g.name())
            );
        }
        assert_eq!(Generator::parse("xdp").unwrap(), Generator::LiveFrames);
        assert_eq!(Choice::parse("auto").unwrap(), Choice::Auto);
        let e = Choice::parse("dpdk").unwrap_err().to_string();
        assert!(e.contains("live-frames, afxdp, packet, or auto"), "{e}");
    }

    #[test]
    fn every_refused_generator_is_named_with_its_reason() {
        let target = Target {
            name: "kb-no-such-if".into(),
            ifindex: 0,
        };
        let mut heard = Vec::new();
        let e = flood(
            Choice::Auto,
            &target,
            &[0u8; 60],
            0.1,
            &Generator::FALLBACK,
            |g, _| heard.push(g),
        )
        .unwrap_err()
        .to_string();
        assert_eq!(heard, Generator::FALLBACK.to_vec());
        for g in Generator::FALLBACK {
            assert!(e.contains(&format!("{g}: refused ({REFUSE_ENV})")), "{e}");
        }
    }
}
