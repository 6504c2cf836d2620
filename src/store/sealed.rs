//! Secrets at rest: a Secret's stored bytes are its CBOR sealed with
//! XChaCha20-Poly1305 under a key derived from the cluster key, a fresh
//! random nonce per write, and the object's store key as associated data (so
//! a sealed value cannot be moved under another name). Names and the rest of
//! the table stay readable; only the store opens and seals, and memory holds
//! the plaintext the master works with.
//!
//! Layout of a sealed value: `MAGIC` (8 bytes), nonce (24), ciphertext+tag.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};

const MAGIC: &[u8; 8] = b"BRMBSEC1";
const NONCE_LEN: usize = 24;

pub fn is_sealed(bytes: &[u8]) -> bool {
    bytes.starts_with(MAGIC)
}

pub fn seal(key: &[u8; 32], store_key: &str, plaintext: &[u8]) -> Vec<u8> {
    let cipher = XChaCha20Poly1305::new(&Key::from(*key));
    let nonce_bytes: [u8; NONCE_LEN] = rand::random();
    let nonce = XNonce::from(nonce_bytes);
    let sealed = cipher
        .encrypt(
            &nonce,
            Payload {
                msg: plaintext,
                aad: store_key.as_bytes(),
            },
        )
        .expect("XChaCha20-Poly1305 encryption of an in-memory buffer cannot fail");
    let mut out = Vec::with_capacity(MAGIC.len() + NONCE_LEN + sealed.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&nonce_bytes);
    out.extend_from_slice(&sealed);
    out
}

/// The plaintext, or `None` when the bytes are not a value sealed under
/// `key` for `store_key` (wrong key, tampered, truncated).
pub fn open(key: &[u8; 32], store_key: &str, bytes: &[u8]) -> Option<Vec<u8>> {
    let rest = bytes.strip_prefix(MAGIC.as_slice())?;
    if rest.len() < NONCE_LEN {
        return None;
    }
    let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
    let nonce: [u8; NONCE_LEN] = nonce.try_into().ok()?;
    XChaCha20Poly1305::new(&Key::from(*key))
        .decrypt(
            &XNonce::from(nonce),
            Payload {
                msg: ciphertext,
                aad: store_key.as_bytes(),
            },
        )
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_tamper() {
        let key = [7u8; 32];
        let sealed = seal(&key, "Secret/default/a", b"hunter2");
        assert!(is_sealed(&sealed));
        assert!(!sealed.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(
            open(&key, "Secret/default/a", &sealed).as_deref(),
            Some(&b"hunter2"[..])
        );
        assert_eq!(
            open(&key, "Secret/default/b", &sealed),
            None,
            "moved to another key"
        );
        assert_eq!(
            open(&[8u8; 32], "Secret/default/a", &sealed),
            None,
            "another cluster"
        );
        let mut bad = sealed.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert_eq!(open(&key, "Secret/default/a", &bad), None);
    }

    #[test]
    fn the_store_file_never_holds_secret_data() {
        use crate::api::{Kind, Object, ObjectKey, Secret};
        use crate::store::{Mode, Op, Store, StoreError};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.redb");
        let key = [3u8; 32];
        let store = Store::open_with_secret_key(&path, Some(key)).unwrap();
        let secret = Object::Secret(Secret {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                name: Some("db".into()),
                ..Default::default()
            },
            data: Some(
                [(
                    "password".to_string(),
                    k8s_openapi::ByteString(b"s3cr3t-plaintext".to_vec()),
                )]
                .into(),
            ),
            ..Default::default()
        });
        store.commit(vec![Op::Put(secret)], Mode::Commit).unwrap();
        drop(store);
        let raw = std::fs::read(&path).unwrap();
        assert!(!raw.windows(16).any(|w| w == b"s3cr3t-plaintext"));
        let store = Store::open_with_secret_key(&path, Some(key)).unwrap();
        let back = store
            .get(&ObjectKey::new(Kind::Secret, "default", "db"))
            .unwrap();
        let Object::Secret(s) = &*back else { panic!() };
        assert_eq!(s.data.as_ref().unwrap()["password"].0, b"s3cr3t-plaintext");
        drop(store);
        assert!(matches!(
            Store::open(&path),
            Err(StoreError::Corrupt { .. })
        ));
    }
}
