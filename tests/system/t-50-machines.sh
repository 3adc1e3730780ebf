# shellcheck shell=bash
# Machine definitions: create, list, rm.

machine_files() {
    find /etc/berth/machines /var/lib/berth/machines -mindepth 1 -maxdepth 1 2>/dev/null | sort
}

test_50_create_list_remove_machines() {
    expect_ok berth import-tar "$FIXTURES/small.tar" base
    expect_ok berth create web --image base --boot
    # The VM's /var/lib is ext4: no snapshot or reflink, and berth says so.
    grep -q "Created machine 'web' from image 'base' (boot mode): root /var/lib/berth/machines/web (copy), UIDs 524288-589823, hostname web" "$OUT"
    grep -qx 'Storage=copy' /etc/berth/machines/web.machine
    expect_ok berth create job --image base --hostname worker --bind /var/tmp:/data:ro -- /bin/sh -c 'exit 7'
    grep -q "UIDs 589824-655359, hostname worker" "$OUT"

    # The definition is an admin-readable file; identity is written into the guest's /etc.
    local def=/etc/berth/machines/web.machine id
    grep -qx 'Mode=boot' "$def"
    grep -qx 'UIDBase=524288' "$def"
    id=$(sed -n 's/^MachineID=//p' "$def")
    [[ $id =~ ^[0-9a-f]{32}$ ]] || fail "bad machine-id '$id'"
    [[ $(cat /var/lib/berth/machines/web/etc/hostname) == web ]]
    [[ $(cat /var/lib/berth/machines/web/etc/machine-id) == "$id" ]]
    [[ $(cat /var/lib/berth/machines/web/etc/motd) == "berth fixture" ]]
    [[ $(sed -n 's/^Command=//p' /etc/berth/machines/job.machine | paste -sd'|') == "/bin/sh|-c|exit 7" ]]
    grep -qx 'Bind=/var/tmp:/data:ro' /etc/berth/machines/job.machine

    expect_ok berth list
    grep -Eq '^web +stopped +- +- +- +base +boot +web +524288-589823 ' "$OUT"
    grep -Eq '^job +stopped +- +- +- +base +app +worker +589824-655359 ' "$OUT"
    expect_ok berth list --json
    jq -e '.[] | select(.name == "job") | .command == ["/bin/sh", "-c", "exit 7"]' "$OUT" >/dev/null
    # Machine roots are not images.
    expect_ok berth images
    ! grep -q '^web ' "$OUT"

    expect_ok as_tester berth list
    grep -q '^web ' "$OUT"
    expect_fail "not authorized to create machines" as_tester berth create other --image base --boot
    expect_fail "not authorized to remove machines" as_tester berth rm web
    [[ -f $def ]]

    expect_ok berth rm web job
    expect_ok berth list
    grep -q "No machines" "$OUT"
    [[ -z $(machine_files) ]] || fail "left behind: $(machine_files)"
    expect_ok berth rmi base
}

test_51_bad_create_input_leaves_nothing() {
    expect_ok berth import-tar "$FIXTURES/small.tar" base
    local name
    for name in "" ".." "a/b" ".hidden" "has space" "$(printf 'a%.0s' {1..65})"; do
        expect_fail "machine name" berth create "$name" --image base --boot
    done
    # A leading '-' is an option to the CLI; the D-Bus API refuses it too.
    expect_fail "machine name '-x' must not start with '-'" \
        busctl call org.berth.Berth1 /org/berth/Berth1 org.berth.Berth1.Manager CreateMachine "ssbassasasst(ss)(ssas)(sbas)" -- -x base true 0 "" 0 0 "" 0 "" "" "" "" 0 "" true 0
    expect_fail "no image named 'nope'" berth create m --image nope --boot
    expect_fail "cannot be used with" berth create m --image base --boot -- /bin/true
    expect_fail "no command for machine 'm'" berth create m --image base
    expect_fail "host name 'bad host'" berth create m --image base --hostname 'bad host' --boot
    expect_fail "bind 'data:/data' is not SRC:DST" berth create m --image base --bind data:/data --boot
    expect_fail "bind source /nonexistent does not exist" berth create m --image base --bind /nonexistent:/data --boot
    expect_fail "bind destination / is the machine's root" berth create m --image base --bind /srv:/ --boot
    expect_fail "bind destination /sys/fs/cgroup is in /proc or /sys" berth create m --image base --bind /srv:/sys/fs/cgroup --boot
    expect_fail "bind destination /dev is the machine's private /dev" berth run --rm --image base --bind /srv:/dev -- true
    [[ -z $(machine_files) ]] || fail "left behind: $(machine_files)"
    expect_ok berth create m --image base --boot
    expect_fail "machine 'm' already exists" berth create m --image base --boot
    expect_fail "no machine named 'zz'" berth rm zz
    expect_ok berth rm m
    [[ -z $(machine_files) ]] || fail "left behind: $(machine_files)"
    expect_ok berth rmi base
}
