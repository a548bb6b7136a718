#!/bin/busybox sh
# PID 1 of a kernel-matrix guest (see scripts/kernel-matrix.sh): loads the modules for
# 9p and overlayfs, mounts the host's root read-only with a tmpfs overlay on top and
# switches to it, where the matrix script runs its guest part.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs dev /dev
for m in /mods/*.ko; do
  insmod "$m" 2> /dev/null || echo "kmx-init: insmod $m failed"
done
arg() { tr ' ' '\n' < /proc/cmdline | sed -n "s/^$1=//p" | tail -1; }
off() { echo o > /proc/sysrq-trigger; sleep 10; }
kmx=$(arg nixcell.kmx)
repo=$(arg nixcell.repo)
if [ "$kmx" = probe ]; then
  echo KMX-PROBE-OK
  off
fi
if ! mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=512000 host /host; then
  echo "kmx-init: cannot mount the host's root over 9p"
  off
fi
mount -t tmpfs -o mode=755 upper /upper
mkdir -p /upper/u /upper/w
if ! mount -t overlay overlay -o lowerdir=/host,upperdir=/upper/u,workdir=/upper/w /newroot; then
  echo "kmx-init: overlay on the 9p root failed"
  off
fi
for d in proc sys dev; do mount --move /$d /newroot/$d; done
exec switch_root /newroot /bin/bash "$repo/scripts/kernel-matrix.sh" --guest "$kmx"
