//! A machine's network at start and stop, and berth's host side of it (the bridge, the
//! nftables table, the DNS server), made the first time a private machine starts.

use std::sync::Arc;

use tokio::sync::OnceCell;
use zbus::Connection;

use super::{Definition, MachineError, Machines};
use crate::net::link::Netlink;
use crate::net::{MachineAddresses, NetError, Network, addressing, dns, nft, proxy};

/// Set once berth's bridge, table and DNS server are up in this berthd.
static HOST_SIDE: OnceCell<()> = OnceCell::const_new();

/// The IPv4 and IPv6 address of a machine with a private network.
pub fn addresses(definition: &Definition) -> Option<MachineAddresses> {
    (definition.network == Network::Private)
        .then(|| MachineAddresses::of(&definition.name, definition.uid_range))
}

/// What berth's nftables table holds for a private machine while it runs.
pub fn rules(definition: &Definition) -> Option<nft::MachineRules> {
    addresses(definition).map(|a| nft::MachineRules {
        ipv4: a.ipv4,
        ipv6: a.ipv6,
        masquerade: definition.masquerade,
        ports: definition.ports.clone(),
    })
}

async fn nft_blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, NetError> + Send + 'static,
) -> Result<T, NetError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| NetError::Nft(e.to_string()))?
}

/// The bridge `berth0` with its addresses, IPv4 forwarding, berth's nftables table and the
/// DNS server for machine names; each made once (and again after a failure).
async fn prepare_host(machines: &Machines) -> Result<(), MachineError> {
    let machines = machines.clone();
    HOST_SIDE
        .get_or_try_init(|| async move {
            Netlink::host()?.ensure_bridge().await?;
            // Masquerading and forwarding to machines need the host to route IPv4. (IPv6
            // forwarding is left to the admin: turning it on stops the host from accepting
            // router advertisements.)
            std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
                .map_err(NetError::io("turning on IPv4 forwarding"))?;
            // Forwards from the host's own 127.0.0.1 are routed to the bridge.
            std::fs::write(
                format!(
                    "/proc/sys/net/ipv4/conf/{}/route_localnet",
                    addressing::BRIDGE
                ),
                "1",
            )
            .map_err(NetError::io(
                "allowing forwards from localhost (route_localnet)",
            ))?;
            nft_blocking(nft::ensure_table).await?;
            // DNS names are case-insensitive (queries come lowercased); machine names are
            // not, so `Web` is found as `web` too.
            let resolver: dns::Resolver = Arc::new(move |name: &str| {
                let definition = machines.get(name).ok().or_else(|| {
                    let all = machines.list().ok()?;
                    all.into_iter().find(|d| d.name.eq_ignore_ascii_case(name))
                })?;
                addresses(&definition).map(|a| (a.ipv4, a.ipv6))
            });
            dns::spawn(resolver).await;
            Ok::<(), MachineError>(())
        })
        .await
        .map(drop)
}

/// Sets up the network of a machine whose PID 1 (`pid`) waits in its namespaces: nothing for
/// the host's network; loopback for `none`; for a private machine the veth pair to
/// `berth0`, its addresses and routes inside, and its masquerading.
pub async fn attach(
    conn: &Connection,
    machines: &Machines,
    definition: &Definition,
    pid: i32,
) -> Result<(), MachineError> {
    let host_link = addressing::host_link_name(&definition.name);
    match &definition.network {
        Network::Host => Ok(()),
        Network::None => {
            Netlink::in_namespace_of(pid)?.configure_guest(None).await?;
            Ok(())
        }
        Network::Private => {
            for forward in &definition.ports {
                crate::net::port::check_host_port_free(forward)?;
            }
            prepare_host(machines).await?;
            let addresses = MachineAddresses::of(&definition.name, definition.uid_range);
            let host = Netlink::host()?;
            // Made by prepare_host; made again only if an admin deleted it since.
            let bridge = match host.index_of(addressing::BRIDGE).await? {
                Some(index) => index,
                None => host.ensure_bridge().await?,
            };
            host.add_veth(&host_link, addresses.mac, pid, bridge)
                .await?;
            Netlink::in_namespace_of(pid)?
                .configure_guest(Some(&addresses))
                .await?;
            if let Some(rules) = rules(definition) {
                let added = rules.clone();
                if let Err(e) = nft_blocking(move || nft::apply_machine(&added, true)).await {
                    if nft_blocking(|| Ok(nft::has_table())).await.unwrap_or(true) {
                        return Err(forward_conflict(machines, definition, e));
                    }
                    rewrite_flushed_table(conn, machines, rules.clone()).await?;
                }
                if let Err(e) = proxy::start(&definition.name, addresses.ipv6, &definition.ports) {
                    let _ = nft_blocking(move || nft::apply_machine(&rules, false)).await;
                    return Err(e.into());
                }
            }
            Ok(())
        }
        Network::Bridge(bridge) => {
            let host = Netlink::host()?;
            let index = host
                .index_of(bridge)
                .await?
                .ok_or_else(|| NetError::NoBridge(bridge.clone()))?;
            let mac = addressing::mac_of(&definition.name);
            host.add_veth(&host_link, mac, pid, index).await?;
            let guest = Netlink::in_namespace_of(pid)?;
            guest.configure_guest(None).await?;
            guest.guest_link_up().await?;
            Ok(())
        }
    }
}

/// berth's table after someone flushed the ruleset (nftables.service does at each start and
/// reload): written again with every private machine that runs now and `starting`, whose
/// elements it was about to add.
async fn rewrite_flushed_table(
    conn: &Connection,
    machines: &Machines,
    starting: nft::MachineRules,
) -> Result<(), MachineError> {
    tracing::warn!(
        "berth's nftables table is gone (the ruleset was flushed?); writing it again from the \
         running machines"
    );
    let definitions = machines.list_readable();
    let mut running: Vec<nft::MachineRules> = running_private(conn, &definitions)
        .await
        .into_iter()
        .map(|(_, rules, _)| rules)
        .collect();
    running.push(starting);
    Ok(nft_blocking(move || nft::write_table(&running)).await?)
}

/// An nftables refusal to add a forward another running machine has, said plainly.
fn forward_conflict(machines: &Machines, definition: &Definition, error: NetError) -> MachineError {
    let others = machines.list().unwrap_or_default();
    let clash = others
        .iter()
        .filter(|o| o.name != definition.name)
        .find_map(|o| {
            o.ports
                .iter()
                .find(|p| definition.ports.iter().any(|q| q.clashes(p)))
                .map(|p| (o.name.clone(), *p))
        });
    match clash {
        Some((other, port)) => MachineError::InvalidArgument(format!(
            "host port {}/{} is forwarded to machine '{other}', which runs; stop it first",
            port.host_port,
            port.protocol.as_str()
        )),
        None => error.into(),
    }
}

/// What a stopped machine leaves: its nftables elements and IPv6 relays (its links went with
/// its network namespace). Failures are logged; berthd's next start rewrites the table anyway.
pub fn detach(definition: &Definition) {
    proxy::stop(&definition.name);
    if let Some(rules) = rules(definition)
        && let Err(e) = nft::apply_machine(&rules, false)
    {
        tracing::warn!(name = %definition.name, "removing the machine's nftables elements: {e}");
    }
}

/// For a machine that ran before this berthd started: its elements go when its PID 1 ends.
async fn detach_when_gone(definition: Definition, leader: u32) {
    let pidfd = rustix::process::Pid::from_raw(i32::try_from(leader).unwrap_or(0))
        .and_then(|p| rustix::process::pidfd_open(p, rustix::process::PidfdFlags::NONBLOCK).ok());
    let Some(fd) = pidfd.and_then(|fd| crate::sys::process::register_async(fd).ok()) else {
        return;
    };
    if fd.readable().await.is_ok() {
        detach(&definition);
    }
}

/// The private machines among `definitions` that run now, with their PID 1s.
async fn running_private<'a>(
    conn: &Connection,
    definitions: &'a [Definition],
) -> Vec<(&'a Definition, nft::MachineRules, u32)> {
    let mut running = Vec::new();
    for definition in definitions {
        let Some(rules) = rules(definition) else {
            continue;
        };
        if let Ok(Some(machine)) = super::lifecycle::state(conn, &definition.name).await {
            running.push((definition, rules, machine.leader));
        }
    }
    running
}

/// At berthd's start: berth's table rewritten from the private machines that run now, so
/// nothing of machines that went away while berthd was down stays behind.
pub async fn restore(conn: &Connection, machines: &Machines, definitions: &[Definition]) {
    // No private machine, no table of berth's to mind (their definitions outlive them, so
    // one that ended while berthd was down is still listed here).
    if !definitions.iter().any(|d| d.network == Network::Private) {
        return;
    }
    let mut running: Vec<nft::MachineRules> = Vec::new();
    let mut relays = Vec::new();
    let private = running_private(conn, definitions).await;
    let private_running = !private.is_empty();
    for (definition, rules, leader) in private {
        tokio::spawn(detach_when_gone(definition.clone(), leader));
        relays.push((
            definition.name.clone(),
            rules.ipv6,
            definition.ports.clone(),
        ));
        running.push(rules);
    }
    if running.is_empty() && !nft::has_table() {
        return;
    }
    let written = tokio::task::spawn_blocking(move || nft::write_table(&running)).await;
    match written {
        Ok(Ok(())) => tracing::info!("berth's nftables table restored from the running machines"),
        Ok(Err(e)) => tracing::warn!("restoring berth's nftables table: {e}"),
        Err(e) => tracing::warn!("restoring berth's nftables table: {e}"),
    }
    // Running private machines need this berthd's DNS server (and the bridge) and relays.
    if private_running && let Err(e) = prepare_host(machines).await {
        tracing::warn!("preparing berth's network for private machines: {e}");
    }
    for (name, ipv6, ports) in relays {
        if let Err(e) = proxy::start(&name, ipv6, &ports) {
            tracing::warn!(%name, "restoring the machine's IPv6 forwards: {e}");
        }
    }
}
