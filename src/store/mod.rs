//! The master's store: every API object in one redb file, mirrored in memory.
//!
//! Owns: the redb file (`master.redb`), the global resourceVersion, optimistic
//! concurrency, the system metadata (uid, creationTimestamp, generation,
//! resourceVersion), the in-memory copy every read is served from, and the watch
//! broadcast. Also the worker's own small key-value store ([`LocalStore`]) for edge
//! autonomy.
//!
//! Must not touch: validation and defaults (`api`), MQTT, controllers. Callers hand in
//! finished objects; the store only checks preconditions and fills system metadata.
//!
//! Layout on disk: table `objects` (`Kind/namespace/name` → CBOR [`Object`]) and table
//! `meta` (`resourceVersion` → u64), and `seen_envelopes` ([`seen`]: the commands
//! taken in the last minutes, so a replay is refused after a restart too). The
//! owner → dependents index is rebuilt in memory at open rather than stored, so it
//! costs no writes.
//!
//! Invariants:
//! - A batch of ops is one durable redb transaction ([`Durability::Immediate`]); memory
//!   and watchers see it only after the commit returned.
//! - Commits are serialized: the checks of a batch run against exactly the state its
//!   write transaction replaces.
//! - A batch that changes nothing opens no write transaction, so an idle cluster
//!   re-applying the same state does not wear the SD card.

mod error;
pub mod local;
mod plan;
mod sealed;
pub mod seen;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::broadcast;

use crate::api::{Kind, Object, ObjectKey};

pub use error::StoreError;
pub use local::{LocalOp, LocalStore};
pub use seen::SeenId;

const OBJECTS: TableDefinition<&str, &[u8]> = TableDefinition::new("objects");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const RV_KEY: &str = "resourceVersion";

/// Watch events a slow receiver may fall behind by before it lags (and resyncs).
const WATCH_CAPACITY: usize = 1024;

/// redb's page cache. Every object already lives in memory, so the cache only has to
/// hold the B-tree pages a commit touches; redb's default (1 GiB) is a Pi's whole RAM.
pub(crate) const CACHE_BYTES: usize = 4 * 1024 * 1024;

/// Whether [`Store::commit`] writes or only checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Commit,
    /// Run every check and return the outcomes a commit would give; write nothing,
    /// bump nothing, notify nobody.
    DryRun,
}

/// One change in a batch.
#[derive(Clone, Debug)]
pub enum Op {
    /// Store a new object; [`StoreError::AlreadyExists`] if the key is taken.
    Create(Object),
    /// Create or replace. Checked against the stored resourceVersion only if the object
    /// carries one (`"0"` means "must not exist").
    Put(Object),
    /// Replace; [`StoreError::NotFound`] if absent, [`StoreError::Conflict`] if the
    /// object carries a resourceVersion other than the stored one.
    Update(Object),
    /// Remove; [`StoreError::NotFound`] if absent, [`StoreError::Conflict`] if
    /// `expected_rv` is set and differs.
    Delete {
        key: ObjectKey,
        expected_rv: Option<u64>,
    },
}

/// What one op did (or, in a dry run, would do). Carries the object as stored after
/// the op; for `Deleted`, as it was before.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Created(Arc<Object>),
    Configured(Arc<Object>),
    Unchanged(Arc<Object>),
    Deleted(Arc<Object>),
}

impl Outcome {
    pub fn object(&self) -> &Arc<Object> {
        match self {
            Outcome::Created(o)
            | Outcome::Configured(o)
            | Outcome::Unchanged(o)
            | Outcome::Deleted(o) => o,
        }
    }

    /// The word `kubectl apply` prints after the object's name.
    pub fn verb(&self) -> &'static str {
        match self {
            Outcome::Created(_) => "created",
            Outcome::Configured(_) => "configured",
            Outcome::Unchanged(_) => "unchanged",
            Outcome::Deleted(_) => "deleted",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Added,
    Modified,
    Deleted,
}

/// One changed object, sent after its commit. `resource_version` is the commit's; a
/// `Deleted` event carries the object as it was last stored.
#[derive(Clone, Debug)]
pub struct WatchEvent {
    pub kind: EventKind,
    pub object: Arc<Object>,
    pub resource_version: u64,
}

/// The master's object store. Cheap to clone; all clones share one file and one
/// in-memory copy.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    db: Database,
    state: RwLock<State>,
    /// Held for a whole commit, so the checks and the write see the same state.
    commit_lock: Mutex<()>,
    events: broadcast::Sender<Arc<WatchEvent>>,
    write_transactions: AtomicU64,
    /// Seals Secrets at rest ([`sealed`]); `None` stores them as they are.
    secret_key: Option<[u8; 32]>,
}

/// The in-memory copy of the file.
#[derive(Default)]
struct State {
    objects: BTreeMap<String, Arc<Object>>,
    /// owner uid → keys of the objects whose ownerReferences name it.
    dependents: HashMap<String, BTreeSet<String>>,
    resource_version: u64,
}

impl State {
    fn insert(&mut self, key: String, obj: Arc<Object>) {
        self.remove(&key);
        for uid in owner_uids(&obj) {
            self.dependents
                .entry(uid.to_string())
                .or_default()
                .insert(key.clone());
        }
        self.objects.insert(key, obj);
    }

    fn remove(&mut self, key: &str) {
        let Some(old) = self.objects.remove(key) else {
            return;
        };
        for uid in owner_uids(&old) {
            if let Some(keys) = self.dependents.get_mut(uid) {
                keys.remove(key);
                if keys.is_empty() {
                    self.dependents.remove(uid);
                }
            }
        }
    }
}

fn owner_uids(obj: &Object) -> impl Iterator<Item = &str> {
    obj.meta()
        .owner_references
        .iter()
        .flatten()
        .map(|r| r.uid.as_str())
}

impl Store {
    /// Opens the store at `path`, creating the file (and its directory) if absent, and
    /// loads every object into memory. A file left by a crash is recovered; a file
    /// corrupted outside redb is reported, not trusted.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        Store::open_with_secret_key(path, None)
    }

    /// Like [`Store::open`], with Secrets sealed at rest under `secret_key`
    /// (the master derives it from the cluster key): the file never holds a
    /// Secret's data in the clear.
    pub fn open_with_secret_key(
        path: &Path,
        secret_key: Option<[u8; 32]>,
    ) -> Result<Store, StoreError> {
        let db = open_db(path)?;
        let storage = |source: redb::Error| StoreError::Storage {
            path: path.to_path_buf(),
            source,
        };
        let mut state = State::default();
        let txn = db.begin_read().map_err(|e| storage(e.into()))?;
        match txn.open_table(OBJECTS) {
            Ok(table) => {
                for entry in table.iter().map_err(|e| storage(e.into()))? {
                    let (key, value) = entry.map_err(|e| storage(e.into()))?;
                    let key = key.value().to_string();
                    let mut bytes = value.value().to_vec();
                    if sealed::is_sealed(&bytes) {
                        bytes = secret_key
                            .and_then(|k| sealed::open(&k, &key, &bytes))
                            .ok_or_else(|| StoreError::Corrupt {
                                path: path.to_path_buf(),
                                reason: format!(
                                    "{key} is sealed under another cluster key (or damaged)"
                                ),
                            })?;
                    }
                    let obj = Object::from_cbor(&bytes).map_err(|source| StoreError::Decode {
                        path: path.to_path_buf(),
                        key: key.clone(),
                        source,
                    })?;
                    if obj.key().encode() != key {
                        return Err(StoreError::Corrupt {
                            path: path.to_path_buf(),
                            reason: format!("object {} stored under key {key}", obj.key().encode()),
                        });
                    }
                    state.resource_version = state.resource_version.max(obj.resource_version());
                    state.insert(key, Arc::new(obj));
                }
            }
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(storage(e.into())),
        }
        match txn.open_table(META) {
            Ok(table) => {
                let stored = table.get(RV_KEY).map_err(|e| storage(e.into()))?;
                let stored = stored.map(|v| v.value()).unwrap_or(0);
                if stored < state.resource_version {
                    // Cannot happen with this code (both are written in one
                    // transaction); continuing from the larger keeps versions unique.
                    tracing::warn!(
                        path = %path.display(),
                        stored,
                        newest_object = state.resource_version,
                        "store resourceVersion behind its newest object"
                    );
                }
                state.resource_version = state.resource_version.max(stored);
            }
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(storage(e.into())),
        }
        drop(txn);
        tracing::debug!(
            path = %path.display(),
            objects = state.objects.len(),
            resource_version = state.resource_version,
            "store opened"
        );
        Ok(Store {
            inner: Arc::new(Inner {
                path: path.to_path_buf(),
                db,
                state: RwLock::new(state),
                commit_lock: Mutex::new(()),
                events: broadcast::channel(WATCH_CAPACITY).0,
                write_transactions: AtomicU64::new(0),
                secret_key,
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    pub fn get(&self, key: &ObjectKey) -> Option<Arc<Object>> {
        self.read().objects.get(&key.encode()).cloned()
    }

    /// Objects of `kind`, in one namespace or all, sorted by key. The namespace is
    /// ignored for cluster-scoped kinds.
    pub fn list(&self, kind: Kind, namespace: Option<&str>) -> Vec<Arc<Object>> {
        list_in(&self.read(), kind, namespace)
    }

    /// Objects whose ownerReferences name `owner_uid`, sorted by key.
    pub fn dependents(&self, owner_uid: &str) -> Vec<Arc<Object>> {
        let state = self.read();
        state
            .dependents
            .get(owner_uid)
            .into_iter()
            .flatten()
            .filter_map(|key| state.objects.get(key).cloned())
            .collect()
    }

    /// Applies `ops` as one transaction: all of them or none. Returns once the
    /// transaction is durable (blocking for the fsync), after memory is updated and the
    /// watchers are notified. The first failing op's error fails the batch.
    pub fn commit(&self, ops: Vec<Op>, mode: Mode) -> Result<Vec<Outcome>, StoreError> {
        let _commit = self
            .inner
            .commit_lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // Only commits change the state, and we hold the commit lock: what we plan
        // against stays current until we apply it below.
        let next_rv = self.read().resource_version + 1;
        let plan = {
            let state = self.read();
            let mut new_uid = || uuid::Uuid::new_v4().to_string();
            let mut stamp = plan::Stamp {
                now: jiff::Timestamp::now(),
                new_uid: &mut new_uid,
            };
            plan::plan(&state.objects, ops, next_rv, &mut stamp)?
        };
        if mode == Mode::DryRun || plan.writes.is_empty() {
            return Ok(plan.outcomes);
        }
        self.write(&plan.writes, next_rv)?;

        let mut state = self.write_state();
        for (key, value) in plan.writes {
            match value {
                Some(obj) => state.insert(key, obj),
                None => state.remove(&key),
            }
        }
        state.resource_version = next_rv;
        // Sent under the state lock so that `list_and_watch` sees each commit either in
        // its snapshot or in its receiver, never both, never neither.
        for (kind, object) in plan.events {
            // No receivers is fine: nobody is watching yet.
            let _ = self.inner.events.send(Arc::new(WatchEvent {
                kind,
                object,
                resource_version: next_rv,
            }));
        }
        tracing::debug!(resource_version = next_rv, "store commit");
        Ok(plan.outcomes)
    }

    /// Events of every commit from now on.
    pub fn watch(&self) -> broadcast::Receiver<Arc<WatchEvent>> {
        self.inner.events.subscribe()
    }

    /// The objects of `kind` (as [`Store::list`]), the resourceVersion they are at, and
    /// a receiver of every later commit's events, taken atomically: no commit falls
    /// between the snapshot and the first event.
    pub fn list_and_watch(
        &self,
        kind: Kind,
        namespace: Option<&str>,
    ) -> (Vec<Arc<Object>>, u64, broadcast::Receiver<Arc<WatchEvent>>) {
        let state = self.read();
        let rx = self.inner.events.subscribe();
        (list_in(&state, kind, namespace), state.resource_version, rx)
    }

    /// Records a command's envelope durably (table `seen_envelopes`, see
    /// [`seen`]), forgetting those stamped before `forget_before_ms`.
    /// `Ok(false)`: it was recorded before, by this run or an earlier one.
    pub fn record_envelope(
        &self,
        id: &SeenId<'_>,
        forget_before_ms: i64,
    ) -> Result<bool, StoreError> {
        let fresh = seen::record(&self.inner.db, &self.inner.path, id, forget_before_ms)?;
        if fresh {
            self.inner
                .write_transactions
                .fetch_add(1, Ordering::Relaxed);
        }
        Ok(fresh)
    }

    /// The resourceVersion of the last commit that changed anything.
    pub fn resource_version(&self) -> u64 {
        self.read().resource_version
    }

    /// Write transactions committed since this handle was opened: a measure of disk
    /// wear, and how tests prove that an unchanged batch wrote nothing.
    pub fn write_transactions(&self) -> u64 {
        self.inner.write_transactions.load(Ordering::Relaxed)
    }

    fn write(
        &self,
        writes: &BTreeMap<String, Option<Arc<Object>>>,
        rv: u64,
    ) -> Result<(), StoreError> {
        let storage = |source: redb::Error| StoreError::Storage {
            path: self.inner.path.clone(),
            source,
        };
        let mut txn = self.inner.db.begin_write().map_err(|e| storage(e.into()))?;
        // redb's default is already Immediate; said explicitly because acknowledging a
        // command rests on it.
        txn.set_durability(Durability::Immediate)
            .map_err(|e| storage(e.into()))?;
        {
            let mut objects = txn.open_table(OBJECTS).map_err(|e| storage(e.into()))?;
            for (key, value) in writes {
                match value {
                    Some(obj) => {
                        let mut bytes = obj.to_cbor();
                        if let (Object::Secret(_), Some(k)) = (&**obj, &self.inner.secret_key) {
                            bytes = sealed::seal(k, key, &bytes);
                        }
                        objects
                            .insert(key.as_str(), bytes.as_slice())
                            .map_err(|e| storage(e.into()))?;
                    }
                    None => {
                        objects
                            .remove(key.as_str())
                            .map_err(|e| storage(e.into()))?;
                    }
                }
            }
            let mut meta = txn.open_table(META).map_err(|e| storage(e.into()))?;
            meta.insert(RV_KEY, rv).map_err(|e| storage(e.into()))?;
        }
        txn.commit().map_err(|e| storage(e.into()))?;
        self.inner
            .write_transactions
            .fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn read(&self) -> RwLockReadGuard<'_, State> {
        // State is only mutated by plain map inserts after a commit; a panic elsewhere
        // cannot leave it half-updated, so a poisoned lock is still usable.
        self.inner
            .state
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write_state(&self) -> RwLockWriteGuard<'_, State> {
        self.inner
            .state
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn list_in(state: &State, kind: Kind, namespace: Option<&str>) -> Vec<Arc<Object>> {
    let prefix = match namespace {
        Some(ns) if kind.namespaced() => format!("{}/{ns}/", kind.as_str()),
        _ => format!("{}/", kind.as_str()),
    };
    state
        .objects
        .range(prefix.clone()..)
        .take_while(|(key, _)| key.starts_with(&prefix))
        .map(|(_, obj)| obj.clone())
        .collect()
}

/// Opens (or creates) a redb file the way both stores want it.
pub(crate) fn open_db(path: &Path) -> Result<Database, StoreError> {
    let open_err = |source: redb::Error| StoreError::Open {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| open_err(e.into()))?;
    }
    redb::Builder::new()
        .set_cache_size(CACHE_BYTES)
        // A plain open may panic on a file damaged outside redb; this reports it.
        .set_check_integrity_on_open(true)
        .create(path)
        .map_err(|e| open_err(e.into()))
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.inner.path)
            .field("resource_version", &self.resource_version())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests;
