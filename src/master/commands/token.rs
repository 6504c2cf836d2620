//! `token create | list | revoke`: join tokens for new nodes and scoped API
//! tokens for automation tools, kept as hashed Secrets in `kube-system`
//! (formats and checks: [`crate::master::tokens`]). Only admin callers may
//! manage tokens; an API token's holder never reaches this handler.

use k8s_openapi::api::core::v1::Secret;

use crate::api::{Kind, Object, ObjectKey};
use crate::master::tokens::{self, TokenInfo, TokenKind};
use crate::store::{Mode, Op, Store};
use crate::transport::PublicKey;
use crate::transport::messages::{ApiError, ErrorCode, Response, TokenCreate, TokenRequest};

use super::{Ctx, store_error};

pub fn handle(ctx: &Ctx, req: TokenRequest) -> Result<Response, ApiError> {
    if !ctx.caller.id.starts_with("admin:") {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            format!("{} may not manage tokens", ctx.caller.id),
        ));
    }
    match req {
        TokenRequest::Create(c) => create(ctx, c),
        TokenRequest::List => Ok(Response::Tokens(list(ctx.store))),
        TokenRequest::Revoke { id } => revoke(ctx, &id),
    }
}

/// The stored Secret of token `id`, if there is one (what
/// [`tokens::verify`] and [`tokens::verify_api`] check against).
pub fn lookup(store: &Store, secret_name: &str) -> Option<Secret> {
    match store
        .get(&ObjectKey::new(
            Kind::Secret,
            tokens::NAMESPACE,
            secret_name,
        ))?
        .as_ref()
    {
        Object::Secret(s) => Some(s.clone()),
        _ => None,
    }
}

/// Every token, oldest first.
pub fn list(store: &Store) -> Vec<TokenInfo> {
    let mut out: Vec<TokenInfo> = store
        .list(Kind::Secret, Some(tokens::NAMESPACE))
        .iter()
        .filter_map(|o| match o.as_ref() {
            Object::Secret(s) => tokens::info(s),
            _ => None,
        })
        .collect();
    out.sort_by(|a, b| (a.created, &a.id).cmp(&(b.created, &b.id)));
    out
}

fn invalid(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(ErrorCode::Invalid, e.to_string())
}

fn create(ctx: &Ctx, c: TokenCreate) -> Result<Response, ApiError> {
    if c.ttl_seconds.is_some_and(|t| t <= 0) {
        return Err(invalid("ttl: must be positive, or absent for no expiry"));
    }
    let kind = if c.api {
        if c.verbs.is_empty() {
            return Err(invalid(
                "verbs: an API token needs at least one verb (get, scale, restart, delete, apply)",
            ));
        }
        if c.namespaces.is_empty() {
            return Err(invalid(
                "namespaces: an API token needs at least one namespace (or *)",
            ));
        }
        tokens::check_scope(&c.verbs, &c.namespaces).map_err(invalid)?;
        TokenKind::Api
    } else {
        if !c.verbs.is_empty() || !c.namespaces.is_empty() {
            return Err(invalid(
                "verbs and namespaces scope API tokens only (add --api)",
            ));
        }
        TokenKind::Join
    };
    let fingerprint = ctx
        .settings
        .master_key
        .parse::<PublicKey>()
        .map(|k| k.fingerprint())
        .map_err(|e| ApiError::new(ErrorCode::Internal, format!("master key: {e}")))?;
    let (secret, text, info) = tokens::create(
        kind,
        &fingerprint,
        c.ttl_seconds,
        c.verbs,
        c.namespaces,
        c.description,
        ctx.now.as_second(),
    );
    ctx.store
        .commit(vec![Op::Create(Object::Secret(secret))], Mode::Commit)
        .map_err(store_error)?;
    Ok(Response::TokenCreated { token: text, info })
}

fn revoke(ctx: &Ctx, id: &str) -> Result<Response, ApiError> {
    // A whole token pasted instead of its id works too.
    let id = tokens::id_of(id).unwrap_or_else(|| id.trim().to_string());
    let name = tokens::secret_name(&id);
    let is_token = lookup(ctx.store, &name).is_some_and(|s| tokens::info(&s).is_some());
    if !is_token {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            format!("token \"{id}\" not found"),
        ));
    }
    let key = ObjectKey::new(Kind::Secret, tokens::NAMESPACE, &name);
    ctx.store
        .commit(
            vec![Op::Delete {
                key: key.clone(),
                expected_rv: None,
            }],
            Mode::Commit,
        )
        .map_err(store_error)?;
    Ok(Response::Done(vec![(key, format!("token {id} revoked"))]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::master::commands::{Caller, Settings};
    use crate::transport::KeyPair;

    fn settings(master: &KeyPair) -> Settings {
        Settings {
            cluster_cidr: "10.88.0.0/16".parse().unwrap(),
            service_cidr: "10.96.0.0/16".parse().unwrap(),
            node_port_range: 30000..=32767,
            broker_url: "mqtt://127.0.0.1:1883".into(),
            master_key: master.public().to_hex(),
            cluster_domain: "cluster.local".into(),
        }
    }

    fn run(
        store: &Store,
        settings: &Settings,
        caller: &str,
        req: TokenRequest,
    ) -> Result<Response, ApiError> {
        let caller = Caller {
            id: caller.into(),
            key: String::new(),
        };
        let usage = Default::default();
        let ctx = Ctx {
            store,
            settings,
            caller: &caller,
            now: jiff::Timestamp::now(),
            usage: &usage,
        };
        handle(&ctx, req)
    }

    #[test]
    fn create_list_verify_revoke() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("m.redb")).unwrap();
        crate::master::bootstrap(&store).unwrap();
        let master = KeyPair::generate();
        let s = settings(&master);
        let admin = "admin:abc";
        let create = |api: bool, verbs: &[&str], ns: &[&str]| {
            TokenRequest::Create(TokenCreate {
                api,
                ttl_seconds: Some(3600),
                verbs: verbs.iter().map(|v| v.to_string()).collect(),
                namespaces: ns.iter().map(|v| v.to_string()).collect(),
                description: "test".into(),
            })
        };
        let Ok(Response::TokenCreated { token, info }) =
            run(&store, &s, admin, create(false, &[], &[]))
        else {
            panic!("join token created")
        };
        let jt = tokens::JoinToken::parse(&token).unwrap();
        assert_eq!(jt.fingerprint, master.public().fingerprint());
        assert_eq!(info.kind, TokenKind::Join);
        let Ok(Response::TokenCreated { token: api, .. }) = run(
            &store,
            &s,
            admin,
            create(true, &["scale", "get"], &["home"]),
        ) else {
            panic!("api token created")
        };
        let now = jiff::Timestamp::now().as_second();
        let lookup_in = |n: &str| lookup(&store, n);
        let got = tokens::verify_api(lookup_in, &api, now).unwrap();
        assert!(got.allows("scale", "home") && !got.allows("delete", "home"));
        let Ok(Response::Tokens(all)) = run(&store, &s, admin, TokenRequest::List) else {
            panic!("list")
        };
        assert_eq!(all.len(), 2);

        // Bad scopes and callers are refused.
        for bad in [
            create(true, &["exec"], &["home"]),
            create(true, &[], &["home"]),
            create(false, &["get"], &[]),
        ] {
            let e = run(&store, &s, admin, bad).unwrap_err();
            assert_eq!(e.code, ErrorCode::Invalid, "{e}");
        }
        let e = run(&store, &s, "token:abcdef", TokenRequest::List).unwrap_err();
        assert_eq!(e.code, ErrorCode::Forbidden);

        // Revoked: verifies as nothing.
        run(&store, &s, admin, TokenRequest::Revoke { id: api.clone() }).unwrap();
        assert!(matches!(
            tokens::verify_api(|n: &str| lookup(&store, n), &api, now),
            Err(tokens::TokenError::Unknown(_))
        ));
        let e = run(
            &store,
            &s,
            admin,
            TokenRequest::Revoke {
                id: jt.id.clone() + "x",
            },
        )
        .unwrap_err();
        assert_eq!(e.code, ErrorCode::NotFound);
        // Expired: verifies as nothing either.
        assert!(matches!(
            tokens::verify(
                lookup(&store, &tokens::secret_name(&jt.id)).as_ref(),
                &jt.id,
                &jt.secret,
                TokenKind::Join,
                now + 3601
            ),
            Err(tokens::TokenError::Expired(_))
        ));
    }
}
