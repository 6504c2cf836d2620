//! Thin helpers over rtnetlink: look links up by name, read their attributes,
//! and make "already there" / "already gone" answers count as success, which is
//! what keeps every operation of [`super::PodNetwork`] idempotent.

use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage};
use rtnetlink::{Handle, LinkUnspec};

use super::NetError;

fn errno(err: &rtnetlink::Error) -> Option<i32> {
    match err {
        rtnetlink::Error::NetlinkError(msg) => msg.to_io().raw_os_error(),
        _ => None,
    }
}

pub(crate) fn netlink_err(
    op: &'static str,
    target: impl Into<String>,
) -> impl FnOnce(rtnetlink::Error) -> NetError {
    let target = target.into();
    move |source| NetError::Netlink { op, target, source }
}

pub(crate) fn name_of(link: &LinkMessage) -> Option<&str> {
    link.attributes.iter().find_map(|attr| match attr {
        LinkAttribute::IfName(name) => Some(name.as_str()),
        _ => None,
    })
}

pub(crate) fn controller_of(link: &LinkMessage) -> Option<u32> {
    link.attributes.iter().find_map(|attr| match attr {
        LinkAttribute::Controller(index) => Some(*index),
        _ => None,
    })
}

/// For a veth: the index of its peer (in the peer's namespace).
pub(crate) fn peer_index_of(link: &LinkMessage) -> Option<u32> {
    link.attributes.iter().find_map(|attr| match attr {
        LinkAttribute::Link(index) => Some(*index),
        _ => None,
    })
}

pub(crate) fn is_bridge(link: &LinkMessage) -> bool {
    link.attributes.iter().any(|attr| match attr {
        LinkAttribute::LinkInfo(infos) => infos
            .iter()
            .any(|info| matches!(info, LinkInfo::Kind(InfoKind::Bridge))),
        _ => false,
    })
}

/// The link called `name`, or `None` when there is none.
pub(crate) async fn by_name(handle: &Handle, name: &str) -> Result<Option<LinkMessage>, NetError> {
    let mut links = handle.link().get().match_name(name).execute();
    match links.try_next().await {
        Ok(link) => Ok(link),
        Err(err) if errno(&err) == Some(libc::ENODEV) => Ok(None),
        Err(err) => Err(netlink_err("get link", name)(err)),
    }
}

/// Like [`by_name`], for links that must exist.
pub(crate) async fn index_of(handle: &Handle, name: &str) -> Result<u32, NetError> {
    match by_name(handle, name).await? {
        Some(link) => Ok(link.header.index),
        None => Err(NetError::LinkNotFound { name: name.into() }),
    }
}

pub(crate) async fn all(handle: &Handle) -> Result<Vec<LinkMessage>, NetError> {
    handle
        .link()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(netlink_err("list links", "all"))
}

/// Deletes the link called `name` if there is one.
pub(crate) async fn delete(handle: &Handle, name: &str) -> Result<(), NetError> {
    let Some(link) = by_name(handle, name).await? else {
        return Ok(());
    };
    match handle.link().del(link.header.index).execute().await {
        Ok(()) => Ok(()),
        // Gone in between: a veth also disappears with its peer.
        Err(err) if errno(&err) == Some(libc::ENODEV) => Ok(()),
        Err(err) => Err(netlink_err("delete link", name)(err)),
    }
}

pub(crate) async fn set_up(handle: &Handle, index: u32, name: &str) -> Result<(), NetError> {
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(netlink_err("set link up", name))
}

/// An IPv4 address on a link, with the message the kernel gave for it (which is
/// what deleting it takes).
pub(crate) struct V4Addr {
    pub ip: Ipv4Addr,
    pub prefix: u8,
    pub message: AddressMessage,
}

pub(crate) async fn ipv4_addrs(
    handle: &Handle,
    index: u32,
    name: &str,
) -> Result<Vec<V4Addr>, NetError> {
    let mut request = handle.address().get().set_link_index_filter(index);
    request.message_mut().header.family = AddressFamily::Inet;
    let messages: Vec<AddressMessage> = request
        .execute()
        .try_collect()
        .await
        .map_err(netlink_err("list addresses", name))?;
    Ok(messages
        .into_iter()
        .filter_map(|message| {
            let ip = message.attributes.iter().find_map(|attr| match attr {
                AddressAttribute::Local(IpAddr::V4(ip)) => Some(*ip),
                _ => None,
            })?;
            Some(V4Addr {
                ip,
                prefix: message.header.prefix_len,
                message,
            })
        })
        .collect())
}

pub(crate) async fn add_addr(
    handle: &Handle,
    index: u32,
    name: &str,
    ip: Ipv4Addr,
    prefix: u8,
) -> Result<(), NetError> {
    match handle
        .address()
        .add(index, ip.into(), prefix)
        .execute()
        .await
    {
        Ok(()) => Ok(()),
        Err(err) if errno(&err) == Some(libc::EEXIST) => Ok(()),
        Err(err) => Err(netlink_err(
            "add address",
            format!("{ip}/{prefix} on {name}"),
        )(err)),
    }
}

/// Forgets what the host's neighbour (ARP) table holds for `ip` on the link
/// `index` (the bridge). A new pod may get the address of one just gone; the
/// old entry would send its first packets to the old veth's MAC for seconds.
pub(crate) async fn forget_neighbour(
    handle: &Handle,
    index: u32,
    name: &str,
    ip: Ipv4Addr,
) -> Result<(), NetError> {
    use rtnetlink::packet_route::neighbour::{
        NeighbourAddress, NeighbourAttribute, NeighbourMessage,
    };
    let mut message = NeighbourMessage::default();
    message.header.family = AddressFamily::Inet;
    message.header.ifindex = index;
    message
        .attributes
        .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)));
    match handle.neighbours().del(message).execute().await {
        Ok(()) => Ok(()),
        Err(err) if errno(&err) == Some(libc::ENOENT) => Ok(()),
        Err(err) => Err(netlink_err("delete neighbour", format!("{ip} on {name}"))(
            err,
        )),
    }
}

pub(crate) async fn del_addr(handle: &Handle, name: &str, addr: V4Addr) -> Result<(), NetError> {
    let target = format!("{}/{} on {name}", addr.ip, addr.prefix);
    match handle.address().del(addr.message).execute().await {
        Ok(()) => Ok(()),
        Err(err) if errno(&err) == Some(libc::EADDRNOTAVAIL) => Ok(()),
        Err(err) => Err(netlink_err("delete address", target)(err)),
    }
}
