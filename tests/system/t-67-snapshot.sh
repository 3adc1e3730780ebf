# shellcheck shell=bash
# berth snapshot: a machine's root kept as it was, and put back.

test_67_snapshots_are_taken_and_restored() {
    [[ -d /var/lib/machines/deb ]] || expect_ok berth import-tar "$GUEST_TAR" deb
    local snaps=/var/lib/berth/machines/.snapshots id
    expect_ok berth create sn1 --image deb -- sleep infinity
    id=$(sed -n 's/^MachineID=//p' /etc/berth/machines/sn1.machine)
    expect_ok berth start sn1
    expect_ok berth exec sn1 -- sh -c 'echo v1 > /root/marker'

    # A running machine on btrfs: an atomic snapshot of its subvolume.
    expect_ok berth snapshot create sn1 before-upgrade
    grep -q "Took snapshot 'before-upgrade' of machine 'sn1' (btrfs snapshot)" "$OUT"
    btrfs subvolume show "$snaps/sn1/before-upgrade" >/dev/null || fail "the snapshot is not a subvolume"
    [[ $(cat "$snaps/sn1/before-upgrade/root/marker") == v1 ]] || fail "the snapshot lacks the marker"
    expect_ok berth exec sn1 -- sh -c 'echo v2 > /root/marker; touch /root/new-file'
    expect_ok berth snapshot create sn1
    grep -q "Took snapshot 'snap0'" "$OUT"
    expect_ok berth snapshot list sn1
    grep -Eq '^before-upgrade +[0-9-]+ [0-9:]+ UTC +deb +btrfs snapshot$' "$OUT" || fail "list row: $(cat "$OUT")"
    grep -q '^snap0 ' "$OUT" || fail "snap0 not listed"
    expect_ok berth snapshot list sn1 --json
    grep -q '"snapshot": "before-upgrade"' "$OUT"
    expect_ok as_tester berth snapshot list sn1

    # Bad input: each named, nothing half-made.
    expect_fail "already has a snapshot named 'snap0'" berth snapshot create sn1 snap0
    expect_fail "snapshot name 'a/b' contains '/'" berth snapshot create sn1 a/b
    expect_fail "no machine named 'ghost'" berth snapshot create ghost
    expect_fail "machine 'sn1' is running; stop it first \('berth stop sn1'\), then restore it" \
        berth snapshot restore sn1 before-upgrade
    expect_fail "has no snapshot named 'nope'" berth snapshot rm sn1 nope
    expect_fail "not authorized to take or remove snapshots of machines" as_tester berth snapshot create sn1 mine
    expect_fail "not authorized to take or remove snapshots of machines" as_tester berth snapshot rm sn1 snap0
    expect_fail "not authorized to restore machines from snapshots" as_tester berth snapshot restore sn1 snap0
    [[ -z $(find "$snaps/sn1" -maxdepth 1 -name '.#*') && ! -e "$snaps/sn1/mine" && ! -e "$snaps/sn1/a" ]] \
        || fail "a refused snapshot left something: $(ls -a "$snaps/sn1")"

    # Restore: the snapshot's files, the machine's own identity; the snapshot stays.
    expect_ok berth stop sn1
    expect_ok berth snapshot restore sn1 before-upgrade
    grep -q "Restored machine 'sn1' from snapshot 'before-upgrade' (btrfs snapshot, image 'deb'); its machine-id $id" "$OUT"
    [[ $(cat /var/lib/berth/machines/sn1/root/marker) == v1 ]] || fail "the marker is not v1 after the restore"
    [[ ! -e /var/lib/berth/machines/sn1/root/new-file ]] || fail "a file made after the snapshot survived the restore"
    [[ $(cat /var/lib/berth/machines/sn1/etc/machine-id) == "$id" ]] || fail "machine-id changed"
    [[ -d "$snaps/sn1/before-upgrade" ]] || fail "the snapshot went with the restore"
    expect_ok berth start sn1
    expect_ok berth exec sn1 -- cat /root/marker
    grep -qx v1 "$OUT"
    expect_ok berth stop sn1

    # Snapshots follow a rename, go with 'snapshot rm' and with the machine.
    expect_ok berth rename sn1 sn2
    expect_ok berth snapshot list sn2
    grep -q '^before-upgrade ' "$OUT" && grep -q '^snap0 ' "$OUT" || fail "snapshots did not follow the rename"
    [[ ! -e "$snaps/sn1" ]] || fail "$snaps/sn1 stayed after the rename"
    expect_ok berth snapshot rm sn2 snap0
    [[ ! -e "$snaps/sn2/snap0" && ! -e "$snaps/sn2/.snap0.info" ]] || fail "snap0 is still there"
    expect_ok berth rm sn2
    [[ ! -e "$snaps/sn2" ]] || fail "the snapshots outlived their machine"

    # A machine on a volume of its own: a copy of its volume file, restored in its place.
    local vol=/var/lib/berth/volumes/snv.ext4 inode
    expect_ok berth import-tar "$FIXTURES/small.tar" sn-tiny
    expect_ok berth create snv --image sn-tiny --storage volume --disk-size 64M -- /bin/true
    # (copy-to and copy-from of a stopped machine mount its volume for themselves.)
    echo one >/var/tmp/sn-marker
    expect_ok berth copy-to snv /var/tmp/sn-marker /marker
    expect_ok berth snapshot create snv first
    grep -q "Took snapshot 'first' of machine 'snv' (copy of the volume)" "$OUT"
    echo two >/var/tmp/sn-marker
    expect_ok berth copy-to snv /var/tmp/sn-marker /marker
    [[ -f /var/lib/berth/volumes/.snapshots/snv/first.ext4 ]] || fail "no copy of the volume"
    inode=$(stat -c %i "$vol")
    expect_ok berth snapshot restore snv first
    grep -q "Restored machine 'snv' from snapshot 'first' (copy of the volume" "$OUT"
    [[ $(stat -c %i "$vol") != "$inode" ]] || fail "the volume was not replaced"
    e2fsck -fn "$vol" >/dev/null 2>&1 || fail "the restored volume is not a clean ext4"
    rm -f /var/tmp/sn-marker
    expect_ok berth copy-from snv /marker /var/tmp/sn-marker
    [[ $(cat /var/tmp/sn-marker) == one ]] || fail "the restored volume has marker '$(cat /var/tmp/sn-marker)'"
    rm -f /var/tmp/sn-marker
    [[ -z $(losetup -j "$vol") ]] || fail "a loop device of the volume is left: $(losetup -j "$vol")"
    expect_ok berth rename snv snv2
    [[ -f /var/lib/berth/volumes/.snapshots/snv2/first.ext4 ]] || fail "the volume's snapshot did not follow the rename"
    expect_ok berth rm snv2
    [[ ! -e /var/lib/berth/volumes/.snapshots/snv2 ]] || fail "the volume's snapshots outlived their machine"
    expect_ok berth rmi sn-tiny
}
