# shellcheck shell=bash
# Authorization: each kind of change has its own polkit action, refused to an unprivileged
# user (the VM's polkit has no rule for "tester"), while the read-only verbs serve everyone.

# refused ACTION CMD...: CMD, as tester, fails naming polkit action org.berth.berth1.ACTION.
refused() {
    local action=$1
    shift
    expect_fail "not authorized to .*\(polkit action org\.berth\.berth1\.$action\)" as_tester "$@"
}

test_97_each_change_needs_its_own_polkit_action() {
    [[ -d /var/lib/machines/deb ]] || expect_ok berth import-tar "$GUEST_TAR" deb
    expect_ok berth create authz --image deb -- sleep infinity
    expect_ok berth create authz-up --image deb -- sleep infinity
    expect_ok berth start authz-up
    local files=/var/tmp/authz
    mkdir -p "$files/build" "$files/out"
    printf 'FROM deb\nRUN true\n' >"$files/build/Containerfile"
    cp "$FIXTURES/small.tar" "$files/small.tar"
    chmod -R a+rX "$files"
    chmod a+w "$files/out"

    # Read-only verbs serve everyone.
    expect_ok as_tester berth images
    grep -q '^deb ' "$OUT" || fail "images"
    expect_ok as_tester berth list
    grep -q '^authz-up ' "$OUT" || fail "list"
    expect_ok as_tester berth status authz-up
    expect_ok as_tester berth ports
    expect_ok as_tester berth list --outdated

    # Every change is refused, each with its own action.
    refused import-image berth import-tar "$files/small.tar" authz-img
    refused import-image berth import-fs "$FIXTURES/tree" authz-img
    refused import-image berth import-oci "$files/small.tar" authz-img
    refused pull-image berth pull http://127.0.0.1:9/deb.tar.zst authz-img
    refused build-image berth build --name authz-img "$files/build"
    refused export-image berth export deb "$files/out"
    refused remove-image berth rmi deb
    refused create-machine berth create authz-new --image deb -- true
    refused create-machine berth clone authz authz-new
    refused run-machine berth run --rm --image deb -- true
    refused start-machine berth start authz
    refused stop-machine berth stop authz-up
    refused kill-machine berth kill authz-up
    refused restart-machine berth restart authz-up
    refused exec-machine berth exec authz-up -- true
    refused shell-machine berth shell authz-up -- true
    refused copy-to-machine berth copy-to authz-up "$files/small.tar" /tmp/
    refused set-properties berth set authz-up CPUWeight=50
    refused remove-machine berth rm authz
    refused rebase-machine berth rebase authz
    refused commit-machine berth commit authz authz-img
    refused rename-machine berth rename authz authz-new
    refused snapshot-machine berth snapshot create authz
    refused restore-machine berth snapshot restore authz snap0
    refused enable-machine berth enable authz
    refused enable-machine berth disable authz

    # None of it happened.
    assert_no_image authz-img
    [[ -d /var/lib/machines/deb ]] || fail "image deb removed"
    [[ ! -e /etc/berth/machines/authz-new.machine ]] || fail "authz-new created"
    [[ ! -e /var/lib/berth/machines/.snapshots/authz ]] || fail "a snapshot of authz was taken"
    [[ -z $(ls -A "$files/out") ]] || fail "export wrote $(ls "$files/out")"
    [[ $(machinectl show authz-up -p State --value) == running ]] || fail "authz-up stopped"
    [[ -z $(berth exec authz-up -- ls /tmp) ]] || fail "copy-to wrote into authz-up"
    ! machinectl show authz >/dev/null 2>&1 || fail "authz started"
    [[ $(systemctl is-enabled berth@authz.service 2>/dev/null || true) != enabled ]] || fail "enabled"

    # Every action berthd checks is declared in the installed policy, with a description.
    local id declared
    declared=$(busctl call org.freedesktop.PolicyKit1 /org/freedesktop/PolicyKit1/Authority \
        org.freedesktop.PolicyKit1.Authority EnumerateActions s "")
    for id in import-image pull-image build-image export-image remove-image create-machine \
        start-machine run-machine stop-machine kill-machine restart-machine exec-machine \
        shell-machine copy-to-machine copy-from-machine set-properties remove-machine rebase-machine \
        commit-machine rename-machine snapshot-machine restore-machine enable-machine; do
        grep -q "\"org.berth.berth1.$id\"" <<<"$declared" || fail "polkit doesn't know $id"
    done

    expect_ok berth rm --force authz authz-up
    rm -rf "$files"
}
