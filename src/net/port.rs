//! `--port [tcp:|udp:]HOSTPORT[:MACHINEPORT]`: a port of the host forwarded to a private
//! machine.

use std::fmt;

/// TCP or UDP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        }
    }
}

/// One forwarded port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortForward {
    pub protocol: Protocol,
    pub host_port: u16,
    pub machine_port: u16,
}

impl PortForward {
    /// Whether both forward the same host port (and protocol).
    pub fn clashes(&self, other: &Self) -> bool {
        self.protocol == other.protocol && self.host_port == other.host_port
    }

    /// Parses `[tcp:|udp:]HOSTPORT[:MACHINEPORT]` (the machine's port defaults to the host's).
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = |why: &str| {
            format!(
                "port '{text}' {why}: give [tcp:|udp:]HOSTPORT[:MACHINEPORT], e.g. --port 8080:80"
            )
        };
        let (protocol, rest) = match text.split_once(':') {
            Some(("tcp", rest)) => (Protocol::Tcp, rest),
            Some(("udp", rest)) => (Protocol::Udp, rest),
            _ => (Protocol::Tcp, text),
        };
        let number = |part: &str| match part.parse::<u16>() {
            // (u16's parser takes a leading '+'.)
            _ if !part.bytes().all(|b| b.is_ascii_digit()) => Err(bad("is not valid")),
            Ok(0) | Err(_) => Err(bad("is not valid")),
            Ok(port) => Ok(port),
        };
        let (host_port, machine_port) = match rest.split_once(':') {
            Some((host, machine)) => (number(host)?, number(machine)?),
            None => {
                let port = number(rest)?;
                (port, port)
            }
        };
        Ok(Self {
            protocol,
            host_port,
            machine_port,
        })
    }
}

/// Fails when a socket of the host has this forward's host port on IPv4 (a TCP listener, or a
/// bound UDP socket): the forward's DNAT would take its traffic away from it silently. Tried
/// by binding the port on 0.0.0.0 for a moment (a TCP socket in TIME_WAIT doesn't count).
pub fn check_host_port_free(forward: &PortForward) -> Result<(), super::NetError> {
    let address = (std::net::Ipv4Addr::UNSPECIFIED, forward.host_port);
    let bound = match forward.protocol {
        Protocol::Tcp => std::net::TcpListener::bind(address).map(drop),
        Protocol::Udp => std::net::UdpSocket::bind(address).map(drop),
    };
    match bound {
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            Err(super::NetError::PortInUse(*forward))
        }
        // Anything else (no IPv4 at all, say) is for the forward itself to meet.
        _ => Ok(()),
    }
}

impl fmt::Display for PortForward {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}",
            self.protocol.as_str(),
            self.host_port,
            self.machine_port
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_parse() {
        let p = |t: &str| PortForward::parse(t).expect(t).to_string();
        assert_eq!(p("8080:80"), "tcp:8080:80");
        assert_eq!(p("udp:53"), "udp:53:53");
        assert_eq!(p("tcp:443:8443"), "tcp:443:8443");
        for bad in [
            "", "0", "70000", "tcp:", "sctp:80", "80:", "a:b", "1:2:3", "+80", "80:+80",
        ] {
            let err = PortForward::parse(bad).expect_err(bad);
            assert!(err.contains("give [tcp:|udp:]HOSTPORT"), "{err}");
        }
    }

    #[test]
    fn a_port_in_use_on_the_host_is_found() {
        let listener = std::net::TcpListener::bind("0.0.0.0:0").expect("listen");
        let port = listener.local_addr().expect("address").port();
        let forward = PortForward::parse(&port.to_string()).expect("forward");
        let err = check_host_port_free(&forward).expect_err("in use");
        assert!(
            err.to_string().contains(&format!("host port {port}/tcp")),
            "{err}"
        );
        drop(listener);
        check_host_port_free(&forward).expect("free again");
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
        let port = socket.local_addr().expect("address").port();
        let forward = PortForward::parse(&format!("udp:{port}")).expect("forward");
        check_host_port_free(&forward).expect_err("udp in use on 127.0.0.1");
    }
}
