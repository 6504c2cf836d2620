//! Joining: a node that presents a join token gets its own key registered
//! under its name and a pod CIDR (DESIGN.md "Join and trust").
//!
//! The request is signed by the node's new key and carries an HMAC proof that
//! the node knows the token's secret (`tokens::join_proof`); the secret never
//! crosses the broker. The master's reply is signed by the cluster key, which
//! the token pins by fingerprint, so a node cannot be talked into a rogue
//! cluster either.
//!
//! Owns: the decision to admit a node. Must not touch: the MQTT client (the
//! master loop sends the reply) or anything of a node beyond its key, labels
//! and pod CIDR.

use std::collections::BTreeMap;

use ipnet::Ipv4Net;

use crate::api::{Kind, NODE_KEY_ANNOTATION, Object, ObjectKey};
use crate::master::controllers::node_ready;
use crate::master::tokens;
use crate::store::Store;
use crate::transport::PublicKey;
use crate::transport::messages::JoinRequest;

/// Label prefixes a node may not set on itself: the ones the cluster decides
/// (roles) and the ones the agent reports as facts.
const RESERVED_LABEL_PREFIXES: [&str; 2] = ["node-role.kubernetes.io/", "kubernetes.io/"];

/// Admits `req` (already verified as signed by `req.key`) or says why not.
/// On success the node is registered (or re-keyed) and its pod CIDR returned.
pub fn admit(
    store: &Store,
    req: &JoinRequest,
    cluster_cidr: Ipv4Net,
    now_secs: i64,
) -> Result<Ipv4Net, String> {
    if !crate::transport::topics::valid_level(&req.node)
        || !crate::api::validate::dns1123_label_errors(&req.node).is_empty()
    {
        return Err(format!(
            "node name {:?} must be a DNS label (lower case letters, digits and '-')",
            req.node
        ));
    }
    let key: PublicKey = req
        .key
        .parse()
        .map_err(|_| "the request's key is not an ed25519 public key".to_string())?;
    let stored = store.get(&ObjectKey::new(
        Kind::Secret,
        tokens::NAMESPACE,
        &tokens::secret_name(&req.token_id),
    ));
    let secret = stored.as_deref().and_then(|o| match o {
        Object::Secret(s) => Some(s),
        _ => None,
    });
    tokens::verify_join(
        secret,
        &req.token_id,
        &req.node,
        &req.key,
        req.nonce,
        &req.proof,
        now_secs,
    )
    .map_err(|e| format!("join refused: {e}"))?;
    for (k, v) in &req.labels {
        if RESERVED_LABEL_PREFIXES.iter().any(|p| k.starts_with(p)) {
            return Err(format!(
                "label {k:?}: a node cannot set labels under {}",
                RESERVED_LABEL_PREFIXES.join(" or ")
            ));
        }
        let errs: Vec<String> = crate::api::validate::qualified_name_errors(k)
            .into_iter()
            .chain(crate::api::validate::label_value_errors(v))
            .collect();
        if !errs.is_empty() {
            return Err(format!("label {k}={v}: {}", errs.join("; ")));
        }
    }
    // A name already held by another key is only handed over when that node
    // is not Ready (a Pi re-flashed after dying); a live node keeps its name.
    if let Some(obj) = store.get(&ObjectKey::new(Kind::Node, "", &req.node))
        && let Object::Node(n) = &*obj
    {
        let current = n
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(NODE_KEY_ANNOTATION));
        if current.is_some_and(|k| *k != req.key) && node_ready(n) {
            return Err(format!(
                "node {:?} is already in the cluster with another key and is Ready; \
                 pick another name, or `bramble delete node {}` first",
                req.node, req.node
            ));
        }
    }
    let labels: BTreeMap<String, String> = req.labels.clone();
    super::register_node(store, &req.node, &key, cluster_cidr, labels).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Mode, Op};
    use crate::transport::KeyPair;

    fn store_with_token(ttl: Option<i64>) -> (tempfile::TempDir, Store, tokens::JoinToken) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("m.redb")).unwrap();
        crate::master::bootstrap(&store).unwrap();
        let (secret, text, _) = tokens::create(
            tokens::TokenKind::Join,
            &"0".repeat(32),
            ttl,
            vec![],
            vec![],
            String::new(),
            1000,
        );
        store
            .commit(vec![Op::Create(Object::Secret(secret))], Mode::Commit)
            .unwrap();
        (dir, store, tokens::JoinToken::parse(&text).unwrap())
    }

    fn request(t: &tokens::JoinToken, node: &str, key: &KeyPair) -> JoinRequest {
        let key = key.public().to_hex();
        JoinRequest {
            node: node.into(),
            proof: tokens::join_proof(&t.secret, node, &key, 42),
            key,
            token_id: t.id.clone(),
            nonce: 42,
            labels: BTreeMap::from([("zone".into(), "attic".into())]),
        }
    }

    const CIDR: &str = "10.88.0.0/16";

    #[test]
    fn a_valid_token_registers_the_node_with_its_key_and_a_cidr() {
        let (_d, store, t) = store_with_token(None);
        let key = KeyPair::generate();
        let cidr = admit(
            &store,
            &request(&t, "pi1", &key),
            CIDR.parse().unwrap(),
            1001,
        )
        .unwrap();
        let node = store.get(&ObjectKey::new(Kind::Node, "", "pi1")).unwrap();
        let Object::Node(n) = &*node else { panic!() };
        assert_eq!(
            n.metadata.annotations.as_ref().unwrap()[NODE_KEY_ANNOTATION],
            key.public().to_hex()
        );
        assert_eq!(n.metadata.labels.as_ref().unwrap()["zone"], "attic");
        assert_eq!(
            n.spec.as_ref().unwrap().pod_cidr.as_deref(),
            Some(&*cidr.to_string())
        );
        // The same node joining again keeps its CIDR.
        let again = admit(
            &store,
            &request(&t, "pi1", &key),
            CIDR.parse().unwrap(),
            1002,
        )
        .unwrap();
        assert_eq!(cidr, again);
    }

    #[test]
    fn bad_tokens_and_names_join_nothing() {
        let (_d, store, t) = store_with_token(Some(60));
        let key = KeyPair::generate();
        let cidr: Ipv4Net = CIDR.parse().unwrap();
        let mut forged = request(&t, "pi1", &key);
        forged.proof = tokens::join_proof("wrongsecret12345", "pi1", &forged.key, 42);
        assert!(
            admit(&store, &forged, cidr, 1001)
                .unwrap_err()
                .contains("secret")
        );
        let expired = admit(&store, &request(&t, "pi1", &key), cidr, 1061).unwrap_err();
        assert!(expired.contains("expired"), "{expired}");
        let mut unknown = request(&t, "pi1", &key);
        unknown.token_id = "zzzzzz".into();
        assert!(
            admit(&store, &unknown, cidr, 1001)
                .unwrap_err()
                .contains("not known")
        );
        let bad_name = admit(&store, &request(&t, "Pi_1", &key), cidr, 1001).unwrap_err();
        assert!(bad_name.contains("DNS label"), "{bad_name}");
        let mut role = request(&t, "pi1", &key);
        role.labels.insert(
            "node-role.kubernetes.io/control-plane".into(),
            "true".into(),
        );
        assert!(
            admit(&store, &role, cidr, 1001)
                .unwrap_err()
                .contains("cannot set")
        );
        assert!(
            store.get(&ObjectKey::new(Kind::Node, "", "pi1")).is_none(),
            "nothing stored"
        );
    }
}
