# shellcheck shell=bash
# Boot machines as transient scopes: start, systemd's view, identity, UID range, stop.

test_60_boot_machine_runs_in_its_scope() {
    [[ -d /var/lib/machines/deb ]] || expect_ok berth import-tar "$GUEST_TAR" deb
    expect_ok berth create web --image deb --boot
    expect_ok berth start web
    grep -q "Started machine 'web': machine-web.scope" "$OUT"
    # systemd inside boots (degraded is fine: a shared network namespace skips some units).
    local state="" i
    for i in $(seq 60); do
        state=$(timeout 60 systemd-run -M web --wait --pipe -q systemctl is-system-running --wait 2>/dev/null) && break
        [[ $state == degraded ]] && break
        sleep 2
    done
    echo "system state inside: $state"
    [[ $state == running || $state == degraded ]] || fail "systemd inside is '$state'"
    # machined and systemd know it.
    machinectl list --no-legend | grep -q '^web ' || fail "machinectl list lacks web"
    [[ $(systemctl show -P Slice machine-web.scope) == machine.slice ]]
    [[ $(systemctl show -P Delegate machine-web.scope) == yes ]]
    [[ $(systemctl is-active machine-web.scope) == active ]]
    expect_ok berth list
    grep -Eq '^web +running +machine-web.scope +[0-9]+ ' "$OUT"
    # Identity: hostname, machine-id, a private UID range.
    [[ $(systemd-run -M web --wait --pipe -q hostname) == web ]]
    [[ $(systemd-run -M web --wait --pipe -q cat /etc/machine-id) == "$(sed -n 's/^MachineID=//p' /etc/berth/machines/web.machine)" ]]
    local leader uidmap
    leader=$(machinectl show -p Leader --value web)
    uidmap=$(awk '{print $1, $2, $3}' "/proc/$leader/uid_map")
    [[ $uidmap == "0 524288 65536" ]] || fail "uid_map is '$uidmap'"
    # Files container root creates belong to the range's base on the host.
    systemd-run -M web --wait --pipe -q touch /root/made-inside
    [[ $(stat -c %u /var/lib/berth/machines/web/root/made-inside) == 0 ]] || true
    [[ $(stat -c %u "/proc/$leader/root/root/made-inside") == 524288 ]] || fail "owner on the host is $(stat -c %u "/proc/$leader/root/root/made-inside")"
    # A clean mount table: the standard mounts, /sys read-only, no bind mounts over /etc files,
    # no berth path but the root's own source (inherent to a bind-mounted root, as with nspawn).
    local mi mp
    mi=$(systemd-run -M web --wait --pipe -q cat /proc/self/mountinfo)
    echo "$mi"
    for mp in / /proc /proc/sys /sys /sys/fs/cgroup /dev /dev/pts /dev/shm /dev/mqueue /run /tmp; do
        awk -v m="$mp" '$5 == m' <<<"$mi" | grep -q . || fail "no mount at $mp"
    done
    awk '$5 == "/sys" && $6 ~ /^ro/' <<<"$mi" | grep -q . || fail "/sys is not read-only"
    awk '$5 == "/proc/sys" && $6 ~ /^ro/' <<<"$mi" | grep -q . || fail "/proc/sys is not read-only"
    ! awk '$5 ~ /^\/etc\/(hostname|hosts|resolv.conf)$/' <<<"$mi" | grep -q . || fail "bind mount over /etc"
    [[ $(grep -c berth <<<"$mi") -le 1 ]] || fail "berth paths in mountinfo: $(grep berth <<<"$mi")"
    systemd-run -M web --wait --pipe -q cat /run/host/container-manager | grep -qx berth
    # Running machines are not removed or started twice.
    expect_fail "machine 'web' is already running" berth start web
    expect_fail "machine 'web' is running; stop it first" berth rm web
    # Stop: a clean poweroff; nothing left.
    expect_ok berth stop web
    ! machinectl list --no-legend | grep -q '^web ' || fail "still registered"
    [[ $(systemctl is-active machine-web.scope) != active ]] || fail "scope still active"
    expect_ok berth list
    grep -Eq '^web +stopped ' "$OUT"
    expect_fail "machine 'web' is not running" berth stop web
    # The same UID range at the next start; machinectl poweroff stops it too.
    expect_ok berth start web
    leader=$(machinectl show -p Leader --value web)
    [[ $(awk '{print $2}' "/proc/$leader/uid_map") == 524288 ]]
    machinectl poweroff web
    for _ in $(seq 120); do machinectl show web >/dev/null 2>&1 || break; sleep 0.5; done
    ! machinectl show web >/dev/null 2>&1 || fail "machinectl poweroff did not stop it"
    expect_ok berth rm web
}

test_61_failed_starts_leave_nothing_behind() {
    expect_ok berth import-tar "$FIXTURES/small.tar" base
    expect_ok berth create noinit --image base --boot
    expect_fail "image 'base' of machine 'noinit' has no init to boot" berth start noinit
    expect_ok berth create job --image base -- /bin/true
    expect_fail "executing /bin/true: No such file" berth start job
    expect_fail "no machine named 'ghost'" berth start ghost
    expect_fail "no machine named 'ghost'" berth stop ghost
    expect_fail "machine name" berth start 'a/b'
    # A symlink the guest planted where a --bind goes is refused, not followed to the host.
    [[ -d /var/lib/machines/deb ]] || expect_ok berth import-tar "$GUEST_TAR" deb
    expect_ok berth create trap --image deb --boot --bind /var/tmp:/data/sub
    ln -s /etc/berth-trap /var/lib/berth/machines/trap/data
    expect_fail "data is a symlink in the machine's root; refusing to follow it" berth start trap
    [[ ! -e /etc/berth-trap ]] || fail "created /etc/berth-trap on the host"
    expect_ok berth rm trap
    [[ -z $(machinectl list --no-legend) ]] || fail "registered: $(machinectl list --no-legend)"
    [[ -z $(systemctl list-units --no-legend 'machine-*.scope') ]] || fail "scopes left: $(systemctl list-units --no-legend 'machine-*.scope')"
    expect_ok berth rm noinit job
    expect_ok berth rmi base
}

test_62_machines_survive_a_berthd_restart() {
    [[ -d /var/lib/machines/deb ]] || expect_ok berth import-tar "$GUEST_TAR" deb
    expect_ok berth create keep --image deb --boot
    expect_ok berth start keep
    local leader
    leader=$(machinectl show -p Leader --value keep)
    expect_fail "not authorized to stop machines" as_tester berth stop keep
    expect_fail "not authorized to start machines" as_tester berth start keep
    systemctl restart berthd.service
    [[ $(machinectl show -p Leader --value keep) == "$leader" ]] || fail "leader changed"
    expect_ok berth list
    grep -Eq "^keep +running +machine-keep.scope +$leader " "$OUT"
    expect_ok as_tester berth list
    grep -Eq "^keep +running " "$OUT"
    expect_ok berth stop keep
    ! machinectl show keep >/dev/null 2>&1 || fail "still registered after stop"
    expect_ok berth rm keep
}

# systemd's own tools on a boot machine: exec, journal, status, shell, reboot, stop by unit.
test_63_boot_machine_and_systemd_tools() {
    [[ -d /var/lib/machines/deb ]] || expect_ok berth import-tar "$GUEST_TAR" deb
    expect_ok berth create tools --image deb --boot
    expect_ok berth start tools
    local state="" i
    for i in $(seq 60); do
        state=$(timeout 60 berth exec tools -- systemctl is-system-running --wait 2>/dev/null) && break
        [[ $state == degraded ]] && break
        sleep 2
    done
    [[ $state == running || $state == degraded ]] || fail "systemd inside is '$state'"
    # The guest's systemd sandboxes its services as on a real machine (peers' guests fail
    # hardened units): nothing failed at boot, and units with the usual hardening run confined.
    local out uid
    out=$(berth exec tools -- systemctl --failed --no-legend --plain)
    [[ -z $out ]] || fail "failed units in the guest: $out"
    out=$(berth exec tools -- systemd-run --wait --pipe -q -p ProtectSystem=strict -p PrivateTmp=yes \
        -p PrivateNetwork=yes -p ProtectHome=yes -- sh -c 'touch /usr/x 2>&1; ls -A /tmp | wc -l; grep -c : /proc/net/dev')
    [[ $out == *"Read-only file system"*$'\n0\n1' ]] || fail "ProtectSystem/PrivateTmp/PrivateNetwork unit: '$out'"
    out=$(berth exec tools -- systemd-run --wait --pipe -q -p DynamicUser=yes -p PrivateDevices=yes \
        -p ProtectKernelTunables=yes -p ProtectControlGroups=yes -p RestrictNamespaces=yes \
        -p SystemCallFilter=@system-service -p MemoryDenyWriteExecute=yes \
        -p LoadCredential=name:/etc/hostname -p SetCredential=greeting:hello -- \
        sh -c 'cat "$CREDENTIALS_DIRECTORY/name" "$CREDENTIALS_DIRECTORY/greeting"; echo; id -u')
    uid=${out##*$'\n'}
    [[ ${out%$'\n'*} == $'tools\nhello' ]] && ((uid >= 61184 && uid <= 65519)) \
        || fail "DynamicUser/credentials unit: '$out'"
    # Its own cgroup has the controllers (as systemd-nspawn's guests do), so the limits it sets
    # on its units apply: a unit over its MemoryMax is OOM-killed.
    out=$(berth exec tools -- cat /sys/fs/cgroup/cgroup.controllers)
    for c in cpu io memory pids; do
        [[ " $out " == *" $c "* ]] || fail "the guest's cgroup lacks the $c controller: '$out'"
    done
    out=$(berth exec tools -- systemd-run --wait --pipe -q -p TasksMax=7 -p CPUWeight=50 -p MemoryMax=30M -- \
        sh -c 'c=/sys/fs/cgroup$(cut -d: -f3 /proc/self/cgroup); cat $c/pids.max $c/cpu.weight $c/memory.max')
    [[ $out == $'7\n50\n31457280' ]] || fail "a unit's limits in the guest: '$out'"
    ! berth exec tools -- systemd-run --wait -q --unit=hog -p MemoryMax=20M -p MemorySwapMax=0 -- \
        sh -c 'x=$(head -c 60000000 /dev/zero | tr "\0" a)' || fail "a unit over its MemoryMax ran to its end"
    [[ $(berth exec tools -- systemctl show -p Result --value hog.service) == oom-kill ]] \
        || fail "the unit over its MemoryMax was not OOM-killed"
    berth exec tools -- systemctl reset-failed hog.service
    # exec: all namespaces, its root, its hostname, a user of its /etc/passwd.
    [[ $(berth exec tools -- hostname) == tools ]]
    [[ $(berth exec --user nobody tools -- id -u) == 65534 ]]
    # Its own journal, from the host.
    journalctl -M tools -q --no-pager | grep -q "Startup finished" || fail "journalctl -M shows no boot"
    expect_ok berth logs tools -n 50
    grep -q "Startup finished" "$OUT"
    # status: unit, state, limits, the cgroup tree with the machine's systemd in it.
    expect_ok berth status tools
    grep -q "Unit: machine-tools.scope (active/running)" "$OUT"
    grep -q "TasksMax=" "$OUT"
    grep -q "/payload/init.scope" "$OUT"
    systemd-cgls --no-pager -u machine-tools.scope | grep -q "systemd" || fail "systemd-cgls shows nothing"
    systemctl status --no-pager machine-tools.scope >/dev/null || fail "systemctl status fails"
    machinectl status --no-pager tools | grep -q "machine-tools.scope"
    # machinectl shell runs a command through the machine's own systemd.
    timeout 60 machinectl shell tools /bin/sh -c 'echo via-shell >/root/shell-mark' || true
    [[ $(berth exec tools -- cat /root/shell-mark) == via-shell ]] || fail "machinectl shell did not run"
    # Files out with machinectl copy-from; in with berth copy-to, into a boot machine too
    # (machinectl copy-to can't write through the idmapped root: the README says so, and
    # this keeps it true).
    local dir
    dir=$(mktemp -d)
    machinectl copy-from tools /etc/hostname "$dir/copied-out" || fail "machinectl copy-from failed"
    [[ $(cat "$dir/copied-out") == tools ]] || fail "copy-from brought '$(cat "$dir/copied-out")'"
    echo copied-in >"$dir/in.txt"
    ! machinectl copy-to tools "$dir/in.txt" /root/in.txt 2>/dev/null \
        || fail "machinectl copy-to works now: update the README"
    berth copy-to tools "$dir/in.txt" /root/in.txt
    [[ $(berth exec tools -- stat -c '%U %s' /root/in.txt) == "root 10" ]] || fail "berth copy-to into a boot machine"
    # machinectl login: machined starts a getty of the guest's on a terminal of its devpts.
    (
        for i in $(seq 80); do grep -q "tools login:" "$dir/login.out" 2>/dev/null && break; sleep 0.5; done
        printf '\035\035\035'
    ) | timeout 60 script -qfec "machinectl login tools" "$dir/login.out" >/dev/null 2>&1 || true
    grep -q "tools login:" "$dir/login.out" || fail "machinectl login showed no login prompt: $(cat -v "$dir/login.out")"
    # The -M switch of systemd's other tools reaches the machine's own services.
    hostnamectl -M tools | grep -q "Static hostname: tools" || fail "hostnamectl -M"
    timedatectl -M tools | grep -q "Time zone:" || fail "timedatectl -M"
    # machinectl kill reaches the machine's processes (SIGHUP makes systemd reload, not die).
    machinectl kill --signal=SIGUSR2 tools
    # Each start is a boot of its own: a boot ID not the host's, read-only.
    local boot_id
    boot_id=$(berth exec tools -- cat /proc/sys/kernel/random/boot_id)
    [[ $boot_id =~ ^[0-9a-f-]{36}$ && $boot_id != "$(cat /proc/sys/kernel/random/boot_id)" ]] \
        || fail "the machine's boot ID '$boot_id' is not its own"
    ! berth exec tools -- sh -c 'echo x >/proc/sys/kernel/random/boot_id' 2>/dev/null \
        || fail "the machine may write its boot ID"
    # machinectl reboot: systemd exits with SIGHUP and berthd starts it again.
    local leader
    leader=$(machinectl show -p Leader --value tools)
    machinectl reboot tools
    for i in $(seq 120); do
        local now
        now=$(machinectl show -p Leader --value tools 2>/dev/null) || now=""
        [[ -n $now && $now != "$leader" ]] && break
        sleep 0.5
    done
    [[ -n $now && $now != "$leader" ]] || fail "no new leader after machinectl reboot"
    # A new boot ID, and the machine's journal lists both boots.
    local boots=0
    for i in $(seq 60); do
        boots=$(journalctl -M tools -q --list-boots --no-pager 2>/dev/null | wc -l)
        ((boots >= 2)) && break
        sleep 0.5
    done
    ((boots >= 2)) || fail "journalctl -M tools --list-boots shows $boots boot(s) after a reboot"
    [[ $(berth exec tools -- cat /proc/sys/kernel/random/boot_id) != "$boot_id" ]] \
        || fail "the reboot kept the boot ID"
    # Its systemd unmounted the machine's /tmp at that shutdown (systemd-nspawn's guests log
    # "Failed unmounting tmp.mount": there /tmp is the manager's, locked in the guest).
    journalctl -M tools -b -1 -q --no-pager -o cat >"$OUT" 2>&1 || true
    grep -q "Unmounted tmp.mount" "$OUT" || fail "the guest did not unmount /tmp at shutdown"
    ! grep -q "Failed unmounting tmp.mount" "$OUT" || fail "the guest failed to unmount /tmp"
    # berth restart gives a new leader too.
    expect_ok berth restart tools
    [[ $(machinectl show -p Leader --value tools) != "$now" ]] || fail "restart kept the leader"
    # Stopping the unit with systemctl stops the machine; berth notices.
    systemctl stop machine-tools.scope
    expect_ok berth list
    grep -Eq '^tools +stopped ' "$OUT" || fail "berth list does not show tools stopped"
    # machinectl terminate too.
    expect_ok berth start tools
    machinectl terminate tools
    for i in $(seq 60); do machinectl show tools >/dev/null 2>&1 || break; sleep 0.5; done
    expect_ok berth list
    grep -Eq '^tools +stopped ' "$OUT" || fail "berth list does not show tools stopped"
    # rm --force stops a running machine first.
    expect_ok berth start tools
    expect_fail "machine 'tools' is running" berth rm tools
    expect_ok berth rm --force tools
    [[ ! -e /etc/berth/machines/tools.machine && ! -e /var/lib/berth/machines/tools ]] || fail "left behind"
    ! machinectl show tools >/dev/null 2>&1 || fail "still registered"
}

# slow_init ROOT: makes the tree's systemd an init that becomes systemd after 3 s, a window
# in which the kernel drops a signal to it (a namespace's init that neither blocks nor catches
# the signal), wide enough to be hit every time.
slow_init() {
    mv "$1/usr/lib/systemd/systemd" "$1/usr/lib/systemd/systemd.real"
    printf '#!/bin/sh\nsleep 3\nexec /usr/lib/systemd/systemd.real "$@"\n' >"$1/usr/lib/systemd/systemd"
    chmod 755 "$1/usr/lib/systemd/systemd"
}

# A stop right after a start is a clean poweroff though the guest's systemd does not take
# signals yet: berthd waits until it does, rather than losing the request and killing the
# machine when the timeout runs out. The same for SIGTERM to an attached `berth run --boot`
# then: the CLI passes the request on once the guest has booted.
test_64_stop_right_after_start_powers_off_cleanly() {
    [[ -d /var/lib/machines/deb ]] || expect_ok berth import-tar "$GUEST_TAR" deb
    expect_ok berth create early --image deb --boot
    local root=/var/lib/berth/machines/early since log=/var/tmp/t64.log out=/var/tmp/t64.out
    local pid leader rc i
    slow_init "$root"
    since=$(date +%s)
    expect_ok berth start early
    expect_ok berth stop --timeout 60 early
    ! machinectl show early >/dev/null 2>&1 || fail "still registered after stop"
    journalctl -u berthd --since "@$since" -o cat --no-pager >"$log"
    cat "$log"
    grep -q "does not handle SIGRTMIN+3 yet" "$log" || fail "berthd did not wait for the guest's init"
    ! grep -q "did not stop in time" "$log" || fail "the machine was killed, not powered off"
    # Halted, not killed: a guest systemd that halts ends with exit status 0 (its journald
    # did not run yet, so its journal has nothing to show).
    expect_ok berth status early
    grep -q "Last exit: exited 0" "$OUT" || fail "the guest did not halt cleanly"
    # The same for berth kill --leader: the poweroff request is held until the init takes it.
    since=$(date +%s)
    expect_ok berth start early
    expect_ok berth kill --leader -s RTMIN+3 early
    grep -q "Sent SIGRTMIN+3 to the leader of machine 'early'" "$OUT" || fail "kill said otherwise"
    for i in $(seq 120); do machinectl show early >/dev/null 2>&1 || break; sleep 0.5; done
    ! machinectl show early >/dev/null 2>&1 || fail "berth kill --leader -s RTMIN+3 did not stop it"
    journalctl -u berthd --since "@$since" -o cat --no-pager >"$log"
    grep -q "does not handle SIGRTMIN+3 yet" "$log" || fail "berthd did not wait to send the kill"
    expect_ok berth status early
    grep -q "Last exit: exited 0" "$OUT" || fail "the guest did not halt cleanly after the kill"
    # A signal the init never takes (systemd ignores SIGPIPE) is an error, and is not sent.
    expect_ok berth start --wait early
    expect_fail "does not handle SIGPIPE .*, so the kernel would drop it; nothing was sent" \
        berth kill --leader -s PIPE early
    machinectl show early >/dev/null 2>&1 || fail "the refused kill stopped the machine"
    expect_ok berth stop early
    expect_ok berth rm early
    # berth run --boot, killed once its guest's init runs (the script: comm "systemd").
    # A snapshot where the pool is btrfs (a copy of the guest costs half a minute under TCG).
    btrfs -q subvolume snapshot /var/lib/machines/deb /var/lib/machines/slowboot 2>/dev/null ||
        cp -a --reflink=auto /var/lib/machines/deb /var/lib/machines/slowboot
    slow_init /var/lib/machines/slowboot
    berth run --name slowrun --boot --image slowboot </dev/null >"$out" 2>&1 &
    pid=$!
    for i in $(seq 150); do
        leader=$(machinectl show -p Leader --value slowrun 2>/dev/null) &&
            [[ $(cat "/proc/$leader/comm" 2>/dev/null) == systemd ]] && break
        sleep 0.1
    done
    sleep 0.5
    kill -TERM "$pid"
    rc=0
    gone_within 90 "$pid" || rc=$?
    cat "$out"
    [[ $rc == 0 ]] || fail "berth run --boot ended with $rc after SIGTERM"
    expect_ok berth rm slowrun
    btrfs -q subvolume delete /var/lib/machines/slowboot 2>/dev/null || rm -rf /var/lib/machines/slowboot
    rm -f "$log" "$out"
}
