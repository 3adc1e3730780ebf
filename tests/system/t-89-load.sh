# shellcheck shell=bash
# Load: 20 clients at once start, exec into, stop and remove machines (and run --rm ones) for a
# bounded time; afterwards nothing is leaked: no scope, registration, machine, descriptor or
# memory growth in berthd.

berthd_pid() { systemctl show -p MainPID --value berthd.service; }
berthd_fds() { ls "/proc/$(berthd_pid)/fd" | wc -l; }
berthd_rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$(berthd_pid)/status"; }

# One client's loop until $deadline (seconds since the epoch), and at least $3 rounds: its own
# machine, created, listed (while others remove theirs), started, exec'd into, stopped and
# removed; every third round a berth run --rm instead.
load_client() {
    local id=$1 deadline=$2 min_rounds=${3:-0} round=0 name=load$1
    while ((round < min_rounds || EPOCHSECONDS < deadline)); do
        round=$((round + 1))
        if ((round % 3 == 0)); then
            berth run --rm --image deb -- true || { echo "client $id round $round: run --rm failed"; return 1; }
        else
            berth create "$name" --image deb -- sleep infinity >/dev/null &&
                berth list >/dev/null &&
                berth start "$name" >/dev/null &&
                [[ $(berth exec "$name" -- echo in-"$name") == in-"$name" ]] &&
                berth stop "$name" >/dev/null &&
                berth rm "$name" >/dev/null || { echo "client $id round $round: a verb failed"; return 1; }
        fi
    done
    echo "client $id: $round rounds"
}

# The load for SECONDS (each client doing at least MIN_ROUNDS); fails if any client saw an error.
load_round() {
    local seconds=$1 min_rounds=${2:-0} deadline i pid failed=0 logs=/var/tmp/load pids=()
    rm -rf "$logs"
    mkdir -p "$logs"
    deadline=$((EPOCHSECONDS + seconds))
    for i in $(seq 20); do
        load_client "$i" "$deadline" "$min_rounds" >"$logs/$i.log" 2>&1 &
        pids+=("$!")
    done
    # Each client by its PID: bash's `wait -n` may report a failure (127) for no client when
    # several end at once (CI saw "1 of 20 clients saw an error" with all 20 done).
    for pid in "${pids[@]}"; do
        wait "$pid" || failed=$((failed + 1))
    done
    cat "$logs"/*.log
    ((failed == 0)) || fail "$failed of 20 clients saw an error"
}

test_89_twenty_clients_at_once_leak_nothing() {
    [[ -d /var/lib/machines/deb ]] || expect_ok berth import-tar "$GUEST_TAR" deb
    # A first round, in which every client does each kind of round (two machine cycles and a
    # run --rm), warms berthd up: its spare helper, lazily made connections, and the heap of
    # 20 concurrent starts. What the timed second round adds is what it leaks.
    load_round 0 3
    local fds_before rss_before fds_after rss_after
    sleep 2
    fds_before=$(berthd_fds) rss_before=$(berthd_rss_kb)
    load_round 30
    sleep 2
    fds_after=$(berthd_fds) rss_after=$(berthd_rss_kb)
    echo "figure: 20 clients for 30 s: $(cat /var/tmp/load/*.log | awk '{s += $3} END {print s}') rounds; berthd $fds_before -> $fds_after descriptors, RSS $rss_before -> $rss_after KiB"
    [[ -z $(systemctl list-units --all --plain --no-legend 'machine-load*' 'machine-run-*') ]] \
        || fail "scopes left: $(systemctl list-units --all --plain --no-legend 'machine-*')"
    [[ -z $(machinectl list --no-legend | grep -E '^(load|run-)') ]] || fail "registrations left: $(machinectl list)"
    [[ -z $(ls /etc/berth/machines | grep -E '^(load|run-)') ]] || fail "machines left: $(ls /etc/berth/machines)"
    assert_no_staging
    # A descriptor or two may be in flight (a journal stream, the spare helper's socket).
    ((fds_after <= fds_before + 2)) || fail "berthd's descriptors grew: $fds_before -> $fds_after"
    ((rss_after <= rss_before + 3072)) || fail "berthd's RSS grew by more than 3 MiB: $rss_before -> $rss_after KiB"
}
