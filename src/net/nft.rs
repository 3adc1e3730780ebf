//! berth's nftables table, `inet berth`: the only rules berth makes, all in one place
//! (`nft list table inet berth` shows them; README § Networking explains each).
//!
//! A machine's part is elements of the table's sets and maps: its addresses in the
//! masquerading sets, its forwarded ports in the `tcp4`/`udp4` maps (host port → machine
//! address . port), added when it starts and deleted when it stops. berthd rewrites the whole
//! table from the running machines when it starts, so nothing stale stays. Scripts go to
//! `nft -f -`, which applies each atomically.

use std::io::Write;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::process::Stdio;

use super::NetError;
use super::addressing::{BRIDGE, IPV4_GATEWAY, IPV4_NETWORK, IPV4_PREFIX, IPV6_GATEWAY};
use super::port::{PortForward, Protocol};

pub const TABLE: &str = "inet berth";

/// What the table holds for one running private machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineRules {
    pub ipv4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
    pub masquerade: bool,
    pub ports: Vec<PortForward>,
}

impl MachineRules {
    fn masquerade4(&self) -> Option<String> {
        self.masquerade.then(|| self.ipv4.to_string())
    }

    fn masquerade6(&self) -> Option<String> {
        self.masquerade.then(|| self.ipv6.to_string())
    }

    /// `HOSTPORT : ADDRESS . PORT` of the map for `protocol`.
    fn forwards(&self, protocol: Protocol) -> Vec<String> {
        self.ports
            .iter()
            .filter(|p| p.protocol == protocol)
            .map(|p| format!("{} : {} . {}", p.host_port, self.ipv4, p.machine_port))
            .collect()
    }
}

/// The table as it should be with `machines` running, replacing whatever berth had before.
pub fn table_script(machines: &[MachineRules]) -> String {
    let elements = |list: Vec<String>| {
        if list.is_empty() {
            String::new()
        } else {
            format!(" elements = {{ {} }};", list.join(", "))
        }
    };
    let masquerade4 = elements(
        machines
            .iter()
            .filter_map(MachineRules::masquerade4)
            .collect(),
    );
    let masquerade6 = elements(
        machines
            .iter()
            .filter_map(MachineRules::masquerade6)
            .collect(),
    );
    let tcp4 = elements(
        machines
            .iter()
            .flat_map(|m| m.forwards(Protocol::Tcp))
            .collect(),
    );
    let udp4 = elements(
        machines
            .iter()
            .flat_map(|m| m.forwards(Protocol::Udp))
            .collect(),
    );
    let pool = format!("{IPV4_NETWORK}/{IPV4_PREFIX}");
    let dnat = "\t\tfib daddr type local dnat ip addr . port to tcp dport map @tcp4\n\
                \t\tfib daddr type local dnat ip addr . port to udp dport map @udp4\n";
    format!(
        "table {TABLE} {{}}\n\
         delete table {TABLE}\n\
         table {TABLE} {{\n\
         \tset masquerade4 {{ type ipv4_addr;{masquerade4} }}\n\
         \tset masquerade6 {{ type ipv6_addr;{masquerade6} }}\n\
         \tmap tcp4 {{ type inet_service : ipv4_addr . inet_service;{tcp4} }}\n\
         \tmap udp4 {{ type inet_service : ipv4_addr . inet_service;{udp4} }}\n\
         \tchain prerouting {{\n\
         \t\ttype nat hook prerouting priority dstnat; policy accept;\n\
         {dnat}\
         \t}}\n\
         \tchain output {{\n\
         \t\ttype nat hook output priority -100; policy accept;\n\
         {dnat}\
         \t}}\n\
         \tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\tip saddr @masquerade4 oifname != \"{BRIDGE}\" masquerade\n\
         \t\tip6 saddr @masquerade6 oifname != \"{BRIDGE}\" masquerade\n\
         \t\toifname \"{BRIDGE}\" ip saddr 127.0.0.0/8 masquerade\n\
         \t\toifname \"{BRIDGE}\" ip saddr {pool} ct status dnat masquerade\n\
         \t}}\n\
         \tchain forward {{\n\
         \t\ttype filter hook forward priority filter; policy accept;\n\
         \t\tiifname \"{BRIDGE}\" accept\n\
         \t\toifname \"{BRIDGE}\" ct state established,related accept\n\
         \t\toifname \"{BRIDGE}\" ct status dnat accept\n\
         \t\toifname \"{BRIDGE}\" drop\n\
         \t}}\n\
         \tchain input {{\n\
         \t\ttype filter hook input priority filter; policy accept;\n\
         \t\tiifname \"{BRIDGE}\" ip daddr 127.0.0.0/8 ct state != {{ established, related }} drop\n\
         \t\tiifname != {{ \"lo\", \"{BRIDGE}\" }} ip daddr {IPV4_GATEWAY} meta l4proto {{ tcp, udp }} th dport 53 drop\n\
         \t\tiifname != {{ \"lo\", \"{BRIDGE}\" }} ip6 daddr {IPV6_GATEWAY} meta l4proto {{ tcp, udp }} th dport 53 drop\n\
         \t}}\n\
         }}\n"
    )
}

/// Adds (`add`) or deletes a running machine's elements.
pub fn machine_script(rules: &MachineRules, add: bool) -> String {
    let verb = if add { "add" } else { "delete" };
    let mut script = String::new();
    if let (Some(v4), Some(v6)) = (rules.masquerade4(), rules.masquerade6()) {
        script.push_str(&format!("{verb} element {TABLE} masquerade4 {{ {v4} }}\n"));
        script.push_str(&format!("{verb} element {TABLE} masquerade6 {{ {v6} }}\n"));
    }
    for (protocol, map) in [(Protocol::Tcp, "tcp4"), (Protocol::Udp, "udp4")] {
        let entries: Vec<String> = if add {
            rules.forwards(protocol)
        } else {
            rules
                .ports
                .iter()
                .filter(|p| p.protocol == protocol)
                .map(|p| p.host_port.to_string())
                .collect()
        };
        if !entries.is_empty() {
            script.push_str(&format!(
                "{verb} element {TABLE} {map} {{ {} }}\n",
                entries.join(", ")
            ));
        }
    }
    script
}

/// Writes the whole table (see [`table_script`]).
pub fn write_table(machines: &[MachineRules]) -> Result<(), NetError> {
    run(&table_script(machines))
}

/// Whether berth's table exists.
pub fn has_table() -> bool {
    crate::sys::process::command("nft")
        .args(["list", "table", "inet", "berth"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Makes the table when berth has none yet (keeping a table that is there as it is).
pub fn ensure_table() -> Result<(), NetError> {
    if has_table() {
        return Ok(());
    }
    write_table(&[])
}

/// Adds or deletes a machine's elements.
pub fn apply_machine(rules: &MachineRules, add: bool) -> Result<(), NetError> {
    let script = machine_script(rules, add);
    if script.is_empty() {
        return Ok(());
    }
    run(&script)
}

fn run(script: &str) -> Result<(), NetError> {
    let mut child = crate::sys::process::command("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            NetError::Nft(format!(
                "cannot run nft ({e}); install the nftables package for private networks"
            ))
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|e| NetError::Nft(format!("writing to nft: {e}")))?;
    }
    let output = child
        .wait_with_output()
        .map_err(|e| NetError::Nft(format!("running nft: {e}")))?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let first = stderr
        .lines()
        .find(|l| l.contains("Error"))
        .unwrap_or("nft failed")
        .trim()
        .to_owned();
    Err(NetError::Nft(first))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn web() -> MachineRules {
        MachineRules {
            ipv4: Ipv4Addr::new(10, 89, 0, 2),
            ipv6: "fd89:6265:7274::2".parse().expect("v6"),
            masquerade: true,
            ports: vec![
                PortForward::parse("8080:80").expect("tcp"),
                PortForward::parse("udp:5353:53").expect("udp"),
            ],
        }
    }

    #[test]
    fn the_table_holds_the_running_machines() {
        let script = table_script(&[web()]);
        assert!(script.starts_with("table inet berth {}\ndelete table inet berth\n"));
        assert!(script.contains("set masquerade4 { type ipv4_addr; elements = { 10.89.0.2 }; }"));
        assert!(script.contains("elements = { fd89:6265:7274::2 }"));
        assert!(script.contains(
            "map tcp4 { type inet_service : ipv4_addr . inet_service; elements = { 8080 : 10.89.0.2 . 80 }; }"
        ));
        assert!(script.contains("elements = { 5353 : 10.89.0.2 . 53 }"));
        assert!(script.contains("ip saddr @masquerade4 oifname != \"berth0\" masquerade"));
        // Only forwarded connections (and replies) go into berth0 from elsewhere; nothing
        // from berth0 reaches the host's 127.0.0.1; no one outside gets berthd's DNS.
        assert!(
            script.contains(
                "oifname \"berth0\" ct status dnat accept\n\t\toifname \"berth0\" drop\n"
            )
        );
        assert!(script.contains(
            "iifname \"berth0\" ip daddr 127.0.0.0/8 ct state != { established, related } drop"
        ));
        assert!(script.contains(
            "iifname != { \"lo\", \"berth0\" } ip daddr 10.89.0.1 meta l4proto { tcp, udp } th dport 53 drop"
        ));
        assert!(
            script
                .contains("ip6 daddr fd89:6265:7274::1 meta l4proto { tcp, udp } th dport 53 drop")
        );
        let empty = table_script(&[]);
        assert!(empty.contains("set masquerade6 { type ipv6_addr; }"));
        assert!(empty.contains("map udp4 { type inet_service : ipv4_addr . inet_service; }"));
    }

    #[test]
    fn a_machines_elements_come_and_go() {
        assert_eq!(
            machine_script(&web(), true),
            "add element inet berth masquerade4 { 10.89.0.2 }\n\
             add element inet berth masquerade6 { fd89:6265:7274::2 }\n\
             add element inet berth tcp4 { 8080 : 10.89.0.2 . 80 }\n\
             add element inet berth udp4 { 5353 : 10.89.0.2 . 53 }\n"
        );
        let quiet = MachineRules {
            masquerade: false,
            ports: Vec::new(),
            ..web()
        };
        assert_eq!(machine_script(&quiet, false), "");
        assert!(machine_script(&web(), false).contains("delete element inet berth tcp4 { 8080 }"));
    }
}
