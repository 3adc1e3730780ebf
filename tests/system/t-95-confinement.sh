# shellcheck shell=bash
# Hostile guests: what root in a machine must not be able to do, tried from inside (its PID 1's
# children and `berth exec`), with busybox bound in for the tools a minimal image lacks.

BB=/usr/local/bin/busybox

# in_machine NAME SCRIPT: runs SCRIPT with sh in machine NAME through `berth exec`.
in_machine() {
    berth exec "$1" -- sh -c "$2"
}

# The capability bounding set and seccomp mode of PID FIELD-file inside machine NAME.
status_field() {
    in_machine "$1" "grep '^$2:' /proc/$3/status" | awk '{print $2}'
}

has_cap() { (((0x$1 >> $2) & 1)); }

test_95_root_in_a_machine_cannot_reach_the_host() {
    [[ -d /var/lib/machines/deb ]] || expect_ok berth import-tar "$GUEST_TAR" deb
    local host_name host_year
    host_name=$(hostname)
    expect_ok berth create hg --image deb --bind "/bin/busybox:$BB:ro" -- sleep infinity
    expect_ok berth create other --image deb -- sleep infinity
    expect_ok berth start hg
    expect_ok berth start other
    berth exec other -- sh -c 'echo secret >/root/secret; chmod 600 /root/secret'
    # Device access: closed, but for a short allow-list (the cgroup's device filter).
    [[ $(systemctl show -P DevicePolicy machine-hg.scope) == closed ]] || fail "DevicePolicy is not closed"
    systemctl show -P DeviceAllow machine-hg.scope | grep -q '/dev/net/tun rwm' \
        || fail "DeviceAllow: $(systemctl show -P DeviceAllow machine-hg.scope)"
    echo "figure: DeviceAllow of machine-hg.scope: $(systemctl show -P DeviceAllow machine-hg.scope | paste -sd " ")"

    # Both PID 1 (berth's init, whose children are the app) and an exec'd command are
    # confined: a seccomp filter, and no CAP_SYS_MODULE (16), CAP_SYS_RAWIO (17),
    # CAP_SYS_TIME (25), CAP_SYSLOG (34) or CAP_NET_ADMIN (12) on the host's network, while
    # CAP_SYS_ADMIN (21) of its own user namespace stays.
    local pid bnd
    for pid in 1 self; do
        [[ $(status_field hg Seccomp "$pid") == 2 ]] || fail "PID $pid has no seccomp filter"
        bnd=$(status_field hg CapBnd "$pid")
        echo "PID $pid CapBnd $bnd"
        for cap in 12 16 17 25 34; do
            ! has_cap "$bnd" "$cap" || fail "PID $pid keeps capability $cap ($bnd)"
        done
        has_cap "$bnd" 21 || fail "PID $pid lost CAP_SYS_ADMIN of its namespace ($bnd)"
    done

    # berth's init (PID 1, a process of the host's root) holds descriptors of the host (its
    # exit-status file, its socket to berthd): root in the machine can't list or open them,
    # nor read its environment or follow its root.
    expect_fail "Permission denied" in_machine hg 'ls /proc/1/fd/'
    expect_fail "Permission denied" in_machine hg 'for fd in 3 4 5 6; do echo spoof >/proc/1/fd/$fd; done'
    expect_fail "Permission denied" in_machine hg 'cat /proc/1/environ'
    expect_fail "Permission denied" in_machine hg 'ls /proc/1/root/'

    # No host process is visible.
    pids=$(in_machine hg 'ls -d /proc/[0-9]* | wc -l')
    ((pids < 10)) || fail "the machine sees $pids processes"
    # (PID 1 is berth's init, a clone of the berthd binary; the host's machined is not there.)
    ! in_machine hg 'cat /proc/[0-9]*/comm' | grep -qx systemd-machine || fail "host processes are visible"

    # /sys stays read-only, no block device is there or can be made, no module loads.
    expect_fail "." in_machine hg 'mount -o remount,rw /sys'
    in_machine hg 'touch /sys/kernel/berth-test' 2>/dev/null && fail "/sys is writable"
    ! in_machine hg 'ls /dev' | grep -Eq '^(sd|vd|nvme|xvd|loop|dm-)' || fail "block devices in /dev"
    expect_fail "Operation not permitted" in_machine hg "$BB mknod /tmp/disk b 253 0"
    expect_fail "." in_machine hg "$BB dd if=/dev/vda of=/dev/null count=1"
    expect_fail "Operation not permitted" in_machine hg "head -c 8192 /dev/zero >/tmp/x.ko && $BB insmod /tmp/x.ko"

    # The clock and hostname stay the host's.
    # (busybox date reports the refusal but exits 0.)
    local out
    out=$(in_machine hg "$BB date -s '2001-01-01 00:00:00'" 2>&1 || true)
    echo "date -s: $out"
    grep -q "Operation not permitted" <<<"$out" || fail "setting the clock was not refused"
    host_year=$(date +%Y)
    ((host_year >= 2024)) || fail "the host's clock changed: $(date)"
    expect_ok in_machine hg "$BB hostname renamed-inside && $BB hostname"
    [[ $(hostname) == "$host_name" ]] || fail "the host's hostname changed to $(hostname)"
    # The kernel log and keyring are closed.
    out=$(in_machine hg "$BB dmesg" 2>&1 || true)
    echo "dmesg: $out"
    grep -q "Operation not permitted" <<<"$out" || fail "the kernel log was readable"

    # Another machine's files are out of reach: its root isn't in this mount namespace, and
    # its UID range is a different one.
    expect_fail "No such file" in_machine hg 'ls /var/lib/berth/machines/other/root/secret'
    [[ $(berth exec other -- cat /root/secret) == secret ]] || fail "the other machine's file"
    local range_hg range_other
    range_hg=$(in_machine hg 'cat /proc/self/uid_map' | awk '{print $2}')
    range_other=$(berth exec other -- cat /proc/self/uid_map | awk '{print $2}')
    [[ $range_hg != "$range_other" ]] || fail "both machines map root to $range_hg"

    expect_ok berth rm --force hg
    expect_ok berth rm --force other
}

test_96_exec_into_a_private_network_machine_uses_its_network() {
    [[ -d /var/lib/machines/deb ]] || expect_ok berth import-tar "$GUEST_TAR" deb
    expect_ok berth create pnet --image deb --network private -- sleep infinity
    expect_ok berth start pnet
    # /proc/net/dev lists the interfaces of the reader's network namespace.
    local inside
    inside=$(berth exec pnet -- cat /proc/net/dev)
    echo "$inside"
    grep -q 'host0:' <<<"$inside" || fail "exec is not in the machine's network namespace"
    ! grep -q 'berth0:' <<<"$inside" || fail "exec sees the host's interfaces"
    # With a network of its own, CAP_NET_ADMIN (12) stays.
    has_cap "$(status_field pnet CapBnd self)" 12 || fail "no CAP_NET_ADMIN in a private network"
    expect_ok berth rm --force pnet
}
