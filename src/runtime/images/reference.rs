//! Image references normalised the way docker and containerd do it
//! (`busybox` → `docker.io/library/busybox:latest`), on top of oci-spec's
//! port of the distribution/reference grammar. Pure: no I/O.

use oci_spec::distribution::Reference;

use crate::runtime::RuntimeError;

/// A parsed, normalised image reference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImageRef {
    /// `registry/repository:tag`, possibly pinned with `@sha256:…`.
    Named {
        /// `registry/repository`, e.g. `docker.io/library/busybox`.
        name: String,
        tag: Option<String>,
        digest: Option<String>,
    },
    /// A bare manifest digest, `sha256:<64 hex>`: names an image in the local
    /// store whatever its name (or when it has none).
    Digest(String),
}

impl ImageRef {
    pub fn parse(reference: &str) -> Result<ImageRef, RuntimeError> {
        let invalid = |reason: String| RuntimeError::InvalidImageReference {
            reference: reference.to_string(),
            reason,
        };
        if let Some(hex) = reference.strip_prefix("sha256:") {
            return if is_sha256_hex(hex) {
                Ok(ImageRef::Digest(reference.to_string()))
            } else {
                Err(invalid(
                    "a bare digest must be sha256:<64 lowercase hex>".into(),
                ))
            };
        }
        let parsed = Reference::try_from(reference).map_err(|e| invalid(e.to_string()))?;
        let digest = parsed.digest().map(str::to_string);
        if let Some(d) = &digest
            && !d.strip_prefix("sha256:").is_some_and(is_sha256_hex)
        {
            return Err(invalid(format!("unsupported digest {d:?} (only sha256)")));
        }
        // `name@digest` without a tag stays tagless: the digest names the image.
        let tag = parsed.tag().map(str::to_string);
        Ok(ImageRef::Named {
            name: format!("{}/{}", parsed.registry(), parsed.repository()),
            tag,
            digest,
        })
    }

    /// The digest this reference pins, if any.
    pub fn digest(&self) -> Option<&str> {
        match self {
            ImageRef::Named { digest, .. } => digest.as_deref(),
            ImageRef::Digest(d) => Some(d),
        }
    }
}

impl std::fmt::Display for ImageRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ImageRef::Named { name, tag, digest } => {
                f.write_str(name)?;
                if let Some(t) = tag {
                    write!(f, ":{t}")?;
                }
                if let Some(d) = digest {
                    write!(f, "@{d}")?;
                }
                Ok(())
            }
            ImageRef::Digest(d) => f.write_str(d),
        }
    }
}

/// Normalises `reference` (`busybox` → `docker.io/library/busybox:latest`).
pub fn normalize(reference: &str) -> Result<String, RuntimeError> {
    Ok(ImageRef::parse(reference)?.to_string())
}

pub(crate) fn is_sha256_hex(hex: &str) -> bool {
    hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff";

    #[test]
    fn normalises_like_docker() {
        for (input, want) in [
            ("busybox", "docker.io/library/busybox:latest"),
            ("busybox:1.36", "docker.io/library/busybox:1.36"),
            ("library/busybox", "docker.io/library/busybox:latest"),
            (
                "index.docker.io/busybox",
                "docker.io/library/busybox:latest",
            ),
            ("me/app:v1", "docker.io/me/app:v1"),
            ("localhost:5000/x", "localhost:5000/x:latest"),
            ("localhost/x:2", "localhost/x:2"),
            ("reg:5000/a/b:1", "reg:5000/a/b:1"),
            ("ghcr.io/o/r", "ghcr.io/o/r:latest"),
            ("bramble.local/demo:latest", "bramble.local/demo:latest"),
        ] {
            assert_eq!(normalize(input).unwrap(), want, "{input}");
        }
    }

    #[test]
    fn digests() {
        let r = ImageRef::parse(&format!("busybox@{D}")).unwrap();
        assert_eq!(r.to_string(), format!("docker.io/library/busybox@{D}"));
        assert_eq!(r.digest(), Some(D));
        let r = ImageRef::parse(&format!("reg:5000/x:1@{D}")).unwrap();
        assert_eq!(r.to_string(), format!("reg:5000/x:1@{D}"));
        assert_eq!(ImageRef::parse(D).unwrap(), ImageRef::Digest(D.into()));
        assert!(ImageRef::parse("sha256:abc").is_err());
        assert!(ImageRef::parse(&format!("x@sha512:{}", "f".repeat(128))).is_err());
    }

    #[test]
    fn rejects_garbage() {
        for bad in ["", "Upper:tag", ":tag", "a/$$/b", "x@sha256:12"] {
            assert!(
                matches!(
                    ImageRef::parse(bad),
                    Err(RuntimeError::InvalidImageReference { .. })
                ),
                "{bad:?}"
            );
        }
    }
}
