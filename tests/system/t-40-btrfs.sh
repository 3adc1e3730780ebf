# shellcheck shell=bash
# On btrfs, an image is a subvolume (so later clones are instant snapshots).

test_40_images_on_btrfs_are_subvolumes() {
    command -v mkfs.btrfs >/dev/null || fail "btrfs-progs missing in the VM image"
    modprobe btrfs
    truncate -s 1G /var/tmp/pool.btrfs
    mkfs.btrfs -q /var/tmp/pool.btrfs
    mount -o loop /var/tmp/pool.btrfs /var/lib/machines
    trap 'umount /var/lib/machines' RETURN
    expect_ok berth import-tar "$FIXTURES/small.tar" sub
    grep -q "in a btrfs subvolume" "$OUT"
    btrfs subvolume show /var/lib/machines/sub >/dev/null
    expect_ok berth images
    grep -q '^sub ' "$OUT"
    # A failed import on btrfs leaves no subvolume behind either.
    expect_fail "not a readable tar archive" berth import-tar /etc/hostname broken
    [[ -z $(btrfs subvolume list /var/lib/machines | grep -v ' path sub$') ]] || fail "stray subvolume: $(btrfs subvolume list /var/lib/machines)"
    expect_ok berth rmi sub
    [[ -z $(btrfs subvolume list /var/lib/machines) ]] || fail "subvolume left after rmi"
}

# With images and machine roots on the same btrfs, a machine's root is a snapshot of its
# image, not a copy; elsewhere berth says it copied.
test_41_machine_roots_are_btrfs_snapshots() {
    modprobe btrfs
    truncate -s 1G /var/tmp/both.btrfs
    mkfs.btrfs -q /var/tmp/both.btrfs
    mkdir -p /mnt/both
    mount -o loop /var/tmp/both.btrfs /mnt/both
    btrfs -q subvolume create /mnt/both/images
    btrfs -q subvolume create /mnt/both/roots
    mkdir -p /var/lib/berth/machines
    mount --bind /mnt/both/images /var/lib/machines
    mount --bind /mnt/both/roots /var/lib/berth/machines
    trap 'umount /var/lib/berth/machines; umount /var/lib/machines; umount /mnt/both' RETURN
    expect_ok berth import-tar "$FIXTURES/small.tar" snapbase
    expect_ok berth create snap --image snapbase --boot
    grep -q "(btrfs snapshot)" "$OUT" || fail "create did not say it snapshotted"
    grep -qx 'Storage=btrfs snapshot' /etc/berth/machines/snap.machine
    btrfs subvolume show /var/lib/berth/machines/snap | grep -Eq 'Parent UUID:[[:space:]]+[0-9a-f-]{36}' \
        || fail "not a snapshot: $(btrfs subvolume show /var/lib/berth/machines/snap)"
    [[ $(cat /var/lib/berth/machines/snap/etc/hostname) == snap ]]
    [[ $(cat /var/lib/berth/machines/snap/etc/motd) == "berth fixture" ]]
    # The image is untouched by the machine's identity files.
    [[ ! -e /var/lib/machines/snapbase/etc/hostname ]] || fail "image changed"
    expect_ok berth status snap
    grep -q "(btrfs snapshot)" "$OUT"

    # The next machine of the image gets a snapshot made ahead, in the background (a spare).
    local spare=/var/lib/berth/machines/.#berth-spare-snapbase spare_uuid
    wait_spare() {
        for _ in $(seq 100); do [[ -d $spare ]] && return 0; sleep 0.1; done
        fail "no spare root of snapbase: $(ls -A /var/lib/berth/machines)"
    }
    uuid_of() { btrfs subvolume show "$1" | awk '$1 == "UUID:" {print $2}'; }
    wait_spare
    btrfs subvolume show "$spare" | grep -Eq "Parent UUID:[[:space:]]+$(uuid_of /var/lib/machines/snapbase)\$" \
        || fail "the spare is not a snapshot of the image: $(btrfs subvolume show "$spare")"
    spare_uuid=$(uuid_of "$spare")
    expect_ok berth create snap2 --image snapbase -- true
    [[ $(uuid_of /var/lib/berth/machines/snap2) == "$spare_uuid" ]] || fail "snap2's root is not the spare"
    [[ $(cat /var/lib/berth/machines/snap2/etc/hostname) == snap2 ]]
    [[ $(cat /var/lib/berth/machines/snap2/etc/machine-id) != $(cat /var/lib/berth/machines/snap/etc/machine-id) ]] \
        || fail "snap2 has snap's machine-id"
    # An image changed in place (not even committed by btrfs yet): its spare is out of date,
    # and the next machine sees the change.
    wait_spare
    echo changed >/var/lib/machines/snapbase/etc/motd
    expect_ok berth create snap3 --image snapbase -- true
    [[ $(cat /var/lib/berth/machines/snap3/etc/motd) == changed ]] || fail "snap3 was made from an out-of-date spare"
    [[ $(uuid_of /var/lib/berth/machines/snap3) != "$spare_uuid" ]] || fail "snap3 reused snap2's spare"
    expect_ok berth rm snap snap2 snap3
    # What is left under the roots is the spare; removing the image removes it too.
    [[ -z $(btrfs subvolume list /mnt/both | grep 'roots/' | grep -v 'roots/.#berth-spare-snapbase$') ]] \
        || fail "snapshot left: $(btrfs subvolume list /mnt/both)"
    wait_spare
    expect_ok berth rmi snapbase
    [[ -z $(btrfs subvolume list /mnt/both | grep 'roots/') ]] || fail "a snapshot outlived its image: $(btrfs subvolume list /mnt/both)"
}
