//! Log streams: a container's log file sent to the client that asked, in signed
//! chunks on `node/<n>/stream/<id>/out`, with a small window of unacknowledged
//! chunks so a slow client (or broker) slows the reader instead of filling
//! memory, and a lease so a client that vanished does not leave a follower
//! running forever.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::runtime::logs::{FOLLOW_INTERVAL, LogFollower, read_tail};
use crate::transport::messages::StreamMsg;
use crate::transport::{Mqtt, Sealer};

/// Bytes per chunk: well under any broker's packet limit.
pub const CHUNK: usize = 16 * 1024;
/// Chunks in flight before the sender waits for an ack.
pub const WINDOW: u64 = 8;
/// A follower with no ack or keep-alive for this long stops.
pub const LEASE: Duration = Duration::from_secs(30);

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
        let path = self.path.clone();
        let tail = self.tail.map(|t| t as usize);
        // Bytes written between the read and the follower's start can be
        // missed; kubectl's own `logs -f` has the same window.
        let read = tokio::task::spawn_blocking(move || {
            let initial = read_tail(&path, tail)?;
            Ok::<_, std::io::Error>((initial, LogFollower::from_end(&path)?))
        })
        .await;
        let (initial, mut follower) = match read {
            Ok(Ok(x)) => x,
            Ok(Err(e)) => {
                self.end(Some(format!("reading the log: {e}"))).await;
                return;
            }
            Err(e) => {
                self.end(Some(format!("reading the log: {e}"))).await;
                return;
            }
        };
        let mut seq = 0u64;
        let mut acked = 0u64;
        let mut lease = Instant::now() + LEASE;
        let mut pending: VecDeque<Vec<u8>> = initial.chunks(CHUNK).map(<[u8]>::to_vec).collect();
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
            // Without follow, end once the client has it all (or the lease
            // says it is gone).
            if pending.is_empty() && !self.follow && (acked >= seq || Instant::now() > lease) {
                self.end(None).await;
                return;
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
                _ = tokio::time::sleep(FOLLOW_INTERVAL) => {
                    if Instant::now() > lease {
                        tracing::debug!(topic = %self.topic, "log stream lease expired");
                        self.end(Some("client went away".into())).await;
                        return;
                    }
                    if self.follow && pending.len() < WINDOW as usize {
                        match follower.poll_once() {
                            Ok(bytes) => pending.extend(bytes.chunks(CHUNK).map(<[u8]>::to_vec)),
                            Err(e) => tracing::debug!(error = %e, "log follow read failed"),
                        }
                    }
                }
            }
        }
    }

    async fn end(&self, error: Option<String>) {
        self.send(&StreamMsg::End { error }).await;
    }
}
