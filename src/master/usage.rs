//! Resource use of pods, as their nodes measure it: kept in memory only (it
//! changes with every heartbeat and is worth nothing after a restart), and
//! turned from cumulative CPU time into a rate between two samples.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::master::controllers::PodUsage;
use crate::transport::messages::ContainerUsage;

/// Samples older than this are not used for a rate (the container may have
/// restarted in between).
const MAX_INTERVAL_MS: i64 = 120_000;

#[derive(Default)]
pub struct Usage {
    /// (pod uid, container) → last sample.
    last: HashMap<(String, String), ContainerUsage>,
    /// Pod uid → what it uses now.
    pods: HashMap<String, PodUsage>,
    /// Node → the pod uids it reported usage for.
    by_node: HashMap<String, HashSet<String>>,
}

impl Usage {
    /// Folds one pod's containers' samples in.
    pub fn record(&mut self, pod_uid: &str, samples: &[ContainerUsage]) {
        if samples.is_empty() {
            return;
        }
        let mut containers = BTreeMap::new();
        for s in samples {
            let key = (pod_uid.to_string(), s.container.clone());
            let cpu = match self.last.get(&key) {
                Some(prev)
                    if s.at_ms > prev.at_ms
                        && s.at_ms - prev.at_ms <= MAX_INTERVAL_MS
                        && s.cpu_nanos >= prev.cpu_nanos =>
                {
                    // ns over ms → millicores: ns / (ms × 1000).
                    ((s.cpu_nanos - prev.cpu_nanos) / ((s.at_ms - prev.at_ms) as u64 * 1000)) as i64
                }
                _ => {
                    self.last.insert(key, s.clone());
                    continue;
                }
            };
            self.last.insert(key, s.clone());
            containers.insert(s.container.clone(), (cpu, s.memory_bytes as i64));
        }
        if containers.is_empty() {
            return;
        }
        let at = samples
            .iter()
            .map(|s| s.at_ms)
            .max()
            .and_then(|ms| jiff::Timestamp::from_millisecond(ms).ok())
            .unwrap_or_else(jiff::Timestamp::now);
        self.pods.insert(
            pod_uid.to_string(),
            PodUsage {
                cpu_millis: containers.values().map(|c| c.0).sum(),
                memory_bytes: containers.values().map(|c| c.1).sum(),
                containers,
                at,
            },
        );
    }

    /// Forgets pods a node no longer reports.
    pub fn forget_missing(&mut self, node: &str, live: &HashSet<&str>) {
        let known = self.by_node.entry(node.to_string()).or_default();
        for uid in known.iter().filter(|u| !live.contains(u.as_str())) {
            self.pods.remove(uid);
            self.last.retain(|(p, _), _| p != uid);
        }
        *known = live.iter().map(|s| s.to_string()).collect();
    }

    pub fn pods(&self) -> HashMap<String, PodUsage> {
        self.pods.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(c: &str, cpu_ms: u64, mem: u64, at_ms: i64) -> ContainerUsage {
        ContainerUsage {
            container: c.into(),
            cpu_nanos: cpu_ms * 1_000_000,
            memory_bytes: mem,
            at_ms,
        }
    }

    #[test]
    fn two_samples_make_a_rate() {
        let mut u = Usage::default();
        u.record("p", &[sample("a", 1000, 10, 1_000_000)]);
        assert!(u.pods().is_empty(), "one sample is no rate");
        // 2500 ms of CPU over 5 s: half a core.
        u.record("p", &[sample("a", 3500, 20, 1_005_000)]);
        let p = &u.pods()["p"];
        assert_eq!((p.cpu_millis, p.memory_bytes), (500, 20));
        u.forget_missing("n1", &HashSet::from(["p"]));
        u.forget_missing("n1", &HashSet::new());
        assert!(u.pods().is_empty());
    }
}
