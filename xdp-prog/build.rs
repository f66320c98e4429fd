//! Compiles `bpf/switch.bpf.c` into a BPF object with clang.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let out = PathBuf::from(std::env::var_os("OUT_DIR").unwrap_or_default());
    let src = manifest.join("bpf/switch.bpf.c");
    let obj = out.join("switch.bpf.o");
    for f in ["bpf/switch.bpf.c", "bpf/abi.h"] {
        println!("cargo:rerun-if-changed={f}");
    }
    println!("cargo:rerun-if-env-changed=CLANG");
    let clang = std::env::var("CLANG").unwrap_or_else(|_| "clang".to_owned());
    let mut cmd = Command::new(&clang);
    cmd.args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror"])
        // <asm/types.h> lives here when gcc-multilib's /usr/include/asm is absent.
        .arg("-I/usr/include/x86_64-linux-gnu")
        .arg("-c")
        .arg(&src)
        .arg("-o")
        .arg(&obj);
    match cmd.status() {
        Ok(s) if s.success() => {}
        Ok(s) => {
            eprintln!(
                "error: {clang} failed ({s}) compiling {}; the BPF build needs the Debian packages \
                 clang, llvm, libbpf-dev and gcc-multilib (scripts/install-deps.sh installs them)",
                src.display()
            );
            std::process::exit(1);
        }
        Err(e) => {
            eprintln!(
                "error: cannot run {clang} ({e}): install the Debian package clang \
                 (scripts/install-deps.sh installs every build dependency)"
            );
            std::process::exit(1);
        }
    }
}
