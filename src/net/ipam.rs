//! Pod IP address management: pure functions over a node's pod CIDR. The caller
//! (the worker) owns the set of addresses in use; nothing here touches the system.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

/// Longest prefix that still leaves room for a network address, the gateway, one
/// pod and the broadcast address.
pub const MAX_POD_PREFIX: u8 = 30;

/// The bridge's address in `cidr`: its first host address. `None` when the prefix
/// is too long to hold a gateway and at least one pod.
pub fn gateway_ip(cidr: Ipv4Net) -> Option<Ipv4Addr> {
    if cidr.prefix_len() > MAX_POD_PREFIX {
        return None;
    }
    Some(Ipv4Addr::from(u32::from(cidr.network()) + 1))
}

/// Whether `ip` may be given to a pod: inside `cidr` and neither its network,
/// gateway nor broadcast address.
pub fn is_pod_ip(cidr: Ipv4Net, ip: Ipv4Addr) -> bool {
    let Some(gateway) = gateway_ip(cidr) else {
        return false;
    };
    cidr.contains(&ip) && ip != cidr.network() && ip != gateway && ip != cidr.broadcast()
}

/// The lowest address of `cidr` that a pod may have and `used` does not hold.
/// `None` when the range is exhausted (or too small to hold any pod).
pub fn allocate_ip(cidr: Ipv4Net, used: &BTreeSet<Ipv4Addr>) -> Option<Ipv4Addr> {
    let gateway = u32::from(gateway_ip(cidr)?);
    let broadcast = u32::from(cidr.broadcast());
    (gateway + 1..broadcast)
        .map(Ipv4Addr::from)
        .find(|ip| !used.contains(ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn cidr_parses_displays_and_contains() {
        let cidr = net("10.88.3.0/24");
        assert_eq!(cidr.to_string(), "10.88.3.0/24");
        assert_eq!(cidr.prefix_len(), 24);
        assert!(cidr.contains(&ip("10.88.3.200")));
        assert!(!cidr.contains(&ip("10.88.4.1")));
        assert!("10.88.3.0".parse::<Ipv4Net>().is_err());
        assert!("10.88.3.0/33".parse::<Ipv4Net>().is_err());
        assert!("10.88.300.0/24".parse::<Ipv4Net>().is_err());
    }

    #[test]
    fn cidr_with_host_bits_keeps_its_network() {
        // A CIDR written with host bits set still names the same network, so the
        // gateway and allocation do not depend on how it was written.
        let cidr = net("10.88.3.77/24");
        assert_eq!(cidr.network(), ip("10.88.3.0"));
        assert_eq!(gateway_ip(cidr), Some(ip("10.88.3.1")));
        assert_eq!(allocate_ip(cidr, &BTreeSet::new()), Some(ip("10.88.3.2")));
    }

    #[test]
    fn gateway_is_first_host() {
        assert_eq!(gateway_ip(net("10.88.0.0/24")), Some(ip("10.88.0.1")));
        assert_eq!(gateway_ip(net("10.88.0.0/16")), Some(ip("10.88.0.1")));
        assert_eq!(gateway_ip(net("10.88.0.4/30")), Some(ip("10.88.0.5")));
        assert_eq!(gateway_ip(net("10.88.0.4/31")), None);
        assert_eq!(gateway_ip(net("10.88.0.4/32")), None);
    }

    #[test]
    fn allocates_lowest_free_skipping_reserved() {
        let cidr = net("10.88.0.0/24");
        let mut used = BTreeSet::new();
        assert_eq!(allocate_ip(cidr, &used), Some(ip("10.88.0.2")));
        used.insert(ip("10.88.0.2"));
        used.insert(ip("10.88.0.3"));
        used.insert(ip("10.88.0.5"));
        assert_eq!(allocate_ip(cidr, &used), Some(ip("10.88.0.4")));
        used.insert(ip("10.88.0.4"));
        assert_eq!(allocate_ip(cidr, &used), Some(ip("10.88.0.6")));
    }

    #[test]
    fn addresses_outside_the_cidr_do_not_matter() {
        let cidr = net("10.88.0.0/24");
        let used = BTreeSet::from([ip("10.88.1.2"), ip("10.88.0.1")]);
        assert_eq!(allocate_ip(cidr, &used), Some(ip("10.88.0.2")));
    }

    #[test]
    fn exhausted_range_gives_none_never_broadcast() {
        let cidr = net("10.88.0.0/24");
        let used: BTreeSet<_> = (2..=254u8).map(|n| Ipv4Addr::new(10, 88, 0, n)).collect();
        assert_eq!(allocate_ip(cidr, &used), None);

        let tiny = net("10.88.0.4/30");
        assert_eq!(allocate_ip(tiny, &BTreeSet::new()), Some(ip("10.88.0.6")));
        assert_eq!(allocate_ip(tiny, &BTreeSet::from([ip("10.88.0.6")])), None);
        assert_eq!(allocate_ip(net("10.88.0.4/31"), &BTreeSet::new()), None);
    }

    #[test]
    fn pod_ip_check() {
        let cidr = net("10.88.0.0/24");
        assert!(is_pod_ip(cidr, ip("10.88.0.2")));
        assert!(is_pod_ip(cidr, ip("10.88.0.254")));
        assert!(!is_pod_ip(cidr, ip("10.88.0.0")));
        assert!(!is_pod_ip(cidr, ip("10.88.0.1")));
        assert!(!is_pod_ip(cidr, ip("10.88.0.255")));
        assert!(!is_pod_ip(cidr, ip("10.88.1.2")));
    }
}
