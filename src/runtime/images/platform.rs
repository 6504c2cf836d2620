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

    /// containerd's normalisation: GNU/Debian arch names to GOARCH, and the
    /// implied default variants (arm64 → v8, arm → v7) made explicit.
    fn normalized(mut self) -> Platform {
        self.os = self.os.to_lowercase();
        let (arch, implied_variant) = match self.architecture.to_lowercase().as_str() {
            "x86_64" | "x86-64" | "amd64" => ("amd64".to_string(), None),
            "aarch64" | "arm64" => ("arm64".to_string(), Some("v8")),
            "armhf" => ("arm".to_string(), Some("v7")),
            "armel" => ("arm".to_string(), Some("v6")),
            "arm" => ("arm".to_string(), Some("v7")),
            "i386" | "i686" | "386" => ("386".to_string(), None),
            other => (other.to_string(), None),
        };
        self.architecture = arch;
        let variant = self.variant.take().filter(|v| !v.is_empty());
        self.variant = match (self.architecture.as_str(), variant) {
            ("amd64", Some(v)) if v == "v1" => None,
            (_, Some(v)) => Some(v.to_lowercase()),
            (_, None) => implied_variant.map(str::to_string),
        };
        self
    }

    /// How well an image for `self` runs on `node`: `None` when it cannot,
    /// lower is better. arm/v7 nodes also run v6 and v5 images (less
    /// preferred); amd64 nodes run only baseline (v1) images.
    pub fn rank_on(&self, node: &Platform) -> Option<u32> {
        let (image, node) = (self.clone().normalized(), node.clone().normalized());
        if image.os != node.os || image.architecture != node.architecture {
            return None;
        }
        if image.variant == node.variant {
            return Some(0);
        }
        if image.architecture == "arm" {
            let level = |v: &Option<String>| {
                v.as_deref()
                    .and_then(|v| v.strip_prefix('v'))
                    .and_then(|n| n.parse::<u32>().ok())
            };
            if let (Some(i), Some(n)) = (level(&image.variant), level(&node.variant))
                && i <= n
            {
                return Some(n - i);
            }
        }
        None
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
        assert!(Platform::parse("linux").is_none());
        let host = Platform::host();
        assert_eq!(host.rank_on(&host), Some(0));
    }
}
