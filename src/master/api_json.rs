//! JSON commands for automation tools (Home Assistant, Node-RED, scripts)
//! on `<prefix>/api/<verb>`: tools that cannot sign ed25519 envelopes carry
//! a scoped, revocable API token instead (`bramble token create --api`).
//!
//! Owns: parsing a command, checking its token (known, not expired, verb and
//! namespace in scope, the token's label selector), replay detection, turning
//! it into the signed-command [`Request`] the CLI would send, and the JSON
//! reply. The work itself is [`commands::handle`]'s, so a JSON command and a
//! CLI command do exactly the same thing. Must not touch: MQTT (the master
//! loop publishes the reply this returns) or the token formats
//! ([`tokens`]).
//!
//! The command shape (docs/automation.md):
//! `{"token": "bramble_…", "reply_to": "<prefix>/reply/<anything>", "id": …,
//!   "namespace": "default", "kind": "Deployment", "name": "web",
//!   "replicas": 3, "manifest": …, "selector": …}`.
//! Verbs: `get`, `scale`, `restart` (kubectl's `rollout restart`), `delete`,
//! `apply` (`manifest`: a YAML or JSON string, or a JSON object or list).
//! Replies: `{"ok": true, "id": …, "verb": …, "result": …}` or
//! `{"ok": false, "id": …, "verb": …, "code": …, "error": "…"}`.

use std::collections::HashMap;

use serde::Deserialize;
use serde_json::{Value, json};

use crate::api::{DEFAULT_NAMESPACE, Kind, Object, ObjectKey, manifest};
use crate::master::commands::{self, Caller, Ctx, Settings, token::lookup};
use crate::master::controllers::PodUsage;
use crate::master::tokens::{self, TokenInfo};
use crate::store::Store;
use crate::transport::Topics;
use crate::transport::messages::{
    ApiError, ApplyRequest, DeleteRequest, ErrorCode, GetRequest, Request, Response, RolloutAction,
    RolloutRequest, ScaleRequest,
};

/// How long a command id is remembered to refuse its replay (the same as
/// the signed envelopes' clock window).
pub const REPLAY_WINDOW_SECONDS: i64 = 600;
/// At most this many ids are remembered; beyond, commands with new ids are
/// refused until old ones age out (a flood must not grow the master).
const MAX_REMEMBERED: usize = 10_000;
/// Largest command accepted (a manifest included).
pub const MAX_COMMAND_BYTES: usize = 256 * 1024;

/// What a JSON command may carry. Unknown fields are refused, so a typo
/// (`"replica": 3`) is an error rather than silently nothing.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonCommand {
    pub token: String,
    #[serde(default)]
    pub reply_to: Option<String>,
    /// Echoed in the reply; with it, a second command with the same id and
    /// token within [`REPLAY_WINDOW_SECONDS`] is refused as a replay.
    #[serde(default)]
    pub id: Option<Value>,
    #[serde(default)]
    pub namespace: Option<String>,
    /// `Deployment` (the default), `StatefulSet`, `deploy`, `pods`…
    #[serde(default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    /// `scale`: a number, or a string of digits (what a template renders).
    #[serde(default)]
    pub replicas: Option<Value>,
    /// `apply`: a YAML or JSON manifest as a string, or one object or a list.
    #[serde(default)]
    pub manifest: Option<Value>,
    /// `get` without a name: a label selector (`app=web`).
    #[serde(default)]
    pub selector: Option<String>,
}

/// Where the answer goes and what it says.
#[derive(Debug, PartialEq)]
pub struct Answer {
    pub topic: String,
    pub body: Value,
}

/// What the handler needs of the master.
pub struct Env<'a> {
    pub store: &'a Store,
    pub settings: &'a Settings,
    pub topics: &'a Topics,
    pub usage: &'a HashMap<String, PodUsage>,
    pub now: jiff::Timestamp,
}

/// The JSON command handler, with its memory of recent command ids.
#[derive(Default)]
pub struct JsonApi {
    seen: HashMap<(String, String), i64>,
}

fn err(code: ErrorCode, msg: impl Into<String>) -> ApiError {
    ApiError::new(code, msg)
}

fn code_word(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::BadRequest => "bad_request",
        ErrorCode::Invalid => "invalid",
        ErrorCode::NotFound => "not_found",
        ErrorCode::AlreadyExists => "already_exists",
        ErrorCode::Conflict => "conflict",
        ErrorCode::Forbidden => "forbidden",
        ErrorCode::Unavailable => "unavailable",
        ErrorCode::Internal => "internal",
    }
}

impl JsonApi {
    /// Handles one message from `<prefix>/api/<verb>`. Returns the reply to
    /// publish, if the command named a usable reply topic. Every refusal is
    /// logged; nothing here panics on input.
    pub fn handle(&mut self, env: &Env, topic: &str, payload: &[u8]) -> Option<Answer> {
        let verb = env.topics.api_verb_of(topic).unwrap_or_default();
        if payload.is_empty() {
            // What clearing a retained message looks like: nothing to answer.
            return None;
        }
        // The reply topic is read first, from whatever parses, so even a
        // malformed command gets its error back.
        let loose: Option<Value> = serde_json::from_slice(payload).ok();
        let reply_to = loose
            .as_ref()
            .and_then(|v| v.get("reply_to"))
            .and_then(Value::as_str)
            .map(str::to_string);
        let id = loose.as_ref().and_then(|v| v.get("id")).cloned();
        let reply_topic = match &reply_to {
            Some(t) if env.topics.is_reply_topic(t) => Some(t.clone()),
            Some(t) => {
                tracing::warn!(%topic, reply_to = %t, "JSON command refused: reply_to must be under {}/reply/", env.topics.prefix());
                return None;
            }
            None => None,
        };
        let (token_id, result) = self.run(env, verb, payload);
        let body = match result {
            Ok(result) => {
                tracing::info!(%verb, token = %token_id, "JSON command done");
                json!({"ok": true, "id": id, "verb": verb, "result": result})
            }
            Err(e) => {
                tracing::warn!(%topic, token = %token_id, error = %e.message, "JSON command refused");
                json!({"ok": false, "id": id, "verb": verb, "code": code_word(e.code), "error": e.message})
            }
        };
        reply_topic.map(|topic| Answer { topic, body })
    }

    /// Returns the token id (for logs) and the outcome.
    fn run(&mut self, env: &Env, verb: &str, payload: &[u8]) -> (String, Result<Value, ApiError>) {
        if payload.len() > MAX_COMMAND_BYTES {
            return (
                "-".into(),
                Err(err(
                    ErrorCode::BadRequest,
                    format!(
                        "command of {} bytes: at most {MAX_COMMAND_BYTES}",
                        payload.len()
                    ),
                )),
            );
        }
        let cmd: JsonCommand = match serde_json::from_slice(payload) {
            Ok(c) => c,
            Err(e) => {
                return (
                    "-".into(),
                    Err(err(
                        ErrorCode::BadRequest,
                        format!("malformed JSON command: {e}"),
                    )),
                );
            }
        };
        let token_id = tokens::parse_api(&cmd.token)
            .map(|(id, _)| id)
            .unwrap_or_else(|_| "-".into());
        let now = env.now.as_second();
        let info = match tokens::verify_api(|n| lookup(env.store, n), &cmd.token, now) {
            Ok(i) => i,
            Err(e) => {
                return (
                    token_id,
                    Err(err(ErrorCode::Forbidden, format!("token: {e}"))),
                );
            }
        };
        if !tokens::API_VERBS.contains(&verb) {
            return (
                token_id,
                Err(err(
                    ErrorCode::BadRequest,
                    format!(
                        "unknown verb {verb:?}: one of {}",
                        tokens::API_VERBS.join(", ")
                    ),
                )),
            );
        }
        if let Some(id) = &cmd.id
            && let Err(e) = self.remember(&info.id, id, now)
        {
            return (token_id, Err(e));
        }
        (token_id, execute(env, verb, cmd, &info))
    }

    fn remember(&mut self, token: &str, id: &Value, now: i64) -> Result<(), ApiError> {
        let id = match id {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        self.seen.retain(|_, at| now - *at < REPLAY_WINDOW_SECONDS);
        let key = (token.to_string(), id);
        if self.seen.contains_key(&key) {
            return Err(err(
                ErrorCode::Conflict,
                format!(
                    "command id {} was already used with this token in the last {} minutes (replayed?)",
                    key.1,
                    REPLAY_WINDOW_SECONDS / 60
                ),
            ));
        }
        if self.seen.len() >= MAX_REMEMBERED {
            return Err(err(
                ErrorCode::Unavailable,
                "too many recent commands with ids; try again later",
            ));
        }
        self.seen.insert(key, now);
        Ok(())
    }
}

/// Refuses what the token's scope does not cover.
fn check_scope(info: &TokenInfo, verb: &str, kind: Kind, namespace: &str) -> Result<(), ApiError> {
    let ns = if kind.namespaced() { namespace } else { "*" };
    if !info.allows(verb, ns) {
        let what = if kind.namespaced() {
            format!("{verb} {} in namespace {namespace:?}", kind.plural())
        } else {
            format!(
                "{verb} {} (cluster-scoped: needs namespace *)",
                kind.plural()
            )
        };
        return Err(err(
            ErrorCode::Forbidden,
            format!(
                "token {} may not {what}: it allows {} in {}",
                info.id,
                info.verbs.join(","),
                info.namespaces.join(",")
            ),
        ));
    }
    Ok(())
}

fn check_labels(info: &TokenInfo, obj: &Object) -> Result<(), ApiError> {
    if info.allows_object(obj.labels()) {
        return Ok(());
    }
    Err(err(
        ErrorCode::Forbidden,
        format!(
            "token {} may only act on objects labelled {}; {} {:?} is not",
            info.id,
            info.selector.as_deref().unwrap_or_default(),
            obj.kind().as_str(),
            obj.name()
        ),
    ))
}

fn kind_of(cmd: &JsonCommand) -> Result<Kind, ApiError> {
    match cmd.kind.as_deref() {
        None => Ok(Kind::Deployment),
        Some(k) => Kind::from_manifest(k)
            .or_else(|| Kind::from_cli(k))
            .ok_or_else(|| err(ErrorCode::BadRequest, format!("kind: unknown kind {k:?}"))),
    }
}

fn name_of(cmd: &JsonCommand, verb: &str) -> Result<String, ApiError> {
    cmd.name.clone().filter(|n| !n.is_empty()).ok_or_else(|| {
        err(
            ErrorCode::BadRequest,
            format!("name: {verb} needs the object's name"),
        )
    })
}

fn replicas_of(cmd: &JsonCommand) -> Result<i32, ApiError> {
    let bad = |v: &Value| {
        err(
            ErrorCode::BadRequest,
            format!("replicas: {v} is not a whole number from 0"),
        )
    };
    let v = cmd.replicas.as_ref().ok_or_else(|| {
        err(
            ErrorCode::BadRequest,
            "replicas: scale needs the number of replicas",
        )
    })?;
    let n = match v {
        Value::Number(n) => n
            .as_i64()
            .or_else(|| n.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64)),
        Value::String(s) => s
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|f| f.fract() == 0.0)
            .map(|f| f as i64),
        _ => None,
    };
    n.filter(|n| (0..=i32::MAX as i64).contains(n))
        .map(|n| n as i32)
        .ok_or_else(|| bad(v))
}

fn summary(key: &ObjectKey) -> Value {
    json!({"kind": key.kind.as_str(), "namespace": key.namespace, "name": key.name})
}

fn execute(env: &Env, verb: &str, cmd: JsonCommand, info: &TokenInfo) -> Result<Value, ApiError> {
    let namespace = cmd
        .namespace
        .clone()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| DEFAULT_NAMESPACE.to_string());
    let caller = Caller {
        id: format!("token:{}", info.id),
        key: String::new(),
    };
    let ctx = Ctx {
        store: env.store,
        settings: env.settings,
        caller: &caller,
        now: env.now,
        usage: env.usage,
    };
    // The live object a verb names, checked against the token's selector.
    let target = |kind: Kind, name: &str| -> Result<(), ApiError> {
        let key = ObjectKey::new(kind, &namespace, name);
        match env.store.get(&key) {
            Some(o) => check_labels(info, &o),
            None => Err(commands::not_found(kind, name)),
        }
    };
    let call = |request: Request| commands::handle(&ctx, request).0;
    match verb {
        "get" => {
            let kind = kind_of(&cmd)?;
            check_scope(info, verb, kind, &namespace)?;
            if kind == Kind::Secret {
                return Err(err(
                    ErrorCode::Forbidden,
                    "secrets are not served on the API topic (replies travel in clear on the broker)",
                ));
            }
            let req = GetRequest {
                kind,
                namespace: Some(namespace.clone()),
                name: cmd.name.clone().filter(|n| !n.is_empty()),
                selector: cmd.selector.clone(),
            };
            let one = req.name.is_some();
            match call(Request::Get(req))? {
                Response::Objects(objs) => {
                    let allowed: Vec<Value> = objs
                        .iter()
                        .filter(|o| info.allows_object(o.labels()))
                        .map(Object::to_json)
                        .collect();
                    if one {
                        match (objs.first(), allowed.into_iter().next()) {
                            (_, Some(o)) => Ok(json!({"object": o})),
                            (Some(o), None) => check_labels(info, o).map(|_| Value::Null),
                            (None, None) => Err(commands::not_found(
                                kind,
                                cmd.name.as_deref().unwrap_or_default(),
                            )),
                        }
                    } else {
                        Ok(json!({"items": allowed}))
                    }
                }
                other => Err(unexpected(other)),
            }
        }
        "scale" => {
            let kind = kind_of(&cmd)?;
            let name = name_of(&cmd, verb)?;
            let replicas = replicas_of(&cmd)?;
            check_scope(info, verb, kind, &namespace)?;
            target(kind, &name)?;
            match call(Request::Scale(ScaleRequest {
                kind,
                namespace: namespace.clone(),
                name,
                replicas,
                resource_version: None,
                current_replicas: None,
                dry_run: false,
            }))? {
                Response::Scaled(key) => {
                    let mut v = summary(&key);
                    v["replicas"] = json!(replicas);
                    Ok(v)
                }
                other => Err(unexpected(other)),
            }
        }
        "restart" => {
            let kind = kind_of(&cmd)?;
            let name = name_of(&cmd, verb)?;
            check_scope(info, verb, kind, &namespace)?;
            target(kind, &name)?;
            match call(Request::Rollout(RolloutRequest {
                kind,
                namespace: namespace.clone(),
                name,
                action: RolloutAction::Restart,
                dry_run: false,
            }))? {
                Response::Done(done) => Ok(json!({
                    "done": done.iter().map(|(k, word)| {
                        let mut v = summary(k);
                        v["outcome"] = json!(word);
                        v
                    }).collect::<Vec<_>>()
                })),
                other => Err(unexpected(other)),
            }
        }
        "delete" => {
            let kind = kind_of(&cmd)?;
            let name = name_of(&cmd, verb)?;
            check_scope(info, verb, kind, &namespace)?;
            target(kind, &name)?;
            match call(Request::Delete(DeleteRequest {
                kind,
                namespace: namespace.clone(),
                names: vec![name],
                selector: None,
                all: false,
                propagation: None,
                dry_run: false,
            }))? {
                Response::Deleted(keys) => {
                    Ok(json!({"deleted": keys.iter().map(summary).collect::<Vec<_>>()}))
                }
                other => Err(unexpected(other)),
            }
        }
        "apply" => {
            let objects = manifest_objects(&cmd, &namespace)?;
            for o in &objects {
                check_scope(
                    info,
                    verb,
                    o.kind(),
                    o.meta().namespace.as_deref().unwrap_or_default(),
                )?;
                check_labels(info, o)?;
                if let Some(live) = env.store.get(&o.key()) {
                    check_labels(info, &live)?;
                }
            }
            match call(Request::Apply(ApplyRequest {
                objects,
                dry_run: false,
            }))? {
                Response::Applied(applied) => Ok(json!({
                    "applied": applied.iter().map(|a| {
                        let mut v = summary(&a.key);
                        v["outcome"] = json!(a.outcome);
                        v["warnings"] = json!(a.warnings);
                        v
                    }).collect::<Vec<_>>()
                })),
                other => Err(unexpected(other)),
            }
        }
        _ => Err(err(ErrorCode::BadRequest, format!("unknown verb {verb:?}"))),
    }
}

fn unexpected(r: Response) -> ApiError {
    err(ErrorCode::Internal, format!("unexpected answer {r:?}"))
}

/// The objects of an `apply` command as written (the master merges them
/// with the live ones), each in `namespace` unless it names its own.
fn manifest_objects(cmd: &JsonCommand, namespace: &str) -> Result<Vec<Object>, ApiError> {
    let text = match &cmd.manifest {
        None | Some(Value::Null) => {
            return Err(err(
                ErrorCode::BadRequest,
                "manifest: apply needs a manifest",
            ));
        }
        Some(Value::String(s)) => s.clone(),
        Some(v @ (Value::Object(_) | Value::Array(_))) => {
            let v = match v {
                Value::Array(items) => json!({"apiVersion": "v1", "kind": "List", "items": items}),
                other => other.clone(),
            };
            v.to_string()
        }
        Some(other) => {
            return Err(err(
                ErrorCode::BadRequest,
                format!("manifest: expected a YAML/JSON string, an object or a list, got {other}"),
            ));
        }
    };
    let parsed =
        manifest::parse("manifest", &text).map_err(|e| err(ErrorCode::Invalid, e.to_string()))?;
    if parsed.is_empty() {
        return Err(err(ErrorCode::BadRequest, "manifest: no objects in it"));
    }
    Ok(parsed
        .into_iter()
        .map(|p| {
            let mut o = p.written;
            if o.kind().namespaced() && o.meta().namespace.as_deref().is_none_or(str::is_empty) {
                o.meta_mut().namespace = Some(namespace.to_string());
            }
            o
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::master::commands::token::lookup;
    use crate::master::controllers::tests_support::deployment;
    use crate::store::{Mode, Op};
    use crate::transport::KeyPair;
    use crate::transport::messages::{TokenCreate, TokenRequest};

    struct World {
        _dir: tempfile::TempDir,
        store: Store,
        settings: Settings,
        topics: Topics,
        usage: HashMap<String, PodUsage>,
    }

    impl World {
        fn new() -> World {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(&dir.path().join("m.redb")).unwrap();
            crate::master::bootstrap(&store).unwrap();
            let mut ns = Object::Namespace(Default::default());
            ns.meta_mut().name = Some("home".into());
            let mut web = Object::Deployment(deployment("web", "home", 1));
            crate::api::defaults::apply(&mut web);
            let mut opted = Object::Deployment(deployment("lamp", "home", 1));
            opted.meta_mut().labels =
                Some([("bramble.io/home-assistant".to_string(), "true".to_string())].into());
            crate::api::defaults::apply(&mut opted);
            store
                .commit(
                    vec![Op::Create(ns), Op::Create(web), Op::Create(opted)],
                    Mode::Commit,
                )
                .unwrap();
            World {
                _dir: dir,
                store,
                settings: Settings {
                    cluster_cidr: "10.88.0.0/16".parse().unwrap(),
                    service_cidr: "10.96.0.0/16".parse().unwrap(),
                    node_port_range: 30000..=32767,
                    broker_url: "mqtt://127.0.0.1:1883".into(),
                    master_key: KeyPair::generate().public().to_hex(),
                    cluster_domain: "cluster.local".into(),
                },
                topics: Topics::new("bramble/v1"),
                usage: HashMap::new(),
            }
        }

        fn env(&self, now: i64) -> Env<'_> {
            Env {
                store: &self.store,
                settings: &self.settings,
                topics: &self.topics,
                usage: &self.usage,
                now: jiff::Timestamp::from_second(now).unwrap(),
            }
        }

        fn token(&self, verbs: &[&str], ns: &[&str], ttl: Option<i64>) -> String {
            let caller = Caller {
                id: "admin:x".into(),
                key: String::new(),
            };
            let ctx = Ctx {
                store: &self.store,
                settings: &self.settings,
                caller: &caller,
                now: jiff::Timestamp::now(),
                usage: &self.usage,
            };
            match commands::token::handle(
                &ctx,
                TokenRequest::Create(TokenCreate {
                    api: true,
                    ttl_seconds: ttl,
                    verbs: verbs.iter().map(|s| s.to_string()).collect(),
                    namespaces: ns.iter().map(|s| s.to_string()).collect(),
                    description: String::new(),
                }),
            ) {
                Ok(Response::TokenCreated { token, .. }) => token,
                other => panic!("{other:?}"),
            }
        }

        fn replicas(&self, name: &str) -> Option<i32> {
            match self
                .store
                .get(&ObjectKey::new(Kind::Deployment, "home", name))?
                .as_ref()
            {
                Object::Deployment(d) => d.spec.as_ref()?.replicas,
                _ => None,
            }
        }
    }

    fn send(api: &mut JsonApi, w: &World, verb: &str, body: Value) -> Value {
        let now = jiff::Timestamp::now().as_second();
        api.handle(
            &w.env(now),
            &w.topics.api(verb),
            body.to_string().as_bytes(),
        )
        .map(|a| {
            assert_eq!(a.topic, "bramble/v1/reply/t");
            a.body
        })
        .unwrap_or(Value::Null)
    }

    #[test]
    fn scoped_tokens_do_what_they_allow_and_nothing_else() {
        let w = World::new();
        let mut api = JsonApi::default();
        let token = w.token(&["scale", "get", "restart"], &["home"], None);
        let cmd = |extra: Value| {
            let mut v = json!({"token": token, "reply_to": "bramble/v1/reply/t", "namespace": "home", "name": "web"});
            v.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            v
        };
        let r = send(&mut api, &w, "scale", cmd(json!({"replicas": 3, "id": 1})));
        assert_eq!(r["ok"], true, "{r}");
        assert_eq!(r["id"], 1);
        assert_eq!(w.replicas("web"), Some(3));
        // A template renders strings: "2" works too.
        let r = send(
            &mut api,
            &w,
            "scale",
            cmd(json!({"replicas": "2", "kind": "deploy"})),
        );
        assert_eq!(r["ok"], true, "{r}");
        assert_eq!(w.replicas("web"), Some(2));
        // Replayed id.
        let r = send(&mut api, &w, "scale", cmd(json!({"replicas": 5, "id": 1})));
        assert_eq!(
            (r["ok"].clone(), r["code"].clone()),
            (json!(false), json!("conflict")),
            "{r}"
        );
        assert_eq!(w.replicas("web"), Some(2));
        // Out of scope: verb, namespace, cluster-scoped kind, secrets.
        for (verb, extra, code) in [
            ("delete", json!({}), "forbidden"),
            (
                "scale",
                json!({"namespace": "default", "replicas": 1}),
                "forbidden",
            ),
            ("get", json!({"kind": "Node", "name": null}), "forbidden"),
            ("get", json!({"kind": "Secret", "name": "x"}), "forbidden"),
            ("scale", json!({"replicas": -1}), "bad_request"),
            ("scale", json!({"replicas": 1, "name": "nope"}), "not_found"),
            ("exec", json!({}), "bad_request"),
        ] {
            let r = send(&mut api, &w, verb, cmd(extra.clone()));
            assert_eq!(r["ok"], false, "{verb} {extra}: {r}");
            assert_eq!(r["code"], code, "{verb} {extra}: {r}");
            assert!(r["error"].as_str().is_some_and(|e| !e.is_empty()));
        }
        assert_eq!(w.replicas("web"), Some(2));
        // get and restart.
        let r = send(&mut api, &w, "get", cmd(json!({})));
        assert_eq!(r["result"]["object"]["spec"]["replicas"], 2, "{r}");
        let r = send(&mut api, &w, "get", cmd(json!({"name": null})));
        assert_eq!(
            r["result"]["items"].as_array().map(Vec::len),
            Some(2),
            "{r}"
        );
        let r = send(&mut api, &w, "restart", cmd(json!({})));
        assert_eq!(r["ok"], true, "{r}");
        let Object::Deployment(d) = &*w
            .store
            .get(&ObjectKey::new(Kind::Deployment, "home", "web"))
            .unwrap()
        else {
            panic!()
        };
        let ann = d
            .spec
            .as_ref()
            .unwrap()
            .template
            .metadata
            .as_ref()
            .unwrap()
            .annotations
            .clone()
            .unwrap();
        assert!(ann.contains_key("kubectl.kubernetes.io/restartedAt"));
    }

    #[test]
    fn bad_tokens_and_bad_input_are_refused() {
        let w = World::new();
        let mut api = JsonApi::default();
        let token = w.token(&["*"], &["*"], Some(60));
        let base = json!({"token": token, "reply_to": "bramble/v1/reply/t", "namespace": "home", "name": "web", "replicas": 4});
        // Expired: an hour later.
        let later = jiff::Timestamp::now().as_second() + 3600;
        let a = api
            .handle(
                &w.env(later),
                "bramble/v1/api/scale",
                base.to_string().as_bytes(),
            )
            .unwrap();
        assert_eq!(a.body["code"], "forbidden");
        assert!(
            a.body["error"].as_str().unwrap().contains("expired"),
            "{}",
            a.body
        );
        // Forged secret, unknown token, not a token.
        let (id, _) = tokens::parse_api(&token).unwrap();
        for t in [
            format!("bramble_{id}_aaaaaaaaaaaaaaaa"),
            "bramble_zzzzzz_aaaaaaaaaaaaaaaa".into(),
            "hunter2".into(),
        ] {
            let mut c = base.clone();
            c["token"] = json!(t);
            let r = send(&mut api, &w, "scale", c);
            assert_eq!(r["code"], "forbidden", "{r}");
        }
        // Malformed JSON with a readable reply_to gets an error; without one, nothing.
        let now = jiff::Timestamp::now().as_second();
        let a = api
            .handle(
                &w.env(now),
                "bramble/v1/api/scale",
                br#"{"reply_to": "bramble/v1/reply/t", "token": 5}"#,
            )
            .unwrap();
        assert_eq!(a.body["code"], "bad_request");
        assert!(
            api.handle(&w.env(now), "bramble/v1/api/scale", b"{not json")
                .is_none()
        );
        assert!(
            api.handle(&w.env(now), "bramble/v1/api/scale", b"")
                .is_none()
        );
        // Unknown field (typo) refused; reply topics outside reply/ ignored.
        let mut c = base.clone();
        c["replica"] = json!(3);
        assert_eq!(send(&mut api, &w, "scale", c)["code"], "bad_request");
        let mut c = base.clone();
        c["reply_to"] = json!("homeassistant/sensor/x/config");
        assert!(
            api.handle(
                &w.env(now),
                "bramble/v1/api/scale",
                c.to_string().as_bytes()
            )
            .is_none()
        );
        assert_eq!(w.replicas("web"), Some(1));
        // Revoked: nothing.
        let r = send(&mut api, &w, "scale", base.clone());
        assert_eq!(r["ok"], true, "{r}");
        w.store
            .commit(
                vec![Op::Delete {
                    key: ObjectKey::new(Kind::Secret, tokens::NAMESPACE, &tokens::secret_name(&id)),
                    expected_rv: None,
                }],
                Mode::Commit,
            )
            .unwrap();
        assert!(lookup(&w.store, &tokens::secret_name(&id)).is_none());
        let mut c = base.clone();
        c["replicas"] = json!(0);
        let r = send(&mut api, &w, "scale", c);
        assert_eq!(r["code"], "forbidden", "{r}");
        assert_eq!(w.replicas("web"), Some(4));
    }

    #[test]
    fn apply_and_delete_within_scope() {
        let w = World::new();
        let mut api = JsonApi::default();
        let token = w.token(&["apply", "delete", "get"], &["home"], None);
        let yaml =
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: lights\ndata:\n  level: \"3\"\n";
        let r = send(
            &mut api,
            &w,
            "apply",
            json!({"token": token, "reply_to": "bramble/v1/reply/t", "namespace": "home", "manifest": yaml}),
        );
        assert_eq!(r["result"]["applied"][0]["outcome"], "created", "{r}");
        assert_eq!(r["result"]["applied"][0]["namespace"], "home", "{r}");
        // As a JSON object, into a namespace outside the scope: refused.
        let obj = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x", "namespace": "default"}});
        let r = send(
            &mut api,
            &w,
            "apply",
            json!({"token": token, "reply_to": "bramble/v1/reply/t", "manifest": obj}),
        );
        assert_eq!(r["code"], "forbidden", "{r}");
        let r = send(
            &mut api,
            &w,
            "apply",
            json!({"token": token, "reply_to": "bramble/v1/reply/t", "manifest": "kind: Nope"}),
        );
        assert_eq!(r["ok"], false, "{r}");
        let r = send(
            &mut api,
            &w,
            "delete",
            json!({"token": token, "reply_to": "bramble/v1/reply/t", "namespace": "home", "kind": "ConfigMap", "name": "lights"}),
        );
        assert_eq!(r["result"]["deleted"][0]["name"], "lights", "{r}");
    }

    #[test]
    fn a_selector_token_acts_on_labelled_objects_only() {
        let w = World::new();
        let mut api = JsonApi::default();
        let token =
            crate::master::discovery::ensure_token(&w.store, jiff::Timestamp::now().as_second())
                .unwrap();
        // Stable while it verifies.
        assert_eq!(
            crate::master::discovery::ensure_token(&w.store, jiff::Timestamp::now().as_second())
                .unwrap(),
            token
        );
        let cmd = |name: &str| json!({"token": token, "reply_to": "bramble/v1/reply/t", "namespace": "home", "name": name, "replicas": 2});
        let r = send(&mut api, &w, "scale", cmd("lamp"));
        assert_eq!(r["ok"], true, "{r}");
        let r = send(&mut api, &w, "scale", cmd("web"));
        assert_eq!(r["code"], "forbidden", "{r}");
        assert_eq!(w.replicas("web"), Some(1));
        // Revoked: the master makes another, and the old one does nothing.
        let (id, _) = tokens::parse_api(&token).unwrap();
        w.store
            .commit(
                vec![Op::Delete {
                    key: ObjectKey::new(Kind::Secret, tokens::NAMESPACE, &tokens::secret_name(&id)),
                    expected_rv: None,
                }],
                Mode::Commit,
            )
            .unwrap();
        let fresh =
            crate::master::discovery::ensure_token(&w.store, jiff::Timestamp::now().as_second())
                .unwrap();
        assert_ne!(fresh, token);
        assert_eq!(
            send(&mut api, &w, "scale", cmd("lamp"))["code"],
            "forbidden"
        );
    }
}
