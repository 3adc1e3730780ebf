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
    expect_ok berth rm snap
    [[ -z $(btrfs subvolume list /mnt/both | grep 'roots/') ]] || fail "snapshot left: $(btrfs subvolume list /mnt/both)"
    expect_ok berth rmi snapbase
}
