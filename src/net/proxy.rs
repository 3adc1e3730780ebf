//! IPv6 port forwards, relayed by berthd: it listens on `[::]:HOSTPORT` (IPv6 only) and
//! connects to the machine's IPv6 address. The kernel can't DNAT traffic from `::1` to
//! another interface (IPv6 has no route_localnet), and relaying also spares the host from
//! turning on IPv6 forwarding; IPv4 forwards are nftables DNAT (see [`super::nft`]).

use std::collections::HashMap;
use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustix::net::{AddressFamily, SocketType, sockopt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinHandle;

use super::NetError;
use super::port::{PortForward, Protocol};

/// A UDP client's relay ends after this long without traffic.
const UDP_IDLE: Duration = Duration::from_secs(60);
/// Relayed TCP connections (two descriptors each) and UDP clients (one each) at once, over
/// all forwards: beyond, a new connection is closed and a new client's datagram dropped, so
/// that clients from outside (an IPv6 /64 has many addresses) can't use up berthd's
/// descriptors, which its machines' starts need too.
static TCP_CONNECTIONS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(256);
static UDP_CLIENTS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(128);

/// The relays of each running machine.
static RELAYS: Mutex<Option<HashMap<String, Vec<JoinHandle<()>>>>> = Mutex::new(None);

/// Starts the IPv6 relays of machine `name`; on an error none of them runs.
pub fn start(name: &str, machine: Ipv6Addr, ports: &[PortForward]) -> Result<(), NetError> {
    stop(name);
    let mut tasks = Vec::new();
    for port in ports {
        let target = SocketAddr::V6(SocketAddrV6::new(machine, port.machine_port, 0, 0));
        let started = match port.protocol {
            Protocol::Tcp => listen_tcp(port.host_port).map(|l| tokio::spawn(relay_tcp(l, target))),
            Protocol::Udp => bind_udp(port.host_port).map(|s| tokio::spawn(relay_udp(s, target))),
        };
        match started {
            Ok(task) => tasks.push(task),
            Err(e) => {
                tasks.iter().for_each(JoinHandle::abort);
                return Err(e);
            }
        }
    }
    let mut relays = RELAYS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    relays
        .get_or_insert_with(HashMap::new)
        .insert(name.to_owned(), tasks);
    Ok(())
}

/// Stops machine `name`'s relays (their sockets close).
pub fn stop(name: &str) {
    let mut relays = RELAYS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(tasks) = relays.as_mut().and_then(|r| r.remove(name)) {
        tasks.iter().for_each(JoinHandle::abort);
    }
}

/// A socket on `[::]:port`, IPv6 only, so IPv4 on the same port stays nftables' (and a host
/// service on 0.0.0.0 doesn't conflict).
fn socket_on(port: u16, kind: SocketType) -> Result<std::os::fd::OwnedFd, NetError> {
    let what = match kind {
        SocketType::STREAM => "tcp",
        _ => "udp",
    };
    let context = format!("listening on [::]:{port}/{what} for the IPv6 forward");
    let fail = |e: rustix::io::Errno| match e {
        rustix::io::Errno::ADDRINUSE => NetError::Io {
            context: format!(
                "host port {port}/{what} is in use on the host's IPv6 addresses (ss -lnp shows by what)"
            ),
            source: e.into(),
        },
        e => NetError::Io {
            context: context.clone(),
            source: e.into(),
        },
    };
    let fd = rustix::net::socket_with(
        AddressFamily::INET6,
        kind,
        rustix::net::SocketFlags::CLOEXEC | rustix::net::SocketFlags::NONBLOCK,
        None,
    )
    .map_err(fail)?;
    sockopt::set_ipv6_v6only(&fd, true).map_err(fail)?;
    sockopt::set_socket_reuseaddr(&fd, true).map_err(fail)?;
    let address = SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, port, 0, 0);
    rustix::net::bind(&fd, &address).map_err(fail)?;
    if kind == SocketType::STREAM {
        rustix::net::listen(&fd, 128).map_err(fail)?;
    }
    Ok(fd)
}

fn listen_tcp(port: u16) -> Result<TcpListener, NetError> {
    let listener = std::net::TcpListener::from(socket_on(port, SocketType::STREAM)?);
    TcpListener::from_std(listener).map_err(NetError::io("registering the IPv6 forward"))
}

fn bind_udp(port: u16) -> Result<UdpSocket, NetError> {
    let socket = std::net::UdpSocket::from(socket_on(port, SocketType::DGRAM)?);
    UdpSocket::from_std(socket).map_err(NetError::io("registering the IPv6 forward"))
}

async fn relay_tcp(listener: TcpListener, target: SocketAddr) {
    loop {
        let Ok((mut client, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let Ok(permit) = TCP_CONNECTIONS.try_acquire() else {
            continue;
        };
        tokio::spawn(async move {
            if let Ok(mut machine) = TcpStream::connect(target).await {
                let _ = tokio::io::copy_bidirectional(&mut client, &mut machine).await;
            }
            drop(permit);
        });
    }
}

async fn relay_udp(socket: UdpSocket, target: SocketAddr) {
    let socket = Arc::new(socket);
    let sessions: Arc<Mutex<HashMap<SocketAddr, Arc<UdpSocket>>>> = Arc::default();
    let mut buffer = vec![0u8; 65_536];
    loop {
        let Ok((n, client)) = socket.recv_from(&mut buffer).await else {
            continue;
        };
        let existing = sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&client)
            .cloned();
        let upstream = match existing {
            Some(upstream) => upstream,
            None => {
                let Ok(permit) = UDP_CLIENTS.try_acquire() else {
                    continue;
                };
                let Ok(upstream) = UdpSocket::bind((Ipv6Addr::UNSPECIFIED, 0)).await else {
                    continue;
                };
                if upstream.connect(target).await.is_err() {
                    continue;
                }
                let upstream = Arc::new(upstream);
                sessions
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(client, upstream.clone());
                let (listener, sessions) = (socket.clone(), sessions.clone());
                let relay = upstream.clone();
                tokio::spawn(async move {
                    replies(relay, listener, client, sessions).await;
                    drop(permit);
                });
                upstream
            }
        };
        let _ = upstream.send(&buffer[..n]).await;
    }
}

/// Passes a UDP client's replies back until it has been idle for [`UDP_IDLE`].
async fn replies(
    upstream: Arc<UdpSocket>,
    listener: Arc<UdpSocket>,
    client: SocketAddr,
    sessions: Arc<Mutex<HashMap<SocketAddr, Arc<UdpSocket>>>>,
) {
    let mut buffer = vec![0u8; 65_536];
    while let Ok(Ok(n)) = tokio::time::timeout(UDP_IDLE, upstream.recv(&mut buffer)).await {
        let _ = listener.send_to(&buffer[..n], client).await;
    }
    sessions
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .remove(&client);
}
