# shellcheck shell=bash
# App machines: berth's init as PID 1, run attached to pipes, the journal, exec, kill.

# Nothing of machine NAME is left: definition, root, scope, registration.
assert_no_machine() {
    local name=$1
    [[ ! -e /etc/berth/machines/$name.machine ]] || fail "definition of $name left"
    [[ ! -e /var/lib/berth/machines/$name ]] || fail "root of $name left"
    ! machinectl show "$name" >/dev/null 2>&1 || fail "$name still registered"
    local unit
    unit="machine-$(systemd-escape "$name").scope"
    [[ $(systemctl is-active "$unit") != active ]] || fail "$unit still active"
}

test_70_run_returns_exit_status_and_streams() {
    [[ -d /var/lib/machines/deb ]] || expect_ok berth import-tar "$GUEST_TAR" deb
    local rc=0
    berth run --rm --image deb -- sh -c 'exit 7' || rc=$?
    [[ $rc == 7 ]] || fail "exit status $rc, not 7"
    # stdin reaches the command, its stdout and stderr reach ours.
    [[ $(echo piped-in | berth run --rm --image deb -- cat) == piped-in ]] || fail "stdin/stdout"
    [[ $(berth run --rm --image deb -- sh -c 'echo to-stderr >&2' 2>&1 >/dev/null) == to-stderr ]] || fail "stderr"
    # A signal that kills the command is 128 + N, as in a shell.
    rc=0
    berth run --rm --image deb -- sh -c 'kill -TERM $$' || rc=$?
    [[ $rc == 143 ]] || fail "killed by SIGTERM gave $rc"
    # Inside: its name as hostname, a private UID range, berth's init as PID 1, the command
    # as PID 2, the payload cgroup as its cgroup root.
    local out
    out=$(berth run --rm --name r1 --image deb -- sh -c 'hostname; cat /proc/self/uid_map; echo pid=$$; cat /proc/self/cgroup; echo init=$(cat /proc/1/comm)')
    echo "$out"
    grep -qx r1 <<<"$out" || fail "hostname"
    grep -Eq '^ +0 +[0-9]+ +65536$' <<<"$out" || fail "uid_map"
    ! grep -Eq '^ +0 +0 ' <<<"$out" || fail "container root is host root"
    grep -qx 'pid=2' <<<"$out" || fail "the command is not PID 2"
    grep -qx 'init=berth-init' <<<"$out" || fail "PID 1 is not named berth-init"
    grep -qx '0::/' <<<"$out" || fail "cgroup namespace"
    assert_no_machine r1
    # Its own boot ID; with a read-only /run of the user's, where berth can't put one, the
    # host's (and the start goes on).
    out=$(berth run --rm --image deb -- cat /proc/sys/kernel/random/boot_id)
    [[ $out =~ ^[0-9a-f-]{36}$ && $out != "$(cat /proc/sys/kernel/random/boot_id)" ]] \
        || fail "an app machine's boot ID '$out' is not its own"
    mkdir -p /var/tmp/ro-run
    out=$(berth run --rm --bind /var/tmp/ro-run:/run:ro --image deb -- cat /proc/sys/kernel/random/boot_id)
    [[ $out == "$(cat /proc/sys/kernel/random/boot_id)" ]] || fail "with a read-only /run: '$out'"
    [[ -z $(ls -A /var/tmp/ro-run) ]] || fail "berth wrote into a read-only --bind"
    # A private /tmp (tmpfs, 1777, root's); a --bind below /tmp, /run or /dev lands on the
    # machine's tmpfs there, its mount point owned by the machine's root.
    out=$(berth run --rm --image deb -- sh -c 'findmnt -no FSTYPE /tmp; stat -c "%a %U" /tmp')
    [[ $out == $'tmpfs\n1777 root' ]] || fail "the machine's /tmp: '$out'"
    mkdir -p /var/tmp/in-tmp && echo marker >/var/tmp/in-tmp/file
    out=$(berth run --rm --bind /var/tmp/in-tmp:/tmp/a/b:ro --bind /var/tmp/in-tmp/file:/run/x/file \
        --bind /var/tmp/in-tmp:/dev/y --image deb -- \
        sh -c 'cat /tmp/a/b/file /run/x/file /dev/y/file; findmnt -no FSTYPE /tmp; stat -c "%a %U" /tmp /tmp/a /run/x')
    [[ $out == $'marker\nmarker\nmarker\ntmpfs\n1777 root\n755 root\n755 root' ]] \
        || fail "binds below /tmp, /run and /dev: '$out'"
    # Orphans are reaped by PID 1: no zombie stays behind.
    out=$(berth run --rm --image deb -- sh -c 'sh -c "sleep 0.2 &"; sleep 1.5; cat /proc/[0-9]*/stat')
    ! awk '$3 == "Z"' <<<"$out" | grep -q . || fail "zombies: $(awk '$3 == "Z"' <<<"$out")"
    # Without --rm the machine stays, stopped, with its last exit recorded.
    berth run --name kept --image deb -- sh -c 'exit 3' || true
    expect_ok berth list
    grep -Eq '^kept +stopped ' "$OUT"
    expect_ok berth status kept
    grep -q "Last exit: exited 3" "$OUT"
    expect_ok berth rm kept
    # A command that does not exist: a clear error and nothing left.
    expect_fail "executing /no/such/command: No such file" berth run --rm --name nocmd --image deb -- /no/such/command
    assert_no_machine nocmd
    expect_fail "executing /no/such/command" berth run --name nocmd2 --image deb -- /no/such/command
    assert_no_machine nocmd2
    [[ -z $(machinectl list --no-legend) ]] || fail "registered: $(machinectl list --no-legend)"
    # On a terminal, the command gets a new terminal of the machine's own devpts, and the
    # caller's keystrokes reach it.
    out=$(printf 'typed-in\n' | script -qec "berth run --rm --name tty1 --image deb -- sh -c 'tty; read line; echo got:\$line'" /dev/null)
    echo "$out"
    # (script echoes what it types, and may send a NUL at the end of its input: ^@.)
    grep -q '/dev/pts/0' <<<"$out" || fail "no terminal of the machine's devpts"
    grep -q 'got:typed-in' <<<"$out" || fail "keystrokes did not reach the command"
    assert_no_machine tty1
}

test_71_app_machine_logs_to_the_journal() {
    [[ -d /var/lib/machines/deb ]] || expect_ok berth import-tar "$GUEST_TAR" deb
    expect_ok berth create app1 --image deb -- sh -c 'trap "echo got-term; exit 3" TERM; echo hello-from-app1; while :; do sleep 0.2; done'
    expect_ok berth start app1
    local i
    for i in $(seq 40); do
        journalctl -q -u machine-app1.scope -o cat | grep -q hello-from-app1 && break
        sleep 0.5
    done
    # Attributed to the scope, under the machine's name.
    journalctl -q -u machine-app1.scope -o verbose SYSLOG_IDENTIFIER=app1 | grep -q "MESSAGE=hello-from-app1" \
        || fail "no hello-from-app1 in journalctl -u machine-app1.scope"
    expect_ok berth logs app1
    grep -q hello-from-app1 "$OUT"
    expect_ok berth list
    grep -Eq '^app1 +running +machine-app1.scope +[0-9]+ +[0-9]+s +deb +app ' "$OUT" || fail "list row"
    expect_ok berth list --json
    grep -q '"started_usec"' "$OUT"
    expect_ok berth status app1
    grep -q "sleep 0.2" "$OUT" || true
    grep -q "/payload" "$OUT"
    [[ $(systemctl show -P Delegate machine-app1.scope) == yes ]]
    # berth stop: SIGTERM to berth's init, which passes it on; the exit status is kept.
    expect_ok berth stop app1
    for i in $(seq 20); do
        journalctl -q -u machine-app1.scope -o cat | grep -q got-term && break
        sleep 0.5
    done
    journalctl -q -u machine-app1.scope -o cat | grep -q got-term || fail "SIGTERM was not forwarded"
    expect_ok berth status app1
    grep -q "Last exit: exited 3" "$OUT"
    # berth kill, machinectl poweroff and systemctl stop end it too; berth list sees it.
    expect_ok berth start app1
    expect_ok berth kill app1 -s TERM
    for i in $(seq 40); do machinectl show app1 >/dev/null 2>&1 || break; sleep 0.5; done
    expect_ok berth list
    grep -Eq '^app1 +stopped ' "$OUT" || fail "kill did not stop it"
    expect_ok berth start app1
    machinectl poweroff app1
    for i in $(seq 40); do machinectl show app1 >/dev/null 2>&1 || break; sleep 0.5; done
    ! machinectl show app1 >/dev/null 2>&1 || fail "machinectl poweroff did not stop it"
    expect_ok berth start app1
    systemctl stop machine-app1.scope
    expect_ok berth list
    grep -Eq '^app1 +stopped ' "$OUT" || fail "systemctl stop did not stop it"
    # Restarting berthd: the app machine keeps running with the same leader.
    expect_ok berth start app1
    local leader
    leader=$(machinectl show -p Leader --value app1)
    systemctl restart berthd.service
    expect_ok berth list
    grep -Eq "^app1 +running +machine-app1.scope +$leader " "$OUT" || fail "not running after restart"
    expect_ok berth stop app1
    # A host process put into the machine's scope from outside keeps it populated after the
    # machine's PID 1 is gone: the end stops the scope, which kills that process too.
    expect_ok berth start app1
    sleep infinity &
    local stray=$!
    echo "$stray" >/sys/fs/cgroup/machine.slice/machine-app1.scope/payload/cgroup.procs
    expect_ok berth stop app1
    for i in $(seq 40); do kill -0 "$stray" 2>/dev/null || break; sleep 0.25; done
    ! kill -0 "$stray" 2>/dev/null || fail "a process in the scope outlived the machine"
    wait "$stray" 2>/dev/null || true
    for i in $(seq 40); do [[ $(systemctl is-active machine-app1.scope) != active ]] && break; sleep 0.25; done
    [[ $(systemctl is-active machine-app1.scope) != active ]] || fail "the scope stayed active"
    expect_ok berth rm app1
    # An app that prints and ends at once: its lines are still its machine's. journald finds
    # a line's unit from the writer's cgroup when it reads the line, and the writer (berth's
    # init) may be gone by then; the stream names machine-NAME.scope, which journald uses
    # then. (Without that, the second start here lost both lines.)
    expect_ok berth create brief --image deb -- sh -c 'echo first-words; echo last-words'
    for i in 1 2 3 4; do
        expect_ok berth start brief
        for j in $(seq 80); do
            berth list 2>/dev/null | grep -Eq '^brief +stopped ' && break
            sleep 0.25
        done
        expect_ok berth logs brief
        [[ $(grep -c last-words "$OUT") -eq $i ]] \
            || fail "start $i: $(grep -c last-words "$OUT") last-words lines in 'berth logs brief', expected $i: $(cat "$OUT")"
    done
    expect_ok berth rm brief
}

test_72_exec_runs_inside_a_running_machine() {
    [[ -d /var/lib/machines/deb ]] || expect_ok berth import-tar "$GUEST_TAR" deb
    local out
    expect_ok berth create app2 --image deb -- sleep infinity
    expect_fail "machine 'app2' is not running" berth exec app2 -- true
    expect_ok berth start app2
    [[ $(berth exec app2 -- hostname) == app2 ]] || fail "hostname"
    local rc=0
    berth exec app2 -- sh -c 'exit 5' || rc=$?
    [[ $rc == 5 ]] || fail "exec exit status $rc"
    [[ $(echo data | berth exec app2 -- cat) == data ]] || fail "exec stdin"
    [[ $(berth exec --user nobody app2 -- id -un) == nobody ]] || fail "--user"
    # Same PID namespace (sleep is PID 2), same cgroup namespace root, inside the scope.
    berth exec app2 -- cat /proc/2/cmdline | tr '\0' ' ' | grep -q "sleep infinity" || fail "pid namespace"
    [[ $(berth exec app2 -- cat /proc/self/cgroup) == "0::/" ]] || fail "cgroup"
    berth exec app2 -- sleep 3 &
    sleep 1.5
    grep -rqs . /sys/fs/cgroup/machine.slice/machine-app2.scope/payload/cgroup.procs
    [[ $(wc -l </sys/fs/cgroup/machine.slice/machine-app2.scope/payload/cgroup.procs) -ge 3 ]] \
        || fail "exec'd process not in the machine's cgroup"
    wait
    # A berth exec that goes away (killed, or its Ctrl-C without a terminal) hangs its command
    # up: nothing runs on unattended in the machine.
    berth exec app2 -- sh -c 'trap "echo hung-up >/tmp/hup; exit 1" HUP; while :; do sleep 0.1; done' </dev/null &
    local caller=$! i
    # (The pattern doesn't match the grep itself.)
    local find="grep -qs 'whil[e] :' /proc/[0-9]*/cmdline"
    for i in $(seq 50); do berth exec app2 -- sh -c "$find" && break; sleep 0.2; done
    kill -KILL "$caller"
    wait "$caller" || true
    for i in $(seq 50); do berth exec app2 -- sh -c "$find" || break; sleep 0.2; done
    ! berth exec app2 -- sh -c "$find" || fail "the command of a killed berth exec runs on"
    [[ $(berth exec app2 -- cat /tmp/hup) == hung-up ]] || fail "the command was not hung up (SIGHUP)"
    out=$(script -qec "berth exec app2 -- sh -c 'tty; echo TERM=\$TERM'" /dev/null)
    echo "$out"
    # (script may send a NUL at the end of its input, which the terminal echoes as ^@.)
    grep -q '/dev/pts/[0-9]' <<<"$out" || fail "exec on a terminal got no terminal"
    grep -q '^TERM=' <<<"$out" || fail "no TERM"
    expect_fail "no user 'ghost' in the machine's /etc/passwd" berth exec --user ghost app2 -- true
    expect_fail "executing /no/such: No such file" berth exec app2 -- /no/such
    expect_fail "not authorized to run commands in machines" as_tester berth exec app2 -- true
    # Every exec helper (berthd's child) was reaped, after a command and after an error alike.
    local berthd zombies
    berthd=$(systemctl show -p MainPID --value berthd.service)
    zombies=$(ps --ppid "$berthd" -o stat=,pid=,comm= | awk '$1 ~ /^Z/' || true)
    [[ -z $zombies ]] || fail "berthd left zombies behind: $zombies"
    expect_ok berth stop app2
    expect_ok berth rm app2
}

test_73_bad_input_leaves_nothing() {
    [[ -d /var/lib/machines/deb ]] || expect_ok berth import-tar "$GUEST_TAR" deb
    local name
    for name in '' '..' 'a/b' '-rf' 'has space' "$(printf 'a%.0s' $(seq 65))" 'my_box' 'web-' 'a..b'; do
        # Through the API (the CLI would take a leading '-' for an option) and through run.
        expect_fail "machine name" busctl call org.berth.Berth1 /org/berth/Berth1 \
            org.berth.Berth1.Manager CreateMachine "ssbassasasst(ss)(ssas)(sbas)" -- "$name" deb true 0 "" 0 0 "" 0 "" "" "" "" 0 "" true 0
        expect_fail "machine name" berth run --rm --name="$name" --image deb -- true
    done
    expect_fail "machine name 'a/b' contains '/'" berth create a/b --image deb --boot
    expect_fail "machine name 'my_box' contains '_'" berth create my_box --image deb --boot
    expect_fail "machine name '..' must not start with '.'" berth create .. --image deb --boot
    expect_fail "no image named 'nosuch'" berth create m1 --image nosuch --boot
    expect_fail "no image named 'nosuch'" berth run --rm --name m1 --image nosuch -- true
    assert_no_machine m1
    expect_fail "hostname" berth create m2 --image deb --boot --hostname 'bad_host'
    assert_no_machine m2
    expect_ok berth create m3 --image deb -- sleep infinity
    expect_fail "machine 'm3' is not running" berth stop m3
    expect_fail "machine 'm3' is not running" berth exec m3 -- true
    expect_fail "machine 'm3' is not running" berth kill m3
    expect_ok berth start m3
    expect_fail "machine 'm3' is already running" berth start m3
    expect_fail "'BOGUS' is not a signal" berth kill m3 -s BOGUS
    expect_fail "no machine named 'ghost'" berth exec ghost -- true
    expect_fail "no machine named 'ghost'" berth kill ghost
    expect_fail "no machine named 'ghost'" berth status ghost
    expect_ok berth rm --force m3
    assert_no_machine m3
    [[ -z $(ls /etc/berth/machines) ]] || fail "definitions left: $(ls /etc/berth/machines)"
    [[ -z $(ls /var/lib/berth/machines) ]] || fail "roots left: $(ls /var/lib/berth/machines)"
    [[ -z $(systemctl list-units --no-legend 'machine-*.scope') ]] || fail "scopes left"
}

# -p: systemd's resource-control properties on the machine's scope, checked before anything
# is created.
test_74_properties_reach_the_scope() {
    [[ -d /var/lib/machines/deb ]] || expect_ok berth import-tar "$GUEST_TAR" deb
    local disk
    disk=$(lsblk -ndo PATH | head -1)
    expect_ok berth create lim --image deb -p MemoryMax=256M -p CPUQuota=50% -p TasksMax=100 \
        -p IOWeight=200 -p "IODeviceWeight=$disk 300" -p CPUWeight=idle -p MemoryHigh=50% -- sleep infinity
    grep -q '^\[Resources\]' /etc/berth/machines/lim.machine
    grep -qx 'MemoryMax=256M' /etc/berth/machines/lim.machine
    expect_ok berth start lim
    local unit=machine-lim.scope
    [[ $(systemctl show -P MemoryMax $unit) == 268435456 ]] || fail "MemoryMax $(systemctl show -P MemoryMax $unit)"
    [[ $(systemctl show -P CPUQuotaPerSecUSec $unit) == 500ms ]] || fail "CPUQuota $(systemctl show -P CPUQuotaPerSecUSec $unit)"
    [[ $(systemctl show -P TasksMax $unit) == 100 ]] || fail "TasksMax"
    [[ $(systemctl show -P IOWeight $unit) == 200 ]] || fail "IOWeight"
    systemctl show -P IODeviceWeight $unit | grep -q "$disk 300" || fail "IODeviceWeight $(systemctl show -P IODeviceWeight $unit)"
    [[ $(systemctl show -P MemoryHigh $unit) != infinity ]] || fail "MemoryHigh=50% not applied"
    [[ $(cat /sys/fs/cgroup/machine.slice/$unit/memory.max) == 268435456 ]] || fail "memory.max"
    [[ $(cat /sys/fs/cgroup/machine.slice/$unit/cpu.max) == "50000 100000" ]] || fail "cpu.max $(cat /sys/fs/cgroup/machine.slice/$unit/cpu.max)"
    expect_ok berth status lim
    grep -q "MemoryMax=268435456" "$OUT"
    expect_ok berth rm --force lim
    # run takes -p too.
    berth run --rm --name prun --image deb -p MemoryMax=300M -- sleep 5 &
    local i
    for i in $(seq 120); do
        [[ $(systemctl is-active machine-prun.scope) == active ]] && break
        sleep 0.5
    done
    [[ $(systemctl show -P MemoryMax machine-prun.scope) == 314572800 ]] || fail "run -p MemoryMax"
    wait
    assert_no_machine prun
    # Bad properties: named in the error, nothing created.
    expect_fail "unknown property 'Bogus'" berth create p1 --image deb -p Bogus=1 --boot
    assert_no_machine p1
    expect_fail "MemoryMax=lots: expected a size" berth create p1 --image deb -p MemoryMax=lots --boot
    assert_no_machine p1
    expect_fail "CPUQuota=50: expected a percentage" berth run --rm --name p1 --image deb -p CPUQuota=50 -- true
    assert_no_machine p1
    expect_fail "device /dev/nosuch of a -p property does not exist" berth create p1 --image deb -p "IOWeight=100" -p "IODeviceWeight=/dev/nosuch 100" --boot
    assert_no_machine p1
    expect_fail "is not NAME=VALUE" berth create p1 --image deb -p MemoryMax --boot
    assert_no_machine p1
}

# Limits are plain unit properties: exact values in systemd and the cgroup files, changed live
# with berth set, persisted, and what an admin changes with systemctl shows in berth status.
test_75_set_changes_limits_live() {
    [[ -d /var/lib/machines/deb ]] || expect_ok berth import-tar "$GUEST_TAR" deb
    # An app machine: the limits and their changes are the scope's, whatever runs in it (a
    # booted guest under CPUQuota=50% only makes the test slower).
    expect_ok berth create res --image deb -p CPUWeight=50 -p IOWeight=200 -p CPUQuota=50% \
        -p MemoryMax=512M -p TasksMax=300 -- sleep infinity
    expect_ok berth start res
    local unit=machine-res.scope cg=/sys/fs/cgroup/machine.slice/machine-res.scope
    [[ $(systemctl show -P CPUWeight $unit) == 50 ]] || fail "CPUWeight"
    [[ $(systemctl show -P IOWeight $unit) == 200 ]] || fail "IOWeight"
    [[ $(systemctl show -P CPUQuotaPerSecUSec $unit) == 500ms ]] || fail "CPUQuota"
    [[ $(systemctl show -P MemoryMax $unit) == 536870912 ]] || fail "MemoryMax"
    [[ $(systemctl show -P TasksMax $unit) == 300 ]] || fail "TasksMax"
    [[ $(cat $cg/cpu.weight) == 50 ]] || fail "cpu.weight $(cat $cg/cpu.weight)"
    [[ $(cat $cg/cpu.max) == "50000 100000" ]] || fail "cpu.max $(cat $cg/cpu.max)"
    [[ $(cat $cg/memory.max) == 536870912 ]] || fail "memory.max"
    [[ $(cat $cg/pids.max) == 300 ]] || fail "pids.max"
    # berth set: at once, and kept in the definition.
    expect_ok berth set res CPUWeight=80
    [[ $(cat $cg/cpu.weight) == 80 ]] || fail "cpu.weight after set: $(cat $cg/cpu.weight)"
    grep -qx 'CPUWeight=80' /etc/berth/machines/res.machine || fail "not persisted"
    ! grep -qx 'CPUWeight=50' /etc/berth/machines/res.machine || fail "old value kept"
    # An invalid value changes nothing.
    expect_fail "CPUWeight=banana: expected a weight" berth set res CPUWeight=banana
    expect_fail "unknown property 'Bogus'" berth set res MemoryMax=1G Bogus=1
    [[ $(cat $cg/cpu.weight) == 80 ]] || fail "changed by a bad set"
    [[ $(systemctl show -P MemoryMax $unit) == 536870912 ]] || fail "MemoryMax changed by a bad set"
    grep -qx 'CPUWeight=80' /etc/berth/machines/res.machine || fail "definition changed by a bad set"
    # --runtime: the scope only.
    expect_ok berth set --runtime res MemoryMax=600M
    [[ $(cat $cg/memory.max) == 629145600 ]] || fail "runtime MemoryMax"
    grep -qx 'MemoryMax=512M' /etc/berth/machines/res.machine || fail "--runtime persisted"
    # An admin's systemctl set-property shows in berth status, with usage from the cgroup.
    systemctl set-property --runtime $unit MemoryHigh=400M
    expect_ok berth status res
    grep -q "MemoryHigh=419430400" "$OUT" || fail "berth status misses systemctl's change"
    grep -Eq "CPU now: [0-9.]+% of one CPU" "$OUT" || fail "no CPU usage"
    grep -Eq "Memory now: [0-9.]+[KMG]" "$OUT" || fail "no memory usage"
    expect_ok berth top --once
    grep -Eq '^res +[0-9.]+ ' "$OUT" || fail "berth top lacks res"
    # Survives a stop and start (the definition's values; --runtime ones are gone).
    expect_ok berth restart res
    [[ $(cat $cg/cpu.weight) == 80 ]] || fail "cpu.weight after restart"
    [[ $(cat $cg/memory.max) == 536870912 ]] || fail "memory.max after restart"
    expect_ok berth stop res
    expect_fail "not running, so --runtime has nothing to change" berth set --runtime res CPUWeight=90
    expect_ok berth set res CPUWeight=90
    grep -qx 'CPUWeight=90' /etc/berth/machines/res.machine
    expect_ok berth rm res
}

test_76_copy_to_puts_files_into_a_running_machine() {
    [[ -d /var/lib/machines/deb ]] || expect_ok berth import-tar "$GUEST_TAR" deb
    expect_ok berth create cp1 --image deb -- sleep infinity
    local src=/var/tmp/copy-src size blocks
    rm -rf "$src"
    mkdir -p "$src/site/sub"
    echo "port = 80" >"$src/app.conf"
    chmod 4750 "$src/app.conf"
    touch -d 2020-01-02 "$src/app.conf"
    echo hello >"$src/site/sub/index.html"
    ln -s sub/index.html "$src/site/link"
    # Into the stopped machine: the machine root's as well (0 on its disk, which the running
    # machine sees as its 0); a place its own mounts cover once it runs is refused, also
    # through a symlink of the machine's (Debian's /var/run -> /run).
    expect_ok berth copy-to cp1 "$src/app.conf" /etc/stopped.conf
    grep -qx "Copied $src/app.conf to cp1:/etc/stopped.conf." "$OUT" || fail "no report of the stopped copy"
    [[ $(stat -c '%u:%g %a' /var/lib/berth/machines/cp1/etc/stopped.conf) == "0:0 750" ]] \
        || fail "stopped copy on disk: $(stat -c '%u:%g %a' /var/lib/berth/machines/cp1/etc/stopped.conf)"
    expect_fail "'/tmp/' is below /tmp, which the machine's own /tmp \(a tmpfs\) covers once the machine runs" \
        berth copy-to cp1 "$src/app.conf" /tmp/
    expect_fail "'/var/run/app.conf' is below /run, which the machine's own /run \(a tmpfs\) covers" \
        berth copy-to cp1 "$src/app.conf" /var/run/app.conf
    [[ ! -e /var/lib/berth/machines/cp1/tmp/app.conf && ! -e /var/lib/berth/machines/cp1/run/app.conf ]] \
        || fail "a refused copy into the stopped machine was written"
    expect_ok berth start cp1
    [[ $(berth exec cp1 -- stat -c '%u:%g %a' /etc/stopped.conf) == "0:0 750" ]] \
        || fail "stopped copy seen running: $(berth exec cp1 -- stat -c '%u:%g %a' /etc/stopped.conf)"

    # A file into a directory: owned by the machine's root (0 inside, its own UID outside),
    # its permission bits without the set-ID bit, its time kept.
    expect_ok berth copy-to cp1 "$src/app.conf" /etc/
    grep -qx "Copied $src/app.conf to cp1:/etc/app.conf." "$OUT" || fail "no report of the path written"
    [[ $(berth exec cp1 -- stat -c '%u:%g %a %y' /etc/app.conf) == "0:0 750 2020-01-02 "* ]] \
        || fail "owner, mode or time: $(berth exec cp1 -- stat -c '%u:%g %a %y' /etc/app.conf)"
    [[ $(berth exec cp1 -- cat /etc/app.conf) == "port = 80" ]] || fail "content"
    # As a new name; an existing file is replaced.
    expect_ok berth copy-to cp1 "$src/app.conf" /root/renamed.conf
    echo "port = 8080" >"$src/app.conf"
    expect_ok berth copy-to cp1 "$src/app.conf" /root/renamed.conf
    [[ $(berth exec cp1 -- cat /root/renamed.conf) == "port = 8080" ]] || fail "not replaced"
    # A directory tree, symlinks as symlinks; it doesn't replace a directory.
    touch -d 2021-03-04 "$src/site/sub"
    expect_ok berth copy-to cp1 "$src/site" /srv/
    [[ $(berth exec cp1 -- cat /srv/site/sub/index.html) == hello ]] || fail "tree content"
    [[ $(berth exec cp1 -- stat -c %y /srv/site/sub) == "2021-03-04 "* ]] || fail "directory time"
    [[ $(berth exec cp1 -- readlink /srv/site/link) == sub/index.html ]] || fail "symlink"
    [[ $(berth exec cp1 -- stat -c %u /srv/site/sub) == 0 ]] || fail "tree owner"
    expect_fail "/srv/site exists in the machine as a directory; remove it first" \
        berth copy-to cp1 "$src/site" /srv/
    # The destination defaults to the source's path, whose directory must exist.
    expect_fail "there is no directory $src in the machine to copy into; create it first \(berth exec cp1 -- mkdir -p $src\)" \
        berth copy-to cp1 "$src/app.conf"
    berth exec cp1 -- mkdir -p "$src"
    expect_ok berth copy-to cp1 "$src/app.conf"
    [[ $(berth exec cp1 -- cat "$src/app.conf") == "port = 8080" ]] || fail "default destination"
    # A symlink as SOURCE is read through, but keeps its own name.
    ln -s app.conf "$src/alias.conf"
    expect_ok berth copy-to cp1 "$src/alias.conf"
    grep -qx "Copied $src/alias.conf to cp1:$src/alias.conf." "$OUT" || fail "symlink source's name"
    [[ $(berth exec cp1 -- cat "$src/alias.conf") == "port = 8080" ]] || fail "symlink source's content"
    # A sparse file (a disk image) keeps its holes.
    truncate -s 1G "$src/disk.img"
    echo end >>"$src/disk.img"
    expect_ok berth copy-to cp1 "$src/disk.img" /srv/
    read -r size blocks < <(berth exec cp1 -- stat -c '%s %b' /srv/disk.img)
    [[ $size == 1073741828 && $blocks -lt 1024 ]] || fail "sparse file: $size bytes, $blocks blocks"

    # Bad input: named, non-zero, nothing written and no staging directory left.
    expect_fail "destination 'etc/x' is not an absolute path in the machine" \
        berth copy-to cp1 "$src/app.conf" etc/x
    expect_fail "cannot read /no/such" berth copy-to cp1 /no/such /tmp/
    expect_fail "not a regular file or directory" berth copy-to cp1 /dev/null /tmp/
    expect_fail "no machine named 'nosuch'" berth copy-to nosuch "$src/app.conf" /tmp/
    expect_fail "not authorized to copy files into machines" as_tester berth copy-to cp1 "$src/app.conf" /tmp/
    # berth reads the source as the caller: a user allowed to copy (by a polkit rule for
    # tester) copies what it may read, and not what it may not (app.conf is root's, 4750).
    local rule=/etc/polkit-1/rules.d/50-berth-test-copy.rules i
    trap 'rm -f /etc/polkit-1/rules.d/50-berth-test-copy.rules' EXIT
    printf '%s\n' 'polkit.addRule(function(action, subject) {' \
        '    if (action.id == "org.berth.berth1.copy-to-machine" && subject.user == "tester") { return polkit.Result.YES; }' \
        '});' >"$rule"
    echo mine >/var/tmp/tester-file
    chmod 644 /var/tmp/tester-file
    for i in $(seq 40); do # until polkitd has read the rule
        as_tester berth copy-to cp1 /var/tmp/tester-file /root/ >/dev/null 2>&1 && break
        sleep 0.25
    done
    [[ $(berth exec cp1 -- cat /root/tester-file) == mine ]] || fail "tester's copy"
    [[ $(berth exec cp1 -- stat -c %u /root/tester-file) == 0 ]] || fail "tester's copy is not root's"
    expect_fail "reading $src/app.conf: Permission denied .*; nothing was copied" \
        as_tester berth copy-to cp1 "$src/app.conf" /tmp/
    rm -f "$rule" /var/tmp/tester-file
    # A source that fails half-way through (a socket can't be copied): the machine's side
    # sees the stream end early and keeps nothing of it.
    mkdir -p "$src/bad"
    echo a >"$src/bad/a"
    python3 -c 'import socket, sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])' "$src/bad/zz.sock"
    expect_fail "reading $src/bad: .*socket can not be archived; nothing was copied" \
        berth copy-to cp1 "$src/bad" /srv/
    ! berth exec cp1 -- test -e /srv/bad || fail "a failed copy left /srv/bad"
    # A FIFO (or device node) in the tree is refused by name, and nothing is kept.
    mkdir -p "$src/pipes"
    mkfifo "$src/pipes/p"
    expect_fail "'pipes/p' is not a regular file, directory or symlink .*; berth copy-to copies only those" \
        berth copy-to cp1 "$src/pipes" /srv/
    ! berth exec cp1 -- test -e /srv/pipes || fail "a refused copy left /srv/pipes"
    local left
    left=$(berth exec cp1 -- find / /tmp -xdev -name '.#berth-copy-*')
    [[ -z $left ]] || fail "staging left in the machine: $left"
    [[ -z $(berth exec cp1 -- ls -A /tmp) ]] || fail "something was written to /tmp"
    expect_ok berth rm --force cp1
    rm -rf "$src"
}

# berth copy-from: a file or tree out of a running machine, written on the host as the caller.
test_78_copy_from_takes_files_out_of_a_running_machine() {
    [[ -d /var/lib/machines/deb ]] || expect_ok berth import-tar "$GUEST_TAR" deb
    expect_ok berth create cf1 --image deb -- sleep infinity
    local dst=/var/tmp/copy-from left
    rm -rf "$dst"
    mkdir -p "$dst"
    # Out of the stopped machine: its files as they are on its disk.
    expect_ok berth copy-from cf1 /etc/hostname "$dst/"
    [[ $(cat "$dst/hostname") == cf1 ]] || fail "copy from the stopped machine: $(cat "$dst/hostname")"
    rm -f "$dst/hostname"
    expect_ok berth start cf1
    berth exec cf1 -- sh -c 'mkdir -p /srv/site/sub && echo hello >/srv/site/sub/index.html &&
        ln -s /etc/shadow /srv/site/link && echo "port = 80" >/etc/app.conf &&
        chmod 4750 /etc/app.conf && touch -d 2020-01-02 /etc/app.conf'

    # A file into a directory: the caller's (root's), its permission bits without the set-ID
    # bit, its time kept.
    expect_ok berth copy-from cf1 /etc/app.conf "$dst/"
    grep -qx "Copied cf1:/etc/app.conf to $dst/app.conf." "$OUT" || fail "no report of the path written"
    [[ $(stat -c '%u:%g %a %y' "$dst/app.conf") == "0:0 750 2020-01-02 "* ]] \
        || fail "owner, mode or time: $(stat -c '%u:%g %a %y' "$dst/app.conf")"
    [[ $(cat "$dst/app.conf") == "port = 80" ]] || fail "content"
    # By default into the current directory; as a new name; an existing file is replaced.
    (cd "$dst" && berth copy-from cf1 /etc/hostname) || fail "copy into the current directory"
    [[ $(cat "$dst/hostname") == "$(berth exec cf1 -- cat /etc/hostname)" ]] || fail "default destination"
    expect_ok berth copy-from cf1 /etc/app.conf "$dst/renamed.conf"
    berth exec cf1 -- sh -c 'echo "port = 8080" >/etc/app.conf'
    expect_ok berth copy-from cf1 /etc/app.conf "$dst/renamed.conf"
    [[ $(cat "$dst/renamed.conf") == "port = 8080" ]] || fail "not replaced"
    # A tree, symlinks as symlinks: the machine's link to /etc/shadow is not followed on the
    # host. It doesn't replace a directory.
    expect_ok berth copy-from cf1 /srv/site "$dst/"
    [[ $(cat "$dst/site/sub/index.html") == hello ]] || fail "tree content"
    [[ -L $dst/site/link && $(readlink "$dst/site/link") == /etc/shadow ]] || fail "symlink"
    expect_fail "$dst/site exists as a directory; remove it first" berth copy-from cf1 /srv/site "$dst/"

    # Bad input: named, non-zero, nothing written and no staging directory left.
    expect_fail "there is no /no/such in the machine" berth copy-from cf1 /no/such "$dst/"
    expect_fail "source 'etc/x' is not an absolute path in the machine" berth copy-from cf1 etc/x "$dst/"
    expect_fail "names the machine's root directory" berth copy-from cf1 / "$dst/"
    expect_fail "/dev/null in the machine is not a regular file or directory" \
        berth copy-from cf1 /dev/null "$dst/"
    expect_fail "no machine named 'nosuch'" berth copy-from nosuch /etc/hostname "$dst/"
    expect_fail "not authorized to copy files out of machines" \
        as_tester berth copy-from cf1 /etc/hostname /var/tmp/
    # The host's side fails before reading: the machine's side, with more to write than a
    # socket holds, is told so rather than waiting, and the error is the host's.
    berth exec cf1 -- dd if=/dev/zero of=/srv/big bs=1M count=8 status=none
    expect_fail "there is no directory $dst/no/such to copy into; create it first \(mkdir -p $dst/no/such\)" \
        berth copy-from cf1 /srv/big "$dst/no/such/big"
    # A FIFO (or device node) in the tree is refused by name, and nothing is kept.
    berth exec cf1 -- sh -c 'mkdir -p /srv/pipes && mkfifo /srv/pipes/p'
    expect_fail "'pipes/p' is not a regular file, directory or symlink .*; berth copy-from copies only those" \
        berth copy-from cf1 /srv/pipes "$dst/"
    [[ ! -e $dst/pipes && ! -e $dst/no ]] || fail "a refused copy left something"
    # A sparse file keeps its holes (tar writes it as a GNU sparse entry).
    berth exec cf1 -- sh -c 'truncate -s 4G /srv/sparse && echo end >>/srv/sparse'
    expect_ok berth copy-from cf1 /srv/sparse "$dst/"
    [[ $(stat -c %s "$dst/sparse") == 4294967300 && $(stat -c %b "$dst/sparse") -lt 1024 ]] \
        || fail "sparse file: $(stat -c '%s bytes, %b blocks' "$dst/sparse")"
    [[ $(tail -c 4 "$dst/sparse") == end ]] || fail "sparse file's data"
    # An interrupted copy (SIGTERM; Ctrl-C the same) leaves nothing either, and its side in
    # the machine ends. berth is stopped (SIGSTOP) once it unpacks, so the copy can't end
    # first.
    local scope=/sys/fs/cgroup/machine.slice/machine-cf1.scope procs pid i rc
    procs=$(cat $(find "$scope" -name cgroup.procs) | wc -l)
    berth exec cf1 -- dd if=/dev/zero of=/srv/full bs=1M count=256 status=none
    berth copy-from cf1 /srv/full "$dst/" >/dev/null 2>&1 &
    pid=$!
    for i in $(seq 1500); do
        [[ -n $(find "$dst" -maxdepth 1 -name '.#berth-copy-*') ]] && break
        sleep 0.02
    done
    kill -STOP "$pid"
    [[ -n $(find "$dst" -maxdepth 1 -name '.#berth-copy-*') ]] || fail "the copy did not start unpacking"
    kill -TERM "$pid"
    kill -CONT "$pid"
    rc=0
    gone_within 30 "$pid" || rc=$?
    [[ $rc == 1 ]] || fail "an interrupted copy ended with $rc"
    [[ ! -e $dst/full ]] || fail "an interrupted copy left $dst/full"
    for i in $(seq 100); do
        (($(cat $(find "$scope" -name cgroup.procs) | wc -l) == procs)) && break
        sleep 0.1
    done
    (($(cat $(find "$scope" -name cgroup.procs) | wc -l) == procs)) || fail "the machine's side of the copy runs on"
    left=$(find "$dst" -name '.#berth-copy-*')
    [[ -z $left ]] || fail "staging left on the host: $left"
    expect_ok berth rm --force cf1
    rm -rf "$dst"
}

# gone_within SECONDS PID: waits for background job PID to end; its exit status, or 124 (and
# a failure) when it is still running then.
gone_within() {
    local i
    for i in $(seq $(($1 * 10))); do
        kill -0 "$2" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$2" 2>/dev/null; then
        kill -KILL "$2"
        fail "the berth command did not end within $1 s of the signal"
        return 124
    fi
    wait "$2"
}

# berth run passes Ctrl-C, SIGTERM and SIGHUP on: to an app's command as they are, to a
# booted systemd as a poweroff request (SIGRTMIN+3, as systemd-nspawn does: SIGTERM would make
# it re-execute itself, SIGINT reboot). One caught while berthd still sets the machine up waits
# until it runs: nothing is left running without its caller.
test_77_run_passes_signals_on() {
    [[ -d /var/lib/machines/deb ]] || expect_ok berth import-tar "$GUEST_TAR" deb
    local out=/var/tmp/t77.out pid rc i d held=0
    berth run --rm --name sig1 --image deb -- \
        sh -c 'trap "echo got-int; exit 5" INT; echo up; while :; do sleep 0.1; done' </dev/null >"$out" 2>&1 &
    pid=$!
    for i in $(seq 150); do grep -q up "$out" && break; sleep 0.1; done
    kill -INT "$pid"
    rc=0
    gone_within 30 "$pid" || rc=$?
    cat "$out"
    [[ $rc == 5 ]] && grep -q got-int "$out" || fail "SIGINT did not reach the command (exit $rc)"
    assert_no_machine sig1
    # Early: during the start (or before berth reached berthd, which then starts nothing).
    for d in 0.2 0.4 0.7; do
        berth run --rm --name sig2 --image deb -- sleep 600 </dev/null >"$out" 2>&1 &
        pid=$!
        sleep "$d"
        kill -TERM "$pid"
        rc=0
        gone_within 30 "$pid" || rc=$?
        cat "$out"
        ((rc != 124)) || return 1
        ! grep -q "caught SIGTERM while berthd sets the machine up" "$out" || held=$((held + 1))
        assert_no_machine sig2
    done
    echo "figure: SIGTERM came while berthd set the machine up in $held of 3 runs"
    # A booted machine powers off cleanly: exit status 0, its systemd saw SIGRTMIN+3.
    berth run --name sigb --boot --image deb </dev/null >"$out" 2>&1 &
    pid=$!
    for i in $(seq 100); do machinectl show sigb >/dev/null 2>&1 && break; sleep 0.2; done
    wait_booted sigb
    kill -TERM "$pid"
    rc=0
    gone_within 60 "$pid" || rc=$?
    [[ $rc == 0 ]] || fail "berth run --boot ended with $rc after SIGTERM: $(cat "$out")"
    journalctl -D /var/lib/berth/machines/sigb/var/log/journal -o cat --no-pager |
        grep -q "Received SIGRTMIN+3" || fail "the guest's systemd got no poweroff request"
    expect_ok berth rm sigb
    rm -f "$out"
}
