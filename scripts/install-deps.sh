#!/usr/bin/env bash
# Installs every Debian package the build, the tests and the benchmarks need.
# Idempotent: packages already present are skipped, and apt-get runs only when something is missing.
set -euo pipefail

packages=(
  # build: eBPF objects and the libbpf/libxdp that xsk-rs bundles
  clang llvm libbpf-dev gcc-multilib m4 libelf-dev zlib1g-dev pkg-config libclang-dev
  # tests and benchmarks: namespaces, traffic and inspection
  iproute2 iputils-ping iperf3 ethtool tcpdump bpftool procps curl python3
  # the NAT namespaces of the secure-tunnel traversal test (switch/tests/nat.rs)
  nftables
  # the OpenStack clients the compatibility tests drive (scripts/openstack-client.sh)
  python3-venv
  # the Open vSwitch contender of kangaroo-bench (userspace datapath; this kernel has no OVS module)
  openvswitch-switch
  # nested VMs: QEMU, and what scripts/build-guest-image.sh builds the guest from
  qemu-system-x86 busybox-static cpio xz-utils
  # fuzzing: libFuzzer (built by libfuzzer-sys) is C++
  g++
  # the etcd store: etcd-client's build compiles etcd's protobuf API; the tests run etcd itself
  protobuf-compiler libprotobuf-dev etcd-server
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ "${#missing[@]}" -eq 0 ]; then
  echo "install-deps: all ${#packages[@]} Debian packages present"
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps: missing packages: ${missing[*]}; run this script as root" >&2
  exit 1
fi

echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "install-deps: done"
