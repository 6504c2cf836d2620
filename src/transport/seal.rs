//! Sealing to one node: bytes that only that node's key opens.
//!
//! The broker is untrusted and every client of it may subscribe to
//! `node/+/assign`, so the Secrets of an assignment travel sealed to the
//! node's own key. The node's ed25519 key doubles as an X25519 key through
//! the birational map (Montgomery form of the public point; the clamped
//! SHA-512 scalar of the seed), as libsodium's `crypto_sign_ed25519_*_to_curve25519`
//! and age's ssh-ed25519 recipients do, so joining needs no second key.
//!
//! One seal: a fresh ephemeral X25519 key; the shared point with the
//! recipient; HKDF-SHA256 (salt = ephemeral ‖ recipient, info = domain ‖
//! context) gives an XChaCha20-Poly1305 key; a random nonce; the context is
//! also the associated data. The context names what the bytes are for (for
//! an assignment: the node and the generation), so sealed bytes cannot be
//! moved to another node's or an older assignment.
//!
//! Owns: the seal and its context for assignments. Must not touch: the
//! envelope (which authenticates the sender; a seal only hides the content)
//! or key files.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use curve25519_dalek::montgomery::MontgomeryPoint;
use hkdf::Hkdf;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use super::keys::{KeyPair, PublicKey};
use super::messages::Assignment;
use crate::api::Secret;

const DOMAIN: &[u8] = b"bramble/v1/seal\0";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum SealError {
    /// A recipient key of small order: the shared secret would be known to all.
    #[error("public key {0} is of small order; nothing can be sealed to it")]
    WeakKey(String),
    /// Wrong key, wrong context (another node, another generation) or
    /// tampered bytes: deliberately one error.
    #[error("sealed {what} do not open with this node's key for {context}")]
    Open { what: &'static str, context: String },
    #[error("sealed {what} open to something that does not decode: {reason}")]
    Body { what: &'static str, reason: String },
}

/// Sealed bytes, as they travel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sealed {
    /// The sender's one-time X25519 public key.
    #[serde(with = "serde_bytes")]
    pub ephemeral: [u8; 32],
    #[serde(with = "serde_bytes")]
    pub nonce: [u8; 24],
    /// Ciphertext and Poly1305 tag.
    #[serde(with = "serde_bytes")]
    pub ciphertext: Vec<u8>,
}

fn cipher(
    shared: &[u8; 32],
    ephemeral: &[u8; 32],
    recipient: &[u8; 32],
    context: &[u8],
) -> XChaCha20Poly1305 {
    let mut salt = [0u8; 64];
    salt[..32].copy_from_slice(ephemeral);
    salt[32..].copy_from_slice(recipient);
    let mut key = [0u8; 32];
    Hkdf::<Sha256>::new(Some(&salt), shared)
        .expand_multi_info(&[DOMAIN, context], &mut key)
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    XChaCha20Poly1305::new(&Key::from(key))
}

/// Seals `plaintext` so that only the holder of `to`'s secret key opens it,
/// and only with the same `context`.
pub fn seal(to: &PublicKey, context: &[u8], plaintext: &[u8]) -> Result<Sealed, SealError> {
    let recipient = to.x25519();
    let secret: [u8; 32] = rand::random();
    let ephemeral = MontgomeryPoint::mul_base_clamped(secret).to_bytes();
    let shared = MontgomeryPoint(recipient).mul_clamped(secret).to_bytes();
    // A small-order point makes the shared secret all zeros whatever our
    // scalar: anyone could compute it.
    if shared == [0u8; 32] {
        return Err(SealError::WeakKey(to.to_hex()));
    }
    let nonce: [u8; 24] = rand::random();
    let ciphertext = cipher(&shared, &ephemeral, &recipient, context)
        .encrypt(
            &XNonce::from(nonce),
            Payload {
                msg: plaintext,
                aad: context,
            },
        )
        .expect("XChaCha20-Poly1305 encryption of an in-memory buffer cannot fail");
    Ok(Sealed {
        ephemeral,
        nonce,
        ciphertext,
    })
}

/// Opens what [`seal`] sealed to `key`'s public key with `context`; `None`
/// for any other key, context or a tampered seal.
pub fn open(key: &KeyPair, context: &[u8], sealed: &Sealed) -> Option<Vec<u8>> {
    let recipient = key.public().x25519();
    let shared = MontgomeryPoint(sealed.ephemeral)
        .mul_clamped(key.x25519_secret())
        .to_bytes();
    if shared == [0u8; 32] {
        return None;
    }
    cipher(&shared, &sealed.ephemeral, &recipient, context)
        .decrypt(
            &XNonce::from(sealed.nonce),
            Payload {
                msg: &sealed.ciphertext,
                aad: context,
            },
        )
        .ok()
}

/// The context an assignment's Secrets are sealed under: its node and
/// generation (node names are DNS labels, so the NUL separates).
pub fn assignment_context(node: &str, generation: u64) -> Vec<u8> {
    let mut c = Vec::with_capacity(node.len() + 32);
    c.extend_from_slice(b"assignment-secrets\0");
    c.extend_from_slice(node.as_bytes());
    c.push(0);
    c.extend_from_slice(&generation.to_be_bytes());
    c
}

/// Master side: moves `a.secrets` into `a.sealed_secrets`, sealed to the
/// node's key `to` (nothing to seal leaves `None`). `secrets` never travels.
pub fn seal_secrets(a: &mut Assignment, to: &PublicKey) -> Result<(), SealError> {
    let secrets = std::mem::take(&mut a.secrets);
    a.sealed_secrets = if secrets.is_empty() {
        None
    } else {
        let mut bytes = Vec::new();
        ciborium::into_writer(&secrets, &mut bytes).expect("CBOR into a Vec cannot fail");
        Some(seal(
            to,
            &assignment_context(&a.node, a.generation),
            &bytes,
        )?)
    };
    Ok(())
}

/// Worker side: fills `a.secrets` from `a.sealed_secrets` (kept, so the
/// assignment can be stored as it came, sealed).
pub fn open_secrets(a: &mut Assignment, key: &KeyPair) -> Result<(), SealError> {
    const WHAT: &str = "Secrets of the assignment";
    let Some(sealed) = &a.sealed_secrets else {
        a.secrets = Vec::new();
        return Ok(());
    };
    let bytes = open(key, &assignment_context(&a.node, a.generation), sealed).ok_or_else(|| {
        SealError::Open {
            what: WHAT,
            context: format!("node {} generation {}", a.node, a.generation),
        }
    })?;
    a.secrets =
        ciborium::from_reader::<Vec<Secret>, _>(bytes.as_slice()).map_err(|e| SealError::Body {
            what: WHAT,
            reason: e.to_string(),
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(name: &str, value: &[u8]) -> Secret {
        Secret {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                ..Default::default()
            },
            data: Some(
                [(
                    "password".to_string(),
                    k8s_openapi::ByteString(value.to_vec()),
                )]
                .into(),
            ),
            ..Default::default()
        }
    }

    fn assignment(node: &str, generation: u64, secrets: Vec<Secret>) -> Assignment {
        Assignment {
            node: node.into(),
            generation,
            pod_cidr: "10.88.1.0/24".into(),
            pods: vec![],
            configmaps: vec![],
            secrets,
            sealed_secrets: None,
            clock_echo: None,
        }
    }

    fn wire(a: &Assignment) -> Vec<u8> {
        let mut out = Vec::new();
        ciborium::into_writer(a, &mut out).unwrap();
        out
    }

    fn unwire(bytes: &[u8]) -> Assignment {
        ciborium::from_reader(bytes).unwrap()
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn round_trip_through_the_wire() {
        let node = KeyPair::generate();
        let mut a = assignment("w1", 42, vec![secret("db", b"hunter2-plaintext")]);
        seal_secrets(&mut a, &node.public()).unwrap();
        assert!(a.secrets.is_empty());
        let bytes = wire(&a);
        assert!(
            !contains(&bytes, b"hunter2-plaintext"),
            "no plaintext on the wire"
        );
        let mut got = unwire(&bytes);
        assert!(got.secrets.is_empty(), "secrets never decode from the wire");
        open_secrets(&mut got, &node).unwrap();
        assert_eq!(got.secrets, vec![secret("db", b"hunter2-plaintext")]);
        // Stored as it came: still sealed, opens again.
        let mut stored = unwire(&wire(&got));
        assert!(!contains(&wire(&got), b"hunter2-plaintext"));
        open_secrets(&mut stored, &node).unwrap();
        assert_eq!(stored.secrets.len(), 1);
    }

    #[test]
    fn nothing_to_seal_is_none() {
        let node = KeyPair::generate();
        let mut a = assignment("w1", 1, vec![]);
        seal_secrets(&mut a, &node.public()).unwrap();
        assert_eq!(a.sealed_secrets, None);
        open_secrets(&mut a, &node).unwrap();
        assert!(a.secrets.is_empty());
    }

    #[test]
    fn another_nodes_key_cannot_open() {
        let (w1, w2) = (KeyPair::generate(), KeyPair::generate());
        let mut a = assignment("w1", 7, vec![secret("db", b"x")]);
        seal_secrets(&mut a, &w1.public()).unwrap();
        let err = open_secrets(&mut a.clone(), &w2).unwrap_err();
        assert!(matches!(err, SealError::Open { .. }), "{err}");
        // Nor does the sender's (the cluster's) key.
        assert!(
            open(
                &KeyPair::generate(),
                b"c",
                &seal(&w1.public(), b"c", b"x").unwrap()
            )
            .is_none()
        );
    }

    #[test]
    fn tampering_is_detected() {
        let node = KeyPair::generate();
        let mut a = assignment("w1", 7, vec![secret("db", b"x")]);
        seal_secrets(&mut a, &node.public()).unwrap();
        let sealed = a.sealed_secrets.clone().unwrap();
        for i in 0..sealed.ciphertext.len() {
            let mut bad = a.clone();
            bad.sealed_secrets.as_mut().unwrap().ciphertext[i] ^= 0x01;
            assert!(open_secrets(&mut bad, &node).is_err(), "byte {i}");
        }
        let mut bad = a.clone();
        bad.sealed_secrets.as_mut().unwrap().nonce[0] ^= 1;
        assert!(open_secrets(&mut bad, &node).is_err());
        let mut bad = a.clone();
        bad.sealed_secrets.as_mut().unwrap().ephemeral[0] ^= 1;
        assert!(open_secrets(&mut bad, &node).is_err());
        let mut bad = a.clone();
        bad.sealed_secrets.as_mut().unwrap().ciphertext.truncate(3);
        assert!(open_secrets(&mut bad, &node).is_err());
        open_secrets(&mut a, &node).unwrap();
    }

    #[test]
    fn wrong_node_or_generation_is_refused() {
        let node = KeyPair::generate();
        let mut a = assignment("w1", 7, vec![secret("db", b"x")]);
        seal_secrets(&mut a, &node.public()).unwrap();
        // The same key under another name (a node's seal replayed into
        // another node's assignment) or generation (an old seal in a new
        // assignment) does not open.
        let mut renamed = a.clone();
        renamed.node = "w2".into();
        assert!(matches!(
            open_secrets(&mut renamed, &node),
            Err(SealError::Open { .. })
        ));
        let mut later = a.clone();
        later.generation = 8;
        assert!(open_secrets(&mut later, &node).is_err());
        assert_ne!(assignment_context("w1", 7), assignment_context("w1", 8));
        assert_ne!(assignment_context("w1", 7), assignment_context("w17", 7));
    }

    #[test]
    fn a_small_order_key_is_refused() {
        // The identity point (y = 1) is a valid encoding of a small-order
        // point; its Montgomery form is u = 0.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let weak: PublicKey = hex::encode(identity).parse().unwrap();
        assert!(matches!(
            seal(&weak, b"c", b"secret"),
            Err(SealError::WeakKey(_))
        ));
    }

    #[test]
    fn the_x25519_forms_agree() {
        // What the sender derives from the public key is what the holder of
        // the secret key derives from its seed.
        let k = KeyPair::generate();
        assert_eq!(
            MontgomeryPoint::mul_base_clamped(k.x25519_secret()).to_bytes(),
            k.public().x25519()
        );
    }
}
