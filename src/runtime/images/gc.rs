//! Disk-pressure garbage collection, as the kubelet does it: when the image
//! store's filesystem is at or above the high threshold, images no container
//! uses are removed, least recently used first (last pull or container
//! start), until usage is below the low threshold. An image pulled or run
//! within `min_age` is spared, so a pull is not undone before its container
//! starts. Layers a container's lease holds are never removed.
//!
//! The order and the threshold checks are pure; [`ImageStore::collect_for_disk`]
//! measures the filesystem after each removal.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::time::Duration;

use nix::fcntl::FlockArg;

use super::{ImageStore, hex_of};
use crate::runtime::RuntimeError;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GcPolicy {
    /// Collect when the filesystem is at least this full (percent).
    pub high_percent: u8,
    /// Stop once it is below this (percent).
    pub low_percent: u8,
    /// Never collect an image pulled or run more recently than this.
    pub min_age: Duration,
}

impl Default for GcPolicy {
    /// The kubelet's defaults: 85 %, 80 %, 2 minutes.
    fn default() -> Self {
        GcPolicy {
            high_percent: 85,
            low_percent: 80,
            min_age: Duration::from_secs(120),
        }
    }
}

/// A filesystem's size and what is left of it, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskUsage {
    pub total: u64,
    /// Available to unprivileged writers (as `df` counts it).
    pub available: u64,
}

impl DiskUsage {
    pub fn of(path: &Path) -> Result<DiskUsage, RuntimeError> {
        let st = nix::sys::statvfs::statvfs(path).map_err(|e| RuntimeError::Io {
            context: format!("statvfs {}", path.display()),
            source: e.into(),
        })?;
        // The counters are 32-bit on armv7: widen before multiplying.
        let frag = (st.fragment_size() as u64).max(1);
        Ok(DiskUsage {
            total: st.blocks() as u64 * frag,
            available: st.blocks_available() as u64 * frag,
        })
    }

    /// Whether usage (`total - available`) is at least `percent` of `total`.
    pub fn at_least(&self, percent: u8) -> bool {
        let used = self.total.saturating_sub(self.available) as u128;
        self.total > 0 && used * 100 >= self.total as u128 * u128::from(percent)
    }
}

/// One image as garbage collection sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageUse {
    pub manifest_digest: String,
    pub references: Vec<String>,
    /// Unix ms of the last pull or container start.
    pub last_used: i64,
    /// A container (running or stopped) holds its layers.
    pub in_use: bool,
}

/// The images that may go, in the order they should: unused, older than
/// `min_age`, least recently used first.
pub fn collection_order(images: &[ImageUse], now_ms: i64, min_age: Duration) -> Vec<&ImageUse> {
    let min_age = min_age.as_millis() as i64;
    let mut out: Vec<&ImageUse> = images
        .iter()
        .filter(|i| !i.in_use && now_ms - i.last_used >= min_age)
        .collect();
    out.sort_by(|a, b| (a.last_used, &a.manifest_digest).cmp(&(b.last_used, &b.manifest_digest)));
    out
}

impl ImageStore {
    /// Every stored image with its references, last use and whether a lease holds it.
    pub fn image_uses(&self) -> Result<Vec<ImageUse>, RuntimeError> {
        let mut by_digest: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (reference, digest) in self.refs()? {
            by_digest.entry(digest).or_default().push(reference);
        }
        let (leased, legacy) = self.leased()?;
        let mut out = Vec::new();
        for (digest, mut references) in by_digest {
            references.sort();
            let layers: HashSet<String> = self
                .manifest(&digest)
                .ok()
                .and_then(|m| self.config_of(&m).ok())
                .map(|c| {
                    c.rootfs()
                        .diff_ids()
                        .iter()
                        .map(|d| hex_of(d).to_string())
                        .collect()
                })
                .unwrap_or_default();
            let in_use = leased.contains(&digest)
                || legacy.iter().any(|held| {
                    let held: HashSet<&str> = held.iter().map(|d| hex_of(d)).collect();
                    !layers.is_empty() && layers.iter().all(|l| held.contains(l.as_str()))
                });
            out.push(ImageUse {
                last_used: self.last_used(&digest),
                manifest_digest: digest,
                references,
                in_use,
            });
        }
        Ok(out)
    }

    /// Collects unused images, least recently used first, while the store's
    /// filesystem is at least `policy.high_percent` full and until it is
    /// below `policy.low_percent`. Returns the references removed.
    pub fn collect_for_disk(&self, policy: &GcPolicy) -> Result<Vec<String>, RuntimeError> {
        if !DiskUsage::of(self.root())?.at_least(policy.high_percent) {
            return Ok(Vec::new());
        }
        let _lock = self.lock(FlockArg::LockExclusive)?;
        // Debris first (interrupted imports, stale downloads): it may be enough.
        self.collect_locked()?;
        let mut removed = Vec::new();
        if !DiskUsage::of(self.root())?.at_least(policy.low_percent) {
            return Ok(removed);
        }
        let images = self.image_uses()?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        for image in collection_order(&images, now, policy.min_age) {
            for r in &image.references {
                let path = self.ref_path(r)?;
                match std::fs::remove_file(&path) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        return Err(RuntimeError::Io {
                            context: format!("removing {}", path.display()),
                            source: e,
                        });
                    }
                    _ => removed.push(r.clone()),
                }
            }
            self.collect_locked()?;
            tracing::info!(
                image = %image.references.join(", "),
                digest = %image.manifest_digest,
                "image collected to free disk space"
            );
            if !DiskUsage::of(self.root())?.at_least(policy.low_percent) {
                break;
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img(d: &str, last_used: i64, in_use: bool) -> ImageUse {
        ImageUse {
            manifest_digest: d.into(),
            references: vec![format!("r/{d}")],
            last_used,
            in_use,
        }
    }

    #[test]
    fn least_recently_used_unused_first() {
        let images = vec![
            img("a", 5_000, false),
            img("b", 1_000, false),
            img("c", 500, true),
            img("d", 990_000, false),
            img("e", 1_000, false),
        ];
        let order: Vec<&str> = collection_order(&images, 1_000_000, Duration::from_secs(60))
            .iter()
            .map(|i| i.manifest_digest.as_str())
            .collect();
        // c is in use; d was used 10 s ago (under the minimum age).
        assert_eq!(order, vec!["b", "e", "a"]);
    }

    #[test]
    fn thresholds() {
        let u = DiskUsage {
            total: 1000,
            available: 150,
        };
        assert!(u.at_least(85));
        assert!(!u.at_least(86));
        assert!(u.at_least(80));
        let empty = DiskUsage {
            total: 0,
            available: 0,
        };
        assert!(!empty.at_least(0));
        assert_eq!(GcPolicy::default().high_percent, 85);
        assert_eq!(GcPolicy::default().low_percent, 80);
    }
}
