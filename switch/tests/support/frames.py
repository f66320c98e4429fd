#!/usr/bin/env python3
"""Frames the end-to-end tests inject (run inside a test namespace, never in the root one).

  frames.py garp IFNAME MAC IP
      one gratuitous ARP (a reply for IP from MAC, broadcast) on IFNAME
  frames.py storm IFNAME SECONDS
      broadcast frames from ever-changing source MACs on IFNAME, as fast as one core sends
      them, for SECONDS (at most 30); prints how many were sent
  frames.py vxlan SRC DST VNI FLAGS [--truncate]
      one VXLAN packet from SRC (may be spoofed) to DST:4789 carrying a broadcast ARP;
      FLAGS is the VXLAN flags byte (0x08 is valid); --truncate cuts it inside the VXLAN header
"""
import socket
import struct
import sys


def mac_bytes(m):
    return bytes(int(x, 16) for x in m.split(":"))


def checksum(data):
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def arp(op, sha, spa, tha, tpa):
    return struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, op, sha, spa, tha, tpa)


def garp(ifname, mac, ip):
    m = mac_bytes(mac)
    a = socket.inet_aton(ip)
    frame = b"\xff" * 6 + m + b"\x08\x06" + arp(2, m, a, b"\xff" * 6, a)
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.bind((ifname, 0))
    s.send(frame + b"\0" * (60 - len(frame)))


def vxlan(src, dst, vni, flags, truncate):
    inner_src = b"\x02\x99\x00\x00\x00\x01"
    inner = b"\xff" * 6 + inner_src + b"\x08\x06"
    inner += arp(1, inner_src, socket.inet_aton("192.168.250.1"), b"\0" * 6,
                 socket.inet_aton("192.168.250.2"))
    vx = struct.pack("!B3xI", flags, vni << 8) + inner
    if truncate:
        vx = vx[:5]
    udp_len = 8 + len(vx)
    udp = struct.pack("!HHHH", 40000, 4789, udp_len, 0) + vx
    total = 20 + len(udp)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 0, 0x4000, 64, 17, 0,
                     socket.inet_aton(src), socket.inet_aton(dst))
    ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    s.sendto(ip + udp, (dst, 0))


def storm(ifname, seconds):
    import time
    seconds = min(float(seconds), 30.0)
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.bind((ifname, 0))
    body = b"\x08\x00" + b"\x45" + b"\0" * 45
    frames = [b"\xff" * 6 + bytes([2, 0x5f, 0, (i >> 8) & 0xFF, i & 0xFF, 1]) + body
              for i in range(65536)]
    sent = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for f in frames[sent % 65536:sent % 65536 + 256]:
            try:
                s.send(f)
            except OSError:
                pass
        sent += 256
    print(sent)


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "garp":
        garp(sys.argv[2], sys.argv[3], sys.argv[4])
    elif cmd == "storm":
        storm(sys.argv[2], sys.argv[3])
    elif cmd == "vxlan":
        vxlan(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5], 16),
              "--truncate" in sys.argv)
    else:
        sys.exit("unknown command " + cmd)
