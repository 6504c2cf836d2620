//! The signed CBOR envelope every Bramble message travels in, and the checks a
//! receiver makes before believing one.
//!
//! The signature covers the protocol version, sender, recipient, the topic the
//! message was published on, sequence number, timestamp and body, so a message
//! cannot be moved to another topic, redirected to another recipient or
//! replayed. Replays are caught by a timestamp window plus the set of
//! `(sender, seq)` pairs seen within it.
//!
//! Timestamps are read from a [`Clock`]: the system clock, until a node
//! learns the cluster's time (the master's) from an answer bound to
//! something it just sent (the join nonce, a report's sequence number); from
//! then on it counts from that answer on the monotonic clock, so a Pi that
//! booted hours off, or whose clock NTP steps later, stamps and checks
//! envelopes in the master's time.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::keys::{KeyPair, PublicKey};

pub const PROTOCOL_VERSION: u8 = 1;

/// Recipient that every receiver accepts (tables broadcast to all workers).
pub const TO_ANYONE: &str = "*";

/// Sender id of the master (signs with the cluster key).
pub const MASTER_ID: &str = "master";

/// Sender/recipient id of a node agent.
pub fn node_id(node: &str) -> String {
    format!("node:{node}")
}

/// Sender id of an admin key (the CLI).
pub fn admin_id(key: &PublicKey) -> String {
    format!("admin:{}", key.fingerprint())
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Envelope {
    pub v: u8,
    pub from: String,
    pub to: String,
    pub seq: u64,
    /// Unix time in milliseconds, by the sender's clock.
    pub ts: i64,
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub sig: Vec<u8>,
}

#[derive(Serialize)]
struct Signed<'a> {
    domain: &'static str,
    v: u8,
    from: &'a str,
    to: &'a str,
    topic: &'a str,
    seq: u64,
    ts: i64,
    #[serde(with = "serde_bytes")]
    body: &'a [u8],
}

fn signed_bytes(e: &Envelope, topic: &str) -> Vec<u8> {
    let s = Signed {
        domain: "bramble-envelope",
        v: e.v,
        from: &e.from,
        to: &e.to,
        topic,
        seq: e.seq,
        ts: e.ts,
        body: &e.body,
    };
    let mut out = Vec::with_capacity(e.body.len() + 128);
    ciborium::into_writer(&s, &mut out).expect("CBOR into a Vec cannot fail");
    out
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Where a [`Clock`] reads time: the wall clock, and a monotonic one that
/// never jumps. Tests inject their own.
pub trait TimeSource: Send + Sync {
    /// Unix time in milliseconds.
    fn wall_ms(&self) -> i64;
    /// Time since some fixed start; never goes back, never jumps.
    fn monotonic(&self) -> Duration;
}

/// The system's clocks.
pub struct SystemTimeSource;

impl TimeSource for SystemTimeSource {
    fn wall_ms(&self) -> i64 {
        now_ms()
    }

    fn monotonic(&self) -> Duration {
        static START: OnceLock<Instant> = OnceLock::new();
        START.get_or_init(Instant::now).elapsed()
    }
}

/// The time a sender stamps and a receiver checks against: the wall clock,
/// or, once [`Clock::sync`] took a sample of the master's, that sample plus
/// the monotonic time since. Clones share the same time.
#[derive(Clone)]
pub struct Clock {
    source: Arc<dyn TimeSource>,
    /// The master's time (Unix ms) at a monotonic instant.
    anchor: Arc<Mutex<Option<(i64, Duration)>>>,
}

impl Default for Clock {
    fn default() -> Clock {
        Clock::system()
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Clock(offset {} ms)", self.offset_ms())
    }
}

impl Clock {
    pub fn system() -> Clock {
        Clock::with_source(Arc::new(SystemTimeSource))
    }

    pub fn with_source(source: Arc<dyn TimeSource>) -> Clock {
        Clock {
            source,
            anchor: Arc::default(),
        }
    }

    /// Unix time in milliseconds, in the cluster's time once synced.
    pub fn now_ms(&self) -> i64 {
        match *self.anchor.lock().expect("clock lock") {
            Some((ms, at)) => ms + self.source.monotonic().saturating_sub(at).as_millis() as i64,
            None => self.source.wall_ms(),
        }
    }

    /// How far this clock is from the wall clock (what a sync corrected).
    pub fn offset_ms(&self) -> i64 {
        self.now_ms() - self.source.wall_ms()
    }

    /// The monotonic time now, to measure a round trip for [`Clock::sync`].
    pub fn monotonic(&self) -> Duration {
        self.source.monotonic()
    }

    /// Takes a sample of the master's time: `master_ms`, stamped by the
    /// master on an answer to something sent at monotonic time `sent_at`
    /// (so the answer is fresh whatever its timestamp says). The master's
    /// time now lies within `[master_ms, master_ms + round trip]`; if ours
    /// is outside, ours becomes the middle of it. Returns the correction
    /// made, in ms.
    ///
    /// Only a sample bound to something just sent may be given here: an old
    /// message replayed would set the clock back to when it was sent.
    pub fn sync(&self, master_ms: i64, sent_at: Duration) -> Option<i64> {
        let now_mono = self.source.monotonic();
        let rtt = now_mono.saturating_sub(sent_at).as_millis() as i64;
        let ours = self.now_ms();
        if (master_ms..=master_ms + rtt).contains(&ours) {
            return None;
        }
        let theirs = master_ms + rtt / 2;
        *self.anchor.lock().expect("clock lock") = Some((theirs, now_mono));
        Some(theirs - ours)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum EnvelopeError {
    #[error("not a Bramble envelope: {0}")]
    Malformed(String),
    #[error("unsupported protocol version {0}")]
    Version(u8),
    #[error("sender {0:?} is not trusted here")]
    UnknownSender(String),
    #[error("bad signature from {0:?}")]
    BadSignature(String),
    #[error("addressed to {to:?}, not to us")]
    WrongRecipient { to: String },
    #[error("replayed message {seq} from {from:?}")]
    Replay { from: String, seq: u64 },
    /// Authentic (the signature is checked first) but outside the window.
    #[error(
        "timestamp {skew_ms} ms away from our clock (more than the allowed window; check the clocks)"
    )]
    Stale { skew_ms: i64 },
    #[error("body from {from:?} does not decode: {reason}")]
    Body { from: String, reason: String },
}

/// Seals bodies for one sender.
pub struct Sealer {
    key: KeyPair,
    id: String,
    seq: AtomicU64,
    clock: Clock,
}

impl Sealer {
    pub fn new(key: KeyPair, id: impl Into<String>) -> Sealer {
        // Starting from the clock in microseconds keeps seq increasing across
        // short-lived processes (each CLI run) that share one key.
        let start = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(1);
        Sealer {
            key,
            id: id.into(),
            seq: AtomicU64::new(start),
            clock: Clock::system(),
        }
    }

    /// Stamps envelopes with `clock` instead of the system clock.
    pub fn with_clock(mut self, clock: Clock) -> Sealer {
        self.clock = clock;
        self
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn public(&self) -> PublicKey {
        self.key.public()
    }

    /// Signs `body` for publication on `topic` to recipient `to`.
    pub fn seal<T: Serialize>(&self, topic: &str, to: &str, body: &T) -> Vec<u8> {
        let mut bytes = Vec::new();
        ciborium::into_writer(body, &mut bytes).expect("CBOR into a Vec cannot fail");
        self.seal_bytes(topic, to, bytes)
    }

    pub fn seal_bytes(&self, topic: &str, to: &str, body: Vec<u8>) -> Vec<u8> {
        self.seal_numbered_bytes(topic, to, body).1
    }

    /// Like [`Sealer::seal`], also returning the envelope's sequence number
    /// (an answer naming it is an answer to this message).
    pub fn seal_numbered<T: Serialize>(&self, topic: &str, to: &str, body: &T) -> (u64, Vec<u8>) {
        let mut bytes = Vec::new();
        ciborium::into_writer(body, &mut bytes).expect("CBOR into a Vec cannot fail");
        self.seal_numbered_bytes(topic, to, bytes)
    }

    fn seal_numbered_bytes(&self, topic: &str, to: &str, body: Vec<u8>) -> (u64, Vec<u8>) {
        let mut env = Envelope {
            v: PROTOCOL_VERSION,
            from: self.id.clone(),
            to: to.to_string(),
            seq: self.seq.fetch_add(1, Ordering::Relaxed),
            ts: self.clock.now_ms(),
            body,
            sig: Vec::new(),
        };
        env.sig = self.key.sign(&signed_bytes(&env, topic)).to_vec();
        let mut out = Vec::with_capacity(env.body.len() + 160);
        ciborium::into_writer(&env, &mut out).expect("CBOR into a Vec cannot fail");
        (env.seq, out)
    }
}

/// An authentic, fresh message.
#[derive(Debug)]
pub struct Opened<T> {
    pub from: String,
    pub body: T,
    /// The sender's sequence number and timestamp.
    pub seq: u64,
    pub ts: i64,
}

/// Checks envelopes for one receiver.
pub struct Verifier {
    me: HashSet<String>,
    keys: HashMap<String, PublicKey>,
    window_ms: i64,
    seen: HashSet<(String, u64)>,
    order: VecDeque<(i64, String, u64)>,
    clock: Clock,
}

impl Verifier {
    /// `me`: the recipient ids this receiver answers to. `window`: how far a
    /// timestamp may be from our clock (Pis without a real-time clock drift
    /// until NTP syncs, so this is minutes, not seconds).
    pub fn new(me: &[&str], window: Duration) -> Verifier {
        Verifier {
            me: me.iter().map(|s| s.to_string()).collect(),
            keys: HashMap::new(),
            window_ms: window.as_millis() as i64,
            seen: HashSet::new(),
            order: VecDeque::new(),
            clock: Clock::system(),
        }
    }

    /// Checks timestamps against `clock` instead of the system clock.
    pub fn with_clock(mut self, clock: Clock) -> Verifier {
        self.clock = clock;
        self
    }

    pub fn trust(&mut self, id: impl Into<String>, key: PublicKey) {
        self.keys.insert(id.into(), key);
    }

    pub fn untrust(&mut self, id: &str) {
        self.keys.remove(id);
    }

    pub fn trusted(&self, id: &str) -> Option<&PublicKey> {
        self.keys.get(id)
    }

    pub fn answer_to(&mut self, id: impl Into<String>) {
        self.me.insert(id.into());
    }

    /// Verifies and decodes one message received on `topic`.
    pub fn open<T: DeserializeOwned>(
        &mut self,
        topic: &str,
        bytes: &[u8],
    ) -> Result<Opened<T>, EnvelopeError> {
        decode(self.check(topic, bytes)?)
    }

    /// Like [`Verifier::open`] without the freshness checks: for a Last
    /// Will, which is sealed when the connection opens and published by the
    /// broker whenever it closes. The caller must tie it to something current
    /// (the session id) instead.
    pub fn open_any_age<T: DeserializeOwned>(
        &mut self,
        topic: &str,
        bytes: &[u8],
    ) -> Result<Opened<T>, EnvelopeError> {
        decode(self.authentic(topic, bytes)?)
    }

    fn authentic(&self, topic: &str, bytes: &[u8]) -> Result<Envelope, EnvelopeError> {
        let env: Envelope =
            ciborium::from_reader(bytes).map_err(|e| EnvelopeError::Malformed(e.to_string()))?;
        if env.v != PROTOCOL_VERSION {
            return Err(EnvelopeError::Version(env.v));
        }
        let key = self
            .keys
            .get(&env.from)
            .ok_or_else(|| EnvelopeError::UnknownSender(env.from.clone()))?;
        let sig: [u8; 64] = env
            .sig
            .as_slice()
            .try_into()
            .map_err(|_| EnvelopeError::BadSignature(env.from.clone()))?;
        if !key.verify(&signed_bytes(&env, topic), &sig) {
            return Err(EnvelopeError::BadSignature(env.from.clone()));
        }
        if env.to != TO_ANYONE && !self.me.contains(&env.to) {
            return Err(EnvelopeError::WrongRecipient { to: env.to });
        }
        Ok(env)
    }

    fn check(&mut self, topic: &str, bytes: &[u8]) -> Result<Envelope, EnvelopeError> {
        let env = self.authentic(topic, bytes)?;
        let now = self.clock.now_ms();
        let skew = env.ts - now;
        if skew.abs() > self.window_ms {
            return Err(EnvelopeError::Stale { skew_ms: skew });
        }
        // Forget what fell out of the window: a replay that old fails the
        // timestamp check above.
        while let Some((ts, _, _)) = self.order.front() {
            if *ts >= now - 2 * self.window_ms {
                break;
            }
            let (_, from, seq) = self.order.pop_front().expect("front exists");
            self.seen.remove(&(from, seq));
        }
        if !self.seen.insert((env.from.clone(), env.seq)) {
            return Err(EnvelopeError::Replay {
                from: env.from,
                seq: env.seq,
            });
        }
        self.order.push_back((now, env.from.clone(), env.seq));
        Ok(env)
    }
}

/// The sender id and decoded body of an envelope, unverified: for a join
/// request, which carries the key it is signed with (verify it with that key
/// before believing anything else in it).
pub fn peek<T: DeserializeOwned>(bytes: &[u8]) -> Result<(String, T), EnvelopeError> {
    let env: Envelope =
        ciborium::from_reader(bytes).map_err(|e| EnvelopeError::Malformed(e.to_string()))?;
    let body = ciborium::from_reader(env.body.as_slice()).map_err(|e| EnvelopeError::Body {
        from: env.from.clone(),
        reason: e.to_string(),
    })?;
    Ok((env.from, body))
}

/// Logs dropped messages without letting a flood of forgeries flood the log:
/// at most `burst` lines per minute, then one line counting what was suppressed.
/// That count comes out from [`DropLog::flush`], which the master's and the
/// worker's loops call on their periodic tick, so it is printed when the minute
/// ends, not only when some later drop happens to arrive.
pub struct DropLog {
    burst: u32,
    source: Arc<dyn TimeSource>,
    /// Monotonic time the current minute began.
    window_start: Duration,
    logged: u32,
    suppressed: u64,
}

const DROP_LOG_WINDOW: Duration = Duration::from_secs(60);

impl DropLog {
    pub fn new(burst: u32) -> DropLog {
        DropLog::with_source(burst, Arc::new(SystemTimeSource))
    }

    /// Counts minutes on `source`'s monotonic clock (tests inject theirs).
    pub fn with_source(burst: u32, source: Arc<dyn TimeSource>) -> DropLog {
        DropLog {
            burst,
            window_start: source.monotonic(),
            source,
            logged: 0,
            suppressed: 0,
        }
    }

    pub fn dropped(&mut self, topic: &str, reason: &dyn std::fmt::Display) {
        self.flush();
        if self.admit() {
            tracing::warn!(%topic, %reason, "dropped message");
        }
    }

    /// Ends the minute if it is over, logging how many drops it kept quiet.
    pub fn flush(&mut self) {
        if let Some(suppressed) = self.roll() {
            tracing::warn!(suppressed, "more messages dropped in the last minute");
        }
    }

    /// Starts a new minute once the current one is over; returns the count
    /// of drops suppressed in the one that ended, if any.
    fn roll(&mut self) -> Option<u64> {
        let now = self.source.monotonic();
        if now.saturating_sub(self.window_start) < DROP_LOG_WINDOW {
            return None;
        }
        self.window_start = now;
        self.logged = 0;
        Some(std::mem::take(&mut self.suppressed)).filter(|n| *n > 0)
    }

    /// Whether this drop gets a line of its own (otherwise it is counted).
    fn admit(&mut self) -> bool {
        if self.logged < self.burst {
            self.logged += 1;
            true
        } else {
            self.suppressed += 1;
            false
        }
    }
}

/// The body of an envelope already checked.
fn decode<T: DeserializeOwned>(env: Envelope) -> Result<Opened<T>, EnvelopeError> {
    let body = ciborium::from_reader(env.body.as_slice()).map_err(|e| EnvelopeError::Body {
        from: env.from.clone(),
        reason: e.to_string(),
    })?;
    Ok(Opened {
        from: env.from,
        body,
        seq: env.seq,
        ts: env.ts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (Sealer, Verifier) {
        let key = KeyPair::generate();
        let mut v = Verifier::new(&["master"], Duration::from_secs(300));
        v.trust("admin:x", key.public());
        (Sealer::new(key, "admin:x"), v)
    }

    #[test]
    fn round_trip() {
        let (s, mut v) = pair();
        let msg = s.seal("t/cmd/get", "master", &("hello", 3u32));
        let got: Opened<(String, u32)> = v.open("t/cmd/get", &msg).unwrap();
        assert_eq!(got.body, ("hello".to_string(), 3));
        assert_eq!(got.from, "admin:x");
    }

    #[test]
    fn replay_is_refused() {
        let (s, mut v) = pair();
        let msg = s.seal("t", "master", &1u8);
        v.open::<u8>("t", &msg).unwrap();
        assert!(matches!(
            v.open::<u8>("t", &msg),
            Err(EnvelopeError::Replay { .. })
        ));
    }

    #[test]
    fn other_topic_or_recipient_or_key_is_refused() {
        let (s, mut v) = pair();
        let msg = s.seal("t/a", "master", &1u8);
        assert!(matches!(
            v.open::<u8>("t/b", &msg),
            Err(EnvelopeError::BadSignature(_))
        ));
        let msg = s.seal("t/a", "node:pi1", &1u8);
        assert!(matches!(
            v.open::<u8>("t/a", &msg),
            Err(EnvelopeError::WrongRecipient { .. })
        ));
        let stranger = Sealer::new(KeyPair::generate(), "admin:x");
        let msg = stranger.seal("t/a", "master", &1u8);
        assert!(matches!(
            v.open::<u8>("t/a", &msg),
            Err(EnvelopeError::BadSignature(_))
        ));
        let unknown = Sealer::new(KeyPair::generate(), "admin:y");
        let msg = unknown.seal("t/a", "master", &1u8);
        assert!(matches!(
            v.open::<u8>("t/a", &msg),
            Err(EnvelopeError::UnknownSender(_))
        ));
        assert!(matches!(
            v.open::<u8>("t/a", b"\xff\x00garbage"),
            Err(EnvelopeError::Malformed(_))
        ));
    }

    #[test]
    fn tampered_body_is_refused() {
        let (s, mut v) = pair();
        let msg = s.seal("t", "master", &"run me");
        let mut env: Envelope = ciborium::from_reader(msg.as_slice()).unwrap();
        env.body = {
            let mut b = Vec::new();
            ciborium::into_writer(&"rm -rf", &mut b).unwrap();
            b
        };
        let mut forged = Vec::new();
        ciborium::into_writer(&env, &mut forged).unwrap();
        assert!(matches!(
            v.open::<String>("t", &forged),
            Err(EnvelopeError::BadSignature(_))
        ));
    }

    /// A clock under the test's control.
    #[derive(Default)]
    struct Manual {
        wall: std::sync::atomic::AtomicI64,
        mono_ms: AtomicU64,
    }

    impl Manual {
        fn at(wall: i64) -> Arc<Manual> {
            let m = Manual::default();
            m.wall.store(wall, Ordering::SeqCst);
            Arc::new(m)
        }
        fn pass(&self, ms: u64) {
            self.mono_ms.fetch_add(ms, Ordering::SeqCst);
            self.wall.fetch_add(ms as i64, Ordering::SeqCst);
        }
        fn step_wall(&self, ms: i64) {
            self.wall.fetch_add(ms, Ordering::SeqCst);
        }
    }

    impl TimeSource for Manual {
        fn wall_ms(&self) -> i64 {
            self.wall.load(Ordering::SeqCst)
        }
        fn monotonic(&self) -> Duration {
            Duration::from_millis(self.mono_ms.load(Ordering::SeqCst))
        }
    }

    const HOUR: i64 = 3_600_000;

    #[test]
    fn drop_log_admits_a_burst_a_minute_and_counts_the_rest() {
        let src = Manual::at(0);
        let mut log = DropLog::with_source(3, src.clone());
        let admitted: Vec<bool> = (0..5).map(|_| log.admit()).collect();
        assert_eq!(admitted, [true, true, true, false, false]);
        src.pass(59_999);
        assert_eq!(log.roll(), None, "the minute is not over");
        assert!(!log.admit());
        src.pass(1);
        assert_eq!(log.roll(), Some(3));
        assert_eq!(log.roll(), None, "counted once");
        assert!(log.admit(), "a new minute, a new burst");
        src.pass(60_000);
        assert_eq!(log.roll(), None, "nothing was suppressed");
    }

    /// The summary comes from the periodic flush, with no later drop.
    #[test]
    fn drop_log_summary_needs_no_later_drop() {
        #[derive(Clone, Default)]
        struct Lines(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Lines {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let lines = Lines::default();
        let writer = lines.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        let src = Manual::at(0);
        tracing::subscriber::with_default(subscriber, || {
            let mut log = DropLog::with_source(10, src.clone());
            for i in 0..12 {
                log.dropped("t/cmd/apply", &format!("forgery {i}"));
            }
            log.flush();
            src.pass(61_000);
            log.flush();
            log.flush();
        });
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.matches("dropped message").count(), 10, "{text}");
        assert!(!text.contains("forgery 10"), "{text}");
        assert_eq!(
            text.matches("more messages dropped in the last minute")
                .count(),
            1,
            "{text}"
        );
        assert!(text.contains("suppressed=2"), "{text}");
    }

    #[test]
    fn a_synced_clock_keeps_the_masters_time_through_wall_steps() {
        let src = Manual::at(1_000);
        let clock = Clock::with_source(src.clone());
        assert_eq!(clock.now_ms(), 1_000, "unsynced: the wall clock");
        let sent_at = clock.monotonic();
        src.pass(200);
        // The master stamped 5 h; the answer took 200 ms to come back.
        let master = 5 * HOUR;
        assert_eq!(clock.sync(master, sent_at), Some(master + 100 - 1_200));
        assert_eq!(clock.now_ms(), master + 100);
        assert_eq!(clock.offset_ms(), master + 100 - 1_200);
        src.pass(1_000);
        assert_eq!(clock.now_ms(), master + 1_100);
        // NTP steps the wall clock: the cluster time does not jump.
        src.step_wall(3 * HOUR);
        assert_eq!(clock.now_ms(), master + 1_100);
        // A clone is the same clock.
        assert_eq!(clock.clone().now_ms(), master + 1_100);
    }

    #[test]
    fn a_sample_within_the_round_trip_changes_nothing() {
        let src = Manual::at(10 * HOUR);
        let clock = Clock::with_source(src.clone());
        let sent_at = clock.monotonic();
        src.pass(300);
        // The master's stamp is 100 ms before our now and the round trip
        // 300 ms: our time fits, nothing to correct.
        assert_eq!(clock.sync(10 * HOUR + 200, sent_at), None);
        assert_eq!(clock.now_ms(), 10 * HOUR + 300);
        // A clock ahead is set back as well.
        assert_eq!(
            clock.sync(9 * HOUR, sent_at),
            Some(9 * HOUR + 150 - (10 * HOUR + 300))
        );
        assert_eq!(clock.now_ms(), 9 * HOUR + 150);
    }

    #[test]
    fn envelopes_stamped_and_checked_with_a_synced_clock() {
        let key = KeyPair::generate();
        let behind = Manual::at(now_ms() - 5 * HOUR);
        let node_clock = Clock::with_source(behind.clone());
        let sealer = Sealer::new(key.clone(), "node:pi1").with_clock(node_clock.clone());
        let mut master = Verifier::new(&["master"], Duration::from_secs(600));
        master.trust("node:pi1", key.public());
        assert!(matches!(
            master.open::<u8>("t", &sealer.seal("t", "master", &1u8)),
            Err(EnvelopeError::Stale { .. })
        ));
        // And the node, checking the master's messages with its own clock.
        let cluster = KeyPair::generate();
        let master_sealer = Sealer::new(cluster.clone(), MASTER_ID);
        let mut node =
            Verifier::new(&["node:pi1"], Duration::from_secs(600)).with_clock(node_clock.clone());
        node.trust(MASTER_ID, cluster.public());
        let from_master = master_sealer.seal("a", "node:pi1", &2u8);
        assert!(matches!(
            node.open::<u8>("a", &from_master),
            Err(EnvelopeError::Stale { .. })
        ));
        // An answer to what the node just sent: authentic, whatever its age.
        let sent_at = node_clock.monotonic();
        let answer = node.open_any_age::<u8>("a", &from_master).unwrap();
        assert!(node_clock.sync(answer.ts, sent_at).is_some());
        assert!(node_clock.offset_ms() > 4 * HOUR);
        let (seq, bytes) = sealer.seal_numbered("t", "master", &3u8);
        let opened = master.open::<u8>("t", &bytes).unwrap();
        assert_eq!((opened.body, opened.seq), (3, seq));
        assert_eq!(
            node.open::<u8>("a", &master_sealer.seal("a", "node:pi1", &4u8))
                .unwrap()
                .body,
            4
        );
    }

    #[test]
    fn stale_timestamp_is_refused() {
        let key = KeyPair::generate();
        let mut v = Verifier::new(&["master"], Duration::from_secs(60));
        v.trust("a", key.public());
        let mut env = Envelope {
            v: PROTOCOL_VERSION,
            from: "a".into(),
            to: "master".into(),
            seq: 1,
            ts: now_ms() - 3_600_000,
            body: vec![0x01],
            sig: vec![],
        };
        env.sig = key.sign(&signed_bytes(&env, "t")).to_vec();
        let mut bytes = Vec::new();
        ciborium::into_writer(&env, &mut bytes).unwrap();
        assert!(matches!(
            v.open::<u8>("t", &bytes),
            Err(EnvelopeError::Stale { .. })
        ));
    }
}
