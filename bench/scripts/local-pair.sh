#!/usr/bin/env bash
# Two nested VMs (namespaces) on one host namespace, joined by a Linux bridge or by
# kangaroo-switch in each datapath mode; measures ping RTT and TCP throughput (iperf3, guests with
# default offloads) for each, alternating contenders A B C A B C so drift hits all alike, and
# prints medians with min and max.
#
#   bench/scripts/local-pair.sh [ROUNDS] [SECONDS] [MODES]
#       (root; defaults 3 rounds of 3 s, MODES="xdp afxdp packet")
#
# The VMs' interfaces have GRO on (for every contender): a veth end needs it (or an XDP program)
# to receive the frames the xdp mode's fast path redirects to it.
#
# Everything it creates has a name unique to this run and is removed on exit, also on Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds=${1:-3}
secs=${2:-3}
modes=${3:-xdp afxdp packet}
id=$$
H=kb$id-h; V1=kb$id-v1; V2=kb$id-v2
bin=./target/release/kangaroo-switch
cfg=$(mktemp)
sw_pid=

cleanup() {
  [ -n "$sw_pid" ] && kill "$sw_pid" 2>/dev/null && wait "$sw_pid" 2>/dev/null || true
  for n in "$H" "$V1" "$V2"; do ip netns del "$n" 2>/dev/null || true; done
  rm -f "$cfg" "$cfg.sock"
}
trap cleanup EXIT INT TERM

cargo build --release --locked -q -p kangaroo-switch
for n in "$H" "$V1" "$V2"; do ip netns add "$n"; ip -n "$n" link set lo up; done
ip link add kb${id}a netns "$H" type veth peer name eth0 netns "$V1"
ip link add kb${id}b netns "$H" type veth peer name eth0 netns "$V2"
ip -n "$V1" addr add 10.99.0.1/24 dev eth0; ip -n "$V1" link set eth0 up
ip -n "$V2" addr add 10.99.0.2/24 dev eth0; ip -n "$V2" link set eth0 up
ip -n "$H" link set kb${id}a up; ip -n "$H" link set kb${id}b up
for v in "$V1" "$V2"; do ip netns exec "$v" ethtool -K eth0 gro on >/dev/null; done

use_bridge() {
  ip -n "$H" link add br0 type bridge
  ip -n "$H" link set kb${id}a master br0; ip -n "$H" link set kb${id}b master br0
  ip -n "$H" link set br0 up
}
drop_bridge() { ip -n "$H" link del br0; }
use_kangaroo() { # MODE
  printf 'mode = "%s"\ncontrol_socket = "%s.sock"\n[[port]]\ninterface = "kb%sa"\nvni = 1\n[[port]]\ninterface = "kb%sb"\nvni = 1\n' "$1" "$cfg" "$id" "$id" > "$cfg"
  ip netns exec "$H" "$bin" run -c "$cfg" >/dev/null 2>&1 & sw_pid=$!; sleep 0.5
}
drop_kangaroo() { kill "$sw_pid"; wait "$sw_pid" 2>/dev/null || true; sw_pid=; }

measure() { # prints "rtt_ms gbps"
  ip netns exec "$V1" ping -c 3 -i 0.05 -q 10.99.0.2 >/dev/null
  local rtt gbps
  rtt=$(ip netns exec "$V1" ping -c 20 -i 0.05 -q 10.99.0.2 | awk -F/ '/^rtt/ {print $5}')
  ip netns exec "$V2" iperf3 -s -1 -D -p 5299 >/dev/null; sleep 0.3
  gbps=$(ip netns exec "$V1" iperf3 -c 10.99.0.2 -p 5299 -t "$secs" -J | python3 -c 'import json,sys; print(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e9)')
  echo "$rtt $gbps"
}

results=()
for r in $(seq 1 "$rounds"); do
  use_bridge; m=$(measure); drop_bridge; results+=("bridge $m"); line="bridge $m"
  for mode in $modes; do
    use_kangaroo "$mode"; m=$(measure); drop_kangaroo; results+=("$mode $m"); line+=" | $mode $m"
  done
  echo "round $r: $line  (rtt ms, TCP Gbit/s)" >&2
done

python3 - "${results[@]}" <<'PY'
import sys, statistics as st
runs = {}
for x in sys.argv[1:]:
    name, rtt, g = x.split()
    runs.setdefault(name, []).append((float(rtt), float(g)))
names = {"bridge": "Linux bridge"}
print("| contender | ping RTT ms (median, min–max) | TCP Gbit/s (median, min–max) |")
print("|---|---|---|")
med = {}
for name, xs in runs.items():
    rtt = [x[0] for x in xs]; g = [x[1] for x in xs]
    med[name] = (st.median(rtt), st.median(g))
    label = names.get(name, f"kangaroo-switch, {name} mode")
    print(f"| {label} | {st.median(rtt):.3f} ({min(rtt):.3f}–{max(rtt):.3f}) | {st.median(g):.2f} ({min(g):.2f}–{max(g):.2f}) |")
print()
for name in runs:
    if name != "bridge":
        print(f"ratio {name}/bridge: RTT {med[name][0]/med['bridge'][0]:.2f}x, TCP {med[name][1]/med['bridge'][1]:.2f}x")
PY
