#!/usr/bin/env python3
"""Writes the hand-made seed inputs of every fuzz target into fuzz/seeds/<target>/.

The byte-structured targets (switch_frames, arp, offload) take `arbitrary` input: their seeds
are real frames, which libFuzzer's mutations splice into operations. Run from fuzz/."""
import os
import struct

def put(target, name, data):
    d = os.path.join("seeds", target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)

def csum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return (~s) & 0xFFFF

def eth(dst, src, et, payload):
    return bytes(dst) + bytes(src) + struct.pack("!H", et) + payload

def ipv4(src, dst, proto, payload):
    h = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 1, 0x4000, 64, proto, 0,
                    bytes(src), bytes(dst))
    h = h[:10] + struct.pack("!H", csum(h)) + h[12:]
    return h + payload

def arp(op, sha, spa, tha, tpa):
    return struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, op, bytes(sha), bytes(spa),
                       bytes(tha), bytes(tpa))

M1, M2, BC = [2, 0, 0x99, 0, 0, 1], [2, 0, 0x99, 0, 0, 2], [0xff] * 6
IP1, IP2 = [10, 0, 0, 1], [10, 0, 0, 2]
arp_req = eth(BC, M1, 0x0806, arp(1, M1, IP1, [0] * 6, IP2))
arp_rep = eth(M1, M2, 0x0806, arp(2, M2, IP2, M1, IP1))
icmp = struct.pack("!BBHHH", 8, 0, 0, 1, 1) + b"kangaroo" * 4
icmp = icmp[:2] + struct.pack("!H", csum(icmp)) + icmp[4:]
ping = eth(M2, M1, 0x0800, ipv4(IP1, IP2, 1, icmp))
tcp = struct.pack("!HHIIBBHHH", 40000, 5201, 1, 0, 0x50, 0x18, 65535, 0, 0) + b"x" * 200
tcp_frame = eth(M2, M1, 0x0800, ipv4(IP1, IP2, 6, tcp))
vxlan_hdr = struct.pack("!II", 0x08000000, 100 << 8)
udp = struct.pack("!HHHH", 49152, 4789, 8 + len(vxlan_hdr) + len(ping), 0) + vxlan_hdr + ping
outer = eth([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1], 0x0800,
            ipv4([10, 0, 0, 1], [10, 0, 0, 2], 17, udp))

for t in ("switch_frames", "arp", "offload"):
    for n, f in (("arp-request", arp_req), ("arp-reply", arp_rep), ("ping", ping),
                 ("tcp", tcp_frame), ("vxlan", outer)):
        put(t, n, f)
put("offload", "tcp-gso", struct.pack("<BBHHHH", 1, 1, 54, 100, 34, 16) + b"\x00" + tcp_frame)
put("vxlan", "vxlan-ping", outer)
put("vxlan", "header", vxlan_hdr)

with open("../switch/src/config.rs") as f:
    src = f.read()
full = src.split('const FULL: &str = r#"', 1)[1].split('"#;', 1)[0]
put("switch_config", "full", full)
put("switch_config", "minimal", '[[port]]\ninterface = "vm1-host"\nvni = 100\n')
put("switch_config", "storm-tc", 'mode = "tc"\n[storm]\nbum_per_sec = 100\nbum_burst = 10\n'
    'new_macs_per_sec = 0\n[datapath]\ncores = [0, 1]\n[[port]]\ninterface = "a1"\nvni = 7\n')

for name in ("demo", "shop"):
    with open(f"../orchestrator/examples/{name}.toml", "rb") as f:
        put("workload", f"workload-{name}", b"\x00" + f.read())
for name in ("ec2-2014", "ec2-2026"):
    with open(f"../orchestrator/catalogs/{name}.toml", "rb") as f:
        put("workload", f"catalog-{name}", b"\x01" + f.read())

def reqs(*rs):
    return "\n%%\n".join(rs)

put("control_api", "ports", reqs(
    'POST /v1/ports\n{"interface": "vm1-host", "vni": 100, "mac": "02:00:00:00:01:01", "ips": ["10.0.0.1"]}',
    'POST /v1/ports\n{"interface": "vm2-host", "vni": 200}',
    "GET /v1/ports", "DELETE /v1/ports/vm2-host", "GET /v1/stats"))
put("control_api", "fdb-arp", reqs(
    'POST /v1/ports\n{"interface": "p1", "vni": 1}',
    'POST /v1/fdb\n{"vni": 1, "mac": "02:00:00:00:00:07", "interface": "p1"}',
    'POST /v1/fdb\n{"vni": 1, "mac": "02:00:00:00:00:08", "vtep": "10.0.0.9"}',
    "GET /v1/fdb", "DELETE /v1/fdb/1/02:00:00:00:00:07",
    'POST /v1/arp\n{"vni": 1, "ip": "10.0.0.7", "mac": "02:00:00:00:00:07"}',
    "GET /metrics"))
put("control_api", "peers", reqs(
    'POST /v1/peers\n{"address": "10.0.0.2", "vnis": [100]}', "GET /v1/peers",
    "DELETE /v1/peers/10.0.0.2", 'POST /v1/ports\n{"interface": "missing0", "vni": 5}'))

put("tenant_api", "vms", reqs(
    'POST /v1/networks\n{"name": "blue", "vni": 100, "subnet": "192.168.10.0/24"}',
    'POST /v1/vms\n{"name": "web1", "vcpus": 2, "memory": "2GiB", "network": "blue", "affinity": "shop"}',
    'POST /v1/vms\n{"name": "db1", "vcpus": 0.5, "memory": "512MiB", "network": "blue", "anti_affinity": "db"}',
    "GET /v1/vms", "POST /v1/vms/web1/stop", "POST /v1/vms/web1/start",
    "GET /v1/hosts", 'POST /v1/vms/db1/migrate\n{"to": "sim-1"}', "DELETE /v1/vms/web1",
    "GET /v1/billing"))
put("tenant_api", "hosts", reqs(
    'POST /v1/hosts\n{"instance_type": "m5.large", "provider": "sim"}',
    'POST /v1/hosts\n{"instance_type": "m3.medium", "name": "h2", "provider": "old"}',
    "GET /v1/providers", "GET /v1/catalogs/ec2-2026", "DELETE /v1/hosts/h2",
    "GET /v1/consolidation", 'POST /v1/billing/clock\n{"advance_secs": 3600}', "GET /v1/hosts noauth",
    "GET /v1/vms badauth"))
with open("../orchestrator/examples/shop.toml") as f:
    wl = f.read()
import json
auth = json.dumps({"auth": {"identity": {"methods": ["password"], "password": {"user": {
    "name": "kangaroo", "domain": {"name": "Default"}, "password": "fuzz-token"}}},
    "scope": {"project": {"name": "kangaroo", "domain": {"name": "Default"}}}}})
put("tenant_api", "openstack", reqs(
    "GET /identity/v3 noauth", "POST /identity/v3/auth/tokens noauth\n" + auth,
    "GET /compute/v2.1 noauth", "GET /compute/v2.1/flavors/detail?minRam=512",
    'POST /v1/networks\n{"name": "blue", "vni": 100, "subnet": "192.168.10.0/24"}',
    'POST /compute/v2.1/servers\n{"server": {"name": "vm1", "flavorRef": "m1.small", '
    '"imageRef": "busybox", "networks": [{"uuid": "blue"}], "availability_zone": "old"}}',
    "GET /compute/v2.1/servers/detail?name=^vm&status=ACTIVE&limit=5",
    'POST /compute/v2.1/servers/vm1/action\n{"os-stop": null}',
    'POST /compute/v2.1/servers/vm1/action\n{"reboot": {"type": "HARD"}}',
    'POST /compute/v2.1/servers/vm1/action\n{"os-migrateLive": {"host": null, "block_migration": false, "disk_over_commit": false}}',
    "GET /compute/v2.1/os-hypervisors/detail", "GET /compute/v2.1/os-availability-zone/detail",
    "GET /network/v2.0/networks?name=blue&fields=id", "GET /network/v2.0/subnets/blue",
    "GET /image/v2/images?id=in:busybox", "DELETE /compute/v2.1/servers/vm1",
    "GET /identity/v3/projects badauth"))
put("tenant_api", "plans", reqs(
    "POST /v1/plans\n" + json.dumps({"workload": wl}),
    "POST /v1/plans/apply\n" + json.dumps({"workload": wl}),
    'POST /v1/apps/shop/migrate\n{"to": "old"}', "POST /v1/reconcile", "GET /health noauth"))

# secure_receive takes `arbitrary` forgeries; seeds of varied bytes give it lists of several
# templates, message types and flips to start from.
for i, seed in enumerate([bytes(range(0, 96)), bytes(range(255, 95, -1)), b"\x01\x04\x02" * 40]):
    put("secure_receive", "forgeries-%d" % i, seed)
