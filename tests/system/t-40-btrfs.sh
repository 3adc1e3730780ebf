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
