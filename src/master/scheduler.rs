//! The scheduler: a pure function from nodes and pods to bindings.
//!
//! Filters: the node is Ready and schedulable, its labels satisfy the pod's
//! `nodeSelector` (which is how `kubernetes.io/arch` pins a pod to arm64 or
//! armv7 Pis), its allocatable CPU, memory and pod count cover the pod's
//! requests on top of what its bound pods request, and none of its pods holds
//! a `hostPort` the pod asks for (same protocol and host IP), its required
//! node affinity holds (`nodeSelectorTerms`: In, NotIn, Exists,
//! DoesNotExist, Gt, Lt, and `matchFields` on `metadata.name`), and the pod
//! tolerates every NoSchedule and NoExecute taint of the node. Scores, in
//! order: fewest pods of the same owner (spread a workload's replicas), the
//! highest sum of matched preferred-affinity weights, fewest untolerated
//! PreferNoSchedule taints, least allocated (the requested share of CPU and
//! memory after placing the pod, as kube-scheduler's LeastAllocated), fewest
//! pods, then name, so the result is deterministic.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use k8s_openapi::api::core::v1::{
    Node, NodeSelectorRequirement, NodeSelectorTerm, Pod, PodCondition, Taint, Toleration,
};

use crate::api::Object;
use crate::api::quantity;
use crate::api::resources::pod_requests;
use crate::master::controllers::{
    Action, Snapshot, controller_of, events, is_finished, is_terminating, node_ready, uid,
};

/// The component name Events from the scheduler carry.
const SCHEDULER: &str = "default-scheduler";

/// A host port a pod holds: protocol, host IP (`""` = every address), port.
pub type HostPort = (String, String, i32);

/// The host ports a pod asks for.
pub fn host_ports(pod: &Pod) -> Vec<HostPort> {
    pod.spec
        .iter()
        .flat_map(|s| {
            s.containers
                .iter()
                .chain(s.init_containers.iter().flatten())
        })
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            let port = p.host_port.filter(|h| *h > 0)?;
            let ip = p
                .host_ip
                .clone()
                .filter(|ip| ip != "0.0.0.0")
                .unwrap_or_default();
            Some((p.protocol.clone().unwrap_or_else(|| "TCP".into()), ip, port))
        })
        .collect()
}

fn ports_conflict(a: &HostPort, b: &HostPort) -> bool {
    a.0 == b.0 && a.2 == b.2 && (a.1.is_empty() || b.1.is_empty() || a.1 == b.1)
}

/// What the pods bound to one node use.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeUsage {
    pub cpu_millis: i64,
    pub memory_bytes: i64,
    pub pods: i64,
    pub host_ports: BTreeSet<HostPort>,
}

impl NodeUsage {
    pub fn add(&mut self, pod: &Pod) {
        let (cpu, mem) = pod_requests(pod);
        self.cpu_millis += cpu;
        self.memory_bytes += mem;
        self.pods += 1;
        self.host_ports.extend(host_ports(pod));
    }
}

/// A node's allocatable `(cpu millicores, memory bytes, pods)`; a resource
/// the node does not report is unlimited.
fn allocatable(node: &Node) -> (Option<i64>, Option<i64>, Option<i64>) {
    let a = node.status.as_ref().and_then(|s| s.allocatable.as_ref());
    let get = |k: &str| a.and_then(|a| a.get(k));
    (
        get("cpu").and_then(|q| quantity::cpu_millis(q).ok()),
        get("memory").and_then(|q| quantity::units(q).ok()),
        get("pods").and_then(|q| quantity::units(q).ok()),
    )
}

/// Whether one requirement holds for `values` (the label's value, or the
/// node name for `matchFields`).
fn requirement_holds(r: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let vals = r.values.as_deref().unwrap_or_default();
    match r.operator.as_str() {
        "In" => value.is_some_and(|v| vals.iter().any(|x| x == v)),
        "NotIn" => value.is_none_or(|v| !vals.iter().any(|x| x == v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" | "Lt" => {
            let (Some(v), Some(bound)) = (
                value.and_then(|v| v.parse::<i64>().ok()),
                vals.first().and_then(|b| b.parse::<i64>().ok()),
            ) else {
                return false;
            };
            if r.operator == "Gt" {
                v > bound
            } else {
                v < bound
            }
        }
        _ => false,
    }
}

/// A term holds when all its expressions and fields do; an empty term
/// matches nothing, as in Kubernetes.
fn term_holds(term: &NodeSelectorTerm, node: &Node) -> bool {
    let exprs = term.match_expressions.as_deref().unwrap_or_default();
    let fields = term.match_fields.as_deref().unwrap_or_default();
    if exprs.is_empty() && fields.is_empty() {
        return false;
    }
    let labels = node.metadata.labels.as_ref();
    exprs
        .iter()
        .all(|r| requirement_holds(r, labels.and_then(|l| l.get(&r.key)).map(String::as_str)))
        && fields.iter().all(|r| {
            r.key == "metadata.name" && requirement_holds(r, node.metadata.name.as_deref())
        })
}

/// The pod's required node affinity holds on `node` (any term).
pub fn affinity_allows(pod: &Pod, node: &Node) -> bool {
    let required = pod
        .spec
        .as_ref()
        .and_then(|s| s.affinity.as_ref())
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        });
    required.is_none_or(|r| r.node_selector_terms.iter().any(|t| term_holds(t, node)))
}

/// The sum of the weights of the pod's preferred terms `node` matches.
fn affinity_preference(pod: &Pod, node: &Node) -> i64 {
    pod.spec
        .as_ref()
        .and_then(|s| s.affinity.as_ref())
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| {
            a.preferred_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .into_iter()
        .flatten()
        .filter(|p| term_holds(&p.preference, node))
        .map(|p| i64::from(p.weight))
        .sum()
}

/// Whether toleration `t` covers taint `taint`.
pub fn tolerates(t: &Toleration, taint: &Taint) -> bool {
    let effect_ok = t
        .effect
        .as_deref()
        .is_none_or(|e| e.is_empty() || e == taint.effect);
    let key_ok = match t.operator.as_deref() {
        Some("Exists") => t
            .key
            .as_deref()
            .is_none_or(|k| k.is_empty() || k == taint.key),
        _ => {
            t.key.as_deref() == Some(taint.key.as_str())
                && t.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or("")
        }
    };
    effect_ok && key_ok
}

/// The node's taints of `effects` that the pod does not tolerate.
fn untolerated<'a>(pod: &Pod, node: &'a Node, effects: &[&str]) -> Vec<&'a Taint> {
    let tolerations = pod
        .spec
        .as_ref()
        .and_then(|s| s.tolerations.as_deref())
        .unwrap_or_default();
    node.spec
        .as_ref()
        .and_then(|s| s.taints.as_deref())
        .unwrap_or_default()
        .iter()
        .filter(|t| effects.contains(&t.effect.as_str()))
        .filter(|t| !tolerations.iter().any(|tol| tolerates(tol, t)))
        .collect()
}

/// kube-scheduler's LeastAllocated, inverted so lower is better: the mean
/// share (per mille) of allocatable CPU and memory requested once the pod is
/// placed. A resource the node does not report counts as empty.
fn allocated_share(used: &NodeUsage, want: (i64, i64), alloc: (Option<i64>, Option<i64>)) -> i64 {
    let share = |used: i64, want: i64, cap: Option<i64>| match cap {
        Some(c) if c > 0 => ((used + want) * 1000 / c).min(1000),
        _ => 0,
    };
    (share(used.cpu_millis, want.0, alloc.0) + share(used.memory_bytes, want.1, alloc.1)) / 2
}

/// Why no node fits, in the words `kubectl describe` uses.
pub fn pick<'a>(
    nodes: &[&'a Node],
    pod: &Pod,
    usage: &HashMap<String, NodeUsage>,
    spread: &HashMap<(String, String), usize>,
) -> Result<&'a str, String> {
    let (want_cpu, want_mem) = pod_requests(pod);
    let want_ports = host_ports(pod);
    let no_usage = NodeUsage::default();
    let selector = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_selector.clone())
        .unwrap_or_default();
    let owner = controller_of(&pod.metadata)
        .map(|r| r.uid.clone())
        .unwrap_or_default();
    let (mut not_ready, mut unschedulable, mut mismatched) = (0, 0, 0);
    let (mut no_cpu, mut no_memory, mut no_pods, mut no_ports) = (0, 0, 0, 0);
    let mut tainted: BTreeMap<String, usize> = BTreeMap::new();
    let mut best: Option<(usize, i64, usize, i64, usize, &str)> = None;
    for node in nodes {
        let name = node.metadata.name.as_deref().unwrap_or("");
        if !node_ready(node) {
            not_ready += 1;
            continue;
        }
        if node.spec.as_ref().and_then(|s| s.unschedulable) == Some(true) {
            unschedulable += 1;
            continue;
        }
        let labels = node.metadata.labels.clone().unwrap_or_default();
        if !selector.iter().all(|(k, v)| labels.get(k) == Some(v)) || !affinity_allows(pod, node) {
            mismatched += 1;
            continue;
        }
        if let Some(t) = untolerated(pod, node, &["NoSchedule", "NoExecute"]).first() {
            let shown = match &t.value {
                Some(v) => format!("{{{}: {v}}}", t.key),
                None => format!("{{{}: }}", t.key),
            };
            *tainted.entry(shown).or_default() += 1;
            continue;
        }
        let used = usage.get(name).unwrap_or(&no_usage);
        let (cpu, mem, pods) = allocatable(node);
        let mut fits = true;
        // As Kubernetes: every insufficient resource counts, so the message
        // names them all.
        if pods.is_some_and(|p| used.pods + 1 > p) {
            no_pods += 1;
            fits = false;
        }
        if want_cpu > 0 && cpu.is_some_and(|c| used.cpu_millis + want_cpu > c) {
            no_cpu += 1;
            fits = false;
        }
        if want_mem > 0 && mem.is_some_and(|m| used.memory_bytes + want_mem > m) {
            no_memory += 1;
            fits = false;
        }
        if !fits {
            continue;
        }
        if want_ports
            .iter()
            .any(|w| used.host_ports.iter().any(|u| ports_conflict(w, u)))
        {
            no_ports += 1;
            continue;
        }
        let score = (
            spread
                .get(&(name.to_string(), owner.clone()))
                .copied()
                .unwrap_or(0),
            -affinity_preference(pod, node),
            untolerated(pod, node, &["PreferNoSchedule"]).len(),
            allocated_share(used, (want_cpu, want_mem), (cpu, mem)),
            used.pods as usize,
            name,
        );
        if best.is_none_or(|b| score < b) {
            best = Some(score);
        }
    }
    if let Some((.., name)) = best {
        return Ok(name);
    }
    let mut reasons = Vec::new();
    if not_ready > 0 {
        reasons.push(format!("{not_ready} node(s) were not ready"));
    }
    if unschedulable > 0 {
        reasons.push(format!("{unschedulable} node(s) were unschedulable"));
    }
    if mismatched > 0 {
        reasons.push(format!(
            "{mismatched} node(s) didn't match Pod's node affinity/selector"
        ));
    }
    for (taint, n) in &tainted {
        reasons.push(format!("{n} node(s) had untolerated taint {taint}"));
    }
    if no_ports > 0 {
        reasons.push(format!(
            "{no_ports} node(s) didn't have free ports for the requested pod ports"
        ));
    }
    if no_cpu > 0 {
        reasons.push(format!("{no_cpu} Insufficient cpu"));
    }
    if no_memory > 0 {
        reasons.push(format!("{no_memory} Insufficient memory"));
    }
    if no_pods > 0 {
        reasons.push(format!("{no_pods} Too many pods"));
    }
    let mut msg = format!("0/{} nodes are available", nodes.len());
    if !reasons.is_empty() {
        msg.push_str(": ");
        msg.push_str(&reasons.join(", "));
    }
    msg.push('.');
    Err(msg)
}

pub fn reconcile(snap: &Snapshot) -> Vec<Action> {
    let mut nodes: Vec<&Node> = snap.nodes().collect();
    nodes.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let mut usage: HashMap<String, NodeUsage> = HashMap::new();
    let mut spread: HashMap<(String, String), usize> = HashMap::new();
    let mut pending: BTreeMap<(Option<jiff::Timestamp>, String), &Pod> = BTreeMap::new();
    for pod in snap.pods() {
        if is_terminating(pod) || is_finished(pod) {
            continue;
        }
        match pod.spec.as_ref().and_then(|s| s.node_name.clone()) {
            Some(node) => {
                usage.entry(node.clone()).or_default().add(pod);
                if let Some(r) = controller_of(&pod.metadata) {
                    *spread.entry((node, r.uid.clone())).or_default() += 1;
                }
            }
            None => {
                let created = pod.metadata.creation_timestamp.as_ref().map(|t| t.0);
                pending.insert((created, uid(&pod.metadata).to_string()), pod);
            }
        }
    }
    let mut out = Vec::new();
    for pod in pending.into_values() {
        let mut p = pod.clone();
        // A pod whose claims live on a node goes there (local volumes).
        let picked = match crate::master::controllers::volumes::placement(snap, pod) {
            Err(why) => Err(format!("0/{} nodes are available: {why}.", nodes.len())),
            Ok(None) => pick(&nodes, pod, &usage, &spread),
            Ok(Some(n)) => {
                let there: Vec<&Node> = nodes
                    .iter()
                    .copied()
                    .filter(|x| x.metadata.name.as_deref() == Some(n.as_str()))
                    .collect();
                pick(&there, pod, &usage, &spread)
            }
        };
        match picked {
            Ok(node) => {
                crate::master::controllers::volumes::annotate(snap, &mut p);
                usage.entry(node.to_string()).or_default().add(pod);
                if let Some(r) = controller_of(&pod.metadata) {
                    *spread.entry((node.to_string(), r.uid.clone())).or_default() += 1;
                }
                p.spec.get_or_insert_with(Default::default).node_name = Some(node.to_string());
                set_scheduled(&mut p, snap, "True", None, None);
                let msg = format!(
                    "Successfully assigned {}/{} to {node}",
                    p.metadata.namespace.as_deref().unwrap_or(""),
                    p.metadata.name.as_deref().unwrap_or("")
                );
                let pod_obj = Object::Pod(p);
                let event = events::emit(snap, &pod_obj, false, "Scheduled", msg, SCHEDULER);
                out.push(Action::Update(pod_obj));
                out.push(event);
            }
            Err(message) => {
                if set_scheduled(
                    &mut p,
                    snap,
                    "False",
                    Some("Unschedulable"),
                    Some(message.clone()),
                ) {
                    let pod_obj = Object::Pod(p);
                    let event =
                        events::emit(snap, &pod_obj, true, "FailedScheduling", message, SCHEDULER);
                    out.push(Action::Update(pod_obj));
                    out.push(event);
                }
            }
        }
    }
    out
}

/// Sets the PodScheduled condition; returns whether anything changed.
fn set_scheduled(
    pod: &mut Pod,
    snap: &Snapshot,
    status: &str,
    reason: Option<&str>,
    message: Option<String>,
) -> bool {
    let st = pod.status.get_or_insert_with(Default::default);
    let conds = st.conditions.get_or_insert_with(Vec::new);
    if let Some(c) = conds.iter().find(|c| c.type_ == "PodScheduled")
        && c.status == status
        && c.reason.as_deref() == reason
        && c.message == message
    {
        return false;
    }
    conds.retain(|c| c.type_ != "PodScheduled");
    conds.push(PodCondition {
        type_: "PodScheduled".into(),
        status: status.into(),
        reason: reason.map(String::from),
        message,
        last_transition_time: Some(crate::master::controllers::time(snap.now)),
        ..Default::default()
    });
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::master::controllers::tests_support::*;

    fn bindings(actions: &[Action]) -> Vec<(String, String)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Update(Object::Pod(p)) => Some((
                    p.metadata.name.clone()?,
                    p.spec.as_ref()?.node_name.clone()?,
                )),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn spreads_replicas_over_ready_nodes() {
        let rs = replicaset("web-abc", "default", 6);
        let mut objects = vec![
            Object::Node(node("a", true)),
            Object::Node(node("b", true)),
            Object::Node(node("c", true)),
            Object::Node(node("down", false)),
        ];
        for i in 0..6 {
            objects.push(Object::Pod(owned_pod(&format!("p{i}"), &rs, None, false)));
        }
        let actions = reconcile(&snapshot(objects));
        let b = bindings(&actions);
        assert_eq!(b.len(), 6);
        for n in ["a", "b", "c"] {
            assert_eq!(b.iter().filter(|(_, node)| node == n).count(), 2, "{b:?}");
        }
        assert!(!b.iter().any(|(_, node)| node == "down"));
    }

    #[test]
    fn node_selector_on_arch_and_unschedulable_reason() {
        let rs = replicaset("web-abc", "default", 1);
        let mut pod = owned_pod("p", &rs, None, false);
        pod.spec.as_mut().unwrap().node_selector = Some(BTreeMap::from([(
            "kubernetes.io/arch".to_string(),
            "arm".to_string(),
        )]));
        let actions = reconcile(&snapshot(vec![
            Object::Node(node("a", true)),
            Object::Node(node("b", false)),
            Object::Pod(pod.clone()),
        ]));
        assert_eq!(bindings(&actions), vec![]);
        let Some(Action::Update(Object::Pod(p))) = actions.first() else {
            panic!("{actions:?}")
        };
        let cond = p
            .status
            .as_ref()
            .unwrap()
            .conditions
            .as_ref()
            .unwrap()
            .iter()
            .find(|c| c.type_ == "PodScheduled")
            .unwrap();
        assert_eq!(
            cond.message.as_deref(),
            Some(
                "0/2 nodes are available: 1 node(s) were not ready, 1 node(s) didn't match Pod's node affinity/selector."
            )
        );
        // Same situation again: nothing to write.
        let actions = reconcile(&snapshot(vec![
            Object::Node(node("a", true)),
            Object::Node(node("b", false)),
            Object::Pod(p.clone()),
        ]));
        assert_eq!(actions, vec![]);

        let mut armv7 = node("pi", true);
        armv7
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .insert("kubernetes.io/arch".into(), "arm".into());
        let actions = reconcile(&snapshot(vec![
            Object::Node(node("a", true)),
            Object::Node(armv7),
            Object::Pod(pod),
        ]));
        assert_eq!(
            bindings(&actions),
            vec![("p".to_string(), "pi".to_string())]
        );
    }

    fn sized_node(name: &str, cpu: &str, memory: &str, pods: &str) -> Node {
        use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
        let mut n = node(name, true);
        n.status.as_mut().unwrap().allocatable = Some(BTreeMap::from([
            ("cpu".to_string(), Quantity(cpu.into())),
            ("memory".to_string(), Quantity(memory.into())),
            ("pods".to_string(), Quantity(pods.into())),
        ]));
        n
    }

    fn requesting(
        name: &str,
        rs: &k8s_openapi::api::apps::v1::ReplicaSet,
        node: Option<&str>,
        cpu: &str,
        memory: &str,
    ) -> Pod {
        use k8s_openapi::api::core::v1::ResourceRequirements;
        use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
        let mut p = owned_pod(name, rs, node, false);
        p.spec.as_mut().unwrap().containers[0].resources = Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".to_string(), Quantity(cpu.into())),
                ("memory".to_string(), Quantity(memory.into())),
            ])),
            ..Default::default()
        });
        p
    }

    fn unschedulable_message(actions: &[Action]) -> Option<String> {
        actions.iter().find_map(|a| match a {
            Action::Update(Object::Pod(p)) => p
                .status
                .as_ref()?
                .conditions
                .as_ref()?
                .iter()
                .find(|c| c.type_ == "PodScheduled" && c.status == "False")?
                .message
                .clone(),
            _ => None,
        })
    }

    #[test]
    fn requests_must_fit_what_is_left_of_allocatable() {
        let rs = replicaset("web-abc", "default", 3);
        // "small" has 1 CPU with 600m already requested; "big" has 4 CPUs but
        // little memory left.
        let objects = vec![
            Object::Node(sized_node("small", "1", "4Gi", "110")),
            Object::Node(sized_node("big", "4", "1Gi", "110")),
            Object::Pod(requesting("bound-1", &rs, Some("small"), "600m", "1Gi")),
            Object::Pod(requesting("bound-2", &rs, Some("big"), "1", "900Mi")),
            Object::Pod(requesting("wants-500m", &rs, None, "500m", "64Mi")),
        ];
        let actions = reconcile(&snapshot(objects.clone()));
        assert_eq!(
            bindings(&actions),
            vec![("wants-500m".to_string(), "big".to_string())],
            "only big has 500m left"
        );

        let mut too_big = objects.clone();
        too_big.pop();
        too_big.push(Object::Pod(requesting("huge", &rs, None, "8", "2Gi")));
        let actions = reconcile(&snapshot(too_big));
        assert_eq!(bindings(&actions), vec![]);
        assert_eq!(
            unschedulable_message(&actions).as_deref(),
            Some("0/2 nodes are available: 2 Insufficient cpu, 1 Insufficient memory.")
        );

        // Two pending pods: the second sees what the first took.
        let mut two = objects[..4].to_vec();
        two.push(Object::Pod(requesting("a", &rs, None, "2", "10Mi")));
        two.push(Object::Pod(requesting("b", &rs, None, "2", "10Mi")));
        let actions = reconcile(&snapshot(two));
        assert_eq!(bindings(&actions).len(), 1);
        assert_eq!(
            unschedulable_message(&actions).as_deref(),
            Some("0/2 nodes are available: 2 Insufficient cpu.")
        );

        // A pod count limit.
        let actions = reconcile(&snapshot(vec![
            Object::Node(sized_node("tiny", "1", "1Gi", "1")),
            Object::Pod(owned_pod("x", &rs, Some("tiny"), false)),
            Object::Pod(owned_pod("y", &rs, None, false)),
        ]));
        assert_eq!(
            unschedulable_message(&actions).as_deref(),
            Some("0/1 nodes are available: 1 Too many pods.")
        );
        // Nodes that report no allocatable (older agents) take anything.
        let actions = reconcile(&snapshot(vec![
            Object::Node(node("a", true)),
            Object::Pod(requesting("z", &rs, None, "64", "1Ti")),
        ]));
        assert_eq!(bindings(&actions), vec![("z".to_string(), "a".to_string())]);
    }

    #[test]
    fn host_ports_are_not_shared_on_a_node() {
        use k8s_openapi::api::core::v1::ContainerPort;
        let rs = replicaset("web-abc", "default", 3);
        let with_port = |name: &str, node: Option<&str>, port: i32, proto: &str| {
            let mut p = owned_pod(name, &rs, node, false);
            p.spec.as_mut().unwrap().containers[0].ports = Some(vec![ContainerPort {
                container_port: 80,
                host_port: Some(port),
                protocol: Some(proto.into()),
                ..Default::default()
            }]);
            p
        };
        let actions = reconcile(&snapshot(vec![
            Object::Node(node("a", true)),
            Object::Node(node("b", true)),
            Object::Pod(with_port("on-a", Some("a"), 8080, "TCP")),
            Object::Pod(with_port("new", None, 8080, "TCP")),
            Object::Pod(with_port("udp", None, 8080, "UDP")),
        ]));
        let b = bindings(&actions);
        assert!(b.contains(&("new".to_string(), "b".to_string())), "{b:?}");
        assert_eq!(b.len(), 2, "UDP on the same port does not conflict: {b:?}");

        let actions = reconcile(&snapshot(vec![
            Object::Node(node("a", true)),
            Object::Pod(with_port("on-a", Some("a"), 8080, "TCP")),
            Object::Pod(with_port("new", None, 8080, "TCP")),
        ]));
        assert_eq!(
            unschedulable_message(&actions).as_deref(),
            Some(
                "0/1 nodes are available: 1 node(s) didn't have free ports for the requested pod ports."
            )
        );
        assert!(ports_conflict(
            &("TCP".into(), "".into(), 1),
            &("TCP".into(), "10.0.0.1".into(), 1)
        ));
        assert!(!ports_conflict(
            &("TCP".into(), "10.0.0.2".into(), 1),
            &("TCP".into(), "10.0.0.1".into(), 1)
        ));
    }

    fn labelled(name: &str, labels: &[(&str, &str)]) -> Node {
        let mut n = node(name, true);
        let l = n.metadata.labels.get_or_insert_with(Default::default);
        for (k, v) in labels {
            l.insert(k.to_string(), v.to_string());
        }
        n
    }

    fn bare_pod() -> Pod {
        let rs = replicaset("x", "default", 1);
        owned_pod("p", &rs, None, false)
    }

    fn term(key: &str, op: &str, values: &[&str]) -> NodeSelectorTerm {
        NodeSelectorTerm {
            match_expressions: Some(vec![NodeSelectorRequirement {
                key: key.into(),
                operator: op.into(),
                values: Some(values.iter().map(|v| v.to_string()).collect()),
            }]),
            match_fields: None,
        }
    }

    #[test]
    fn required_and_preferred_node_affinity() {
        use k8s_openapi::api::core::v1::{
            Affinity, NodeAffinity, NodeSelector, PreferredSchedulingTerm,
        };
        let pi4 = labelled("pi4", &[("kubernetes.io/arch", "arm64"), ("ram", "8")]);
        let pi3 = labelled("pi3", &[("kubernetes.io/arch", "arm"), ("ram", "1")]);
        let x86 = labelled("nuc", &[("kubernetes.io/arch", "amd64"), ("ram", "16")]);
        let nodes = [&pi3, &pi4, &x86];
        let mut pod = bare_pod();
        pod.spec.as_mut().unwrap().affinity = Some(Affinity {
            node_affinity: Some(NodeAffinity {
                required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                    node_selector_terms: vec![term("kubernetes.io/arch", "In", &["arm64", "arm"])],
                }),
                preferred_during_scheduling_ignored_during_execution: Some(vec![
                    PreferredSchedulingTerm {
                        weight: 10,
                        preference: term("ram", "Gt", &["4"]),
                    },
                ]),
            }),
            ..Default::default()
        });
        let none = HashMap::new();
        assert_eq!(pick(&nodes, &pod, &none, &HashMap::new()), Ok("pi4"));
        // NotIn / DoesNotExist exclude; an impossible term explains itself.
        pod.spec.as_mut().unwrap().affinity = Some(Affinity {
            node_affinity: Some(NodeAffinity {
                required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                    node_selector_terms: vec![term("kubernetes.io/arch", "In", &["riscv64"])],
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
        let err = pick(&nodes, &pod, &none, &HashMap::new()).unwrap_err();
        assert!(
            err.contains("3 node(s) didn't match Pod's node affinity/selector"),
            "{err}"
        );
        assert!(requirement_holds(
            &NodeSelectorRequirement {
                key: "k".into(),
                operator: "DoesNotExist".into(),
                values: None
            },
            None
        ));
    }

    #[test]
    fn taints_need_tolerations() {
        let mut tainted = labelled("gpu", &[]);
        tainted.spec = Some(k8s_openapi::api::core::v1::NodeSpec {
            taints: Some(vec![Taint {
                key: "dedicated".into(),
                value: Some("ml".into()),
                effect: "NoSchedule".into(),
                time_added: None,
            }]),
            ..Default::default()
        });
        let mut soft = labelled("soft", &[]);
        soft.spec = Some(k8s_openapi::api::core::v1::NodeSpec {
            taints: Some(vec![Taint {
                key: "busy".into(),
                value: None,
                effect: "PreferNoSchedule".into(),
                time_added: None,
            }]),
            ..Default::default()
        });
        let none = HashMap::new();
        let mut pod = bare_pod();
        let err = pick(&[&tainted], &pod, &none, &HashMap::new()).unwrap_err();
        assert!(
            err.contains("1 node(s) had untolerated taint {dedicated: ml}"),
            "{err}"
        );
        // A soft taint only scores: the pod still lands there when it must.
        assert_eq!(pick(&[&soft], &pod, &none, &HashMap::new()), Ok("soft"));
        pod.spec.as_mut().unwrap().tolerations = Some(vec![Toleration {
            key: Some("dedicated".into()),
            operator: Some("Equal".into()),
            value: Some("ml".into()),
            effect: Some("NoSchedule".into()),
            toleration_seconds: None,
        }]);
        // Tolerated: the hard taint passes and beats the soft one.
        assert_eq!(
            pick(&[&soft, &tainted], &pod, &none, &HashMap::new()),
            Ok("gpu")
        );
    }

    #[test]
    fn least_allocated_wins_between_equal_nodes() {
        let a = labelled("a", &[]);
        let b = labelled("b", &[]);
        let mut usage = HashMap::new();
        usage.insert(
            "a".to_string(),
            NodeUsage {
                cpu_millis: 0,
                memory_bytes: 0,
                pods: 0,
                host_ports: Default::default(),
            },
        );
        // b has fewer pods but more of its capacity requested.
        let with_alloc = |n: &Node| {
            let mut n = n.clone();
            n.status.as_mut().unwrap().allocatable = Some(BTreeMap::from([
                (
                    "cpu".into(),
                    k8s_openapi::apimachinery::pkg::api::resource::Quantity("4".into()),
                ),
                (
                    "memory".into(),
                    k8s_openapi::apimachinery::pkg::api::resource::Quantity("4Gi".into()),
                ),
            ]));
            n
        };
        let (a, b) = (with_alloc(&a), with_alloc(&b));
        usage.get_mut("a").unwrap().pods = 3;
        usage.insert(
            "b".to_string(),
            NodeUsage {
                cpu_millis: 3000,
                memory_bytes: 3 << 30,
                pods: 1,
                host_ports: Default::default(),
            },
        );
        assert_eq!(
            pick(&[&a, &b], &bare_pod(), &usage, &HashMap::new()),
            Ok("a")
        );
    }
}
