//! Packing speed: a whole plan at 100 and 1,000 VMs, and one incremental placement decision
//! into a deployment of 10,000 VMs. Quality figures (cost ratios) come from
//! `kangaroo-bench packing`.

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use kangaroo_orchestrator::catalog::Catalog;
use kangaroo_orchestrator::model::Name;
use kangaroo_orchestrator::packing::{self, synth, ExistingHost, PackOptions};

fn bench(c: &mut Criterion) {
    let opts = PackOptions::default();
    for cat in ["ec2-2014", "ec2-2026"] {
        let catalog = Catalog::load(cat).unwrap().instances;
        for n in [100usize, 1000] {
            let vms = synth::workload(42, n);
            c.bench_function(&format!("plan/{cat}/{n}"), |b| {
                b.iter(|| packing::plan(black_box(&vms), &catalog, &opts))
            });
        }
        let vms = synth::workload(7, 10_000);
        let plan = packing::plan(&vms, &catalog, &opts);
        let hosts: Vec<ExistingHost> = plan
            .hosts
            .iter()
            .enumerate()
            .map(|(i, h)| ExistingHost {
                name: Name::new(&format!("host-{i}")).unwrap(),
                instance_type: catalog
                    .iter()
                    .find(|t| t.name == h.instance_type)
                    .unwrap()
                    .clone(),
                vms: h
                    .vms
                    .iter()
                    .map(|v| vms.iter().find(|d| &d.name == v).unwrap().clone())
                    .collect(),
            })
            .collect();
        let newcomers = synth::workload(99, 64);
        let mut k = 0;
        c.bench_function(&format!("place_one/{cat}/10000"), |b| {
            b.iter(|| {
                k = (k + 1) % newcomers.len();
                packing::place_one(black_box(&newcomers[k]), &hosts, &catalog, &opts)
            })
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
