//! What failed when the node last set up its share of Services and
//! networking (a Service port it could not bind, the cluster DNS, egress,
//! routes to other nodes), when to try again, and which failures are new.
//! Pure: the worker reports each attempt's failures and gets back the
//! Events to send (one per failure episode, not one per attempt) and the
//! time of the next attempt.
//!
//! A failure that depends on the host (a NodePort held by another process, a
//! missing `nft`, a DNS port taken) would otherwise stay until the Service
//! table changes, which on a quiet cluster is never.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;

use crate::transport::messages::EventSubject;

/// The first retry comes this soon after a failed attempt…
pub const FIRST_RETRY: Duration = Duration::from_secs(1);
/// …doubling up to this.
pub const MAX_RETRY: Duration = Duration::from_secs(30);

/// One thing that failed: about whom, why (the Event's reason), and which
/// part (an address, a rule), so that two ports of one Service are two
/// failures.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Fault {
    pub subject: EventSubject,
    pub reason: &'static str,
    pub part: String,
}

#[derive(Debug, Default)]
pub struct Faults {
    /// What failed at the last attempt.
    failing: BTreeMap<Fault, String>,
    backoff: Duration,
    retry_at: Option<Instant>,
}

impl Faults {
    /// Whether a retry is due at `now`.
    pub fn due(&self, now: Instant) -> bool {
        self.retry_at.is_some_and(|at| now >= at)
    }

    /// Whether anything failed at the last attempt.
    pub fn any(&self) -> bool {
        !self.failing.is_empty()
    }

    /// Records an attempt made at `now` that failed with `found` (fault and
    /// message; empty when all went well). Returns the failures that were not
    /// failing at the previous attempt: each deserves a Warning Event. Those
    /// still failing were reported already; those that went away end their
    /// episode, so failing again later is news again.
    pub fn after_attempt(
        &mut self,
        now: Instant,
        found: Vec<(Fault, String)>,
    ) -> Vec<(Fault, String)> {
        let new: Vec<(Fault, String)> = found
            .iter()
            .filter(|(f, _)| !self.failing.contains_key(f))
            .cloned()
            .collect();
        self.failing = found.into_iter().collect();
        if self.failing.is_empty() {
            self.backoff = Duration::ZERO;
            self.retry_at = None;
        } else {
            self.backoff = if self.backoff.is_zero() {
                FIRST_RETRY
            } else {
                (self.backoff * 2).min(MAX_RETRY)
            };
            self.retry_at = Some(now + self.backoff);
        }
        new
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(addr: &str) -> Fault {
        Fault {
            subject: EventSubject::Service {
                namespace: "default".into(),
                name: "web".into(),
            },
            reason: "FailedBindPort",
            part: addr.into(),
        }
    }

    fn dns() -> Fault {
        Fault {
            subject: EventSubject::Node,
            reason: "FailedClusterDNS",
            part: "10.96.0.10:53".into(),
        }
    }

    #[test]
    fn one_event_per_episode_and_back_off_until_it_works() {
        let t0 = Instant::now();
        let mut f = Faults::default();
        assert!(!f.due(t0) && !f.any());
        // The first failure: news, retried a second later.
        let new = f.after_attempt(t0, vec![(port("0.0.0.0:30080"), "in use".into())]);
        assert_eq!(new.len(), 1);
        assert!(!f.due(t0));
        assert!(f.due(t0 + FIRST_RETRY));
        // Still failing: no news; the wait doubles, up to the cap.
        let mut at = t0 + FIRST_RETRY;
        let mut waits = Vec::new();
        for _ in 0..7 {
            let new = f.after_attempt(at, vec![(port("0.0.0.0:30080"), "in use".into())]);
            assert!(new.is_empty());
            let mut wait = Duration::ZERO;
            while !f.due(at + wait) {
                wait += Duration::from_secs(1);
            }
            waits.push(wait.as_secs());
            at += wait;
        }
        assert_eq!(waits, [2, 4, 8, 16, 30, 30, 30]);
        // A second failure joins: only it is news.
        let new = f.after_attempt(
            at,
            vec![
                (port("0.0.0.0:30080"), "in use".into()),
                (dns(), "bind".into()),
            ],
        );
        assert_eq!(new, vec![(dns(), "bind".to_string())]);
        // All fixed: no retries; the back-off starts over next time.
        assert!(f.after_attempt(at, Vec::new()).is_empty());
        assert!(!f.any() && !f.due(at + MAX_RETRY * 10));
        // The port fails again: a new episode, news again.
        let new = f.after_attempt(at, vec![(port("0.0.0.0:30080"), "in use".into())]);
        assert_eq!(new.len(), 1);
        assert!(f.due(at + FIRST_RETRY));
    }
}
