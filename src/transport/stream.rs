//! Byte streams between a client and a node (`logs`, `exec`, `port-forward`):
//! the one flow-control design both ends run over `node/<n>/stream/<id>/{in,out}`.
//!
//! Owns: sequencing, acknowledgement, the window, retransmission, keep-alive
//! and lease rules ([`Outbound`] and [`Inbound`], pure), and [`Engine`], which
//! runs them for one end over any [`Publish`] (MQTT in production, channels in
//! tests).
//!
//! Must not touch: what the bytes mean (the worker's `streams` and the CLI's
//! verbs feed and drain an engine) or envelope checks (the owner verifies
//! every message before handing it in).
//!
//! The rules, per direction:
//! - Frames carry `seq` 1, 2, 3…; a receiver delivers them in order, once,
//!   buffering at most [`MAX_AHEAD`] beyond what it has consumed.
//! - `Ack{seq}` means "consumed up to `seq`" (written to the process, socket
//!   or terminal), so a slow consumer slows the sender: at most [`WINDOW`]
//!   data frames of [`CHUNK`] bytes are unacknowledged.
//! - Unacknowledged frames are sent again after [`RETRANSMIT`] without
//!   progress (MQTT at-least-once loses messages across a reconnect of a
//!   clean session); duplicates are dropped and re-acknowledged.
//! - Each end sends an `Ack` at least every [`KEEPALIVE`] and gives up after
//!   [`LEASE`] without hearing from the other.
//! - The node sends `End` last and finishes once it is acknowledged; the
//!   client finishes once it has consumed `End`; `Close` (client → node)
//!   ends a stream at once.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::messages::{Frame, FrameBody, StreamMsg};
use super::{Mqtt, Sealer, TransportError};

/// Bytes per data frame: well under any broker's packet limit.
pub const CHUNK: usize = 16 * 1024;
/// Data frames in flight before the sender waits for an ack.
pub const WINDOW: usize = 8;
/// Frames a receiver accepts beyond what it has consumed (data frames are
/// at most [`WINDOW`] of them; the rest is room for control frames).
pub const MAX_AHEAD: u64 = 64;
/// An end that sent nothing for this long sends an `Ack`.
pub const KEEPALIVE: Duration = Duration::from_secs(10);
/// An end that heard nothing for this long gives the stream up.
pub const LEASE: Duration = Duration::from_secs(30);
/// Unacknowledged frames are sent again after this long without progress.
pub const RETRANSMIT: Duration = Duration::from_secs(2);
/// The client repeats its first `Ack` this often until the node answers.
pub const HELLO_RETRY: Duration = Duration::from_secs(1);

/// The sending half of one direction: sequence numbers, the frames not yet
/// acknowledged, the window.
#[derive(Debug)]
pub struct Outbound {
    last: u64,
    unacked: VecDeque<Frame>,
    /// When the oldest unacknowledged frame was last sent or acknowledged.
    progress_at: Instant,
}

impl Outbound {
    pub fn new(now: Instant) -> Outbound {
        Outbound {
            last: 0,
            unacked: VecDeque::new(),
            progress_at: now,
        }
    }

    fn data_in_flight(&self) -> usize {
        self.unacked
            .iter()
            .filter(|f| matches!(f.body, FrameBody::Data { .. }))
            .count()
    }

    /// Whether the window has room for another frame.
    pub fn can_send(&self) -> bool {
        self.data_in_flight() < WINDOW
    }

    /// Numbers `body` and keeps it until acknowledged; returns the frame to send.
    pub fn push(&mut self, body: FrameBody, now: Instant) -> Frame {
        if self.unacked.is_empty() {
            self.progress_at = now;
        }
        self.last += 1;
        let frame = Frame {
            seq: self.last,
            body,
        };
        self.unacked.push_back(frame.clone());
        frame
    }

    /// The peer consumed everything up to `seq`.
    pub fn on_ack(&mut self, seq: u64, now: Instant) {
        let before = self.unacked.len();
        while self.unacked.front().is_some_and(|f| f.seq <= seq) {
            self.unacked.pop_front();
        }
        if self.unacked.len() != before {
            self.progress_at = now;
        }
    }

    /// Everything sent has been acknowledged.
    pub fn idle(&self) -> bool {
        self.unacked.is_empty()
    }

    /// The last sequence number given out.
    pub fn last_seq(&self) -> u64 {
        self.last
    }

    /// When [`retransmit`](Self::retransmit) has something to resend.
    pub fn retransmit_at(&self) -> Option<Instant> {
        (!self.unacked.is_empty()).then(|| self.progress_at + RETRANSMIT)
    }

    /// The frames to send again, if the peer has been silent about them for
    /// [`RETRANSMIT`].
    pub fn retransmit(&mut self, now: Instant) -> Vec<Frame> {
        match self.retransmit_at() {
            Some(at) if now >= at => {
                self.progress_at = now;
                self.unacked.iter().cloned().collect()
            }
            _ => Vec::new(),
        }
    }
}

/// What [`Inbound::accept`] made of a frame.
#[derive(Debug, PartialEq)]
pub enum Accepted {
    /// Deliverable now, in order (possibly with frames that were waiting for it).
    Deliver(Vec<(u64, FrameBody)>),
    /// Ahead of a gap: kept until the gap fills.
    Buffered,
    /// Already delivered: the peer missed our ack.
    Duplicate,
    /// Too far ahead of what was consumed: dropped (the peer ignores the
    /// window, or a lot was lost); it will be sent again.
    TooFar,
}

/// The receiving half of one direction: in-order delivery and what to ack.
#[derive(Debug, Default)]
pub struct Inbound {
    delivered: u64,
    consumed: u64,
    pending: BTreeMap<u64, FrameBody>,
}

impl Inbound {
    pub fn new() -> Inbound {
        Inbound::default()
    }

    pub fn accept(&mut self, frame: Frame) -> Accepted {
        if frame.seq <= self.delivered {
            return Accepted::Duplicate;
        }
        if frame.seq > self.consumed + MAX_AHEAD {
            return Accepted::TooFar;
        }
        self.pending.insert(frame.seq, frame.body);
        let mut out = Vec::new();
        while let Some(body) = self.pending.remove(&(self.delivered + 1)) {
            self.delivered += 1;
            out.push((self.delivered, body));
        }
        if out.is_empty() {
            Accepted::Buffered
        } else {
            Accepted::Deliver(out)
        }
    }

    /// The consumer is done with everything up to `seq`.
    pub fn consumed(&mut self, seq: u64) {
        self.consumed = self.consumed.max(seq.min(self.delivered));
    }

    /// What an `Ack` says now.
    pub fn ack(&self) -> u64 {
        self.consumed
    }
}

/// Publishes one end's messages to the other.
pub trait Publish: Send + Sync + 'static {
    fn publish(&self, msg: &StreamMsg) -> impl Future<Output = Result<(), TransportError>> + Send;
}

/// Over MQTT: signed for `peer`, on this end's outgoing topic.
pub struct MqttLink {
    pub mqtt: Mqtt,
    pub sealer: Arc<Sealer>,
    /// `…/stream/<id>/out` for the node, `…/stream/<id>/in` for the client.
    pub topic: String,
    /// The other end's sender id.
    pub peer: String,
}

impl Publish for MqttLink {
    async fn publish(&self, msg: &StreamMsg) -> Result<(), TransportError> {
        let bytes = self.sealer.seal(&self.topic, &self.peer, msg);
        self.mqtt.publish(&self.topic, bytes, false).await
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Serves the stream; sends `End` last.
    Node,
    /// Asked for it; finishes once it has consumed `End`.
    Client,
}

/// The local side of an engine.
pub struct Ends {
    /// Bodies to send, in order; read only while the window has room, so a
    /// bounded channel here carries the peer's backpressure to the producer.
    pub source: mpsc::Receiver<FrameBody>,
    /// Bodies received, in order, with their sequence numbers.
    pub sink: mpsc::UnboundedSender<(u64, FrameBody)>,
    /// The consumer reports each sequence number once it has used the body.
    /// (The sink is bounded in practice by [`MAX_AHEAD`].)
    pub consumed: mpsc::UnboundedReceiver<u64>,
}

/// How a stream ended, for this end.
#[derive(Debug)]
pub enum Outcome {
    /// `End` went through: sent and acknowledged (node), or consumed (client).
    Ended,
    /// The client sent `Close`.
    Closed,
    /// Nothing from the other end for [`LEASE`].
    LeaseExpired,
    /// The owner stopped handing in messages (the agent is stopping).
    Detached,
    /// Publishing failed.
    Transport(TransportError),
}

/// One end of a stream.
pub struct Engine<P: Publish> {
    link: P,
    role: Role,
    out: Outbound,
    inb: Inbound,
    /// Verified messages from the other end.
    incoming: mpsc::Receiver<StreamMsg>,
    /// A message the owner took out of `incoming` before the engine ran.
    first: Option<StreamMsg>,
    sent_at: Instant,
    heard_at: Instant,
    heard_any: bool,
}

impl<P: Publish> Engine<P> {
    pub fn new(link: P, role: Role, incoming: mpsc::Receiver<StreamMsg>) -> Engine<P> {
        let now = Instant::now();
        Engine {
            link,
            role,
            out: Outbound::new(now),
            inb: Inbound::new(),
            incoming,
            first: None,
            sent_at: now,
            heard_at: now,
            // The node starts once it has heard the client's first ack.
            heard_any: role == Role::Node,
        }
    }

    /// Handles `msg` first: the message the owner waited for before
    /// starting (the client's hello, or whatever came first).
    pub fn with_first(mut self, msg: StreamMsg) -> Engine<P> {
        self.first = Some(msg);
        self
    }

    async fn send(&mut self, msg: &StreamMsg) -> Result<(), TransportError> {
        self.sent_at = Instant::now();
        self.link.publish(msg).await
    }

    async fn ack(&mut self) -> Result<(), TransportError> {
        let seq = self.inb.ack();
        self.send(&StreamMsg::Ack { seq }).await
    }

    /// A last word from the node when the stream ends without `End` having
    /// gone through: sent once, not waited for.
    async fn last_word(&mut self, why: &str) {
        if self.role == Role::Node {
            let frame = self.out.push(
                FrameBody::End {
                    exit_code: None,
                    error: Some(why.to_string()),
                },
                Instant::now(),
            );
            let _ = self.send(&StreamMsg::Frame(frame)).await;
        }
    }

    /// Runs until the stream ends; see [`Outcome`].
    pub async fn run(mut self, ends: Ends) -> Outcome {
        match self.run_inner(ends).await {
            Ok(outcome) => outcome,
            Err(e) => Outcome::Transport(e),
        }
    }

    async fn run_inner(&mut self, ends: Ends) -> Result<Outcome, TransportError> {
        let Ends {
            mut source,
            sink,
            mut consumed,
        } = ends;
        let mut source_open = true;
        let mut end_sent = false;
        let mut end_received: Option<u64> = None;
        // The client's hello; the node's answer to it.
        self.ack().await?;
        loop {
            if end_sent && self.out.idle() {
                return Ok(Outcome::Ended);
            }
            if end_received.is_some_and(|s| self.inb.ack() >= s) {
                return Ok(Outcome::Ended);
            }
            let keepalive_at = self.sent_at
                + if self.heard_any {
                    KEEPALIVE
                } else {
                    HELLO_RETRY
                };
            let lease_at = self.heard_at + LEASE;
            let retransmit_at = self.out.retransmit_at();
            let may_send = source_open && !end_sent && self.out.can_send();
            if let Some(msg) = self.first.take() {
                if let Some(outcome) = self.on_message(msg, &sink, &mut end_received).await? {
                    return Ok(outcome);
                }
                continue;
            }
            tokio::select! {
                // From the other end (already verified by the owner).
                msg = self.incoming.recv() => {
                    let Some(msg) = msg else {
                        self.last_word("the node's agent is stopping").await;
                        return Ok(Outcome::Detached);
                    };
                    if let Some(outcome) = self.on_message(msg, &sink, &mut end_received).await? {
                        return Ok(outcome);
                    }
                }
                // What the local side has to send, while the window has room.
                body = source.recv(), if may_send => match body {
                    Some(body) => {
                        end_sent = matches!(body, FrameBody::End { .. });
                        let frame = self.out.push(body, Instant::now());
                        self.send(&StreamMsg::Frame(frame)).await?;
                    }
                    None => source_open = false,
                },
                // The consumer used some frames: let the sender go on.
                Some(seq) = consumed.recv() => {
                    self.inb.consumed(seq);
                    while let Ok(seq) = consumed.try_recv() {
                        self.inb.consumed(seq);
                    }
                    self.ack().await?;
                }
                // Frames the other end has not acknowledged in a while.
                _ = sleep_until_opt(retransmit_at) => {
                    for frame in self.out.retransmit(Instant::now()) {
                        self.send(&StreamMsg::Frame(frame)).await?;
                    }
                }
                // Tell the other end we are still here (or, for a client that
                // has not heard from the node yet, say hello again).
                _ = tokio::time::sleep_until(keepalive_at) => self.ack().await?,
                _ = tokio::time::sleep_until(lease_at) => {
                    self.last_word("no word from the client for 30 s").await;
                    return Ok(Outcome::LeaseExpired);
                }
            }
        }
    }
}

impl<P: Publish> Engine<P> {
    /// One message from the other end; `Some` when it ends the stream.
    async fn on_message(
        &mut self,
        msg: StreamMsg,
        sink: &mpsc::UnboundedSender<(u64, FrameBody)>,
        end_received: &mut Option<u64>,
    ) -> Result<Option<Outcome>, TransportError> {
        let now = Instant::now();
        self.heard_at = now;
        self.heard_any = true;
        match msg {
            StreamMsg::Frame(frame) => match self.inb.accept(frame) {
                Accepted::Deliver(bodies) => {
                    for (seq, body) in bodies {
                        if matches!(body, FrameBody::End { .. }) {
                            *end_received = Some(seq);
                        }
                        // A consumer that is gone has nothing left to do
                        // with it: count it consumed.
                        if sink.send((seq, body)).is_err() {
                            self.inb.consumed(seq);
                        }
                    }
                }
                Accepted::Duplicate => self.ack().await?,
                Accepted::Buffered | Accepted::TooFar => {}
            },
            StreamMsg::Ack { seq } => {
                self.out.on_ack(seq, now);
                // A client's hello (again): say we are here.
                if seq == 0 && self.role == Role::Node {
                    self.ack().await?;
                }
            }
            StreamMsg::Close => return Ok(Some(Outcome::Closed)),
            StreamMsg::Open(_) => {}
        }
        Ok(None)
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;
    use crate::transport::messages::Channel;

    fn data(n: u8) -> FrameBody {
        FrameBody::Data {
            channel: Channel::Stdout,
            bytes: vec![n],
        }
    }

    #[test]
    fn outbound_window_and_acks() {
        let t0 = Instant::now();
        let mut out = Outbound::new(t0);
        for i in 0..WINDOW {
            assert!(out.can_send());
            assert_eq!(out.push(data(i as u8), t0).seq, i as u64 + 1);
        }
        assert!(!out.can_send(), "window full");
        // Control frames do not count against the window.
        out.push(
            FrameBody::Eof {
                channel: Channel::Stdout,
            },
            t0,
        );
        assert!(!out.can_send());
        out.on_ack(2, t0);
        assert!(out.can_send());
        out.on_ack(100, t0);
        assert!(out.idle());
        assert_eq!(out.last_seq(), WINDOW as u64 + 1);
    }

    #[test]
    fn outbound_retransmits_only_without_progress() {
        let t0 = Instant::now();
        let mut out = Outbound::new(t0);
        assert_eq!(out.retransmit_at(), None);
        out.push(data(1), t0);
        out.push(data(2), t0);
        assert!(out.retransmit(t0 + RETRANSMIT / 2).is_empty());
        // An ack is progress: the clock restarts.
        out.on_ack(1, t0 + RETRANSMIT / 2);
        assert!(out.retransmit(t0 + RETRANSMIT).is_empty());
        let again = out.retransmit(t0 + RETRANSMIT * 2);
        assert_eq!(again.iter().map(|f| f.seq).collect::<Vec<_>>(), [2]);
        // Not again right away.
        assert!(out.retransmit(t0 + RETRANSMIT * 2).is_empty());
    }

    #[test]
    fn inbound_orders_dedups_and_bounds() {
        let mut inb = Inbound::new();
        let f = |seq| Frame {
            seq,
            body: data(seq as u8),
        };
        assert_eq!(inb.accept(f(2)), Accepted::Buffered);
        assert_eq!(inb.accept(f(3)), Accepted::Buffered);
        let Accepted::Deliver(got) = inb.accept(f(1)) else {
            panic!("1 fills the gap")
        };
        assert_eq!(got.iter().map(|(s, _)| *s).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(inb.accept(f(2)), Accepted::Duplicate);
        // Nothing consumed yet: acks stay at 0, and the buffer is bounded.
        assert_eq!(inb.ack(), 0);
        assert_eq!(inb.accept(f(MAX_AHEAD + 1)), Accepted::TooFar);
        inb.consumed(2);
        assert_eq!(inb.ack(), 2);
        // Cannot consume what was not delivered.
        inb.consumed(50);
        assert_eq!(inb.ack(), 3);
        assert!(matches!(inb.accept(f(4)), Accepted::Deliver(_)));
    }

    /// A channel to the other engine that can drop messages.
    struct ChanLink {
        to: mpsc::Sender<StreamMsg>,
        /// Drop the n-th published message (1-based), once.
        drop_nth: Option<u64>,
        count: AtomicU64,
        /// Every data frame sent, for window checks.
        log: Arc<Mutex<Vec<u64>>>,
    }

    impl Publish for ChanLink {
        async fn publish(&self, msg: &StreamMsg) -> Result<(), TransportError> {
            let n = self.count.fetch_add(1, Ordering::SeqCst) + 1;
            if let StreamMsg::Frame(f) = msg {
                self.log.lock().unwrap().push(f.seq);
            }
            if Some(n) == self.drop_nth {
                return Ok(());
            }
            let _ = self.to.send(msg.clone()).await;
            Ok(())
        }
    }

    struct Pair {
        node: Engine<ChanLink>,
        client: Engine<ChanLink>,
        node_log: Arc<Mutex<Vec<u64>>>,
    }

    fn pair(drop_node_nth: Option<u64>) -> Pair {
        let (to_node, node_in) = mpsc::channel(256);
        let (to_client, client_in) = mpsc::channel(256);
        let node_log = Arc::new(Mutex::new(Vec::new()));
        let node = Engine::new(
            ChanLink {
                to: to_client,
                drop_nth: drop_node_nth,
                count: AtomicU64::new(0),
                log: node_log.clone(),
            },
            Role::Node,
            node_in,
        );
        let client = Engine::new(
            ChanLink {
                to: to_node,
                drop_nth: None,
                count: AtomicU64::new(0),
                log: Arc::default(),
            },
            Role::Client,
            client_in,
        );
        Pair {
            node,
            client,
            node_log,
        }
    }

    /// What a test consumer got: the bytes, the `End`, its largest backlog.
    type Consumed = (Vec<u8>, Option<FrameBody>, usize);

    /// A consumer that takes `delay` per frame and collects the bytes.
    fn consumer(
        delay: Duration,
    ) -> (
        mpsc::UnboundedSender<(u64, FrameBody)>,
        mpsc::UnboundedReceiver<u64>,
        tokio::task::JoinHandle<Consumed>,
    ) {
        let (sink, mut rx) = mpsc::unbounded_channel::<(u64, FrameBody)>();
        let (done, consumed) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            let mut bytes = Vec::new();
            // The most frames ever delivered and not yet consumed.
            let mut backlog = 0;
            while let Some((seq, body)) = rx.recv().await {
                backlog = backlog.max(rx.len() + 1);
                tokio::time::sleep(delay).await;
                let _ = done.send(seq);
                match body {
                    FrameBody::Data { bytes: b, .. } => bytes.extend(b),
                    end @ FrameBody::End { .. } => return (bytes, Some(end), backlog),
                    _ => {}
                }
            }
            (bytes, None, backlog)
        });
        (sink, consumed, task)
    }

    /// Sends `frames` data frames and an `End` from a node to a client that
    /// takes 50 ms per frame; returns the bytes, the node's frames as sent
    /// (retransmissions included) and the client's largest backlog.
    async fn transfer(drop_node_nth: Option<u64>, frames: usize) -> (Vec<u8>, Vec<u64>, usize) {
        let Pair {
            node,
            client,
            node_log,
        } = pair(drop_node_nth);
        let (src_tx, src_rx) = mpsc::channel(1);
        let producer = tokio::spawn(async move {
            for i in 0..frames {
                src_tx.send(data(i as u8)).await.unwrap();
            }
            src_tx
                .send(FrameBody::End {
                    exit_code: Some(3),
                    error: None,
                })
                .await
                .unwrap();
        });
        // The node side consumes nothing but acks.
        let (nsink, nconsumed, _ntask) = consumer(Duration::ZERO);
        let node_task = tokio::spawn(node.run(Ends {
            source: src_rx,
            sink: nsink,
            consumed: nconsumed,
        }));
        let (_csrc_tx, csrc_rx) = mpsc::channel(1);
        let (csink, cconsumed, ctask) = consumer(Duration::from_millis(50));
        let client_outcome = client
            .run(Ends {
                source: csrc_rx,
                sink: csink,
                consumed: cconsumed,
            })
            .await;
        assert!(
            matches!(client_outcome, Outcome::Ended),
            "{client_outcome:?}"
        );
        let (bytes, end, backlog) = ctask.await.unwrap();
        assert_eq!(
            end,
            Some(FrameBody::End {
                exit_code: Some(3),
                error: None
            })
        );
        assert!(matches!(node_task.await.unwrap(), Outcome::Ended));
        producer.await.unwrap();
        let log = node_log.lock().unwrap().clone();
        (bytes, log, backlog)
    }

    #[tokio::test(start_paused = true)]
    async fn slow_consumer_keeps_the_window() {
        let (bytes, log, backlog) = transfer(None, 40).await;
        assert_eq!(bytes, (0..40u8).collect::<Vec<_>>());
        // The node never ran more than a window ahead of the consumer.
        assert!(backlog <= WINDOW, "backlog {backlog}");
        assert!(backlog > 1, "the window was used: {backlog}");
        // No retransmissions were needed; each frame sent once, in order.
        assert_eq!(log, (1..=41).collect::<Vec<u64>>());
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_frame_is_sent_again() {
        // The node's first messages are acks (its hello answers); the 5th
        // is a data frame.
        let (bytes, log, _) = transfer(Some(5), 20).await;
        assert_eq!(bytes, (0..20u8).collect::<Vec<_>>());
        assert!(log.len() > 21, "a frame was sent again: {log:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_whose_node_goes_silent_ends_within_the_lease() {
        let (to_node, mut node_in) = mpsc::channel(64);
        let (to_client, client_in) = mpsc::channel(4);
        let client = Engine::new(
            ChanLink {
                to: to_node,
                drop_nth: None,
                count: AtomicU64::new(0),
                log: Arc::default(),
            },
            Role::Client,
            client_in,
        );
        let (_src, source) = mpsc::channel(1);
        let (sink, consumed_rx, _t) = consumer(Duration::ZERO);
        let run = tokio::spawn(client.run(Ends {
            source,
            sink,
            consumed: consumed_rx,
        }));
        // The node answers the hello and one data frame, then says nothing
        // more (its agent was killed, its link cut); `to_client` stays open,
        // so only the lease can end the stream.
        assert!(matches!(
            node_in.recv().await,
            Some(StreamMsg::Ack { seq: 0 })
        ));
        to_client.send(StreamMsg::Ack { seq: 0 }).await.unwrap();
        to_client
            .send(StreamMsg::Frame(Frame {
                seq: 1,
                body: data(1),
            }))
            .await
            .unwrap();
        let heard = Instant::now();
        let outcome = run.await.unwrap();
        let took = Instant::now() - heard;
        assert!(matches!(outcome, Outcome::LeaseExpired), "{outcome:?}");
        // Paused time advances to the next timer exactly: the lease, no
        // keep-alive of the client's own, is what ended it.
        assert!(
            took >= LEASE && took < LEASE + Duration::from_secs(1),
            "{took:?}"
        );
        // Meanwhile the client kept acknowledging what it got.
        let mut acks = Vec::new();
        while let Ok(m) = node_in.try_recv() {
            if let StreamMsg::Ack { seq } = m {
                acks.push(seq);
            }
        }
        assert!(acks.contains(&1), "{acks:?}");
        drop(to_client);
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_client_loses_its_lease() {
        let (_to_node, node_in) = mpsc::channel(4);
        let (to_client, mut client_in) = mpsc::channel(64);
        let node = Engine::new(
            ChanLink {
                to: to_client,
                drop_nth: None,
                count: AtomicU64::new(0),
                log: Arc::default(),
            },
            Role::Node,
            node_in,
        );
        let (_src, source) = mpsc::channel(1);
        let (sink, consumed_rx, _t) = consumer(Duration::ZERO);
        let outcome = node
            .run(Ends {
                source,
                sink,
                consumed: consumed_rx,
            })
            .await;
        assert!(matches!(outcome, Outcome::LeaseExpired), "{outcome:?}");
        // The node said why, last.
        let mut last = None;
        while let Ok(m) = client_in.try_recv() {
            last = Some(m);
        }
        assert!(
            matches!(
                last,
                Some(StreamMsg::Frame(Frame {
                    body: FrameBody::End { error: Some(_), .. },
                    ..
                }))
            ),
            "{last:?}"
        );
    }
}
