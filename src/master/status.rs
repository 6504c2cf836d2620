//! Folding what workers report into the stored Node and Pod objects. Pure:
//! each function returns the updated object only when something the user can
//! see changed, because an unchanged status must not cost a disk write.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, NodeAddress, NodeStatus, NodeSystemInfo, Pod, PodStatus};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::transport::messages::{NodeFacts, PodReport};

/// The node object with the facts its agent reported.
pub fn node_with_facts(node: &Node, facts: &NodeFacts) -> Option<Node> {
    let mut n = node.clone();
    let labels = n.metadata.labels.get_or_insert_with(BTreeMap::new);
    labels.insert("kubernetes.io/arch".into(), facts.arch.clone());
    labels.insert("kubernetes.io/os".into(), facts.os.clone());
    labels.insert("beta.kubernetes.io/arch".into(), facts.arch.clone());
    labels.insert("beta.kubernetes.io/os".into(), facts.os.clone());
    labels.insert(
        "kubernetes.io/hostname".into(),
        n.metadata.name.clone().unwrap_or_default(),
    );
    let st = n.status.get_or_insert_with(NodeStatus::default);
    let mut addresses: Vec<NodeAddress> = facts
        .addresses
        .iter()
        .map(|a| NodeAddress {
            type_: "InternalIP".into(),
            address: a.clone(),
        })
        .collect();
    addresses.push(NodeAddress {
        type_: "Hostname".into(),
        address: facts.hostname.clone(),
    });
    st.addresses = Some(addresses);
    let resources = |cpu: i64, memory: i64| {
        let mut r = BTreeMap::from([
            ("cpu".to_string(), Quantity(format!("{cpu}m"))),
            (
                "memory".to_string(),
                Quantity(format!("{}Ki", memory / 1024)),
            ),
            ("pods".to_string(), Quantity(facts.max_pods.to_string())),
        ]);
        if facts.ephemeral_storage_bytes > 0 {
            r.insert(
                "ephemeral-storage".to_string(),
                Quantity(format!("{}Ki", facts.ephemeral_storage_bytes / 1024)),
            );
        }
        r
    };
    st.capacity = Some(resources(facts.cpu_millis, facts.memory_bytes));
    st.allocatable = Some(resources(
        facts.allocatable_cpu_millis(),
        facts.allocatable_memory_bytes(),
    ));
    st.node_info = Some(NodeSystemInfo {
        architecture: facts.arch.clone(),
        operating_system: facts.os.clone(),
        os_image: facts.os_image.clone(),
        kernel_version: facts.kernel_version.clone(),
        container_runtime_version: "libcontainer://0.7".into(),
        kubelet_version: facts.agent_version.clone(),
        kube_proxy_version: facts.agent_version.clone(),
        ..Default::default()
    });
    (&n != node).then_some(n)
}

/// The pod with the status its node reported; the master keeps the
/// PodScheduled condition, which is its own.
pub fn pod_with_report(pod: &Pod, report: &PodReport) -> Option<Pod> {
    let old = pod.status.clone().unwrap_or_default();
    let mut status: PodStatus = report.status.clone();
    let mut conditions: Vec<_> = old
        .conditions
        .iter()
        .flatten()
        .filter(|c| c.type_ == "PodScheduled")
        .cloned()
        .collect();
    conditions.extend(
        status
            .conditions
            .take()
            .into_iter()
            .flatten()
            .filter(|c| c.type_ != "PodScheduled"),
    );
    status.conditions = (!conditions.is_empty()).then_some(conditions);
    if status == old {
        return None;
    }
    let mut p = pod.clone();
    p.status = Some(status);
    Some(p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::master::controllers::tests_support::*;
    use k8s_openapi::api::core::v1::PodCondition;

    #[test]
    fn same_report_twice_changes_nothing() {
        let facts = NodeFacts {
            addresses: vec!["192.168.1.20".into()],
            hostname: "pi1".into(),
            arch: "arm64".into(),
            os: "linux".into(),
            cpu_millis: 4000,
            memory_bytes: 4 << 30,
            max_pods: 110,
            ephemeral_storage_bytes: 32 << 30,
            reserved_cpu_millis: 500,
            reserved_memory_bytes: 1 << 30,
            ..Default::default()
        };
        let n1 =
            node_with_facts(&node("pi1", true), &facts).expect("first report changes the node");
        assert_eq!(
            n1.metadata.labels.as_ref().unwrap()["kubernetes.io/arch"],
            "arm64"
        );
        assert_eq!(node_with_facts(&n1, &facts), None);
        let st = n1.status.as_ref().unwrap();
        let cap = st.capacity.as_ref().unwrap();
        let alloc = st.allocatable.as_ref().unwrap();
        assert_eq!(cap["cpu"].0, "4000m");
        assert_eq!(alloc["cpu"].0, "3500m");
        assert_eq!(cap["memory"].0, "4194304Ki");
        assert_eq!(alloc["memory"].0, "3145728Ki");
        assert_eq!(alloc["ephemeral-storage"].0, "33554432Ki");
        assert_eq!(alloc["pods"].0, "110");
    }

    #[test]
    fn pod_report_keeps_scheduled_condition() {
        let rs = replicaset("web-abc", "default", 1);
        let mut pod = owned_pod("a", &rs, Some("n1"), false);
        pod.status.as_mut().unwrap().conditions = Some(vec![PodCondition {
            type_: "PodScheduled".into(),
            status: "True".into(),
            ..Default::default()
        }]);
        let report = PodReport {
            uid: "uid-a".into(),
            namespace: "default".into(),
            name: "a".into(),
            status: PodStatus {
                phase: Some("Running".into()),
                pod_ip: Some("10.88.0.2".into()),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: "True".into(),
                    ..Default::default()
                }]),
                ..Default::default()
            },
            terminated: false,
            usage: Vec::new(),
        };
        let updated = pod_with_report(&pod, &report).unwrap();
        let types: Vec<_> = updated
            .status
            .as_ref()
            .unwrap()
            .conditions
            .as_ref()
            .unwrap()
            .iter()
            .map(|c| c.type_.as_str())
            .collect();
        assert_eq!(types, vec!["PodScheduled", "Ready"]);
        assert_eq!(pod_with_report(&updated, &report), None);
    }
}
