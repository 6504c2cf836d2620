//! Events: what happened to an object, as `describe` and `get events` show
//! it. Repeats of the same reason and message for the same object are folded
//! into one Event with a count, as Kubernetes does, so a crash-looping pod
//! costs one object, not thousands. Events expire after [`EVENT_TTL`].

use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use sha2::{Digest, Sha256};

use super::{Action, Snapshot, rv};
use crate::api::{Kind, Object, ObjectKey};

/// How long an Event is kept after it last happened (the API server's
/// default `--event-ttl`).
pub const EVENT_TTL: Duration = Duration::from_secs(3600);

/// What an event is about.
#[derive(Clone, Debug)]
pub struct Involved {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

impl Involved {
    pub fn of(obj: &Object) -> Involved {
        Involved {
            kind: obj.kind(),
            namespace: obj.namespace().to_string(),
            name: obj.name().to_string(),
            uid: obj.meta().uid.clone().unwrap_or_default(),
        }
    }
}

/// Where the Event for this happening lives: named after the object and a
/// hash of what happened, so the same happening again lands on the same Event.
pub fn key(involved: &Involved, reason: &str, message: &str) -> ObjectKey {
    let digest = Sha256::digest(format!("{}\0{reason}\0{message}", involved.uid).as_bytes());
    let name = format!("{}.{}", involved.name, hex::encode(&digest[..8]));
    ObjectKey::new(Kind::Event, &involved.namespace, &name)
}

/// The Event at `key` in a snapshot, if any.
pub fn find<'a>(snap: &'a Snapshot, key: &ObjectKey) -> Option<&'a Event> {
    snap.events().find(|e| {
        e.metadata.name.as_deref() == Some(key.name.as_str())
            && e.metadata.namespace.as_deref() == Some(key.namespace.as_str())
    })
}

/// The action that records one happening: a new Event, or `existing` (the
/// Event at [`key`]) with its count raised.
pub fn record(
    existing: Option<&Event>,
    involved: &Involved,
    type_: &str,
    reason: &str,
    message: &str,
    component: &str,
    at: jiff::Timestamp,
) -> Action {
    let key = key(involved, reason, message);
    let name = key.name.clone();
    match existing {
        Some(e) => {
            let mut e = e.clone();
            e.count = Some(e.count.unwrap_or(1) + 1);
            e.last_timestamp = Some(Time(at));
            Action::Update(Object::Event(e))
        }
        None => Action::Create(Object::Event(Event {
            metadata: ObjectMeta {
                name: Some(name),
                namespace: Some(involved.namespace.clone()),
                ..Default::default()
            },
            involved_object: ObjectReference {
                api_version: Some(involved.kind.api_version().to_string()),
                kind: Some(involved.kind.as_str().to_string()),
                name: Some(involved.name.clone()),
                namespace: Some(involved.namespace.clone()),
                uid: Some(involved.uid.clone()),
                ..Default::default()
            },
            type_: Some(type_.to_string()),
            reason: Some(reason.to_string()),
            message: Some(message.to_string()),
            count: Some(1),
            first_timestamp: Some(Time(at)),
            last_timestamp: Some(Time(at)),
            source: Some(EventSource {
                component: Some(component.to_string()),
                host: None,
            }),
            reporting_component: Some(component.to_string()),
            ..Default::default()
        })),
    }
}

/// Shorthand for controllers: the action recording that `about` had
/// `reason` happen, found against the snapshot's Events.
pub fn emit(
    snap: &Snapshot,
    about: &Object,
    warning: bool,
    reason: &str,
    message: String,
    component: &str,
) -> Action {
    let involved = Involved::of(about);
    let existing = find(snap, &key(&involved, reason, &message));
    let type_ = if warning { "Warning" } else { "Normal" };
    record(
        existing, &involved, type_, reason, &message, component, snap.now,
    )
}

/// Expired Events, and Events of objects that no longer exist, go.
pub fn reconcile(snap: &Snapshot) -> Vec<Action> {
    let uids: std::collections::HashSet<&str> = snap
        .objects
        .iter()
        .filter(|(k, _)| **k != Kind::Event)
        .flat_map(|(_, v)| v.iter())
        .filter_map(|o| o.meta().uid.as_deref())
        .collect();
    snap.events()
        .filter(|e| {
            let last = e
                .last_timestamp
                .as_ref()
                .or(e.metadata.creation_timestamp.as_ref())
                .map(|t| t.0)
                .unwrap_or(snap.now);
            let expired = snap.now.duration_since(last).unsigned_abs() > EVENT_TTL;
            let orphan = e
                .involved_object
                .uid
                .as_deref()
                .is_some_and(|u| !u.is_empty() && !uids.contains(u));
            expired || orphan
        })
        .map(|e| Action::Delete {
            key: ObjectKey::new(
                Kind::Event,
                e.metadata.namespace.as_deref().unwrap_or(""),
                e.metadata.name.as_deref().unwrap_or(""),
            ),
            resource_version: rv(&e.metadata),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::master::controllers::tests_support::*;

    #[test]
    fn repeats_fold_into_one_event_and_orphans_go() {
        let rs = replicaset("web-abc", "default", 1);
        let pod = owned_pod("web-abc-a", &rs, Some("n1"), true);
        let involved = Involved::of(&Object::Pod(pod.clone()));
        let snap = snapshot(vec![Object::Pod(pod.clone())]);
        let k = key(&involved, "BackOff", "Back-off restarting");
        let Action::Create(Object::Event(mut e)) = record(
            find(&snap, &k),
            &involved,
            "Warning",
            "BackOff",
            "Back-off restarting",
            "kubelet",
            snap.now,
        ) else {
            panic!("first happening creates an Event");
        };
        e.metadata.uid = Some("ev".into());
        e.metadata.resource_version = Some("3".into());
        let snap = snapshot(vec![Object::Pod(pod.clone()), Object::Event(e.clone())]);
        let Action::Update(Object::Event(again)) = record(
            find(&snap, &k),
            &involved,
            "Warning",
            "BackOff",
            "Back-off restarting",
            "kubelet",
            snap.now,
        ) else {
            panic!("a repeat updates it");
        };
        assert_eq!(again.count, Some(2));
        assert_eq!(reconcile(&snap), vec![], "live and fresh: kept");
        let snap = snapshot(vec![Object::Event(e)]);
        assert_eq!(reconcile(&snap).len(), 1, "its pod is gone: collected");
    }

    #[test]
    fn events_expire_after_their_ttl() {
        let rs = replicaset("web-abc", "default", 1);
        let pod = owned_pod("web-abc-a", &rs, Some("n1"), true);
        let involved = Involved::of(&Object::Pod(pod.clone()));
        let snap = snapshot(vec![Object::Pod(pod.clone())]);
        let at = |ago_secs: i64| {
            let then = snap
                .now
                .checked_sub(jiff::SignedDuration::from_secs(ago_secs))
                .unwrap();
            let Action::Create(Object::Event(mut e)) = record(
                None, &involved, "Normal", "Pulled", "pulled", "kubelet", then,
            ) else {
                panic!("a first happening creates an Event");
            };
            e.metadata.name = Some(format!("ev-{ago_secs}"));
            e.metadata.uid = Some(format!("ev-{ago_secs}"));
            Object::Event(e)
        };
        let fresh = at(EVENT_TTL.as_secs() as i64 - 60);
        let stale = at(EVENT_TTL.as_secs() as i64 + 60);
        let snap = snapshot(vec![Object::Pod(pod), fresh, stale]);
        let gone: Vec<String> = reconcile(&snap)
            .into_iter()
            .map(|a| match a {
                Action::Delete { key, .. } => key.name,
                other => panic!("only deletions: {other:?}"),
            })
            .collect();
        assert_eq!(gone, vec![format!("ev-{}", EVENT_TTL.as_secs() + 60)]);
    }
}
