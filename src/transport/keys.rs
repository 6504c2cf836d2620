//! ed25519 keys: generation, files on disk, fingerprints.
//!
//! A key file holds the 32-byte secret seed in hex on one line, mode 0600. A
//! public key travels as 64 hex characters; its fingerprint (the first 16 bytes
//! of its SHA-256, hex) is what a join token pins.

use std::fmt;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier as _, VerifyingKey};
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    #[error("key file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("key file {path}: not a hex-encoded 32-byte ed25519 seed")]
    BadFile { path: PathBuf },
    #[error("public key {0:?}: not 64 hex characters of a valid ed25519 key")]
    BadPublic(String),
}

/// A signing key pair.
#[derive(Clone)]
pub struct KeyPair {
    signing: SigningKey,
}

impl fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyPair({})", self.public())
    }
}

impl KeyPair {
    pub fn generate() -> KeyPair {
        let seed: [u8; 32] = rand::random();
        KeyPair {
            signing: SigningKey::from_bytes(&seed),
        }
    }

    pub fn public(&self) -> PublicKey {
        PublicKey(self.signing.verifying_key())
    }

    /// A 32-byte key for `purpose`, derived from this key pair's secret
    /// (SHA-256 over a domain string and the seed): the cluster key seals
    /// Secrets at rest with `derive_key("secrets-at-rest")`.
    pub fn derive_key(&self, purpose: &str) -> [u8; 32] {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update(b"bramble/v1/derive\0");
        h.update(purpose.as_bytes());
        h.update(b"\0");
        h.update(self.signing.to_bytes());
        h.finalize().into()
    }

    /// The X25519 secret of this key (the scalar half of the seed's SHA-512,
    /// unclamped: X25519 clamps it), so what was sealed to
    /// [`PublicKey::x25519`] opens with the same key pair (`transport::seal`).
    pub(crate) fn x25519_secret(&self) -> [u8; 32] {
        self.signing.to_scalar_bytes()
    }

    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.signing.sign(message).to_bytes()
    }

    pub fn load(path: &Path) -> Result<KeyPair, KeyError> {
        let text = fs::read_to_string(path).map_err(|source| KeyError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let bytes = hex::decode(text.trim()).map_err(|_| KeyError::BadFile {
            path: path.to_path_buf(),
        })?;
        let seed: [u8; 32] = bytes.try_into().map_err(|_| KeyError::BadFile {
            path: path.to_path_buf(),
        })?;
        Ok(KeyPair {
            signing: SigningKey::from_bytes(&seed),
        })
    }

    /// Writes the key with mode 0600, atomically (temp file + rename), so a crash
    /// never leaves a half-written key behind.
    pub fn save(&self, path: &Path) -> Result<(), KeyError> {
        let io = |source| KeyError::Io {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(io)?;
        }
        let tmp = path.with_extension("tmp");
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io)?;
        f.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(io)?;
        writeln!(f, "{}", hex::encode(self.signing.to_bytes())).map_err(io)?;
        f.sync_all().map_err(io)?;
        fs::rename(&tmp, path).map_err(io)
    }

    /// Loads the key at `path`, creating it first if there is none. Returns
    /// whether it was created.
    pub fn load_or_create(path: &Path) -> Result<(KeyPair, bool), KeyError> {
        if path.exists() {
            return Ok((KeyPair::load(path)?, false));
        }
        let key = KeyPair::generate();
        key.save(path)?;
        Ok((key, true))
    }
}

/// A verifying key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey(VerifyingKey);

impl PublicKey {
    pub fn verify(&self, message: &[u8], signature: &[u8; 64]) -> bool {
        let sig = Signature::from_bytes(signature);
        self.0.verify(message, &sig).is_ok()
    }

    /// The X25519 (Montgomery) form of this key: the birational map of the
    /// Edwards point, as libsodium's `crypto_sign_ed25519_pk_to_curve25519`.
    pub(crate) fn x25519(&self) -> [u8; 32] {
        self.0.to_montgomery().to_bytes()
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0.to_bytes())
    }

    /// First 16 bytes of the SHA-256 of the key, hex: short enough for a token,
    /// long enough that nobody forges a key to match it.
    pub fn fingerprint(&self) -> String {
        hex::encode(&Sha256::digest(self.0.to_bytes())[..16])
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.fingerprint())
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl FromStr for PublicKey {
    type Err = KeyError;

    fn from_str(s: &str) -> Result<PublicKey, KeyError> {
        let bad = || KeyError::BadPublic(s.to_string());
        let bytes: [u8; 32] = hex::decode(s.trim())
            .map_err(|_| bad())?
            .try_into()
            .map_err(|_| bad())?;
        VerifyingKey::from_bytes(&bytes)
            .map(PublicKey)
            .map_err(|_| bad())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_load_sign_verify() {
        let dir = std::env::temp_dir().join(format!("bramble-keys-{}", std::process::id()));
        let path = dir.join("k.key");
        let (k, created) = KeyPair::load_or_create(&path).unwrap();
        assert!(created);
        let (k2, created) = KeyPair::load_or_create(&path).unwrap();
        assert!(!created);
        assert_eq!(k.public(), k2.public());
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let sig = k.sign(b"hello");
        assert!(k2.public().verify(b"hello", &sig));
        assert!(!k2.public().verify(b"hellO", &sig));
        let parsed: PublicKey = k.public().to_hex().parse().unwrap();
        assert_eq!(parsed, k.public());
        assert!("zz".parse::<PublicKey>().is_err());
        fs::remove_dir_all(dir).unwrap();
    }
}
