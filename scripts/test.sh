#!/usr/bin/env bash
# Sets up this machine and runs the whole test suite: formatting, lints, unit, property,
# simulation and end-to-end tests, one quick pass of every benchmark in test mode, and every
# fuzz target for 20 s.
#
#   scripts/test.sh            everything CI runs
#
# Exit status is non-zero if any step fails.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh

step() { printf '\n==> %s\n' "$*"; }

# The OpenStack clients the compatibility tests drive come from PyPI: fetch them while the
# build runs (orchestrator/tests/openstack.rs finds them in target/debug/openstack-client).
mkdir -p target/debug
bash scripts/openstack-client.sh target/debug/openstack-client >target/openstack-client.log 2>&1 &
clients=$!

step "cargo fmt --check"
cargo fmt --all -- --check
(cd fuzz && cargo fmt -- --check)

step "cargo clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

# Criterion runs each benchmark once when it is not given --bench: this proves they run, not how
# fast. They build in the test profile, with the tests' dependencies (the release profile's LTO
# build is for `cargo bench`, which measures).
step "benchmarks, one iteration each (test mode)"
cargo test --workspace --bench pipeline --bench packing --locked

step "cargo test (workspace)"
if ! wait "$clients"; then
	cat target/openstack-client.log
	echo "installing the OpenStack clients failed" >&2
	exit 1
fi
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --workspace --locked --no-fail-fast 2>&1 | tee "$log"
# One closing line with the totals over every test binary.
awk '/^test result:/ { p += $4; f += $6 } END { printf "\ntests: %d passed, %d failed\n", p, f }' "$log"

step "fuzz targets, 20 s each (scripts/fuzz.sh --smoke)"
bash scripts/fuzz.sh --smoke 20
