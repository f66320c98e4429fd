//! The switch's configuration file parser.
//!
//! Oracles: never panics; a rejection's message names where (the origin) it came from; an
//! accepted configuration has a valid interface name for every port and no port twice.

#![no_main]
#![deny(unsafe_code)]

use kangaroo_switch::config::{valid_ifname, Config};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::parse("fuzz.toml", text) {
        Ok(c) => {
            let mut seen = std::collections::HashSet::new();
            for p in &c.ports {
                assert!(
                    valid_ifname(&p.interface),
                    "accepted port {:?}",
                    p.interface
                );
                assert!(
                    seen.insert(p.interface.clone()),
                    "accepted {} twice",
                    p.interface
                );
            }
            let _ = c.mode_reason();
        }
        Err(e) => {
            let m = e.to_string();
            assert!(
                m.contains("fuzz.toml"),
                "a rejection that does not say where: {m}"
            );
        }
    }
});
