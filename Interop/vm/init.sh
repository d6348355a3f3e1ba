#!/bin/sh
# /init of an interop-lab VM (busybox sh, PID 1). Generated images copy this file as-is.
#
# Kernel command line (set by the harness, Interop/lab/cluster.py):
#   lab_node=N            our node id (for the prompt and logs only)
#   lab_ip=A.B.C.D/P      address of eth0 (virtio-net on the lab bridge)
# Console (ttyS0): boot log, kernel messages, and "@@MARK <name> <uptime>" lines.
# Control channel (ttyS1, raw, served by `dlmlc serve`): the harness sends
# "<id> <shell command>" lines; each runs with `sh -c`, its output comes back on ttyS1
# followed by "\n@@END <id> <rc>".
# Long-running commands must be started in the background with their output
# redirected to a file (the harness does that).
export PATH=/bin:/sbin
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
mark() { echo "@@MARK $1 $(cut -d' ' -f1 /proc/uptime)" > /dev/console; }
mark init

for kv in $(cat /proc/cmdline); do
    case "$kv" in lab_*=*) eval "${kv%%=*}='${kv#*=}'" ;; esac
done

while read -r m; do
    insmod "$m" || echo "@@ERROR insmod $m failed" > /dev/console
done < /etc/modules.order
mount -t configfs configfs /sys/kernel/config || echo "@@ERROR no configfs" > /dev/console
mark modules

hostname "node${lab_node:-0}"
ip link set lo up
ip addr add "$lab_ip" dev eth0 && ip link set eth0 up || echo "@@ERROR eth0 setup failed" > /dev/console
mark net
dmesg -n 7                      # kernel messages (dlm: ...) on the console from now on
echo "lab node $lab_node ip $lab_ip kernel $(uname -r)" > /dev/console

if [ -c /dev/ttyS1 ]; then
    mark ctl-ready
    # this shell stays PID 1 (and reaps orphans); dlmlc serves the control channel
    dlmlc serve /dev/ttyS1
fi
mark ctl-exit
while true; do sleep 3600; done
