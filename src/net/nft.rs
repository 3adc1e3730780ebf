//! berth's nftables table, `inet berth`: the only rules berth makes, all in one place
//! (`nft list table inet berth` shows them).
//!
//! ```text
//! table inet berth {
//!     set masquerade4 { type ipv4_addr; }      # private machines that masquerade
//!     set masquerade6 { type ipv6_addr; }
//!     chain postrouting {
//!         type nat hook postrouting priority srcnat;
//!         ip saddr @masquerade4 oifname != "berth0" masquerade
//!         ip6 saddr @masquerade6 oifname != "berth0" masquerade
//!     }
//!     chain forward {                           # lets machines' traffic through
//!         type filter hook forward priority filter;
//!         iifname "berth0" accept
//!         oifname "berth0" ct state established,related accept
//!     }
//! }
//! ```
//!
//! A machine's rules are elements of the sets, added when it starts and deleted when it
//! stops; berthd rewrites the whole table from the running machines when it starts, so a
//! crash leaves nothing stale for long. Scripts go to `nft -f -`, which applies each
//! atomically.

use std::io::Write;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::process::{Command, Stdio};

use super::NetError;
use super::addressing::BRIDGE;

pub const TABLE: &str = "inet berth";

/// The table as it should be with `machines` (IPv4 and IPv6 addresses of the masquerading
/// private machines), replacing whatever berth had before.
pub fn table_script(machines: &[(Ipv4Addr, Ipv6Addr)]) -> String {
    let v4: Vec<String> = machines.iter().map(|(a, _)| a.to_string()).collect();
    let v6: Vec<String> = machines.iter().map(|(_, a)| a.to_string()).collect();
    let elements = |list: &[String]| {
        if list.is_empty() {
            String::new()
        } else {
            format!(" elements = {{ {} }};", list.join(", "))
        }
    };
    format!(
        "table {TABLE} {{}}\n\
         delete table {TABLE}\n\
         table {TABLE} {{\n\
         \tset masquerade4 {{ type ipv4_addr;{} }}\n\
         \tset masquerade6 {{ type ipv6_addr;{} }}\n\
         \tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\tip saddr @masquerade4 oifname != \"{BRIDGE}\" masquerade\n\
         \t\tip6 saddr @masquerade6 oifname != \"{BRIDGE}\" masquerade\n\
         \t}}\n\
         \tchain forward {{\n\
         \t\ttype filter hook forward priority filter; policy accept;\n\
         \t\tiifname \"{BRIDGE}\" accept\n\
         \t\toifname \"{BRIDGE}\" ct state established,related accept\n\
         \t}}\n\
         }}\n",
        elements(&v4),
        elements(&v6),
    )
}

/// Writes the whole table (see [`table_script`]).
pub fn write_table(machines: &[(Ipv4Addr, Ipv6Addr)]) -> Result<(), NetError> {
    run(&table_script(machines))
}

/// Makes the table when berth has none yet (keeping a table that is there as it is).
pub fn ensure_table() -> Result<(), NetError> {
    let listed = Command::new("nft")
        .args(["list", "table", "inet", "berth"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(nft_missing)?;
    if listed.success() {
        return Ok(());
    }
    write_table(&[])
}

/// Adds (or with `add == false` deletes) a machine's addresses to the masquerading sets.
pub fn masquerade(ipv4: Ipv4Addr, ipv6: Ipv6Addr, add: bool) -> Result<(), NetError> {
    let verb = if add { "add" } else { "delete" };
    run(&format!(
        "{verb} element {TABLE} masquerade4 {{ {ipv4} }}\n\
         {verb} element {TABLE} masquerade6 {{ {ipv6} }}\n"
    ))
}

fn run(script: &str) -> Result<(), NetError> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(nft_missing)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|e| NetError::Nft(format!("writing to nft: {e}")))?;
    }
    let output = child
        .wait_with_output()
        .map_err(|e| NetError::Nft(format!("running nft: {e}")))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(NetError::Nft(
            String::from_utf8_lossy(&output.stderr)
                .lines()
                .find(|l| l.starts_with("Error") || l.contains("rror"))
                .unwrap_or("nft failed")
                .trim()
                .to_owned(),
        ))
    }
}

fn nft_missing(e: std::io::Error) -> NetError {
    NetError::Nft(format!(
        "cannot run nft ({e}); install the nftables package for private networks"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_lists_the_masquerading_machines() {
        let script = table_script(&[(
            Ipv4Addr::new(10, 89, 0, 2),
            "fd89:6265:7274::2".parse().expect("v6"),
        )]);
        assert!(script.starts_with("table inet berth {}\ndelete table inet berth\n"));
        assert!(script.contains("set masquerade4 { type ipv4_addr; elements = { 10.89.0.2 }; }"));
        assert!(script.contains("elements = { fd89:6265:7274::2 }"));
        assert!(script.contains("ip saddr @masquerade4 oifname != \"berth0\" masquerade"));
        let empty = table_script(&[]);
        assert!(empty.contains("set masquerade6 { type ipv6_addr; }"));
    }
}
