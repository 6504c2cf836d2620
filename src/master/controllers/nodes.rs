//! Node lifecycle: a node is Ready while it reports within the grace period,
//! Unknown once it falls silent. Heartbeats stay in memory; only the
//! transition is written.

use k8s_openapi::api::core::v1::NodeCondition;

use super::{Action, Snapshot};
use crate::api::Object;

pub fn reconcile(snap: &Snapshot) -> Vec<Action> {
    let mut out = Vec::new();
    for node in snap.nodes() {
        let name = node.metadata.name.as_deref().unwrap_or("");
        let fresh = snap.last_seen.get(name).is_some_and(|t| {
            let age = snap.now.duration_since(*t);
            age.unsigned_abs() <= snap.node_grace
        });
        let (status, reason, message) = if fresh {
            (
                "True",
                "KubeletReady",
                "bramble agent is posting ready status",
            )
        } else {
            (
                "Unknown",
                "NodeStatusUnknown",
                "Bramble agent stopped posting node status.",
            )
        };
        let current = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "Ready"));
        if current.is_some_and(|c| c.status == status) {
            continue;
        }
        let mut n = node.clone();
        let st = n.status.get_or_insert_with(Default::default);
        let conds = st.conditions.get_or_insert_with(Vec::new);
        conds.retain(|c| c.type_ != "Ready");
        let now = super::time(snap.now);
        conds.push(NodeCondition {
            type_: "Ready".into(),
            status: status.into(),
            reason: Some(reason.into()),
            message: Some(message.into()),
            last_heartbeat_time: Some(now.clone()),
            last_transition_time: Some(now),
        });
        out.push(Action::Update(Object::Node(n)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::master::controllers::tests_support::*;
    use std::time::Duration;

    #[test]
    fn ready_while_heard_from_then_unknown() {
        let mut snap = snapshot(vec![Object::Node(node("pi1", false))]);
        snap.node_grace = Duration::from_secs(15);
        snap.last_seen.insert("pi1".into(), snap.now);
        let actions = reconcile(&snap);
        let Some(Action::Update(Object::Node(n))) = actions.first() else {
            panic!("{actions:?}")
        };
        assert!(crate::master::controllers::node_ready(n));

        let mut snap = snapshot(vec![Object::Node(n.clone())]);
        snap.node_grace = Duration::from_secs(15);
        snap.last_seen.insert("pi1".into(), snap.now);
        assert_eq!(reconcile(&snap), vec![], "no write while nothing changes");

        snap.last_seen
            .insert("pi1".into(), snap.now - jiff::SignedDuration::from_secs(60));
        let actions = reconcile(&snap);
        let Some(Action::Update(Object::Node(n))) = actions.first() else {
            panic!("{actions:?}")
        };
        assert!(!crate::master::controllers::node_ready(n));
    }
}
