# shellcheck shell=bash
# Images: import-tar, import-fs, images, rmi, as the foundation issue's acceptance describes.

test_20_import_list_remove_a_debian_root() {
    expect_ok berth import-tar "$GUEST_TAR" deb
    grep -Eq "^Imported image 'deb': [0-9.]+M in a directory, sha256:[0-9a-f]{64}\.$" "$OUT"
    # berth images lists it with its size; machinectl sees the same pool.
    expect_ok berth images
    grep -Eq '^deb +- +[0-9.]+M ' "$OUT" || fail "berth images does not list deb with a size"
    expect_ok machinectl list-images --no-legend
    grep -Eq '^deb +directory' "$OUT" || fail "machinectl list-images does not list deb"
    # The digest is the file's sha256, the size the content imported.
    expect_ok berth images --json
    want="sha256:$(sha256sum "$GUEST_TAR" | cut -d' ' -f1)"
    jq -e --arg d "$want" '.[] | select(.name == "deb") | .digest == $d' "$OUT" >/dev/null
    jq -e '.[] | select(.name == "deb") | .size_bytes > 100000000' "$OUT" >/dev/null
    # The tree is the guest's, owners and setuid bits kept, no device nodes.
    [[ -x /var/lib/machines/deb/usr/lib/systemd/systemd ]]
    [[ $(stat -c '%U %a' /var/lib/machines/deb/usr/bin/su) == "root 4755" ]]
    [[ $(stat -c '%a' /var/lib/machines/deb) == 755 ]]
    [[ -z $(find /var/lib/machines/deb -xdev \( -type b -o -type c \) | head -1) ]]
    # Not a stacked filesystem: a plain directory on the pool's filesystem.
    [[ $(stat -c %d /var/lib/machines/deb) == $(stat -c %d /var/lib/machines) ]]
    ! grep -q ' /var/lib/machines/deb ' /proc/self/mountinfo

    expect_ok berth rmi deb
    grep -q "Removed image 'deb'" "$OUT"
    expect_ok berth images
    ! grep -q '^deb ' "$OUT" || fail "deb still listed"
    expect_ok machinectl list-images --no-legend
    ! grep -q '^deb ' "$OUT" || fail "machinectl still lists deb"
    assert_no_image deb
}

test_21_import_from_stdin_compressed() {
    tar -C "$FIXTURES/tree" -c . | zstd -q >/var/tmp/small.tar.zst
    expect_ok sh -c 'berth import-tar - small </var/tmp/small.tar.zst'
    grep -q "Imported image 'small'" "$OUT"
    expect_ok berth images --json
    jq -e '.[] | select(.name == "small") | .origin == "tar:-"' "$OUT" >/dev/null
    cmp /var/lib/machines/small/etc/motd "$FIXTURES/tree/etc/motd"
    expect_ok berth rmi small
}

test_22_import_fs_copies_a_directory() {
    expect_ok berth import-fs "$FIXTURES/tree" fromdir
    grep -q "Imported image 'fromdir'" "$OUT"
    cmp /var/lib/machines/fromdir/etc/motd "$FIXTURES/tree/etc/motd"
    [[ $(readlink /var/lib/machines/fromdir/etc/link) == motd ]]
    expect_ok berth images
    grep -Eq "^fromdir .* fs:$FIXTURES/tree$" "$OUT"
    expect_ok berth rmi fromdir
    assert_no_image fromdir

    # Holes stay holes: a sparse file copied from a directory or unpacked from an archive, and
    # a run of zeros in an archive (tar without -S stores it in full), take next to no space
    # in the image; zeros a directory's file has allocated are copied as they are.
    local d=/var/tmp/sparse-tree
    rm -rf "$d" && mkdir -p "$d/srv"
    truncate -s 64M "$d/srv/disk.img"
    printf data | dd of="$d/srv/disk.img" bs=1 seek=$((32 << 20)) conv=notrunc status=none
    dd if=/dev/zero of="$d/srv/zeros" bs=1M count=16 status=none
    tar -C "$d" -cf /var/tmp/sparse.tar .
    expect_ok berth import-fs "$d" sparsefs
    expect_ok berth import-tar /var/tmp/sparse.tar sparsetar
    local img
    for img in sparsefs sparsetar; do
        cmp "$d/srv/disk.img" "/var/lib/machines/$img/srv/disk.img" || fail "$img: disk.img differs"
        cmp "$d/srv/zeros" "/var/lib/machines/$img/srv/zeros" || fail "$img: zeros differs"
        (($(stat -c %b "/var/lib/machines/$img/srv/disk.img") * 512 < 1 << 20)) \
            || fail "$img: the 64M sparse file takes $(du -h "/var/lib/machines/$img/srv/disk.img")"
    done
    (($(stat -c %b /var/lib/machines/sparsetar/srv/zeros) * 512 < 1 << 20)) \
        || fail "16M of zeros in an archive take $(du -h /var/lib/machines/sparsetar/srv/zeros)"
    expect_ok berth rmi sparsefs sparsetar
    rm -rf "$d" /var/tmp/sparse.tar
}

test_23_unprivileged_user_may_list_but_not_change() {
    expect_ok berth import-tar "$FIXTURES/small.tar" keep
    cp "$FIXTURES/small.tar" /var/tmp/tester.tar
    chmod 644 /var/tmp/tester.tar
    expect_ok as_tester berth images
    grep -q '^keep ' "$OUT"
    expect_fail "not authorized to import images \(polkit action org.berth.berth1.import-image\)" as_tester berth import-tar /var/tmp/tester.tar nope
    [[ $(wc -l <"$ERR") == 1 ]] || fail "expected one line of error"
    assert_no_image nope
    expect_fail "not authorized to import images" as_tester berth import-fs "$FIXTURES/tree" nope
    assert_no_image nope
    expect_fail "not authorized to remove images" as_tester berth rmi keep
    [[ -d /var/lib/machines/keep ]]
    expect_ok berth rmi keep
}

test_24_hostile_tarball_writes_nothing_outside() {
    local before_shadow
    before_shadow=$(sha256sum /etc/shadow)
    rm -rf /tmp/berth-target && mkdir /tmp/berth-target
    expect_ok berth import-tar "$FIXTURES/evil.tar" evil
    # Nothing written outside the image.
    [[ -z $(ls -A /tmp/berth-target) ]] || fail "/tmp/berth-target was written: $(ls -A /tmp/berth-target)"
    [[ ! -e /tmp/berth-abs-escape && ! -e /tmp/berth-dotdot-escape ]] || fail "escape files exist"
    [[ ! -e /var/lib/berth-dotdot-escape && ! -e /var/lib/machines/berth-dotdot-escape ]]
    [[ $(sha256sum /etc/shadow) == "$before_shadow" ]]
    # What was refused is reported.
    grep -q "entries were not written into the image" "$ERR"
    grep -q "../../../../tmp/berth-dotdot-escape: path contains '..'" "$ERR"
    grep -q "/tmp/berth-abs-escape: absolute path" "$ERR"
    grep -q "link/file: path passes through the symlink 'link'" "$ERR"
    grep -q "shadow: hard link to '/etc/shadow' points outside the image" "$ERR"
    grep -q "dev/evil: device node" "$ERR"
    # The harmless rest is there; the symlink is kept as data (resolved inside the machine).
    [[ $(cat /var/lib/machines/evil/ok) == fine ]]
    [[ $(readlink /var/lib/machines/evil/link) == /tmp/berth-target ]]
    [[ ! -e /var/lib/machines/evil/shadow ]]
    expect_ok berth rmi evil
}
