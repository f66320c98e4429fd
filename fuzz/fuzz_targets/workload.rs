//! The orchestrator's workload and catalog files, and the packer on whatever they accept.
//!
//! Oracles: never panics; an accepted workload's demands are what it lists (positive sizes);
//! an accepted catalog lists only instance types with positive capacity and a finite price.

#![no_main]
#![deny(unsafe_code)]

use kangaroo_orchestrator::catalog::Catalog;
use kangaroo_orchestrator::workload::Workload;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    if sel % 2 == 0 {
        if let Ok(w) = Workload::parse(text) {
            for d in w.demands() {
                let r = d.resources;
                assert!(r.cpu_quarters > 0 && r.memory_mib > 0, "empty demand {d:?}");
            }
        }
    } else if let Ok(c) = Catalog::parse("fuzz", text) {
        for i in &c.instances {
            assert!(i.vcpus > 0 && i.memory_mib > 0, "{i:?}");
            assert!(
                i.price_per_hour.is_finite() && i.price_per_hour >= 0.0,
                "{i:?}"
            );
        }
    }
});
