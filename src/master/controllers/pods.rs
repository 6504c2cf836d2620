//! Pod deletion: the graceful path every deleter goes through, and the
//! finalizer that removes a deleted pod once its node has let it go.
//!
//! A pod bound to a node is not removed at once: it gets a `deletionTimestamp`
//! (kubectl shows it Terminating), its node stops it within the grace period
//! and reports it gone, and only then does the object go. A pod no node holds
//! goes at once.

use std::time::Duration;

use super::{Action, Snapshot, is_terminating, node_ready, rv};
use crate::api::{Object, Pod};

/// Extra time a NotReady node gets beyond the pod's grace period before its
/// terminating pods are removed without its word.
pub const FORCE_AFTER: Duration = Duration::from_secs(30);

/// The action that deletes `pod` the way Kubernetes does.
pub fn delete(pod: &Pod, now: jiff::Timestamp) -> Option<Action> {
    if is_terminating(pod) {
        return None;
    }
    let key = Object::Pod(pod.clone()).key();
    let bound = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.as_ref())
        .is_some();
    if !bound {
        return Some(Action::Delete {
            key,
            resource_version: rv(&pod.metadata),
        });
    }
    let grace = pod
        .spec
        .as_ref()
        .and_then(|s| s.termination_grace_period_seconds)
        .unwrap_or(30)
        .max(0);
    let mut p = pod.clone();
    p.metadata.deletion_timestamp = Some(super::time(now));
    p.metadata.deletion_grace_period_seconds = Some(grace);
    Some(Action::Update(Object::Pod(p)))
}

/// Removes terminating pods once their node reports them released, or once the
/// node is gone or NotReady past the grace period.
pub fn reconcile(snap: &Snapshot) -> Vec<Action> {
    let mut out = Vec::new();
    for pod in snap.pods().filter(|p| is_terminating(p)) {
        let node_name = pod.spec.as_ref().and_then(|s| s.node_name.as_deref());
        let released = snap
            .terminated
            .contains(pod.metadata.uid.as_deref().unwrap_or(""));
        let node =
            node_name.and_then(|n| snap.nodes().find(|x| x.metadata.name.as_deref() == Some(n)));
        let abandoned = match node {
            None => true,
            Some(node) if !node_ready(node) => {
                let since = pod
                    .metadata
                    .deletion_timestamp
                    .as_ref()
                    .map(|t| t.0)
                    .unwrap_or(snap.now);
                let grace = pod
                    .metadata
                    .deletion_grace_period_seconds
                    .unwrap_or(30)
                    .max(0) as u64;
                let limit = Duration::from_secs(grace) + FORCE_AFTER;
                let elapsed = snap.now.duration_since(since);
                elapsed.is_positive() && elapsed.unsigned_abs() >= limit
            }
            Some(_) => false,
        };
        if released || abandoned {
            out.push(Action::Delete {
                key: Object::Pod(pod.clone()).key(),
                resource_version: rv(&pod.metadata),
            });
        }
    }
    out
}
