//! Log streams: a container's log file sent to the client that asked, in signed
//! chunks on `node/<n>/stream/<id>/out`, with a small window of unacknowledged
//! chunks so a slow client (or broker) slows the reader instead of filling
//! memory, and a lease so a client that vanished does not leave a follower
//! running forever.

use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::transport::messages::StreamMsg;
use crate::transport::{Mqtt, Sealer};

/// Bytes per chunk: well under any broker's packet limit.
pub const CHUNK: usize = 16 * 1024;
/// Chunks in flight before the sender waits for an ack.
pub const WINDOW: u64 = 8;
/// A follower with no ack or keep-alive for this long stops.
pub const LEASE: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(200);

pub struct LogStream {
    pub mqtt: Mqtt,
    pub sealer: Arc<Sealer>,
    /// `…/node/<n>/stream/<id>/out`.
    pub topic: String,
    /// The client's sender id: chunks are addressed to it.
    pub to: String,
    pub path: PathBuf,
    pub follow: bool,
    pub tail: Option<u64>,
}

impl LogStream {
    async fn send(&self, msg: &StreamMsg) -> bool {
        let bytes = self.sealer.seal(&self.topic, &self.to, msg);
        self.mqtt.publish(&self.topic, bytes, false).await.is_ok()
    }

    /// Serves the stream until the log ends (without `follow`), the client
    /// closes it, or its lease runs out.
    pub async fn run(self, mut control: mpsc::Receiver<StreamMsg>) {
        let (start, initial) = match initial_bytes(&self.path, self.tail) {
            Ok(x) => x,
            Err(e) => {
                self.send(&StreamMsg::End {
                    error: Some(format!("reading the log: {e}")),
                })
                .await;
                return;
            }
        };
        let mut offset = start + initial.len() as u64;
        let mut seq = 0u64;
        let mut acked = 0u64;
        let mut lease = Instant::now() + LEASE;
        let mut pending: std::collections::VecDeque<Vec<u8>> =
            initial.chunks(CHUNK).map(<[u8]>::to_vec).collect();
        loop {
            // Send what the window allows.
            while seq < acked + WINDOW {
                let Some(bytes) = pending.pop_front() else {
                    break;
                };
                seq += 1;
                if !self.send(&StreamMsg::Data { seq, bytes }).await {
                    return;
                }
            }
            if pending.is_empty() && !self.follow {
                // Everything is out; end once the client has it all (or the
                // lease says it is gone).
                if acked >= seq || Instant::now() > lease {
                    self.send(&StreamMsg::End { error: None }).await;
                    return;
                }
            }
            tokio::select! {
                // Acks move the window and renew the lease; Close ends it.
                msg = control.recv() => match msg {
                    Some(StreamMsg::Ack { seq: s }) => {
                        acked = acked.max(s.min(seq));
                        lease = Instant::now() + LEASE;
                    }
                    Some(StreamMsg::Close) | None => return,
                    Some(_) => {}
                },
                // Following: look for new bytes; without follow, this only
                // bounds the wait for the last acks.
                _ = tokio::time::sleep(POLL) => {
                    if Instant::now() > lease {
                        tracing::debug!(topic = %self.topic, "log stream lease expired");
                        self.send(&StreamMsg::End { error: Some("client went away".into()) }).await;
                        return;
                    }
                    if self.follow && pending.len() < WINDOW as usize {
                        match read_from(&self.path, offset) {
                            Ok((new_offset, bytes)) => {
                                offset = new_offset;
                                pending.extend(bytes.chunks(CHUNK).map(<[u8]>::to_vec));
                            }
                            Err(e) => tracing::debug!(error = %e, "log follow read failed"),
                        }
                    }
                }
            }
        }
    }
}

/// The last `tail` lines (all without it) and the offset they start at.
fn initial_bytes(path: &PathBuf, tail: Option<u64>) -> std::io::Result<(u64, Vec<u8>)> {
    let mut data = Vec::new();
    match std::fs::File::open(path) {
        Ok(mut f) => {
            f.read_to_end(&mut data)?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((0, data)),
        Err(e) => return Err(e),
    }
    let Some(n) = tail else {
        return Ok((0, data));
    };
    let mut cut = data.len();
    let mut lines = 0;
    // A trailing newline ends the last line; it does not start another.
    let body = if data.ends_with(b"\n") {
        &data[..data.len() - 1]
    } else {
        &data[..]
    };
    for (i, b) in body.iter().enumerate().rev() {
        if *b == b'\n' {
            lines += 1;
            if lines == n {
                cut = i + 1;
                break;
            }
        }
    }
    if lines < n || n == 0 {
        cut = if n == 0 { data.len() } else { 0 };
    }
    Ok((cut as u64, data.split_off(cut)))
}

/// Bytes appended since `offset`; starts over when the file was truncated
/// (rotated by copy-truncate).
fn read_from(path: &PathBuf, offset: u64) -> std::io::Result<(u64, Vec<u8>)> {
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((offset, Vec::new())),
        Err(e) => return Err(e),
    };
    let len = f.metadata()?.len();
    let from = if len < offset { 0 } else { offset };
    f.seek(SeekFrom::Start(from))?;
    let mut buf = Vec::new();
    f.take((CHUNK as u64) * WINDOW).read_to_end(&mut buf)?;
    Ok((from + buf.len() as u64, buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_and_follow_reads() {
        let dir = std::env::temp_dir().join(format!("bramble-streams-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("0.log");
        std::fs::write(&p, b"a\nb\nc\n").unwrap();
        assert_eq!(initial_bytes(&p, Some(2)).unwrap(), (2, b"b\nc\n".to_vec()));
        assert_eq!(
            initial_bytes(&p, Some(10)).unwrap(),
            (0, b"a\nb\nc\n".to_vec())
        );
        assert_eq!(initial_bytes(&p, None).unwrap().1, b"a\nb\nc\n".to_vec());
        assert_eq!(initial_bytes(&p, Some(0)).unwrap(), (6, vec![]));
        std::fs::write(&p, b"a\nb\nc\nd\n").unwrap();
        assert_eq!(read_from(&p, 6).unwrap(), (8, b"d\n".to_vec()));
        std::fs::write(&p, b"x\n").unwrap();
        assert_eq!(
            read_from(&p, 8).unwrap(),
            (2, b"x\n".to_vec()),
            "truncated: start over"
        );
        assert_eq!(
            initial_bytes(&dir.join("none"), Some(1)).unwrap(),
            (0, vec![])
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
