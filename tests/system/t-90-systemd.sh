# shellcheck shell=bash
# systemctl management: berth@NAME.service and machines.target, readiness, man pages and
# completions, upgrades that keep machines running.

test_90_enable_start_at_boot_and_systemctl() {
    [[ -d /var/lib/machines/deb ]] || expect_ok berth import-tar "$GUEST_TAR" deb
    expect_ok berth create web9 --image deb --boot
    expect_fail "no machine named 'nosuch'" berth enable nosuch
    expect_ok berth enable web9
    grep -q "Created symlink .*machines.target.wants/berth@web9.service" "$OUT" || fail "no symlink reported"
    [[ $(systemctl is-enabled berth@web9.service) == enabled ]] || fail "berth@web9 is not enabled"
    [[ $(systemctl is-enabled machines.target) == enabled ]] || fail "machines.target is not enabled"
    systemctl list-dependencies --plain machines.target | grep -q 'berth@web9.service' || fail "machines.target does not want berth@web9"

    # systemctl start returns once the machine is ready: its systemd has finished booting.
    expect_ok systemctl start berth@web9.service
    [[ $(systemctl is-active machine-web9.scope) == active ]] || fail "scope not active"
    [[ $(systemctl is-active berth@web9.service) == active ]] || fail "service not active"
    local state
    state=$(systemd-run -M web9 --wait --pipe -q systemctl is-system-running || true)
    [[ $state == running || $state == degraded ]] || fail "ready, but systemd inside is '$state'"
    systemctl status berth@web9.service | grep -q "Machine 'web9' is ready" || fail "no status text"
    # systemctl stop stops the machine cleanly.
    expect_ok systemctl stop berth@web9.service
    ! machinectl list --no-legend | grep -q '^web9 ' || fail "still registered after systemctl stop"
    expect_ok berth list
    grep -Eq '^web9 +stopped ' "$OUT" || fail "berth list does not show web9 stopped"

    # At boot: machines.target starts it. A machine that stops itself ends the service.
    expect_ok systemctl start machines.target
    [[ $(systemctl is-active berth@web9.service) == active ]] || fail "machines.target did not start berth@web9"
    [[ $(systemctl is-active machine-web9.scope) == active ]]
    machinectl poweroff web9
    local i
    for i in $(seq 120); do
        [[ $(systemctl is-active berth@web9.service) != active ]] && break
        sleep 1
    done
    journalctl -u berth@web9.service --no-pager | tail -n 8
    [[ $(systemctl is-active berth@web9.service) == inactive ]] || fail "service is $(systemctl is-active berth@web9.service) after poweroff"

    # berth start --wait: ready when it returns; systemctl start adopts a running machine.
    expect_ok berth start --wait web9
    grep -q "Started machine 'web9', ready" "$OUT"
    state=$(systemd-run -M web9 --wait --pipe -q systemctl is-system-running || true)
    [[ $state == running || $state == degraded ]] || fail "start --wait returned while systemd inside is '$state'"
    local leader
    leader=$(machinectl show -p Leader --value web9)
    expect_ok systemctl start berth@web9.service
    [[ $(machinectl show -p Leader --value web9) == "$leader" ]] || fail "systemctl start restarted a running machine"

    # Upgrades keep machines running: the same package again restarts berthd only.
    local deb=${DEB:-$(ls /host/src/target/debian/berth_*.deb | head -1)}
    expect_ok dpkg -i "$deb"
    grep -q "Setting up berth" "$OUT"
    [[ $(machinectl show -p Leader --value web9) == "$leader" ]] || fail "the machine was restarted by the upgrade"
    sleep 3
    [[ $(systemctl is-active berth@web9.service) == active ]] || fail "berth@web9 ended with the upgrade"
    expect_ok berth status web9
    grep -q "running" "$OUT"
    # Removing the package stops nothing but berthd; installing it again picks up.
    expect_ok dpkg -r berth
    [[ $(machinectl show -p Leader --value web9) == "$leader" ]] || fail "removing the package stopped the machine"
    [[ -e /etc/berth/machines/web9.machine && -d /var/lib/berth/machines/web9 ]] || fail "removal deleted the machine"
    expect_ok dpkg -i "$deb"
    expect_ok systemctl stop berth@web9.service
    [[ $(systemctl is-active machine-web9.scope) != active ]] || fail "scope still active after stop (after upgrade)"

    # A failed start fails the unit, with the reason in its log.
    expect_fail "" systemctl start berth@nosuch.service
    [[ $(systemctl is-failed berth@nosuch.service) == failed ]] || fail "berth@nosuch is not failed"
    journalctl -u berth@nosuch.service --no-pager | grep -q "no machine named 'nosuch'" || fail "no reason in the unit's log"
    systemctl reset-failed berth@nosuch.service

    # disable undoes enable; rm of an enabled machine disables it.
    expect_ok berth disable web9
    [[ $(systemctl is-enabled berth@web9.service) == disabled ]] || fail "still enabled"
    expect_ok berth enable web9
    expect_ok berth rm --force web9
    [[ ! -e /etc/systemd/system/machines.target.wants/berth@web9.service ]] || fail "rm left the boot link"
    # An app machine is ready once its command runs.
    expect_ok berth create app9 --image deb -- sleep infinity
    expect_ok berth start --wait app9
    expect_ok berth rm --force app9

    # Purging keeps machines that are left (and says so); without machines it cleans up.
    expect_ok berth create keep9 --image deb -- true
    expect_ok dpkg -P berth
    grep -q "machines remain in /etc/berth/machines" "$ERR" || fail "purge did not say it kept machines"
    [[ -e /etc/berth/machines/keep9.machine && -d /var/lib/berth/machines/keep9 ]] || fail "purge deleted a machine"
    [[ -d /var/lib/machines/deb ]] || fail "purge deleted an image"
    expect_ok dpkg -i "$deb"
    expect_ok berth rm keep9
}

test_91_man_pages_and_completions_are_installed() {
    local page
    for page in man1/berth.1 man1/berth-create.1 man1/berth-shell.1 man1/berth-enable.1 \
        man5/berth.machine.5 man8/berthd.8; do
        [[ -s /usr/share/man/$page.gz ]] || fail "no /usr/share/man/$page.gz"
    done
    zcat /usr/share/man/man1/berth.1.gz | grep -q 'berth\\-shell' || fail "berth(1) does not list the verbs"
    zcat /usr/share/man/man5/berth.machine.5.gz | grep -q 'Timezone=' || fail "berth.machine(5) lacks keys"
    [[ -s /usr/share/bash-completion/completions/berth ]] || fail "no bash completion"
    [[ -s /usr/share/zsh/vendor-completions/_berth ]] || fail "no zsh completion"
    [[ -s /usr/share/fish/vendor_completions.d/berth.fish ]] || fail "no fish completion"
    # The bash completion completes verbs.
    bash -c 'source /usr/share/bash-completion/completions/berth; COMP_WORDS=(berth she); COMP_CWORD=1; _berth berth she berth; echo "${COMPREPLY[*]}"' | grep -qw shell \
        || fail "bash completion does not complete 'she'"
}
