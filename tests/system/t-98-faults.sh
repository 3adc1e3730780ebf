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
