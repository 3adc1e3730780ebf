# shellcheck shell=bash
# The package: installs on a fresh bookworm, gives a working berth for root at once.

test_10_deb_installs_and_berthd_is_bus_activated() {
    expect_ok dpkg -i "$DEB"
    for f in /usr/bin/berth /usr/libexec/berthd \
        /usr/share/dbus-1/system.d/org.berth.Berth1.conf \
        /usr/share/dbus-1/system-services/org.berth.Berth1.service \
        /usr/share/polkit-1/actions/org.berth.berth1.policy; do
        [[ -e $f ]] || fail "$f not installed"
    done
    systemctl cat berthd.service >/dev/null
    # Not running until first used: bus activation starts it.
    [[ $(systemctl is-active berthd.service) != active ]] || fail "berthd already running before first call"
    expect_ok berth images
    [[ $(systemctl is-active berthd.service) == active ]] || fail "berthd not active after first call"
    # Type=notify: systemd saw READY=1 (a service that never sent it would still be activating).
    [[ $(systemctl show -P Type berthd.service) == notify ]]
    # Logs reach journald, attributed to the service.
    journalctl --sync
    journalctl -u berthd.service -o cat | grep -q "berthd ready" || fail "no 'berthd ready' in the journal"
    journalctl -u berthd.service -o verbose | grep -q "SYSLOG_IDENTIFIER=berthd"
}

test_11_live_bus_interface_is_the_documented_one() {
    busctl introspect --xml-interface org.berth.Berth1 /org/berth/Berth1 >/var/tmp/live.xml
    for member in ImportTar ImportFs ListImages RemoveImage Version ImageDirectory; do
        grep -q "name=\"$member\"" /var/tmp/live.xml || fail "live interface lacks $member"
        grep -q "name=\"$member\"" /host/src/dbus/org.berth.Berth1.xml || fail "documented XML lacks $member"
    done
    [[ $(busctl get-property org.berth.Berth1 /org/berth/Berth1 org.berth.Berth1.Manager ImageDirectory) == 's "/var/lib/machines"' ]]
}

test_12_help_is_complete() {
    expect_ok berth --help
    local top readme usage verb
    # Matched in bash, not with a grep per verb: under TCG every process costs.
    top=$(<"$OUT") readme=$(</usr/share/doc/berth/README.md)
    for verb in import-tar import-fs images rmi create list start stop rm run exec shell kill restart \
        status logs set top doctor enable disable import-oci export pull build rebuild rebase clone ports commit rename \
        copy-to copy-from snapshot; do
        [[ $'\n'$top == *$'\n'"  $verb "* ]] || fail "berth --help lacks $verb"
        usage=$(berth "$verb" --help) || fail "berth $verb --help failed"
        [[ $usage == *"Usage: berth $verb"* ]] || fail "berth $verb --help lacks its usage line"
        # ... and the README documents it.
        [[ $readme == *$'\n'"### \`berth $verb"* ]] || fail "README lacks berth $verb"
    done
    expect_fail "unrecognized subcommand" berth frobnicate
}
