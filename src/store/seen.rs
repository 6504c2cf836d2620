//! Envelopes seen recently, on disk, so that a message captured off the broker
//! and replayed after the receiver restarted is still recognised.
//!
//! Owns: table `seen_envelopes` in the redb file it is handed (`master.redb`
//! for commands, `worker.redb` for stream opens). Must not touch: signatures
//! and freshness, which `transport::envelope` checks before anything reaches
//! here, so only authentic messages cost a write.
//!
//! Keys are `<timestamp>/<sender>/<seq>`, the timestamp (the sender's, as
//! signed) encoded so that keys sort by it: pruning is one range removal. An
//! entry is kept while a message with its timestamp could still pass the
//! freshness window; the caller names that cut-off from its own clock. Stamping
//! with the sender's time is what makes this hold under clock skew: a replay
//! carries the very timestamp that was recorded, whatever the clocks say.

use std::path::Path;

use redb::{Database, Durability, ReadableTable, TableDefinition};

use super::StoreError;

const SEEN: TableDefinition<&str, ()> = TableDefinition::new("seen_envelopes");

/// One envelope: its sender, sequence number and timestamp (Unix ms).
#[derive(Clone, Copy, Debug)]
pub struct SeenId<'a> {
    pub from: &'a str,
    pub seq: u64,
    pub ts_ms: i64,
}

/// `ts` as 20 digits that sort as the signed numbers do.
fn ts_key(ts: i64) -> String {
    format!("{:020}", (ts as u64) ^ (1 << 63))
}

fn key(id: &SeenId<'_>) -> String {
    format!("{}/{}/{}", ts_key(id.ts_ms), id.from, id.seq)
}

/// Records `id` in one durable transaction, first forgetting entries stamped
/// before `forget_before_ms`. `Ok(false)`: it was already recorded (a replay).
pub(crate) fn record(
    db: &Database,
    path: &Path,
    id: &SeenId<'_>,
    forget_before_ms: i64,
) -> Result<bool, StoreError> {
    let storage = |source: redb::Error| StoreError::Storage {
        path: path.to_path_buf(),
        source,
    };
    let key = key(id);
    let mut txn = db.begin_write().map_err(|e| storage(e.into()))?;
    txn.set_durability(Durability::Immediate)
        .map_err(|e| storage(e.into()))?;
    let fresh = {
        let mut table = txn.open_table(SEEN).map_err(|e| storage(e.into()))?;
        let cut = ts_key(forget_before_ms);
        table
            .retain_in(..cut.as_str(), |_, _| false)
            .map_err(|e| storage(e.into()))?;
        if table
            .get(key.as_str())
            .map_err(|e| storage(e.into()))?
            .is_some()
        {
            false
        } else {
            table
                .insert(key.as_str(), ())
                .map_err(|e| storage(e.into()))?;
            true
        }
    };
    if fresh {
        txn.commit().map_err(|e| storage(e.into()))?;
    } else {
        // Nothing to keep from a replay; pruning can wait for the next one.
        txn.abort().map_err(|e| storage(e.into()))?;
    }
    Ok(fresh)
}

/// How many entries the table holds (for tests of pruning).
#[cfg(test)]
fn count(db: &Database, path: &Path) -> Result<u64, StoreError> {
    use redb::{ReadableDatabase, ReadableTableMetadata};
    let storage = |source: redb::Error| StoreError::Storage {
        path: path.to_path_buf(),
        source,
    };
    let txn = db.begin_read().map_err(|e| storage(e.into()))?;
    match txn.open_table(SEEN) {
        Ok(t) => t.len().map_err(|e| storage(e.into())),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(0),
        Err(e) => Err(storage(e.into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(from: &str, seq: u64, ts_ms: i64) -> SeenId<'_> {
        SeenId { from, seq, ts_ms }
    }

    #[test]
    fn keys_sort_by_timestamp_across_zero() {
        assert!(ts_key(-5) < ts_key(0));
        assert!(ts_key(0) < ts_key(7));
        assert!(ts_key(999) < ts_key(1_000));
    }

    #[test]
    fn a_second_record_is_a_replay_even_after_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        {
            let db = super::super::open_db(&path).unwrap();
            assert!(record(&db, &path, &id("admin:a", 1, 10_000), 0).unwrap());
            assert!(record(&db, &path, &id("admin:a", 2, 10_000), 0).unwrap());
            assert!(!record(&db, &path, &id("admin:a", 1, 10_000), 0).unwrap());
        }
        let db = super::super::open_db(&path).unwrap();
        assert!(!record(&db, &path, &id("admin:a", 1, 10_000), 0).unwrap());
        assert!(record(&db, &path, &id("admin:b", 1, 10_000), 0).unwrap());
    }

    #[test]
    fn entries_older_than_the_cut_off_go() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let db = super::super::open_db(&path).unwrap();
        for seq in 0..5 {
            assert!(record(&db, &path, &id("n", seq, 1_000 + seq as i64), 0).unwrap());
        }
        assert_eq!(count(&db, &path).unwrap(), 5);
        // Recording at a cut-off of 1_003 forgets seq 0..=2.
        assert!(record(&db, &path, &id("n", 9, 5_000), 1_003).unwrap());
        assert_eq!(count(&db, &path).unwrap(), 3);
        assert!(!record(&db, &path, &id("n", 3, 1_003), 1_003).unwrap());
    }
}
