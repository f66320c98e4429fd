#!/usr/bin/env bash
# Two hosts (namespaces) on an underlay bridge, one nested VM behind each, joined across hosts
# either by the Linux kernel's VXLAN + a bridge on each host, or by kangaroo-switch in each mode.
# Measures cross-host ping RTT and TCP throughput (iperf3, guests with default offloads, guest MTU
# 1450), alternating contenders so drift hits all alike, and prints medians with min and max.
# With FRAMES=1 it measures 64-byte frame rates instead: `kangaroo-bench flood` in VM A, an XDP
# sink (drop and count) in VM B.
#
#   [FRAMES=1] bench/scripts/overlay-pair.sh [ROUNDS] [SECONDS] [MODES]
#       (root; defaults 3 rounds of 3 s, MODES="xdp afxdp packet")
#
# The veth ends that receive what the xdp mode's fast path redirects (the VMs' interfaces and the
# underlay bridge's ports) have GRO on, for every contender.
#
# Everything it creates has a name unique to this run and is removed on exit, also on Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds=${1:-3}
secs=${2:-3}
modes=${3:-xdp afxdp packet}
id=$$
U=ko$id-u; HA=ko$id-a; HB=ko$id-b; VA=ko$id-va; VB=ko$id-vb
bin=./target/release/kangaroo-switch
dir=$(mktemp -d)
pids=()

cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  for n in "$U" "$HA" "$HB" "$VA" "$VB"; do ip netns del "$n" 2>/dev/null || true; done
  rm -rf "$dir"
}
trap cleanup EXIT INT TERM

cargo build --release --locked -q -p kangaroo-switch -p kangaroo-bench
obj=$(ls -t target/release/build/kangaroo-xdp-*/out/switch.bpf.o | head -1)
for n in "$U" "$HA" "$HB" "$VA" "$VB"; do ip netns add "$n"; ip -n "$n" link set lo up; done
ip -n "$U" link add br0 type bridge; ip -n "$U" link set br0 up
i=0
for h in "$HA:10.201.0.1" "$HB:10.201.0.2"; do
  n=${h%%:*}; a=${h##*:}; i=$((i+1))
  ip link add ul0 netns "$n" type veth peer name u$i netns "$U"
  ip -n "$U" link set u$i master br0 up
  ip netns exec "$U" ethtool -K u$i gro on >/dev/null
  ip -n "$n" addr add "$a/24" dev ul0; ip -n "$n" link set ul0 up
done
ip link add vm netns "$HA" type veth peer name eth0 netns "$VA"
ip link add vm netns "$HB" type veth peer name eth0 netns "$VB"
ip -n "$VA" addr add 192.168.91.1/24 dev eth0; ip -n "$VB" addr add 192.168.91.2/24 dev eth0
for v in "$VA" "$VB"; do ip -n "$v" link set eth0 mtu 1450 up; ip netns exec "$v" ethtool -K eth0 gro on >/dev/null; done
ip -n "$HA" link set vm up; ip -n "$HB" link set vm up

use_kernel() {
  for h in "$HA:10.201.0.1:10.201.0.2" "$HB:10.201.0.2:10.201.0.1"; do
    IFS=: read -r n local remote <<< "$h"
    ip -n "$n" link add vx1 type vxlan id 1 dstport 4789 local "$local" dev ul0 nolearning
    ip -n "$n" link add br1 type bridge
    ip -n "$n" link set vx1 master br1 up; ip -n "$n" link set vm master br1; ip -n "$n" link set br1 up
    bridge -n "$n" fdb append 00:00:00:00:00:00 dev vx1 dst "$remote"
  done
}
drop_kernel() { for n in "$HA" "$HB"; do ip -n "$n" link del vx1; ip -n "$n" link del br1; done; }
use_kangaroo() { # MODE
  pids=()
  for h in "$HA:10.201.0.1:10.201.0.2:a" "$HB:10.201.0.2:10.201.0.1:b"; do
    IFS=: read -r n local remote tag <<< "$h"
    printf 'mode = "%s"\ncontrol_socket = "%s/%s.sock"\n[[port]]\ninterface = "vm"\nvni = 1\n[uplink]\ninterface = "ul0"\naddress = "%s"\n[[peer]]\naddress = "%s"\n' \
      "$1" "$dir" "$tag" "$local" "$remote" > "$dir/$tag.toml"
    ip netns exec "$n" "$bin" run -c "$dir/$tag.toml" >/dev/null 2>"$dir/$tag.log" & pids+=($!)
  done
  sleep 0.7
}
drop_kangaroo() { for p in "${pids[@]}"; do kill "$p"; wait "$p" 2>/dev/null || true; done; pids=(); }

drops() { ip netns exec "$VB" ethtool -S eth0 | awk '/xdp_drops/ {s += $2} END {print s + 0}'; }
measure_frames() { # prints "0 mpps" (Mpps in the second column)
  ip -n "$VB" link set dev eth0 xdpdrv off 2>/dev/null || true
  ip netns exec "$VA" ping -c 2 -i 0.1 -q 192.168.91.2 >/dev/null || true
  ip -n "$VB" link set dev eth0 xdpdrv obj "$obj" sec xdp program kangaroo_sink
  local before after
  before=$(drops)
  ip netns exec "$VA" ./target/release/kangaroo-bench flood eth0 --src-mac "$(ip netns exec "$VA" cat /sys/class/net/eth0/address)" \
    --dst-mac "$(ip netns exec "$VB" cat /sys/class/net/eth0/address)" --src-ip 192.168.91.1 --dst-ip 192.168.91.2 --seconds "$secs" >/dev/null
  sleep 0.2
  after=$(drops)
  ip -n "$VB" link set dev eth0 xdpdrv off
  python3 -c "print(0, ($after - $before) / $secs / 1e6)"
}

measure() { # prints "rtt_ms gbps"
  if [ -n "${FRAMES:-}" ]; then measure_frames; return; fi
  ip netns exec "$VA" ping -c 3 -i 0.05 -q 192.168.91.2 >/dev/null
  local rtt gbps
  rtt=$(ip netns exec "$VA" ping -c 20 -i 0.05 -q 192.168.91.2 | awk -F/ '/^rtt/ {print $5}')
  ip netns exec "$VB" iperf3 -s -1 -D -p 5298 >/dev/null; sleep 0.3
  gbps=$(ip netns exec "$VA" iperf3 -c 192.168.91.2 -p 5298 -t "$secs" -J | python3 -c 'import json,sys; print(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e9)')
  echo "$rtt $gbps"
}

results=()
for r in $(seq 1 "$rounds"); do
  use_kernel; m=$(measure); drop_kernel; results+=("kernel-vxlan $m"); line="kernel-vxlan $m"
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
names = {"kernel-vxlan": "Linux VXLAN + bridge"}
import os
if os.environ.get("FRAMES"):
    print("| contender (across two hosts) | 64-byte frames received, Mpps (median, min–max) |")
    print("|---|---|")
    names = {"kernel-vxlan": "Linux VXLAN + bridge"}
    med = {}
    for name, xs in runs.items():
        g = [x[1] for x in xs]; med[name] = st.median(g)
        print(f"| {names.get(name, 'kangaroo-switch, ' + name + ' mode')} | {st.median(g):.3f} ({min(g):.3f}–{max(g):.3f}) |")
    print()
    for name in runs:
        if name != "kernel-vxlan":
            print(f"ratio {name}/kernel-vxlan: {med[name]/med['kernel-vxlan']:.2f}x")
    sys.exit(0)
print("| contender (across two hosts) | ping RTT ms (median, min–max) | TCP Gbit/s (median, min–max) |")
print("|---|---|---|")
med = {}
for name, xs in runs.items():
    rtt = [x[0] for x in xs]; g = [x[1] for x in xs]
    med[name] = (st.median(rtt), st.median(g))
    label = names.get(name, f"kangaroo-switch, {name} mode")
    print(f"| {label} | {st.median(rtt):.3f} ({min(rtt):.3f}–{max(rtt):.3f}) | {st.median(g):.2f} ({min(g):.2f}–{max(g):.2f}) |")
print()
for name in runs:
    if name != "kernel-vxlan":
        print(f"ratio {name}/kernel-vxlan: RTT {med[name][0]/med['kernel-vxlan'][0]:.2f}x, TCP {med[name][1]/med['kernel-vxlan'][1]:.2f}x")
PY
