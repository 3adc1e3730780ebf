//! Machine networking: the modes a machine's network can have, the addresses berth gives
//! private machines, the host bridge `berth0` they share, masquerading through nftables, and
//! the DNS server on the bridge that resolves machine names.
//!
//! A private machine gets a veth pair: `ve-NAME` on the host (a port of `berth0`) and
//! `host0` inside, with a MAC derived from the machine's name, an IPv4 address from
//! 10.89.0.0/16 and an IPv6 address from fd89:6265:7274::/64, both derived from its UID
//! range, so stable for the machine's life. The links go away with the machine's network
//! namespace, however the machine ends.

pub mod addressing;
pub mod dns;
pub mod link;
pub mod nft;
pub mod port;
pub mod proxy;

use std::fmt;

use thiserror::Error;

pub use addressing::MachineAddresses;
pub use port::{PortForward, Protocol};

/// How a machine is networked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Network {
    /// The host's own network namespace (as systemd-nspawn by default).
    Host,
    /// A network namespace of its own with only loopback.
    None,
    /// A veth pair to berth's bridge `berth0`, with addresses from berth's pool.
    Private,
    /// A veth pair to the admin's bridge BR; the guest configures its own addresses.
    Bridge(String),
}

#[derive(Debug, Error)]
pub enum NetError {
    #[error("network '{0}' is not host, none, private or bridge=BRIDGE (e.g. --network private)")]
    BadMode(String),
    #[error("bridge '{0}' does not exist on the host; create it first, or use --network private")]
    NoBridge(String),
    #[error("{context}: {message}")]
    Netlink { context: String, message: String },
    #[error("nftables: {0}")]
    Nft(String),
    #[error(
        "host port {port}/{protocol} is in use by a service of the host ('ss -lntup sport = \
         :{port}' shows which), and the forward would take its traffic away; stop that \
         service, or forward another host port: --port {protocol}:OTHER:{machine}",
        port = .0.host_port, protocol = .0.protocol.as_str(), machine = .0.machine_port
    )]
    PortInUse(PortForward),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl NetError {
    pub(crate) fn netlink(context: impl Into<String>, error: impl fmt::Display) -> Self {
        Self::Netlink {
            context: context.into(),
            message: error.to_string(),
        }
    }

    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let context = context.into();
        move |source| Self::Io { context, source }
    }
}

impl Network {
    pub fn parse(text: &str) -> Result<Self, NetError> {
        match text {
            "" | "host" => Ok(Self::Host),
            "none" => Ok(Self::None),
            "private" => Ok(Self::Private),
            other => match other.strip_prefix("bridge=") {
                Some(bridge) if addressing::is_interface_name(bridge) => {
                    Ok(Self::Bridge(bridge.to_owned()))
                }
                _ => Err(NetError::BadMode(other.to_owned())),
            },
        }
    }

    /// Whether the machine gets a network namespace of its own.
    pub fn is_own_namespace(&self) -> bool {
        !matches!(self, Self::Host)
    }

    /// Whether the machine gets a veth pair.
    pub fn has_veth(&self) -> bool {
        matches!(self, Self::Private | Self::Bridge(_))
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Host => f.write_str("host"),
            Self::None => f.write_str("none"),
            Self::Private => f.write_str("private"),
            Self::Bridge(bridge) => write!(f, "bridge={bridge}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_and_print_back() {
        for text in ["host", "none", "private", "bridge=br0"] {
            assert_eq!(Network::parse(text).expect(text).to_string(), text);
        }
        assert_eq!(Network::parse("").expect("default"), Network::Host);
        for bad in [
            "bridged",
            "bridge=",
            "bridge=a/b",
            "bridge=waytoolongname00",
        ] {
            let err = Network::parse(bad).expect_err(bad).to_string();
            assert!(err.contains("is not host, none, private"), "{err}");
        }
    }
}
