# shellcheck shell=bash
# Network modes: none (loopback only), private (veth to berth0, pool addresses, machine names
# over berthd's DNS, masquerading in berth's nftables table), and nothing left behind.

# Fetches URL and prints the body (or nothing); retried while a server comes up. With
# NETNS, from that network namespace (another host).
fetch() {
    local url=$1 netns=${2:-}
    for _ in $(seq 50); do
        fetch_once "$url" "$netns" && return 0
        sleep 0.2
    done
    return 1
}

# One try: for checking that something does not answer (fetch would retry for half a minute).
fetch_once() {
    local url=$1 netns=${2:-} run=()
    [[ -n $netns ]] && run=(ip netns exec "$netns")
    # An HTTP/1.0 GET by bash's /dev/tcp: python3 takes seconds to start under TCG, and the
    # VM's busybox (static) crashes in wget to an IPv4 address.
    # shellcheck disable=SC2016
    "${run[@]}" timeout 5 bash -c '
        [[ $1 =~ ^http://(\[([^]]+)\]|([^:/]+)):([0-9]+)(/.*)?$ ]] || exit 2
        host=${BASH_REMATCH[2]:-${BASH_REMATCH[3]}} port=${BASH_REMATCH[4]} path=${BASH_REMATCH[5]:-/}
        exec 3<>"/dev/tcp/$host/$port" || exit 1
        printf "GET %s HTTP/1.0\r\nHost: %s\r\n\r\n" "$path" "$host" >&3
        IFS= read -r status <&3 && [[ $status == "HTTP/1."?" 200"* ]] || exit 1
        while IFS= read -r line <&3 && [[ $line != $'"'"'\r'"'"' && -n $line ]]; do :; done
        while IFS= read -r line <&3 || [[ -n $line ]]; do printf "%s\n" "$line"; done' _ "$url" 2>/dev/null
}

# The address of a running machine's host0, read inside its network namespace.
machine_ipv4() {
    local leader
    leader=$(machinectl show "$1" -p Leader --value)
    nsenter -t "$leader" -n ip -4 -o addr show host0 | awk '{print $4}' | cut -d/ -f1
}

machine_mac() {
    nsenter -t "$(machinectl show "$1" -p Leader --value)" -n ip -o link show host0 \
        | grep -o 'link/ether [0-9a-f:]*' | cut -d' ' -f2
}

test_85_network_none_and_private_machines_by_name() {
    [[ -d /var/lib/machines/deb ]] || expect_ok berth import-tar "$GUEST_TAR" deb
    local www=/var/tmp/www bb=/bin/busybox:/usr/local/bin/busybox:ro ip leader
    mkdir -p "$www"
    echo "hello from pa" >"$www/hello"

    # none: a namespace of its own with loopback up and nothing else.
    expect_ok berth run --rm --image deb --network none -- cat /proc/net/dev
    grep -q ' lo:' "$OUT" || fail "no loopback in a --network none machine"
    [[ $(grep -c ':' "$OUT") == 1 ]] || fail "a --network none machine has more than loopback: $(cat "$OUT")"
    # Its /sys shows its own devices, not the host's.
    expect_ok berth run --rm --image deb --network none -- ls /sys/class/net
    [[ $(cat "$OUT") == lo ]] || fail "/sys/class/net of a --network none machine shows: $(cat "$OUT")"

    # private: pa serves HTTP on its pool address; the host reaches it.
    expect_ok berth create pa --image deb --network private --port 8080:80 --bind "$bb" --bind "$www:/srv/www:ro" \
        -- /usr/local/bin/busybox httpd -f -p 80 -h /srv/www
    grep -qx 'Network=private' /etc/berth/machines/pa.machine || fail "Network= not in the definition"
    expect_ok berth start pa
    ip=$(machine_ipv4 pa)
    [[ $ip == 10.89.* ]] || fail "pa has no address from berth's pool: '$ip'"
    ip -o link show ve-pa | grep -q 'master berth0' || fail "ve-pa is not a port of berth0: $(ip -o link show ve-pa)"
    ip -o addr show berth0 | grep -q 'inet 10.89.0.1/16' || fail "berth0 lacks 10.89.0.1/16"
    local mac
    mac=$(machine_mac pa)
    [[ $mac =~ ^[0-9a-f][2367ae](:[0-9a-f]{2}){5}$ ]] || fail "host0's MAC '$mac' is not a local unicast one"
    [[ $(fetch "http://$ip:80/hello") == "hello from pa" ]] || fail "the host did not reach pa's server at $ip:80"
    # Masquerading: pa's address is in berth's table.
    expect_ok nft list table inet berth
    grep -q "$ip" "$OUT" || fail "pa's address is not in berth's nftables table"

    # The forward: on the host's own address, on 127.0.0.1 and [::1], and from another host
    # (a network namespace behind a veth) over IPv4 and IPv6.
    ip link add dummy0 type dummy 2>/dev/null || true
    ip addr add 192.0.2.10/24 dev dummy0 2>/dev/null || true
    ip link set dummy0 up
    ip netns add other 2>/dev/null || true
    ip link add vother type veth peer name eth0 netns other 2>/dev/null || true
    ip addr add 198.51.100.1/24 dev vother 2>/dev/null || true
    ip -6 addr add 2001:db8::1/64 dev vother nodad 2>/dev/null || true
    ip link set vother up
    ip netns exec other ip addr add 198.51.100.2/24 dev eth0 2>/dev/null || true
    ip netns exec other ip -6 addr add 2001:db8::2/64 dev eth0 nodad 2>/dev/null || true
    ip netns exec other ip link set eth0 up
    ip netns exec other ip link set lo up
    local url
    for url in http://192.0.2.10:8080/hello http://127.0.0.1:8080/hello "http://[::1]:8080/hello"; do
        [[ $(fetch "$url") == "hello from pa" ]] || fail "the forward did not answer on $url"
    done
    for url in http://198.51.100.1:8080/hello "http://[2001:db8::1]:8080/hello"; do
        [[ $(fetch "$url" other) == "hello from pa" ]] || fail "the forward did not answer another host on $url"
    done
    expect_ok berth ports
    grep -Eq "^pa +tcp +8080 +$ip:80 +\[fd89:6265:7274::[0-9a-f]+\]:80 +active" "$OUT" || fail "berth ports does not list pa's forward"
    expect_ok nft list table inet berth
    grep -q "8080 : $ip . 80" "$OUT" || fail "nft does not show pa's forward"
    expect_fail "host port 8080/tcp is forwarded to machine 'pa' already" \
        berth create pz --image deb --network private --port 8080 -- true
    expect_fail "--port is for --network private" berth create pz --image deb --port 8081 -- true
    expect_fail "port '99999' is not valid" berth create pz --image deb --network private --port 99999 -- true
    assert_no_machine pz

    # Another private machine reaches pa by name, through berthd's DNS; it keeps its MAC.
    expect_ok berth run --rm --image deb --network private --bind "$bb" -- \
        /usr/local/bin/busybox wget -q -O - http://pa/hello
    grep -qx "hello from pa" "$OUT" || fail "a private machine did not reach pa by name"
    expect_ok berth run --rm --image deb --network private -- getent ahostsv4 pa.berth
    grep -q "^$ip " "$OUT" || fail "pa.berth does not resolve to $ip"
    expect_ok berth run --rm --image deb --network private -- cat /etc/resolv.conf
    grep -qx "nameserver 10.89.0.1" "$OUT" || fail "a private machine's resolv.conf does not name berthd's DNS"

    # berth stop: no link, no element left.
    expect_ok berth stop pa
    ! ip link show ve-pa >/dev/null 2>&1 || fail "ve-pa is left after berth stop"
    expect_ok nft list table inet berth
    ! grep -q "$ip" "$OUT" || fail "pa's address or forward is left in the table after berth stop"
    ! fetch_once "http://[::1]:8080/hello" >/dev/null || fail "the IPv6 relay still answers after berth stop"
    expect_ok berth ports pa
    grep -Eq "^pa +tcp +8080 .* stopped" "$OUT" || fail "berth ports does not show pa's forward as stopped"

    # kill -9 of its init: the same.
    expect_ok berth start pa
    [[ $(machine_mac pa) == "$mac" && $(machine_ipv4 pa) == "$ip" ]] || fail "pa's MAC or address changed across a restart"
    leader=$(machinectl show pa -p Leader --value)
    kill -9 "$leader"
    for _ in $(seq 100); do
        machinectl show pa >/dev/null 2>&1 || break
        sleep 0.1
    done
    sleep 1
    ! ip link show ve-pa >/dev/null 2>&1 || fail "ve-pa is left after kill -9"
    expect_ok nft list table inet berth
    ! grep -q "$ip" "$OUT" || fail "pa's address or forward is left in the table after kill -9"

    # A stale element (a machine gone while berthd was down) goes at berthd's start; a
    # running machine's is restored.
    expect_ok berth start pa
    nft add element inet berth masquerade4 '{ 10.89.255.250 }'
    nft delete element inet berth masquerade4 "{ $ip }"
    expect_ok systemctl restart berthd.service
    expect_ok berth list
    expect_ok nft list table inet berth
    grep -q "$ip" "$OUT" || fail "berthd's start did not restore pa's element"
    ! grep -q "10.89.255.250" "$OUT" || fail "berthd's start kept a stale element"
    [[ $(fetch "http://[::1]:8080/hello") == "hello from pa" ]] || fail "berthd's start did not restore pa's IPv6 relay"
    expect_ok berth stop pa
    expect_ok berth rm pa

    # --no-masquerade: reachable from the host, not masqueraded.
    expect_ok berth create pq --image deb --network private --no-masquerade -- sleep infinity
    grep -qx 'Masquerade=no' /etc/berth/machines/pq.machine || fail "Masquerade=no not in the definition"
    expect_ok berth start pq
    ip=$(machine_ipv4 pq)
    expect_ok nft list table inet berth
    ! grep -q "$ip" "$OUT" || fail "a --no-masquerade machine is masqueraded"
    expect_ok berth stop pq
    expect_ok berth rm pq

    # bridge=BR: the host end is a port of the admin's bridge; the guest gets host0 up.
    ip link add brtest type bridge 2>/dev/null || true
    ip link set brtest up
    expect_ok berth create pbr --image deb --network bridge=brtest -- sleep infinity
    expect_ok berth start pbr
    ip -o link show ve-pbr | grep -q 'master brtest' || fail "ve-pbr is not a port of brtest"
    nsenter -t "$(machinectl show pbr -p Leader --value)" -n ip -o link show host0 | grep -q 'state UP\|,UP' \
        || fail "host0 of a bridged machine is not up"
    expect_ok berth stop pbr
    ! ip link show ve-pbr >/dev/null 2>&1 || fail "ve-pbr is left after berth stop"
    expect_ok berth rm pbr
    ip link del brtest

    # Bad network input: a clear error, nothing created.
    expect_fail "network 'bogus' is not host, none, private or bridge=BRIDGE" \
        berth create nb --image deb --network bogus -- true
    expect_fail "bridge 'nosuchbr0' does not exist" berth create nb --image deb --network bridge=nosuchbr0 -- true
    expect_fail "--no-masquerade is for --network private" berth create nb --image deb --no-masquerade -- true
    assert_no_machine nb
    ip netns del other
    ip link del dummy0
}

# What a private machine's network keeps closed: other hosts reach a machine only through its
# forwards (not straight at its address) and get no DNS from berthd; root in a machine can't
# reach the host's localhost-only services (route_localnet is on for berth0, which the
# kernel would otherwise let a crafted frame to 127.0.0.1 through); a forward of a host port
# that a host service has is refused at start.
test_86_private_networks_keep_closed_what_they_should() {
    [[ -d /var/lib/machines/deb ]] || expect_ok berth import-tar "$GUEST_TAR" deb
    local www=/var/tmp/www86 bb=/bin/busybox:/usr/local/bin/busybox:ro ip leader gw_mac out pid
    mkdir -p "$www"
    echo "hello from pc" >"$www/hello"
    expect_ok berth create pc --image deb --network private --port 8090:80 --bind "$bb" --bind "$www:/srv/www:ro" \
        -- /usr/local/bin/busybox httpd -f -p 80 -h /srv/www
    expect_ok berth start pc
    ip=$(machine_ipv4 pc)
    leader=$(machinectl show pc -p Leader --value)

    # Another host that routes berth's pool through this one.
    ip netns add lan
    ip link add vlan0 type veth peer name eth0 netns lan
    ip addr add 203.0.113.1/24 dev vlan0
    ip link set vlan0 up
    ip netns exec lan ip addr add 203.0.113.2/24 dev eth0
    ip netns exec lan ip link set eth0 up
    ip netns exec lan ip link set lo up
    ip netns exec lan ip route add 10.89.0.0/16 via 203.0.113.1
    [[ $(fetch "http://203.0.113.1:8090/hello" lan) == "hello from pc" ]] || fail "the forward did not answer the other host"
    [[ $(fetch "http://$ip:80/hello") == "hello from pc" ]] || fail "the host itself did not reach pc at $ip"
    ! fetch_once "http://$ip:80/hello" lan >/dev/null || fail "another host reached pc's port 80 straight at $ip"
    out=$("$here/udp-probe" dns 10.89.0.1 pc)
    [[ $out == "answers: 1" ]] || fail "berthd's DNS did not answer the host itself: $out"
    out=$(ip netns exec lan "$here/udp-probe" dns 10.89.0.1 pc)
    [[ $out == "no answer" ]] || fail "berthd's DNS answered another host: $out"

    # Machine names are found whatever their case (DNS ignores it), and with dots under .berth.
    expect_ok berth create Db.prod --image deb --network private -- sleep infinity
    expect_ok berth start Db.prod
    [[ $("$here/udp-probe" dns 10.89.0.1 db.prod.berth) == "answers: 1" ]] || fail "Db.prod.berth was not answered"
    [[ $("$here/udp-probe" dns 10.89.0.1 PC) == "answers: 1" ]] || fail "PC (machine pc) was not answered"
    expect_ok berth rm --force Db.prod

    # A frame from inside pc to 127.0.0.1, through berth0's MAC: dropped. The same frame to the
    # bridge's own address arrives (so the probe itself works).
    gw_mac=$(cat /sys/class/net/berth0/address)
    "$here/udp-probe" listen 127.0.0.1 9999 8 >"$LOGDIR/localhost.udp" &
    pid=$!
    "$here/udp-probe" listen 10.89.0.1 9998 8 >"$LOGDIR/gateway.udp" &
    local pid2=$!
    for _ in $(seq 100); do
        grep -q listening "$LOGDIR/localhost.udp" && grep -q listening "$LOGDIR/gateway.udp" && break
        sleep 0.1
    done
    nsenter -t "$leader" -n "$here/udp-probe" raw host0 "$gw_mac" "$ip" 127.0.0.1 9999 to-localhost
    nsenter -t "$leader" -n "$here/udp-probe" raw host0 "$gw_mac" "$ip" 10.89.0.1 9998 to-gateway
    wait "$pid" "$pid2"
    cat "$LOGDIR/localhost.udp" "$LOGDIR/gateway.udp"
    grep -q "got 'to-gateway' from $ip" "$LOGDIR/gateway.udp" || fail "the probe's frame to the gateway did not arrive"
    ! grep -q "to-localhost" "$LOGDIR/localhost.udp" || fail "a machine reached a service on the host's 127.0.0.1"

    # A forward of a port that a host service listens on (and of berthd's own DNS port) is
    # refused at start, naming the port; nothing of the machine runs.
    /bin/busybox nc -l -p 8091 >/dev/null 2>&1 &
    pid=$!
    sleep 1
    expect_ok berth create pin --image deb --network private --port 8091:80 -- sleep infinity
    expect_fail "host port 8091/tcp is in use by a service of the host" berth start pin
    ! ip link show ve-pin >/dev/null 2>&1 || fail "a refused start left ve-pin"
    ! machinectl show pin >/dev/null 2>&1 || fail "a refused start left pin registered"
    expect_ok nft list table inet berth
    ! grep -q "8091 :" "$OUT" || fail "a refused start left its forward in the table"
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    expect_ok berth start pin
    expect_ok berth rm --force pin
    expect_ok berth create pdns --image deb --network private --port udp:53:5353 -- sleep infinity
    expect_fail "host port 53/udp is in use" berth start pdns
    expect_ok berth rm pdns

    # A flushed ruleset (nftables.service flushes at each start and reload) takes berth's
    # table too: the next private start writes it again, with pc's elements.
    nft flush ruleset
    expect_ok berth run --rm --image deb --network private -- true
    expect_ok nft list table inet berth
    grep -q "8090 : $ip . 80" "$OUT" || fail "pc's forward was not written again after a flush"
    [[ $(fetch "http://127.0.0.1:8090/hello") == "hello from pc" ]] || fail "pc's forward does not answer after a flush"

    ip netns del lan
    expect_ok berth rm --force pc
}
