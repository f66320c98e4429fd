//! The live-frames generator of `kangaroo-bench flood --generator live-frames`: the generator
//! program (`kangaroo_gen`) run with `BPF_PROG_TEST_RUN` in live-frames mode, so the kernel
//! transmits the frame out of the target interface straight from a page pool, in batches, with
//! no socket and no socket buffer: what a hardware generator does to a NIC. One core generates;
//! on a veth the receiving end's processing runs on the same core (its NAPI runs when the batch
//! is flushed).
//!
//! Some kernels and machines refuse live frames (before Linux 5.18; `EPERM` seen where root lacks
//! `CAP_SYS_RESOURCE`): [`LiveGen::open`] probes with one frame, so a refusal shows before the
//! measurement starts and the caller can fall back to another generator.

use std::time::Instant;

use anyhow::Context;
use aya::maps::Array;
use aya::programs::{TestRun, TestRunAttrs, TestRunOptions, Xdp};
use aya::{Ebpf, EbpfLoader};

/// Frames per `BPF_PROG_TEST_RUN` call: small enough that a call ends promptly at the deadline.
const FRAMES_PER_CALL: u32 = 65_536;
/// Frames per kernel batch (the live-frames mode's flush unit).
const BATCH: u32 = 64;

/// A loaded live-frames generator aimed at one interface.
pub struct LiveGen {
    ebpf: Ebpf,
    frame: Vec<u8>,
}

impl LiveGen {
    /// Loads the generator program, aims it at `ifindex` and sends one frame to prove the kernel
    /// allows live frames here.
    ///
    /// # Errors
    /// The program cannot be loaded (no BPF, no privilege) or the kernel refuses a live-frames
    /// run (before Linux 5.18, a machine that refuses it, or an interface that cannot transmit
    /// XDP frames).
    pub fn open(ifindex: u32, frame: &[u8]) -> anyhow::Result<LiveGen> {
        // Only the generator's own map matters; the switch's tables are made as small as they go.
        let mut loader = EbpfLoader::new();
        for (map, n) in [
            (kangaroo_xdp::FDB_MAP, 1),
            (kangaroo_xdp::ARP_MAP, 1),
            (kangaroo_xdp::PEER_VNIS_MAP, 1),
        ] {
            loader.map_max_entries(map, n);
        }
        let mut ebpf = loader
            .load(kangaroo_xdp::OBJECT)
            .context("loading the generator object")?;
        let mut target: Array<_, u32> = Array::try_from(
            ebpf.map_mut(kangaroo_xdp::GEN_TARGET_MAP)
                .context("the object has no generator target map")?,
        )
        .context("the generator target map")?;
        target
            .set(0, ifindex, 0)
            .context("setting the generator's target")?;
        let prog: &mut Xdp = ebpf
            .program_mut(kangaroo_xdp::GEN_PROGRAM)
            .context("the object has no generator program")?
            .try_into()
            .context("the generator program")?;
        prog.load().context("loading the generator program")?;
        let mut gen = LiveGen {
            ebpf,
            frame: frame.to_vec(),
        };
        gen.call(1)
            .context("a live-frames probe (BPF_PROG_TEST_RUN)")?;
        Ok(gen)
    }

    fn call(&mut self, repeat: u32) -> anyhow::Result<()> {
        let prog: &mut Xdp = self
            .ebpf
            .program_mut(kangaroo_xdp::GEN_PROGRAM)
            .context("the object has no generator program")?
            .try_into()
            .context("the generator program")?;
        prog.test_run(TestRunOptions {
            data_in: Some(&self.frame),
            repeat,
            attrs: TestRunAttrs::new().xdp_live_frames(BATCH),
            ..TestRunOptions::new()
        })?;
        Ok(())
    }

    /// Sends until `deadline`; returns the frames sent.
    ///
    /// # Errors
    /// The kernel refused a run.
    pub fn run_until(&mut self, deadline: Instant) -> anyhow::Result<u64> {
        let mut sent = 0u64;
        while Instant::now() < deadline {
            self.call(FRAMES_PER_CALL)
                .context("a live-frames run (BPF_PROG_TEST_RUN)")?;
            sent += u64::from(FRAMES_PER_CALL);
        }
        Ok(sent)
    }
}
