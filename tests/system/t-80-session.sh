# shellcheck shell=bash
# A machine feels like a real host: login sessions, timezone, locale, terminal, packages.

# Starts `berth shell sess` (on pipes or, with "tty", on a terminal) running a loop that notes
# a SIGHUP in /tmp/shell-hup, kills that berth (SIGKILL) once the loop runs, and checks that
# the session got SIGHUP and its service is gone: systemd-run, killed itself, would have left
# the service running.
shell_killed_hangs_up() {
    local how=$1 log=$LOGDIR/shell-$1.out i units
    local loop='trap "echo hung-up-$0 >/tmp/shell-hup; exit 1" HUP; echo up; while :; do sleep 0.1; done'
    local list="systemctl list-units --all --plain --no-legend 'berth-shell-*'"
    if [[ $how == tty ]]; then
        script -qec "berth shell sess -- sh -c '$loop' $how" /dev/null </dev/null >"$log" 2>&1 &
    else
        berth shell sess -- sh -c "$loop" "$how" </dev/null >"$log" 2>&1 &
    fi
    local started=$!
    for i in $(seq 150); do grep -q up "$log" && break; sleep 0.1; done
    grep -q up "$log" || fail "the shell's command did not start ($how): $(cat "$log")"
    pkill -KILL -f '^berth shell sess -- sh -c trap' || fail "no berth shell to kill ($how)"
    wait "$started" || true
    for i in $(seq 50); do
        units=$(berth exec sess -- sh -c "$list")
        [[ -z $units ]] && break
        sleep 0.2
    done
    [[ -z $units ]] || fail "the session of a killed berth shell runs on ($how): $units"
    [[ $(berth exec sess -- cat /tmp/shell-hup) == "hung-up-$how" ]] \
        || fail "the session was not hung up ($how): $(berth exec sess -- cat /tmp/shell-hup)"
}

test_80_boot_machine_shell_timezone_locale_packages() {
    [[ -d /var/lib/machines/deb ]] || expect_ok berth import-tar "$GUEST_TAR" deb
    expect_ok berth create sess --image deb --boot --timezone Europe/Berlin --locale de_DE.UTF-8
    # Written into the guest's own /etc: a symlink into its own tzdata, LANG in both files.
    local root=/var/lib/berth/machines/sess
    [[ $(readlink "$root/etc/localtime") == ../usr/share/zoneinfo/Europe/Berlin ]] || fail "localtime: $(readlink "$root/etc/localtime")"
    [[ $(cat "$root/etc/timezone") == Europe/Berlin ]] || fail "/etc/timezone"
    grep -qx 'LANG=de_DE.UTF-8' "$root/etc/default/locale" || fail "default/locale: $(cat "$root/etc/default/locale")"
    grep -qx 'LANG=de_DE.UTF-8' "$root/etc/locale.conf" || fail "locale.conf"
    grep -qx 'Timezone=Europe/Berlin' /etc/berth/machines/sess.machine
    grep -qx 'Locale=de_DE.UTF-8' /etc/berth/machines/sess.machine
    # The image has no compiled de_DE: enabled for locale-gen, and said so.
    grep -q "no compiled locale 'de_DE.UTF-8'.*locale-gen" "$ERR" || fail "no warning about the locale"
    grep -qx 'de_DE.UTF-8 UTF-8' "$root/etc/locale.gen" || fail "locale.gen: $(grep -v '^#' "$root/etc/locale.gen")"
    expect_ok berth start sess
    wait_booted sess

    # A real PAM login session, run by the guest's systemd.
    local out rc
    out=$(berth shell sess -- date +%Z)
    [[ $out == CET || $out == CEST ]] || fail "date +%Z in Europe/Berlin: '$out'"
    [[ $(berth shell sess -- sh -c 'echo $LANG') == de_DE.UTF-8 ]] || fail "LANG"
    out=$(berth shell sess -- sh -c 'echo $XDG_SESSION_ID:$XDG_RUNTIME_DIR; loginctl list-sessions --no-legend')
    echo "$out"
    grep -Eq '^[0-9a-z]+:/run/user/0$' <<<"$out" || fail "no login session: $out"
    [[ $(sed -n 2,\$p <<<"$out" | grep -c root) -ge 1 ]] || fail "loginctl inside lists no session of root"
    rc=0
    berth shell sess -- sh -c 'exit 42' || rc=$?
    ((rc == 42)) || fail "exit status $rc, not 42"
    [[ $(TERM=xterm-256color COLORTERM=truecolor berth shell sess -- sh -c 'echo $TERM $COLORTERM') == "xterm-256color truecolor" ]] \
        || fail "TERM/COLORTERM not passed"
    [[ $(echo piped-in | berth shell sess -- cat) == piped-in ]] || fail "stdin not piped"
    # The command's arguments reach it as given: systemd expands '$' in a service's command
    # line, so berth passes each one on escaped.
    out=$(berth shell sess -- /bin/echo '$HOME' '${HOME}' '$$' 'a$b')
    [[ $out == '$HOME ${HOME} $$ a$b' ]] || fail "the arguments were changed on the way: '$out'"
    [[ $(berth shell sess -- sh -c 'echo $$') =~ ^[0-9]+$ ]] || fail "\$\$ did not reach the shell"
    # On a terminal: a pty of the machine, with the caller's window size and TERM.
    out=$(script -qec "stty rows 42 cols 123; TERM=xterm-256color berth shell sess -- sh -c 'tty; stty size; echo T=\$TERM'" /dev/null)
    echo "$out"
    grep -q '/dev/pts/' <<<"$out" || fail "no terminal"
    grep -q '42 123' <<<"$out" || fail "window size not passed"
    grep -q 'T=xterm-256color' <<<"$out" || fail "TERM on a terminal"
    # A berth shell that goes away hangs its session up, on pipes and on a terminal.
    shell_killed_hangs_up pipes
    shell_killed_hangs_up tty
    # Another user: a login of its own, in its home.
    expect_ok berth exec sess -- useradd -m -s /bin/bash alice
    out=$(berth shell --user alice sess -- sh -c 'id -un; echo $HOME; pwd; echo $SHELL')
    [[ $out == $'alice\n/home/alice\n/home/alice\n/bin/bash' ]] || fail "shell as alice: $out"
    rc=0
    berth shell --user nobody-here sess -- true 2>"$LOGDIR/nobody.err" || rc=$?
    cat "$LOGDIR/nobody.err"
    ((rc != 0)) || fail "a shell of an unknown user succeeded"
    expect_fail "invalid user name 'a b'" berth shell --user 'a b' sess -- true

    # The locale is compiled in the background with the machine's own locale-gen.
    local i
    for i in $(seq 120); do
        berth exec sess -- locale -a 2>/dev/null | grep -qx de_DE.utf8 && break
        sleep 2
    done
    berth exec sess -- locale -a | grep -qx de_DE.utf8 || fail "de_DE.UTF-8 was not generated"

    # /etc is the truth: a zone changed inside wins for the next session and across starts.
    berth shell sess -- ln -sf ../usr/share/zoneinfo/Asia/Tokyo /etc/localtime
    [[ $(berth shell sess -- date +%Z) == JST ]] || fail "zone changed inside not seen"
    expect_ok berth restart sess
    wait_booted sess
    [[ $(berth shell sess -- date +%Z) == JST ]] || fail "berth overwrote the guest's zone at start"

    # A package whose postinst enables and starts a service: it runs, as on a real host.
    berth exec sess -- sh -ec '
        mkdir -p /tmp/pkg/DEBIAN /tmp/pkg/lib/systemd/system
        printf "Package: berth-hello\nVersion: 1.0\nArchitecture: all\nMaintainer: berth tests <root@localhost>\nDescription: a service started on install\n" >/tmp/pkg/DEBIAN/control
        printf "[Unit]\nDescription=berth hello\n[Service]\nExecStart=/bin/sleep infinity\n[Install]\nWantedBy=multi-user.target\n" >/tmp/pkg/lib/systemd/system/berth-hello.service
        printf "#!/bin/sh\nset -e\nsystemctl enable --now berth-hello.service\n" >/tmp/pkg/DEBIAN/postinst
        chmod 755 /tmp/pkg/DEBIAN/postinst
        dpkg-deb --build /tmp/pkg /tmp/berth-hello.deb >/dev/null
        dpkg -i /tmp/berth-hello.deb' || fail "dpkg -i failed"
    [[ $(berth shell sess -- systemctl is-active berth-hello.service) == active ]] || fail "the package's service is not active"

    # Bad input: shells need a running boot machine.
    expect_ok berth create sessapp --image deb -- sleep infinity
    expect_ok berth start sessapp
    expect_fail "runs an app, not an init system.*berth exec sessapp" berth shell sessapp
    expect_fail "no machine named 'nosuch'" berth shell nosuch
    expect_ok berth rm --force sessapp sess
}

test_81_timezone_locale_follow_the_host_and_exec_gets_a_login_environment() {
    [[ -d /var/lib/machines/deb ]] || expect_ok berth import-tar "$GUEST_TAR" deb
    # Bad zones and locales: refused before anything is made.
    expect_fail "unknown timezone 'Mars/Olympus'.*image 'deb' has no /usr/share/zoneinfo/Mars/Olympus" \
        berth create badtz --image deb --timezone Mars/Olympus -- true
    expect_fail "invalid timezone '../../etc/passwd'" berth create badtz --image deb --timezone ../../etc/passwd -- true
    expect_fail "invalid locale 'de DE'" berth create badtz --image deb --locale 'de DE' -- true
    [[ ! -e /etc/berth/machines/badtz.machine && ! -e /var/lib/berth/machines/badtz ]] || fail "a refused create left something"

    # Default: follow the host, refreshed at each start.
    local saved_tz saved_locale
    saved_tz=$(readlink /etc/localtime)
    saved_locale=$(cat /etc/default/locale 2>/dev/null || true)
    ln -sf /usr/share/zoneinfo/America/New_York /etc/localtime
    echo 'LANG=C.UTF-8' >/etc/default/locale
    local root=/var/lib/berth/machines/tzapp rc=0
    expect_ok berth create tzapp --image deb -- sleep infinity
    grep -qx 'Timezone=host' /etc/berth/machines/tzapp.machine
    [[ $(readlink "$root/etc/localtime") == ../usr/share/zoneinfo/America/New_York ]] || fail "host zone at create"
    ln -sf /usr/share/zoneinfo/Asia/Kolkata /etc/localtime
    expect_ok berth start tzapp
    [[ $(readlink "$root/etc/localtime") == ../usr/share/zoneinfo/Asia/Kolkata ]] || fail "host zone not refreshed at start"
    [[ $(berth exec tzapp -- date +%Z) == IST ]] || fail "date in the machine: $(berth exec tzapp -- date +%Z)"
    grep -qx 'LANG=C.UTF-8' "$root/etc/default/locale" || fail "host locale"

    # berth set: written at once, kept in the definition; a bad value changes nothing.
    expect_ok berth set tzapp Timezone=Europe/Berlin Locale=fr_FR.UTF-8
    [[ $(readlink "$root/etc/localtime") == ../usr/share/zoneinfo/Europe/Berlin ]] || fail "set Timezone"
    grep -qx 'Timezone=Europe/Berlin' /etc/berth/machines/tzapp.machine
    grep -qx 'LANG=fr_FR.UTF-8' "$root/etc/default/locale" || fail "set Locale"
    expect_fail "unknown timezone 'Mars/X'" berth set tzapp Timezone=Mars/X
    expect_fail "invalid value|CPUWeight" berth set tzapp Timezone=Asia/Tokyo CPUWeight=banana
    grep -qx 'Timezone=Europe/Berlin' /etc/berth/machines/tzapp.machine || fail "a refused set changed the definition"
    [[ $(readlink "$root/etc/localtime") == ../usr/share/zoneinfo/Europe/Berlin ]] || fail "a refused set changed the zone"
    # A fixed zone is not refreshed from the host at start.
    expect_ok berth restart tzapp
    [[ $(readlink "$root/etc/localtime") == ../usr/share/zoneinfo/Europe/Berlin ]] || fail "fixed zone overwritten at start"

    # exec: a login environment from the guest's own files, TERM and COLORTERM from the caller.
    local out
    out=$(TERM=xterm-256color COLORTERM=truecolor berth exec tzapp -- sh -c 'echo $HOME:$LANG:$SHELL:$USER:$LOGNAME:$TERM:$COLORTERM')
    [[ $out == /root:fr_FR.UTF-8:/bin/bash:root:root:xterm-256color:truecolor ]] || fail "exec environment: $out"
    [[ $(berth exec tzapp -- sh -c 'echo $PATH') == /usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin ]] \
        || fail "root's PATH: $(berth exec tzapp -- sh -c 'echo $PATH')"
    berth exec tzapp -- useradd -m bob
    out=$(berth exec --user bob tzapp -- sh -c 'echo $HOME:$USER:$PATH')
    [[ $out == /home/bob:bob:/usr/local/bin:/usr/bin:/bin:/usr/local/games:/usr/games ]] || fail "bob's environment: $out"
    echo 'EDITOR=nano' >>"$root/etc/environment"
    [[ $(berth exec tzapp -- sh -c 'echo $EDITOR') == nano ]] || fail "/etc/environment not applied"
    # Nothing else of the caller's environment passes in.
    [[ -z $(LD_LIBRARY_PATH=/x FOO=bar berth exec tzapp -- sh -c 'echo $LD_LIBRARY_PATH$FOO') ]] || fail "caller's environment leaked in"
    expect_ok berth rm --force tzapp
    # run takes the same settings.
    [[ $(berth run --rm --image deb --timezone Asia/Tokyo --locale C.UTF-8 -- sh -c 'date +%Z; echo $LANG') == $'JST\nC.UTF-8' ]] \
        || fail "run --timezone/--locale"

    # A running machine on its own volume can't be written from outside: a clear refusal.
    expect_ok berth create tzvol --image deb --storage volume --disk-size 256M -- sleep infinity
    expect_ok berth start tzvol
    expect_fail "runs on a volume of its own.*stop it first" berth set tzvol Timezone=Asia/Tokyo
    expect_ok berth stop tzvol
    expect_ok berth set tzvol Timezone=Asia/Tokyo
    expect_ok berth start tzvol
    [[ $(berth exec tzvol -- date +%Z) == JST ]] || fail "zone of a stopped volume machine"
    expect_ok berth rm --force tzvol
    ln -sf "$saved_tz" /etc/localtime
    if [[ -n $saved_locale ]]; then echo "$saved_locale" >/etc/default/locale; else rm -f /etc/default/locale; fi
    ((rc == 0))
}
