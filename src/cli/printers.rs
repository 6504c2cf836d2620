//! kubectl's human output: the tables of `get` (same columns, same STATUS and
//! AGE rules, same tabwriter alignment as kubectl) and the text of `describe`.
//!
//! Owns: turning objects into text. Pure: the caller passes the objects, the
//! events and the current time, and prints the result. Must not touch: the
//! transport or the terminal.

use std::collections::{BTreeMap, BTreeSet};

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, ContainerState, Endpoints, Event, Namespace, Node, PersistentVolumeClaim,
    Pod, PodSpec, PodTemplateSpec, Secret, Service,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::api::selector::Selector;
use crate::api::{Kind, Object};

/// How `get` prints a table.
#[derive(Clone, Debug)]
pub struct TableOptions {
    /// `-o wide`: the extra columns.
    pub wide: bool,
    /// `-A`: a NAMESPACE column first (not for cluster-scoped kinds).
    pub with_namespace: bool,
    /// The time AGE is measured from.
    pub now: Timestamp,
    /// `--no-headers`.
    pub no_headers: bool,
    /// Print `kind/name` even when all objects are of one kind (`get all`,
    /// `get pods,svc`); objects of several kinds always are.
    pub show_kind: bool,
}

// kubectl's tabwriter settings for `get`.
const TABLE_MIN_WIDTH: usize = 6;
const TABLE_PADDING: usize = 3;
// And for `describe`.
const DESCRIBE_MIN_WIDTH: usize = 0;
const DESCRIBE_PADDING: usize = 2;

/// The `get` output for `objects`: one table per kind, in order of first
/// appearance, separated by a blank line. Empty input gives an empty string
/// (the caller says "No resources found").
pub fn table(objects: &[Object], opts: &TableOptions) -> String {
    let mut kinds: Vec<Kind> = Vec::new();
    for o in objects {
        if !kinds.contains(&o.kind()) {
            kinds.push(o.kind());
        }
    }
    let prefix_kind = opts.show_kind || kinds.len() > 1;
    let mut tables = Vec::new();
    for kind in kinds {
        let mut text = String::new();
        let namespace_col = opts.with_namespace && kind.namespaced();
        if !opts.no_headers {
            let mut header = headers(kind, opts.wide);
            if namespace_col {
                header.insert(0, "NAMESPACE");
            }
            text.push_str(&header.join("\t"));
            text.push('\n');
        }
        for o in objects.iter().filter(|o| o.kind() == kind) {
            let mut cells = row(o, opts);
            if prefix_kind {
                cells[0] = format!("{}/{}", kind.qualified(), cells[0]);
            }
            if namespace_col {
                cells.insert(0, o.namespace().to_string());
            }
            text.push_str(&cells.join("\t"));
            text.push('\n');
        }
        tables.push(tabwrite(&text, TABLE_MIN_WIDTH, TABLE_PADDING));
    }
    tables.join("\n")
}

fn headers(kind: Kind, wide: bool) -> Vec<&'static str> {
    let (mut base, extra): (Vec<&str>, &[&str]) = match kind {
        Kind::Pod => (
            vec!["NAME", "READY", "STATUS", "RESTARTS", "AGE"],
            &["IP", "NODE", "NOMINATED NODE", "READINESS GATES"],
        ),
        Kind::Deployment => (
            vec!["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"],
            &["CONTAINERS", "IMAGES", "SELECTOR"],
        ),
        Kind::ReplicaSet => (
            vec!["NAME", "DESIRED", "CURRENT", "READY", "AGE"],
            &["CONTAINERS", "IMAGES", "SELECTOR"],
        ),
        Kind::Service => (
            vec![
                "NAME",
                "TYPE",
                "CLUSTER-IP",
                "EXTERNAL-IP",
                "PORT(S)",
                "AGE",
            ],
            &["SELECTOR"],
        ),
        Kind::Endpoints => (vec!["NAME", "ENDPOINTS", "AGE"], &[]),
        Kind::ConfigMap => (vec!["NAME", "DATA", "AGE"], &[]),
        Kind::Secret => (vec!["NAME", "TYPE", "DATA", "AGE"], &[]),
        Kind::Event => (
            vec!["LAST SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"],
            &[],
        ),
        Kind::PersistentVolumeClaim => (
            vec![
                "NAME",
                "STATUS",
                "VOLUME",
                "CAPACITY",
                "ACCESS MODES",
                "STORAGECLASS",
                "AGE",
            ],
            &["VOLUMEMODE"],
        ),
        Kind::StatefulSet => (vec!["NAME", "READY", "AGE"], &["CONTAINERS", "IMAGES"]),
        Kind::DaemonSet => (
            vec![
                "NAME",
                "DESIRED",
                "CURRENT",
                "READY",
                "UP-TO-DATE",
                "AVAILABLE",
                "NODE SELECTOR",
                "AGE",
            ],
            &["CONTAINERS", "IMAGES", "SELECTOR"],
        ),
        Kind::Job => (
            vec!["NAME", "STATUS", "COMPLETIONS", "DURATION", "AGE"],
            &["CONTAINERS", "IMAGES", "SELECTOR"],
        ),
        Kind::CronJob => (
            vec![
                "NAME",
                "SCHEDULE",
                "TIMEZONE",
                "SUSPEND",
                "ACTIVE",
                "LAST SCHEDULE",
                "AGE",
            ],
            &["CONTAINERS", "IMAGES", "SELECTOR"],
        ),
        Kind::HorizontalPodAutoscaler => (
            vec![
                "NAME",
                "REFERENCE",
                "TARGETS",
                "MINPODS",
                "MAXPODS",
                "REPLICAS",
                "AGE",
            ],
            &[],
        ),
        Kind::Namespace => (vec!["NAME", "STATUS", "AGE"], &[]),
        Kind::ControllerRevision => (vec!["NAME", "CONTROLLER", "REVISION", "AGE"], &[]),
        Kind::Node => (
            vec!["NAME", "STATUS", "ROLES", "AGE", "VERSION"],
            &[
                "INTERNAL-IP",
                "EXTERNAL-IP",
                "OS-IMAGE",
                "KERNEL-VERSION",
                "CONTAINER-RUNTIME",
            ],
        ),
    };
    if wide {
        base.extend_from_slice(extra);
    }
    base
}

fn row(obj: &Object, opts: &TableOptions) -> Vec<String> {
    match obj {
        Object::Pod(p) => pod_row(p, opts),
        Object::Deployment(d) => deployment_row(d, opts),
        Object::ReplicaSet(rs) => replica_set_row(rs, opts),
        Object::Service(s) => service_row(s, opts),
        Object::Endpoints(e) => vec![
            name(&e.metadata),
            format_endpoints(e),
            age(&e.metadata, opts.now),
        ],
        Object::ConfigMap(c) => config_map_row(c, opts),
        Object::Namespace(n) => namespace_row(n, opts),
        Object::Node(n) => node_row(n, opts),
        Object::Secret(s) => vec![
            name(&s.metadata),
            s.type_.clone().unwrap_or_else(|| "Opaque".into()),
            (s.data.as_ref().map_or(0, |d| d.len())
                + s.string_data.as_ref().map_or(0, |d| d.len()))
            .to_string(),
            age(&s.metadata, opts.now),
        ],
        Object::Event(e) => event_row(e, opts),
        Object::StatefulSet(s) => stateful_set_row(s, opts),
        Object::DaemonSet(d) => daemon_set_row(d, opts),
        Object::Job(j) => job_row(j, opts),
        Object::CronJob(c) => cron_job_row(c, opts),
        Object::HorizontalPodAutoscaler(h) => hpa_row(h, opts),
        Object::PersistentVolumeClaim(c) => claim_row(c, opts),
        Object::ControllerRevision(r) => vec![
            name(&r.metadata),
            r.metadata
                .owner_references
                .iter()
                .flatten()
                .find(|o| o.controller == Some(true))
                .map(|o| {
                    let kind = crate::api::Kind::from_manifest(&o.kind)
                        .map_or_else(|| o.kind.to_ascii_lowercase(), |k| k.qualified());
                    format!("{kind}/{}", o.name)
                })
                .unwrap_or_else(|| "<none>".into()),
            r.revision.to_string(),
            age(&r.metadata, opts.now),
        ],
    }
}

/// kubectl's `get events` row: LAST SEEN, TYPE, REASON, OBJECT, MESSAGE.
fn event_row(e: &Event, opts: &TableOptions) -> Vec<String> {
    let last = e
        .last_timestamp
        .as_ref()
        .or(e.first_timestamp.as_ref())
        .or(e.metadata.creation_timestamp.as_ref());
    let involved = &e.involved_object;
    let object = format!(
        "{}/{}",
        involved.kind.as_deref().unwrap_or("").to_ascii_lowercase(),
        involved.name.as_deref().unwrap_or("")
    );
    vec![
        since(last, opts.now),
        e.type_.clone().unwrap_or_default(),
        e.reason.clone().unwrap_or_default(),
        object,
        e.message.clone().unwrap_or_default().replace('\n', " "),
    ]
}

fn name(meta: &ObjectMeta) -> String {
    meta.name.clone().unwrap_or_default()
}

fn age(meta: &ObjectMeta, now: Timestamp) -> String {
    since(meta.creation_timestamp.as_ref(), now)
}

/// kubectl's `translateTimestampSince`.
fn since(t: Option<&Time>, now: Timestamp) -> String {
    match t {
        None => "<unknown>".to_string(),
        Some(t) => human_duration(now.duration_since(t.0)),
    }
}

/// k8s.io/apimachinery's `duration.HumanDuration`: `45s`, `2m30s`, `10m`,
/// `3h4m`, `5d`, `2y`… precise for short durations, coarse for long ones.
pub fn human_duration(d: SignedDuration) -> String {
    let secs = d.as_secs();
    if secs < -1 {
        return "<invalid>".to_string();
    }
    if secs < 0 {
        return "0s".to_string();
    }
    if secs < 60 * 2 {
        return format!("{secs}s");
    }
    let minutes = secs / 60;
    if minutes < 10 {
        let s = secs % 60;
        return if s == 0 {
            format!("{minutes}m")
        } else {
            format!("{minutes}m{s}s")
        };
    }
    if minutes < 60 * 3 {
        return format!("{minutes}m");
    }
    let hours = secs / 3600;
    if hours < 8 {
        let m = minutes % 60;
        return if m == 0 {
            format!("{hours}h")
        } else {
            format!("{hours}h{m}m")
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 24 * 8 {
        let h = hours % 24;
        return if h == 0 {
            format!("{}d", hours / 24)
        } else {
            format!("{}d{h}h", hours / 24)
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    }
    if hours < 24 * 365 * 8 {
        let dy = (hours / 24) % 365;
        return if dy == 0 {
            format!("{}y", hours / 24 / 365)
        } else {
            format!("{}y{dy}d", hours / 24 / 365)
        };
    }
    format!("{}y", hours / 24 / 365)
}

fn or_none(s: String) -> String {
    if s.is_empty() {
        "<none>".to_string()
    } else {
        s
    }
}

// ---------------------------------------------------------------------------
// Pods

/// READY, STATUS and RESTARTS of a pod, computed as kubectl's `printPod` does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodSummary {
    pub ready: usize,
    pub total: usize,
    pub status: String,
    pub restarts: i32,
    /// When the most recent restart ended, for `2 (5m ago)`.
    pub last_restart: Option<Timestamp>,
}

pub fn pod_summary(pod: &Pod) -> PodSummary {
    let status = pod.status.clone().unwrap_or_default();
    let total = pod.spec.as_ref().map_or(0, |s| s.containers.len());
    let mut reason = status
        .phase
        .clone()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "Pending".to_string());
    if let Some(r) = status.reason.as_ref().filter(|r| !r.is_empty()) {
        reason = r.clone();
    }
    let mut restarts = 0;
    let mut ready = 0;
    let mut last_restart: Option<Timestamp> = None;
    let mut has_running = false;
    // Init containers first: while one has not completed, it is the status.
    let init_total = pod
        .spec
        .as_ref()
        .and_then(|s| s.init_containers.as_ref())
        .map_or(0, Vec::len);
    let mut initializing = false;
    for (i, cs) in status.init_container_statuses.iter().flatten().enumerate() {
        restarts += cs.restart_count;
        let state = cs.state.clone().unwrap_or_default();
        if let Some(t) = &state.terminated {
            if t.exit_code == 0 {
                continue;
            }
            reason = match t.reason.as_ref().filter(|r| !r.is_empty()) {
                Some(r) => format!("Init:{r}"),
                None => match t.signal.filter(|s| *s != 0) {
                    Some(sig) => format!("Init:Signal:{sig}"),
                    None => format!("Init:ExitCode:{}", t.exit_code),
                },
            };
        } else if let Some(r) = state
            .waiting
            .as_ref()
            .and_then(|w| w.reason.clone())
            .filter(|r| !r.is_empty() && r != "PodInitializing")
        {
            reason = format!("Init:{r}");
        } else {
            reason = format!("Init:{i}/{init_total}");
        }
        initializing = true;
        break;
    }
    // Last container first, so the first container's reason wins, as in kubectl.
    let app_statuses = if initializing {
        &[][..]
    } else {
        status.container_statuses.as_deref().unwrap_or(&[])
    };
    for cs in app_statuses.iter().rev() {
        restarts += cs.restart_count;
        let finished = cs
            .last_state
            .as_ref()
            .and_then(|s| s.terminated.as_ref())
            .and_then(|t| t.finished_at.as_ref());
        if let Some(f) = finished.filter(|f| last_restart.is_none_or(|l| l < f.0)) {
            last_restart = Some(f.0);
        }
        let state = cs.state.clone().unwrap_or_default();
        let waiting_reason = state
            .waiting
            .as_ref()
            .and_then(|w| w.reason.clone())
            .filter(|r| !r.is_empty());
        if let Some(r) = waiting_reason {
            reason = r;
        } else if let Some(t) = &state.terminated {
            reason = match t.reason.as_ref().filter(|r| !r.is_empty()) {
                Some(r) => r.clone(),
                None => match t.signal.filter(|s| *s != 0) {
                    Some(sig) => format!("Signal:{sig}"),
                    None => format!("ExitCode:{}", t.exit_code),
                },
            };
        } else if cs.ready && state.running.is_some() {
            has_running = true;
            ready += 1;
        }
    }
    if reason == "Completed" && has_running {
        let pod_ready = status
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        reason = if pod_ready { "Running" } else { "NotReady" }.to_string();
    }
    let terminal = matches!(status.phase.as_deref(), Some("Succeeded") | Some("Failed"));
    if pod.metadata.deletion_timestamp.is_some() {
        if status.reason.as_deref() == Some("NodeLost") {
            reason = "Unknown".to_string();
        } else if !terminal {
            reason = "Terminating".to_string();
        }
    }
    PodSummary {
        ready,
        total,
        status: reason,
        restarts,
        last_restart,
    }
}

fn pod_row(pod: &Pod, opts: &TableOptions) -> Vec<String> {
    let s = pod_summary(pod);
    let restarts = match s.last_restart {
        Some(t) if s.restarts != 0 => {
            format!(
                "{} ({} ago)",
                s.restarts,
                human_duration(opts.now.duration_since(t))
            )
        }
        _ => s.restarts.to_string(),
    };
    let mut cells = vec![
        name(&pod.metadata),
        format!("{}/{}", s.ready, s.total),
        s.status,
        restarts,
        age(&pod.metadata, opts.now),
    ];
    if opts.wide {
        let status = pod.status.clone().unwrap_or_default();
        let ip = status
            .pod_ips
            .as_ref()
            .and_then(|ips| ips.first())
            .map(|ip| ip.ip.clone())
            .or(status.pod_ip.clone())
            .unwrap_or_default();
        let node = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();
        let gates = pod
            .spec
            .as_ref()
            .and_then(|s| s.readiness_gates.clone())
            .unwrap_or_default();
        let gates = if gates.is_empty() {
            "<none>".to_string()
        } else {
            let conds = status.conditions.clone().unwrap_or_default();
            let true_count = gates
                .iter()
                .filter(|g| {
                    conds
                        .iter()
                        .any(|c| c.type_ == g.condition_type && c.status == "True")
                })
                .count();
            format!("{true_count}/{}", gates.len())
        };
        cells.extend([
            or_none(ip),
            or_none(node),
            or_none(status.nominated_node_name.unwrap_or_default()),
            gates,
        ]);
    }
    cells
}

// ---------------------------------------------------------------------------
// Workloads

fn containers_and_images(template: Option<&PodTemplateSpec>) -> (String, String) {
    let containers = template
        .and_then(|t| t.spec.as_ref())
        .map(|s| s.containers.as_slice())
        .unwrap_or_default();
    let names: Vec<&str> = containers.iter().map(|c| c.name.as_str()).collect();
    let images: Vec<&str> = containers
        .iter()
        .map(|c| c.image.as_deref().unwrap_or(""))
        .collect();
    (names.join(","), images.join(","))
}

/// kubectl's `FormatLabelSelector`.
fn format_label_selector(sel: Option<&LabelSelector>) -> String {
    match sel.map(Selector::from_label_selector) {
        None => "<none>".to_string(),
        Some(Err(_)) => "<error>".to_string(),
        Some(Ok(s)) => or_none(s.to_string()),
    }
}

/// kubectl's `labels.FormatLabels`: `a=1,b=2`, or `<none>`.
fn format_labels(labels: Option<&BTreeMap<String, String>>) -> String {
    let pairs: Vec<String> = labels
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    or_none(pairs.join(","))
}

fn deployment_row(d: &Deployment, opts: &TableOptions) -> Vec<String> {
    let spec = d.spec.clone().unwrap_or_default();
    let status = d.status.clone().unwrap_or_default();
    let desired = spec.replicas.unwrap_or(1);
    let mut cells = vec![
        name(&d.metadata),
        format!("{}/{desired}", status.ready_replicas.unwrap_or(0)),
        status.updated_replicas.unwrap_or(0).to_string(),
        status.available_replicas.unwrap_or(0).to_string(),
        age(&d.metadata, opts.now),
    ];
    if opts.wide {
        let (containers, images) = containers_and_images(Some(&spec.template));
        cells.extend([
            containers,
            images,
            format_label_selector(Some(&spec.selector)),
        ]);
    }
    cells
}

fn replica_set_row(rs: &ReplicaSet, opts: &TableOptions) -> Vec<String> {
    let spec = rs.spec.clone().unwrap_or_default();
    let status = rs.status.clone().unwrap_or_default();
    let mut cells = vec![
        name(&rs.metadata),
        spec.replicas.unwrap_or(1).to_string(),
        status.replicas.to_string(),
        status.ready_replicas.unwrap_or(0).to_string(),
        age(&rs.metadata, opts.now),
    ];
    if opts.wide {
        let (containers, images) = containers_and_images(spec.template.as_ref());
        cells.extend([
            containers,
            images,
            format_label_selector(Some(&spec.selector)),
        ]);
    }
    cells
}

fn stateful_set_row(s: &StatefulSet, opts: &TableOptions) -> Vec<String> {
    let spec = s.spec.clone().unwrap_or_default();
    let status = s.status.clone().unwrap_or_default();
    let mut cells = vec![
        name(&s.metadata),
        format!(
            "{}/{}",
            status.ready_replicas.unwrap_or(0),
            spec.replicas.unwrap_or(1)
        ),
        age(&s.metadata, opts.now),
    ];
    if opts.wide {
        let (containers, images) = containers_and_images(Some(&spec.template));
        cells.extend([containers, images]);
    }
    cells
}

fn daemon_set_row(d: &DaemonSet, opts: &TableOptions) -> Vec<String> {
    let spec = d.spec.clone().unwrap_or_default();
    let st = d.status.clone().unwrap_or_default();
    let selector = spec
        .template
        .spec
        .as_ref()
        .and_then(|s| s.node_selector.as_ref());
    let mut cells = vec![
        name(&d.metadata),
        st.desired_number_scheduled.to_string(),
        st.current_number_scheduled.to_string(),
        st.number_ready.to_string(),
        st.updated_number_scheduled.unwrap_or(0).to_string(),
        st.number_available.unwrap_or(0).to_string(),
        format_labels(selector),
        age(&d.metadata, opts.now),
    ];
    if opts.wide {
        let (containers, images) = containers_and_images(Some(&spec.template));
        cells.extend([
            containers,
            images,
            format_label_selector(Some(&spec.selector)),
        ]);
    }
    cells
}

/// kubectl's Job STATUS column.
pub fn job_status(j: &Job) -> String {
    let st = j.status.clone().unwrap_or_default();
    let has = |t: &str| {
        st.conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == t && c.status == "True")
    };
    if has("Complete") {
        "Complete"
    } else if has("Failed") {
        "Failed"
    } else if j.metadata.deletion_timestamp.is_some() {
        "Terminating"
    } else if has("FailureTarget") {
        "FailureTarget"
    } else if has("SuccessCriteriaMet") {
        "SuccessCriteriaMet"
    } else if j.spec.as_ref().and_then(|s| s.suspend) == Some(true) {
        "Suspended"
    } else {
        "Running"
    }
    .to_string()
}

fn job_row(j: &Job, opts: &TableOptions) -> Vec<String> {
    let spec = j.spec.clone().unwrap_or_default();
    let st = j.status.clone().unwrap_or_default();
    let succeeded = st.succeeded.unwrap_or(0);
    let completions = match spec.completions {
        Some(c) => format!("{succeeded}/{c}"),
        None => {
            let p = spec.parallelism.unwrap_or(1);
            if p > 1 {
                format!("{succeeded}/1 of {p}")
            } else {
                format!("{succeeded}/1")
            }
        }
    };
    let duration = match (&st.start_time, &st.completion_time) {
        (Some(s), Some(c)) => human_duration(c.0.duration_since(s.0)),
        (Some(s), None) => human_duration(opts.now.duration_since(s.0)),
        _ => String::new(),
    };
    let mut cells = vec![
        name(&j.metadata),
        job_status(j),
        completions,
        duration,
        age(&j.metadata, opts.now),
    ];
    if opts.wide {
        let (containers, images) = containers_and_images(Some(&spec.template));
        cells.extend([
            containers,
            images,
            format_label_selector(spec.selector.as_ref()),
        ]);
    }
    cells
}

fn cron_job_row(c: &CronJob, opts: &TableOptions) -> Vec<String> {
    let spec = c.spec.clone().unwrap_or_default();
    let st = c.status.clone().unwrap_or_default();
    let suspend = if spec.suspend == Some(true) {
        "True"
    } else {
        "False"
    };
    let last = match &st.last_schedule_time {
        Some(t) => since(Some(t), opts.now),
        None => "<none>".into(),
    };
    let mut cells = vec![
        name(&c.metadata),
        spec.schedule.clone(),
        spec.time_zone.clone().unwrap_or_else(|| "<none>".into()),
        suspend.into(),
        st.active.as_ref().map_or(0, Vec::len).to_string(),
        last,
        age(&c.metadata, opts.now),
    ];
    if opts.wide {
        let t = spec.job_template.spec.as_ref().map(|s| s.template.clone());
        let (containers, images) = containers_and_images(t.as_ref());
        let sel = spec
            .job_template
            .spec
            .as_ref()
            .and_then(|s| s.selector.as_ref());
        cells.extend([containers, images, format_label_selector(sel)]);
    }
    cells
}

/// kubectl's HPA TARGETS: `cpu: 45%/50%, memory: 10Mi/100Mi`.
pub fn hpa_targets(h: &HorizontalPodAutoscaler) -> String {
    let spec = h.spec.clone().unwrap_or_default();
    let current = h
        .status
        .as_ref()
        .and_then(|s| s.current_metrics.clone())
        .unwrap_or_default();
    let mut parts = Vec::new();
    for m in spec.metrics.iter().flatten() {
        let Some(r) = m.resource.as_ref().filter(|_| m.type_ == "Resource") else {
            parts.push(format!("<unknown>/{}", m.type_));
            continue;
        };
        let cur = current
            .iter()
            .filter_map(|c| c.resource.as_ref())
            .find(|c| c.name == r.name);
        let text = match r.target.type_.as_str() {
            "Utilization" => format!(
                "{}/{}%",
                cur.and_then(|c| c.current.average_utilization)
                    .map_or("<unknown>".to_string(), |v| format!("{v}%")),
                r.target.average_utilization.unwrap_or(0)
            ),
            _ => format!(
                "{}/{}",
                cur.and_then(|c| c.current.average_value.as_ref())
                    .map_or("<unknown>".to_string(), |q| q.0.clone()),
                r.target
                    .average_value
                    .as_ref()
                    .map_or(String::new(), |q| q.0.clone())
            ),
        };
        parts.push(format!("{}: {text}", r.name));
    }
    if parts.is_empty() {
        return "<none>".into();
    }
    parts.join(", ")
}

fn hpa_row(h: &HorizontalPodAutoscaler, opts: &TableOptions) -> Vec<String> {
    let spec = h.spec.clone().unwrap_or_default();
    let st = h.status.clone().unwrap_or_default();
    vec![
        name(&h.metadata),
        format!(
            "{}/{}",
            spec.scale_target_ref.kind, spec.scale_target_ref.name
        ),
        hpa_targets(h),
        spec.min_replicas.unwrap_or(1).to_string(),
        spec.max_replicas.to_string(),
        st.current_replicas.unwrap_or(0).to_string(),
        age(&h.metadata, opts.now),
    ]
}

/// `RWO,ROX`.
fn access_modes(modes: Option<&Vec<String>>) -> String {
    modes
        .into_iter()
        .flatten()
        .map(|m| match m.as_str() {
            "ReadWriteOnce" => "RWO",
            "ReadOnlyMany" => "ROX",
            "ReadWriteMany" => "RWX",
            "ReadWriteOncePod" => "RWOP",
            other => other,
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn claim_row(c: &PersistentVolumeClaim, opts: &TableOptions) -> Vec<String> {
    let spec = c.spec.clone().unwrap_or_default();
    let st = c.status.clone().unwrap_or_default();
    let bound = st.phase.as_deref() == Some("Bound");
    let mut cells = vec![
        name(&c.metadata),
        st.phase.clone().unwrap_or_else(|| "Pending".into()),
        spec.volume_name.clone().unwrap_or_default(),
        if bound {
            st.capacity
                .as_ref()
                .and_then(|c| c.get("storage"))
                .map_or(String::new(), |q| q.0.clone())
        } else {
            String::new()
        },
        if bound {
            access_modes(st.access_modes.as_ref())
        } else {
            String::new()
        },
        spec.storage_class_name.clone().unwrap_or_default(),
        age(&c.metadata, opts.now),
    ];
    if opts.wide {
        cells.push(spec.volume_mode.unwrap_or_else(|| "Filesystem".into()));
    }
    cells
}

// ---------------------------------------------------------------------------
// Services, Endpoints, ConfigMaps, Namespaces, Nodes

fn service_ports(s: &Service) -> String {
    let pieces: Vec<String> = s
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .into_iter()
        .flatten()
        .map(|p| {
            let proto = p.protocol.as_deref().unwrap_or("TCP");
            match p.node_port.filter(|n| *n > 0) {
                Some(np) => format!("{}:{np}/{proto}", p.port),
                None => format!("{}/{proto}", p.port),
            }
        })
        .collect();
    or_none(pieces.join(","))
}

fn service_row(s: &Service, opts: &TableOptions) -> Vec<String> {
    let spec = s.spec.clone().unwrap_or_default();
    let type_ = spec.type_.clone().unwrap_or_else(|| "ClusterIP".into());
    let cluster_ip = spec
        .cluster_ips
        .as_ref()
        .and_then(|ips| ips.first().cloned())
        .or(spec.cluster_ip.clone())
        .unwrap_or_default();
    let external_ips = spec.external_ips.clone().unwrap_or_default().join(",");
    let external = match type_.as_str() {
        "ExternalName" => spec.external_name.clone().unwrap_or_default(),
        "LoadBalancer" => {
            let ingress: Vec<String> = s
                .status
                .as_ref()
                .and_then(|st| st.load_balancer.as_ref())
                .and_then(|lb| lb.ingress.as_ref())
                .into_iter()
                .flatten()
                .filter_map(|i| i.ip.clone().or(i.hostname.clone()))
                .chain(spec.external_ips.clone().unwrap_or_default())
                .collect();
            if ingress.is_empty() {
                "<pending>".to_string()
            } else {
                ingress.join(",")
            }
        }
        _ => or_none(external_ips),
    };
    let mut cells = vec![
        name(&s.metadata),
        type_,
        or_none(cluster_ip),
        external,
        service_ports(s),
        age(&s.metadata, opts.now),
    ];
    if opts.wide {
        cells.push(format_labels(spec.selector.as_ref()));
    }
    cells
}

/// kubectl's `formatEndpoints`: `ip:port` pairs, at most three, then
/// ` + N more...`.
pub fn format_endpoints(e: &Endpoints) -> String {
    const MAX: usize = 3;
    let Some(subsets) = e.subsets.as_ref().filter(|s| !s.is_empty()) else {
        return "<none>".to_string();
    };
    let mut list: Vec<String> = Vec::new();
    let mut count = 0;
    let mut more = false;
    for ss in subsets {
        let addresses = ss.addresses.as_deref().unwrap_or_default();
        let ports = ss.ports.as_deref().unwrap_or_default();
        if ports.is_empty() {
            count += addresses.len();
            for a in addresses {
                if list.len() == MAX {
                    more = true;
                    break;
                }
                list.push(a.ip.clone());
            }
            continue;
        }
        for p in ports {
            count += addresses.len();
            for a in addresses {
                if list.len() == MAX {
                    more = true;
                    break;
                }
                list.push(format!("{}:{}", a.ip, p.port));
            }
        }
    }
    let joined = list.join(",");
    if more {
        format!("{joined} + {} more...", count - MAX)
    } else {
        joined
    }
}

fn config_map_row(c: &ConfigMap, opts: &TableOptions) -> Vec<String> {
    let n =
        c.data.as_ref().map_or(0, BTreeMap::len) + c.binary_data.as_ref().map_or(0, BTreeMap::len);
    vec![name(&c.metadata), n.to_string(), age(&c.metadata, opts.now)]
}

fn namespace_row(n: &Namespace, opts: &TableOptions) -> Vec<String> {
    let phase = n
        .status
        .as_ref()
        .and_then(|s| s.phase.clone())
        .unwrap_or_default();
    vec![name(&n.metadata), phase, age(&n.metadata, opts.now)]
}

/// `Ready`, `NotReady`, `Unknown`, plus `,SchedulingDisabled`.
pub fn node_status(n: &Node) -> String {
    let ready = n
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().rev().find(|c| c.type_ == "Ready"));
    let mut status = vec![match ready {
        Some(c) if c.status == "True" => "Ready",
        Some(_) => "NotReady",
        None => "Unknown",
    }];
    if n.spec.as_ref().and_then(|s| s.unschedulable) == Some(true) {
        status.push("SchedulingDisabled");
    }
    status.join(",")
}

/// Roles from `node-role.kubernetes.io/<role>` and `kubernetes.io/role` labels.
fn node_roles(n: &Node) -> String {
    let mut roles = BTreeSet::new();
    for (k, v) in n.metadata.labels.iter().flatten() {
        if let Some(role) = k.strip_prefix("node-role.kubernetes.io/") {
            if !role.is_empty() {
                roles.insert(role.to_string());
            }
        } else if k == "kubernetes.io/role" && !v.is_empty() {
            roles.insert(v.clone());
        }
    }
    or_none(roles.into_iter().collect::<Vec<_>>().join(","))
}

fn node_address(n: &Node, type_: &str) -> String {
    n.status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .and_then(|a| a.iter().find(|a| a.type_ == type_))
        .map(|a| a.address.clone())
        .unwrap_or_else(|| "<none>".to_string())
}

fn node_row(n: &Node, opts: &TableOptions) -> Vec<String> {
    let info = n
        .status
        .as_ref()
        .and_then(|s| s.node_info.clone())
        .unwrap_or_default();
    let mut cells = vec![
        name(&n.metadata),
        node_status(n),
        node_roles(n),
        age(&n.metadata, opts.now),
        info.kubelet_version.clone(),
    ];
    if opts.wide {
        let unknown = |s: String| {
            if s.is_empty() {
                "<unknown>".to_string()
            } else {
                s
            }
        };
        cells.extend([
            node_address(n, "InternalIP"),
            node_address(n, "ExternalIP"),
            unknown(info.os_image),
            unknown(info.kernel_version),
            unknown(info.container_runtime_version),
        ]);
    }
    cells
}

// ---------------------------------------------------------------------------
// Go's text/tabwriter (elastic tabstops), as kubectl uses it.

/// Aligns tab-separated cells. A cell is text followed by a tab; the text after
/// a line's last tab is not part of a column and is never padded. A column
/// block is a run of consecutive lines that have a cell in that column; each
/// block is as wide as its widest cell plus `padding`, at least `min_width`.
pub fn tabwrite(text: &str, min_width: usize, padding: usize) -> String {
    let lines: Vec<Vec<&str>> = text
        .split_terminator('\n')
        .map(|l| l.split('\t').collect())
        .collect();
    let mut out = String::new();
    let mut widths = Vec::new();
    let tw = TabWriter {
        lines: &lines,
        min_width,
        padding,
    };
    tw.format(&mut out, &mut widths, 0, lines.len());
    out
}

struct TabWriter<'a> {
    lines: &'a [Vec<&'a str>],
    min_width: usize,
    padding: usize,
}

impl TabWriter<'_> {
    fn has_cell(&self, line: usize, column: usize) -> bool {
        column + 1 < self.lines[line].len()
    }

    fn format(&self, out: &mut String, widths: &mut Vec<usize>, mut line0: usize, line1: usize) {
        let column = widths.len();
        let mut this = line0;
        while this < line1 {
            if !self.has_cell(this, column) {
                this += 1;
                continue;
            }
            self.write_lines(out, widths, line0, this);
            line0 = this;
            let mut width = self.min_width;
            while this < line1 && self.has_cell(this, column) {
                width = width.max(self.lines[this][column].chars().count() + self.padding);
                this += 1;
            }
            widths.push(width);
            self.format(out, widths, line0, this);
            widths.pop();
            line0 = this;
        }
        self.write_lines(out, widths, line0, line1);
    }

    fn write_lines(&self, out: &mut String, widths: &[usize], line0: usize, line1: usize) {
        for line in &self.lines[line0..line1] {
            for (j, cell) in line.iter().enumerate() {
                out.push_str(cell);
                if let Some(w) = widths.get(j).filter(|_| j + 1 < line.len()) {
                    let pad = w.saturating_sub(cell.chars().count());
                    out.extend(std::iter::repeat_n(' ', pad));
                }
            }
            out.push('\n');
        }
    }
}

// ---------------------------------------------------------------------------
// describe

/// kubectl-describe-like text for one object. `events` are printed under
/// `Events:` one per line (tabs in them align as columns), or `<none>`.
pub fn describe(obj: &Object, events: &[String], now: Timestamp) -> String {
    let mut w = Describe::default();
    match obj {
        Object::Pod(p) => describe_pod(&mut w, p, now),
        Object::Deployment(d) => describe_deployment(&mut w, d),
        Object::ReplicaSet(rs) => describe_replica_set(&mut w, rs),
        Object::Service(s) => describe_service(&mut w, s),
        Object::Endpoints(e) => describe_endpoints(&mut w, e),
        Object::ConfigMap(c) => describe_config_map(&mut w, c),
        Object::Namespace(n) => describe_namespace(&mut w, n),
        Object::Node(n) => describe_node(&mut w, n),
        Object::Secret(s) => describe_secret(&mut w, s),
        Object::StatefulSet(s) => describe_stateful_set(&mut w, s),
        Object::DaemonSet(d) => describe_daemon_set(&mut w, d),
        Object::Job(j) => describe_job(&mut w, j, now),
        Object::CronJob(c) => describe_cron_job(&mut w, c, now),
        Object::HorizontalPodAutoscaler(h) => describe_hpa(&mut w, h),
        Object::PersistentVolumeClaim(c) => describe_claim(&mut w, c),
        other => {
            w.meta(other.meta(), other.kind().namespaced());
        }
    }
    if events.is_empty() {
        w.line(0, "Events:\t<none>");
    } else {
        w.line(0, "Events:");
        for e in events {
            w.line(1, e);
        }
    }
    tabwrite(&w.text, DESCRIBE_MIN_WIDTH, DESCRIBE_PADDING)
}

/// Lines with kubectl's describe indentation (two spaces a level).
#[derive(Default)]
struct Describe {
    text: String,
}

impl Describe {
    fn line(&mut self, level: usize, s: &str) {
        for _ in 0..level {
            self.text.push_str("  ");
        }
        self.text.push_str(s);
        self.text.push('\n');
    }

    fn field(&mut self, level: usize, key: &str, value: impl std::fmt::Display) {
        self.line(level, &format!("{key}:\t{value}"));
    }

    /// `Labels:  a=1` then one more line per label, or `<none>`.
    fn map(&mut self, level: usize, key: &str, map: Option<&BTreeMap<String, String>>, sep: &str) {
        let entries: Vec<String> = map
            .into_iter()
            .flatten()
            .filter(|(k, _)| *k != "kubectl.kubernetes.io/last-applied-configuration")
            .map(|(k, v)| format!("{k}{sep}{v}"))
            .collect();
        match entries.split_first() {
            None => self.field(level, key, "<none>"),
            Some((first, rest)) => {
                self.field(level, key, first);
                for e in rest {
                    self.line(level, &format!("\t{e}"));
                }
            }
        }
    }

    fn meta(&mut self, meta: &ObjectMeta, namespaced: bool) {
        self.field(0, "Name", meta.name.as_deref().unwrap_or(""));
        if namespaced {
            self.field(
                0,
                "Namespace",
                meta.namespace.as_deref().unwrap_or("default"),
            );
        }
        if let Some(t) = &meta.creation_timestamp {
            self.field(0, "CreationTimestamp", format_time(t));
        }
        self.map(0, "Labels", meta.labels.as_ref(), "=");
        self.map(0, "Annotations", meta.annotations.as_ref(), ": ");
    }

    fn controlled_by(&mut self, meta: &ObjectMeta) {
        let owner = meta
            .owner_references
            .iter()
            .flatten()
            .find(|o| o.controller == Some(true));
        if let Some(o) = owner {
            self.field(0, "Controlled By", format!("{}/{}", o.kind, o.name));
        }
    }
}

/// kubectl's describe time format (RFC 1123 with a numeric zone), in UTC.
fn format_time(t: &Time) -> String {
    t.0.strftime("%a, %d %b %Y %H:%M:%S %z").to_string()
}

fn container_ports(c: &Container) -> String {
    let ports: Vec<String> = c
        .ports
        .iter()
        .flatten()
        .map(|p| {
            format!(
                "{}/{}",
                p.container_port,
                p.protocol.as_deref().unwrap_or("TCP")
            )
        })
        .collect();
    or_none(ports.join(", "))
}

fn describe_containers(w: &mut Describe, level: usize, spec: &PodSpec, pod: Option<&Pod>) {
    w.line(level, "Containers:");
    let statuses = pod
        .and_then(|p| p.status.as_ref())
        .and_then(|s| s.container_statuses.clone())
        .unwrap_or_default();
    for c in &spec.containers {
        let l = level + 1;
        w.line(l, &format!("{}:", c.name));
        let status = statuses.iter().find(|s| s.name == c.name);
        if let Some(id) = status.and_then(|s| s.container_id.as_deref()) {
            w.field(l + 1, "Container ID", id);
        }
        w.field(l + 1, "Image", c.image.as_deref().unwrap_or(""));
        w.field(l + 1, "Port", container_ports(c));
        for (label, list) in [("Command", &c.command), ("Args", &c.args)] {
            if let Some(list) = list.as_ref().filter(|l| !l.is_empty()) {
                w.line(l + 1, &format!("{label}:"));
                for item in list {
                    w.line(l + 2, item);
                }
            }
        }
        if let Some(dir) = c.working_dir.as_deref() {
            w.field(l + 1, "Working Dir", dir);
        }
        if let Some(s) = status {
            describe_state(w, l + 1, "State", s.state.as_ref());
            if s.last_state.as_ref().is_some_and(|ls| {
                ls.running.is_some() || ls.terminated.is_some() || ls.waiting.is_some()
            }) {
                describe_state(w, l + 1, "Last State", s.last_state.as_ref());
            }
            w.field(l + 1, "Ready", if s.ready { "True" } else { "False" });
            w.field(l + 1, "Restart Count", s.restart_count);
        }
        let env = c.env.clone().unwrap_or_default();
        if env.is_empty() {
            w.field(l + 1, "Environment", "<none>");
        } else {
            w.line(l + 1, "Environment:");
            for e in env {
                let value = match (&e.value, &e.value_from) {
                    (Some(v), _) => v.clone(),
                    (None, Some(_)) => "<set from a source Bramble does not implement>".into(),
                    (None, None) => String::new(),
                };
                w.field(l + 2, &e.name, value);
            }
        }
    }
}

fn describe_state(w: &mut Describe, level: usize, label: &str, state: Option<&ContainerState>) {
    let Some(state) = state else {
        w.field(level, label, "Waiting");
        return;
    };
    if let Some(r) = &state.running {
        w.field(level, label, "Running");
        if let Some(t) = &r.started_at {
            w.field(level + 1, "Started", format_time(t));
        }
    } else if let Some(t) = &state.terminated {
        w.field(level, label, "Terminated");
        if let Some(r) = &t.reason {
            w.field(level + 1, "Reason", r);
        }
        if let Some(m) = &t.message {
            w.field(level + 1, "Message", m);
        }
        w.field(level + 1, "Exit Code", t.exit_code);
        if let Some(s) = t.signal.filter(|s| *s != 0) {
            w.field(level + 1, "Signal", s);
        }
        if let Some(s) = &t.started_at {
            w.field(level + 1, "Started", format_time(s));
        }
        if let Some(f) = &t.finished_at {
            w.field(level + 1, "Finished", format_time(f));
        }
    } else if let Some(wt) = &state.waiting {
        w.field(level, label, "Waiting");
        if let Some(r) = &wt.reason {
            w.field(level + 1, "Reason", r);
        }
        if let Some(m) = &wt.message {
            w.field(level + 1, "Message", m);
        }
    } else {
        w.field(level, label, "Waiting");
    }
}

fn describe_pod(w: &mut Describe, p: &Pod, now: Timestamp) {
    let spec = p.spec.clone().unwrap_or_default();
    let status = p.status.clone().unwrap_or_default();
    w.field(0, "Name", p.metadata.name.as_deref().unwrap_or(""));
    w.field(
        0,
        "Namespace",
        p.metadata.namespace.as_deref().unwrap_or("default"),
    );
    let node = match (&spec.node_name, &status.host_ip) {
        (Some(n), Some(ip)) => format!("{n}/{ip}"),
        (Some(n), None) => n.clone(),
        _ => "<none>".to_string(),
    };
    w.field(0, "Node", node);
    if let Some(t) = &status.start_time {
        w.field(0, "Start Time", format_time(t));
    }
    w.map(0, "Labels", p.metadata.labels.as_ref(), "=");
    w.map(0, "Annotations", p.metadata.annotations.as_ref(), ": ");
    let phase = status.phase.clone().unwrap_or_else(|| "Pending".into());
    match &p.metadata.deletion_timestamp {
        Some(t) => {
            let grace = p.metadata.deletion_grace_period_seconds.unwrap_or(0);
            w.field(
                0,
                "Status",
                format!(
                    "Terminating (lasts {})",
                    human_duration(now.duration_since(t.0) + SignedDuration::from_secs(grace))
                ),
            );
        }
        None => w.field(0, "Status", &phase),
    }
    if let Some(r) = &status.reason {
        w.field(0, "Reason", r);
    }
    if let Some(m) = &status.message {
        w.field(0, "Message", m);
    }
    w.field(0, "IP", status.pod_ip.clone().unwrap_or_default());
    w.controlled_by(&p.metadata);
    describe_containers(w, 0, &spec, Some(p));
    let conditions = status.conditions.clone().unwrap_or_default();
    if !conditions.is_empty() {
        w.line(0, "Conditions:");
        w.line(1, "Type\tStatus");
        for c in conditions {
            w.line(1, &format!("{}\t{}", c.type_, c.status));
        }
    }
    w.field(
        0,
        "Node-Selectors",
        format_labels(spec.node_selector.as_ref()),
    );
}

fn describe_template(w: &mut Describe, t: Option<&PodTemplateSpec>) {
    w.line(0, "Pod Template:");
    let labels = t
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.labels.as_ref());
    w.map(1, "Labels", labels, "=");
    let spec = t.and_then(|t| t.spec.clone()).unwrap_or_default();
    describe_containers(w, 1, &spec, None);
}

fn describe_conditions<C>(w: &mut Describe, conditions: &[C], parts: impl Fn(&C) -> [String; 3]) {
    if conditions.is_empty() {
        return;
    }
    w.line(0, "Conditions:");
    w.line(1, "Type\tStatus\tReason");
    w.line(1, "----\t------\t------");
    for c in conditions {
        let [t, s, r] = parts(c);
        w.line(1, &format!("{t}\t{s}\t{r}"));
    }
}

fn describe_deployment(w: &mut Describe, d: &Deployment) {
    let spec = d.spec.clone().unwrap_or_default();
    let status = d.status.clone().unwrap_or_default();
    w.meta(&d.metadata, true);
    w.field(0, "Selector", format_label_selector(Some(&spec.selector)));
    w.field(
        0,
        "Replicas",
        format!(
            "{} desired | {} updated | {} total | {} available | {} unavailable",
            spec.replicas.unwrap_or(1),
            status.updated_replicas.unwrap_or(0),
            status.replicas.unwrap_or(0),
            status.available_replicas.unwrap_or(0),
            status.unavailable_replicas.unwrap_or(0),
        ),
    );
    let strategy = spec.strategy.clone().unwrap_or_default();
    let type_ = strategy
        .type_
        .clone()
        .unwrap_or_else(|| "RollingUpdate".into());
    w.field(0, "StrategyType", &type_);
    w.field(0, "MinReadySeconds", spec.min_ready_seconds.unwrap_or(0));
    if let Some(ru) = strategy
        .rolling_update
        .as_ref()
        .filter(|_| type_ == "RollingUpdate")
    {
        let show = |v: &Option<IntOrString>| match v {
            Some(IntOrString::Int(i)) => i.to_string(),
            Some(IntOrString::String(s)) => s.clone(),
            None => "25%".to_string(),
        };
        w.field(
            0,
            "RollingUpdateStrategy",
            format!(
                "{} max unavailable, {} max surge",
                show(&ru.max_unavailable),
                show(&ru.max_surge)
            ),
        );
    }
    if spec.paused == Some(true) {
        w.field(0, "Paused", "true");
    }
    describe_template(w, Some(&spec.template));
    describe_conditions(w, status.conditions.as_deref().unwrap_or_default(), |c| {
        [
            c.type_.clone(),
            c.status.clone(),
            c.reason.clone().unwrap_or_default(),
        ]
    });
}

fn describe_replica_set(w: &mut Describe, rs: &ReplicaSet) {
    let spec = rs.spec.clone().unwrap_or_default();
    let status = rs.status.clone().unwrap_or_default();
    w.meta(&rs.metadata, true);
    w.field(0, "Selector", format_label_selector(Some(&spec.selector)));
    w.controlled_by(&rs.metadata);
    w.field(
        0,
        "Replicas",
        format!(
            "{} current / {} desired",
            status.replicas,
            spec.replicas.unwrap_or(1)
        ),
    );
    w.field(
        0,
        "Pods Status",
        format!(
            "{} Ready / {} Available",
            status.ready_replicas.unwrap_or(0),
            status.available_replicas.unwrap_or(0)
        ),
    );
    describe_template(w, spec.template.as_ref());
    describe_conditions(w, status.conditions.as_deref().unwrap_or_default(), |c| {
        [
            c.type_.clone(),
            c.status.clone(),
            c.reason.clone().unwrap_or_default(),
        ]
    });
}

fn describe_stateful_set(w: &mut Describe, s: &StatefulSet) {
    let spec = s.spec.clone().unwrap_or_default();
    let st = s.status.clone().unwrap_or_default();
    w.meta(&s.metadata, true);
    w.field(0, "Selector", format_label_selector(Some(&spec.selector)));
    w.field(
        0,
        "Replicas",
        format!(
            "{} desired | {} total",
            spec.replicas.unwrap_or(1),
            st.replicas
        ),
    );
    let strategy = spec.update_strategy.clone().unwrap_or_default();
    w.field(
        0,
        "Update Strategy",
        strategy
            .type_
            .clone()
            .unwrap_or_else(|| "RollingUpdate".into()),
    );
    if let Some(p) = strategy.rolling_update.as_ref().and_then(|r| r.partition) {
        w.field(1, "Partition", p);
    }
    w.field(
        0,
        "Pod Management Policy",
        spec.pod_management_policy
            .clone()
            .unwrap_or_else(|| "OrderedReady".into()),
    );
    w.field(
        0,
        "Pods Status",
        format!(
            "{} Running / {} Waiting / 0 Succeeded / 0 Failed",
            st.ready_replicas.unwrap_or(0),
            (st.replicas - st.ready_replicas.unwrap_or(0)).max(0)
        ),
    );
    describe_template(w, Some(&spec.template));
    match spec.volume_claim_templates.as_deref() {
        None | Some([]) => w.field(0, "Volume Claims", "<none>"),
        Some(claims) => {
            w.line(0, "Volume Claims:");
            for c in claims {
                let cs = c.spec.clone().unwrap_or_default();
                w.field(1, "Name", c.metadata.name.as_deref().unwrap_or(""));
                w.field(
                    1,
                    "StorageClass",
                    cs.storage_class_name.clone().unwrap_or_default(),
                );
                w.field(
                    1,
                    "Capacity",
                    cs.resources
                        .as_ref()
                        .and_then(|r| r.requests.as_ref())
                        .and_then(|r| r.get("storage"))
                        .map_or(String::new(), |q| q.0.clone()),
                );
                w.field(1, "Access Modes", access_modes(cs.access_modes.as_ref()));
            }
        }
    }
}

fn describe_daemon_set(w: &mut Describe, d: &DaemonSet) {
    let spec = d.spec.clone().unwrap_or_default();
    let st = d.status.clone().unwrap_or_default();
    w.meta(&d.metadata, true);
    w.field(0, "Selector", format_label_selector(Some(&spec.selector)));
    let node_selector = spec
        .template
        .spec
        .as_ref()
        .and_then(|s| s.node_selector.as_ref());
    w.field(0, "Node-Selector", format_labels(node_selector));
    w.field(
        0,
        "Desired Number of Nodes Scheduled",
        st.desired_number_scheduled,
    );
    w.field(
        0,
        "Current Number of Nodes Scheduled",
        st.current_number_scheduled,
    );
    w.field(
        0,
        "Number of Nodes Scheduled with Up-to-date Pods",
        st.updated_number_scheduled.unwrap_or(0),
    );
    w.field(
        0,
        "Number of Nodes Scheduled with Available Pods",
        st.number_available.unwrap_or(0),
    );
    w.field(0, "Number of Nodes Misscheduled", st.number_misscheduled);
    w.field(
        0,
        "Pods Status",
        format!(
            "{} Running / {} Waiting / 0 Succeeded / 0 Failed",
            st.number_ready,
            (st.current_number_scheduled - st.number_ready).max(0)
        ),
    );
    describe_template(w, Some(&spec.template));
}

fn describe_job(w: &mut Describe, j: &Job, now: Timestamp) {
    let spec = j.spec.clone().unwrap_or_default();
    let st = j.status.clone().unwrap_or_default();
    w.meta(&j.metadata, true);
    w.field(0, "Selector", format_label_selector(spec.selector.as_ref()));
    w.controlled_by(&j.metadata);
    w.field(0, "Parallelism", spec.parallelism.unwrap_or(1));
    w.field(
        0,
        "Completions",
        spec.completions.map_or("<unset>".into(), |c| c.to_string()),
    );
    w.field(
        0,
        "Completion Mode",
        spec.completion_mode
            .clone()
            .unwrap_or_else(|| "NonIndexed".into()),
    );
    w.field(0, "Suspend", spec.suspend.unwrap_or(false));
    w.field(0, "Backoff Limit", spec.backoff_limit.unwrap_or(6));
    if let Some(t) = spec.ttl_seconds_after_finished {
        w.field(0, "TTL Seconds After Finished", t);
    }
    if let Some(s) = &st.start_time {
        w.field(0, "Start Time", format_time(s));
    }
    if let Some(c) = &st.completion_time {
        w.field(0, "Completed At", format_time(c));
        if let Some(s) = &st.start_time {
            w.field(0, "Duration", human_duration(c.0.duration_since(s.0)));
        }
    } else if let Some(s) = &st.start_time {
        w.field(0, "Duration", human_duration(now.duration_since(s.0)));
    }
    if let Some(d) = spec.active_deadline_seconds {
        w.field(0, "Active Deadline Seconds", format!("{d}s"));
    }
    w.field(
        0,
        "Pods Statuses",
        format!(
            "{} Active ({} Ready) / {} Succeeded / {} Failed",
            st.active.unwrap_or(0),
            st.ready.unwrap_or(0),
            st.succeeded.unwrap_or(0),
            st.failed.unwrap_or(0)
        ),
    );
    describe_template(w, Some(&spec.template));
    describe_conditions(w, st.conditions.as_deref().unwrap_or_default(), |c| {
        [
            c.type_.clone(),
            c.status.clone(),
            c.reason.clone().unwrap_or_default(),
        ]
    });
}

fn describe_cron_job(w: &mut Describe, c: &CronJob, now: Timestamp) {
    let spec = c.spec.clone().unwrap_or_default();
    let st = c.status.clone().unwrap_or_default();
    w.meta(&c.metadata, true);
    w.field(0, "Schedule", &spec.schedule);
    w.field(
        0,
        "Concurrency Policy",
        spec.concurrency_policy
            .clone()
            .unwrap_or_else(|| "Allow".into()),
    );
    w.field(0, "Suspend", spec.suspend.unwrap_or(false));
    w.field(
        0,
        "Successful Job History Limit",
        spec.successful_jobs_history_limit.unwrap_or(3),
    );
    w.field(
        0,
        "Failed Job History Limit",
        spec.failed_jobs_history_limit.unwrap_or(1),
    );
    w.field(
        0,
        "Starting Deadline Seconds",
        spec.starting_deadline_seconds
            .map_or("<unset>".into(), |s| format!("{s}s")),
    );
    w.field(
        0,
        "Time Zone",
        spec.time_zone.clone().unwrap_or_else(|| "<unset>".into()),
    );
    let t = spec.job_template.spec.as_ref().map(|s| s.template.clone());
    describe_template(w, t.as_ref());
    w.field(
        0,
        "Last Schedule Time",
        st.last_schedule_time
            .as_ref()
            .map_or("<unset>".into(), |t| {
                format!(
                    "{} ({} ago)",
                    format_time(t),
                    human_duration(now.duration_since(t.0))
                )
            }),
    );
    let active: Vec<String> = st
        .active
        .iter()
        .flatten()
        .filter_map(|r| r.name.clone())
        .collect();
    w.field(0, "Active Jobs", or_none(active.join(", ")));
}

fn describe_hpa(w: &mut Describe, h: &HorizontalPodAutoscaler) {
    let spec = h.spec.clone().unwrap_or_default();
    let st = h.status.clone().unwrap_or_default();
    w.meta(&h.metadata, true);
    w.field(
        0,
        "Reference",
        format!(
            "{}/{}",
            spec.scale_target_ref.kind, spec.scale_target_ref.name
        ),
    );
    w.line(0, "Metrics:\t( current / target )");
    for part in hpa_targets(h).split(", ") {
        w.line(1, &part.replacen(": ", ":\t", 1));
    }
    w.field(0, "Min replicas", spec.min_replicas.unwrap_or(1));
    w.field(0, "Max replicas", spec.max_replicas);
    w.field(
        0,
        &format!("{} pods", spec.scale_target_ref.kind),
        format!(
            "{} current / {} desired",
            st.current_replicas.unwrap_or(0),
            st.desired_replicas
        ),
    );
    describe_conditions(w, st.conditions.as_deref().unwrap_or_default(), |c| {
        [
            c.type_.clone(),
            c.status.clone(),
            c.reason.clone().unwrap_or_default(),
        ]
    });
}

fn describe_claim(w: &mut Describe, c: &PersistentVolumeClaim) {
    let spec = c.spec.clone().unwrap_or_default();
    let st = c.status.clone().unwrap_or_default();
    w.field(0, "Name", c.metadata.name.as_deref().unwrap_or(""));
    w.field(
        0,
        "Namespace",
        c.metadata.namespace.as_deref().unwrap_or("default"),
    );
    w.field(
        0,
        "StorageClass",
        spec.storage_class_name.clone().unwrap_or_default(),
    );
    w.field(
        0,
        "Status",
        st.phase.clone().unwrap_or_else(|| "Pending".into()),
    );
    w.field(0, "Volume", spec.volume_name.clone().unwrap_or_default());
    w.map(0, "Labels", c.metadata.labels.as_ref(), "=");
    w.map(0, "Annotations", c.metadata.annotations.as_ref(), ": ");
    w.field(
        0,
        "Capacity",
        st.capacity
            .as_ref()
            .and_then(|c| c.get("storage"))
            .map_or(String::new(), |q| q.0.clone()),
    );
    w.field(0, "Access Modes", access_modes(st.access_modes.as_ref()));
    w.field(
        0,
        "VolumeMode",
        spec.volume_mode.unwrap_or_else(|| "Filesystem".into()),
    );
}

fn describe_service(w: &mut Describe, s: &Service) {
    let spec = s.spec.clone().unwrap_or_default();
    w.meta(&s.metadata, true);
    w.field(0, "Selector", format_labels(spec.selector.as_ref()));
    w.field(0, "Type", spec.type_.as_deref().unwrap_or("ClusterIP"));
    if let Some(p) = &spec.ip_family_policy {
        w.field(0, "IP Family Policy", p);
    }
    if let Some(f) = &spec.ip_families {
        w.field(0, "IP Families", f.join(","));
    }
    w.field(
        0,
        "IP",
        or_none(spec.cluster_ip.clone().unwrap_or_default()),
    );
    if let Some(ips) = &spec.cluster_ips {
        w.field(0, "IPs", ips.join(","));
    }
    for p in spec.ports.iter().flatten() {
        let name = p
            .name
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "<unset>".into());
        let proto = p.protocol.as_deref().unwrap_or("TCP");
        w.field(0, "Port", format!("{name}\t{}/{proto}", p.port));
        let target = match &p.target_port {
            Some(IntOrString::Int(i)) => format!("{i}/{proto}"),
            Some(IntOrString::String(s)) => format!("{s}/{proto}"),
            None => format!("{}/{proto}", p.port),
        };
        w.field(0, "TargetPort", target);
        if let Some(np) = p.node_port.filter(|n| *n > 0) {
            w.field(0, "NodePort", format!("{name}\t{np}/{proto}"));
        }
    }
    w.field(
        0,
        "Session Affinity",
        spec.session_affinity.as_deref().unwrap_or("None"),
    );
    if let Some(p) = &spec.internal_traffic_policy {
        w.field(0, "Internal Traffic Policy", p);
    }
}

fn describe_endpoints(w: &mut Describe, e: &Endpoints) {
    w.meta(&e.metadata, true);
    w.line(0, "Subsets:");
    for ss in e.subsets.iter().flatten() {
        let ips = |a: &Option<Vec<k8s_openapi::api::core::v1::EndpointAddress>>| {
            or_none(
                a.iter()
                    .flatten()
                    .map(|a| a.ip.clone())
                    .collect::<Vec<_>>()
                    .join(","),
            )
        };
        w.field(1, "Addresses", ips(&ss.addresses));
        w.field(1, "NotReadyAddresses", ips(&ss.not_ready_addresses));
        w.line(1, "Ports:");
        w.line(2, "Name\tPort\tProtocol");
        w.line(2, "----\t----\t--------");
        for p in ss.ports.iter().flatten() {
            let name = p
                .name
                .clone()
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| "<unset>".into());
            w.line(
                2,
                &format!(
                    "{name}\t{}\t{}",
                    p.port,
                    p.protocol.as_deref().unwrap_or("TCP")
                ),
            );
        }
        w.line(0, "");
    }
}

fn describe_config_map(w: &mut Describe, c: &ConfigMap) {
    w.meta(&c.metadata, true);
    w.line(0, "");
    w.line(0, "Data");
    w.line(0, "====");
    for (k, v) in c.data.iter().flatten() {
        w.line(0, &format!("{k}:"));
        w.line(0, "----");
        for l in v.lines() {
            w.line(0, l);
        }
        w.line(0, "");
    }
    w.line(0, "");
    w.line(0, "BinaryData");
    w.line(0, "====");
    for (k, v) in c.binary_data.iter().flatten() {
        w.line(0, &format!("{k}: {} bytes", v.0.len()));
    }
    w.line(0, "");
}

/// Like kubectl: key names and sizes, never the values.
fn describe_secret(w: &mut Describe, s: &Secret) {
    w.meta(&s.metadata, true);
    w.line(0, "");
    w.field(0, "Type", s.type_.as_deref().unwrap_or("Opaque"));
    w.line(0, "");
    w.line(0, "Data");
    w.line(0, "====");
    for (k, v) in s.data.iter().flatten() {
        w.line(0, &format!("{k}:\t{} bytes", v.0.len()));
    }
    for (k, v) in s.string_data.iter().flatten() {
        w.line(0, &format!("{k}:\t{} bytes", v.len()));
    }
}

fn describe_namespace(w: &mut Describe, n: &Namespace) {
    w.meta(&n.metadata, false);
    let phase = n
        .status
        .as_ref()
        .and_then(|s| s.phase.clone())
        .unwrap_or_default();
    w.field(0, "Status", phase);
}

fn describe_node(w: &mut Describe, n: &Node) {
    w.field(0, "Name", n.metadata.name.as_deref().unwrap_or(""));
    w.field(0, "Roles", node_roles(n));
    let mut meta = n.metadata.clone();
    meta.name = None;
    w.map(0, "Labels", meta.labels.as_ref(), "=");
    w.map(0, "Annotations", meta.annotations.as_ref(), ": ");
    if let Some(t) = &meta.creation_timestamp {
        w.field(0, "CreationTimestamp", format_time(t));
    }
    let spec = n.spec.clone().unwrap_or_default();
    w.field(0, "Unschedulable", spec.unschedulable.unwrap_or(false));
    let status = n.status.clone().unwrap_or_default();
    let conditions = status.conditions.clone().unwrap_or_default();
    if !conditions.is_empty() {
        w.line(0, "Conditions:");
        w.line(1, "Type\tStatus\tLastHeartbeatTime\tReason\tMessage");
        w.line(1, "----\t------\t-----------------\t------\t-------");
        for c in conditions {
            w.line(
                1,
                &format!(
                    "{}\t{}\t{}\t{}\t{}",
                    c.type_,
                    c.status,
                    c.last_heartbeat_time
                        .as_ref()
                        .map(format_time)
                        .unwrap_or_default(),
                    c.reason.unwrap_or_default(),
                    c.message.unwrap_or_default()
                ),
            );
        }
    }
    match status.addresses.as_ref().filter(|a| !a.is_empty()) {
        None => w.field(0, "Addresses", "<none>"),
        Some(addresses) => {
            w.line(0, "Addresses:");
            for a in addresses {
                w.field(1, &a.type_, &a.address);
            }
        }
    }
    for (label, res) in [
        ("Capacity", &status.capacity),
        ("Allocatable", &status.allocatable),
    ] {
        if let Some(res) = res.as_ref().filter(|r| !r.is_empty()) {
            w.line(0, &format!("{label}:"));
            for (k, q) in res {
                w.field(1, k, &q.0);
            }
        }
    }
    if let Some(info) = &status.node_info {
        w.line(0, "System Info:");
        for (k, v) in [
            ("Machine ID", &info.machine_id),
            ("Boot ID", &info.boot_id),
            ("Kernel Version", &info.kernel_version),
            ("OS Image", &info.os_image),
            ("Operating System", &info.operating_system),
            ("Architecture", &info.architecture),
            ("Container Runtime Version", &info.container_runtime_version),
            ("Kubelet Version", &info.kubelet_version),
        ] {
            w.field(1, k, v);
        }
    }
    if let Some(cidr) = &spec.pod_cidr {
        w.field(0, "PodCIDR", cidr);
    }
    if let Some(cidrs) = &spec.pod_cidrs {
        w.field(0, "PodCIDRs", cidrs.join(","));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn now() -> Timestamp {
        "2024-05-01T12:00:00Z".parse().unwrap()
    }

    fn ago(secs: i64) -> String {
        (now() - SignedDuration::from_secs(secs)).to_string()
    }

    fn opts() -> TableOptions {
        TableOptions {
            wide: false,
            with_namespace: false,
            now: now(),
            no_headers: false,
            show_kind: false,
        }
    }

    fn obj(kind: Kind, v: Value) -> Object {
        Object::from_json(kind, v).unwrap()
    }

    fn pod(name: &str, status: Value) -> Object {
        obj(
            Kind::Pod,
            json!({
                "metadata": {"name": name, "namespace": "default", "creationTimestamp": ago(300)},
                "spec": {"nodeName": "pi1", "containers": [{"name": "a", "image": "x"}, {"name": "b", "image": "y"}]},
                "status": status
            }),
        )
    }

    #[test]
    fn human_durations_follow_kubectl() {
        let cases = [
            (-5, "<invalid>"),
            (-1, "0s"),
            (0, "0s"),
            (5, "5s"),
            (119, "119s"),
            (120, "2m"),
            (150, "2m30s"),
            (599, "9m59s"),
            (600, "10m"),
            (179 * 60, "179m"),
            (3 * 3600, "3h"),
            (3 * 3600 + 4 * 60, "3h4m"),
            (8 * 3600, "8h"),
            (47 * 3600, "47h"),
            (48 * 3600, "2d"),
            (5 * 86400 + 3 * 3600, "5d3h"),
            (8 * 86400, "8d"),
            (729 * 86400, "729d"),
            (730 * 86400, "2y"),
            (800 * 86400, "2y70d"),
            (10 * 365 * 86400, "10y"),
        ];
        for (secs, want) in cases {
            assert_eq!(
                human_duration(SignedDuration::from_secs(secs)),
                want,
                "{secs}s"
            );
        }
    }

    #[test]
    fn tabwriter_matches_go() {
        let out = tabwrite("NAME\tREADY\tAGE\nweb-1\t1/1\t5s\nx\t0/1\t10m\n", 6, 3);
        assert_eq!(
            out,
            "NAME    READY   AGE\nweb-1   1/1     5s\nx       0/1     10m\n"
        );
        // Blocks end at lines without the column (describe style).
        let out = tabwrite(
            "Name:\tweb\nLabels:\ta=1\n\tb=2\nContainers:\n  c:\n    Image:\tnginx\n",
            0,
            2,
        );
        assert_eq!(
            out,
            "Name:    web\nLabels:  a=1\n         b=2\nContainers:\n  c:\n    Image:  nginx\n"
        );
    }

    #[test]
    fn pod_table_with_statuses_from_container_states() {
        let running = pod(
            "run",
            json!({"phase": "Running", "podIP": "10.88.0.2", "containerStatuses": [
                {"name": "a", "image": "x", "imageID": "", "ready": true, "restartCount": 0, "state": {"running": {}}},
                {"name": "b", "image": "y", "imageID": "", "ready": true, "restartCount": 2,
                 "state": {"running": {}},
                 "lastState": {"terminated": {"exitCode": 1, "finishedAt": ago(300)}}}
            ]}),
        );
        let crash = pod(
            "crash",
            json!({"phase": "Running", "containerStatuses": [
                {"name": "a", "image": "x", "imageID": "", "ready": false, "restartCount": 4,
                 "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                 "lastState": {"terminated": {"exitCode": 1, "reason": "Error", "finishedAt": ago(30)}}},
                {"name": "b", "image": "y", "imageID": "", "ready": true, "restartCount": 0, "state": {"running": {}}}
            ]}),
        );
        let creating = pod(
            "new",
            json!({"phase": "Pending", "containerStatuses": [
                {"name": "a", "image": "x", "imageID": "", "ready": false, "restartCount": 0, "state": {"waiting": {"reason": "ContainerCreating"}}}
            ]}),
        );
        let done = pod(
            "done",
            json!({"phase": "Succeeded", "containerStatuses": [
                {"name": "a", "image": "x", "imageID": "", "ready": false, "restartCount": 0, "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}},
                {"name": "b", "image": "y", "imageID": "", "ready": false, "restartCount": 0, "state": {"terminated": {"exitCode": 137}}}
            ]}),
        );
        let failed = pod(
            "err",
            json!({"phase": "Failed", "containerStatuses": [
                {"name": "a", "image": "x", "imageID": "", "ready": false, "restartCount": 0, "state": {"terminated": {"exitCode": 2, "reason": "Error"}}}
            ]}),
        );
        let mut deleting = pod("bye", json!({"phase": "Running"}));
        deleting.meta_mut().deletion_timestamp = Some(Time(now()));
        let objects = [running, crash, creating, done, failed, deleting];
        let out = table(&objects, &opts());
        assert_eq!(
            out,
            "\
NAME    READY   STATUS              RESTARTS      AGE
run     2/2     Running             2 (5m ago)    5m
crash   1/2     CrashLoopBackOff    4 (30s ago)   5m
new     0/2     ContainerCreating   0             5m
done    0/2     Completed           0             5m
err     0/2     Error               0             5m
bye     0/2     Terminating         0             5m
"
        );
        let wide = TableOptions {
            wide: true,
            with_namespace: true,
            no_headers: true,
            ..opts()
        };
        let out = table(&objects[..1], &wide);
        assert_eq!(
            out,
            "default   run   2/2   Running   2 (5m ago)   5m    10.88.0.2   pi1   <none>   <none>\n"
        );
    }

    #[test]
    fn exit_code_and_signal_without_reason() {
        let p = pod(
            "p",
            json!({"phase": "Running", "containerStatuses": [
                {"name": "a", "image": "x", "imageID": "", "ready": false, "restartCount": 0, "state": {"terminated": {"exitCode": 3}}},
                {"name": "b", "image": "x", "imageID": "", "ready": false, "restartCount": 0, "state": {"terminated": {"exitCode": 0, "signal": 9}}}
            ]}),
        );
        let Object::Pod(p) = p else { unreachable!() };
        assert_eq!(pod_summary(&p).status, "ExitCode:3");
    }

    fn deployment() -> Object {
        obj(
            Kind::Deployment,
            json!({
                "metadata": {"name": "demo", "namespace": "default", "creationTimestamp": ago(3 * 3600 + 4 * 60)},
                "spec": {
                    "replicas": 2,
                    "selector": {"matchLabels": {"app": "demo"}},
                    "template": {"metadata": {"labels": {"app": "demo"}}, "spec": {"containers": [
                        {"name": "demo", "image": "bramble.local/demo:v1", "ports": [{"containerPort": 8080, "protocol": "TCP"}]}
                    ]}}
                },
                "status": {"replicas": 2, "readyReplicas": 1, "updatedReplicas": 2, "availableReplicas": 1}
            }),
        )
    }

    #[test]
    fn deployment_and_replica_set_tables() {
        let out = table(
            &[deployment()],
            &TableOptions {
                wide: true,
                ..opts()
            },
        );
        assert_eq!(
            out,
            "\
NAME   READY   UP-TO-DATE   AVAILABLE   AGE    CONTAINERS   IMAGES                  SELECTOR
demo   1/2     2            1           3h4m   demo         bramble.local/demo:v1   app=demo
"
        );
        let rs = obj(
            Kind::ReplicaSet,
            json!({
                "metadata": {"name": "demo-7d4b9", "creationTimestamp": ago(45)},
                "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "demo", "pod-template-hash": "7d4b9"}}},
                "status": {"replicas": 2, "readyReplicas": 2}
            }),
        );
        let out = table(&[rs], &opts());
        assert_eq!(
            out,
            "NAME         DESIRED   CURRENT   READY   AGE\ndemo-7d4b9   2         2         2       45s\n"
        );
    }

    fn service() -> Object {
        obj(
            Kind::Service,
            json!({
                "metadata": {"name": "demo", "creationTimestamp": ago(600)},
                "spec": {"type": "NodePort", "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
                         "selector": {"app": "demo"},
                         "ports": [{"port": 80, "targetPort": 8080, "nodePort": 30080, "protocol": "TCP"},
                                   {"name": "dns", "port": 53, "protocol": "UDP"}]}
            }),
        )
    }

    #[test]
    fn service_endpoints_config_map_namespace_tables() {
        let out = table(
            &[service()],
            &TableOptions {
                wide: true,
                ..opts()
            },
        );
        assert_eq!(
            out,
            "\
NAME   TYPE       CLUSTER-IP   EXTERNAL-IP   PORT(S)               AGE   SELECTOR
demo   NodePort   10.96.0.10   <none>        80:30080/TCP,53/UDP   10m   app=demo
"
        );
        let ep = obj(
            Kind::Endpoints,
            json!({"metadata": {"name": "demo", "creationTimestamp": ago(10)}, "subsets": [
                {"addresses": [{"ip": "10.88.0.2"}, {"ip": "10.88.0.3"}], "ports": [{"port": 8080}]}
            ]}),
        );
        let many = obj(
            Kind::Endpoints,
            json!({"metadata": {"name": "many", "creationTimestamp": ago(10)}, "subsets": [
                {"addresses": [{"ip": "10.88.0.2"}, {"ip": "10.88.0.3"}, {"ip": "10.88.1.2"}, {"ip": "10.88.1.3"}, {"ip": "10.88.2.2"}],
                 "ports": [{"port": 8080}]}
            ]}),
        );
        let none = obj(Kind::Endpoints, json!({"metadata": {"name": "none"}}));
        assert_eq!(
            table(&[ep, many, none], &opts()),
            "\
NAME   ENDPOINTS                                                  AGE
demo   10.88.0.2:8080,10.88.0.3:8080                              10s
many   10.88.0.2:8080,10.88.0.3:8080,10.88.1.2:8080 + 2 more...   10s
none   <none>                                                     <unknown>
"
        );
        let cm = obj(
            Kind::ConfigMap,
            json!({"metadata": {"name": "cfg", "creationTimestamp": ago(86400 * 3)}, "data": {"a": "1", "b": "2"}, "binaryData": {"c": "eA=="}}),
        );
        assert_eq!(
            table(&[cm], &opts()),
            "NAME   DATA   AGE\ncfg    3      3d\n"
        );
        let ns = obj(
            Kind::Namespace,
            json!({"metadata": {"name": "default", "creationTimestamp": ago(86400 * 400)}, "status": {"phase": "Active"}}),
        );
        // -A adds no NAMESPACE column to cluster-scoped kinds.
        let a = TableOptions {
            with_namespace: true,
            ..opts()
        };
        assert_eq!(
            table(&[ns], &a),
            "NAME      STATUS   AGE\ndefault   Active   400d\n"
        );
    }

    #[test]
    fn node_table() {
        let node = |name: &str, ready: Option<&str>, unschedulable: bool, labels: Value| {
            let conditions = match ready {
                Some(s) => {
                    json!([{"type": "MemoryPressure", "status": "False"}, {"type": "Ready", "status": s}])
                }
                None => json!([]),
            };
            obj(
                Kind::Node,
                json!({
                    "metadata": {"name": name, "labels": labels, "creationTimestamp": ago(7200)},
                    "spec": {"unschedulable": unschedulable},
                    "status": {"conditions": conditions,
                               "addresses": [{"type": "InternalIP", "address": "192.168.1.10"}, {"type": "Hostname", "address": name}],
                               "nodeInfo": {"kubeletVersion": "bramble-0.1.0", "osImage": "Debian GNU/Linux 12 (bookworm)",
                                            "kernelVersion": "6.1.0", "containerRuntimeVersion": "libcontainer://0.7",
                                            "architecture": "arm64", "bootID": "", "kubeProxyVersion": "", "machineID": "",
                                            "operatingSystem": "linux", "systemUUID": ""}}
                }),
            )
        };
        let nodes = [
            node(
                "pi1",
                Some("True"),
                false,
                json!({"node-role.kubernetes.io/control-plane": "", "node-role.kubernetes.io/master": ""}),
            ),
            node("pi2", Some("False"), true, json!({})),
            node("pi3", None, false, json!({"kubernetes.io/role": "worker"})),
        ];
        assert_eq!(
            table(&nodes, &opts()),
            "\
NAME   STATUS                        ROLES                  AGE    VERSION
pi1    Ready                         control-plane,master   120m   bramble-0.1.0
pi2    NotReady,SchedulingDisabled   <none>                 120m   bramble-0.1.0
pi3    Unknown                       worker                 120m   bramble-0.1.0
"
        );
        let wide = table(
            &nodes[..1],
            &TableOptions {
                wide: true,
                no_headers: true,
                ..opts()
            },
        );
        assert_eq!(
            wide,
            "pi1   Ready   control-plane,master   120m   bramble-0.1.0   192.168.1.10   <none>   Debian GNU/Linux 12 (bookworm)   6.1.0   libcontainer://0.7\n"
        );
    }

    #[test]
    fn mixed_kinds_print_one_table_each() {
        let objects = [
            pod("demo-1", json!({"phase": "Pending"})),
            service(),
            deployment(),
            pod("demo-2", json!({"phase": "Pending"})),
        ];
        let out = table(&objects, &opts());
        assert_eq!(
            out,
            "\
NAME         READY   STATUS    RESTARTS   AGE
pod/demo-1   0/2     Pending   0          5m
pod/demo-2   0/2     Pending   0          5m

NAME           TYPE       CLUSTER-IP   EXTERNAL-IP   PORT(S)               AGE
service/demo   NodePort   10.96.0.10   <none>        80:30080/TCP,53/UDP   10m

NAME                   READY   UP-TO-DATE   AVAILABLE   AGE
deployment.apps/demo   1/2     2            1           3h4m
"
        );
        assert_eq!(table(&[], &opts()), "");
        let one = table(
            &objects[..1],
            &TableOptions {
                show_kind: true,
                ..opts()
            },
        );
        assert!(one.contains("pod/demo-1"), "{one}");
    }

    #[test]
    fn describe_each_kind() {
        let d = describe(&deployment(), &[], now());
        assert!(
            d.starts_with("Name:               demo\nNamespace:          default\n"),
            "{d}"
        );
        assert!(d.contains("Selector:           app=demo\n"), "{d}");
        assert!(d.contains("Replicas:           2 desired | 2 updated | 2 total | 1 available | 0 unavailable\n"), "{d}");
        assert!(
            d.contains("      Image:        bramble.local/demo:v1\n"),
            "{d}"
        );
        assert!(d.contains("      Port:         8080/TCP\n"), "{d}");
        assert!(d.ends_with("Events:             <none>\n"), "{d}");

        let p = pod(
            "demo-1",
            json!({"phase": "Running", "podIP": "10.88.0.2", "hostIP": "192.168.1.10",
                   "conditions": [{"type": "Ready", "status": "True"}],
                   "containerStatuses": [{"name": "a", "image": "x", "imageID": "", "ready": true, "restartCount": 1,
                        "state": {"running": {"startedAt": ago(60)}},
                        "lastState": {"terminated": {"exitCode": 1, "reason": "Error"}}}]}),
        );
        let events = vec![
            "Type\tReason\tAge\tFrom\tMessage".to_string(),
            "Normal\tScheduled\t5m\tdefault-scheduler\tSuccessfully assigned default/demo-1 to pi1"
                .to_string(),
        ];
        let text = describe(&p, &events, now());
        assert!(text.contains("Node:         pi1/192.168.1.10\n"), "{text}");
        assert!(text.contains("Status:       Running\n"), "{text}");
        assert!(text.contains("IP:           10.88.0.2\n"), "{text}");
        assert!(
            text.contains(
                "    State:          Running\n      Started:      Wed, 01 May 2024 11:59:00 +0000\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("    Last State:     Terminated\n      Reason:       Error\n"),
            "{text}"
        );
        assert!(text.contains("    Restart Count:  1\n"), "{text}");
        assert!(text.contains("Events:\n  Type    Reason     Age  From               Message\n  Normal  Scheduled  5m   default-scheduler  Successfully"), "{text}");

        let s = describe(&service(), &[], now());
        assert!(s.contains("Type:               NodePort\n"), "{s}");
        assert!(s.contains("Port:               <unset>  80/TCP\n"), "{s}");
        assert!(
            s.contains("NodePort:           <unset>  30080/TCP\n"),
            "{s}"
        );
        assert!(s.contains("TargetPort:         8080/TCP\n"), "{s}");

        let others = [
            obj(
                Kind::ConfigMap,
                json!({"metadata": {"name": "cfg"}, "data": {"k": "v"}}),
            ),
            obj(
                Kind::Namespace,
                json!({"metadata": {"name": "apps"}, "status": {"phase": "Active"}}),
            ),
            obj(
                Kind::Node,
                json!({"metadata": {"name": "pi1"}, "spec": {"podCIDR": "10.88.1.0/24"}}),
            ),
            obj(
                Kind::Endpoints,
                json!({"metadata": {"name": "e"}, "subsets": [{"addresses": [{"ip": "10.88.0.2"}], "ports": [{"port": 80}]}]}),
            ),
            obj(
                Kind::ReplicaSet,
                json!({"metadata": {"name": "rs", "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "demo", "uid": "u", "controller": true}]},
                "spec": {"replicas": 1, "selector": {"matchLabels": {"a": "b"}}}}),
            ),
        ];
        let texts: Vec<String> = others.iter().map(|o| describe(o, &[], now())).collect();
        assert!(
            texts[0].contains("Data\n====\nk:\n----\nv\n"),
            "{}",
            texts[0]
        );
        assert!(texts[1].contains("Status:       Active\n"), "{}", texts[1]);
        assert!(
            texts[2].contains("PodCIDR:        10.88.1.0/24\n"),
            "{}",
            texts[2]
        );
        assert!(
            texts[3].contains("  Addresses:          10.88.0.2\n"),
            "{}",
            texts[3]
        );
        assert!(
            texts[4].contains("Controlled By:  Deployment/demo\n"),
            "{}",
            texts[4]
        );
    }
}
