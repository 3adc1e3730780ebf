# shellcheck shell=bash
# Bad input: one clear line naming the problem, non-zero exit, nothing half-created.

test_30_bad_names_are_refused() {
    local name
    for name in "" ".." "a/b" "-x" ".hidden" "has space" "$(printf 'a%.0s' {1..65})" "a..b"; do
        # '--' so that a name like "-x" reaches berthd instead of being taken as an option.
        expect_fail "image name" berth import-tar "$FIXTURES/small.tar" -- "$name"
        [[ $(wc -l <"$ERR") == 1 ]] || fail "expected one line for '$name'"
    done
    assert_no_staging
    [[ -z $(ls -A /var/lib/berth/images 2>/dev/null) ]] || fail "records left: $(ls -A /var/lib/berth/images)"
}

test_31_bad_sources_are_refused() {
    expect_fail "cannot open /nonexistent.tar" berth import-tar /nonexistent.tar x
    expect_fail "is a directory; use 'berth import-fs" berth import-tar /etc x
    expect_fail "is not a directory" berth import-fs /etc/hostname x
    head -c 100000 /dev/urandom >/var/tmp/junk
    expect_fail "not a readable tar archive" berth import-tar /var/tmp/junk x
    # One printable line, whatever bytes the input had.
    ! LC_ALL=C grep -q '[^[:print:]]' "$ERR" || fail "unprintable bytes in the error"
    head -c 3000 "$FIXTURES/small.tar" >/var/tmp/cut.tar
    expect_fail "not a readable tar archive|truncated" berth import-tar /var/tmp/cut.tar x
    bzip2 -c "$FIXTURES/small.tar" >/var/tmp/small.tar.bz2 2>/dev/null || printf 'BZh91AY&SY' >/var/tmp/small.tar.bz2
    expect_fail "bzip2-compressed input is not supported" berth import-tar /var/tmp/small.tar.bz2 x
    expect_fail "the input is empty" berth import-tar - x </dev/null
    tar -cf /var/tmp/none.tar --files-from /dev/null
    expect_fail "the archive contains no entries" berth import-tar /var/tmp/none.tar x
    assert_no_image x
}

test_32_existing_and_unknown_names() {
    expect_ok berth import-tar "$FIXTURES/small.tar" twice
    expect_fail "image 'twice' already exists" berth import-tar "$FIXTURES/small.tar" twice
    assert_no_staging
    expect_ok berth rmi twice
    expect_fail "no image named 'twice'" berth rmi twice
    expect_fail "image name '../etc' contains '/'" berth rmi ../etc
    expect_fail "image name '..' must not start with '.'" berth rmi ..
    [[ -d /etc/systemd ]]
}

test_33_interrupted_import_leaves_nothing_visible() {
    # Kill berthd in the middle of a large import: no image appears, and the next berthd
    # (bus-activated by the next call) removes the staging directory.
    berth import-tar "$GUEST_TAR" cut >/dev/null 2>&1 &
    local client=$! i
    for i in $(seq 200); do
        [[ -n $(find /var/lib/machines -maxdepth 1 -name '.#berth-import-cut-*') ]] && break
        sleep 0.1
    done
    [[ -n $(find /var/lib/machines -maxdepth 1 -name '.#berth-import-cut-*') ]] || fail "import never started"
    sleep 2
    systemctl kill -s KILL berthd.service
    ! wait "$client" || fail "the client did not notice berthd dying"
    [[ ! -e /var/lib/machines/cut ]]
    expect_ok berth images
    ! grep -q '^cut ' "$OUT"
    assert_no_image cut
}

test_34_listing_answers_during_a_long_import() {
    berth import-tar "$GUEST_TAR" slow >/dev/null 2>&1 &
    local client=$!
    sleep 1
    # Another call is served while the import runs (methods run concurrently).
    expect_ok timeout 30 berth images
    wait "$client"
    expect_ok berth rmi slow
}
