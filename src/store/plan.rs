//! The pure half of a commit: from the stored objects and a batch of ops to the
//! outcomes, the objects to write and the events to send. No I/O, no clock, no
//! randomness of its own (the caller passes the time and the uid source), so every rule
//! about system metadata, preconditions and "unchanged" is tested here without a file.

use std::collections::BTreeMap;
use std::sync::Arc;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::{EventKind, Op, Outcome, StoreError};
use crate::api::{DEFAULT_NAMESPACE, Object, ObjectKey};

/// What a batch does, computed before anything is written.
#[derive(Debug)]
pub(crate) struct Plan {
    /// One per op, in op order.
    pub outcomes: Vec<Outcome>,
    /// The final value of every key the batch changes (`None`: deleted). Keys of
    /// unchanged ops are absent, so an all-unchanged batch has nothing to write.
    pub writes: BTreeMap<String, Option<Arc<Object>>>,
    /// One per op that changed something, in op order.
    pub events: Vec<(EventKind, Arc<Object>)>,
}

/// Where the clock and uids come from; the store passes the real ones, tests fixed ones.
pub(crate) struct Stamp<'a> {
    pub now: Timestamp,
    pub new_uid: &'a mut dyn FnMut() -> String,
}

/// Checks and applies `ops` in order against `stored` (each op sees the effects of the
/// ops before it), giving every written object resourceVersion `next_rv`. The first
/// failing op fails the whole batch.
pub(crate) fn plan(
    stored: &BTreeMap<String, Arc<Object>>,
    ops: Vec<Op>,
    next_rv: u64,
    stamp: &mut Stamp<'_>,
) -> Result<Plan, StoreError> {
    let mut plan = Plan {
        outcomes: Vec::with_capacity(ops.len()),
        writes: BTreeMap::new(),
        events: Vec::new(),
    };
    for op in ops {
        let outcome = match op {
            Op::Create(obj) => {
                let (key, obj) = normalize(obj)?;
                let encoded = key.encode();
                if current(stored, &plan.writes, &encoded).is_some() {
                    return Err(StoreError::AlreadyExists(key));
                }
                Outcome::Created(Arc::new(fresh(obj, next_rv, stamp)))
            }
            Op::Put(obj) => {
                let (key, obj) = normalize(obj)?;
                let expected = caller_rv(&key, &obj)?;
                match current(stored, &plan.writes, &key.encode()) {
                    Some(old) => {
                        check_rv(&key, expected, &old)?;
                        replace(old, obj, next_rv)
                    }
                    // A precondition on an absent object means it was deleted since the
                    // caller read it: recreating it would resurrect it.
                    None if expected.is_some_and(|rv| rv != 0) => {
                        return Err(StoreError::Conflict {
                            key,
                            expected: expected.unwrap_or(0),
                            actual: 0,
                        });
                    }
                    None => Outcome::Created(Arc::new(fresh(obj, next_rv, stamp))),
                }
            }
            Op::Update(obj) => {
                let (key, obj) = normalize(obj)?;
                let expected = caller_rv(&key, &obj)?;
                let Some(old) = current(stored, &plan.writes, &key.encode()) else {
                    return Err(StoreError::NotFound(key));
                };
                check_rv(&key, expected, &old)?;
                replace(old, obj, next_rv)
            }
            Op::Delete { key, expected_rv } => {
                let Some(old) = current(stored, &plan.writes, &key.encode()) else {
                    return Err(StoreError::NotFound(key));
                };
                check_rv(&key, expected_rv, &old)?;
                Outcome::Deleted(old)
            }
        };
        match &outcome {
            Outcome::Created(obj) | Outcome::Configured(obj) => {
                let kind = if matches!(outcome, Outcome::Created(_)) {
                    EventKind::Added
                } else {
                    EventKind::Modified
                };
                plan.writes.insert(obj.key().encode(), Some(obj.clone()));
                plan.events.push((kind, obj.clone()));
            }
            Outcome::Deleted(obj) => {
                plan.writes.insert(obj.key().encode(), None);
                plan.events.push((EventKind::Deleted, obj.clone()));
            }
            Outcome::Unchanged(_) => {}
        }
        plan.outcomes.push(outcome);
    }
    Ok(plan)
}

/// The object under `key` as the ops so far have left it.
fn current(
    stored: &BTreeMap<String, Arc<Object>>,
    writes: &BTreeMap<String, Option<Arc<Object>>>,
    key: &str,
) -> Option<Arc<Object>> {
    match writes.get(key) {
        Some(written) => written.clone(),
        None => stored.get(key).cloned(),
    }
}

/// Puts the namespace where the key says it is (a namespaced object without one lives
/// in `default`; a cluster-scoped one has none), and refuses a nameless object.
fn normalize(mut obj: Object) -> Result<(ObjectKey, Object), StoreError> {
    let namespaced = obj.kind().namespaced();
    let meta = obj.meta_mut();
    if namespaced {
        if meta.namespace.as_deref().is_none_or(str::is_empty) {
            meta.namespace = Some(DEFAULT_NAMESPACE.to_string());
        }
    } else {
        meta.namespace = None;
    }
    let key = obj.key();
    if key.name.is_empty() {
        return Err(StoreError::Invalid {
            key,
            reason: "metadata.name: Required value",
        });
    }
    Ok((key, obj))
}

/// The resourceVersion the caller expects, if it set one.
fn caller_rv(key: &ObjectKey, obj: &Object) -> Result<Option<u64>, StoreError> {
    match obj.meta().resource_version.as_deref() {
        None | Some("") => Ok(None),
        Some(text) => text.parse().map(Some).map_err(|_| StoreError::Invalid {
            key: key.clone(),
            reason: "metadata.resourceVersion: must be a decimal number",
        }),
    }
}

fn check_rv(key: &ObjectKey, expected: Option<u64>, stored: &Object) -> Result<(), StoreError> {
    match expected {
        Some(expected) if expected != stored.resource_version() => Err(StoreError::Conflict {
            key: key.clone(),
            expected,
            actual: stored.resource_version(),
        }),
        _ => Ok(()),
    }
}

/// A new object: the store's uid, creation time and generation, whatever the caller
/// sent.
fn fresh(mut obj: Object, rv: u64, stamp: &mut Stamp<'_>) -> Object {
    // Kubernetes times have whole seconds on the wire; keeping the sub-second part in
    // memory would make the in-memory object differ from the stored one.
    let now = Timestamp::from_second(stamp.now.as_second()).unwrap_or(stamp.now);
    let meta = obj.meta_mut();
    meta.uid = Some((stamp.new_uid)());
    meta.creation_timestamp = Some(Time(now));
    meta.generation = Some(1);
    meta.resource_version = Some(rv.to_string());
    obj
}

/// `obj` replacing `old`: identity and creation time stay, generation follows the spec.
fn replace(old: Arc<Object>, mut obj: Object, rv: u64) -> Outcome {
    let generation = old.meta().generation.unwrap_or(1);
    let generation = if spec(&old) == spec(&obj) {
        generation
    } else {
        generation + 1
    };
    let meta = obj.meta_mut();
    meta.uid = old.meta().uid.clone();
    meta.creation_timestamp = old.meta().creation_timestamp.clone();
    meta.generation = Some(generation);
    meta.resource_version = old.meta().resource_version.clone();
    if obj == *old {
        return Outcome::Unchanged(old);
    }
    obj.meta_mut().resource_version = Some(rv.to_string());
    Outcome::Configured(Arc::new(obj))
}

fn spec(obj: &Object) -> serde_json::Value {
    obj.to_json()
        .get_mut("spec")
        .map(serde_json::Value::take)
        .unwrap_or(serde_json::Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{ConfigMap, Deployment, Kind, Node};
    use k8s_openapi::api::apps::v1::DeploymentSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn cm(name: &str, value: &str) -> Object {
        Object::ConfigMap(ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            data: Some([("k".to_string(), value.to_string())].into()),
            ..Default::default()
        })
    }

    fn deploy(name: &str, replicas: i32, label: &str) -> Object {
        Object::Deployment(Deployment {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some([("l".to_string(), label.to_string())].into()),
                ..Default::default()
            },
            spec: Some(DeploymentSpec {
                replicas: Some(replicas),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    /// Plans `ops` at a fixed time with uids `uid-1`, `uid-2`, …
    fn run(
        stored: &BTreeMap<String, Arc<Object>>,
        ops: Vec<Op>,
        rv: u64,
    ) -> Result<Plan, StoreError> {
        let mut n = 0;
        let mut new_uid = || {
            n += 1;
            format!("uid-{n}")
        };
        let mut stamp = Stamp {
            now: Timestamp::from_second(1_700_000_000).unwrap(),
            new_uid: &mut new_uid,
        };
        plan(stored, ops, rv, &mut stamp)
    }

    fn apply(stored: &mut BTreeMap<String, Arc<Object>>, plan: Plan) {
        for (key, value) in plan.writes {
            match value {
                Some(obj) => stored.insert(key, obj),
                None => stored.remove(&key),
            };
        }
    }

    #[test]
    fn create_fills_system_metadata_and_ignores_the_callers() {
        let mut obj = cm("a", "1");
        obj.meta_mut().uid = Some("mine".into());
        obj.meta_mut().generation = Some(7);
        obj.meta_mut().resource_version = Some("99".into());
        let plan = run(&BTreeMap::new(), vec![Op::Create(obj)], 5).unwrap();
        let [Outcome::Created(obj)] = plan.outcomes.as_slice() else {
            panic!("{:?}", plan.outcomes)
        };
        let meta = obj.meta();
        assert_eq!(meta.uid.as_deref(), Some("uid-1"));
        assert_eq!(meta.generation, Some(1));
        assert_eq!(meta.resource_version.as_deref(), Some("5"));
        assert_eq!(meta.namespace.as_deref(), Some("default"));
        assert_eq!(
            meta.creation_timestamp,
            Some(Time(Timestamp::from_second(1_700_000_000).unwrap()))
        );
        assert_eq!(plan.events.len(), 1);
        assert_eq!(plan.events[0].0, EventKind::Added);
    }

    #[test]
    fn cluster_scoped_objects_lose_their_namespace() {
        let node = Object::Node(Node {
            metadata: ObjectMeta {
                name: Some("pi1".into()),
                namespace: Some("default".into()),
                ..Default::default()
            },
            ..Default::default()
        });
        let plan = run(&BTreeMap::new(), vec![Op::Put(node)], 1).unwrap();
        assert_eq!(
            plan.writes.keys().collect::<Vec<_>>(),
            vec![&ObjectKey::new(Kind::Node, "", "pi1").encode()]
        );
        assert_eq!(plan.outcomes[0].object().meta().namespace, None);
    }

    #[test]
    fn nameless_object_is_invalid() {
        let err = run(&BTreeMap::new(), vec![Op::Put(cm("", "1"))], 1).unwrap_err();
        assert!(matches!(err, StoreError::Invalid { .. }), "{err}");
        let mut obj = cm("a", "1");
        obj.meta_mut().resource_version = Some("abc".into());
        let err = run(&BTreeMap::new(), vec![Op::Put(obj)], 1).unwrap_err();
        assert!(matches!(err, StoreError::Invalid { .. }), "{err}");
    }

    #[test]
    fn replace_keeps_identity_and_bumps_generation_only_on_spec_change() {
        let mut stored = BTreeMap::new();
        let created = run(&stored, vec![Op::Create(deploy("web", 1, "a"))], 1).unwrap();
        apply(&mut stored, created);

        // A label change: configured, same generation, caller's uid ignored.
        let mut relabelled = deploy("web", 1, "b");
        relabelled.meta_mut().uid = Some("forged".into());
        let plan = run(&stored, vec![Op::Put(relabelled)], 2).unwrap();
        let Outcome::Configured(obj) = &plan.outcomes[0] else {
            panic!("{:?}", plan.outcomes)
        };
        assert_eq!(obj.meta().uid.as_deref(), Some("uid-1"));
        assert_eq!(obj.meta().generation, Some(1));
        assert_eq!(obj.meta().resource_version.as_deref(), Some("2"));
        assert_eq!(plan.events[0].0, EventKind::Modified);
        apply(&mut stored, plan);

        // A spec change bumps the generation.
        let plan = run(&stored, vec![Op::Update(deploy("web", 3, "b"))], 3).unwrap();
        assert_eq!(plan.outcomes[0].object().meta().generation, Some(2));
        apply(&mut stored, plan);

        // The same object again: unchanged, nothing to write.
        let plan = run(&stored, vec![Op::Put(deploy("web", 3, "b"))], 4).unwrap();
        assert!(matches!(plan.outcomes[0], Outcome::Unchanged(_)));
        assert!(plan.writes.is_empty() && plan.events.is_empty());
        assert_eq!(plan.outcomes[0].object().resource_version(), 3);
    }

    #[test]
    fn kinds_without_spec_keep_generation_one() {
        let mut stored = BTreeMap::new();
        let created = run(&stored, vec![Op::Put(cm("a", "1"))], 1).unwrap();
        apply(&mut stored, created);
        let plan = run(&stored, vec![Op::Put(cm("a", "2"))], 2).unwrap();
        assert!(matches!(plan.outcomes[0], Outcome::Configured(_)));
        assert_eq!(plan.outcomes[0].object().meta().generation, Some(1));
    }

    #[test]
    fn preconditions() {
        let mut stored = BTreeMap::new();
        let created = run(&stored, vec![Op::Put(cm("a", "1"))], 1).unwrap();
        apply(&mut stored, created);
        let key = ObjectKey::new(Kind::ConfigMap, "default", "a");
        let missing = ObjectKey::new(Kind::ConfigMap, "default", "zz");

        let err = run(&stored, vec![Op::Create(cm("a", "2"))], 2).unwrap_err();
        assert!(matches!(err, StoreError::AlreadyExists(k) if k == key));
        let err = run(&stored, vec![Op::Update(cm("zz", "2"))], 2).unwrap_err();
        assert!(matches!(err, StoreError::NotFound(k) if k == missing));
        let err = run(
            &stored,
            vec![Op::Delete {
                key: missing.clone(),
                expected_rv: None,
            }],
            2,
        )
        .unwrap_err();
        assert!(matches!(err, StoreError::NotFound(_)));

        for op in [Op::Put as fn(Object) -> Op, Op::Update] {
            let mut stale = cm("a", "2");
            stale.meta_mut().resource_version = Some("7".into());
            let err = run(&stored, vec![op(stale)], 2).unwrap_err();
            assert!(
                matches!(err, StoreError::Conflict { ref key, expected: 7, actual: 1 } if key.name == "a"),
                "{err:?}"
            );
            let mut current = cm("a", "2");
            current.meta_mut().resource_version = Some("1".into());
            assert!(run(&stored, vec![op(current)], 2).is_ok());
        }
        let err = run(
            &stored,
            vec![Op::Delete {
                key: key.clone(),
                expected_rv: Some(2),
            }],
            2,
        )
        .unwrap_err();
        assert!(matches!(err, StoreError::Conflict { .. }));

        // A precondition on an object that is gone must not recreate it.
        let mut gone = cm("zz", "1");
        gone.meta_mut().resource_version = Some("1".into());
        let err = run(&stored, vec![Op::Put(gone)], 2).unwrap_err();
        assert!(matches!(err, StoreError::Conflict { actual: 0, .. }));
    }

    #[test]
    fn ops_see_the_batch_before_them() {
        let stored = BTreeMap::new();
        let key = ObjectKey::new(Kind::ConfigMap, "default", "a");
        let plan = run(
            &stored,
            vec![
                Op::Create(cm("a", "1")),
                Op::Update(cm("a", "2")),
                Op::Delete {
                    key: key.clone(),
                    expected_rv: Some(4),
                },
                Op::Create(cm("a", "3")),
            ],
            4,
        )
        .unwrap();
        let kinds: Vec<_> = plan.events.iter().map(|(k, _)| *k).collect();
        assert_eq!(
            kinds,
            [
                EventKind::Added,
                EventKind::Modified,
                EventKind::Deleted,
                EventKind::Added
            ]
        );
        let last = plan.writes[&key.encode()].as_ref().unwrap();
        assert_eq!(last.meta().uid.as_deref(), Some("uid-2"));
        let Object::ConfigMap(cm) = &**last else {
            panic!()
        };
        assert_eq!(cm.data.as_ref().unwrap()["k"], "3");
    }
}
