# shellcheck shell=bash
# OCI import, export to a registry directory and pull from it, and builds from git.

test_56_oci_layout_with_whiteouts() {
    expect_ok berth import-oci "$FIXTURES/oci.tar" ociimg --version 1
    grep -q "Imported image 'ociimg@1'" "$OUT"
    local root=/var/lib/machines/ociimg.v/ociimg_1
    [[ $(cat "$root/etc/motd") == lower ]] || fail "lower layer's file missing"
    [[ ! -e $root/etc/secret ]] || fail "the whited-out file was imported"
    [[ -f $root/opt/new && ! -e $root/opt/old ]] || fail "the opaque directory kept the lower layer's file"
    [[ -z $(find "$root" -name '.wh.*') ]] || fail "whiteout files were written"
    expect_ok berth images --json
    jq -e '.[] | select(.name == "ociimg") | .origin | startswith("oci:")' "$OUT" >/dev/null
    jq -e '.entrypoint == ["/bin/echo"] and .cmd == ["hello from oci"] and .working_dir == "/opt"' \
        /var/lib/berth/images/ociimg.v/ociimg_1.json >/dev/null 2>&1 \
        || jq -e '.app.entrypoint == ["/bin/echo"] and .app.cmd == ["hello from oci"]' \
            /var/lib/berth/images/ociimg.v/ociimg_1.json >/dev/null \
        || fail "the image config was not kept"
    # A machine made from it without a command gets Entrypoint + Cmd.
    expect_ok berth create ocim --image ociimg
    [[ $(sed -n 's/^Command=//p' /etc/berth/machines/ocim.machine | paste -sd'|') == "/bin/echo|hello from oci" ]] \
        || fail "the default command was not taken"
    # ...and its WorkingDir and Env, written into the definition where an admin sees them.
    grep -qx 'WorkingDirectory=/opt' /etc/berth/machines/ocim.machine || fail "WorkingDir was not taken"
    grep -qx 'Environment=PATH=/usr/bin:/bin' /etc/berth/machines/ocim.machine || fail "Env was not taken"
    expect_ok berth rm ocim
    expect_fail "not an OCI image layout|neither|not a container image|docker save" berth import-oci "$FIXTURES/small.tar" notoci
    assert_no_image notoci
    expect_ok berth rmi --all-versions ociimg
}

test_57_export_and_pull_round_trip_with_checksums() {
    local reg=/var/tmp/registry pid rc curl_ok
    rm -rf "$reg"
    mkdir -p "$reg"
    expect_ok berth import-fs "$FIXTURES/tree" regimg --version 2.1
    expect_ok berth export regimg "$reg"
    [[ -f $reg/regimg_2.1.tar.zst ]] || fail "no regimg_2.1.tar.zst"
    (cd "$reg" && sha256sum -c SHA256SUMS) || fail "SHA256SUMS does not match the tarball"
    # Signed: a throwaway key, its public part as berth's import keyring.
    export GNUPGHOME=/var/tmp/gnupg-test
    rm -rf "$GNUPGHOME"
    mkdir -m 700 "$GNUPGHOME"
    gpg --batch --pinentry-mode loopback --passphrase '' --quick-gen-key 'berth test <test@berth.invalid>' ed25519 sign never
    expect_ok berth export regimg "$reg" --sign test@berth.invalid
    [[ -f $reg/SHA256SUMS.gpg ]] || fail "no SHA256SUMS.gpg"
    mkdir -p /etc/berth
    gpg --batch --export test@berth.invalid >/etc/berth/import-pubring.gpg

    (cd "$reg" && exec python3 -m http.server --bind 127.0.0.1 8765) >/dev/null 2>&1 &
    pid=$!
    for _ in $(seq 50); do
        curl_ok=$(python3 -c 'import urllib.request; urllib.request.urlopen("http://127.0.0.1:8765/SHA256SUMS")' 2>/dev/null && echo y || true)
        [[ $curl_ok == y ]] && break
        sleep 0.2
    done
    rc=0
    (
        set -e
        expect_ok berth pull http://127.0.0.1:8765/regimg_2.1.tar.zst pulled
        grep -q "Imported image 'pulled@2.1'" "$OUT"
        diff -r "$FIXTURES/tree" /var/lib/machines/pulled.v/pulled_2.1
        expect_ok berth pull --verify signature http://127.0.0.1:8765/regimg_2.1.tar.zst signed
        # Tampered: the tarball no longer matches SHA256SUMS.
        printf 'junk' >>"$reg/regimg_2.1.tar.zst"
        expect_fail "sha256|checksum|does not match|mismatch" berth pull http://127.0.0.1:8765/regimg_2.1.tar.zst tampered
        assert_no_image tampered
        [[ ! -e /var/lib/machines/tampered.v ]] || fail "a tampered pull left an image"
        expect_fail "404|Not Found|not found" berth pull http://127.0.0.1:8765/nothing_1.tar.zst nothing
    ) || rc=$?
    kill "$pid" 2>/dev/null || true
    rm -f /etc/berth/import-pubring.gpg
    ((rc == 0)) || return "$rc"
    expect_ok berth rmi --all-versions pulled
    expect_ok berth rmi --all-versions signed
    expect_ok berth rmi --all-versions regimg
}

test_58_build_from_git_and_rebuild_on_a_new_commit() {
    [[ -d /var/lib/machines/deb ]] || expect_ok berth import-tar "$GUEST_TAR" deb
    local src=/var/tmp/build-src commit versions
    rm -rf "$src"
    mkdir -p "$src"
    git -C "$src" init -q -b main
    cat >"$src/Containerfile" <<'CF'
FROM deb
ENV GREETING=hello
WORKDIR /opt/app
COPY hello.txt ./
RUN echo "$GREETING from $(pwd)" > built.txt && test -f hello.txt
CMD ["/bin/cat", "/opt/app/built.txt"]
CF
    echo "first" >"$src/hello.txt"
    git -C "$src" add -A
    git -C "$src" -c user.name=t -c user.email=t@t commit -qm one
    commit=$(git -C "$src" rev-parse HEAD)
    expect_ok berth build "$src" --name app
    grep -q "STEP 4/5: RUN" "$OUT" || fail "no step progress"
    expect_ok berth images --json
    jq -e --arg c "$commit" '[.[] | select(.name == "app")] | length == 1 and .[0].commit == $c and (.[0].base | startswith("deb"))' "$OUT" >/dev/null \
        || fail "the build did not record commit and base"
    local v1 root
    v1=$(jq -r '.[] | select(.name == "app") | .version' "$OUT")
    root=/var/lib/machines/app.v/app_$v1
    [[ $(cat "$root/opt/app/built.txt") == "hello from /opt/app" ]] || fail "RUN did not run with ENV and WORKDIR"
    [[ $(cat "$root/opt/app/hello.txt") == first ]] || fail "COPY did not copy"
    [[ $(cat "$root/etc/hostname" 2>/dev/null) != build-* ]] || fail "the build machine's hostname stayed in the image"
    [[ -z $(machinectl list --no-legend | grep build-) ]] || fail "a build machine is left"
    [[ -z $(ls /etc/berth/machines | grep '^build-') ]] || fail "a build machine definition is left"
    expect_ok berth images --tree
    grep -q "└─ app@$v1" "$OUT" || fail "lineage tree does not show app under deb"

    # A failing step stores nothing.
    printf 'FROM deb\nRUN exit 3\n' >"$src/Broken"
    git -C "$src" add -A
    git -C "$src" -c user.name=t -c user.email=t@t commit -qm broken
    expect_fail "failed \(exited 3\)" berth build "$src" --name broken --file Broken
    assert_no_image broken
    [[ ! -e /var/lib/machines/broken.v ]] || fail "a failed build left an image"

    # The timer's service: nothing to do for the same commit of the Containerfile's ref...
    git -C "$src" reset -q --hard "$commit"
    expect_ok systemctl start berth-build@app.service
    versions=$(berth images --json | jq -r '[.[] | select(.name == "app")] | length')
    [[ $versions == 1 ]] || fail "the rebuild service built an unchanged source"
    journalctl -u berth-build@app.service --no-pager | grep -q "up to date" || fail "the rebuild did not say it was up to date"
    # ...and a new version after a new commit.
    sleep 1
    echo "second" >"$src/hello.txt"
    git -C "$src" -c user.name=t -c user.email=t@t commit -qam two
    expect_ok systemctl start berth-build@app.service
    versions=$(berth images --json | jq -r '[.[] | select(.name == "app") | .version] | join(" ")')
    [[ $(wc -w <<<"$versions") == 2 ]] || fail "no new version after a new commit: $versions"
    [[ ${versions%% *} != "$v1" ]] || fail "the new version is not the newest: $versions"
    expect_ok berth run --rm --image app
    grep -q "hello from /opt/app" "$OUT" || fail "the image's CMD did not run"
    expect_ok systemctl cat berth-build@app.timer
    expect_ok berth rmi --all-versions app
}

test_59_image_user_workdir_env_reach_app_machines() {
    [[ -d /var/lib/machines/deb ]] || expect_ok berth import-tar "$GUEST_TAR" deb
    local src=/var/tmp/build-user root=/var/lib/machines/userapp.v/userapp_1
    rm -rf "$src"
    mkdir -p "$src/data"
    printf '#!/bin/sh\necho "tool as $(id -un)"\n' >"$src/tool"
    chmod 755 "$src/tool"
    echo payload >"$src/data/file"
    cat >"$src/Containerfile" <<'CF'
FROM deb
COPY tool /bin/tool
WORKDIR /srv/app
COPY --chown=nobody:nogroup data/ ./data/
ENV GREETING=hi MODE=prod
USER nobody
RUN touch /srv/app/data/made-by-run
CMD ["/bin/sh", "-c", "echo \"$GREETING $MODE $(id -un):$(id -gn) $(pwd) $HOME\"; tool"]
CF
    expect_ok berth build "$src" --name userapp --version 1
    # COPY through the image's /bin -> usr/bin symlink lands in usr/bin; the symlink stays.
    [[ -L $root/bin && -x $root/usr/bin/tool ]] || fail "COPY to /bin/tool did not follow the image's /bin symlink"
    # --chown owns every copied entry; the RUN step as USER nobody could write there.
    [[ $(stat -c %u:%g "$root/srv/app/data" "$root/srv/app/data/file" | sort -u) == 65534:65534 ]] \
        || fail "COPY --chown did not own the copied files: $(stat -c '%n %u:%g' "$root"/srv/app/data{,/file})"
    [[ $(stat -c %u "$root/srv/app/data/made-by-run") == 65534 ]] || fail "RUN did not run as USER nobody"

    # An app machine made from it runs as its USER, in its WORKDIR, with its ENV...
    expect_ok berth run --rm --image userapp
    grep -qx "hi prod nobody:nogroup /srv/app /" "$OUT" || fail "the image's USER, WORKDIR and ENV were not applied"
    grep -qx "tool as nobody" "$OUT" || fail "the copied tool did not run"
    # ...and --user, --workdir, --env override them.
    expect_ok berth run --rm --image userapp --user root --workdir /tmp -e MODE=dev
    grep -qx "hi dev root:root /tmp /root" "$OUT" || fail "--user, --workdir, --env did not override the image"
    expect_ok berth create ua --image userapp -e EXTRA=1
    local def=/etc/berth/machines/ua.machine
    grep -qx 'User=nobody' "$def" && grep -qx 'WorkingDirectory=/srv/app' "$def" \
        && grep -qx 'Environment=GREETING=hi' "$def" && grep -qx 'Environment=EXTRA=1' "$def" \
        || fail "the definition lacks the app settings: $(cat "$def")"
    expect_ok berth rm ua

    # Bad settings are refused before anything exists.
    expect_fail "environment variable '1X=y'" berth create ub --image userapp --env 1X=y
    expect_fail "are for app machines" berth create ub --image deb --boot --user nobody
    expect_fail "working directory 'rel' is not an absolute path" berth create ub --image userapp -w rel
    [[ ! -e /etc/berth/machines/ub.machine && ! -e /var/lib/berth/machines/ub ]] || fail "a refused create left ub"
    # A user the machine doesn't have fails the start, and --rm leaves nothing.
    expect_fail "no user 'ghost'" berth run --rm --image userapp --user ghost
    [[ -z $(find /etc/berth/machines -name 'run-*') ]] || fail "a failed run left its machine"
    expect_ok berth rmi --all-versions userapp
}
