#!/bin/sh
# PID 1 of connscope's test guest; installed as /sbin/connscope-init by
# guest_image.py and booted by guest_run.py. There is no initramfs and no
# service manager: this script mounts what BPF and the tests need, runs one
# command from the project disk, reports on the extra serial ports and powers
# off. Serial ports: ttyS0 kernel console, ttyS1 command output, ttyS2 exit code.
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export PATH HOME=/root LANG=C.UTF-8 TERM=dumb

say() { echo "connscope-init: $*" >/dev/ttyS0; }

# PID 1 must never exit (that is a kernel panic): whatever happens, end here.
power_off() {
    sync
    echo o >/proc/sysrq-trigger
    sleep 30
}

mount -t proc proc /proc
mount -t sysfs sysfs /sys
# The rootfs has a static /dev from debootstrap; the disks appear in devtmpfs.
grep -q "^devtmpfs /dev " /proc/mounts || mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
# Nodes whose driver loads on first open (/dev/net/tun, ...): udev's job elsewhere.
grep -v '^#' "/lib/modules/$(uname -r)/modules.devname" 2>/dev/null |
while read -r _ name dev; do
    majmin=${dev#?}
    case $name in */*) mkdir -p "/dev/${name%/*}" ;; esac
    [ -e "/dev/$name" ] || mknod -m 0600 "/dev/$name" "${dev%"$majmin"}" "${majmin%:*}" "${majmin#*:}"
done
mount -t devpts -o gid=5,mode=620 devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mount -t tracefs tracefs /sys/kernel/tracing
mount -t debugfs debugfs /sys/kernel/debug
mount -t bpf bpf /sys/fs/bpf
mount -t cgroup2 cgroup2 /sys/fs/cgroup
ip link set lo up
hostname connscope-guest

# The root disk is partitioned (the kernel finds it by PARTUUID); the project
# disk is the NVMe disk without partitions. NVMe probing is asynchronous, so
# the names nvme0n1/nvme1n1 are not a reliable way to tell them apart.
# `rootwait` waited for the root disk only: give the other one a few seconds.
vmdev=
for _ in $(seq 50); do
    for blk in /sys/block/nvme*; do
        name=${blk##*/}
        [ -e "$blk/${name}p1" ] || [ ! -b "/dev/$name" ] || vmdev=/dev/$name
    done
    [ -n "$vmdev" ] && break
    sleep 0.1
done
mkdir -p /vm
if [ -z "$vmdev" ] || ! mount -t ext4 "$vmdev" /vm; then
    say "no project disk found"
    power_off
fi

# Raw mode: no CR added before LF, no echo.
stty -F /dev/ttyS1 raw -echo
stty -F /dev/ttyS2 raw -echo

say "running command at $(cut -d' ' -f1 /proc/uptime)s"
if [ -f /vm/interactive ]; then
    # `guest.py shell`: a shell on the console, with job control and the
    # command's environment.
    (cd /vm/project && exec setsid -c /bin/bash --rcfile /vm/interactive -i) \
        </dev/ttyS0 >/dev/ttyS0 2>&1
    rc=$?
else
    (cd /vm/project && exec /bin/bash /vm/cmd) </dev/null >/dev/ttyS1 2>&1
    rc=$?
fi
say "command exited with $rc at $(cut -d' ' -f1 /proc/uptime)s"

# Anything the command left running would keep /vm busy; the host reads the
# results from the disk image, so it must be unmounted cleanly.
kill -KILL -1 2>/dev/null
sleep 0.2
cd /
sync
umount /vm || mount -o remount,ro /vm || say "could not unmount the project disk"
echo "$rc" >/dev/ttyS2
power_off
