//! Tokens: join tokens that let a new node register, and API tokens that let
//! automation tools (Home Assistant, Node-RED) send a few verbs without an
//! ed25519 key.
//!
//! Owns: the token formats, their storage (one Secret of type
//! [`SECRET_TYPE`] per token in `kube-system`, holding only the SHA-256 of the
//! token's secret part), and the checks. Pure apart from reading and writing
//! the store through the functions' callers: everything here takes objects
//! and returns objects or verdicts.
//!
//! Formats:
//! - join: `BRAMBLE1.<master-key-fingerprint>.<id>.<secret>`; the node pins
//!   the master's key by the fingerprint, and proves the secret.
//! - API: `bramble_<id>_<secret>`.
//!
//! `<id>` is 6 and `<secret>` 16 characters of `[a-z0-9]`, like Kubernetes'
//! bootstrap tokens.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Where tokens live.
pub const NAMESPACE: &str = "kube-system";
/// The Secret type that marks a token.
pub const SECRET_TYPE: &str = "bramble.io/token";
const NAME_PREFIX: &str = "bramble-token-";
const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TokenKind {
    Join,
    Api,
}

impl TokenKind {
    fn as_str(self) -> &'static str {
        match self {
            TokenKind::Join => "join",
            TokenKind::Api => "api",
        }
    }
}

/// What `token list` shows of a token (never its secret).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenInfo {
    pub id: String,
    pub kind: TokenKind,
    /// Unix seconds; `None` never expires.
    pub expires: Option<i64>,
    /// API tokens: the verbs allowed (`scale`, `restart`, `get`…).
    pub verbs: Vec<String>,
    /// API tokens: the namespaces allowed (`*` for all).
    pub namespaces: Vec<String>,
    pub description: String,
    pub created: i64,
    /// API tokens: a label selector the objects it acts on must match
    /// (`bramble.io/home-assistant=true`); `None` for any object in scope.
    #[serde(default)]
    pub selector: Option<String>,
}

impl TokenInfo {
    pub fn expired(&self, now: i64) -> bool {
        self.expires.is_some_and(|e| now >= e)
    }

    /// Whether an API token may do `verb` in `namespace`.
    pub fn allows(&self, verb: &str, namespace: &str) -> bool {
        self.kind == TokenKind::Api
            && self.verbs.iter().any(|v| v == verb || v == "*")
            && self.namespaces.iter().any(|n| n == namespace || n == "*")
    }

    /// Whether an API token may act on an object with these labels (its
    /// selector, if it has one, matches them). A selector that does not parse
    /// allows nothing.
    pub fn allows_object(&self, labels: &BTreeMap<String, String>) -> bool {
        match &self.selector {
            None => true,
            Some(s) => {
                crate::api::selector::Selector::parse(s).is_ok_and(|sel| sel.matches(labels))
            }
        }
    }
}

/// The verbs an API token can be given (`*` gives them all).
pub const API_VERBS: [&str; 5] = ["get", "scale", "restart", "delete", "apply"];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum TokenError {
    #[error("not a Bramble token (expected {0})")]
    Malformed(&'static str),
    #[error("token {0} is not known (revoked, or never created here)")]
    Unknown(String),
    #[error("token {0} has expired")]
    Expired(String),
    #[error("token {id} is a {actual} token, not a {wanted} token")]
    WrongKind {
        id: String,
        actual: &'static str,
        wanted: &'static str,
    },
    #[error("the token's secret does not match")]
    BadSecret,
    #[error("token {id} does not belong to this cluster (it pins master key {pinned})")]
    WrongCluster { id: String, pinned: String },
    #[error("ttl {0:?}: expected a duration like 24h, 90m, 1h30m, 7d or 0 (never expires)")]
    BadTtl(String),
    #[error(
        "verb {0:?} cannot be given to an API token (known: get, scale, restart, delete, apply, or *)"
    )]
    UnknownVerb(String),
    #[error("namespace {0:?} is not a namespace name or *")]
    BadNamespace(String),
}

/// Parses a token lifetime: `24h`, `90m`, `1h30m`, `45s`, `7d`; `0` means
/// the token never expires (`None`).
pub fn parse_ttl(text: &str) -> Result<Option<i64>, TokenError> {
    let bad = || TokenError::BadTtl(text.to_string());
    let t = text.trim();
    if t == "0" {
        return Ok(None);
    }
    let (mut total, mut number) = (0i64, String::new());
    for c in t.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return Err(bad()),
        };
        let n: i64 = number.parse().map_err(|_| bad())?;
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(bad)?;
        number.clear();
    }
    if !number.is_empty() || total <= 0 {
        return Err(bad());
    }
    Ok(Some(total))
}

/// Checks an API token's scope as `token create` gives it: known verbs and
/// namespace names (or `*`).
pub fn check_scope(verbs: &[String], namespaces: &[String]) -> Result<(), TokenError> {
    for v in verbs {
        if v != "*" && !API_VERBS.contains(&v.as_str()) {
            return Err(TokenError::UnknownVerb(v.clone()));
        }
    }
    for n in namespaces {
        if n != "*" && !crate::api::validate::dns1123_label_errors(n).is_empty() {
            return Err(TokenError::BadNamespace(n.clone()));
        }
    }
    Ok(())
}

/// Restricts a new API token to objects matching a label `selector`
/// (written into its Secret and its info).
pub fn set_selector(secret: &mut Secret, info: &mut TokenInfo, selector: &str) {
    info.selector = Some(selector.to_string());
    secret
        .data
        .get_or_insert_with(BTreeMap::new)
        .insert("selector".into(), ByteString(selector.as_bytes().to_vec()));
}

/// The id of a token text of either format, without checking it.
pub fn id_of(text: &str) -> Option<String> {
    JoinToken::parse(text)
        .map(|t| t.id)
        .or_else(|_| parse_api(text).map(|(id, _)| id))
        .ok()
}

/// Checks a whole API token text (`bramble_<id>_<secret>`) against its stored
/// Secret, which `lookup` finds by name in [`NAMESPACE`].
pub fn verify_api(
    lookup: impl Fn(&str) -> Option<Secret>,
    text: &str,
    now: i64,
) -> Result<TokenInfo, TokenError> {
    let (id, secret) = parse_api(text)?;
    let stored = lookup(&secret_name(&id));
    verify(stored.as_ref(), &id, &secret, TokenKind::Api, now)
}

fn random(n: usize) -> String {
    (0..n)
        .map(|_| ALPHABET[rand::random_range(0..ALPHABET.len())] as char)
        .collect()
}

fn hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Equal, compared in time independent of where they differ.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

fn valid_part(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| ALPHABET.contains(&b))
}

/// A join token's parts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinToken {
    pub fingerprint: String,
    pub id: String,
    pub secret: String,
}

impl JoinToken {
    pub fn parse(s: &str) -> Result<JoinToken, TokenError> {
        const SHAPE: &str = "BRAMBLE1.<master-key-fingerprint>.<id>.<secret>";
        let parts: Vec<&str> = s.trim().split('.').collect();
        match parts.as_slice() {
            ["BRAMBLE1", fp, id, secret]
                if fp.len() == 32
                    && fp.bytes().all(|b| b.is_ascii_hexdigit())
                    && valid_part(id, 6)
                    && valid_part(secret, 16) =>
            {
                Ok(JoinToken {
                    fingerprint: fp.to_ascii_lowercase(),
                    id: id.to_string(),
                    secret: secret.to_string(),
                })
            }
            _ => Err(TokenError::Malformed(SHAPE)),
        }
    }

    pub fn render(&self) -> String {
        format!("BRAMBLE1.{}.{}.{}", self.fingerprint, self.id, self.secret)
    }
}

/// An API token's parts.
pub fn parse_api(s: &str) -> Result<(String, String), TokenError> {
    const SHAPE: &str = "bramble_<id>_<secret>";
    match s.trim().split('_').collect::<Vec<_>>().as_slice() {
        ["bramble", id, secret] if valid_part(id, 6) && valid_part(secret, 16) => {
            Ok((id.to_string(), secret.to_string()))
        }
        _ => Err(TokenError::Malformed(SHAPE)),
    }
}

/// A new token: the Secret to store and the token text to hand out (shown
/// once; only its hash is kept).
pub fn create(
    kind: TokenKind,
    master_fingerprint: &str,
    ttl_seconds: Option<i64>,
    verbs: Vec<String>,
    namespaces: Vec<String>,
    description: String,
    now: i64,
) -> (Secret, String, TokenInfo) {
    let id = random(6);
    let secret = random(16);
    let info = TokenInfo {
        id: id.clone(),
        kind,
        expires: ttl_seconds.filter(|t| *t > 0).map(|t| now + t),
        verbs,
        namespaces,
        description,
        created: now,
        selector: None,
    };
    let text = match kind {
        TokenKind::Join => JoinToken {
            fingerprint: master_fingerprint.to_string(),
            id: id.clone(),
            secret: secret.clone(),
        }
        .render(),
        TokenKind::Api => format!("bramble_{id}_{secret}"),
    };
    let mut data = BTreeMap::new();
    let mut put = |k: &str, v: String| {
        data.insert(k.to_string(), ByteString(v.into_bytes()));
    };
    put("kind", kind.as_str().into());
    put("secret-sha256", hash(&secret));
    put("created", now.to_string());
    if let Some(e) = info.expires {
        put("expires", e.to_string());
    }
    put("verbs", info.verbs.join(","));
    put("namespaces", info.namespaces.join(","));
    put("description", info.description.clone());
    if let Some(sel) = &info.selector {
        put("selector", sel.clone());
    }
    let obj = Secret {
        metadata: ObjectMeta {
            name: Some(format!("{NAME_PREFIX}{id}")),
            namespace: Some(NAMESPACE.to_string()),
            ..Default::default()
        },
        type_: Some(SECRET_TYPE.to_string()),
        data: Some(data),
        ..Default::default()
    };
    (obj, text, info)
}

/// The Secret name of token `id`.
pub fn secret_name(id: &str) -> String {
    format!("{NAME_PREFIX}{id}")
}

fn field(s: &Secret, k: &str) -> Option<String> {
    s.data
        .as_ref()?
        .get(k)
        .map(|v| String::from_utf8_lossy(&v.0).into_owned())
}

/// What a stored token Secret says, if it is one.
pub fn info(s: &Secret) -> Option<TokenInfo> {
    if s.type_.as_deref() != Some(SECRET_TYPE) {
        return None;
    }
    let id = s
        .metadata
        .name
        .as_deref()?
        .strip_prefix(NAME_PREFIX)?
        .to_string();
    let list = |k: &str| {
        field(s, k)
            .unwrap_or_default()
            .split(',')
            .filter(|v| !v.is_empty())
            .map(String::from)
            .collect()
    };
    Some(TokenInfo {
        id,
        kind: match field(s, "kind")?.as_str() {
            "join" => TokenKind::Join,
            "api" => TokenKind::Api,
            _ => return None,
        },
        expires: field(s, "expires").and_then(|e| e.parse().ok()),
        verbs: list("verbs"),
        namespaces: list("namespaces"),
        description: field(s, "description").unwrap_or_default(),
        created: field(s, "created")
            .and_then(|c| c.parse().ok())
            .unwrap_or(0),
        selector: field(s, "selector").filter(|v| !v.is_empty()),
    })
}

/// Checks a presented `secret` for token `id` against its stored Secret.
pub fn verify(
    stored: Option<&Secret>,
    id: &str,
    secret: &str,
    kind: TokenKind,
    now: i64,
) -> Result<TokenInfo, TokenError> {
    let stored = stored.ok_or_else(|| TokenError::Unknown(id.to_string()))?;
    let info = info(stored).ok_or_else(|| TokenError::Unknown(id.to_string()))?;
    if info.kind != kind {
        return Err(TokenError::WrongKind {
            id: id.to_string(),
            actual: info.kind.as_str(),
            wanted: kind.as_str(),
        });
    }
    let want = field(stored, "secret-sha256").unwrap_or_default();
    // Compare digests, not secrets, in constant time.
    if !same(&want, &hash(secret)) {
        return Err(TokenError::BadSecret);
    }
    if info.expired(now) {
        return Err(TokenError::Expired(id.to_string()));
    }
    Ok(info)
}

/// The HMAC-SHA256 a joining node sends to prove it knows the join token's
/// secret without sending it: over its name, its public key and a nonce. The
/// MAC key is the secret's SHA-256, which is what the master keeps, so the
/// master can check a proof without ever holding the secret.
pub fn join_proof(secret: &str, node: &str, public_key: &str, nonce: u64) -> String {
    proof_with_key(&hash(secret), node, public_key, nonce)
}

fn proof_with_key(key_hex: &str, node: &str, public_key: &str, nonce: u64) -> String {
    use hmac::{KeyInit, Mac};
    let mut mac = hmac::Hmac::<Sha256>::new_from_slice(key_hex.as_bytes())
        .expect("HMAC takes any key length");
    mac.update(format!("bramble-join\0{node}\0{public_key}\0{nonce}").as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// Checks a join request's proof for token `id` against its stored Secret:
/// the token must exist, be a join token, be unexpired, and the proof must be
/// over exactly this node name, key and nonce.
pub fn verify_join(
    stored: Option<&Secret>,
    id: &str,
    node: &str,
    public_key: &str,
    nonce: u64,
    proof: &str,
    now: i64,
) -> Result<TokenInfo, TokenError> {
    let stored = stored.ok_or_else(|| TokenError::Unknown(id.to_string()))?;
    let info = info(stored).ok_or_else(|| TokenError::Unknown(id.to_string()))?;
    if info.kind != TokenKind::Join {
        return Err(TokenError::WrongKind {
            id: id.to_string(),
            actual: info.kind.as_str(),
            wanted: TokenKind::Join.as_str(),
        });
    }
    let key = field(stored, "secret-sha256").unwrap_or_default();
    let want = proof_with_key(&key, node, public_key, nonce);
    if key.is_empty() || !same(&want, proof) {
        return Err(TokenError::BadSecret);
    }
    if info.expired(now) {
        return Err(TokenError::Expired(id.to_string()));
    }
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FP: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn join_tokens_round_trip_and_verify() {
        let (secret, text, info) = create(
            TokenKind::Join,
            FP,
            Some(3600),
            vec![],
            vec![],
            "pi".into(),
            1000,
        );
        let t = JoinToken::parse(&text).unwrap();
        assert_eq!(t.fingerprint, FP);
        assert_eq!(t.id, info.id);
        assert_eq!(super::info(&secret).unwrap(), info);
        assert!(verify(Some(&secret), &t.id, &t.secret, TokenKind::Join, 2000).is_ok());
        assert_eq!(
            verify(Some(&secret), &t.id, &t.secret, TokenKind::Join, 4600),
            Err(TokenError::Expired(t.id.clone()))
        );
        assert_eq!(
            verify(
                Some(&secret),
                &t.id,
                "aaaaaaaaaaaaaaaa",
                TokenKind::Join,
                2000
            ),
            Err(TokenError::BadSecret)
        );
        assert!(matches!(
            verify(Some(&secret), &t.id, &t.secret, TokenKind::Api, 2000),
            Err(TokenError::WrongKind { .. })
        ));
        assert_eq!(
            verify(None, &t.id, &t.secret, TokenKind::Join, 2000),
            Err(TokenError::Unknown(t.id.clone()))
        );
        // Only the hash is stored.
        let stored = serde_json::to_string(&secret).unwrap();
        assert!(!stored.contains(&t.secret));
        for bad in [
            "",
            "BRAMBLE1.x.y.z",
            "BRAMBLE2.0123456789abcdef0123456789abcdef.abcdef.0123456789abcdef",
            &text.to_uppercase(),
        ] {
            assert!(JoinToken::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn api_tokens_are_scoped() {
        let (secret, text, _) = create(
            TokenKind::Api,
            FP,
            None,
            vec!["scale".into(), "get".into()],
            vec!["home".into()],
            "ha".into(),
            0,
        );
        let (id, s) = parse_api(&text).unwrap();
        let info = verify(Some(&secret), &id, &s, TokenKind::Api, 10).unwrap();
        assert!(info.allows("scale", "home"));
        assert!(!info.allows("delete", "home"));
        assert!(!info.allows("scale", "default"));
        assert!(parse_api("bramble_x_y").is_err());
    }

    #[test]
    fn join_proof_binds_secret_name_key_and_nonce() {
        let p = join_proof("s3cret", "pi1", "k", 1);
        assert_eq!(p.len(), 64);
        assert_eq!(p, join_proof("s3cret", "pi1", "k", 1));
        assert_ne!(p, join_proof("s3cret", "pi1", "k", 2));
        assert_ne!(p, join_proof("s3cret", "pi2", "k", 1));
        assert_ne!(p, join_proof("s3cret", "pi1", "j", 1));
        assert_ne!(p, join_proof("other", "pi1", "k", 1));
    }

    #[test]
    fn join_proofs_verify_against_the_stored_hash_only() {
        let (secret, text, _) = create(
            TokenKind::Join,
            &"a".repeat(32),
            None,
            vec![],
            vec![],
            String::new(),
            100,
        );
        let t = JoinToken::parse(&text).unwrap();
        let proof = join_proof(&t.secret, "pi1", "key", 7);
        assert!(verify_join(Some(&secret), &t.id, "pi1", "key", 7, &proof, 200).is_ok());
        // Bound to name, key and nonce.
        for (n, k, nonce) in [("pi2", "key", 7), ("pi1", "other", 7), ("pi1", "key", 8)] {
            assert_eq!(
                verify_join(Some(&secret), &t.id, n, k, nonce, &proof, 200),
                Err(TokenError::BadSecret)
            );
        }
        assert_eq!(
            verify_join(None, &t.id, "pi1", "key", 7, &proof, 200),
            Err(TokenError::Unknown(t.id.clone()))
        );
        let (expiring, text, _) = create(
            TokenKind::Join,
            &"a".repeat(32),
            Some(10),
            vec![],
            vec![],
            String::new(),
            100,
        );
        let t = JoinToken::parse(&text).unwrap();
        let proof = join_proof(&t.secret, "pi1", "key", 7);
        assert_eq!(
            verify_join(Some(&expiring), &t.id, "pi1", "key", 7, &proof, 111),
            Err(TokenError::Expired(t.id.clone()))
        );
        let (api, _, _) = create(TokenKind::Api, "", None, vec![], vec![], String::new(), 100);
        assert!(matches!(
            verify_join(Some(&api), "x", "pi1", "key", 7, &proof, 111),
            Err(TokenError::WrongKind { .. })
        ));
    }
}
