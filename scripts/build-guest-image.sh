#!/usr/bin/env bash
# Builds the nested-VM guest image for the `qemu` driver into a cache directory:
#   <dir>/vmlinuz       Debian's cloud kernel (linux-image-*-cloud-amd64)
#   <dir>/initrd.img    a busybox initramfs with the virtio-net modules and the guest service
# Usage: scripts/build-guest-image.sh [DIR]   (default: $KANGAROO_GUEST_DIR or /var/cache/kangaroo/guest)
# Prints DIR on success. Rebuilds only when the kernel package or this script changed; the same
# inputs give the same bytes (sorted archive, fixed timestamps, gzip without a name or time).
#
# The guest reads its configuration from the kernel command line:
#   kangaroo.name=NAME  kangaroo.ip=ADDR/PREFIX  [kangaroo.gw=ADDR]  [kangaroo.probe=ADDR]
# and serves, on TCP port 80, `/` = "name=NAME boot=BOOT_ID counter=N" where N counts tenths of
# a second since boot in the guest (it keeps counting across a live migration and restarts from 0
# on a reboot), and `/cgi-bin/hits` = a per-request counter.
set -euo pipefail

dir=${1:-${KANGAROO_GUEST_DIR:-/var/cache/kangaroo/guest}}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
self_sum=$(sha256sum "$0" | cut -d' ' -f1)

for tool in dpkg-deb cpio gzip apt-get; do
  command -v "$tool" >/dev/null || { echo "build-guest-image: $tool is missing (scripts/install-deps.sh installs it)" >&2; exit 1; }
done
# The guest needs a static busybox (the initramfs has no C library).
dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q "install ok installed" \
  || { echo "build-guest-image: busybox-static is not installed (scripts/install-deps.sh installs it)" >&2; exit 1; }
busybox_bin=/bin/busybox

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The newest cloud kernel image package the archive offers.
meta=linux-image-cloud-amd64
resolve() { apt-cache depends "$meta" 2>/dev/null | awk '/Depends: linux-image-/ {print $2; exit}'; }
pkg=$(resolve)
if [ -z "$pkg" ] && [ "$(id -u)" -eq 0 ]; then
  apt-get update -qq >/dev/null 2>&1 || true
  pkg=$(resolve)
fi
[ -n "$pkg" ] || { echo "build-guest-image: apt cannot resolve $meta (run apt-get update)" >&2; exit 1; }
version=$(apt-cache policy "$pkg" | awk '/Candidate:/ {print $2}')
stamp="$pkg $version $self_sum"
if [ -f "$dir/stamp" ] && [ "$(cat "$dir/stamp")" = "$stamp" ] && [ -f "$dir/vmlinuz" ] && [ -f "$dir/initrd.img" ]; then
  echo "$dir"
  exit 0
fi

(cd "$work" && apt-get download "$pkg" >/dev/null 2>&1) || { echo "build-guest-image: apt-get download $pkg failed" >&2; exit 1; }
dpkg-deb -x "$work"/"$pkg"_*.deb "$work/k"
kver=${pkg#linux-image-}
mods="$work/k/lib/modules/$kver/kernel"

root="$work/root"
mkdir -p "$root"/{bin,dev,proc,sys,run,tmp,www/cgi-bin,lib/modules}
cp "$busybox_bin" "$root/bin/busybox"
# Load order matters: the ring before the core, the PCI transport helpers before virtio_pci.
order="drivers/virtio/virtio_ring drivers/virtio/virtio drivers/virtio/virtio_pci_modern_dev
drivers/virtio/virtio_pci_legacy_dev drivers/virtio/virtio_pci net/core/failover
drivers/net/net_failover drivers/net/virtio_net"
: > "$root/lib/modules/order"
for m in $order; do
  f="$mods/$m.ko"
  for ext in "" .xz .zst; do
    if [ -f "$f$ext" ]; then
      case $ext in
        .xz) xz -dc "$f$ext" > "$root/lib/modules/$(basename "$m").ko" ;;
        .zst) zstd -qdc "$f$ext" > "$root/lib/modules/$(basename "$m").ko" ;;
        *) cp "$f" "$root/lib/modules/" ;;
      esac
      echo "$(basename "$m")" >> "$root/lib/modules/order"
      break
    fi
  done
done
grep -qx virtio_net "$root/lib/modules/order" || { echo "build-guest-image: virtio_net.ko not found in $pkg" >&2; exit 1; }

cat > "$root/init" <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
while read -r m; do insmod "/lib/modules/$m.ko" 2>/dev/null; done < /lib/modules/order
name=guest ip= gw= probe=
for arg in $(cat /proc/cmdline); do
  case $arg in
    kangaroo.name=*) name=${arg#kangaroo.name=} ;;
    kangaroo.ip=*) ip=${arg#kangaroo.ip=} ;;
    kangaroo.gw=*) gw=${arg#kangaroo.gw=} ;;
    kangaroo.probe=*) probe=${arg#kangaroo.probe=} ;;
  esac
done
hostname "$name"
ip link set lo up
ip link set eth0 up
[ -n "$ip" ] && ip addr add "$ip" dev eth0
[ -n "$gw" ] && ip route add default via "$gw"
boot=$(cat /proc/sys/kernel/random/boot_id)
echo 0 > /run/hits
cat > /www/cgi-bin/hits <<CGI
#!/bin/sh
n=\$((\$(cat /run/hits) + 1)); echo \$n > /run/hits
printf 'Content-Type: text/plain\r\n\r\nname=$name boot=$boot hits=%s\n' "\$n"
CGI
chmod +x /www/cgi-bin/hits
(n=0; while :; do echo "name=$name boot=$boot counter=$n" > /www/index.tmp; mv /www/index.tmp /www/index.html; n=$((n + 1)); usleep 100000; done) &
httpd -p 80 -h /www
# With kangaroo.probe=ADDR the guest pings ADDR and fetches its page every half second, and
# publishes the tally at /probe.txt: "ping_ok=N ping_fail=N http_ok=N http_fail=N".
if [ -n "$probe" ]; then
  (po=0 pf=0 ho=0 hf=0
   while :; do
     if ping -c 1 -W 1 "$probe" >/dev/null 2>&1; then po=$((po + 1)); else pf=$((pf + 1)); fi
     if timeout 3 wget -q -O /dev/null "http://$probe/" 2>/dev/null; then ho=$((ho + 1)); else hf=$((hf + 1)); fi
     echo "ping_ok=$po ping_fail=$pf http_ok=$ho http_fail=$hf" > /www/probe.tmp; mv /www/probe.tmp /www/probe.txt
     usleep 500000
   done) &
fi
echo "kangaroo-guest: $name up at ${ip:-no address}"
exec sh -c 'while :; do sleep 3600; done'
EOF
chmod +x "$root/init"

# Fixed timestamps and a sorted file list: the same inputs give the same archive.
find "$root" -exec touch -h -d @0 {} +
(cd "$root" && find . | LC_ALL=C sort | cpio -o -H newc --reproducible --quiet -R 0:0) | gzip -9n > "$work/initrd.img"
cp "$work"/k/boot/vmlinuz-* "$work/vmlinuz"
mv "$work/vmlinuz" "$dir/vmlinuz"
mv "$work/initrd.img" "$dir/initrd.img"
echo "$stamp" > "$dir/stamp"
echo "$dir"
