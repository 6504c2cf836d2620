//! The cluster DNS zone: answers for names under the cluster domain, built
//! from the Service table, as CoreDNS's `kubernetes` plugin gives them.
//! Pure: a parsed query in, a response (or "forward it") out.
//!
//! - `<svc>.<ns>.svc.<domain>`: A with the ClusterIP; for a headless Service
//!   the published endpoint addresses; for ExternalName a CNAME, followed
//!   for A/AAAA/ANY: inside the zone here, outside it by the server through
//!   the upstreams ([`Reply::Chase`]).
//! - `_<port>._<proto>.<svc>.<ns>.svc.<domain>`: SRV for a named port; for a
//!   headless Service one per endpoint, named after its hostname (or its
//!   dashed IP) under the Service.
//! - `<hostname>.<svc>.<ns>.svc.<domain>` and `<a-b-c-d>.<svc>.…`: A for one
//!   endpoint of a headless Service (StatefulSet pods).
//! - `<a-b-c-d>.<ns>.pod.<domain>`: A with that address.
//! - PTR for ClusterIPs and named endpoints; other reverse names inside the
//!   cluster's CIDRs are NXDOMAIN here, outside them forwarded.
//!
//! Only IPv4 exists in the cluster: AAAA for a known name is an empty answer.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, CNAME, PTR, SOA, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use ipnet::{IpNet, Ipv4Net};

use crate::api::routing::{ClusterNetwork, DEFAULT_CLUSTER_DOMAIN, ServiceRoute};

/// Seconds a cluster answer may be cached (CoreDNS's default).
pub const TTL: u32 = 5;

/// The EDNS payload size this server offers and honours at most (the DNS flag
/// day's recommendation).
pub const EDNS_PAYLOAD: u16 = 1232;

/// How many CNAMEs (ExternalName Services naming other cluster names) one
/// answer follows inside the zone; a loop ends here.
const MAX_CHASE: usize = 8;

/// What to do with a query.
#[derive(Debug)]
pub enum Reply {
    /// Answer with this.
    Local(Box<Message>),
    /// Not ours: ask the upstream resolvers.
    Forward,
    /// An ExternalName's CNAME to a name outside the cluster: resolve the
    /// target upstream and append its records (stub resolvers such as musl's
    /// and busybox's do not chase a CNAME themselves).
    Chase(Box<Chase>),
}

/// An answer ending in a CNAME whose target the upstream resolvers know.
#[derive(Debug)]
pub struct Chase {
    /// The query as the client sent it.
    pub query: Message,
    /// The answer so far: the CNAME chain.
    pub partial: Message,
    /// Whose records to append, and of which type.
    pub target: Name,
    pub qtype: RecordType,
}

impl Chase {
    /// The query to send upstream, under `id`.
    pub fn upstream_query(&self, id: u16) -> Message {
        let mut q = Message::query();
        q.metadata.id = id;
        q.metadata.recursion_desired = true;
        q.add_query(hickory_proto::op::Query::query(
            self.target.clone(),
            self.qtype,
        ));
        q
    }

    /// The client's answer: the CNAME chain, then what the upstream said
    /// about the target (`None`: no upstream answered; the chain alone is
    /// still an answer).
    pub fn finish(self, upstream: Option<&Message>, udp: bool) -> Handling {
        let Chase {
            query, mut partial, ..
        } = self;
        if let Some(reply) = upstream {
            partial.metadata.authoritative = false;
            partial.add_answers(reply.answers.iter().cloned());
            if reply.metadata.response_code == ResponseCode::NXDomain {
                partial.metadata.response_code = ResponseCode::NXDomain;
            }
        }
        encode(&partial, &query, udp)
    }
}

/// The type an ExternalName's target is resolved for: addresses only.
fn chased_type(qtype: RecordType) -> Option<RecordType> {
    match qtype {
        RecordType::A | RecordType::ANY => Some(RecordType::A),
        RecordType::AAAA => Some(RecordType::AAAA),
        _ => None,
    }
}

/// The names of one cluster, ready to answer from.
#[derive(Debug)]
pub struct Zone {
    domain: Name,
    domain_labels: usize,
    services: HashMap<(String, String), ServiceRoute>,
    reverse: HashMap<Ipv4Addr, Name>,
    /// Reverse lookups in these are ours to answer (or deny).
    local_nets: Vec<Ipv4Net>,
    soa: Record,
}

fn dashed(ip: Ipv4Addr) -> String {
    ip.to_string().replace('.', "-")
}

fn undashed(label: &str) -> Option<Ipv4Addr> {
    let dotted = label.replace('-', ".");
    (label.matches('-').count() == 3)
        .then(|| dotted.parse().ok())
        .flatten()
}

impl Zone {
    /// The zone of `routes` under `network.domain` (`cluster.local` if empty).
    pub fn new(routes: &[ServiceRoute], network: &ClusterNetwork) -> Zone {
        let domain_text = if network.domain.is_empty() {
            DEFAULT_CLUSTER_DOMAIN
        } else {
            network.domain.as_str()
        };
        let domain = Name::from_ascii(format!("{}.", domain_text.trim_end_matches('.')))
            .unwrap_or_else(|_| Name::from_ascii("cluster.local.").expect("a valid name"))
            .to_lowercase();
        let name = |labels: &[&str]| -> Option<Name> {
            let mut n = domain.clone();
            for l in labels.iter().rev() {
                n = n.prepend_label(*l).ok()?;
            }
            Some(n)
        };
        let mut services = HashMap::new();
        let mut reverse = HashMap::new();
        for r in routes {
            if let (Some(ip), Some(n)) = (r.cluster_ip, name(&[&r.name, &r.namespace, "svc"])) {
                reverse.insert(ip, n);
            }
            if r.headless {
                for a in &r.addresses {
                    let host = a.hostname.clone().unwrap_or_else(|| dashed(a.ip));
                    if let Some(n) = name(&[&host, &r.name, &r.namespace, "svc"]) {
                        reverse.entry(a.ip).or_insert(n);
                    }
                }
            }
            services.insert((r.namespace.clone(), r.name.clone()), r.clone());
        }
        let soa_name = |first: &str| {
            domain
                .prepend_label(first)
                .unwrap_or_else(|_| domain.clone())
        };
        let soa = Record::from_rdata(
            domain.clone(),
            TTL,
            RData::SOA(SOA::new(
                soa_name("ns.dns"),
                soa_name("hostmaster"),
                1,
                7200,
                1800,
                86400,
                TTL,
            )),
        );
        Zone {
            domain_labels: domain.num_labels() as usize,
            domain,
            services,
            reverse,
            local_nets: network
                .cluster_cidr
                .into_iter()
                .chain(network.service_cidr)
                .collect(),
            soa,
        }
    }

    fn name(&self, labels: &[&str]) -> Option<Name> {
        let mut n = self.domain.clone();
        for l in labels.iter().rev() {
            n = n.prepend_label(*l).ok()?;
        }
        Some(n)
    }

    /// The answer to a parsed standard query with exactly one question.
    pub fn answer(&self, query: &Message) -> Reply {
        let Some(q) = query.queries.first() else {
            return Reply::Local(Box::new(error(query, ResponseCode::FormErr)));
        };
        let qname = q.name().to_lowercase();
        let qtype = q.query_type();
        if self.domain.zone_of(&qname) {
            let m = self.cluster_answer(query, &qname, qtype);
            let outside = match m.answers.last().map(|r| &r.data) {
                Some(RData::CNAME(CNAME(target))) if !self.domain.zone_of(target) => {
                    Some(target.clone())
                }
                _ => None,
            };
            return match (outside, chased_type(qtype)) {
                (Some(target), Some(qtype)) => Reply::Chase(Box::new(Chase {
                    query: query.clone(),
                    partial: m,
                    target,
                    qtype,
                })),
                _ => Reply::Local(Box::new(m)),
            };
        }
        if let Ok(IpNet::V4(net)) = qname.parse_arpa_name()
            && net.prefix_len() == 32
            && self.local_nets.iter().any(|n| n.contains(&net.addr()))
        {
            let mut m = response(query);
            match self.reverse.get(&net.addr()) {
                Some(target) if matches!(qtype, RecordType::PTR | RecordType::ANY) => {
                    m.add_answer(Record::from_rdata(
                        q.name().clone(),
                        TTL,
                        RData::PTR(PTR(target.clone())),
                    ));
                }
                Some(_) => {}
                None => m.metadata.response_code = ResponseCode::NXDomain,
            }
            return Reply::Local(Box::new(m));
        }
        Reply::Forward
    }

    fn cluster_answer(&self, query: &Message, qname: &Name, qtype: RecordType) -> Message {
        let mut m = response(query);
        let mut asked = query.queries[0].name().clone();
        let mut qname = qname.clone();
        let mut found = false;
        // An ExternalName naming another cluster name is followed here, as
        // CoreDNS does, so the client gets the addresses with the CNAME.
        for _ in 0..MAX_CHASE {
            let labels: Vec<&[u8]> = qname.iter().collect();
            let rel_len = labels.len().saturating_sub(self.domain_labels);
            let rel: Option<Vec<&str>> = labels[..rel_len]
                .iter()
                .map(|l| std::str::from_utf8(l).ok())
                .collect();
            let answers = m.answers.len();
            found = match rel.as_deref() {
                Some(rel) => self.lookup(&mut m, &asked, rel, qtype),
                None => false,
            };
            let next = match m.answers[answers..].last().map(|r| &r.data) {
                Some(RData::CNAME(CNAME(target))) if self.domain.zone_of(target) => {
                    target.to_lowercase()
                }
                _ => break,
            };
            if !found || chased_type(qtype).is_none() {
                break;
            }
            asked = next.clone();
            qname = next;
        }
        if !found {
            m.metadata.response_code = ResponseCode::NXDomain;
        }
        if m.answers.is_empty() {
            // Negative answers carry the SOA, so resolvers can cache them.
            m.add_authority(self.soa.clone());
        }
        m
    }

    /// Fills `m` for the name `rel` (labels before the domain). Returns
    /// whether the name exists (`false` = NXDOMAIN).
    fn lookup(&self, m: &mut Message, asked: &Name, rel: &[&str], qtype: RecordType) -> bool {
        let wants_a = matches!(qtype, RecordType::A | RecordType::ANY);
        let a = |ip: Ipv4Addr| Record::from_rdata(asked.clone(), TTL, RData::A(A(ip)));
        match rel {
            // The domain, `svc.<domain>`, `<ns>.svc.<domain>`, `pod.<domain>`:
            // names that exist without records of their own.
            [] => {
                if qtype == RecordType::SOA {
                    m.add_answer(self.soa.clone());
                }
                true
            }
            ["svc"] | [_, "svc"] | ["pod"] | [_, "pod"] => true,
            [ip, _ns, "pod"] => match undashed(ip) {
                Some(ip) => {
                    if wants_a {
                        m.add_answer(a(ip));
                    }
                    true
                }
                None => false,
            },
            [svc, ns, "svc"] => {
                let Some(route) = self.services.get(&(ns.to_string(), svc.to_string())) else {
                    return false;
                };
                if let Some(external) = &route.external_name {
                    if let Ok(target) = Name::from_ascii(format!("{external}.")) {
                        m.add_answer(Record::from_rdata(
                            asked.clone(),
                            TTL,
                            RData::CNAME(CNAME(target)),
                        ));
                    }
                } else if wants_a {
                    if route.headless {
                        for addr in &route.addresses {
                            m.add_answer(a(addr.ip));
                        }
                    } else if let Some(ip) = route.cluster_ip {
                        m.add_answer(a(ip));
                    }
                }
                true
            }
            [port, proto, svc, ns, "svc"] if port.starts_with('_') && proto.starts_with('_') => {
                let Some(route) = self.services.get(&(ns.to_string(), svc.to_string())) else {
                    return false;
                };
                let Some(p) = route.ports.iter().find(|p| {
                    !p.name.is_empty()
                        && p.name == port[1..]
                        && p.protocol.as_str().eq_ignore_ascii_case(&proto[1..])
                }) else {
                    return false;
                };
                if !matches!(qtype, RecordType::SRV | RecordType::ANY) {
                    return true;
                }
                if route.headless {
                    let weight = (100 / p.endpoints.len().max(1)) as u16;
                    for ep in &p.endpoints {
                        let host = route
                            .addresses
                            .iter()
                            .find(|a| a.ip == *ep.ip())
                            .and_then(|a| a.hostname.clone())
                            .unwrap_or_else(|| dashed(*ep.ip()));
                        let Some(target) = self.name(&[&host, svc, ns, "svc"]) else {
                            continue;
                        };
                        m.add_answer(Record::from_rdata(
                            asked.clone(),
                            TTL,
                            RData::SRV(SRV::new(0, weight, ep.port(), target.clone())),
                        ));
                        m.add_additional(Record::from_rdata(target, TTL, RData::A(A(*ep.ip()))));
                    }
                } else if let (Some(ip), Some(target)) =
                    (route.cluster_ip, self.name(&[svc, ns, "svc"]))
                {
                    m.add_answer(Record::from_rdata(
                        asked.clone(),
                        TTL,
                        RData::SRV(SRV::new(0, 100, p.port, target.clone())),
                    ));
                    m.add_additional(Record::from_rdata(target, TTL, RData::A(A(ip))));
                }
                true
            }
            [host, svc, ns, "svc"] => {
                let Some(route) = self
                    .services
                    .get(&(ns.to_string(), svc.to_string()))
                    .filter(|r| r.headless)
                else {
                    return false;
                };
                let by_dashed = undashed(host);
                let Some(addr) = route
                    .addresses
                    .iter()
                    .find(|a| a.hostname.as_deref() == Some(*host) || Some(a.ip) == by_dashed)
                else {
                    return false;
                };
                if wants_a {
                    m.add_answer(a(addr.ip));
                }
                true
            }
            // `_port._proto` of a missing port, and deeper names.
            _ => false,
        }
    }
}

/// A response to `query` with its question, flags and EDNS echoed.
pub fn response(query: &Message) -> Message {
    let mut m = Message::response(query.metadata.id, query.metadata.op_code);
    m.metadata.recursion_desired = query.metadata.recursion_desired;
    m.metadata.recursion_available = true;
    m.metadata.authoritative = true;
    m.add_queries(query.queries.iter().cloned());
    if query.edns.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(EDNS_PAYLOAD);
        m.set_edns(edns);
    }
    m
}

/// An error response to a query that could be parsed.
pub fn error(query: &Message, code: ResponseCode) -> Message {
    let mut m = response(query);
    m.metadata.authoritative = false;
    m.metadata.response_code = code;
    m
}

/// What a raw query gets: a response to send, a forward, or nothing (too
/// short to even carry an ID to answer to).
#[derive(Debug)]
pub enum Handling {
    Respond(Vec<u8>),
    /// Not ours: the parsed query, for a SERVFAIL if no upstream answers.
    Forward(Box<Message>),
    /// Ours up to a CNAME whose target the upstreams resolve.
    Chase(Box<Chase>),
    Drop,
}

/// Parses and answers one raw query. `limit` is the transport's size limit
/// (512 or the client's EDNS size over UDP, 65535 over TCP); a larger answer
/// is sent truncated (TC) so the client retries over TCP.
pub fn handle(zone: &Zone, bytes: &[u8], udp: bool) -> Handling {
    let query = match Message::from_vec(bytes) {
        Ok(q) => q,
        Err(_) => return format_error(bytes),
    };
    if query.metadata.message_type != MessageType::Query {
        // A response sent to a server: never answer it (reflection loops).
        return Handling::Drop;
    }
    if query.metadata.op_code != OpCode::Query {
        return encode(&error(&query, ResponseCode::NotImp), &query, udp);
    }
    if query.queries.len() != 1 {
        return encode(&error(&query, ResponseCode::FormErr), &query, udp);
    }
    match zone.answer(&query) {
        Reply::Local(m) => encode(&m, &query, udp),
        Reply::Forward => Handling::Forward(Box::new(query)),
        Reply::Chase(chase) => Handling::Chase(chase),
    }
}

/// FORMERR for bytes that do not parse, when they at least hold a header.
fn format_error(bytes: &[u8]) -> Handling {
    if bytes.len() < 12 || bytes[2] & 0x80 != 0 {
        return Handling::Drop;
    }
    let id = u16::from_be_bytes([bytes[0], bytes[1]]);
    let op_code = OpCode::from_u8((bytes[2] >> 3) & 0x0f);
    let mut m = Message::response(id, op_code);
    m.metadata.response_code = ResponseCode::FormErr;
    m.metadata.recursion_desired = bytes[2] & 0x01 != 0;
    match m.to_vec() {
        Ok(v) => Handling::Respond(v),
        Err(_) => Handling::Drop,
    }
}

fn encode(m: &Message, query: &Message, udp: bool) -> Handling {
    let limit = if udp {
        query
            .edns
            .as_ref()
            .map_or(512, |e| e.max_payload().clamp(512, EDNS_PAYLOAD)) as usize
    } else {
        u16::MAX as usize
    };
    let Ok(bytes) = m.to_vec() else {
        return match error(query, ResponseCode::ServFail).to_vec() {
            Ok(v) => Handling::Respond(v),
            Err(_) => Handling::Drop,
        };
    };
    if bytes.len() <= limit {
        return Handling::Respond(bytes);
    }
    match m.truncate().to_vec() {
        Ok(v) if v.len() <= limit => Handling::Respond(v),
        _ => Handling::Drop,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::routing::{DnsAddress, Protocol, RoutePort};
    use hickory_proto::op::Query;

    fn network() -> ClusterNetwork {
        ClusterNetwork {
            cluster_cidr: Some("10.88.0.0/16".parse().unwrap()),
            service_cidr: Some("10.96.0.0/16".parse().unwrap()),
            dns_ip: Some("10.96.0.10".parse().unwrap()),
            domain: "cluster.local".into(),
            nodes: Vec::new(),
            registry_mirror: None,
        }
    }

    fn zone() -> Zone {
        let routes = vec![
            ServiceRoute {
                namespace: "default".into(),
                name: "web".into(),
                cluster_ip: Some("10.96.0.5".parse().unwrap()),
                ports: vec![RoutePort {
                    name: "http".into(),
                    protocol: Protocol::Tcp,
                    port: 80,
                    node_port: None,
                    endpoints: vec!["10.88.0.2:8080".parse().unwrap()],
                }],
                ..Default::default()
            },
            ServiceRoute {
                namespace: "default".into(),
                name: "db".into(),
                headless: true,
                ports: vec![RoutePort {
                    name: "pg".into(),
                    protocol: Protocol::Tcp,
                    port: 5432,
                    node_port: None,
                    endpoints: vec![
                        "10.88.0.3:5432".parse().unwrap(),
                        "10.88.0.4:5432".parse().unwrap(),
                    ],
                }],
                addresses: vec![
                    DnsAddress {
                        ip: "10.88.0.3".parse().unwrap(),
                        hostname: Some("db-0".into()),
                    },
                    DnsAddress {
                        ip: "10.88.0.4".parse().unwrap(),
                        hostname: None,
                    },
                ],
                ..Default::default()
            },
            ServiceRoute {
                namespace: "default".into(),
                name: "ext".into(),
                external_name: Some("db.example.org".into()),
                ..Default::default()
            },
            // An ExternalName naming a cluster Service, and two naming each other.
            ServiceRoute {
                namespace: "default".into(),
                name: "alias".into(),
                external_name: Some("web.default.svc.cluster.local".into()),
                ..Default::default()
            },
            ServiceRoute {
                namespace: "default".into(),
                name: "loop-a".into(),
                external_name: Some("loop-b.default.svc.cluster.local".into()),
                ..Default::default()
            },
            ServiceRoute {
                namespace: "default".into(),
                name: "loop-b".into(),
                external_name: Some("loop-a.default.svc.cluster.local".into()),
                ..Default::default()
            },
        ];
        Zone::new(&routes, &network())
    }

    fn ask(zone: &Zone, name: &str, t: RecordType) -> Message {
        let mut q = Message::query();
        q.metadata.recursion_desired = true;
        q.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
        let bytes = q.to_vec().unwrap();
        match handle(zone, &bytes, true) {
            Handling::Respond(r) => Message::from_vec(&r).unwrap(),
            other => panic!("{name}: {other:?}"),
        }
    }

    fn ips(m: &Message) -> Vec<String> {
        m.answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(a.0.to_string()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn services_headless_and_external_names() {
        let z = zone();
        let m = ask(&z, "web.default.svc.cluster.local.", RecordType::A);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.metadata.authoritative);
        assert_eq!(ips(&m), vec!["10.96.0.5"]);
        // Case does not matter.
        let m = ask(&z, "WEB.Default.SVC.cluster.local.", RecordType::A);
        assert_eq!(ips(&m), vec!["10.96.0.5"]);
        let m = ask(&z, "web.default.svc.cluster.local.", RecordType::AAAA);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.answers.is_empty() && !m.authorities.is_empty());
        let m = ask(&z, "db.default.svc.cluster.local.", RecordType::A);
        assert_eq!(ips(&m), vec!["10.88.0.3", "10.88.0.4"]);
        let m = ask(&z, "db-0.db.default.svc.cluster.local.", RecordType::A);
        assert_eq!(ips(&m), vec!["10.88.0.3"]);
        let m = ask(&z, "10-88-0-4.db.default.svc.cluster.local.", RecordType::A);
        assert_eq!(ips(&m), vec!["10.88.0.4"]);
        let m = ask(&z, "ext.default.svc.cluster.local.", RecordType::CNAME);
        match &m.answers[0].data {
            RData::CNAME(c) => assert_eq!(c.0.to_ascii(), "db.example.org."),
            other => panic!("{other:?}"),
        }
        let m = ask(&z, "10-1-2-3.default.pod.cluster.local.", RecordType::A);
        assert_eq!(ips(&m), vec!["10.1.2.3"]);
        for missing in [
            "nope.default.svc.cluster.local.",
            "web.other.svc.cluster.local.",
            "db-9.db.default.svc.cluster.local.",
            "a.b.c.d.e.f.cluster.local.",
            "x-y.default.pod.cluster.local.",
        ] {
            let m = ask(&z, missing, RecordType::A);
            assert_eq!(
                m.metadata.response_code,
                ResponseCode::NXDomain,
                "{missing}"
            );
            assert!(matches!(&m.authorities[0].data, RData::SOA(_)));
        }
        let m = ask(&z, "default.svc.cluster.local.", RecordType::A);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    }

    fn chase(zone: &Zone, name: &str, t: RecordType) -> Box<Chase> {
        let mut q = Message::query();
        q.metadata.id = 77;
        q.metadata.recursion_desired = true;
        q.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
        match handle(zone, &q.to_vec().unwrap(), true) {
            Handling::Chase(c) => c,
            other => panic!("{name}: {other:?}"),
        }
    }

    #[test]
    fn external_names_are_followed_for_addresses() {
        let z = zone();
        // Outside the cluster: the server asks the upstreams for the target.
        for (t, upstream_type) in [
            (RecordType::A, RecordType::A),
            (RecordType::ANY, RecordType::A),
            (RecordType::AAAA, RecordType::AAAA),
        ] {
            let c = chase(&z, "ext.default.svc.cluster.local.", t);
            assert_eq!(c.target.to_ascii(), "db.example.org.");
            assert_eq!(c.qtype, upstream_type);
            let up = c.upstream_query(9);
            assert_eq!(up.metadata.id, 9);
            assert!(up.metadata.recursion_desired);
            assert_eq!(up.queries[0].query_type(), upstream_type);
        }
        let c = chase(&z, "ext.default.svc.cluster.local.", RecordType::A);
        let mut upstream = Message::response(9, OpCode::Query);
        upstream.add_answer(Record::from_rdata(
            Name::from_ascii("db.example.org.").unwrap(),
            60,
            RData::A(A("198.51.100.7".parse().unwrap())),
        ));
        let Handling::Respond(reply) = c.finish(Some(&upstream), true) else {
            panic!()
        };
        let m = Message::from_vec(&reply).unwrap();
        assert_eq!(m.metadata.id, 77);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(
            matches!(&m.answers[0].data, RData::CNAME(c) if c.0.to_ascii() == "db.example.org.")
        );
        assert_eq!(ips(&m), vec!["198.51.100.7"]);
        // No upstream answer: the CNAME alone, as before.
        let c = chase(&z, "ext.default.svc.cluster.local.", RecordType::A);
        let Handling::Respond(reply) = c.finish(None, true) else {
            panic!()
        };
        let m = Message::from_vec(&reply).unwrap();
        assert_eq!(m.answers.len(), 1);
        // The upstream says the target does not exist.
        let c = chase(&z, "ext.default.svc.cluster.local.", RecordType::A);
        let mut nx = Message::response(9, OpCode::Query);
        nx.metadata.response_code = ResponseCode::NXDomain;
        let Handling::Respond(reply) = c.finish(Some(&nx), true) else {
            panic!()
        };
        assert_eq!(
            Message::from_vec(&reply).unwrap().metadata.response_code,
            ResponseCode::NXDomain
        );
        // Other types are answered with the CNAME, no chase.
        let m = ask(&z, "ext.default.svc.cluster.local.", RecordType::TXT);
        assert_eq!(m.answers.len(), 1);

        // Inside the cluster: followed here, the ClusterIP after the CNAME.
        let m = ask(&z, "alias.default.svc.cluster.local.", RecordType::A);
        assert!(matches!(&m.answers[0].data,
            RData::CNAME(c) if c.0.to_ascii() == "web.default.svc.cluster.local."));
        assert_eq!(
            m.answers[1].name.to_ascii(),
            "web.default.svc.cluster.local."
        );
        assert_eq!(ips(&m), vec!["10.96.0.5"]);
        // A loop ends, with an answer.
        let m = ask(&z, "loop-a.default.svc.cluster.local.", RecordType::A);
        assert!(ips(&m).is_empty());
        assert!(m.answers.len() <= MAX_CHASE);
    }

    #[test]
    fn srv_for_named_ports() {
        let z = zone();
        let m = ask(
            &z,
            "_http._tcp.web.default.svc.cluster.local.",
            RecordType::SRV,
        );
        let RData::SRV(srv) = &m.answers[0].data else {
            panic!("{m:?}")
        };
        assert_eq!(srv.port, 80);
        assert_eq!(srv.target.to_ascii(), "web.default.svc.cluster.local.");
        let mut extra = Message::query();
        extra.answers = m.additionals.clone();
        assert_eq!(ips(&extra), vec!["10.96.0.5"]);
        let m = ask(
            &z,
            "_pg._tcp.db.default.svc.cluster.local.",
            RecordType::SRV,
        );
        let targets: Vec<(String, u16)> = m
            .answers
            .iter()
            .map(|r| match &r.data {
                RData::SRV(s) => (s.target.to_ascii(), s.port),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            targets,
            vec![
                ("db-0.db.default.svc.cluster.local.".to_string(), 5432),
                ("10-88-0-4.db.default.svc.cluster.local.".to_string(), 5432)
            ]
        );
        let m = ask(
            &z,
            "_http._udp.web.default.svc.cluster.local.",
            RecordType::SRV,
        );
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    }

    #[test]
    fn reverse_inside_answered_outside_forwarded() {
        let z = zone();
        let m = ask(&z, "5.0.96.10.in-addr.arpa.", RecordType::PTR);
        let RData::PTR(p) = &m.answers[0].data else {
            panic!("{m:?}")
        };
        assert_eq!(p.0.to_ascii(), "web.default.svc.cluster.local.");
        let m = ask(&z, "3.0.88.10.in-addr.arpa.", RecordType::PTR);
        let RData::PTR(p) = &m.answers[0].data else {
            panic!("{m:?}")
        };
        assert_eq!(p.0.to_ascii(), "db-0.db.default.svc.cluster.local.");
        let m = ask(&z, "99.0.96.10.in-addr.arpa.", RecordType::PTR);
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        let mut q = Message::query();
        q.add_query(Query::query(
            Name::from_ascii("1.1.168.192.in-addr.arpa.").unwrap(),
            RecordType::PTR,
        ));
        assert!(matches!(
            handle(&z, &q.to_vec().unwrap(), true),
            Handling::Forward(_)
        ));
        let mut q = Message::query();
        q.add_query(Query::query(
            Name::from_ascii("example.org.").unwrap(),
            RecordType::A,
        ));
        assert!(matches!(
            handle(&z, &q.to_vec().unwrap(), true),
            Handling::Forward(_)
        ));
    }

    #[test]
    fn garbage_gets_formerr_or_nothing() {
        let z = zone();
        assert!(matches!(handle(&z, b"", true), Handling::Drop));
        assert!(matches!(handle(&z, b"\x12\x34", true), Handling::Drop));
        let mut junk = vec![0xab, 0xcd, 0x01, 0x00];
        junk.extend(std::iter::repeat_n(0xff, 200));
        match handle(&z, &junk, true) {
            Handling::Respond(r) => {
                let m = Message::from_vec(&r).unwrap();
                assert_eq!(m.metadata.id, 0xabcd);
                assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
            }
            other => panic!("{other:?}"),
        }
        // A name of 500 one-letter labels: beyond DNS's 255 bytes.
        let mut q = vec![0x00, 0x07, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for _ in 0..500 {
            q.extend([1, b'a']);
        }
        q.extend([0, 0, 1, 0, 1]);
        match handle(&z, &q, true) {
            Handling::Respond(r) => {
                let m = Message::from_vec(&r).unwrap();
                assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
            }
            other => panic!("{other:?}"),
        }
        // A response is never answered.
        let mut resp = Message::response(9, OpCode::Query);
        resp.add_query(Query::query(
            Name::from_ascii("web.default.svc.cluster.local.").unwrap(),
            RecordType::A,
        ));
        assert!(matches!(
            handle(&z, &resp.to_vec().unwrap(), true),
            Handling::Drop
        ));
        // Two questions: FORMERR.
        let mut q = Message::query();
        for _ in 0..2 {
            q.add_query(Query::query(
                Name::from_ascii("web.default.svc.cluster.local.").unwrap(),
                RecordType::A,
            ));
        }
        let Handling::Respond(r) = handle(&z, &q.to_vec().unwrap(), true) else {
            panic!()
        };
        assert_eq!(
            Message::from_vec(&r).unwrap().metadata.response_code,
            ResponseCode::FormErr
        );
    }

    #[test]
    fn big_answers_are_truncated_over_udp() {
        let addresses: Vec<DnsAddress> = (1..=100u8)
            .map(|n| DnsAddress {
                ip: Ipv4Addr::new(10, 88, 1, n),
                hostname: None,
            })
            .collect();
        let routes = vec![ServiceRoute {
            namespace: "default".into(),
            name: "many".into(),
            headless: true,
            addresses,
            ..Default::default()
        }];
        let z = Zone::new(&routes, &network());
        let mut q = Message::query();
        q.add_query(Query::query(
            Name::from_ascii("many.default.svc.cluster.local.").unwrap(),
            RecordType::A,
        ));
        let bytes = q.to_vec().unwrap();
        let Handling::Respond(r) = handle(&z, &bytes, true) else {
            panic!()
        };
        assert!(r.len() <= 512);
        let m = Message::from_vec(&r).unwrap();
        assert!(m.metadata.truncation);
        let Handling::Respond(r) = handle(&z, &bytes, false) else {
            panic!()
        };
        assert_eq!(Message::from_vec(&r).unwrap().answers.len(), 100);
    }
}
