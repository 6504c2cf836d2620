//! Home Assistant MQTT discovery, and the retained state topics it reads.
//!
//! Owns: what the master tells Home Assistant (and any dashboard) about the
//! cluster: per node a device with Ready (binary_sensor), CPU, memory and,
//! when the node reports it, temperature (sensors); per Deployment labelled
//! `bramble.io/home-assistant: "true"` a device with its replicas (sensor),
//! a number entity that scales it and a button that restarts it, both wired
//! to the JSON API (`<prefix>/api/scale|restart`) with a token the master
//! manages; the retained state topics `<prefix>/state/node/<n>` and
//! `<prefix>/state/deployment/<ns>/<name>`; the dashboards' summaries
//! ([`summaries`]: the other workloads, `state/cluster`, `state/events`);
//! and the removal (an empty
//! retained payload) of what no longer exists, including what an earlier
//! master run left on the broker.
//!
//! The payloads are a pure function of the snapshot ([`desired`]);
//! [`Discovery`] remembers what was published so only changes go out; the
//! master loop does the publishing. The managed token ([`ensure_token`]) is
//! the one store write: a normal scoped API token (verbs `scale,restart`,
//! every namespace, only objects with the opt-in label), its text kept in the
//! Secret `kube-system/bramble-home-assistant` (sealed at rest) because it
//! must be repeated in every discovery config. `bramble token revoke` of it
//! makes the master create another and republish.
//!
//! Must not touch: MQTT, the token formats ([`tokens`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Event, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::{Value, json};

use crate::api::{Kind, Object, ObjectKey};
use crate::master::commands::token::lookup;
use crate::master::controllers::hpa::milli;
use crate::master::controllers::{Snapshot, node_ready};
use crate::master::tokens::{self, TokenKind};
use crate::store::{Mode, Op, Store, StoreError};
use crate::transport::Topics;

/// Home Assistant's default discovery prefix.
pub const DEFAULT_PREFIX: &str = "homeassistant";
/// The label that opts a Deployment in (value `"true"`).
pub const OPT_IN_LABEL: &str = "bramble.io/home-assistant";
/// Annotation on an opted-in Deployment: the number entity's maximum.
pub const MAX_REPLICAS_ANNOTATION: &str = "bramble.io/home-assistant-max-replicas";
pub const DEFAULT_MAX_REPLICAS: i64 = 10;
/// The Secret (in `kube-system`) holding the managed token's text.
pub const TOKEN_HOLDER: &str = "bramble-home-assistant";
const TOKEN_HOLDER_TYPE: &str = "bramble.io/home-assistant-token";
const TOKEN_DESCRIPTION: &str = "Home Assistant discovery (managed by the master)";

/// What a node looks like to Home Assistant.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeView {
    pub name: String,
    pub ready: bool,
    pub arch: String,
    pub version: String,
    pub cpu_millis: i64,
    pub cpu_allocatable_millis: i64,
    pub memory_bytes: i64,
    pub memory_allocatable_bytes: i64,
    pub pods: usize,
    /// Degrees Celsius, when the node reports a thermal zone.
    pub temperature: Option<f64>,
}

/// What a Deployment looks like to Home Assistant.
#[derive(Clone, Debug, PartialEq)]
pub struct DeploymentView {
    pub namespace: String,
    pub name: String,
    pub desired: i32,
    pub ready: i32,
    pub available: i32,
    pub updated: i32,
    /// Labelled for Home Assistant: gets discovery configs, not just state.
    pub opted_in: bool,
    pub max_replicas: i64,
}

/// Names under which one cluster publishes.
#[derive(Clone, Debug)]
pub struct Ids {
    pub topics: Topics,
    /// The discovery prefix (`homeassistant`).
    pub ha_prefix: String,
    /// Short cluster id (from the master key) that keeps two clusters on one
    /// broker apart: the discovery topics' node id, and every unique id.
    pub cluster: String,
}

impl Ids {
    pub fn new(topics: Topics, ha_prefix: &str, master_key_hex: &str) -> Ids {
        let fp = master_key_hex
            .parse::<crate::transport::PublicKey>()
            .map(|k| k.fingerprint())
            .unwrap_or_else(|_| "0".repeat(32));
        Ids {
            topics,
            ha_prefix: ha_prefix.trim_end_matches('/').to_string(),
            cluster: format!("bramble_{}", &fp[..8]),
        }
    }

    fn config_topic(&self, component: &str, object_id: &str) -> String {
        format!(
            "{}/{component}/{}/{object_id}/config",
            self.ha_prefix, self.cluster
        )
    }

    /// Whether `topic` is one this module publishes (retained).
    pub fn owns(&self, topic: &str) -> bool {
        let ours = format!("/{}/", self.cluster);
        (topic.starts_with(&format!("{}/", self.ha_prefix))
            && topic.contains(&ours)
            && topic.ends_with("/config"))
            || topic.starts_with(&self.topics.state_prefix())
    }

    /// What to subscribe to, to find what an earlier run left retained.
    pub fn filters(&self) -> Vec<String> {
        vec![
            format!("{}/+/{}/+/config", self.ha_prefix, self.cluster),
            format!("{}#", self.topics.state_prefix()),
        ]
    }
}

/// `[a-zA-Z0-9_-]`, as discovery topic levels and unique ids must be.
fn slug(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The nodes as Home Assistant sees them; `temperatures` in °C by node.
pub fn node_views(snap: &Snapshot, temperatures: &HashMap<String, f64>) -> Vec<NodeView> {
    let mut used: HashMap<&str, (i64, i64, usize)> = HashMap::new();
    for p in snap.pods() {
        let Some(node) = p.spec.as_ref().and_then(|s| s.node_name.as_deref()) else {
            continue;
        };
        let e = used.entry(node).or_default();
        e.2 += 1;
        if let Some(u) = p.metadata.uid.as_ref().and_then(|uid| snap.usage.get(uid)) {
            e.0 += u.cpu_millis;
            e.1 += u.memory_bytes;
        }
    }
    snap.nodes()
        .filter_map(|n| {
            let name = n.metadata.name.clone()?;
            let status = n.status.as_ref();
            let alloc = status
                .and_then(|s| s.allocatable.clone())
                .unwrap_or_default();
            let info = status.and_then(|s| s.node_info.as_ref());
            let (cpu, mem, pods) = used.get(name.as_str()).copied().unwrap_or_default();
            Some(NodeView {
                ready: node_ready(n),
                arch: info.map(|i| i.architecture.clone()).unwrap_or_default(),
                version: info.map(|i| i.kubelet_version.clone()).unwrap_or_default(),
                cpu_millis: cpu,
                cpu_allocatable_millis: alloc.get("cpu").and_then(milli).unwrap_or(0),
                memory_bytes: mem,
                memory_allocatable_bytes: alloc.get("memory").and_then(milli).unwrap_or(0) / 1000,
                pods,
                temperature: temperatures.get(&name).copied(),
                name,
            })
        })
        .collect()
}

/// Every Deployment, opted in or not (all get a state topic).
pub fn deployment_views(snap: &Snapshot) -> Vec<DeploymentView> {
    snap.deployments()
        .filter(|d| d.metadata.deletion_timestamp.is_none())
        .map(|d| {
            let st = d.status.clone().unwrap_or_default();
            let labels = d.metadata.labels.clone().unwrap_or_default();
            DeploymentView {
                namespace: d.metadata.namespace.clone().unwrap_or_default(),
                name: d.metadata.name.clone().unwrap_or_default(),
                desired: d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1),
                ready: st.ready_replicas.unwrap_or(0),
                available: st.available_replicas.unwrap_or(0),
                updated: st.updated_replicas.unwrap_or(0),
                opted_in: labels.get(OPT_IN_LABEL).map(String::as_str) == Some("true"),
                max_replicas: d
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(MAX_REPLICAS_ANNOTATION))
                    .and_then(|v| v.trim().parse::<i64>().ok())
                    .filter(|m| *m > 0)
                    .unwrap_or(DEFAULT_MAX_REPLICAS),
            }
        })
        .collect()
}

fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

fn percent(used: i64, of: i64) -> Value {
    if of <= 0 {
        Value::Null
    } else {
        json!(round1(used as f64 * 100.0 / of as f64))
    }
}

fn origin() -> Value {
    json!({
        "name": "bramble",
        "sw_version": env!("CARGO_PKG_VERSION"),
    })
}

fn online(topic: String) -> Value {
    json!({"topic": topic, "payload_available": "true", "payload_not_available": "false"})
}

/// Every retained message the cluster should have on the broker now:
/// discovery configs and state, topic → payload. `token` is the managed API
/// token; without one, opted-in Deployments get no number or button.
pub fn desired(
    ids: &Ids,
    nodes: &[NodeView],
    deployments: &[DeploymentView],
    token: Option<&str>,
) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let t = &ids.topics;
    let master_online = online(t.master_online());
    for n in nodes {
        let state_topic = t.state_node(&n.name);
        let state = json!({
            "ready": if n.ready { "ON" } else { "OFF" },
            "cpu_millicores": n.cpu_millis,
            "cpu_percent": percent(n.cpu_millis, n.cpu_allocatable_millis),
            "memory_mib": round1(n.memory_bytes as f64 / (1024.0 * 1024.0)),
            "memory_percent": percent(n.memory_bytes, n.memory_allocatable_bytes),
            "temperature": n.temperature.map(round1),
            "pods": n.pods,
        });
        out.insert(state_topic.clone(), state.to_string());
        let id = format!("{}_node_{}", ids.cluster, slug(&n.name));
        let device = json!({
            "identifiers": [id.clone()],
            "name": format!("Bramble node {}", n.name),
            "manufacturer": "Bramble",
            "model": if n.arch.is_empty() { "node".to_string() } else { format!("node ({})", n.arch) },
            "sw_version": n.version,
        });
        let base = |name: &str, suffix: &str| {
            json!({
                "name": name,
                "unique_id": format!("{id}_{suffix}"),
                "object_id": format!("bramble_{}_{suffix}", slug(&n.name)),
                "state_topic": state_topic,
                "device": device,
                "origin": origin(),
                "availability": [online(t.online(&n.name)), master_online],
                "availability_mode": "all",
            })
        };
        let mut ready = base("Ready", "ready");
        ready["device_class"] = json!("connectivity");
        ready["value_template"] = json!("{{ value_json.ready }}");
        ready["payload_on"] = json!("ON");
        ready["payload_off"] = json!("OFF");
        out.insert(
            ids.config_topic("binary_sensor", &format!("node_{}_ready", slug(&n.name))),
            ready.to_string(),
        );
        let mut cpu = base("CPU", "cpu");
        cpu["unit_of_measurement"] = json!("%");
        cpu["state_class"] = json!("measurement");
        cpu["icon"] = json!("mdi:cpu-64-bit");
        cpu["value_template"] = json!("{{ value_json.cpu_percent }}");
        out.insert(
            ids.config_topic("sensor", &format!("node_{}_cpu", slug(&n.name))),
            cpu.to_string(),
        );
        let mut mem = base("Memory", "memory");
        mem["unit_of_measurement"] = json!("MiB");
        mem["device_class"] = json!("data_size");
        mem["state_class"] = json!("measurement");
        mem["value_template"] = json!("{{ value_json.memory_mib }}");
        out.insert(
            ids.config_topic("sensor", &format!("node_{}_memory", slug(&n.name))),
            mem.to_string(),
        );
        if n.temperature.is_some() {
            let mut temp = base("Temperature", "temperature");
            temp["unit_of_measurement"] = json!("°C");
            temp["device_class"] = json!("temperature");
            temp["state_class"] = json!("measurement");
            temp["value_template"] = json!("{{ value_json.temperature }}");
            out.insert(
                ids.config_topic("sensor", &format!("node_{}_temperature", slug(&n.name))),
                temp.to_string(),
            );
        }
    }
    for d in deployments {
        let state_topic = t.state_deployment(&d.namespace, &d.name);
        let state = json!({
            "namespace": d.namespace,
            "name": d.name,
            "desired": d.desired,
            "ready": d.ready,
            "available": d.available,
            "updated": d.updated,
            "replicas": format!("{}/{}", d.ready, d.desired),
        });
        out.insert(state_topic.clone(), state.to_string());
        if !d.opted_in {
            continue;
        }
        let key = format!("deploy_{}_{}", slug(&d.namespace), slug(&d.name));
        let id = format!("{}_{key}", ids.cluster);
        let device = json!({
            "identifiers": [id.clone()],
            "name": format!("Bramble {}/{}", d.namespace, d.name),
            "manufacturer": "Bramble",
            "model": "Deployment",
        });
        let base = |name: &str, suffix: &str| {
            json!({
                "name": name,
                "unique_id": format!("{id}_{suffix}"),
                "object_id": format!("bramble_{}_{}_{suffix}", slug(&d.namespace), slug(&d.name)),
                "device": device,
                "origin": origin(),
                "availability": [master_online],
            })
        };
        let mut replicas = base("Replicas", "replicas");
        replicas["state_topic"] = json!(state_topic);
        replicas["value_template"] = json!("{{ value_json.replicas }}");
        replicas["json_attributes_topic"] = json!(state_topic);
        replicas["icon"] = json!("mdi:server");
        out.insert(
            ids.config_topic("sensor", &format!("{key}_replicas")),
            replicas.to_string(),
        );
        let Some(token) = token else { continue };
        let command = |verb: &str| {
            json!({
                "token": token,
                "namespace": d.namespace,
                "kind": "Deployment",
                "name": d.name,
            })
            .to_string()
            .trim_end_matches('}')
            .to_string()
                + if verb == "scale" {
                    ",\"replicas\":{{ value | int }}}"
                } else {
                    "}"
                }
        };
        let mut scale = base("Desired replicas", "scale");
        scale["command_topic"] = json!(t.api("scale"));
        scale["command_template"] = json!(command("scale"));
        scale["state_topic"] = json!(state_topic);
        scale["value_template"] = json!("{{ value_json.desired }}");
        scale["min"] = json!(0);
        // Never below what it has now, or Home Assistant shows it out of range.
        scale["max"] = json!(d.max_replicas.max(d.desired as i64));
        scale["step"] = json!(1);
        scale["mode"] = json!("box");
        scale["icon"] = json!("mdi:counter");
        out.insert(
            ids.config_topic("number", &format!("{key}_scale")),
            scale.to_string(),
        );
        let mut restart = base("Restart", "restart");
        restart["command_topic"] = json!(t.api("restart"));
        restart["payload_press"] = json!(command("restart"));
        restart["device_class"] = json!("restart");
        out.insert(
            ids.config_topic("button", &format!("{key}_restart")),
            restart.to_string(),
        );
    }
    out
}

/// How many Events `state/events` carries.
pub const RECENT_EVENTS: usize = 20;

/// The dashboards' state topics beyond the nodes' and Deployments': the
/// other workloads, the cluster in one message, the most recent Events.
/// Times are absolute, so an unchanged cluster publishes nothing new.
pub fn summaries(t: &Topics, snap: &Snapshot, nodes: &[NodeView]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let live = |m: &ObjectMeta| m.deletion_timestamp.is_none();
    let id = |m: &ObjectMeta| {
        (
            m.namespace.clone().unwrap_or_default(),
            m.name.clone().unwrap_or_default(),
        )
    };
    let mut workloads = 0;
    for s in snap.statefulsets().filter(|s| live(&s.metadata)) {
        let (ns, name) = id(&s.metadata);
        let st = s.status.clone().unwrap_or_default();
        let desired = s.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let ready = st.ready_replicas.unwrap_or(0);
        let state = json!({
            "namespace": ns, "name": name, "desired": desired, "ready": ready,
            "current": st.current_replicas.unwrap_or(0),
            "updated": st.updated_replicas.unwrap_or(0),
            "replicas": format!("{ready}/{desired}"),
        });
        out.insert(
            t.state_workload("statefulset", &ns, &name),
            state.to_string(),
        );
        workloads += 1;
    }
    for d in snap.daemonsets().filter(|d| live(&d.metadata)) {
        let (ns, name) = id(&d.metadata);
        let st = d.status.clone().unwrap_or_default();
        let state = json!({
            "namespace": ns, "name": name,
            "desired": st.desired_number_scheduled,
            "current": st.current_number_scheduled,
            "ready": st.number_ready,
            "updated": st.updated_number_scheduled.unwrap_or(0),
            "available": st.number_available.unwrap_or(0),
            "replicas": format!("{}/{}", st.number_ready, st.desired_number_scheduled),
        });
        out.insert(t.state_workload("daemonset", &ns, &name), state.to_string());
        workloads += 1;
    }
    for j in snap.jobs().filter(|j| live(&j.metadata)) {
        let (ns, name) = id(&j.metadata);
        let st = j.status.clone().unwrap_or_default();
        let completions = j.spec.as_ref().and_then(|s| s.completions).unwrap_or(1);
        let done = |kind: &str| {
            st.conditions
                .iter()
                .flatten()
                .any(|c| c.type_ == kind && c.status == "True")
        };
        let status = if done("Complete") {
            "Complete"
        } else if done("Failed") {
            "Failed"
        } else if j.spec.as_ref().and_then(|s| s.suspend) == Some(true) {
            "Suspended"
        } else {
            "Running"
        };
        let succeeded = st.succeeded.unwrap_or(0);
        let state = json!({
            "namespace": ns, "name": name, "status": status,
            "completions": format!("{succeeded}/{completions}"),
            "succeeded": succeeded,
            "failed": st.failed.unwrap_or(0),
            "active": st.active.unwrap_or(0),
        });
        out.insert(t.state_workload("job", &ns, &name), state.to_string());
        workloads += 1;
    }
    for c in snap.cronjobs().filter(|c| live(&c.metadata)) {
        let (ns, name) = id(&c.metadata);
        let st = c.status.clone().unwrap_or_default();
        let spec = c.spec.as_ref();
        let state = json!({
            "namespace": ns, "name": name,
            "schedule": spec.map(|s| s.schedule.clone()),
            "suspend": spec.and_then(|s| s.suspend).unwrap_or(false),
            "active": st.active.map(|a| a.len()).unwrap_or(0),
            "last_schedule": st.last_schedule_time.map(|t| t.0.to_string()),
            "last_successful": st.last_successful_time.map(|t| t.0.to_string()),
        });
        out.insert(t.state_workload("cronjob", &ns, &name), state.to_string());
        workloads += 1;
    }
    workloads += snap.deployments().filter(|d| live(&d.metadata)).count();

    let mut phases: BTreeMap<String, usize> = BTreeMap::new();
    for p in snap.pods().filter(|p| live(&p.metadata)) {
        let phase = p
            .status
            .as_ref()
            .and_then(|s| s.phase.clone())
            .unwrap_or_else(|| "Pending".into());
        *phases.entry(phase).or_default() += 1;
    }
    let cluster = json!({
        "nodes": nodes.len(),
        "nodes_ready": nodes.iter().filter(|n| n.ready).count(),
        "node_names": nodes.iter().map(|n| n.name.clone()).collect::<Vec<_>>(),
        "pods": phases.values().sum::<usize>(),
        "pods_by_phase": phases,
        "workloads": workloads,
    });
    out.insert(t.state_cluster(), cluster.to_string());

    let when = |e: &Event| {
        e.last_timestamp
            .as_ref()
            .map(|t| t.0)
            .or(e.event_time.as_ref().map(|t| t.0))
            .or(e.metadata.creation_timestamp.as_ref().map(|t| t.0))
    };
    let mut events: Vec<&Event> = snap.events().collect();
    events.sort_by_key(|e| std::cmp::Reverse(when(e)));
    let recent: Vec<Value> = events
        .into_iter()
        .take(RECENT_EVENTS)
        .map(|e| {
            let o = &e.involved_object;
            json!({
                "type": e.type_,
                "reason": e.reason,
                "namespace": o.namespace,
                "object": format!(
                    "{}/{}",
                    o.kind.as_deref().unwrap_or("").to_lowercase(),
                    o.name.as_deref().unwrap_or("")
                ),
                "message": e.message,
                "count": e.count.unwrap_or(1),
                "last_seen": when(e).map(|t| t.to_string()),
            })
        })
        .collect();
    out.insert(t.state_events(), Value::Array(recent).to_string());
    out
}

/// What was published, so that only changes go out.
pub struct Discovery {
    pub ids: Ids,
    published: BTreeMap<String, String>,
    /// Our topics the broker holds retained (seen through our subscription),
    /// also those an earlier run left.
    on_broker: BTreeSet<String>,
    temperatures: HashMap<String, f64>,
}

impl Discovery {
    pub fn new(ids: Ids) -> Discovery {
        Discovery {
            ids,
            published: BTreeMap::new(),
            on_broker: BTreeSet::new(),
            temperatures: HashMap::new(),
        }
    }

    /// A node's temperature from its report (memory only: it changes all
    /// the time and is worth nothing after a restart).
    pub fn observe_temperature(&mut self, node: &str, millicelsius: Option<i64>) {
        match millicelsius {
            Some(m) => self
                .temperatures
                .insert(node.to_string(), m as f64 / 1000.0),
            None => self.temperatures.remove(node),
        };
    }

    /// A retained message on one of our topics. Returns whether it calls for
    /// a cleanup pass (something we did not publish in this run).
    pub fn on_retained(&mut self, topic: &str, payload: &[u8]) -> bool {
        if payload.is_empty() {
            self.on_broker.remove(topic);
            return false;
        }
        self.on_broker.insert(topic.to_string());
        !self.published.contains_key(topic)
    }

    /// The broker may have lost everything (reconnect): publish it all again.
    pub fn reset(&mut self) {
        self.published.clear();
    }

    /// The messages to publish (retained) to bring the broker to `desired`:
    /// changed payloads, and empty ones for what must go.
    pub fn changes(&mut self, desired: BTreeMap<String, String>) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        let stale: Vec<String> = self
            .published
            .keys()
            .chain(self.on_broker.iter())
            .filter(|t| !desired.contains_key(*t))
            .cloned()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        for t in stale {
            self.published.remove(&t);
            self.on_broker.remove(&t);
            out.push((t, Vec::new()));
        }
        for (t, p) in desired {
            if self.published.get(&t) != Some(&p) {
                out.push((t.clone(), p.clone().into_bytes()));
                self.published.insert(t, p);
            }
        }
        out
    }

    /// Everything to publish for this snapshot.
    pub fn plan(&mut self, snap: &Snapshot, token: Option<&str>) -> Vec<(String, Vec<u8>)> {
        let nodes = node_views(snap, &self.temperatures);
        let deployments = deployment_views(snap);
        let mut want = desired(&self.ids, &nodes, &deployments, token);
        want.extend(summaries(&self.ids.topics, snap, &nodes));
        self.changes(want)
    }
}

/// Whether any Deployment is opted in (only then is a token needed).
pub fn wants_token(snap: &Snapshot) -> bool {
    deployment_views(snap).iter().any(|d| d.opted_in)
}

/// The managed token's text: the stored one while it verifies, else a new
/// one (created, with its holder, in one transaction).
pub fn ensure_token(store: &Store, now: i64) -> Result<String, StoreError> {
    let holder = lookup(store, TOKEN_HOLDER);
    if let Some(text) = holder
        .as_ref()
        .and_then(|h| h.data.as_ref()?.get("token"))
        .map(|v| String::from_utf8_lossy(&v.0).into_owned())
        && tokens::verify_api(|n| lookup(store, n), &text, now).is_ok()
    {
        return Ok(text);
    }
    let (mut secret, text, mut info) = tokens::create(
        TokenKind::Api,
        "",
        None,
        vec!["scale".into(), "restart".into()],
        vec!["*".into()],
        TOKEN_DESCRIPTION.into(),
        now,
    );
    tokens::set_selector(&mut secret, &mut info, &format!("{OPT_IN_LABEL}=true"));
    let holder_obj = Secret {
        metadata: ObjectMeta {
            name: Some(TOKEN_HOLDER.into()),
            namespace: Some(tokens::NAMESPACE.into()),
            ..Default::default()
        },
        type_: Some(TOKEN_HOLDER_TYPE.into()),
        data: Some(BTreeMap::from([(
            "token".to_string(),
            ByteString(text.clone().into_bytes()),
        )])),
        ..Default::default()
    };
    let mut ops = vec![
        Op::Create(Object::Secret(secret)),
        Op::Put(Object::Secret(holder_obj)),
    ];
    // The token it replaces (expired, or its holder was edited) goes with it.
    if let Some(old) = holder
        .and_then(|h| {
            h.data?
                .get("token")
                .map(|v| String::from_utf8_lossy(&v.0).into_owned())
        })
        .and_then(|t| tokens::id_of(&t))
        && lookup(store, &tokens::secret_name(&old)).is_some()
    {
        ops.push(Op::Delete {
            key: ObjectKey::new(Kind::Secret, tokens::NAMESPACE, &tokens::secret_name(&old)),
            expected_rv: None,
        });
    }
    store.commit(ops, Mode::Commit)?;
    tracing::info!(token = %info.id, "created the Home Assistant discovery token");
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> Ids {
        Ids {
            topics: Topics::new("bramble/v1"),
            ha_prefix: "homeassistant".into(),
            cluster: "bramble_0123abcd".into(),
        }
    }

    fn node(temp: Option<f64>) -> NodeView {
        NodeView {
            name: "pi1".into(),
            ready: true,
            arch: "arm64".into(),
            version: "0.1.0".into(),
            cpu_millis: 500,
            cpu_allocatable_millis: 4000,
            memory_bytes: 256 << 20,
            memory_allocatable_bytes: 1 << 30,
            pods: 3,
            temperature: temp,
        }
    }

    /// Every workload kind, the cluster and the latest Events get a state
    /// topic; an unchanged snapshot publishes nothing the second time; a
    /// deleted workload's topic is cleared.
    #[test]
    fn summaries_cover_workloads_cluster_and_recent_events() {
        use crate::master::controllers::Action;
        use crate::master::controllers::events::{Involved, record};
        use crate::master::controllers::tests_support as ts;
        use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetStatus};
        use k8s_openapi::api::batch::v1::{Job, JobCondition, JobStatus};

        let ds = DaemonSet {
            metadata: ts::meta("agent", "home"),
            status: Some(DaemonSetStatus {
                desired_number_scheduled: 3,
                current_number_scheduled: 3,
                number_ready: 2,
                ..Default::default()
            }),
            ..Default::default()
        };
        let job = Job {
            metadata: ts::meta("backup", "home"),
            status: Some(JobStatus {
                succeeded: Some(1),
                conditions: Some(vec![JobCondition {
                    type_: "Complete".into(),
                    status: "True".into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut objects = vec![
            Object::Node(ts::node("pi1", true)),
            Object::Node(ts::node("pi2", false)),
            Object::DaemonSet(ds),
            Object::Job(job),
        ];
        // 25 Events a second apart: the 20 latest are kept, newest first.
        for i in 0..25 {
            let about = Object::Deployment(ts::deployment(&format!("d{i}"), "home", 1));
            let at = jiff::Timestamp::from_second(1_800_000_000 + i).unwrap();
            let Action::Create(e) = record(
                None,
                &Involved::of(&about),
                "Normal",
                "ScalingReplicaSet",
                &format!("scaled d{i}"),
                "deployment-controller",
                at,
            ) else {
                unreachable!()
            };
            objects.push(e);
        }
        let snap = ts::snapshot(objects);
        let mut d = Discovery::new(ids());
        let first: BTreeMap<String, Vec<u8>> = d.plan(&snap, None).into_iter().collect();
        let json = |t: &str| -> Value {
            serde_json::from_slice(first.get(t).unwrap_or_else(|| panic!("{t} published"))).unwrap()
        };
        let agent = json("bramble/v1/state/daemonset/home/agent");
        assert_eq!(agent["replicas"], "2/3");
        let backup = json("bramble/v1/state/job/home/backup");
        assert_eq!(backup["status"], "Complete");
        assert_eq!(backup["completions"], "1/1");
        let cluster = json("bramble/v1/state/cluster");
        assert_eq!(cluster["nodes"], 2);
        assert_eq!(cluster["nodes_ready"], 1);
        assert_eq!(cluster["workloads"], 2);
        let events = json("bramble/v1/state/events");
        let events = events.as_array().unwrap();
        assert_eq!(events.len(), RECENT_EVENTS);
        assert_eq!(events[0]["object"], "deployment/d24");
        assert_eq!(events[0]["message"], "scaled d24");
        assert_eq!(events[19]["object"], "deployment/d5");
        assert!(
            first.keys().all(|t| d.ids.owns(t)),
            "every topic is recognised as ours on the next start"
        );

        assert!(d.plan(&snap, None).is_empty(), "nothing changed");

        let mut fewer = snap.clone();
        fewer.objects.remove(&Kind::DaemonSet);
        let cleared = d.plan(&fewer, None);
        assert!(
            cleared
                .iter()
                .any(|(t, p)| t == "bramble/v1/state/daemonset/home/agent" && p.is_empty()),
            "{cleared:?}"
        );
    }

    fn deploy(opted_in: bool) -> DeploymentView {
        DeploymentView {
            namespace: "home".into(),
            name: "web".into(),
            desired: 3,
            ready: 2,
            available: 2,
            updated: 3,
            opted_in,
            max_replicas: 10,
        }
    }

    /// The keys Home Assistant's MQTT discovery requires per component
    /// (home-assistant.io/integrations/<component>.mqtt), and those every
    /// entity of ours must have to be grouped and kept unique.
    fn check_schema(topic: &str, v: &Value) {
        let component = topic.split('/').nth(1).unwrap();
        let required: &[&str] = match component {
            "binary_sensor" | "sensor" => &["state_topic"],
            "number" | "button" => &["command_topic"],
            other => panic!("unexpected component {other}"),
        };
        for k in required
            .iter()
            .chain(&["unique_id", "name", "device", "availability"])
        {
            assert!(v.get(*k).is_some(), "{topic}: missing {k}: {v}");
        }
        assert!(
            v["device"]["identifiers"]
                .as_array()
                .is_some_and(|a| !a.is_empty())
        );
        for a in v["availability"].as_array().unwrap() {
            assert!(
                a["topic"].is_string(),
                "{topic}: availability without topic"
            );
        }
        for level in topic.split('/').skip(2).take(2) {
            assert!(
                level
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'),
                "{topic}"
            );
        }
    }

    #[test]
    fn configs_follow_the_schema_and_state_matches() {
        let want = desired(
            &ids(),
            &[node(Some(48.25))],
            &[deploy(true)],
            Some("bramble_abcdef_0123456789abcdef"),
        );
        let configs: Vec<(&String, Value)> = want
            .iter()
            .filter(|(t, _)| t.starts_with("homeassistant/"))
            .map(|(t, p)| (t, serde_json::from_str(p).unwrap()))
            .collect();
        assert_eq!(configs.len(), 4 + 3, "{:#?}", want.keys());
        for (t, v) in &configs {
            check_schema(t, v);
        }
        let node_state: Value = serde_json::from_str(&want["bramble/v1/state/node/pi1"]).unwrap();
        assert_eq!(node_state["ready"], "ON");
        assert_eq!(node_state["cpu_percent"], 12.5);
        assert_eq!(node_state["memory_mib"], 256.0);
        assert_eq!(node_state["temperature"], 48.3);
        let d: Value = serde_json::from_str(&want["bramble/v1/state/deployment/home/web"]).unwrap();
        assert_eq!(
            (d["desired"].as_i64(), d["ready"].as_i64()),
            (Some(3), Some(2))
        );
        assert_eq!(d["replicas"], "2/3");
        // The number's template renders to a JSON command the API accepts.
        let number: Value = serde_json::from_str(
            &want["homeassistant/number/bramble_0123abcd/deploy_home_web_scale/config"],
        )
        .unwrap();
        assert_eq!(number["command_topic"], "bramble/v1/api/scale");
        let rendered = number["command_template"]
            .as_str()
            .unwrap()
            .replace("{{ value | int }}", "4");
        let cmd: Value = serde_json::from_str(&rendered).unwrap();
        assert_eq!(cmd["replicas"], 4);
        assert_eq!(cmd["name"], "web");
        let button: Value = serde_json::from_str(
            &want["homeassistant/button/bramble_0123abcd/deploy_home_web_restart/config"],
        )
        .unwrap();
        let cmd: Value = serde_json::from_str(button["payload_press"].as_str().unwrap()).unwrap();
        assert_eq!(cmd["kind"], "Deployment");
    }

    #[test]
    fn no_temperature_no_opt_in_no_entities() {
        let want = desired(&ids(), &[node(None)], &[deploy(false)], Some("t"));
        assert!(!want.keys().any(|t| t.contains("temperature")));
        assert!(!want.keys().any(|t| t.contains("deploy_")));
        assert!(want.contains_key("bramble/v1/state/deployment/home/web"));
        // Without a token: the replicas sensor, no controls.
        let want = desired(&ids(), &[], &[deploy(true)], None);
        assert!(
            want.keys()
                .any(|t| t.ends_with("deploy_home_web_replicas/config"))
        );
        assert!(
            !want
                .keys()
                .any(|t| t.contains("/number/") || t.contains("/button/"))
        );
    }

    #[test]
    fn only_changes_go_out_and_gone_objects_are_cleared() {
        let mut d = Discovery::new(ids());
        let first = desired(&ids(), &[node(None)], &[deploy(true)], Some("t"));
        let n = first.len();
        assert_eq!(d.changes(first.clone()).len(), n);
        assert!(d.changes(first.clone()).is_empty());
        // A config an earlier run left, for an object now gone.
        let old = "homeassistant/sensor/bramble_0123abcd/node_gone_cpu/config";
        assert!(d.on_retained(old, b"{}"));
        // Our own echo is no news.
        assert!(!d.on_retained("bramble/v1/state/node/pi1", b"{}"));
        let without = desired(&ids(), &[node(None)], &[], Some("t"));
        let out = d.changes(without);
        let cleared: Vec<&str> = out
            .iter()
            .filter(|(_, p)| p.is_empty())
            .map(|(t, _)| t.as_str())
            .collect();
        assert!(cleared.contains(&old));
        assert!(cleared.contains(&"bramble/v1/state/deployment/home/web"));
        assert!(cleared.iter().any(|t| t.contains("deploy_home_web_scale")));
        assert!(out.iter().all(|(_, p)| p.is_empty()));
        assert!(d.ids.owns(old) && !d.ids.owns("homeassistant/sensor/other/x/config"));
    }
}
