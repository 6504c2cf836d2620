//! When each stretch of a container log was written, for `logs --since`,
//! `--since-time` and `--timestamps`, without ever holding the container's
//! stdout (it writes to the file directly; see [`super::logs`]).
//!
//! The agent looks at the size of every current log a few times a second
//! ([`LogClock::observe`]) and, when it grew, appends a record to
//! `<log>.times`: 16 bytes, the size (u64 LE) and the time (Unix ms, i64 LE),
//! meaning "every byte before this offset had been written by then". A byte's
//! stamp is the time of the first record past it: an upper bound, late by at
//! most one look when output starts after a pause, by about a second while a
//! container writes without pause (records are then written at most once a
//! second, to spare SD cards). Bytes no record covers yet were written just
//! now. Rotation renames `<log>.times` with the log (`<log>.1.times`).
//!
//! Must not touch: the logs' contents; rotation itself is [`super::logs`].

use std::collections::HashMap;
use std::fs;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::logs::{rotate_if_needed, rotated_path};

const RECORD: usize = 16;
/// While a log keeps growing, at most one record per this many ms.
const COALESCE_MS: i64 = 1000;

/// `<log>.times`.
pub fn times_path(log: &Path) -> PathBuf {
    let mut name = log.as_os_str().to_owned();
    name.push(".times");
    PathBuf::from(name)
}

/// The records of `log`, oldest first; a torn last record or a record that
/// goes backwards (a file replaced under us) is ignored.
pub fn read_times(log: &Path) -> io::Result<Vec<(u64, i64)>> {
    let bytes = match fs::read(times_path(log)) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    Ok(parse(&bytes))
}

fn parse(bytes: &[u8]) -> Vec<(u64, i64)> {
    let mut out: Vec<(u64, i64)> = Vec::with_capacity(bytes.len() / RECORD);
    for rec in bytes.chunks_exact(RECORD) {
        let end = u64::from_le_bytes(rec[..8].try_into().expect("8 bytes"));
        let at = i64::from_le_bytes(rec[8..].try_into().expect("8 bytes"));
        if out.last().is_none_or(|&(e, t)| end > e && at >= t) {
            out.push((end, at));
        }
    }
    out
}

fn append(log: &Path, end: u64, at: i64) -> io::Result<()> {
    let mut rec = [0u8; RECORD];
    rec[..8].copy_from_slice(&end.to_le_bytes());
    rec[8..].copy_from_slice(&at.to_le_bytes());
    fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(times_path(log))?
        .write_all(&rec)
}

/// The last record's size, read from the file's tail; a torn last record
/// (the agent stopped mid-write) is cut off so that later ones line up.
fn last_recorded(log: &Path) -> io::Result<u64> {
    let path = times_path(log);
    let mut f = match fs::OpenOptions::new().read(true).write(true).open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let len = f.metadata()?.len();
    let whole = len - len % RECORD as u64;
    if whole != len {
        f.set_len(whole)?;
    }
    if whole == 0 {
        return Ok(0);
    }
    f.seek(SeekFrom::Start(whole - RECORD as u64))?;
    let mut rec = [0u8; RECORD];
    f.read_exact(&mut rec)?;
    Ok(u64::from_le_bytes(rec[..8].try_into().expect("8 bytes")))
}

#[derive(Debug)]
struct Tracked {
    /// Size at the last look.
    seen: u64,
    /// Size in the last record.
    recorded: u64,
    recorded_at: i64,
    /// Whether it grew between the last two looks.
    growing: bool,
}

/// What [`LogClock`] should do after looking at a log: the pure rule.
fn decide(t: &mut Tracked, size: u64, now: i64) -> Option<(u64, i64)> {
    if size < t.recorded {
        // Truncated by someone else: start over.
        t.recorded = 0;
        t.seen = 0;
        t.growing = false;
    }
    let grew = size > t.seen;
    let record = size > t.recorded && (!grew || !t.growing || now - t.recorded_at >= COALESCE_MS);
    t.growing = grew;
    t.seen = size;
    if record {
        t.recorded = size;
        t.recorded_at = now;
        Some((size, now))
    } else {
        None
    }
}

/// Watches the growth of the logs it is shown; owned by the agent's loop.
#[derive(Debug, Default)]
pub struct LogClock {
    files: HashMap<PathBuf, Tracked>,
}

impl LogClock {
    pub fn new() -> LogClock {
        LogClock::default()
    }

    /// Looks at each log (the current attempt of every container) and
    /// records growth; forgets logs no longer shown.
    pub fn observe<'a>(&mut self, logs: impl IntoIterator<Item = &'a Path>, now_ms: i64) {
        let mut keep = HashMap::new();
        for log in logs {
            let mut t = match self.files.remove(log) {
                Some(t) => t,
                None => {
                    // New to us (a new container, or the agent restarted):
                    // what the file says was recorded is where we are.
                    let recorded = last_recorded(log).unwrap_or(0);
                    Tracked {
                        seen: recorded,
                        recorded,
                        recorded_at: 0,
                        growing: false,
                    }
                }
            };
            self.look(log, &mut t, now_ms);
            keep.insert(log.to_path_buf(), t);
        }
        self.files = keep;
    }

    fn look(&self, log: &Path, t: &mut Tracked, now_ms: i64) {
        let size = match fs::metadata(log) {
            Ok(m) => m.len(),
            Err(_) => return,
        };
        if size < t.recorded {
            // Truncated by someone else: its records no longer apply.
            let _ = fs::remove_file(times_path(log));
        }
        if let Some((end, at)) = decide(t, size, now_ms)
            && let Err(e) = append(log, end, at)
        {
            tracing::debug!(log = %log.display(), error = %e, "recording log times");
        }
    }

    /// Rotates `log` past `max_bytes` (copy-truncate), its times with it.
    pub fn rotate_if_needed(
        &mut self,
        log: &Path,
        max_bytes: u64,
        now_ms: i64,
    ) -> io::Result<bool> {
        // Stamp what is there before it moves; the (rare) bytes written
        // between this look and the copy are stamped with the copy's time.
        let mut t = self.files.remove(log).unwrap_or(Tracked {
            seen: last_recorded(log).unwrap_or(0),
            recorded: last_recorded(log).unwrap_or(0),
            recorded_at: 0,
            growing: false,
        });
        t.growing = false;
        self.look(log, &mut t, now_ms);
        let rotated = rotate_if_needed(log, max_bytes)?;
        if rotated {
            let from = times_path(log);
            let to = times_path(&rotated_path(log));
            match fs::rename(&from, &to) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    let _ = fs::remove_file(&to);
                }
                Err(e) => return Err(e),
            }
            t = Tracked {
                seen: 0,
                recorded: 0,
                recorded_at: now_ms,
                growing: false,
            };
        }
        self.files.insert(log.to_path_buf(), t);
        Ok(rotated)
    }
}

/// A log (its rotated part, then the current file) with a stamp for every
/// byte.
#[derive(Debug, Default)]
pub struct StampedLog {
    pub bytes: Vec<u8>,
    /// `(end, at)` over `bytes`: bytes before `end` were written by `at`.
    pub times: Vec<(u64, i64)>,
}

impl StampedLog {
    /// Reads `<log>.1` and `<log>` with their records; bytes no record covers
    /// get the rotation time (for `.1`) or `now_ms`.
    pub fn read(log: &Path, now_ms: i64) -> io::Result<StampedLog> {
        let mut out = StampedLog::default();
        let rotated = rotated_path(log);
        let older = read_or_empty(&rotated)?;
        if !older.is_empty() {
            let copied_at = fs::metadata(&rotated)
                .ok()
                .and_then(|m| m.modified().ok())
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(now_ms, |d| d.as_millis() as i64);
            out.push(older, read_times(&rotated)?, copied_at);
        }
        out.push(read_or_empty(log)?, read_times(log)?, now_ms);
        Ok(out)
    }

    /// Appends one file's bytes and records (clipped to its length, with a
    /// closing record at `rest_at` for what they do not cover).
    pub fn push(&mut self, bytes: Vec<u8>, times: Vec<(u64, i64)>, rest_at: i64) {
        let base = self.bytes.len() as u64;
        let len = bytes.len() as u64;
        let floor = self.times.last().map_or(i64::MIN, |&(_, t)| t);
        let mut last_t = floor;
        for (end, at) in times {
            let end = end.min(len);
            if end == 0 || self.times.last().is_some_and(|&(e, _)| base + end <= e) {
                continue;
            }
            last_t = at.max(last_t);
            self.times.push((base + end, last_t));
        }
        if len > 0 && self.times.last().is_none_or(|&(e, _)| e < base + len) {
            self.times.push((base + len, rest_at.max(last_t)));
        }
        self.bytes.extend(bytes);
    }

    /// The stamp of the byte at `offset`.
    pub fn stamp_at(&self, offset: u64) -> Option<i64> {
        let i = self.times.partition_point(|&(end, _)| end <= offset);
        self.times.get(i).map(|&(_, t)| t)
    }

    /// Where the first line stamped at or after `since_ms` starts (a line is
    /// stamped by its last byte: when it was complete).
    pub fn start_since(&self, since_ms: i64) -> usize {
        let mut start = 0;
        for (i, b) in self.bytes.iter().enumerate() {
            let line_end = *b == b'\n' || i + 1 == self.bytes.len();
            if !line_end {
                continue;
            }
            if self.stamp_at(i as u64).is_some_and(|t| t >= since_ms) {
                return start;
            }
            start = i + 1;
        }
        self.bytes.len()
    }

    /// `bytes[from..]` with each line prefixed by its stamp, RFC 3339 in UTC
    /// (`--timestamps`).
    pub fn with_timestamps(&self, from: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity((self.bytes.len() - from) * 2);
        let mut line_start = from;
        for i in from..self.bytes.len() {
            if self.bytes[i] == b'\n' || i + 1 == self.bytes.len() {
                let at = self.stamp_at(i as u64).unwrap_or(0);
                out.extend_from_slice(format_stamp(at).as_bytes());
                out.push(b' ');
                out.extend_from_slice(&self.bytes[line_start..=i]);
                line_start = i + 1;
            }
        }
        out
    }
}

/// kubectl's `--timestamps` form: RFC 3339 with fractional seconds, UTC.
pub fn format_stamp(unix_ms: i64) -> String {
    jiff::Timestamp::from_millisecond(unix_ms)
        .map(|t| format!("{t:.9}"))
        .unwrap_or_else(|_| unix_ms.to_string())
}

fn read_or_empty(path: &Path) -> io::Result<Vec<u8>> {
    match fs::read(path) {
        Ok(b) => Ok(b),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracked() -> Tracked {
        Tracked {
            seen: 0,
            recorded: 0,
            recorded_at: 0,
            growing: false,
        }
    }

    #[test]
    fn records_burst_starts_at_once_and_coalesces_steady_output() {
        let mut t = tracked();
        assert_eq!(decide(&mut t, 0, 1000), None, "empty: nothing");
        assert_eq!(decide(&mut t, 10, 1250), Some((10, 1250)), "a burst starts");
        // Still growing within a second: not recorded…
        assert_eq!(decide(&mut t, 20, 1500), None);
        assert_eq!(decide(&mut t, 30, 1750), None);
        // …until a second has passed,
        assert_eq!(decide(&mut t, 40, 2250), Some((40, 2250)));
        assert_eq!(decide(&mut t, 50, 2500), None);
        // or it goes quiet: the tail is recorded at the first quiet look.
        assert_eq!(decide(&mut t, 50, 2750), Some((50, 2750)));
        assert_eq!(decide(&mut t, 50, 3000), None, "quiet: nothing new");
        assert_eq!(decide(&mut t, 60, 9000), Some((60, 9000)), "next burst");
        // Truncated under us: recorded again from zero.
        assert_eq!(decide(&mut t, 5, 9250), Some((5, 9250)));
        assert_eq!(parse(&[]), vec![]);
    }

    #[test]
    fn stamps_lines_and_cuts_since() {
        let mut log = StampedLog::default();
        log.push(b"a\nb\n".to_vec(), vec![(2, 100), (4, 200)], 999);
        log.push(b"c\nd".to_vec(), vec![(2, 300)], 400);
        assert_eq!(log.times, vec![(2, 100), (4, 200), (6, 300), (7, 400)]);
        assert_eq!(log.stamp_at(0), Some(100));
        assert_eq!(log.stamp_at(2), Some(200));
        assert_eq!(log.stamp_at(6), Some(400));
        assert_eq!(log.stamp_at(7), None);
        assert_eq!(log.start_since(0), 0);
        assert_eq!(log.start_since(150), 2);
        assert_eq!(log.start_since(300), 4);
        assert_eq!(log.start_since(301), 6);
        assert_eq!(log.start_since(401), 7);
        let ts = String::from_utf8(log.with_timestamps(4)).unwrap();
        assert_eq!(
            ts,
            format!("{} c\n{} d", format_stamp(300), format_stamp(400))
        );
    }

    #[test]
    fn records_survive_torn_writes_and_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("0.log");
        let mut clock = LogClock::new();
        fs::write(&log, b"one\n").unwrap();
        clock.observe([log.as_path()], 1000);
        fs::OpenOptions::new()
            .append(true)
            .open(&log)
            .unwrap()
            .write_all(b"two\n")
            .unwrap();
        clock.observe([log.as_path()], 5000);
        assert_eq!(read_times(&log).unwrap(), vec![(4, 1000), (8, 5000)]);
        // A torn record (agent killed mid-write) is ignored.
        fs::OpenOptions::new()
            .append(true)
            .open(times_path(&log))
            .unwrap()
            .write_all(&[1, 2, 3])
            .unwrap();
        assert_eq!(read_times(&log).unwrap().len(), 2);
        // A new clock (agent restart) picks up where the file left off, and
        // cuts the torn record so that new ones line up.
        let mut clock = LogClock::new();
        clock.observe([log.as_path()], 6000);
        assert_eq!(read_times(&log).unwrap().len(), 2, "nothing new");
        assert_eq!(fs::metadata(times_path(&log)).unwrap().len(), 32);
        assert!(clock.rotate_if_needed(&log, 4, 7000).unwrap());
        assert_eq!(read_times(&rotated_path(&log)).unwrap().len(), 2);
        assert!(read_times(&log).unwrap().is_empty());
        fs::write(&log, b"three\n").unwrap();
        clock.observe([log.as_path()], 8000);
        let all = StampedLog::read(&log, 9000).unwrap();
        assert_eq!(all.bytes, b"one\ntwo\nthree\n");
        assert_eq!(all.start_since(6000), 8);
        assert_eq!(all.start_since(4000), 4);
    }
}
