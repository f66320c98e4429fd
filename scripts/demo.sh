#!/usr/bin/env bash
# The main job on one machine: builds kangaroo-switch and runs two switches joined by a VXLAN
# underlay, with two tenants whose nested VMs (real TCP/IP stacks) ping and stream TCP through
# them on overlapping addresses, then prints what crossed the network.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
cargo build --release --locked -p kangaroo-switch
./target/release/kangaroo-switch simulate "$@"
