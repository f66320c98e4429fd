#!/usr/bin/env bash
# 64-byte frame rate between two nested VMs (namespaces) on one host: a generator in VM1
# (`kangaroo-bench flood`, AF_PACKET, 64 frames per sendmmsg, one core) sends minimum-size UDP
# frames to VM2 for S seconds; the rate is what reached VM2's interface, where an XDP sink
# (`kangaroo_sink`) drops and counts them so VM2's own stack does not bound the figure. Contenders: a direct veth pair between the VMs (the
# ceiling of this generator), the Linux bridge, and kangaroo-switch in each mode, alternated.
#
#   bench/scripts/frame-rate.sh [ROUNDS] [SECONDS] [MODES]
#       (root; defaults 3 rounds of 3 s, MODES="xdp afxdp packet")
#
# Everything it creates has a name unique to this run and is removed on exit, also on Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds=${1:-3}
secs=${2:-3}
modes=${3:-xdp afxdp packet}
id=$$
H=kf$id-h; V1=kf$id-v1; V2=kf$id-v2
bin=./target/release/kangaroo-switch
gen=./target/release/kangaroo-bench
cfg=$(mktemp)
sw_pid=

cleanup() {
  [ -n "$sw_pid" ] && kill "$sw_pid" 2>/dev/null && wait "$sw_pid" 2>/dev/null || true
  for n in "$H" "$V1" "$V2"; do ip netns del "$n" 2>/dev/null || true; done
  rm -f "$cfg" "$cfg.sock"
}
trap cleanup EXIT INT TERM

cargo build --release --locked -q -p kangaroo-switch -p kangaroo-bench
obj=$(ls -t target/release/build/kangaroo-xdp-*/out/switch.bpf.o | head -1)
for n in "$H" "$V1" "$V2"; do ip netns add "$n"; ip -n "$n" link set lo up; done

vm_links() { # host-side veths into H
  ip link add kf${id}a netns "$H" type veth peer name eth0 netns "$V1"
  ip link add kf${id}b netns "$H" type veth peer name eth0 netns "$V2"
  ip -n "$H" link set kf${id}a up; ip -n "$H" link set kf${id}b up
  vm_addrs
}
direct_link() { ip link add eth0 netns "$V1" type veth peer name eth0 netns "$V2"; vm_addrs; }
vm_addrs() {
  ip -n "$V1" link set eth0 address 02:00:00:00:0f:01; ip -n "$V2" link set eth0 address 02:00:00:00:0f:02
  ip -n "$V1" addr add 10.98.0.1/24 dev eth0; ip -n "$V2" addr add 10.98.0.2/24 dev eth0
  for v in "$V1" "$V2"; do ip -n "$v" link set eth0 up; done
  ip -n "$V1" link set dev eth0 xdpdrv obj "$obj" sec xdp program kangaroo_port
  # VM2 counts and drops in XDP (the sink), for every contender alike; a veth end needs an XDP
  # program anyway to take the frames the xdp mode redirects to it. VM1 passes what it gets.
  ip -n "$V2" link set dev eth0 xdpdrv obj "$obj" sec xdp program kangaroo_sink
}
drop_links() { ip -n "$V1" link del eth0 2>/dev/null || true; ip -n "$V2" link del eth0 2>/dev/null || true; }

drops() { ip netns exec "$V2" ethtool -S eth0 | awk '/xdp_drops/ {s += $2} END {print s + 0}'; }
measure() { # prints Mpps received by VM2
  # Teach the switch where both VMs are (VM2's sink drops everything, so announce it by hand).
  ip -n "$V2" link set dev eth0 xdpdrv off
  ip netns exec "$V1" ping -c 2 -i 0.1 -q 10.98.0.2 >/dev/null || true
  ip -n "$V2" link set dev eth0 xdpdrv obj "$obj" sec xdp program kangaroo_sink
  local before after
  before=$(drops)
  ip netns exec "$V1" "$gen" flood eth0 --src-mac 02:00:00:00:0f:01 --dst-mac 02:00:00:00:0f:02 \
    --src-ip 10.98.0.1 --dst-ip 10.98.0.2 --seconds "$secs" >/dev/null
  sleep 0.2
  after=$(drops)
  python3 -c "print(($after - $before) / $secs / 1e6)"
}

results=()
for r in $(seq 1 "$rounds"); do
  direct_link; m=$(measure); drop_links; results+=("veth $m"); line="veth $m"
  vm_links
  ip -n "$H" link add br0 type bridge
  ip -n "$H" link set kf${id}a master br0; ip -n "$H" link set kf${id}b master br0; ip -n "$H" link set br0 up
  m=$(measure); ip -n "$H" link del br0; results+=("bridge $m"); line+=" | bridge $m"
  for mode in $modes; do
    printf 'mode = "%s"\ncontrol_socket = "%s.sock"\n[[port]]\ninterface = "kf%sa"\nvni = 1\n[[port]]\ninterface = "kf%sb"\nvni = 1\n' "$mode" "$cfg" "$id" "$id" > "$cfg"
    ip netns exec "$H" "$bin" run -c "$cfg" >/dev/null 2>&1 & sw_pid=$!; sleep 0.7
    m=$(measure); kill "$sw_pid"; wait "$sw_pid" 2>/dev/null || true; sw_pid=
    results+=("$mode $m"); line+=" | $mode $m"
  done
  drop_links
  echo "round $r: $line  (Mpps received)" >&2
done

python3 - "${results[@]}" <<'PY'
import sys, statistics as st
runs = {}
for x in sys.argv[1:]:
    name, v = x.split()
    runs.setdefault(name, []).append(float(v))
names = {"veth": "direct veth pair (generator ceiling)", "bridge": "Linux bridge"}
print("| contender | 64-byte frames received, Mpps (median, min–max) |")
print("|---|---|")
for name, xs in runs.items():
    label = names.get(name, f"kangaroo-switch, {name} mode")
    print(f"| {label} | {st.median(xs):.3f} ({min(xs):.3f}–{max(xs):.3f}) |")
b = st.median(runs["bridge"])
print()
for name, xs in runs.items():
    if name not in ("veth", "bridge"):
        print(f"ratio {name}/bridge: {st.median(xs)/b:.2f}x")
PY
