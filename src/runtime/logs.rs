//! Container log files: size-bounded by copy-truncate, read back by tail,
//! followed as they grow.
//!
//! The container writes its stdout/stderr to `<log>` through an `O_APPEND`
//! descriptor the agent never holds, so the agent may truncate the file
//! under it: the next write lands at the new end. One previous file is kept
//! as `<log>.1`. As with logrotate's `copytruncate`, a line written between
//! the copy and the truncation can be lost; that is the price of never
//! holding the container's descriptor.
//!
//! Must not touch: containers; these are plain file helpers.

use std::fs;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How often [`LogFollower::next_chunk`] looks for new bytes.
pub const FOLLOW_INTERVAL: Duration = Duration::from_millis(200);

/// `<path>.1`, the one rotated file kept.
pub fn rotated_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".1");
    PathBuf::from(name)
}

/// Removes the logs of a container's attempts before `keep_from` from `dir`
/// (the container's log directory: `<attempt>.log`, its rotated `.1` and the
/// `.times` beside each). The kubelet keeps the current attempt and the one
/// before it; without this a crash-looping container would fill the disk.
/// Returns how many files went; files not named for an attempt stay.
pub fn remove_attempts_before(dir: &Path, keep_from: u32) -> io::Result<usize> {
    let mut removed = 0;
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(attempt) = name
            .to_str()
            .and_then(|n| {
                n.strip_suffix(".log")
                    .or_else(|| n.split_once(".log.").map(|(a, _)| a))
            })
            .and_then(|a| a.parse::<u32>().ok())
        else {
            continue;
        };
        if attempt < keep_from {
            match fs::remove_file(entry.path()) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(removed)
}

/// If `path` is larger than `max_bytes`, copies it to `<path>.1` (replacing
/// the previous one) and truncates it. Returns whether it rotated.
pub fn rotate_if_needed(path: &Path, max_bytes: u64) -> io::Result<bool> {
    let len = match fs::metadata(path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    if len <= max_bytes {
        return Ok(false);
    }
    let rotated = rotated_path(path);
    let mut tmp = rotated.clone().into_os_string();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    fs::copy(path, &tmp)?;
    fs::rename(&tmp, &rotated)?;
    fs::OpenOptions::new().write(true).open(path)?.set_len(0)?;
    Ok(true)
}

/// The whole log (`<path>.1` then `<path>`), or its last `tail_lines`
/// lines. A missing file reads as empty.
pub fn read_tail(path: &Path, tail_lines: Option<usize>) -> io::Result<Vec<u8>> {
    let current = read_or_empty(path)?;
    let Some(n) = tail_lines else {
        let mut all = read_or_empty(&rotated_path(path))?;
        all.extend_from_slice(&current);
        return Ok(all);
    };
    let (have, start) = last_lines(&current, n);
    if start > 0 {
        return Ok(current[start..].to_vec());
    }
    let older = read_or_empty(&rotated_path(path))?;
    // A rotated file that ends mid-line continues on the first line of the
    // current one: that line needs its beginning from the older file too.
    let joined_mid_line = !older.is_empty() && !older.ends_with(b"\n") && !current.is_empty();
    let want_older = n - have + usize::from(joined_mid_line);
    let (_, older_start) = last_lines(&older, want_older);
    let mut out = older[older_start..].to_vec();
    out.extend_from_slice(&current);
    Ok(out)
}

/// The number of lines (up to `n`) at the end of `data`, and where they
/// start. An unterminated last line counts as a line.
fn last_lines(data: &[u8], n: usize) -> (usize, usize) {
    if n == 0 || data.is_empty() {
        return (0, data.len());
    }
    let body = data.strip_suffix(b"\n").unwrap_or(data);
    let mut count = 0;
    for (i, b) in body.iter().enumerate().rev() {
        if *b == b'\n' {
            count += 1;
            if count == n {
                return (n, i + 1);
            }
        }
    }
    (count + 1, 0)
}

fn read_or_empty(path: &Path) -> io::Result<Vec<u8>> {
    match fs::read(path) {
        Ok(b) => Ok(b),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// Yields what is appended to a log file, surviving copy-truncate rotation.
#[derive(Debug)]
pub struct LogFollower {
    path: PathBuf,
    pos: u64,
}

impl LogFollower {
    /// Follows from byte `pos` of the current file.
    pub fn new(path: &Path, pos: u64) -> LogFollower {
        LogFollower {
            path: path.to_path_buf(),
            pos,
        }
    }

    /// Follows from the current end: only bytes written from now on.
    pub fn from_end(path: &Path) -> io::Result<LogFollower> {
        let len = match fs::metadata(path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e),
        };
        Ok(LogFollower::new(path, len))
    }

    /// New bytes since the last call, without waiting (possibly none). When
    /// the file shrank it was rotated: the rest of what we had not read is
    /// at the end of `<path>.1`, and reading restarts at 0.
    pub fn poll_once(&mut self) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        let len = match fs::metadata(&self.path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e),
        };
        if len < self.pos {
            let rotated = rotated_path(&self.path);
            if let Ok(mut f) = fs::File::open(&rotated)
                && f.metadata()?.len() > self.pos
            {
                f.seek(SeekFrom::Start(self.pos))?;
                f.read_to_end(&mut out)?;
            }
            self.pos = 0;
        }
        let mut f = match fs::File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e),
        };
        f.seek(SeekFrom::Start(self.pos))?;
        let n = f.read_to_end(&mut out)?;
        self.pos += n as u64;
        Ok(out)
    }

    /// Waits (polling every [`FOLLOW_INTERVAL`]) until there are new bytes.
    pub async fn next_chunk(&mut self) -> io::Result<Vec<u8>> {
        loop {
            let chunk = self.poll_once()?;
            if !chunk.is_empty() {
                return Ok(chunk);
            }
            tokio::time::sleep(FOLLOW_INTERVAL).await;
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_the_current_and_previous_attempts_stay() {
        let dir = tempfile::tempdir().unwrap();
        let names = [
            "0.log",
            "0.log.times",
            "1.log",
            "1.log.1",
            "1.log.1.times",
            "2.log",
            "2.log.times",
            "3.log",
            "notes.txt",
        ];
        for n in names {
            std::fs::write(dir.path().join(n), n).unwrap();
        }
        assert_eq!(super::remove_attempts_before(dir.path(), 2).unwrap(), 5);
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["2.log", "2.log.times", "3.log", "notes.txt"]);
        let gone = dir.path().join("absent");
        assert_eq!(super::remove_attempts_before(&gone, 9).unwrap(), 0);
    }

    use std::io::Write;

    use super::*;

    fn append(path: &Path, data: &[u8]) {
        fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
            .unwrap()
            .write_all(data)
            .unwrap();
    }

    #[test]
    fn tail_counts_lines_across_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("c.log");
        assert_eq!(read_tail(&log, Some(3)).unwrap(), b"");
        append(&log, b"a\nb\nc\n");
        assert!(!rotate_if_needed(&log, 100).unwrap());
        assert!(rotate_if_needed(&log, 3).unwrap());
        assert_eq!(fs::read(rotated_path(&log)).unwrap(), b"a\nb\nc\n");
        assert_eq!(fs::metadata(&log).unwrap().len(), 0);
        append(&log, b"d\ne");
        assert_eq!(read_tail(&log, None).unwrap(), b"a\nb\nc\nd\ne");
        assert_eq!(read_tail(&log, Some(1)).unwrap(), b"e");
        assert_eq!(read_tail(&log, Some(2)).unwrap(), b"d\ne");
        assert_eq!(read_tail(&log, Some(3)).unwrap(), b"c\nd\ne");
        assert_eq!(read_tail(&log, Some(10)).unwrap(), b"a\nb\nc\nd\ne");
        assert_eq!(read_tail(&log, Some(0)).unwrap(), b"");
    }

    #[test]
    fn tail_joins_a_line_split_by_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("c.log");
        append(&log, b"x\npart");
        rotate_if_needed(&log, 1).unwrap();
        append(&log, b"ial\n");
        assert_eq!(read_tail(&log, Some(1)).unwrap(), b"partial\n");
        assert_eq!(read_tail(&log, Some(2)).unwrap(), b"x\npartial\n");
    }

    #[test]
    fn writer_with_o_append_keeps_writing_after_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("c.log");
        let mut writer = fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&log)
            .unwrap();
        writer.write_all(b"0123456789\n").unwrap();
        rotate_if_needed(&log, 5).unwrap();
        writer.write_all(b"after\n").unwrap();
        assert_eq!(fs::read(&log).unwrap(), b"after\n");
    }

    #[test]
    fn follower_sees_appends_and_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("c.log");
        let mut f = LogFollower::from_end(&log).unwrap();
        assert_eq!(f.poll_once().unwrap(), b"");
        append(&log, b"one\n");
        assert_eq!(f.poll_once().unwrap(), b"one\n");
        append(&log, b"two\n");
        rotate_if_needed(&log, 1).unwrap();
        append(&log, b"3\n");
        // "two" was written before the rotation and not yet read: recovered from .1.
        assert_eq!(f.poll_once().unwrap(), b"two\n3\n");
        assert_eq!(f.poll_once().unwrap(), b"");
    }

    #[tokio::test(start_paused = true)]
    async fn next_chunk_waits_for_data() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("c.log");
        let mut f = LogFollower::from_end(&log).unwrap();
        let path = log.clone();
        let writer = tokio::spawn(async move {
            tokio::time::sleep(FOLLOW_INTERVAL * 3).await;
            append(&path, b"late\n");
        });
        assert_eq!(f.next_chunk().await.unwrap(), b"late\n");
        writer.await.unwrap();
    }
}
