# shellcheck shell=bash
# berth rename: a stopped machine under a new name, all or nothing.

test_66_rename_moves_a_stopped_machine() {
    [[ -d /var/lib/machines/deb ]] || expect_ok berth import-tar "$GUEST_TAR" deb
    local id uid
    # (It lives a moment: journald attributes a line to its unit by its sender's cgroup.)
    expect_ok berth create rn1 --image deb -- sh -c 'echo "$(hostname) ran"; sleep 1; exit 3'
    expect_ok berth create rn-taken --image deb -- /bin/true
    expect_ok berth enable rn1
    expect_ok berth start rn1
    id=$(sed -n 's/^MachineID=//p' /etc/berth/machines/rn1.machine)
    uid=$(sed -n 's/^UIDBase=//p' /etc/berth/machines/rn1.machine)
    for _ in $(seq 50); do machinectl show rn1 >/dev/null 2>&1 || break; sleep 0.2; done

    # Bad input: each named, nothing moves.
    expect_fail "machine 'rn-taken' already exists" berth rename rn1 rn-taken
    expect_fail "already has that name" berth rename rn1 rn1
    expect_fail "machine name 'bad/name' contains '/'" berth rename rn1 bad/name
    expect_fail "no machine named 'ghost'" berth rename ghost rn2
    expect_fail "not authorized to rename machines" as_tester berth rename rn1 rn2
    [[ -f /etc/berth/machines/rn1.machine && -d /var/lib/berth/machines/rn1 && ! -e /etc/berth/machines/rn2.machine ]] \
        || fail "a refused rename moved something"

    expect_ok berth rename rn1 rn2
    grep -q "Renamed machine 'rn1' to 'rn2'; its hostname stays 'rn1'." "$OUT"
    [[ -f /etc/berth/machines/rn2.machine && ! -e /etc/berth/machines/rn1.machine ]] || fail "definition not moved"
    [[ -d /var/lib/berth/machines/rn2 && ! -e /var/lib/berth/machines/rn1 ]] || fail "root not moved"
    grep -qx "MachineID=$id" /etc/berth/machines/rn2.machine || fail "machine-id changed"
    grep -qx "UIDBase=$uid" /etc/berth/machines/rn2.machine || fail "UID range changed"
    [[ $(systemctl is-enabled berth@rn2.service) == enabled ]] || fail "the new name is not enabled at boot"
    [[ $(systemctl is-enabled berth@rn1.service 2>/dev/null || true) != enabled ]] || fail "the old name is still enabled"
    expect_ok berth status rn2
    grep -q "Last exit: exited 3" "$OUT" || fail "the last exit status did not carry over"
    expect_ok berth list
    grep -q '^rn2 ' "$OUT" && ! grep -q '^rn1 ' "$OUT" || fail "berth list: $(cat "$OUT")"
    # It starts under its new name, with its hostname; its log is found under the new name
    # (an app machine's earlier lines stay under the old one, in the host's journal).
    expect_ok berth start rn2
    for _ in $(seq 50); do machinectl show rn2 >/dev/null 2>&1 || break; sleep 0.2; done
    for _ in $(seq 20); do berth logs rn2 -n 20 2>/dev/null | grep -q "rn1 ran" && break; sleep 0.5; done
    expect_ok berth logs rn2 -n 20
    grep -q "rn1 ran" "$OUT" || fail "berth logs rn2 lacks the run: $(cat "$OUT")"
    # A running machine is refused.
    expect_ok berth create rn-up --image deb -- sleep infinity
    expect_ok berth start rn-up
    expect_fail "machine 'rn-up' is running; stop it first \('berth stop rn-up'\)" berth rename rn-up rn-down
    [[ -f /etc/berth/machines/rn-up.machine && ! -e /etc/berth/machines/rn-down.machine ]] || fail "renamed while running"

    # A volume machine's volume file moves too.
    expect_ok berth import-tar "$FIXTURES/small.tar" rn-tiny
    expect_ok berth create rnv --image rn-tiny --storage volume --disk-size 64M -- /bin/true
    expect_ok berth rename rnv rnv2
    [[ -f /var/lib/berth/volumes/rnv2.ext4 && ! -e /var/lib/berth/volumes/rnv.ext4 ]] || fail "volume file not moved"
    grep -qx 'Volume=/var/lib/berth/volumes/rnv2.ext4' /etc/berth/machines/rnv2.machine || fail "Volume= not updated"

    expect_ok berth disable rn2
    expect_ok berth rm --force rn2
    expect_ok berth rm --force rn-up
    expect_ok berth rm rn-taken rnv2
    expect_ok berth rmi rn-tiny
}
