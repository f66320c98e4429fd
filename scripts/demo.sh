#!/usr/bin/env bash
# The main job on one machine:
#  1. the data plane: two kangaroo-switch instances joined by a VXLAN underlay; two tenants, each
#     with a nested VM behind each switch on the same IP addresses, ping and stream TCP through
#     the tunnels (real TCP/IP stacks on in-memory ports; no root needed);
#  2. the orchestrator: `kangaroo serve` with a simulated provider; a tenant network; a workload
#     planned on the 2014 and 2026 price lists, applied, listed, billed, and a VM migrated.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
cargo build --release --locked -p kangaroo-switch -p kangaroo-orchestrator

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "Data plane: two switches, two tenants, one VXLAN underlay"
./target/release/kangaroo-switch simulate

say "Orchestrator: cost-aware packing of examples/shop.toml"
K=./target/release/kangaroo
data=$(mktemp -d)
port=$(( 20000 + RANDOM % 20000 ))
export KANGAROO_URL="http://127.0.0.1:$port" KANGAROO_DATA_DIR="$data"
"$K" serve --listen "127.0.0.1:$port" --provider sim=ec2-2026 2>/dev/null &
server=$!
trap 'kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; rm -rf "$data"' EXIT
for _ in $(seq 1 100); do
  curl -fsS "$KANGAROO_URL/health" >/dev/null 2>&1 && break
  sleep 0.1
done

echo "-- plan on the 2014 price list (the paper's era)"
sed 's/^catalog = "ec2-2026"/catalog = "ec2-2014"/' orchestrator/examples/shop.toml > "$data/shop-2014.toml"
"$K" plan -f "$data/shop-2014.toml"
echo
echo "-- plan on the 2026 price list"
"$K" plan -f orchestrator/examples/shop.toml
echo
echo "-- apply it"
"$K" network create shop --vni 100 --subnet 192.168.100.0/24
"$K" apply -f orchestrator/examples/shop.toml
"$K" host ls
"$K" vm ls
echo
echo "-- a new VM is placed without moving anything (renting only if nothing fits)"
"$K" vm create web-4 --vcpus 1 --memory 2GiB --network shop --anti-affinity web-spread
echo
echo "-- consolidation proposal, and the bill after one simulated hour"
"$K" consolidate --dry-run
curl -fsS -H "Authorization: Bearer $(cat "$data/token")" -d '{"advance_secs": 3600}' "$KANGAROO_URL/v1/billing/clock" >/dev/null
"$K" billing
