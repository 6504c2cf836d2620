//! Tokens for the master's registry mirror: a node (or an admin) proves who
//! it is to the mirror's HTTP endpoint with its own key, as it does on the
//! broker, without the master handing out any secret.
//!
//! `bramble-mirror-v1.<sender id>.<unix seconds>.<signature>`: the sender id
//! as the envelope names it (`node:<name>`, `admin:<fingerprint>`), when
//! the token was made, and the ed25519 signature (hex) of both under a
//! purpose string of its own, so no envelope signature can pass for one.
//! A token is good from its time (less the clock window: Pis have no RTC)
//! until [`MAX_AGE`] after it: one per pull covers a slow one. It rides in
//! clear on the LAN (the mirror speaks plain HTTP), so whoever can read that
//! traffic can replay it within that hour; such a reader sees the image
//! bytes anyway.
//!
//! Owns: the token's format, signing and checking. Must not touch: where keys
//! come from (the caller looks them up).

use std::time::Duration;

use super::{KeyPair, PublicKey};

const PREFIX: &str = "bramble-mirror-v1";

/// How long a token is accepted after it was made.
pub const MAX_AGE: Duration = Duration::from_secs(3600);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum TokenError {
    #[error("not a mirror token (expected {PREFIX}.<id>.<time>.<signature>)")]
    Malformed,
    #[error("unknown sender {0:?}")]
    UnknownSender(String),
    #[error("bad signature for {0:?}")]
    BadSignature(String),
    #[error("the token of {id:?} expired {ago}s ago")]
    Expired { id: String, ago: i64 },
    #[error("the token of {id:?} is dated {ahead}s ahead of the master's clock")]
    FromTheFuture { id: String, ahead: i64 },
}

fn message(id: &str, issued: i64) -> Vec<u8> {
    format!("{PREFIX}\n{id}\n{issued}").into_bytes()
}

/// A token for `id` (the key's own sender id), made at `now` (unix seconds).
pub fn mint(key: &KeyPair, id: &str, now: i64) -> String {
    let sig = key.sign(&message(id, now));
    format!("{PREFIX}.{id}.{now}.{}", hex::encode(sig))
}

/// Checks `token` at `now` (unix seconds), finding the sender's key with
/// `key_of`; returns the sender id. `clock_window`: how far ahead of our
/// clock a token may be dated.
pub fn verify(
    token: &str,
    now: i64,
    clock_window: Duration,
    key_of: impl Fn(&str) -> Option<PublicKey>,
) -> Result<String, TokenError> {
    let mut parts = token.trim().split('.');
    let (Some(PREFIX), Some(id), Some(issued), Some(sig), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Err(TokenError::Malformed);
    };
    if id.is_empty() || id.len() > 128 {
        return Err(TokenError::Malformed);
    }
    let issued: i64 = issued.parse().map_err(|_| TokenError::Malformed)?;
    let sig: [u8; 64] = hex::decode(sig)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or(TokenError::Malformed)?;
    let key = key_of(id).ok_or_else(|| TokenError::UnknownSender(id.to_string()))?;
    if !key.verify(&message(id, issued), &sig) {
        return Err(TokenError::BadSignature(id.to_string()));
    }
    let ahead = issued.saturating_sub(now);
    if ahead > clock_window.as_secs() as i64 {
        return Err(TokenError::FromTheFuture {
            id: id.to_string(),
            ahead,
        });
    }
    let age = now.saturating_sub(issued);
    if age > MAX_AGE.as_secs() as i64 {
        return Err(TokenError::Expired {
            id: id.to_string(),
            ago: age - MAX_AGE.as_secs() as i64,
        });
    }
    Ok(id.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_secs(600);

    #[test]
    fn a_node_token_verifies_with_its_key_only() {
        let key = KeyPair::generate();
        let other = KeyPair::generate();
        let token = mint(&key, "node:w1", 1_000_000);
        let lookup = |id: &str| (id == "node:w1").then(|| key.public());
        assert_eq!(
            verify(&token, 1_000_000, WINDOW, lookup),
            Ok("node:w1".into())
        );
        // Within the hour, and a little ahead of a Pi's wrong clock.
        assert!(verify(&token, 1_000_000 + 3500, WINDOW, lookup).is_ok());
        assert!(verify(&token, 1_000_000 - 500, WINDOW, lookup).is_ok());
        assert!(matches!(
            verify(&token, 1_000_000 + 3700, WINDOW, lookup),
            Err(TokenError::Expired { .. })
        ));
        assert!(matches!(
            verify(&token, 1_000_000 - 700, WINDOW, lookup),
            Err(TokenError::FromTheFuture { .. })
        ));
        // Signed by another key, or naming another sender.
        let forged = mint(&other, "node:w1", 1_000_000);
        assert_eq!(
            verify(&forged, 1_000_000, WINDOW, lookup),
            Err(TokenError::BadSignature("node:w1".into()))
        );
        let renamed = token.replace("node:w1", "node:w2");
        assert_eq!(
            verify(&renamed, 1_000_000, WINDOW, |_| Some(key.public())),
            Err(TokenError::BadSignature("node:w2".into()))
        );
        assert_eq!(
            verify(&mint(&key, "node:w9", 1_000_000), 1_000_000, WINDOW, lookup),
            Err(TokenError::UnknownSender("node:w9".into()))
        );
        // A changed time breaks the signature.
        let redated = token.replace(".1000000.", ".1003000.");
        assert!(matches!(
            verify(&redated, 1_003_000, WINDOW, lookup),
            Err(TokenError::BadSignature(_))
        ));
    }

    #[test]
    fn garbage_is_malformed() {
        let key = KeyPair::generate();
        let any = |_: &str| Some(key.public());
        for t in [
            "",
            "bramble-mirror-v1",
            "bramble-mirror-v1.node:w1.1.00",
            "bramble-mirror-v2.node:w1.1.".to_string().as_str(),
            "x.node:w1.1.aa",
            "bramble-mirror-v1.node:w1.notanumber.aa",
            "bramble-mirror-v1.node:w1.1.aa.extra",
            "bramble-mirror-v1..1.aa",
        ] {
            assert_eq!(verify(t, 1, WINDOW, any), Err(TokenError::Malformed), "{t}");
        }
    }
}
