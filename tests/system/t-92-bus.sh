# shellcheck shell=bash
# The D-Bus API itself, called as any client would (dbus-send): malformed arguments get typed
# errors (org.berth.Berth1.Error.* or the bus's InvalidArgs), never a crash or a hang.

bus_call() {
    local method=$1
    shift
    dbus-send --system --print-reply --reply-timeout=20000 --dest=org.berth.Berth1 /org/berth/Berth1 \
        "org.berth.Berth1.Manager.$method" "$@"
}

test_92_bus_rejects_malformed_arguments() {
    [[ -d /var/lib/machines/deb ]] || expect_ok berth import-tar "$GUEST_TAR" deb
    expect_ok berth create bm --image deb -- sleep infinity
    local pid e=org.berth.Berth1.Error
    pid=$(systemctl show -p MainPID --value berthd.service)

    # Wrong types and missing arguments: the bus's own typed error.
    expect_fail "org.freedesktop.DBus.Error.InvalidArgs" bus_call StartMachine int32:5
    expect_fail "org.freedesktop.DBus.Error.InvalidArgs" bus_call StartMachine
    expect_fail "org.freedesktop.DBus.Error.InvalidArgs" bus_call StopMachine string:bm
    # Well-typed but bad values: berth's typed errors, naming what was wrong.
    expect_fail "$e.NoSuchMachine: .*nosuch" bus_call StartMachine string:nosuch
    expect_fail "$e.InvalidArgument: machine name '../x'" bus_call StartMachine string:../x
    expect_fail "$e.InvalidArgument: machine name is empty" bus_call MachineStatus string:
    expect_fail "$e.NoSuchMachine: .*nosuch" bus_call StopMachine string:nosuch uint32:5
    expect_fail "$e.InvalidArgument: .*image name" bus_call RemoveImage string:a/b boolean:false
    expect_fail "$e.NoSuchImage: .*nosuch" bus_call RemoveImage string:nosuch boolean:false
    expect_fail "$e.InvalidArgument: .*Bogus" bus_call SetProperties string:bm array:string:Bogus=1 boolean:false
    expect_fail "$e.InvalidArgument: .*CPUWeight" bus_call SetProperties string:bm array:string:CPUWeight=lots boolean:false
    expect_fail "$e.InvalidArgument: .*signal" bus_call KillMachine string:bm boolean:false int32:999
    expect_fail "$e.NoSuchMachine: .*nosuch" bus_call RebaseMachine string:nosuch string:
    expect_fail "$e.InvalidArgument: machine name 'a b'" bus_call CloneMachine string:bm "string:a b" string:
    expect_fail "$e.NoSuchMachine: .*nosuch" bus_call WaitReady string:nosuch uint32:1
    expect_fail "$e\\.[A-Za-z]+: " bus_call WaitExec uint32:424242
    expect_fail "$e.InvalidArgument: .*" bus_call PullImage "string:not a url" string:x string: string:
    # Nothing was created, and berthd is the same process, still answering.
    [[ $(systemctl show -p MainPID --value berthd.service) == "$pid" ]] || fail "berthd restarted under bad calls"
    expect_ok berth list
    grep -Eq '^bm +stopped ' "$OUT" || fail "bm changed"
    [[ ! -e /etc/berth/machines/a\ b.machine ]] || fail "a clone was made"
    expect_ok berth rm bm
}
