# shellcheck shell=bash
# berth commit: a stopped machine's root stored as a new image, with its lineage.

# same_as_base IMAGE_DIR BASE_DIR FILE: the image has the base's FILE, or neither has one.
same_as_base() {
    if [[ -e $2/$3 || -L $2/$3 ]]; then
        cmp -s "$1/$3" "$2/$3" || fail "/$3 is not the base's"
    else
        [[ ! -e $1/$3 && ! -L $1/$3 ]] || fail "/$3 travelled into the image"
    fi
}

test_65_commit_stores_a_stopped_machine_as_an_image() {
    [[ -d /var/lib/machines/deb ]] || expect_ok berth import-tar "$GUEST_TAR" deb
    local id img=/var/lib/machines/golden.v/golden_1.0 f digest
    # A booted machine changes its root, and its journal becomes persistent.
    expect_ok berth create cm --image deb --boot
    expect_ok berth start --wait cm
    expect_ok berth exec cm -- sh -c 'echo served >/srv/site && mkdir -p /var/log/journal && journalctl --flush'
    id=$(cat /var/lib/berth/machines/cm/etc/machine-id)
    expect_fail "machine 'cm' is running; stop it first \('berth stop cm'\)" berth commit cm golden --version 1.0
    [[ ! -e /var/lib/machines/golden.v ]] || fail "a refused commit stored something"
    expect_ok berth stop cm
    [[ -d /var/lib/berth/machines/cm/var/log/journal/$id ]] || fail "the machine's journal is not on disk"

    expect_fail "not authorized to store machines as images" as_tester berth commit cm golden --version 1.0
    expect_ok berth commit cm golden --version 1.0
    grep -q "Committed machine 'cm' as image 'golden@1.0': .* in a btrfs snapshot\.$" "$OUT" \
        || fail "commit did not say it stored a snapshot"
    btrfs subvolume show "$img" | grep -Eq 'Parent UUID:[[:space:]]+[0-9a-f-]{36}' \
        || fail "not a snapshot: $(btrfs subvolume show "$img")"
    [[ $(cat "$img/srv/site") == served ]] || fail "the machine's change is not in the image"
    # The machine's own files stay with it: the image has the base's, or none.
    for f in etc/hostname etc/machine-id var/lib/systemd/random-seed var/lib/systemd/credential.secret; do
        same_as_base "$img" /var/lib/machines/deb "$f"
    done
    [[ ! -e $img/var/log/journal/$id ]] || fail "the machine's journal travelled into the image"
    # Lineage: the base as the machine was made from it.
    digest=$(jq -r .digest /var/lib/berth/images/deb.json)
    jq -e --arg d "$digest" '.origin == "machine:cm" and .version == "1.0" and .base.name == "deb" and .base.digest == $d' \
        /var/lib/berth/images/golden.v/golden_1.0.json >/dev/null || fail "record: $(cat /var/lib/berth/images/golden.v/golden_1.0.json)"
    expect_ok berth images --tree
    grep -q "└─ golden@1.0" "$OUT" || fail "the lineage tree does not show golden under deb"
    # The machine itself is untouched and still starts.
    [[ $(cat /var/lib/berth/machines/cm/etc/hostname) == cm && $(cat /var/lib/berth/machines/cm/etc/machine-id) == "$id" ]] \
        || fail "commit changed the machine's identity"
    # A machine made from the new image has the change and an identity of its own.
    expect_ok berth create cm2 --image golden --boot
    [[ $(cat /var/lib/berth/machines/cm2/srv/site) == served ]]
    [[ $(cat /var/lib/berth/machines/cm2/etc/hostname) == cm2 ]]
    [[ $(cat /var/lib/berth/machines/cm2/etc/machine-id) != "$id" ]] || fail "the new machine has the old machine-id"
    expect_ok berth start --wait cm2
    [[ $(berth exec cm2 -- cat /srv/site) == served ]]
    expect_ok berth stop cm2

    # Bad input: each named, nothing left.
    expect_fail "image 'golden@1.0' already exists" berth commit cm golden --version 1.0
    expect_fail "has versions" berth commit cm golden
    expect_fail "no machine named 'ghost'" berth commit ghost g2
    expect_fail "version '_x'|bad version" berth commit cm g2 --version _x
    expect_fail "image name" berth commit cm 'bad/name'
    [[ ! -e /var/lib/machines/g2 && ! -e /var/lib/machines/g2.v ]] || fail "a refused commit stored g2"
    assert_no_staging

    # An app machine's command and settings become the image's defaults.
    expect_ok berth create capp --image deb -u nobody -w /tmp -e GREETING=hi -- sh -c 'echo "$GREETING from $(id -un) in $PWD"'
    expect_ok berth commit capp appimg
    expect_ok berth run --rm --image appimg
    [[ $(cat "$OUT") == "hi from nobody in /tmp" ]] || fail "the committed defaults did not apply: $(cat "$OUT")"

    # A volume machine is read through a read-only mount of its volume, which goes away.
    expect_ok berth import-tar "$FIXTURES/small.tar" tiny
    expect_ok berth create cvol --image tiny --storage volume --disk-size 64M -- /bin/true
    mkdir -p /mnt/cvol
    mount -o loop /var/lib/berth/volumes/cvol.ext4 /mnt/cvol
    echo on-the-volume >/mnt/cvol/etc/data
    umount /mnt/cvol
    expect_ok berth commit cvol volimg
    grep -q "in a directory\|in a btrfs subvolume" "$OUT"
    [[ $(cat /var/lib/machines/volimg/etc/data) == on-the-volume ]] || fail "the volume's files are not in the image"
    [[ $(cat /var/lib/machines/volimg/etc/motd) == "berth fixture" ]]
    [[ ! -e /var/lib/machines/volimg/etc/hostname && ! -e /var/lib/machines/volimg/etc/machine-id ]] \
        || fail "the volume machine's identity travelled"
    ! findmnt -rn -o TARGET | grep -q 'berth-commit' || fail "the volume stayed mounted: $(findmnt -rn -o TARGET | grep berth)"
    ! losetup -a | grep -q cvol.ext4 || fail "loop device left: $(losetup -a)"

    # A mount a crash left at a staging name is not deleted through at berthd's next start.
    local stale='/var/lib/berth/machines/.#berth-commit-stale-1'
    mkdir -p "$stale"
    mount -t tmpfs stale "$stale"
    echo keep >"$stale/machine-file"
    systemctl restart berthd
    expect_ok berth list
    [[ $(cat "$stale/machine-file") == keep ]] || fail "berthd deleted files below a mount point"
    journalctl -u berthd --since -1min | grep -q "is a mount point; not removing it" \
        || fail "berthd did not warn about the stale mount"
    umount "$stale"
    rmdir "$stale"

    expect_ok berth rm cm cm2 capp cvol
    expect_ok berth rmi --all-versions golden
    expect_ok berth rmi appimg volimg tiny
}
