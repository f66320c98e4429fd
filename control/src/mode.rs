//! The switch's datapath modes.

use serde::{Deserialize, Serialize};

/// How frames reach user space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// XDP fast path in the kernel, AF_XDP for the rest.
    Xdp,
    /// tc (clsact ingress) fast path in the kernel, keeping the guests' offloads; punt devices
    /// for the rest.
    Tc,
    /// AF_XDP sockets steered by XDP; every frame through user space.
    Afxdp,
    /// AF_PACKET sockets and a UDP socket; no eBPF.
    Packet,
}

/// The mode a file that names none gets (see docs/datapath.md for the measurements behind it).
pub const DEFAULT_MODE: Mode = Mode::Tc;

impl Mode {
    /// Every mode.
    pub const ALL: [Mode; 4] = [Mode::Xdp, Mode::Tc, Mode::Afxdp, Mode::Packet];

    /// Name in files and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Xdp => "xdp",
            Mode::Tc => "tc",
            Mode::Afxdp => "afxdp",
            Mode::Packet => "packet",
        }
    }

    /// What the mode is good at, for the start-up log.
    pub fn trade_off(self) -> &'static str {
        match self {
            Mode::Xdp => {
                "highest small-frame rate (XDP fast path); native XDP turns the guests' TSO off, \
                 so bulk TCP runs below kernel speed"
            }
            Mode::Tc => {
                "keeps the guests' TSO and checksum offloads (tc fast path): bulk TCP at kernel \
                 speed; lower small-frame rate than xdp"
            }
            Mode::Afxdp => "every frame through user space over AF_XDP; no kernel fast path",
            Mode::Packet => "portable fallback: AF_PACKET and UDP sockets, no eBPF",
        }
    }
}

impl std::str::FromStr for Mode {
    type Err = String;

    /// Parses a mode's name; the error lists the names.
    fn from_str(s: &str) -> Result<Mode, String> {
        Mode::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| {
                format!(
                    "{s:?} is not a datapath mode: use {}",
                    Mode::ALL.map(Mode::name).join(", ")
                )
            })
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_agree_everywhere() {
        use clap::ValueEnum;
        for m in Mode::ALL {
            let v = m.to_possible_value().unwrap();
            assert_eq!(v.get_name(), m.name());
            assert_eq!(
                serde_json::to_value(m).unwrap(),
                serde_json::Value::from(m.name())
            );
            assert_eq!(<Mode as ValueEnum>::from_str(m.name(), false).unwrap(), m);
            assert_eq!(m.name().parse::<Mode>().unwrap(), m);
        }
        let e = "dpdk".parse::<Mode>().unwrap_err();
        assert_eq!(
            e,
            "\"dpdk\" is not a datapath mode: use xdp, tc, afxdp, packet"
        );
    }
}
