//! `kangaroo-switch check`: usable configurations pass; unusable ones exit non-zero naming why.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

fn check(text: &str) -> (bool, String) {
    let dir = std::env::temp_dir().join(format!(
        "kangaroo-check-{}-{:x}",
        std::process::id(),
        rand::random::<u64>()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("switch.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_kangaroo-switch"))
        .args(["check", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn a_usable_config_passes() {
    // The loopback interface exists everywhere.
    let (ok, out) = check("mode = \"packet\"\n[[port]]\ninterface = \"lo\"\nvni = 100\n");
    assert!(ok, "{out}");
    assert!(out.contains(": ok (Packet mode, 1 ports"), "{out}");
}

#[test]
fn unusable_configs_fail_naming_the_problem() {
    let cases = [
        (
            "[[port]]\ninterface = \"kgr-missing0\"\nvni = 100\n",
            "port[0].interface: interface kgr-missing0 does not exist",
        ),
        (
            "[[port]]\ninterface = \"lo\"\nvni = 100\n[[port]]\ninterface = \"lo\"\nvni = 200\n",
            "port[1].interface: lo is already port[0]",
        ),
        (
            "[[port]]\ninterface = \"lo\"\nvni = 100\nspeed = 10\n",
            "unknown field `speed`",
        ),
    ];
    for (text, needle) in cases {
        let (ok, out) = check(text);
        assert!(!ok, "{text:?} must be refused");
        assert!(out.contains(needle), "{out:?} should mention {needle:?}");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_kangaroo-switch"))
        .args(["check", "--config", "/nonexistent/switch.toml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/switch.toml: cannot read"));
}

#[test]
fn every_counter_is_documented_in_operations_md() {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/operations.md"
    ))
    .unwrap();
    let mut names: Vec<String> = kangaroo_switch::DropReason::ALL
        .iter()
        .map(|r| r.name().to_owned())
        .collect();
    let events = serde_json::to_value(kangaroo_switch::stats::EventCounters::default()).unwrap();
    names.extend(events.as_object().unwrap().keys().cloned());
    names.extend(
        kangaroo_xdp::Counter::ALL
            .iter()
            .map(|c| c.name().to_owned()),
    );
    for n in names {
        assert!(
            doc.contains(&format!("| `{n}` |")),
            "docs/operations.md has no table row for the counter `{n}`"
        );
    }
}
