//! The worker's own store (`worker.redb`): what a node needs to keep its pods running
//! while the master is away (its assignment, pod and service state).
//!
//! Owns: a redb file of byte values in named tables, written in durable batches.
//! Must not touch: what the bytes mean; the worker encodes and decodes them.
//!
//! Like the master's store it writes only what changes: a batch whose values equal
//! the stored ones opens no write transaction.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use super::StoreError;

/// The tables the worker uses. Any other name works too; these are the ones to share.
pub mod tables {
    /// The desired pod set last received from the master, with its generation.
    pub const ASSIGNMENT: &str = "assignment";
    pub const PODS: &str = "pods";
    pub const SERVICES: &str = "services";
    pub const META: &str = "meta";
}

/// One change in a [`LocalStore::write`] batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LocalOp {
    Put {
        table: String,
        key: String,
        value: Vec<u8>,
    },
    /// Removing an absent key is not an error.
    Delete { table: String, key: String },
}

impl LocalOp {
    pub fn put(table: impl Into<String>, key: impl Into<String>, value: Vec<u8>) -> LocalOp {
        LocalOp::Put {
            table: table.into(),
            key: key.into(),
            value,
        }
    }

    pub fn delete(table: impl Into<String>, key: impl Into<String>) -> LocalOp {
        LocalOp::Delete {
            table: table.into(),
            key: key.into(),
        }
    }
}

/// The worker's key-value store: tables of `String` → bytes, created on first write.
pub struct LocalStore {
    path: PathBuf,
    db: Database,
    /// Held for a whole batch, so the "is it unchanged?" reads and the write see the
    /// same file.
    write_lock: Mutex<()>,
    write_transactions: AtomicU64,
}

fn table(name: &str) -> TableDefinition<'_, &'static str, &'static [u8]> {
    TableDefinition::new(name)
}

impl LocalStore {
    /// Opens the store at `path`, creating the file (and its directory) if absent.
    pub fn open(path: &Path) -> Result<LocalStore, StoreError> {
        let db = super::open_db(path)?;
        Ok(LocalStore {
            path: path.to_path_buf(),
            db,
            write_lock: Mutex::new(()),
            write_transactions: AtomicU64::new(0),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The value under `key`; `None` also when the table was never written.
    pub fn get(&self, table_name: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.storage(e.into()))?;
        let table = match txn.open_table(table(table_name)) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(self.storage(e.into())),
        };
        let value = table.get(key).map_err(|e| self.storage(e.into()))?;
        Ok(value.map(|v| v.value().to_vec()))
    }

    /// Every entry of `table`, sorted by key.
    pub fn list(&self, table_name: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.storage(e.into()))?;
        let table = match txn.open_table(table(table_name)) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(self.storage(e.into())),
        };
        let mut out = Vec::new();
        for entry in table.iter().map_err(|e| self.storage(e.into()))? {
            let (k, v) = entry.map_err(|e| self.storage(e.into()))?;
            out.push((k.value().to_string(), v.value().to_vec()));
        }
        Ok(out)
    }

    /// Applies `batch` as one durable transaction (all or nothing), returning once it is
    /// on disk. Entries whose final value is already stored are not rewritten; a batch
    /// that changes nothing writes nothing.
    pub fn write(&self, batch: Vec<LocalOp>) -> Result<(), StoreError> {
        let _lock = self
            .write_lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // Final value per (table, key): later ops in the batch win.
        let mut finals: BTreeMap<(String, String), Option<Vec<u8>>> = BTreeMap::new();
        for op in batch {
            match op {
                LocalOp::Put { table, key, value } => finals.insert((table, key), Some(value)),
                LocalOp::Delete { table, key } => finals.insert((table, key), None),
            };
        }
        let finals: Vec<_> = finals.into_iter().collect();
        let mut changes = Vec::new();
        let txn = self.db.begin_read().map_err(|e| self.storage(e.into()))?;
        // `finals` is sorted by table: one open per table.
        for group in finals.chunk_by(|a, b| a.0.0 == b.0.0) {
            let stored_table = match txn.open_table(table(&group[0].0.0)) {
                Ok(t) => Some(t),
                Err(redb::TableError::TableDoesNotExist(_)) => None,
                Err(e) => return Err(self.storage(e.into())),
            };
            for ((table_name, key), value) in group {
                let stored = match &stored_table {
                    Some(t) => t
                        .get(key.as_str())
                        .map_err(|e| self.storage(e.into()))?
                        .map(|v| v.value().to_vec()),
                    None => None,
                };
                if stored != *value {
                    changes.push((table_name.clone(), key.clone(), value.clone()));
                }
            }
        }
        drop(txn);
        if changes.is_empty() {
            return Ok(());
        }

        let mut txn = self.db.begin_write().map_err(|e| self.storage(e.into()))?;
        txn.set_durability(Durability::Immediate)
            .map_err(|e| self.storage(e.into()))?;
        // `changes` is sorted by table: one open per table.
        for group in changes.chunk_by(|a, b| a.0 == b.0) {
            let mut t = txn
                .open_table(table(&group[0].0))
                .map_err(|e| self.storage(e.into()))?;
            for (_, key, value) in group {
                match value {
                    Some(v) => {
                        t.insert(key.as_str(), v.as_slice())
                            .map_err(|e| self.storage(e.into()))?;
                    }
                    None => {
                        t.remove(key.as_str()).map_err(|e| self.storage(e.into()))?;
                    }
                }
            }
        }
        txn.commit().map_err(|e| self.storage(e.into()))?;
        self.write_transactions.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(path = %self.path.display(), entries = changes.len(), "local store write");
        Ok(())
    }

    /// Records an envelope durably (see [`super::seen`]), forgetting those
    /// stamped before `forget_before_ms`. `Ok(false)`: recorded before, by
    /// this run or an earlier one (a replay).
    pub fn record_envelope(
        &self,
        id: &super::SeenId<'_>,
        forget_before_ms: i64,
    ) -> Result<bool, StoreError> {
        let fresh = super::seen::record(&self.db, &self.path, id, forget_before_ms)?;
        if fresh {
            self.write_transactions.fetch_add(1, Ordering::Relaxed);
        }
        Ok(fresh)
    }

    /// Write transactions committed since this handle was opened.
    pub fn write_transactions(&self) -> u64 {
        self.write_transactions.load(Ordering::Relaxed)
    }

    fn storage(&self, source: redb::Error) -> StoreError {
        StoreError::Storage {
            path: self.path.clone(),
            source,
        }
    }
}

impl fmt::Debug for LocalStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_get_list_delete_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("worker.redb");
        let store = LocalStore::open(&path).unwrap();
        assert_eq!(store.get(tables::PODS, "a").unwrap(), None);
        assert!(store.list(tables::PODS).unwrap().is_empty());

        store
            .write(vec![
                LocalOp::put(tables::PODS, "b", b"2".to_vec()),
                LocalOp::put(tables::PODS, "a", b"1".to_vec()),
                LocalOp::put(tables::ASSIGNMENT, "current", b"gen-1".to_vec()),
            ])
            .unwrap();
        assert_eq!(store.get(tables::PODS, "a").unwrap(), Some(b"1".to_vec()));
        assert_eq!(
            store.list(tables::PODS).unwrap(),
            vec![("a".into(), b"1".to_vec()), ("b".into(), b"2".to_vec())]
        );
        store
            .write(vec![
                LocalOp::delete(tables::PODS, "a"),
                LocalOp::delete(tables::PODS, "never-there"),
            ])
            .unwrap();
        assert_eq!(store.write_transactions(), 2);
        drop(store);

        let store = LocalStore::open(&path).unwrap();
        assert_eq!(
            store.list(tables::PODS).unwrap(),
            vec![("b".into(), b"2".to_vec())]
        );
        assert_eq!(
            store.get(tables::ASSIGNMENT, "current").unwrap(),
            Some(b"gen-1".to_vec())
        );
    }

    #[test]
    fn identical_values_are_not_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("worker.redb");
        let store = LocalStore::open(&path).unwrap();
        store
            .write(vec![LocalOp::put(tables::PODS, "a", b"1".to_vec())])
            .unwrap();
        let before = std::fs::metadata(&path).unwrap();
        store
            .write(vec![
                LocalOp::put(tables::PODS, "a", b"1".to_vec()),
                LocalOp::delete(tables::SERVICES, "absent"),
                // Changed and changed back within the batch: nothing to write.
                LocalOp::put(tables::META, "x", b"tmp".to_vec()),
                LocalOp::delete(tables::META, "x"),
            ])
            .unwrap();
        assert_eq!(store.write_transactions(), 1);
        let after = std::fs::metadata(&path).unwrap();
        assert_eq!(before.modified().unwrap(), after.modified().unwrap());
        assert_eq!(before.len(), after.len());

        store
            .write(vec![LocalOp::put(tables::PODS, "a", b"2".to_vec())])
            .unwrap();
        assert_eq!(store.write_transactions(), 2);
    }
}
