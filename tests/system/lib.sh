# shellcheck shell=bash
# Helpers for berth's system tests, which run as root inside the VM test host (real systemd,
# machined, logind, polkit) against the installed .deb, through the real CLI.

PASSED=0
FAILED=0
FAILED_NAMES=()
# BERTH_TEST_LOGDIR keeps the logs somewhere else (on /host/out, to read one of a test that hangs).
LOGDIR=${BERTH_TEST_LOGDIR:-$(mktemp -d /var/tmp/berth-tests.XXXXXX)}
mkdir -p "$LOGDIR"

# A test still running after this many seconds is stopped, with all it started, and fails
# with its log (instead of the whole VM run timing out with none).
TEST_TIMEOUT=${BERTH_TEST_TIMEOUT:-900}

# Stops a hung test: its subshell is frozen first, so it can't go on to its next command
# when the one it waits for is killed.
stop_test() {
    local queue=("$1") all=() p
    kill -STOP "$1" 2>/dev/null
    while ((${#queue[@]})); do
        p=${queue[0]}
        queue=("${queue[@]:1}")
        all+=("$p")
        # shellcheck disable=SC2207
        queue+=($(pgrep -P "$p"))
    done
    kill -KILL "${all[@]}" 2>/dev/null
}

# Runs every test_* function in a subshell with errexit; a failing one prints its log.
run_tests() {
    local t rc start test_pid watchdog running_before
    for t in "$@"; do
        if [[ -z ${SUITE_POOL:-} && $t =~ ^test_([0-9]+)_ ]] && ((10#${BASH_REMATCH[1]} >= 58)); then
            suite_pool_on_btrfs
            SUITE_POOL=1
        fi
        start=$SECONDS
        running_before=$(running_machines)
        (
            set -eEo pipefail
            trap 'echo "FAILED at line $LINENO: $BASH_COMMAND" >&2' ERR
            [[ -z ${BERTH_TEST_TRACE:-} ]] || trace_into "$LOGDIR/$t.trace"
            "$t"
        ) >"$LOGDIR/$t.log" 2>&1 &
        test_pid=$!
        (
            sleep "$TEST_TIMEOUT" || exit 0 # killed: the test has ended
            echo "TIMED OUT: still running after ${TEST_TIMEOUT}s; stopped" >>"$LOGDIR/$t.log"
            stop_test "$test_pid"
        ) >/dev/null 2>&1 &
        watchdog=$!
        wait "$test_pid"
        rc=$?
        pkill -P "$watchdog" sleep 2>/dev/null
        wait "$watchdog" 2>/dev/null
        if ((rc == 0)); then
            PASSED=$((PASSED + 1))
            printf 'ok    %-48s %3ss\n' "$t" $((SECONDS - start))
            # A passing test's measured figures are shown too.
            sed -n 's/^figure: /      figure: /p' "$LOGDIR/$t.log"
        else
            FAILED=$((FAILED + 1))
            FAILED_NAMES+=("$t")
            printf 'FAIL  %-48s %3ss\n' "$t" $((SECONDS - start))
            sed 's/^/      | /' "$LOGDIR/$t.log"
            stop_machines_left_running "$running_before"
        fi
    done
}

# BERTH_TEST_TRACE=1: each test's commands go to LOGDIR/TEST.trace, each with the time it
# began and where it is (file:line, and the caller's line), for tests/system/trace-summary to
# tell where a test spends its time.
trace_into() {
    exec {trace_fd}>"$1"
    BASH_XTRACEFD=$trace_fd
    PS4='+ ${EPOCHREALTIME} ${BASH_SOURCE[0]##*/}:${LINENO} ${BASH_SOURCE[1]##*/}:${BASH_LINENO[0]} '
    set -x
}

running_machines() {
    machinectl list --no-legend 2>/dev/null | awk '{print $1}' | sort
}

# A failed test's running machines are stopped and removed, so a later test does not trip
# over them (a payload it takes for its own, a name or UID range in use).
stop_machines_left_running() {
    local machine
    for machine in $(comm -13 <(echo "$1") <(running_machines)); do
        echo "      (machine '$machine', left running by the failed test, stopped and removed)"
        berth rm --force "$machine" >/dev/null 2>&1 || machinectl terminate "$machine" 2>/dev/null || true
    done
}

# From test_58 on, images and machine roots live on one btrfs (a loop file), as the benchmarks
# and machinectl's own setup have them: a machine's root is then a snapshot, not a copy of the
# 150 MB guest, which under TCG costs seconds per `berth run`. test_20 to test_57 keep the
# plain-directory (ext4) pool, so both layouts are tested.
suite_pool_on_btrfs() {
    modprobe btrfs
    rm -f /var/tmp/suite-pool.btrfs
    truncate -s 8G /var/tmp/suite-pool.btrfs
    mkfs.btrfs -q /var/tmp/suite-pool.btrfs >/dev/null 2>&1
    mkdir -p /mnt/suite-pool /var/lib/machines /var/lib/berth/machines
    mount -o loop /var/tmp/suite-pool.btrfs /mnt/suite-pool
    btrfs -q subvolume create /mnt/suite-pool/images
    btrfs -q subvolume create /mnt/suite-pool/roots
    mount --bind /mnt/suite-pool/images /var/lib/machines
    mount --bind /mnt/suite-pool/roots /var/lib/berth/machines
    echo "== from here on, images and machine roots are on btrfs ($(findmnt -no SOURCE /mnt/suite-pool))"
}

summary() {
    echo
    if ((FAILED > 0)); then
        echo "failed: ${FAILED_NAMES[*]}"
    fi
    echo "system tests: $PASSED passed, $FAILED failed"
    ((FAILED == 0))
}

# wait_booted NAME: waits until the systemd of booted machine NAME has finished booting.
wait_booted() {
    local state="" i
    for i in $(seq 90); do
        state=$(timeout 60 systemd-run -M "$1" --wait --pipe -q systemctl is-system-running --wait 2>/dev/null) && break
        [[ $state == degraded ]] && break
        sleep 2
    done
    [[ $state == running || $state == degraded ]] || fail "systemd inside $1 is '$state'"
}

fail() {
    echo "assertion failed: $*" >&2
    return 1
}

# The files that hold a command's output for expect_ok and expect_fail ($OUT, $ERR), named
# without a process (under TCG each one costs about 0.1 s, and these helpers run ~600 times):
# by the shell's PID (tests start them in background subshells too) and a counter.
TEST_FILES=$(mktemp -d /var/tmp/berth-test-files.XXXXXX)
TEST_FILE_SEQ=0
new_output_files() {
    TEST_FILE_SEQ=$((TEST_FILE_SEQ + 1))
    OUT=$TEST_FILES/$BASHPID.$TEST_FILE_SEQ.out ERR=$TEST_FILES/$BASHPID.$TEST_FILE_SEQ.err
}

# show_lines PREFIX FILE [MAX]: FILE's first MAX lines (all by default), each after PREFIX.
show_lines() {
    local line n=0 max=${3:-0}
    while IFS= read -r line || [[ -n $line ]]; do
        ((max == 0 || n < max)) || break
        printf '%s%s\n' "$1" "$line"
        n=$((n + 1))
    done <"$2"
}

# expect_fail PATTERN CMD...: CMD must exit non-zero and print PATTERN (an extended regex, as
# grep -E) on stderr, in one line. Sets $OUT and $ERR (files).
expect_fail() {
    local pattern=$1 rc=0 line matched=0 panicked=0
    shift
    new_output_files
    "$@" >"$OUT" 2>"$ERR" || rc=$?
    echo "\$ $* -> exit $rc"
    while IFS= read -r line || [[ -n $line ]]; do
        printf '  stderr: %s\n' "$line"
        [[ $line =~ $pattern ]] && matched=1
        [[ $line != *panicked* ]] || panicked=1
    done <"$ERR"
    ((rc != 0)) || fail "'$*' succeeded but should have failed"
    ((matched)) || fail "stderr of '$*' lacks /$pattern/"
    # One clear line, no panic or backtrace.
    ((!panicked)) || fail "'$*' panicked"
}

# expect_ok CMD...: CMD must succeed. Sets $OUT and $ERR (files).
expect_ok() {
    local rc=0
    new_output_files
    "$@" >"$OUT" 2>"$ERR" || rc=$?
    echo "\$ $* -> exit $rc"
    show_lines '  stdout: ' "$OUT" 40
    show_lines '  stderr: ' "$ERR" 40
    ((rc == 0)) || fail "'$*' failed with exit $rc"
}

# No staging leftovers and no image of that name: an import that failed left nothing behind.
assert_no_image() {
    local name=$1
    [[ ! -e /var/lib/machines/$name ]] || fail "/var/lib/machines/$name exists"
    [[ ! -e /var/lib/berth/images/$name.json ]] || fail "record for $name exists"
    assert_no_staging
}

assert_no_staging() {
    local left
    left=$(find /var/lib/machines -maxdepth 1 -name '.#berth-*' | head -5)
    [[ -z $left ]] || fail "staging leftovers: $left"
}

as_tester() {
    runuser -u tester -- "$@"
}
