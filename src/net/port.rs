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
        for bad in ["", "0", "70000", "tcp:", "sctp:80", "80:", "a:b", "1:2:3"] {
            let err = PortForward::parse(bad).expect_err(bad);
            assert!(err.contains("give [tcp:|udp:]HOSTPORT"), "{err}");
        }
    }
}
