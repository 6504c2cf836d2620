//! Address and port allocation: pod CIDRs for nodes, ClusterIPs and NodePorts
//! for Services. Pure: what is taken comes in, the choice goes out.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::ops::RangeInclusive;

use ipnet::Ipv4Net;

/// The first /24 of `cluster` that no node has.
pub fn pod_cidr(cluster: Ipv4Net, used: &HashSet<Ipv4Net>) -> Option<Ipv4Net> {
    cluster.subnets(24).ok()?.find(|s| !used.contains(s))
}

/// The lowest free address of `cidr`, skipping the network and broadcast
/// addresses.
pub fn cluster_ip(cidr: Ipv4Net, used: &HashSet<Ipv4Addr>) -> Option<Ipv4Addr> {
    cidr.hosts().find(|ip| !used.contains(ip))
}

/// A free port of `range`, picked at random as Kubernetes does, so that
/// clusters sharing a host (tests) rarely collide.
pub fn node_port(range: &RangeInclusive<u16>, used: &HashSet<u16>) -> Option<u16> {
    let size = (*range.end() as u32 + 1).saturating_sub(*range.start() as u32);
    if size == 0 {
        return None;
    }
    let start = rand::random_range(0..size);
    (0..size)
        .map(|i| range.start() + ((start + i) % size) as u16)
        .find(|p| !used.contains(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_cidrs_are_distinct_slash_24s() {
        let cluster: Ipv4Net = "10.88.0.0/16".parse().unwrap();
        let mut used = HashSet::new();
        let a = pod_cidr(cluster, &used).unwrap();
        used.insert(a);
        let b = pod_cidr(cluster, &used).unwrap();
        assert_eq!(a.to_string(), "10.88.0.0/24");
        assert_eq!(b.to_string(), "10.88.1.0/24");
        let tiny: Ipv4Net = "10.88.0.0/24".parse().unwrap();
        assert_eq!(pod_cidr(tiny, &HashSet::from([a])), None);
    }

    #[test]
    fn cluster_ips_skip_network_and_taken() {
        let cidr: Ipv4Net = "10.96.0.0/30".parse().unwrap();
        let first = cluster_ip(cidr, &HashSet::new()).unwrap();
        assert_eq!(first, Ipv4Addr::new(10, 96, 0, 1));
        let second = cluster_ip(cidr, &HashSet::from([first])).unwrap();
        assert_eq!(second, Ipv4Addr::new(10, 96, 0, 2));
        assert_eq!(cluster_ip(cidr, &HashSet::from([first, second])), None);
    }

    #[test]
    fn node_ports_stay_in_range_and_avoid_taken() {
        let range = 30000..=30002;
        let used = HashSet::from([30000, 30002]);
        for _ in 0..20 {
            assert_eq!(node_port(&range, &used), Some(30001));
        }
        assert_eq!(
            node_port(&range, &HashSet::from([30000, 30001, 30002])),
            None
        );
    }
}
