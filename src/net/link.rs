//! Links, addresses and routes over rtnetlink: the host's bridge `berth0`, a machine's veth
//! pair, and the configuration of its end inside the machine's network namespace.

use std::net::IpAddr;
use std::os::fd::AsFd;

use futures_util::TryStreamExt;
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags};
use rtnetlink::packet_route::link::{InfoData, InfoVeth};
use rtnetlink::{
    Handle, LinkBridge, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder,
};

use super::NetError;
use super::addressing::{self, GUEST_LINK, MachineAddresses};

/// EEXIST, which adding an address or route that is already there answers.
const EXISTS: i32 = -libc::EEXIST;

/// An rtnetlink connection, bound to the network namespace it was opened in.
#[derive(Debug)]
pub struct Netlink {
    handle: Handle,
}

impl Netlink {
    /// A connection in berthd's own (the host's) network namespace.
    pub fn host() -> Result<Self, NetError> {
        let (connection, handle, _) =
            rtnetlink::new_connection().map_err(NetError::io("opening an rtnetlink socket"))?;
        tokio::spawn(connection);
        Ok(Self { handle })
    }

    /// A connection inside the network namespace of process `pid` (a machine's PID 1): the
    /// socket is made by a thread that entered that namespace, and stays in it.
    pub fn in_namespace_of(pid: i32) -> Result<Self, NetError> {
        let runtime = tokio::runtime::Handle::current();
        let context = format!("entering the network namespace of PID {pid}");
        let made = std::thread::spawn(move || {
            let _entered = runtime.enter();
            let namespace = std::fs::File::open(format!("/proc/{pid}/ns/net"))?;
            nix::sched::setns(namespace.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)?;
            rtnetlink::new_connection()
        })
        .join()
        .map_err(|_| NetError::netlink(&context, "the thread panicked"))?;
        let (connection, handle, _) = made.map_err(NetError::io(context))?;
        tokio::spawn(connection);
        Ok(Self { handle })
    }

    /// The index of link `name`, if there is one.
    pub async fn index_of(&self, name: &str) -> Result<Option<u32>, NetError> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.to_owned())
            .execute();
        match links.try_next().await {
            Ok(link) => Ok(link.map(|l| l.header.index)),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
            Err(e) => Err(NetError::netlink(format!("looking up link {name}"), e)),
        }
    }

    /// berth's bridge, made (with the pool's gateway addresses) when missing; its index.
    pub async fn ensure_bridge(&self) -> Result<u32, NetError> {
        let bridge = addressing::BRIDGE;
        let index = match self.index_of(bridge).await? {
            Some(index) => index,
            None => {
                match self
                    .handle
                    .link()
                    .add(LinkBridge::new(bridge).build())
                    .execute()
                    .await
                {
                    Ok(()) => {}
                    Err(e) if code(&e) == Some(EXISTS) => {}
                    Err(e) => return Err(NetError::netlink(format!("creating {bridge}"), e)),
                }
                self.index_of(bridge)
                    .await?
                    .ok_or_else(|| NetError::netlink(bridge, "gone right after it was made"))?
            }
        };
        self.add_address(
            index,
            IpAddr::V4(addressing::IPV4_GATEWAY),
            addressing::IPV4_PREFIX,
        )
        .await?;
        self.add_address(
            index,
            IpAddr::V6(addressing::IPV6_GATEWAY),
            addressing::IPV6_PREFIX,
        )
        .await?;
        self.set_up(index, bridge).await?;
        Ok(index)
    }

    /// Creates the veth pair of a machine: `host_link` here, a port of bridge `controller`,
    /// and `host0` (with `mac`) in the network namespace of `pid`.
    pub async fn add_veth(
        &self,
        host_link: &str,
        mac: [u8; 6],
        pid: i32,
        controller: u32,
    ) -> Result<(), NetError> {
        let pid = u32::try_from(pid).map_err(|_| NetError::netlink(host_link, "bad PID"))?;
        let peer = LinkMessageBuilder::<LinkUnspec>::new()
            .name(GUEST_LINK.to_owned())
            .address(mac.to_vec())
            .setns_by_pid(pid)
            .build();
        let message = LinkVeth::new(host_link, GUEST_LINK)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
            .controller(controller)
            .up()
            .build();
        self.handle
            .link()
            .add(message)
            .execute()
            .await
            .map_err(|e| NetError::netlink(format!("creating the veth pair {host_link}"), e))
    }

    /// Inside a machine: loopback up; with `addresses`, `host0` up with them and default
    /// routes through the bridge.
    pub async fn configure_guest(
        &self,
        addresses: Option<&MachineAddresses>,
    ) -> Result<(), NetError> {
        let lo = self
            .index_of("lo")
            .await?
            .ok_or_else(|| NetError::netlink("lo", "the machine has no loopback link"))?;
        self.set_up(lo, "lo").await?;
        let Some(addresses) = addresses else {
            return Ok(());
        };
        let host0 = self
            .index_of(GUEST_LINK)
            .await?
            .ok_or_else(|| NetError::netlink(GUEST_LINK, "missing in the machine"))?;
        self.add_address(host0, IpAddr::V4(addresses.ipv4), addressing::IPV4_PREFIX)
            .await?;
        self.add_address(host0, IpAddr::V6(addresses.ipv6), addressing::IPV6_PREFIX)
            .await?;
        self.set_up(host0, GUEST_LINK).await?;
        let v4 = RouteMessageBuilder::<std::net::Ipv4Addr>::new()
            .output_interface(host0)
            .gateway(addressing::IPV4_GATEWAY)
            .build();
        self.add_route(v4, "the IPv4 default route").await?;
        let v6 = RouteMessageBuilder::<std::net::Ipv6Addr>::new()
            .output_interface(host0)
            .gateway(addressing::IPV6_GATEWAY)
            .build();
        self.add_route(v6, "the IPv6 default route").await
    }

    /// Brings up a machine's own end (`host0`) without addresses: `--network bridge=BR`,
    /// where the guest configures it (DHCP from the admin's network).
    pub async fn guest_link_up(&self) -> Result<(), NetError> {
        let host0 = self
            .index_of(GUEST_LINK)
            .await?
            .ok_or_else(|| NetError::netlink(GUEST_LINK, "missing in the machine"))?;
        self.set_up(host0, GUEST_LINK).await
    }

    async fn set_up(&self, index: u32, name: &str) -> Result<(), NetError> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(|e| NetError::netlink(format!("bringing {name} up"), e))
    }

    /// Adds an address (no duplicate address detection: berth's pool has no duplicates, and
    /// the address works at once); one already there is fine.
    async fn add_address(&self, index: u32, address: IpAddr, prefix: u8) -> Result<(), NetError> {
        let mut request = self.handle.address().add(index, address, prefix);
        if address.is_ipv6() {
            request
                .message_mut()
                .attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        match request.execute().await {
            Ok(()) => Ok(()),
            Err(e) if code(&e) == Some(EXISTS) => Ok(()),
            Err(e) => Err(NetError::netlink(format!("adding address {address}"), e)),
        }
    }

    async fn add_route(
        &self,
        route: rtnetlink::packet_route::route::RouteMessage,
        what: &str,
    ) -> Result<(), NetError> {
        match self.handle.route().add(route).execute().await {
            Ok(()) => Ok(()),
            Err(e) if code(&e) == Some(EXISTS) => Ok(()),
            Err(e) => Err(NetError::netlink(format!("adding {what}"), e)),
        }
    }
}

/// The errno (negative) a netlink request failed with.
fn code(error: &rtnetlink::Error) -> Option<i32> {
    match error {
        rtnetlink::Error::NetlinkError(e) => Some(e.raw_code()),
        _ => None,
    }
}
