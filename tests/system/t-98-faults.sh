# shellcheck shell=bash
# Faults: concurrent starts of one machine, machined restarted under running machines, berthd
# killed outright while machines run.

# No scope and no registration of machine NAME is left.
assert_machine_gone() {
    ! machinectl show "$1" >/dev/null 2>&1 || fail "$1 still registered"
    [[ $(systemctl is-active "machine-$1.scope") != active ]] || fail "machine-$1.scope still active"
}

test_98_concurrent_starts_of_one_machine_one_wins() {
    [[ -d /var/lib/machines/deb ]] || expect_ok berth import-tar "$GUEST_TAR" deb
    expect_ok berth create twice --image deb -- sleep infinity
    local logs=/var/tmp/twice i ok=0 failed=0
    mkdir -p "$logs"
    for i in 1 2 3 4; do
        (berth start twice >"$logs/$i.out" 2>"$logs/$i.err"; echo $? >"$logs/$i.rc") &
    done
    wait
    for i in 1 2 3 4; do
        echo "client $i: exit $(cat "$logs/$i.rc"): $(cat "$logs/$i.err")"
        if [[ $(cat "$logs/$i.rc") == 0 ]]; then
            ok=$((ok + 1))
        else
            failed=$((failed + 1))
            grep -Eq "machine 'twice' is (being started by another request|already running)" "$logs/$i.err" \
                || fail "client $i: unclear error: $(cat "$logs/$i.err")"
        fi
    done
    ((ok == 1 && failed == 3)) || fail "$ok starts succeeded, $failed failed (want 1 and 3)"
    [[ $(machinectl show twice -p State --value) == running ]] || fail "not running"
    # One PID 1 with its one sleep: the losers left no process behind.
    local leader
    leader=$(machinectl show twice -p Leader --value)
    [[ $(systemd-cgls --no-pager -u machine-twice.scope | grep -c 'sleep infinity') == 1 ]] \
        || fail "more than one payload: $(systemd-cgls --no-pager -u machine-twice.scope)"
    expect_ok berth stop twice
    assert_machine_gone twice
    expect_ok berth rm twice
    rm -rf "$logs"
    [[ -n $leader ]]
}

test_99_machines_survive_machined_restart_and_berthd_kill() {
    [[ -d /var/lib/machines/deb ]] || expect_ok berth import-tar "$GUEST_TAR" deb
    expect_ok berth create steady --image deb -- sleep infinity
    expect_ok berth start steady
    local leader
    leader=$(machinectl show steady -p Leader --value)

    # machined restarted: it restores its machines, and berth still sees and stops this one.
    systemctl restart systemd-machined.service
    [[ $(machinectl show steady -p Leader --value) == "$leader" ]] || fail "machined lost the machine"
    expect_ok berth list
    grep -Eq "^steady +running " "$OUT" || fail "berth list after machined restart"

    # berthd killed outright: the machine runs on, and the next call (bus activation) finds it.
    systemctl kill -s KILL berthd.service
    for _ in $(seq 50); do systemctl is-active -q berthd.service || break; sleep 0.1; done
    [[ -d /proc/$leader ]] || fail "the machine died with berthd"
    expect_ok berth list
    grep -Eq "^steady +running +machine-steady.scope +$leader " "$OUT" || fail "berth list after SIGKILL"
    expect_ok berth exec steady -- true
    expect_ok berth stop steady
    assert_machine_gone steady
    expect_ok berth rm steady
}

# berthd runs with BERTH_CRASH_AFTER=STEP, or without it when STEP is empty. Through systemd's
# own environment, which services started afterwards get (a drop-in would need a
# daemon-reload, and a reload makes systemd look at every scope's cgroup again: it would hide a
# scope that systemd keeps although it is empty). berthd then comes back within a second of
# its crash, as Restart=on-failure brings it back in real life.
berthd_crashes_after() {
    if [[ -n $1 ]]; then
        systemctl set-environment BERTH_CRASH_AFTER="$1"
    else
        systemctl unset-environment BERTH_CRASH_AFTER
    fi
    systemctl reset-failed berthd.service 2>/dev/null || true
    systemctl restart berthd.service
}

# Waits up to 30 s for machine NAME's scope and registration to go (its PID 1 ends when berthd
# does: it waits on berthd's socket).
wait_machine_gone() {
    for _ in $(seq 300); do
        if ! machinectl show "$1" >/dev/null 2>&1 && [[ $(systemctl is-active "machine-$1.scope") != active ]]; then
            return 0
        fi
        sleep 0.1
    done
    assert_machine_gone "$1"
}

test_93_berthd_killed_during_a_start_leaves_all_or_nothing() {
    [[ -d /var/lib/machines/deb ]] || expect_ok berth import-tar "$GUEST_TAR" deb
    # A payload of its own, so a process another test left can't be taken for it.
    expect_ok berth create cut --image deb -- sleep 93093
    local step
    for step in spawn scope register; do
        berthd_crashes_after "$step"
        expect_fail "." berth start cut
        grep -q "berthd went away before it answered" "$ERR" || fail "after a crash at $step: the error does not say berthd went away: $(cat "$ERR")"
        berthd_crashes_after ""
        # Nothing of the cut start is left: no process, scope, registration or mount...
        wait_machine_gone cut
        echo "after a crash at $step: empty scopes stopped by the restarted berthd: $(journalctl -q -u berthd --since "-60 s" | grep -c 'empty scope')"
        ! pgrep -f 'sleep 93093' >/dev/null || fail "after a crash at $step: a payload runs: $(pgrep -af 'sleep 93093')"
        ! grep -q "/var/lib/berth/machines/cut" /proc/self/mountinfo || fail "after a crash at $step: a mount is left"
        expect_ok berth list
        grep -Eq "^cut +stopped " "$OUT" || fail "after a crash at $step: berth list shows $(grep '^cut ' "$OUT")"
        # ... and the machine starts normally afterwards, managed as any other.
        expect_ok berth start cut
        [[ $(machinectl show cut -p State --value) == running ]] || fail "after a crash at $step: the next start did not run"
        expect_ok berth exec cut -- true
        expect_ok berth stop cut
        assert_machine_gone cut
    done

    # systemd refusing the scope mid-start (PID 1 is cloned by then): a unit of that name exists
    # already. The start fails naming it, kills its PID 1 and leaves the other unit alone.
    systemd-run --quiet --scope --unit=machine-cut.scope --slice=machine.slice sleep 300 &
    for _ in $(seq 100); do [[ $(systemctl is-active machine-cut.scope) == active ]] && break; sleep 0.1; done
    expect_fail "machine-cut.scope" berth start cut
    ! machinectl show cut >/dev/null 2>&1 || fail "cut registered although systemd refused its scope"
    ! pgrep -f 'sleep 93093' >/dev/null || fail "the refused start left its payload: $(pgrep -af 'sleep 93093')"
    [[ $(systemctl is-active machine-cut.scope) == active ]] || fail "the refused start stopped the other unit"
    systemctl stop machine-cut.scope
    wait
    expect_ok berth list
    grep -Eq "^cut +stopped " "$OUT" || fail "after systemd refused: berth list shows $(grep '^cut ' "$OUT")"
    expect_ok berth rm cut

    # berth run --rm cut off after registration: the ephemeral machine is removed entirely.
    berthd_crashes_after register
    expect_fail "." berth run --rm --name cutrun --image deb -- sleep infinity
    berthd_crashes_after ""
    wait_machine_gone cutrun
    expect_ok berth list
    for _ in $(seq 50); do [[ -e /etc/berth/machines/cutrun.machine ]] || break; sleep 0.1; done
    [[ ! -e /etc/berth/machines/cutrun.machine && ! -e /var/lib/berth/machines/cutrun ]] \
        || fail "the cut-off run --rm left its definition or root"
    assert_no_staging
}

test_94_a_full_disk_during_an_import_or_create_leaves_nothing() {
    # A 48 MiB filesystem for the pool, and a 150 MB guest to import into it.
    local disk=/var/tmp/small-pool.ext4 used_before used_after
    rm -f "$disk"
    truncate -s 48M "$disk"
    mkfs.ext4 -q "$disk"
    mount -o loop "$disk" /var/lib/machines
    # Whatever happens below, the next tests get the real pool back.
    trap 'umount /var/lib/machines 2>/dev/null; rm -f /var/tmp/small-pool.ext4' EXIT
    used_before=$(df --output=used /var/lib/machines | tail -1)
    expect_fail "No space left on device.*the filesystem is full; free space on it" berth import-tar "$GUEST_TAR" full
    used_after=$(df --output=used /var/lib/machines | tail -1)
    echo "figure: full disk: $(cat "$ERR"); pool used ${used_before} KiB before, ${used_after} KiB after"
    # No partial image visible, and the space is given back.
    [[ -z $(ls -A /var/lib/machines | grep -v '^lost+found$') ]] || fail "left in the pool: $(ls -A /var/lib/machines)"
    [[ ! -e /var/lib/berth/images/full.json ]] || fail "a record of the failed import is left"
    expect_ok berth images
    ! grep -q '^full ' "$OUT" || fail "berth images lists the failed import"
    ((used_after <= used_before + 64)) || fail "the failed import did not give its space back: ${used_before} -> ${used_after} KiB"
    # The pool works again once there is room.
    expect_ok berth import-tar "$FIXTURES/small.tar" fits
    expect_ok berth rmi fits
    umount /var/lib/machines
    # A machine's root on the same small filesystem: the 150 MB image is copied into it and
    # the create fails, keeping nothing (no root, no staging copy, no definition).
    [[ -d /var/lib/machines/deb ]] || expect_ok berth import-tar "$GUEST_TAR" deb
    rm -f "$disk"
    truncate -s 48M "$disk"
    mkfs.ext4 -q "$disk"
    mount -o loop "$disk" /var/lib/berth/machines
    trap 'umount /var/lib/berth/machines 2>/dev/null; rm -f /var/tmp/small-pool.ext4' EXIT
    expect_fail "No space left on device.*the filesystem is full; free space on it" \
        berth create full1 --image deb --boot
    echo "figure: full disk during a create: $(cat "$ERR")"
    [[ -z $(ls -A /var/lib/berth/machines | grep -v '^lost+found$') ]] \
        || fail "left beside the machine roots: $(ls -A /var/lib/berth/machines)"
    [[ ! -e /etc/berth/machines/full1.machine ]] || fail "a definition of the failed create is left"
    assert_no_machine full1
    umount /var/lib/berth/machines
    rm -f "$disk"
    trap - EXIT
}
