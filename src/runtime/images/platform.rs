//! Which manifest of a multi-platform image a node runs. Pure: the node's
//! platform is an argument, so arm64 and arm/v7 selection is tested anywhere.

use std::fmt;

/// An OCI platform as GOOS/GOARCH/variant strings (`linux/arm/v7`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    pub fn new(os: &str, architecture: &str, variant: Option<&str>) -> Platform {
        Platform {
            os: os.to_string(),
            architecture: architecture.to_string(),
            variant: variant.map(str::to_string),
        }
        .normalized()
    }

    /// The platform this binary was built for, in GOARCH terms. A 32-bit
    /// Raspberry Pi OS userland is `arm` (built as armv7), even on a 64-bit kernel.
    pub fn host() -> Platform {
        let (arch, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "aarch64" => ("arm64", Some("v8")),
            "arm" => ("arm", Some("v7")),
            "x86" => ("386", None),
            "riscv64" => ("riscv64", None),
            "powerpc64" => ("ppc64le", None),
            "s390x" => ("s390x", None),
            other => (other, None),
        };
        Platform::new(std::env::consts::OS, arch, variant)
    }

    /// Parses `os/arch[/variant]`.
    pub fn parse(s: &str) -> Option<Platform> {
        let mut parts = s.split('/');
        let os = parts.next().filter(|p| !p.is_empty())?;
        let arch = parts.next().filter(|p| !p.is_empty())?;
        let variant = parts.next();
        if parts.next().is_some() {
            return None;
        }
        Some(Platform::new(os, arch, variant))
    }

    /// containerd's normalisation (`normalizeArch`): GNU/Debian arch names
    /// to GOARCH, and the implied default variants (arm64 → v8, arm → v7)
    /// made explicit (containerd writes arm64's v8 as no variant: the same
    /// matches either way).
    fn normalized(mut self) -> Platform {
        self.os = self.os.to_lowercase();
        let arch = self.architecture.to_lowercase();
        let variant = self
            .variant
            .take()
            .map(|v| v.to_lowercase())
            .filter(|v| !v.is_empty());
        let (arch, variant) = match (arch.as_str(), variant.as_deref()) {
            ("i386" | "i686" | "386", _) => ("386", None),
            ("x86_64" | "x86-64" | "amd64", Some("v1")) => ("amd64", None),
            ("x86_64" | "x86-64" | "amd64", v) => ("amd64", v.map(str::to_string)),
            ("aarch64" | "arm64", None | Some("8" | "v8" | "v8.0")) => {
                ("arm64", Some("v8".to_string()))
            }
            ("aarch64" | "arm64", Some("9" | "9.0" | "v9.0")) => ("arm64", Some("v9".to_string())),
            ("aarch64" | "arm64", v) => ("arm64", v.map(str::to_string)),
            ("armhf", _) => ("arm", Some("v7".to_string())),
            ("armel", _) => ("arm", Some("v6".to_string())),
            ("arm", None | Some("7")) => ("arm", Some("v7".to_string())),
            ("arm", Some(v @ ("5" | "6" | "8"))) => ("arm", Some(format!("v{v}"))),
            (other, v) => (other, v.map(str::to_string)),
        };
        self.architecture = arch.to_string();
        self.variant = variant;
        self
    }

    /// What a node of this platform runs, best first: containerd's
    /// `platforms.Only` (its `platformVector`). amd64/vN also runs
    /// amd64/v(N-1)…v1, and every amd64 runs 386 last; arm/vN runs
    /// arm/v(N-1)…v5; arm64/v8.x runs arm64/v8.(x-1)…v8, arm64/v9.x runs
    /// arm64/v9.(x-1)…v9 then v8.(x+5)…v8; after its own, every arm64 runs
    /// arm/v8, v7, v6, v5. An arm64 variant containerd does not know runs
    /// only itself (containerd's vector is empty there).
    pub fn runs(&self) -> Vec<Platform> {
        let node = self.clone().normalized();
        let with = |arch: &str, variant: Option<String>| {
            Platform {
                os: node.os.clone(),
                architecture: arch.to_string(),
                variant,
            }
            .normalized()
        };
        let version = |prefix: &str| {
            node.variant
                .as_deref()
                .and_then(|v| v.strip_prefix(prefix))
                .and_then(|n| n.parse::<u32>().ok())
        };
        match node.architecture.as_str() {
            "amd64" => {
                let mut out = vec![node.clone()];
                if let Some(n) = version("v").filter(|n| *n > 1) {
                    out.extend((1..n).rev().map(|v| with("amd64", Some(format!("v{v}")))));
                }
                out.push(with("386", None));
                out
            }
            "arm" => {
                let mut out = vec![node.clone()];
                if let Some(n) = version("v").filter(|n| *n > 5) {
                    out.extend((5..n).rev().map(|v| with("arm", Some(format!("v{v}")))));
                }
                out
            }
            "arm64" => {
                let Some(levels) = arm64_levels(node.variant.as_deref().unwrap_or("v8")) else {
                    return vec![node];
                };
                let mut out = Vec::new();
                for (major, minor) in levels {
                    for m in (0..=minor).rev() {
                        let v = match m {
                            0 => format!("v{major}"),
                            m => format!("v{major}.{m}"),
                        };
                        out.push(with("arm64", Some(v)));
                    }
                }
                out.extend((5..=8).rev().map(|v| with("arm", Some(format!("v{v}")))));
                out
            }
            _ => vec![node],
        }
    }

    /// How well an image for `self` runs on `node`: `None` when it cannot,
    /// lower is better (its place in [`runs`](Platform::runs)).
    pub fn rank_on(&self, node: &Platform) -> Option<u32> {
        let image = self.clone().normalized();
        node.runs()
            .iter()
            .position(|p| *p == image)
            .and_then(|i| u32::try_from(i).ok())
    }
}

/// containerd's `arm64variantToVersion`: for arm64/vM.m, the
/// `(major, newest minor)` levels it runs, newest first.
fn arm64_levels(variant: &str) -> Option<Vec<(u32, u32)>> {
    let v = variant.strip_prefix('v')?;
    let (major, minor) = match v.split_once('.') {
        Some((major, minor)) => (major.parse::<u32>().ok()?, minor.parse::<u32>().ok()?),
        None => (v.parse::<u32>().ok()?, 0),
    };
    match (major, minor) {
        (8, 0..=9) => Some(vec![(8, minor)]),
        (9, 0..=7) => Some(vec![(9, minor), (8, (minor + 5).min(9))]),
        _ => None,
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// Picks the best candidate for `node` among an index's manifests (`None`
/// entries carry no platform and never match). Ties go to the first listed.
pub fn select_platform(candidates: &[Option<Platform>], node: &Platform) -> Option<usize> {
    candidates
        .iter()
        .enumerate()
        .filter_map(|(i, p)| Some((p.as_ref()?.rank_on(node)?, i)))
        .min()
        .map(|(_, i)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Option<Platform> {
        Some(Platform::parse(s).unwrap())
    }

    fn index() -> Vec<Option<Platform>> {
        vec![
            p("linux/amd64"),
            p("linux/arm/v6"),
            p("linux/arm/v7"),
            p("linux/arm64/v8"),
            p("unknown/unknown"),
            None,
        ]
    }

    #[test]
    fn picks_each_node_platform() {
        let idx = index();
        let pick = |node: &str| select_platform(&idx, &Platform::parse(node).unwrap());
        assert_eq!(pick("linux/amd64"), Some(0));
        assert_eq!(pick("linux/arm64"), Some(3));
        assert_eq!(pick("linux/arm/v7"), Some(2));
        assert_eq!(pick("linux/arm/v6"), Some(1));
        assert_eq!(pick("linux/arm/v5"), None);
        assert_eq!(pick("linux/riscv64"), None);
        assert_eq!(pick("windows/amd64"), None);
    }

    #[test]
    fn arm_v7_falls_back_to_v6_and_arm64_accepts_no_variant() {
        let idx = vec![p("linux/arm/v6"), p("linux/arm64")];
        assert_eq!(
            select_platform(&idx, &Platform::parse("linux/arm/v7").unwrap()),
            Some(0)
        );
        assert_eq!(
            select_platform(&idx, &Platform::parse("linux/arm64/v8").unwrap()),
            Some(1)
        );
        // A v8 image never runs on a 32-bit arm node.
        let idx = vec![p("linux/arm/v8")];
        assert_eq!(
            select_platform(&idx, &Platform::parse("linux/arm/v7").unwrap()),
            None
        );
    }

    fn pick(candidates: &[&str], node: &str) -> Option<usize> {
        let c: Vec<Option<Platform>> = candidates.iter().map(|s| p(s)).collect();
        select_platform(&c, &Platform::parse(node).unwrap())
    }

    #[test]
    fn other_architectures_the_node_runs_as_containerd() {
        // A 64-bit Pi runs 32-bit arm images, but prefers its own.
        assert_eq!(pick(&["linux/arm/v7"], "linux/arm64"), Some(0));
        assert_eq!(
            pick(&["linux/arm/v7", "linux/arm64"], "linux/arm64"),
            Some(1)
        );
        assert_eq!(
            pick(&["linux/arm/v5", "linux/arm/v8"], "linux/arm64"),
            Some(1)
        );
        assert_eq!(
            pick(&["linux/arm/v6", "linux/arm/v7"], "linux/arm64/v8"),
            Some(1)
        );
        // amd64 runs 386, after any amd64.
        assert_eq!(pick(&["linux/386"], "linux/amd64"), Some(0));
        assert_eq!(pick(&["linux/386", "linux/amd64"], "linux/amd64"), Some(1));
        // arm/v7 runs v6 and v5, preferring v6; never v8.
        assert_eq!(
            pick(&["linux/arm/v5", "linux/arm/v6"], "linux/arm/v7"),
            Some(1)
        );
        assert_eq!(pick(&["linux/arm/v5"], "linux/arm/v7"), Some(0));
        assert_eq!(pick(&["linux/arm/v8"], "linux/arm/v7"), None);
        // Never across to another family or OS.
        assert_eq!(pick(&["linux/arm64"], "linux/arm/v7"), None);
        assert_eq!(pick(&["linux/amd64"], "linux/386"), None);
        assert_eq!(pick(&["linux/arm/v7"], "linux/amd64"), None);
        assert_eq!(pick(&["windows/arm64"], "linux/arm64"), None);
    }

    #[test]
    fn the_vectors_are_containerds() {
        let runs = |node: &str| -> Vec<String> {
            Platform::parse(node)
                .unwrap()
                .runs()
                .iter()
                .map(ToString::to_string)
                .collect()
        };
        assert_eq!(runs("linux/amd64"), ["linux/amd64", "linux/386"]);
        assert_eq!(
            runs("linux/amd64/v3"),
            [
                "linux/amd64/v3",
                "linux/amd64/v2",
                "linux/amd64",
                "linux/386"
            ]
        );
        assert_eq!(
            runs("linux/arm64"),
            [
                "linux/arm64/v8",
                "linux/arm/v8",
                "linux/arm/v7",
                "linux/arm/v6",
                "linux/arm/v5"
            ]
        );
        assert_eq!(
            runs("linux/arm64/v8.2"),
            [
                "linux/arm64/v8.2",
                "linux/arm64/v8.1",
                "linux/arm64/v8",
                "linux/arm/v8",
                "linux/arm/v7",
                "linux/arm/v6",
                "linux/arm/v5"
            ]
        );
        let v9_1 = runs("linux/arm64/v9.1");
        assert_eq!(
            v9_1[..4],
            [
                "linux/arm64/v9.1",
                "linux/arm64/v9",
                "linux/arm64/v8.6",
                "linux/arm64/v8.5"
            ]
        );
        assert_eq!(v9_1.len(), 2 + 7 + 4);
        assert_eq!(runs("linux/arm/v6"), ["linux/arm/v6", "linux/arm/v5"]);
        assert_eq!(runs("linux/arm/v5"), ["linux/arm/v5"]);
        assert_eq!(runs("linux/arm64/v10"), ["linux/arm64/v10"]);
        assert_eq!(runs("linux/riscv64"), ["linux/riscv64"]);
        // An amd64 node does not run a v2 image: only baseline ones.
        assert_eq!(pick(&["linux/amd64/v2"], "linux/amd64"), None);
        assert_eq!(
            pick(&["linux/amd64/v2", "linux/amd64"], "linux/amd64/v3"),
            Some(0)
        );
    }

    #[test]
    fn normalises_names() {
        assert_eq!(
            Platform::new("linux", "aarch64", None),
            Platform::parse("linux/arm64/v8").unwrap()
        );
        assert_eq!(
            Platform::new("linux", "x86_64", Some("v1")).to_string(),
            "linux/amd64"
        );
        assert_eq!(
            Platform::new("linux", "armhf", None).to_string(),
            "linux/arm/v7"
        );
        assert_eq!(
            Platform::new("linux", "arm", Some("6")).to_string(),
            "linux/arm/v6"
        );
        assert_eq!(
            Platform::new("linux", "arm64", Some("v8.0")).to_string(),
            "linux/arm64/v8"
        );
        assert_eq!(
            Platform::new("linux", "i686", None).to_string(),
            "linux/386"
        );
        assert!(Platform::parse("linux").is_none());
        let host = Platform::host();
        assert_eq!(host.rank_on(&host), Some(0));
    }
}
