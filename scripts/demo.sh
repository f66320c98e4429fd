#!/usr/bin/env bash
# The main job on one machine (root, Debian bookworm): the whole system, for real.
#
#  1. builds everything and the nested-VM guest image (a Debian cloud kernel + busybox);
#  2. starts the orchestrator with two local providers, "cloud-a" (2014 EC2 prices) and
#     "cloud-b" (2026 prices): their hosts are network namespaces on separate underlay subnets,
#     joined by a router, each running its own kangaroo-switch;
#  3. deploys a 3-VM application (two affinity groups, one network) placed for cost: the hosts
#     are rented, the nested VMs boot under QEMU, their NICs become switch ports;
#  4. shows traffic across hosts through the switches' VXLAN overlay;
#  5. live-migrates a VM to a host of the other cloud while it is pinged every 50 ms, and prints
#     the interruption and that the guest kept running; shows that the tunnels between the
#     clouds are encrypted (secure tunnels) and those inside a cloud plain VXLAN;
#  6. moves the whole application to cloud-b while a client polls it, and prints the failed
#     requests (none expected);
#  7. prints the hourly cost against one VM per instance, and releases everything.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

if [ "$(id -u)" -ne 0 ]; then
  echo "demo: run as root (it creates namespaces, taps and XDP programs)" >&2
  exit 1
fi

say "Setting up (Debian packages, an optimised build, the guest image)"
bash scripts/install-deps.sh
cargo build --profile demo --locked -p kangaroo-switch -p kangaroo-orchestrator
guest=${KANGAROO_GUEST_DIR:-/var/cache/kangaroo/guest}
bash scripts/build-guest-image.sh "$guest" >/dev/null
echo "guest image: $guest"

K=$PWD/target/demo/kangaroo
data=$(mktemp -d /tmp/kangaroo-demo.XXXXXX)
port=$(( 20000 + RANDOM % 12000 ))  # below the ephemeral range
export KANGAROO_URL="http://127.0.0.1:$port" KANGAROO_DATA_DIR="$data"
server=
cleanup() {
  set +e
  if [ -n "$server" ] && kill -0 "$server" 2>/dev/null; then
    for v in $("$K" --json vm ls 2>/dev/null | python3 -c 'import json,sys; print(" ".join(v["name"] for v in json.load(sys.stdin)))'); do
      "$K" vm rm "$v" >/dev/null
    done
    for h in $("$K" --json host ls 2>/dev/null | python3 -c 'import json,sys; print(" ".join(h["name"] for h in json.load(sys.stdin)))'); do
      "$K" host rm "$h" >/dev/null
    done
    kill "$server"; wait "$server" 2>/dev/null
  fi
  rm -rf "$data"
}
trap cleanup EXIT

say "Orchestrator: two local clouds, nested VMs under QEMU"
ns_before=$(ip netns list | awk '{print $1}' | sort)
"$K" serve --listen "127.0.0.1:$port" \
  --provider cloud-a=local:ec2-2014 --provider cloud-b=local:ec2-2026 \
  --vm-driver qemu --guest-image "$guest" 2>"$data/serve.log" &
server=$!
for _ in $(seq 1 100); do
  curl -fsS "$KANGAROO_URL/health" >/dev/null 2>&1 && break
  sleep 0.1
done
"$K" catalog ls

say "Deploy: 3 VMs in two affinity groups, placed for cost (orchestrator/examples/demo.toml)"
"$K" network create shop --vni 100 --subnet 192.168.100.0/24
"$K" plan -f orchestrator/examples/demo.toml
time "$K" apply -f orchestrator/examples/demo.toml
"$K" host ls
"$K" vm ls
db_host=$("$K" --json vm show db | python3 -c 'import json,sys; print(json.load(sys.stdin)["host"])')
# An observer on the tenant network (a namespace VM: it can run commands) next to the database.
"$K" vm create probe --vcpus 0.25 --memory 256MiB --network shop --host "$db_host" --driver netns
ip_of() { "$K" --json vm show "$1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["ip"])'; }
web1=$(ip_of web-1); web2=$(ip_of web-2); db=$(ip_of db)

say "Traffic across hosts through the switches (VXLAN between the host namespaces)"
for ip in "$web1" "$web2" "$db"; do
  for _ in $(seq 1 150); do
    "$K" vm exec probe -- curl -fsS -m 1 "http://$ip/" >/dev/null 2>&1 && break
    sleep 0.2
  done
done
"$K" vm exec probe -- ping -c 3 -i 0.2 "$web1" | tail -2
for ip in "$web1" "$web2" "$db"; do
  printf '%-15s says: %s\n' "$ip" "$("$K" vm exec probe -- curl -fsS -m 2 "http://$ip/")"
done

say "Live migration: web-2 to a host of cloud-b while it is pinged every 50 ms"
"$K" host add t3.medium --name b1 --provider cloud-b
before=$("$K" vm exec probe -- curl -fsS -m 2 "http://$web2/")
"$K" vm exec probe -- ping -D -i 0.05 -c 120 -W 1 "$web2" > "$data/ping.log" 2>&1 &
pinger=$!
sleep 1.5
"$K" vm migrate web-2 --to b1
wait "$pinger" || true
after=$("$K" vm exec probe -- curl -fsS -m 2 "http://$web2/")
python3 - "$data/ping.log" <<'PY'
import re, sys
seqs = [int(m.group(1)) for m in re.finditer(r"bytes from .* icmp_seq=(\d+)", open(sys.argv[1]).read())]
sent = 120
bounds = [0] + seqs + [sent + 1]
gap = max(b - a for a, b in zip(bounds, bounds[1:]))
print(f"pings: {len(seqs)}/{sent} answered; longest interruption {gap * 50} ms")
PY
echo "before: $before"
echo "after:  $after   (same boot id, the counter went on: the guest never stopped)"
"$K" vm ls

say "Tunnels of b1: secure (WireGuard protocol) to cloud-a's hosts, plain VXLAN inside a cloud"
"$K" host tunnels b1

say "The whole application moves to cloud-b (packed for cost there) while a client polls it"
poll() {
  local ok=0 fail=0 i=0 ips=("$web1" "$web2" "$db")
  # Bounded: at most 600 requests, until the flag file appears.
  while [ ! -e "$data/stop" ] && [ "$i" -lt 600 ]; do
    if "$K" vm exec probe -- curl -fsS -m 2 -o /dev/null "http://${ips[$((i % 3))]}/cgi-bin/hits"; then
      ok=$((ok + 1))
    else
      fail=$((fail + 1))
    fi
    i=$((i + 1))
    sleep 0.05
  done
  echo "client requests during the move: $ok answered, $fail failed"
}
poll > "$data/poll.log" &
poller=$!
sleep 1
"$K" app migrate shop --to cloud-b
touch "$data/stop"
wait "$poller" || true
cat "$data/poll.log"
"$K" host ls
"$K" vm ls

say "What it costs"
"$K" billing
"$K" consolidate --dry-run

say "Releasing everything"
cleanup
trap - EXIT
left=$(comm -13 <(echo "$ns_before") <(ip netns list | awk '{print $1}' | sort))
echo "released every host and VM; namespaces left behind: ${left:-none}"
