# shellcheck shell=bash
# Image versions side by side, lineage, outdated machines, rebase and clone.

# make_version NAME VERSION: a tiny tree whose /etc/release says VERSION, imported as NAME@VERSION.
make_version() {
    local d=/var/tmp/lineage-$1-$2
    rm -rf "$d"
    mkdir -p "$d/etc"
    echo "$2" >"$d/etc/release"
    expect_ok berth import-fs "$d" "$1" --version "$2"
}

test_55_image_versions_outdated_rebase_clone() {
    local v id base
    for v in 1.0 1.10 1.9; do
        make_version lin "$v"
    done
    [[ -d /var/lib/machines/lin.v/lin_1.10 && -f /var/lib/berth/images/lin.v/lin_1.10.json ]] \
        || fail "versions are not in systemd's NAME.v/NAME_VERSION layout"
    expect_ok berth images
    [[ $(awk '$1 == "lin" {print $2}' "$OUT" | paste -sd' ') == "1.10 1.9 1.0" ]] \
        || fail "versions not ordered 1.10 > 1.9 > 1.0"
    expect_ok berth images --json
    jq -e '[.[] | select(.name == "lin") | .version] == ["1.10", "1.9", "1.0"]' "$OUT" >/dev/null
    expect_fail "image 'lin@1.9' already exists" berth import-fs /var/tmp/lineage-lin-1.9 lin --version 1.9
    expect_fail "bad version|version '_x'" berth import-fs /var/tmp/lineage-lin-1.9 lin --version _x
    expect_fail "has versions" berth import-fs /var/tmp/lineage-lin-1.9 lin

    # NAME means the newest; NAME@VERSION a given one. Each machine records what it came from.
    expect_ok berth create old --image lin@1.9 -- /bin/true
    grep -q "from image 'lin@1.9'" "$OUT"
    grep -qx 'ImageVersion=1.9' /etc/berth/machines/old.machine
    expect_ok berth create new --image lin -- /bin/true
    grep -qx 'ImageVersion=1.10' /etc/berth/machines/new.machine
    [[ $(cat /var/lib/berth/machines/new/etc/release) == 1.10 ]]
    expect_fail "has no version '3.0'" berth create bad --image lin@3.0 -- /bin/true
    [[ ! -e /etc/berth/machines/bad.machine ]] || fail "a failed create left a definition"

    expect_ok berth list --outdated
    grep -Eq '^old +lin@1\.9 +lin@1\.10 ' "$OUT" || fail "old is not listed as outdated"
    ! grep -q '^new ' "$OUT" || fail "new is listed as outdated"

    # Rebase: a fresh root from 1.10; definition, machine-id and UID range kept.
    id=$(sed -n 's/^MachineID=//p' /etc/berth/machines/old.machine)
    base=$(sed -n 's/^UIDBase=//p' /etc/berth/machines/old.machine)
    echo changed >/var/lib/berth/machines/old/etc/local-change
    expect_fail "not authorized to rebase machines" as_tester berth rebase old
    expect_ok berth rebase old
    grep -q "Rebased machine 'old' onto image 'lin@1.10' (copy)" "$OUT"
    [[ $(cat /var/lib/berth/machines/old/etc/release) == 1.10 ]] || fail "root is not 1.10's"
    [[ ! -e /var/lib/berth/machines/old/etc/local-change ]] || fail "the old root's files stayed"
    [[ $(cat /var/lib/berth/machines/old/etc/machine-id) == "$id" ]] || fail "machine-id changed"
    [[ $(cat /var/lib/berth/machines/old/etc/hostname) == old ]]
    grep -qx "MachineID=$id" /etc/berth/machines/old.machine
    grep -qx "UIDBase=$base" /etc/berth/machines/old.machine
    grep -qx 'ImageVersion=1.10' /etc/berth/machines/old.machine
    expect_ok berth list --outdated
    ! grep -q '^old ' "$OUT" || fail "old is still outdated after the rebase"
    expect_fail "already made from lin@1.10" berth rebase old
    expect_fail "has no version '7'" berth rebase old --to 7
    expect_ok berth rebase old --to 1.0
    [[ $(cat /var/lib/berth/machines/old/etc/release) == 1.0 ]]
    [[ -z $(find /var/lib/berth/machines -maxdepth 1 -name '.#*' ! -name '.#berth-spare-*') ]] || fail "rebase left staging"

    # Clone: a new machine with its own identity; the copy method is named.
    expect_ok berth clone old copy
    grep -q "Cloned machine 'old' as 'copy' (copy)" "$OUT"
    [[ $(cat /var/lib/berth/machines/copy/etc/release) == 1.0 ]]
    [[ $(cat /var/lib/berth/machines/copy/etc/hostname) == copy ]]
    [[ $(sed -n 's/^MachineID=//p' /etc/berth/machines/copy.machine) != "$id" ]] || fail "clone kept the machine-id"
    [[ $(sed -n 's/^UIDBase=//p' /etc/berth/machines/copy.machine) != "$base" ]] || fail "clone kept the UID range"
    grep -qx 'ImageVersion=1.0' /etc/berth/machines/copy.machine
    expect_fail "machine 'copy' already exists" berth clone old copy
    expect_fail "no machine named 'ghost'" berth clone ghost other

    # Removing versions.
    expect_fail "has versions \(1\.10, 1\.9, 1\.0\)" berth rmi lin
    expect_ok berth rmi lin@1.0
    expect_ok berth images
    [[ $(awk '$1 == "lin" {print $2}' "$OUT" | paste -sd' ') == "1.10 1.9" ]]
    expect_ok berth rmi --all-versions lin
    [[ ! -e /var/lib/machines/lin.v && ! -e /var/lib/berth/images/lin.v ]] || fail "lin.v left behind"
    expect_ok berth rm old new copy
}
