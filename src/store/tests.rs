//! The store against real redb files in temporary directories.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::DeploymentSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use super::*;
use crate::api::{ConfigMap, Deployment, Pod};

fn cm(ns: &str, name: &str, value: &str) -> Object {
    Object::ConfigMap(ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(ns.into()),
            ..Default::default()
        },
        data: Some([("k".to_string(), value.to_string())].into()),
        ..Default::default()
    })
}

fn deploy(name: &str, replicas: i32) -> Object {
    Object::Deployment(Deployment {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        spec: Some(DeploymentSpec {
            replicas: Some(replicas),
            ..Default::default()
        }),
        ..Default::default()
    })
}

fn data(obj: &Object) -> &str {
    match obj {
        Object::ConfigMap(cm) => &cm.data.as_ref().unwrap()["k"],
        other => panic!("not a ConfigMap: {other:?}"),
    }
}

fn with_rv(mut obj: Object, rv: u64) -> Object {
    obj.meta_mut().resource_version = Some(rv.to_string());
    obj
}

fn cm_key(name: &str) -> ObjectKey {
    ObjectKey::new(Kind::ConfigMap, "default", name)
}

struct TempStore {
    dir: tempfile::TempDir,
    store: Store,
}

impl TempStore {
    fn new() -> TempStore {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("master.redb")).unwrap();
        TempStore { dir, store }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("master.redb")
    }

    /// Closes the file and opens it again (it is locked while open).
    fn reopen(self) -> TempStore {
        let TempStore { dir, store } = self;
        TempStore {
            store: reopen(store),
            dir,
        }
    }
}

/// Drops `store` and opens its file again.
fn reopen(store: Store) -> Store {
    let path = store.path().to_path_buf();
    drop(store);
    Store::open(&path).unwrap()
}

fn commit(store: &Store, ops: Vec<Op>) -> Result<Vec<Outcome>, StoreError> {
    store.commit(ops, Mode::Commit)
}

#[test]
fn outcomes_of_create_put_update_delete() {
    let t = TempStore::new();
    let s = &t.store;
    assert_eq!(s.resource_version(), 0);

    let out = commit(s, vec![Op::Create(cm("default", "a", "1"))]).unwrap();
    assert!(matches!(&out[..], [Outcome::Created(o)] if o.resource_version() == 1));
    let out = commit(s, vec![Op::Put(cm("default", "b", "1"))]).unwrap();
    assert!(matches!(&out[..], [Outcome::Created(o)] if o.resource_version() == 2));
    let out = commit(s, vec![Op::Put(cm("default", "a", "2"))]).unwrap();
    assert!(matches!(&out[..], [Outcome::Configured(o)] if o.resource_version() == 3));
    let out = commit(s, vec![Op::Update(cm("default", "b", "2"))]).unwrap();
    assert!(matches!(&out[..], [Outcome::Configured(o)] if o.resource_version() == 4));
    let out = commit(s, vec![Op::Put(cm("default", "b", "2"))]).unwrap();
    assert!(matches!(&out[..], [Outcome::Unchanged(o)] if o.resource_version() == 4));
    assert_eq!(s.resource_version(), 4);
    let out = commit(
        s,
        vec![Op::Delete {
            key: cm_key("a"),
            expected_rv: Some(3),
        }],
    )
    .unwrap();
    assert!(matches!(&out[..], [Outcome::Deleted(o)] if data(o) == "2"));
    assert_eq!(s.resource_version(), 5);
    assert!(s.get(&cm_key("a")).is_none());
    assert_eq!(data(&s.get(&cm_key("b")).unwrap()), "2");
    assert_eq!(out[0].verb(), "deleted");
}

#[test]
fn errors_name_the_object() {
    let t = TempStore::new();
    let s = &t.store;
    commit(s, vec![Op::Create(cm("default", "a", "1"))]).unwrap();

    let err = commit(s, vec![Op::Create(cm("default", "a", "2"))]).unwrap_err();
    assert!(matches!(&err, StoreError::AlreadyExists(k) if *k == cm_key("a")));
    assert_eq!(err.to_string(), "configmaps \"a\" already exists");

    let err = commit(s, vec![Op::Update(cm("default", "zz", "2"))]).unwrap_err();
    assert!(matches!(&err, StoreError::NotFound(k) if *k == cm_key("zz")));
    let err = commit(
        s,
        vec![Op::Delete {
            key: cm_key("zz"),
            expected_rv: None,
        }],
    )
    .unwrap_err();
    assert!(matches!(&err, StoreError::NotFound(_)));

    let err = commit(s, vec![Op::Update(with_rv(cm("default", "a", "2"), 9))]).unwrap_err();
    assert!(
        matches!(&err, StoreError::Conflict { key, expected: 9, actual: 1 } if *key == cm_key("a")),
        "{err:?}"
    );
    let err = commit(s, vec![Op::Put(with_rv(cm("default", "a", "2"), 9))]).unwrap_err();
    assert!(matches!(&err, StoreError::Conflict { .. }));
    assert!(err.to_string().starts_with(
        "Operation cannot be fulfilled on configmaps \"a\": the object has been modified"
    ));
    // With the current version, it goes through.
    commit(s, vec![Op::Update(with_rv(cm("default", "a", "2"), 1))]).unwrap();
    assert_eq!(s.resource_version(), 2);
}

#[test]
fn a_failing_batch_stores_nothing_and_bumps_nothing() {
    let t = TempStore::new();
    let s = &t.store;
    commit(s, vec![Op::Create(cm("default", "a", "1"))]).unwrap();
    let mut rx = s.watch();
    let writes = s.write_transactions();

    let err = commit(
        s,
        vec![
            Op::Create(cm("default", "new", "1")),
            Op::Put(cm("default", "a", "2")),
            Op::Update(with_rv(cm("default", "a", "3"), 1)), // stale: the Put made it 2
            Op::Create(cm("default", "later", "1")),
        ],
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Conflict {
                expected: 1,
                actual: 2,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(s.resource_version(), 1);
    assert_eq!(s.write_transactions(), writes);
    assert!(s.get(&cm_key("new")).is_none());
    assert_eq!(data(&s.get(&cm_key("a")).unwrap()), "1");
    assert!(rx.try_recv().is_err());

    let t = t.reopen();
    let s = &t.store;
    assert_eq!(s.resource_version(), 1);
    assert_eq!(s.list(Kind::ConfigMap, None).len(), 1);
}

#[test]
fn dry_run_writes_nothing() {
    let t = TempStore::new();
    let s = &t.store;
    commit(s, vec![Op::Create(cm("default", "a", "1"))]).unwrap();
    let mut rx = s.watch();
    let before = std::fs::metadata(t.path()).unwrap();

    let out = s
        .commit(
            vec![
                Op::Put(cm("default", "a", "2")),
                Op::Create(cm("default", "b", "1")),
                Op::Put(cm("default", "a", "2")),
            ],
            Mode::DryRun,
        )
        .unwrap();
    assert!(matches!(
        &out[..],
        [
            Outcome::Configured(_),
            Outcome::Created(_),
            Outcome::Unchanged(_)
        ]
    ));
    // Dry runs check too.
    let err = s
        .commit(vec![Op::Create(cm("default", "a", "1"))], Mode::DryRun)
        .unwrap_err();
    assert!(matches!(err, StoreError::AlreadyExists(_)));

    assert_eq!(s.resource_version(), 1);
    assert_eq!(s.write_transactions(), 1);
    assert!(s.get(&cm_key("b")).is_none());
    assert_eq!(data(&s.get(&cm_key("a")).unwrap()), "1");
    assert!(rx.try_recv().is_err());
    let after = std::fs::metadata(t.path()).unwrap();
    assert_eq!(before.modified().unwrap(), after.modified().unwrap());
}

#[test]
fn unchanged_put_writes_nothing() {
    let t = TempStore::new();
    let s = &t.store;
    let created = commit(
        s,
        vec![Op::Put(deploy("web", 2)), Op::Put(cm("default", "a", "1"))],
    )
    .unwrap();
    let mut rx = s.watch();
    let before = std::fs::metadata(t.path()).unwrap();

    // The same objects as sent, and as read back (with system metadata): both unchanged.
    let again = commit(
        s,
        vec![
            Op::Put(deploy("web", 2)),
            Op::Update((**created[1].object()).clone()),
            Op::Put(cm("default", "a", "1")),
        ],
    )
    .unwrap();
    assert!(again.iter().all(|o| matches!(o, Outcome::Unchanged(_))));
    assert_eq!(s.write_transactions(), 1);
    assert_eq!(s.resource_version(), 1);
    assert!(rx.try_recv().is_err());
    let after = std::fs::metadata(t.path()).unwrap();
    assert_eq!(before.modified().unwrap(), after.modified().unwrap());
    assert_eq!(before.len(), after.len());

    // On disk too.
    let t = t.reopen();
    let s = &t.store;
    assert_eq!(s.resource_version(), 1);
}

#[test]
fn generation_follows_the_spec() {
    let t = TempStore::new();
    let s = &t.store;
    let created = commit(s, vec![Op::Create(deploy("web", 1))]).unwrap();
    let uid = created[0].object().meta().uid.clone().unwrap();
    let key = ObjectKey::new(Kind::Deployment, "default", "web");

    let mut labelled = deploy("web", 1);
    labelled.meta_mut().labels = Some([("a".to_string(), "b".to_string())].into());
    labelled.meta_mut().uid = Some("someone-elses".into());
    commit(s, vec![Op::Put(labelled)]).unwrap();
    let got = s.get(&key).unwrap();
    assert_eq!(got.meta().generation, Some(1));
    assert_eq!(got.meta().uid.as_deref(), Some(uid.as_str()));
    assert_eq!(got.resource_version(), 2);

    commit(s, vec![Op::Put(deploy("web", 3))]).unwrap();
    let got = s.get(&key).unwrap();
    assert_eq!(got.meta().generation, Some(2));
    assert_eq!(
        got.meta().creation_timestamp,
        created[0].object().meta().creation_timestamp
    );
    assert!(
        got.labels().is_empty(),
        "a Put replaces the object as given"
    );
}

#[test]
fn reopen_keeps_everything_and_continues_the_counter() {
    let t = TempStore::new();
    commit(
        &t.store,
        vec![Op::Put(deploy("web", 1)), Op::Put(cm("ns1", "a", "1"))],
    )
    .unwrap();
    commit(&t.store, vec![Op::Put(cm("ns2", "a", "2"))]).unwrap();
    let before: Vec<_> = Kind::ALL
        .iter()
        .flat_map(|k| t.store.list(*k, None))
        .collect();

    let t = t.reopen();
    let s = &t.store;
    let after: Vec<_> = Kind::ALL.iter().flat_map(|k| s.list(*k, None)).collect();
    assert_eq!(before, after);
    assert_eq!(s.resource_version(), 2);
    let out = commit(s, vec![Op::Put(cm("ns2", "a", "3"))]).unwrap();
    assert_eq!(out[0].object().resource_version(), 3);
    assert_eq!(s.list(Kind::ConfigMap, Some("ns2")).len(), 1);
    assert_eq!(s.list(Kind::ConfigMap, None).len(), 2);
}

#[test]
fn list_filters_by_kind_and_namespace_in_key_order() {
    let t = TempStore::new();
    let s = &t.store;
    commit(
        s,
        vec![
            Op::Put(cm("b", "z", "1")),
            Op::Put(cm("a", "y", "1")),
            Op::Put(cm("a", "x", "1")),
            Op::Put(cm("ab", "w", "1")),
            Op::Put(deploy("d", 1)),
        ],
    )
    .unwrap();
    let names = |v: Vec<Arc<Object>>| {
        v.iter()
            .map(|o| format!("{}/{}", o.namespace(), o.name()))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        names(s.list(Kind::ConfigMap, None)),
        ["a/x", "a/y", "ab/w", "b/z"]
    );
    assert_eq!(names(s.list(Kind::ConfigMap, Some("a"))), ["a/x", "a/y"]);
    assert_eq!(
        names(s.list(Kind::Deployment, Some("default"))),
        ["default/d"]
    );
    assert!(s.list(Kind::Pod, None).is_empty());
}

#[test]
fn dependents_follow_owner_references() {
    let t = TempStore::new();
    let s = &t.store;
    let out = commit(s, vec![Op::Put(deploy("web", 1))]).unwrap();
    let owner_uid = out[0].object().meta().uid.clone().unwrap();
    let pod = |name: &str, owner: Option<&str>| {
        Object::Pod(Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                owner_references: owner.map(|uid| {
                    vec![OwnerReference {
                        api_version: "apps/v1".into(),
                        kind: "Deployment".into(),
                        name: "web".into(),
                        uid: uid.into(),
                        ..Default::default()
                    }]
                }),
                ..Default::default()
            },
            ..Default::default()
        })
    };
    commit(
        s,
        vec![
            Op::Put(pod("p2", Some(&owner_uid))),
            Op::Put(pod("p1", Some(&owner_uid))),
            Op::Put(pod("orphan", None)),
        ],
    )
    .unwrap();
    let names = |v: Vec<Arc<Object>>| v.iter().map(|o| o.name().to_string()).collect::<Vec<_>>();
    assert_eq!(names(s.dependents(&owner_uid)), ["p1", "p2"]);

    // Orphaning one, deleting the other.
    commit(
        s,
        vec![
            Op::Put(pod("p1", None)),
            Op::Delete {
                key: ObjectKey::new(Kind::Pod, "default", "p2"),
                expected_rv: None,
            },
        ],
    )
    .unwrap();
    assert!(s.dependents(&owner_uid).is_empty());

    commit(s, vec![Op::Put(pod("p3", Some(&owner_uid)))]).unwrap();
    let t = t.reopen();
    let s = &t.store;
    assert_eq!(names(s.dependents(&owner_uid)), ["p3"]);
}

#[test]
fn watchers_hear_each_change_after_its_commit() {
    let t = TempStore::new();
    let s = &t.store;
    let mut rx = s.watch();
    commit(
        s,
        vec![
            Op::Create(cm("default", "a", "1")),
            Op::Put(cm("default", "b", "1")),
        ],
    )
    .unwrap();
    // Memory holds a commit by the time its event arrives.
    let mut late = s.watch();
    commit(
        s,
        vec![
            Op::Put(cm("default", "a", "1")), // unchanged: no event
            Op::Put(cm("default", "b", "2")),
            Op::Delete {
                key: cm_key("a"),
                expected_rv: None,
            },
        ],
    )
    .unwrap();
    let first = late.try_recv().unwrap();
    assert_eq!(first.resource_version, 2);
    assert_eq!(s.get(&first.object.key()).unwrap().resource_version(), 2);
    let mut seen = Vec::new();
    while let Ok(ev) = rx.try_recv() {
        seen.push((ev.kind, ev.object.name().to_string(), ev.resource_version));
    }
    assert_eq!(
        seen,
        [
            (EventKind::Added, "a".into(), 1),
            (EventKind::Added, "b".into(), 1),
            (EventKind::Modified, "b".into(), 2),
            (EventKind::Deleted, "a".into(), 2),
        ]
    );

    let (objects, rv, mut rx) = s.list_and_watch(Kind::ConfigMap, None);
    assert_eq!((objects.len(), rv), (1, 2));
    commit(s, vec![Op::Put(cm("default", "c", "1"))]).unwrap();
    assert_eq!(rx.try_recv().unwrap().resource_version, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_commits_from_tasks_get_distinct_versions() {
    let t = TempStore::new();
    let mut tasks = Vec::new();
    for i in 0..8 {
        let s = t.store.clone();
        tasks.push(tokio::spawn(async move {
            let mut rvs = Vec::new();
            for j in 0..5 {
                let out = s
                    .commit(
                        vec![Op::Put(cm("default", &format!("t{i}"), &j.to_string()))],
                        Mode::Commit,
                    )
                    .unwrap();
                rvs.push(out[0].object().resource_version());
            }
            rvs
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    all.sort();
    assert_eq!(all, (1..=40).collect::<Vec<_>>());
}

#[test]
fn a_locked_or_foreign_file_is_an_open_error() {
    let t = TempStore::new();
    let err = Store::open(&t.path()).unwrap_err();
    assert!(matches!(err, StoreError::Open { .. }), "{err:?}");

    let junk = t.dir.path().join("junk.redb");
    std::fs::write(&junk, vec![0x5a; 8192]).unwrap();
    let err = Store::open(&junk).unwrap_err();
    assert!(matches!(err, StoreError::Open { .. }), "{err:?}");
    assert!(err.to_string().contains("junk.redb"), "{err}");
}

/// Random batches against the store and a `BTreeMap` model of what it should hold.
/// After every batch, memory and a freshly reopened file agree with the model.
#[test]
fn random_batches_match_a_model() {
    /// What the model remembers of a ConfigMap.
    #[derive(Clone, Debug, PartialEq)]
    struct Entry {
        value: String,
        rv: u64,
        uid: String,
    }

    let mut rng = StdRng::seed_from_u64(0xb4a3b1e);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("master.redb");
    let mut store = Store::open(&path).unwrap();
    let mut model: BTreeMap<String, Entry> = BTreeMap::new();
    let mut model_rv = 0u64;
    let names = ["a", "b", "c", "d", "e"];
    let namespaces = ["default", "x"];

    for step in 0..300 {
        let n_ops = rng.random_range(1..=4);
        let mut ops = Vec::new();
        // The model's view as the batch goes: None = error expected.
        let mut next = Some(model.clone());
        let mut changed = false;
        let rv_for_batch = model_rv + 1;
        for _ in 0..n_ops {
            let ns = namespaces[rng.random_range(0..namespaces.len())];
            let name = names[rng.random_range(0..names.len())];
            let key = ObjectKey::new(Kind::ConfigMap, ns, name);
            let k = key.encode();
            let value = rng.random_range(0..3).to_string();
            let existing = next.as_ref().and_then(|m| m.get(&k).cloned());
            // Sometimes the right precondition, sometimes a stale one, often none.
            let precondition = match rng.random_range(0..4) {
                0 => Some(existing.as_ref().map_or(0, |e| e.rv)),
                1 => Some(rng.random_range(1..=model_rv + 2)),
                _ => None,
            };
            let rv_ok = |expected: Option<u64>| match (expected, &existing) {
                (None, _) => true,
                (Some(rv), Some(e)) => rv == e.rv,
                (Some(rv), None) => rv == 0,
            };
            let mut obj = cm(ns, name, &value);
            if let Some(rv) = precondition {
                obj = with_rv(obj, rv);
            }
            let op_kind = rng.random_range(0..4);
            let op = match op_kind {
                0 => Op::Create(obj),
                1 => Op::Put(obj),
                2 => Op::Update(obj),
                _ => Op::Delete {
                    key,
                    expected_rv: precondition,
                },
            };
            ops.push(op);
            let Some(m) = next.as_mut() else { continue };
            let ok = match op_kind {
                0 => existing.is_none(),
                1 => rv_ok(precondition),
                _ => existing.is_some() && rv_ok(precondition),
            };
            if !ok {
                next = None;
                continue;
            }
            match op_kind {
                3 => {
                    m.remove(&k);
                    changed = true;
                }
                _ => match existing {
                    Some(e) if op_kind != 0 && e.value == value => {}
                    Some(e) => {
                        m.insert(
                            k,
                            Entry {
                                value,
                                rv: rv_for_batch,
                                uid: e.uid,
                            },
                        );
                        changed = true;
                    }
                    // The uid is the store's to choose: filled in from it below.
                    None => {
                        m.insert(
                            k,
                            Entry {
                                value,
                                rv: rv_for_batch,
                                uid: String::new(),
                            },
                        );
                        changed = true;
                    }
                },
            }
        }

        let dry = rng.random_bool(0.2);
        let mode = if dry { Mode::DryRun } else { Mode::Commit };
        let result = store.commit(ops, mode);
        match (&next, &result) {
            (None, Err(e)) => assert!(e.is_client_error(), "step {step}: {e}"),
            (Some(_), Ok(_)) => {}
            _ => panic!("step {step}: model {next:?} vs store {result:?}"),
        }
        if let (Some(mut m), false) = (next, dry) {
            for (k, e) in m.iter_mut() {
                if e.uid.is_empty() {
                    let key = model_key(k);
                    e.uid = store.get(&key).unwrap().meta().uid.clone().unwrap();
                }
            }
            model = m;
            if changed {
                model_rv += 1;
            }
        }

        let check = |store: &Store, when: &str| {
            assert_eq!(store.resource_version(), model_rv, "step {step} {when}");
            let listed: BTreeMap<String, Entry> = store
                .list(Kind::ConfigMap, None)
                .iter()
                .map(|o| {
                    (
                        o.key().encode(),
                        Entry {
                            value: data(o).to_string(),
                            rv: o.resource_version(),
                            uid: o.meta().uid.clone().unwrap(),
                        },
                    )
                })
                .collect();
            assert_eq!(listed, model, "step {step} {when}");
        };
        check(&store, "in memory");
        let remembered = store.list(Kind::ConfigMap, None);
        store = reopen(store);
        check(&store, "after reopen");
        assert_eq!(store.list(Kind::ConfigMap, None), remembered, "step {step}");
    }
}

fn model_key(encoded: &str) -> ObjectKey {
    let mut parts = encoded.splitn(3, '/');
    let kind = Kind::from_manifest(parts.next().unwrap()).unwrap();
    let ns = parts.next().unwrap();
    ObjectKey::new(kind, ns, parts.next().unwrap())
}

#[test]
fn undecodable_or_misfiled_objects_are_reported_with_their_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("master.redb");
    let raw = |key: &str, value: &[u8]| {
        let db = redb::Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(OBJECTS).unwrap().insert(key, value).unwrap();
        txn.commit().unwrap();
    };

    raw("ConfigMap/default/x", b"\xff not cbor");
    let err = Store::open(&path).unwrap_err();
    assert!(
        matches!(&err, StoreError::Decode { key, .. } if key == "ConfigMap/default/x"),
        "{err:?}"
    );
    assert!(err.to_string().contains("ConfigMap/default/x"), "{err}");

    raw("ConfigMap/default/x", &cm("default", "y", "1").to_cbor());
    let err = Store::open(&path).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
}

#[test]
fn a_damaged_file_is_an_error_not_a_panic() {
    let t = TempStore::new();
    for i in 0..50 {
        commit(
            &t.store,
            vec![Op::Put(cm("default", &format!("o{i}"), &"v".repeat(500)))],
        )
        .unwrap();
    }
    let path = t.path();
    drop(t.store);
    let mut bytes = std::fs::read(&path).unwrap();
    // Past redb's header, through the pages holding the tree.
    for b in bytes.iter_mut().skip(8192).step_by(7) {
        *b ^= 0x55;
    }
    std::fs::write(&path, &bytes).unwrap();
    match Store::open(&path) {
        Err(StoreError::Open { .. } | StoreError::Storage { .. } | StoreError::Decode { .. }) => {}
        other => panic!("damaged file opened as {other:?}"),
    }
}

#[test]
fn stores_can_be_shared_across_threads() {
    fn shared<T: Send + Sync + 'static>() {}
    shared::<Store>();
    shared::<LocalStore>();
    shared::<StoreError>();
}
