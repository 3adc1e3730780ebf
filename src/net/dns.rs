//! The DNS server berthd runs on `berth0` (10.89.0.1 and fd89:6265:7274::1, port 53) for
//! private machines: it answers a machine's name (or `NAME.berth`) with that machine's
//! addresses and passes every other query, unchanged, to the host's own resolvers (the
//! `nameserver`s of the host's /etc/resolv.conf), so machines resolve what the host resolves.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UdpSocket;

use super::addressing;

/// Looks a machine name up: its IPv4 and IPv6 address when it is a private machine.
pub type Resolver = Arc<dyn Fn(&str) -> Option<(Ipv4Addr, Ipv6Addr)> + Send + Sync>;

const TYPE_A: u16 = 1;
const TYPE_AAAA: u16 = 28;
const TYPE_ANY: u16 = 255;
const CLASS_IN: u16 = 1;
/// Seconds a machine's answer may be cached: short, machines come and go.
const TTL: u32 = 5;
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(4);
/// Forwarded queries that wait for an upstream at once, each with a socket of its own: more
/// get SERVFAIL straight away, so a flood of queries from a machine can't use up berthd's
/// descriptors (which its machines' starts need too).
static FORWARDS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(64);

/// Binds the server on the bridge's addresses and serves in the background. An address
/// that can't be bound (another DNS server holds port 53 on all addresses) is logged.
pub async fn spawn(resolver: Resolver) {
    for address in [
        IpAddr::V4(addressing::IPV4_GATEWAY),
        IpAddr::V6(addressing::IPV6_GATEWAY),
    ] {
        match UdpSocket::bind(SocketAddr::new(address, 53)).await {
            Ok(socket) => {
                tracing::info!(%address, "serving machine names over DNS");
                tokio::spawn(serve(Arc::new(socket), resolver.clone()));
            }
            Err(e) => tracing::warn!(
                %address,
                "cannot serve DNS for machines on port 53 ({e}); private machines won't resolve each other's names"
            ),
        }
    }
}

async fn serve(socket: Arc<UdpSocket>, resolver: Resolver) {
    let mut buffer = vec![0u8; 4096];
    loop {
        let (n, client) = match socket.recv_from(&mut buffer).await {
            Ok(received) => received,
            Err(e) => {
                tracing::warn!("DNS server: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let query = buffer[..n].to_vec();
        if let Some(reply) = answer(&query, &*resolver) {
            let _ = socket.send_to(&reply, client).await;
            continue;
        }
        // What isn't a query (no question that parses) goes nowhere.
        let Some(servfail) = failure(&query) else {
            continue;
        };
        let Ok(permit) = FORWARDS.try_acquire() else {
            let _ = socket.send_to(&servfail, client).await;
            continue;
        };
        let socket = socket.clone();
        tokio::spawn(async move {
            let reply = forward(&query).await.unwrap_or(servfail);
            drop(permit);
            let _ = socket.send_to(&reply, client).await;
        });
    }
}

/// The question of a query: its ID, lowercase name without the final dot, type, and where
/// the question ends.
fn question(packet: &[u8]) -> Option<(String, u16, usize)> {
    if packet.len() < 12 || packet[2] & 0x80 != 0 || u16::from_be_bytes([packet[4], packet[5]]) != 1
    {
        return None;
    }
    let mut labels = Vec::new();
    let mut at = 12;
    loop {
        let length = usize::from(*packet.get(at)?);
        at += 1;
        if length == 0 {
            break;
        }
        if length > 63 {
            return None;
        }
        labels.push(String::from_utf8_lossy(packet.get(at..at + length)?).to_ascii_lowercase());
        at += length;
    }
    let qtype = u16::from_be_bytes([*packet.get(at)?, *packet.get(at + 1)?]);
    let qclass = u16::from_be_bytes([*packet.get(at + 2)?, *packet.get(at + 3)?]);
    (qclass == CLASS_IN).then(|| (labels.join("."), qtype, at + 4))
}

/// The reply for a machine's name; `None` when the name is not a machine's (forward it).
pub fn answer(
    packet: &[u8],
    resolver: &(dyn Fn(&str) -> Option<(Ipv4Addr, Ipv6Addr)> + Send + Sync),
) -> Option<Vec<u8>> {
    let (name, qtype, end) = question(packet)?;
    // A bare name with dots is the outside world's; under `.berth` a machine's name may have
    // them (machine names are hostnames).
    let machine = match name.strip_suffix(".berth") {
        Some(machine) => machine,
        None if name.contains('.') => return None,
        None => &name,
    };
    if machine.is_empty() {
        return None;
    }
    let (ipv4, ipv6) = resolver(machine)?;
    let mut records: Vec<(u16, Vec<u8>)> = Vec::new();
    if qtype == TYPE_A || qtype == TYPE_ANY {
        records.push((TYPE_A, ipv4.octets().to_vec()));
    }
    if qtype == TYPE_AAAA || qtype == TYPE_ANY {
        records.push((TYPE_AAAA, ipv6.octets().to_vec()));
    }
    let mut reply = Vec::with_capacity(end + 64);
    reply.extend_from_slice(&packet[..2]);
    // QR, AA, the query's RD; RA; NOERROR.
    reply.push(0x84 | (packet[2] & 0x01));
    reply.push(0x80);
    reply.extend_from_slice(&1u16.to_be_bytes());
    reply.extend_from_slice(&u16::try_from(records.len()).unwrap_or(0).to_be_bytes());
    reply.extend_from_slice(&[0, 0, 0, 0]);
    reply.extend_from_slice(&packet[12..end]);
    for (rtype, data) in records {
        reply.extend_from_slice(&[0xc0, 12]);
        reply.extend_from_slice(&rtype.to_be_bytes());
        reply.extend_from_slice(&CLASS_IN.to_be_bytes());
        reply.extend_from_slice(&TTL.to_be_bytes());
        reply.extend_from_slice(&u16::try_from(data.len()).unwrap_or(0).to_be_bytes());
        reply.extend_from_slice(&data);
    }
    Some(reply)
}

/// SERVFAIL for a query no upstream answered.
fn failure(packet: &[u8]) -> Option<Vec<u8>> {
    let (_, _, end) = question(packet)?;
    let mut reply = packet[..end].to_vec();
    reply[2] = 0x80 | (packet[2] & 0x01);
    reply[3] = 0x82;
    reply[6..12].fill(0);
    Some(reply)
}

/// Passes the query to the host's resolvers in turn; the first answer.
async fn forward(query: &[u8]) -> Option<Vec<u8>> {
    let conf = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    for upstream in upstreams(&conf) {
        let local: SocketAddr = if upstream.is_ipv4() {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let Ok(socket) = UdpSocket::bind(local).await else {
            continue;
        };
        if socket.send_to(query, upstream).await.is_err() {
            continue;
        }
        let mut buffer = vec![0u8; 4096];
        if let Ok(Ok((n, from))) =
            tokio::time::timeout(UPSTREAM_TIMEOUT, socket.recv_from(&mut buffer)).await
            && from == upstream
        {
            buffer.truncate(n);
            return Some(buffer);
        }
    }
    None
}

/// The `nameserver`s of a resolv.conf, port 53, never berth's own server.
fn upstreams(conf: &str) -> Vec<SocketAddr> {
    conf.lines()
        .filter_map(|line| line.trim().strip_prefix("nameserver"))
        .filter_map(|rest| rest.trim().parse::<IpAddr>().ok())
        .filter(|ip| {
            *ip != IpAddr::V4(addressing::IPV4_GATEWAY)
                && *ip != IpAddr::V6(addressing::IPV6_GATEWAY)
        })
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

/// What a private machine's /etc/resolv.conf says: berth's server on the bridge.
pub fn guest_resolv_conf() -> String {
    format!(
        "# Written by berth at each start of this --network private machine: berthd answers\n\
         # machine names and passes other queries to the host's resolvers. Make this file a\n\
         # symlink (e.g. to systemd-resolved's) and berth leaves it alone.\n\
         nameserver {}\nnameserver {}\n",
        addressing::IPV4_GATEWAY,
        addressing::IPV6_GATEWAY
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &str, qtype: u16) -> Vec<u8> {
        let mut packet = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for label in name.split('.') {
            packet.push(u8::try_from(label.len()).expect("label"));
            packet.extend_from_slice(label.as_bytes());
        }
        packet.push(0);
        packet.extend_from_slice(&qtype.to_be_bytes());
        packet.extend_from_slice(&CLASS_IN.to_be_bytes());
        packet
    }

    fn web(name: &str) -> Option<(Ipv4Addr, Ipv6Addr)> {
        (name == "web").then(|| {
            (
                Ipv4Addr::new(10, 89, 0, 2),
                "fd89:6265:7274::2".parse().expect("v6"),
            )
        })
    }

    #[test]
    fn machine_names_are_answered() {
        let reply = answer(&query("Web", TYPE_A), &web).expect("answered");
        assert_eq!(&reply[..2], &[0x12, 0x34]);
        assert_eq!(reply[2] & 0x80, 0x80, "a response");
        assert_eq!(u16::from_be_bytes([reply[6], reply[7]]), 1, "one answer");
        assert_eq!(&reply[reply.len() - 4..], &[10, 89, 0, 2]);
        let reply = answer(&query("web.berth", TYPE_AAAA), &web).expect("answered");
        assert_eq!(reply[reply.len() - 1], 2);
        assert_eq!(
            u16::from_be_bytes([reply[reply.len() - 18], reply[reply.len() - 17]]),
            16
        );
        // A machine named with dots, under .berth only.
        let dotted = |name: &str| web(&name.replace("db.prod", "web"));
        assert!(answer(&query("db.prod.berth", TYPE_A), &dotted).is_some());
        assert!(answer(&query("db.prod", TYPE_A), &dotted).is_none());
        // Another type of a machine's name: no records, but not forwarded either.
        let reply = answer(&query("web", 15), &web).expect("answered");
        assert_eq!(u16::from_be_bytes([reply[6], reply[7]]), 0);
    }

    #[test]
    fn other_names_are_forwarded() {
        assert!(answer(&query("example.org", TYPE_A), &web).is_none());
        assert!(answer(&query("db", TYPE_A), &web).is_none());
        assert!(answer(&[0u8; 5], &web).is_none());
        let fail = failure(&query("example.org", TYPE_A)).expect("servfail");
        assert_eq!(fail[3] & 0x0f, 2);
    }

    #[test]
    fn upstreams_come_from_resolv_conf() {
        let conf = "# x\nnameserver 10.0.2.3\nnameserver ::1\nnameserver 10.89.0.1\nsearch lan\n";
        assert_eq!(
            upstreams(conf),
            vec![
                "10.0.2.3:53".parse::<SocketAddr>().expect("v4"),
                "[::1]:53".parse().expect("v6")
            ]
        );
    }
}
