# shellcheck shell=bash
# --storage volume: a machine on an ext4 filesystem of its own, mounted only inside it.

test_45_volume_is_its_own_filesystem() {
    [[ -d /var/lib/machines/deb ]] || expect_ok berth import-tar "$GUEST_TAR" deb
    expect_fail "--storage volume needs --disk-size" berth create v0 --image deb --storage volume -- true
    expect_fail "--disk-size needs --storage volume" berth create v0 --image deb --disk-size 1G -- true
    expect_fail "too small; a volume needs at least 64M" berth create v0 --image deb --storage volume --disk-size 1M -- true
    expect_fail "invalid value 'lots'" berth create v0 --image deb --storage volume --disk-size lots -- true
    [[ ! -e /etc/berth/machines/v0.machine && ! -e /var/lib/berth/machines/v0 && ! -e /var/lib/berth/volumes/v0.ext4 ]] \
        || fail "a refused create left something"
    expect_ok berth create vol --image deb --storage volume --disk-size 1G -- sleep infinity
    grep -q "(volume)" "$OUT" || fail "create did not say volume"
    grep -qx 'Storage=volume' /etc/berth/machines/vol.machine
    grep -qx 'DiskSize=1073741824' /etc/berth/machines/vol.machine
    [[ $(stat -c %s /var/lib/berth/volumes/vol.ext4) == 1073741824 ]] || fail "volume size"
    [[ -z $(ls -A /var/lib/berth/machines/vol) ]] || fail "the host sees files in the volume's mount point"
    ! findmnt -rn -o TARGET | grep -q berth || fail "something of berth is mounted on the host"
    expect_ok berth start vol
    ! findmnt -rn -o TARGET | grep -q /var/lib/berth/machines/vol || fail "the volume is mounted on the host"
    [[ $(berth exec vol -- findmnt -n -o FSTYPE /) == ext4 ]] || fail "root is not the volume"
    berth exec vol -- findmnt -n -o SOURCE / | grep -q '^/dev/loop' || fail "root is not a loop device"
    # Direct IO (as nspawn --image): the machine's writes reach the disk in its own IO
    # cgroup, not through the host's page cache; and the device is autoclear.
    losetup -n -O BACK-FILE,DIO,AUTOCLEAR | grep -Eq '/var/lib/berth/volumes/vol.ext4 +1 +1' \
        || fail "loop device is not direct-io + autoclear: $(losetup -n -O BACK-FILE,DIO,AUTOCLEAR)"
    local size rc=0
    size=$(berth exec vol -- df -B1 --output=size / | tail -1)
    ((size <= 1073741824)) || fail "filesystem size $size"
    # It cannot write more than its size.
    berth exec vol -- dd if=/dev/zero of=/fill bs=1M count=1200 status=none 2>/dev/null || rc=$?
    ((rc != 0)) || fail "wrote 1200M into a 1G volume"
    (( $(berth exec vol -- stat -c %s /fill) < 1073741824 )) || fail "/fill is too big"
    (( $(stat -c %b /var/lib/berth/volumes/vol.ext4) * 512 <= 1073741824 )) || fail "the file grew past 1G"
    expect_ok berth status vol
    grep -q "Volume: 1.0G ext4 of its own" "$OUT"
    expect_ok berth stop vol
    ! losetup -a | grep -q vol.ext4 || fail "loop device left: $(losetup -a)"
    # Its data stays on the volume across starts.
    expect_ok berth start vol
    berth exec vol -- test -e /fill || fail "data lost across a restart"
    expect_ok berth rm --force vol
    [[ ! -e /var/lib/berth/volumes/vol.ext4 && ! -e /var/lib/berth/machines/vol ]] || fail "volume left after rm"
}

# berth doctor / status: what can't be enforced, and how to fix it; never changes the host.
test_46_doctor_explains_io_enforcement() {
    [[ -d /var/lib/machines/deb ]] || expect_ok berth import-tar "$GUEST_TAR" deb
    local disk old
    disk=$(lsblk -ndo NAME | head -1)
    old=$(sed 's/.*\[\(.*\)\].*/\1/' "/sys/block/$disk/queue/scheduler")
    echo "${old/bfq/none}" >"/sys/block/$disk/queue/scheduler" || true
    expect_ok berth create shared --image deb -- sleep infinity
    local rc=0
    OUT=$(mktemp)
    berth doctor >"$OUT" || rc=$?
    cat "$OUT"
    ((rc == 1)) || fail "berth doctor exited $rc with problems to report"
    grep -q "scheduler without io.cost: IOWeight and IODeviceWeight have no effect" "$OUT"
    grep -q "how: echo bfq > /sys/block/$disk/queue/scheduler" "$OUT"
    grep -q "shares its filesystem" "$OUT"
    [[ $(sed 's/.*\[\(.*\)\].*/\1/' "/sys/block/$disk/queue/scheduler") != bfq ]] || fail "doctor changed the scheduler"
    expect_ok berth status shared
    grep -q "IO warning: .*shares its filesystem" "$OUT"
    # With BFQ and a volume of its own, nothing is left to fix for that machine.
    modprobe bfq 2>/dev/null || true
    echo bfq >"/sys/block/$disk/queue/scheduler"
    expect_ok berth create own --image deb --storage volume --disk-size 256M -- sleep infinity
    expect_ok berth doctor own
    grep -q "uses the BFQ scheduler: IOWeight and IODeviceWeight are enforced" "$OUT"
    grep -q "has a filesystem of its own" "$OUT"
    echo "$old" >"/sys/block/$disk/queue/scheduler"
    expect_ok berth rm shared own
}
