#!/usr/bin/env bash
# Two nested VMs (namespaces) on one host namespace, joined either by a Linux bridge or by
# kangaroo-switch in packet mode; measures ping RTT and TCP throughput (iperf3, guests with default
# offloads) for each, alternating contenders A B A B so drift hits both alike, and prints medians.
#
#   bench/scripts/local-pair.sh [ROUNDS] [SECONDS]      (root; defaults 3 rounds of 3 s)
#
# Everything it creates has a name unique to this run and is removed on exit, also on Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds=${1:-3}
secs=${2:-3}
id=$$
H=kb$id-h; V1=kb$id-v1; V2=kb$id-v2
bin=./target/release/kangaroo-switch
cfg=$(mktemp)
sw_pid=

cleanup() {
  [ -n "$sw_pid" ] && kill "$sw_pid" 2>/dev/null && wait "$sw_pid" 2>/dev/null || true
  for n in "$H" "$V1" "$V2"; do ip netns del "$n" 2>/dev/null || true; done
  rm -f "$cfg"
}
trap cleanup EXIT INT TERM

cargo build --release --locked -q -p kangaroo-switch
for n in "$H" "$V1" "$V2"; do ip netns add "$n"; ip -n "$n" link set lo up; done
ip link add kb${id}a netns "$H" type veth peer name eth0 netns "$V1"
ip link add kb${id}b netns "$H" type veth peer name eth0 netns "$V2"
ip -n "$V1" addr add 10.99.0.1/24 dev eth0; ip -n "$V1" link set eth0 up
ip -n "$V2" addr add 10.99.0.2/24 dev eth0; ip -n "$V2" link set eth0 up
ip -n "$H" link set kb${id}a up; ip -n "$H" link set kb${id}b up
printf 'mode = "packet"\n[[port]]\ninterface = "kb%sa"\nvni = 1\n[[port]]\ninterface = "kb%sb"\nvni = 1\n' "$id" "$id" > "$cfg"

use_bridge() {
  ip -n "$H" link add br0 type bridge
  ip -n "$H" link set kb${id}a master br0; ip -n "$H" link set kb${id}b master br0
  ip -n "$H" link set br0 up
}
drop_bridge() { ip -n "$H" link del br0; }
use_kangaroo() { ip netns exec "$H" "$bin" run -c "$cfg" >/dev/null 2>&1 & sw_pid=$!; sleep 0.5; }
drop_kangaroo() { kill "$sw_pid"; wait "$sw_pid" 2>/dev/null || true; sw_pid=; }

measure() { # prints "rtt_ms gbps"
  ip netns exec "$V1" ping -c 3 -i 0.05 -q 10.99.0.2 >/dev/null
  local rtt gbps
  rtt=$(ip netns exec "$V1" ping -c 20 -i 0.05 -q 10.99.0.2 | awk -F/ '/^rtt/ {print $5}')
  ip netns exec "$V2" iperf3 -s -1 -D -p 5299 >/dev/null; sleep 0.3
  gbps=$(ip netns exec "$V1" iperf3 -c 10.99.0.2 -p 5299 -t "$secs" -J | python3 -c 'import json,sys; print(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e9)')
  echo "$rtt $gbps"
}

declare -a B K
for r in $(seq 1 "$rounds"); do
  use_bridge; B+=("$(measure)"); drop_bridge
  use_kangaroo; K+=("$(measure)"); drop_kangaroo
  echo "round $r: bridge ${B[-1]} | kangaroo-packet ${K[-1]}  (rtt ms, TCP Gbit/s)" >&2
done

python3 - "${B[@]}" -- "${K[@]}" <<'PY'
import sys, statistics as st
args = sys.argv[1:]; cut = args.index("--")
def parse(xs): return [tuple(map(float, x.split())) for x in xs]
b, k = parse(args[:cut]), parse(args[cut+1:])
def row(name, xs):
    rtt = [x[0] for x in xs]; g = [x[1] for x in xs]
    return name, st.median(rtt), min(rtt), max(rtt), st.median(g), min(g), max(g)
print("| contender | ping RTT ms (median, min–max) | TCP Gbit/s (median, min–max) |")
print("|---|---|---|")
rows = [row("Linux bridge", b), row("kangaroo-switch, packet mode", k)]
for n, r, r0, r1, g, g0, g1 in rows:
    print(f"| {n} | {r:.3f} ({r0:.3f}–{r1:.3f}) | {g:.2f} ({g0:.2f}–{g1:.2f}) |")
print(f"\nratio kangaroo/bridge: RTT {rows[1][1]/rows[0][1]:.2f}x, TCP {rows[1][4]/rows[0][4]:.2f}x")
PY
