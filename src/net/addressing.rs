//! berth's address pool and the names and MACs of a machine's links, all derived from the
//! machine (its name and UID range), so they are the same at every start.
//!
//! - IPv4: 10.89.0.0/16; the host's bridge is 10.89.0.1, machine number N (its UID range's
//!   index, 0 for the first range) is 10.89.0.0 + N + 2.
//! - IPv6: fd89:6265:7274::/64 ("berth" in the ULA); the bridge is ::1, machine N is ::N+2.

use std::net::{Ipv4Addr, Ipv6Addr};

use sha2::{Digest, Sha256};

use crate::machine::{FIRST_BASE, RANGE_SIZE, UidRange};

/// The host's bridge for private machines.
pub const BRIDGE: &str = "berth0";
pub const IPV4_NETWORK: Ipv4Addr = Ipv4Addr::new(10, 89, 0, 0);
pub const IPV4_PREFIX: u8 = 16;
pub const IPV4_GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 89, 0, 1);
pub const IPV6_NETWORK: Ipv6Addr = Ipv6Addr::new(0xfd89, 0x6265, 0x7274, 0, 0, 0, 0, 0);
pub const IPV6_PREFIX: u8 = 64;
pub const IPV6_GATEWAY: Ipv6Addr = Ipv6Addr::new(0xfd89, 0x6265, 0x7274, 0, 0, 0, 0, 1);
/// The name of a machine's end of its veth pair, as systemd-nspawn names it.
pub const GUEST_LINK: &str = "host0";

/// What a private machine's links are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineAddresses {
    pub host_link: String,
    pub mac: [u8; 6],
    pub ipv4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
}

impl MachineAddresses {
    pub fn of(name: &str, uid_range: UidRange) -> Self {
        let number = (uid_range.base - FIRST_BASE) / RANGE_SIZE + 2;
        let [_, _, high, low] = number.to_be_bytes();
        let network = IPV4_NETWORK.octets();
        Self {
            host_link: host_link_name(name),
            mac: mac_of(name),
            ipv4: Ipv4Addr::new(network[0], network[1], high, low),
            ipv6: Ipv6Addr::from(u128::from(IPV6_NETWORK) | u128::from(number)),
        }
    }

    /// `aa:bb:…`, as `ip link` shows it.
    pub fn mac_text(&self) -> String {
        self.mac
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    }
}

/// `ve-NAME`, cut to the kernel's 15 characters with a hash of the whole name when longer (as
/// systemd-nspawn does), so two long names never share a link name.
pub fn host_link_name(name: &str) -> String {
    let full = format!("ve-{name}");
    if full.len() <= 15 {
        return full;
    }
    let hash = Sha256::digest(name.as_bytes());
    let prefix: String = name.chars().take(7).collect();
    format!("ve-{prefix}{:02x}{:02x}", hash[0], hash[1])
        .chars()
        .take(15)
        .collect()
}

/// A locally administered unicast MAC derived from the machine's name.
pub fn mac_of(name: &str) -> [u8; 6] {
    let hash = Sha256::digest(format!("berth veth {name}").as_bytes());
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&hash[..6]);
    mac[0] = (mac[0] & 0xfe) | 0x02;
    mac
}

/// A valid Linux interface name: 1-15 bytes, no '/', ':', blanks, and not '.' or '..'.
pub fn is_interface_name(name: &str) -> bool {
    (1..=15).contains(&name.len())
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_follow_the_uid_range() {
        let first = MachineAddresses::of("web", UidRange { base: 524_288 });
        assert_eq!(first.ipv4, Ipv4Addr::new(10, 89, 0, 2));
        assert_eq!(first.ipv6.to_string(), "fd89:6265:7274::2");
        let later = MachineAddresses::of(
            "db",
            UidRange {
                base: 524_288 + 300 * 65_536,
            },
        );
        assert_eq!(later.ipv4, Ipv4Addr::new(10, 89, 1, 46));
        assert_eq!(later.ipv6.to_string(), "fd89:6265:7274::12e");
        assert_eq!(first.host_link, "ve-web");
    }

    #[test]
    fn macs_are_stable_local_unicast() {
        let mac = mac_of("web");
        assert_eq!(mac, mac_of("web"));
        assert_ne!(mac, mac_of("web2"));
        assert_eq!(mac[0] & 0x03, 0x02);
    }

    #[test]
    fn long_names_get_distinct_short_links() {
        let a = host_link_name("averyveryverylongname-a");
        let b = host_link_name("averyveryverylongname-b");
        assert!(a.len() <= 15 && b.len() <= 15, "{a} {b}");
        assert_ne!(a, b);
        assert!(a.starts_with("ve-averyve"), "{a}");
        assert!(is_interface_name(&a));
        assert!(!is_interface_name("a b") && !is_interface_name("") && !is_interface_name(".."));
    }
}
