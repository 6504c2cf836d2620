//! Validation of API objects, following the Kubernetes API server's rules and
//! messages where practical (`metadata.name: Invalid value: "Web": a lowercase
//! RFC 1123 subdomain must consist of …`).
//!
//! Owns: what makes an object acceptable, and the name/label syntax checks the
//! rest of the crate reuses (selectors, the CLI). Must not touch: defaults
//! (see `defaults`), storage, or anything with I/O. Runs on defaulted objects;
//! fields Bramble does not implement are `unimplemented`'s business, but values
//! that would change meaning (SCTP, IPv6) are errors here.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;
use std::net::Ipv4Addr;
use std::ops::RangeInclusive;

use k8s_openapi::api::apps::v1::{DeploymentStrategy, RollingUpdateDeployment};
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, ContainerPort, EndpointAddress, Endpoints, PodSpec, PodTemplateSpec,
    Probe, Service, ServicePort,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{Value, json};

use super::{Kind, Object, selector};

/// One validation failure: the field's path and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// `spec.template.spec.containers[0].name`
    pub path: String,
    /// `Invalid value: "Web": a lowercase RFC 1123 label must …`
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Renders a value the way Kubernetes' field errors do: strings quoted, numbers
/// bare, maps and lists as compact JSON.
fn show(value: &Value) -> String {
    value.to_string()
}

impl FieldError {
    pub fn required(path: impl Into<String>, detail: &str) -> FieldError {
        let message = if detail.is_empty() {
            "Required value".to_string()
        } else {
            format!("Required value: {detail}")
        };
        FieldError {
            path: path.into(),
            message,
        }
    }

    pub fn invalid(path: impl Into<String>, value: Value, detail: &str) -> FieldError {
        FieldError {
            path: path.into(),
            message: format!("Invalid value: {}: {detail}", show(&value)),
        }
    }

    pub fn unsupported(path: impl Into<String>, value: &str, supported: &[&str]) -> FieldError {
        let list: Vec<String> = supported.iter().map(|s| format!("{s:?}")).collect();
        FieldError {
            path: path.into(),
            message: format!(
                "Unsupported value: {value:?}: supported values: {}",
                list.join(", ")
            ),
        }
    }

    pub fn duplicate(path: impl Into<String>, value: Value) -> FieldError {
        FieldError {
            path: path.into(),
            message: format!("Duplicate value: {}", show(&value)),
        }
    }

    pub fn forbidden(path: impl Into<String>, detail: &str) -> FieldError {
        FieldError {
            path: path.into(),
            message: format!("Forbidden: {detail}"),
        }
    }
}

/// Knobs that depend on the cluster's configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidationOptions {
    /// Ports a Service's `nodePort` may use (Kubernetes' default 30000-32767).
    pub node_port_range: RangeInclusive<u16>,
}

impl Default for ValidationOptions {
    fn default() -> ValidationOptions {
        ValidationOptions {
            node_port_range: 30000..=32767,
        }
    }
}

/// Validates `obj` with the default [`ValidationOptions`].
pub fn validate(obj: &Object) -> Vec<FieldError> {
    validate_with(obj, &ValidationOptions::default())
}

/// Validates `obj`; an empty result means it is acceptable.
pub fn validate_with(obj: &Object, opts: &ValidationOptions) -> Vec<FieldError> {
    let mut errs = Vec::new();
    validate_meta(obj.kind(), obj.meta(), &mut errs);
    match obj {
        Object::Namespace(_) | Object::Node(_) => {}
        Object::Pod(pod) => {
            let spec = pod.spec.clone().unwrap_or_default();
            validate_pod_spec(&spec, "spec", false, &mut errs);
        }
        Object::ReplicaSet(rs) => {
            let spec = rs.spec.clone().unwrap_or_default();
            validate_workload(
                spec.replicas,
                Some(&spec.selector),
                spec.template.as_ref(),
                spec.min_ready_seconds,
                &mut errs,
            );
        }
        Object::Deployment(d) => {
            let spec = d.spec.clone().unwrap_or_default();
            validate_workload(
                spec.replicas,
                Some(&spec.selector),
                Some(&spec.template),
                spec.min_ready_seconds,
                &mut errs,
            );
            if let Some(strategy) = &spec.strategy {
                validate_strategy(strategy, &mut errs);
            }
            non_negative(
                "spec.revisionHistoryLimit",
                spec.revision_history_limit,
                &mut errs,
            );
            if let Some(deadline) = spec.progress_deadline_seconds {
                let min_ready = spec.min_ready_seconds.unwrap_or(0);
                if deadline <= min_ready {
                    errs.push(FieldError::invalid(
                        "spec.progressDeadlineSeconds",
                        json!(deadline),
                        "must be greater than minReadySeconds",
                    ));
                }
            }
        }
        Object::Service(svc) => validate_service(svc, opts, &mut errs),
        Object::Endpoints(ep) => validate_endpoints(ep, &mut errs),
        Object::ConfigMap(cm) => validate_config_map(cm, &mut errs),
        Object::StatefulSet(set) => validate_stateful_set(set, &mut errs),
        Object::DaemonSet(ds) => validate_daemon_set(ds, &mut errs),
        Object::Job(job) => {
            if let Some(spec) = &job.spec {
                validate_job_spec(spec, "spec", job.metadata.uid.is_some(), &mut errs);
            }
        }
        Object::CronJob(cj) => validate_cron_job(cj, &mut errs),
        Object::HorizontalPodAutoscaler(h) => validate_hpa(h, &mut errs),
        Object::PersistentVolumeClaim(c) => validate_claim_spec(c.spec.as_ref(), "spec", &mut errs),
        Object::Secret(secret) => {
            for k in secret.data.iter().flat_map(|d| d.keys()) {
                push_all(
                    &mut errs,
                    &format!("data[{k}]"),
                    k,
                    config_map_key_errors(k),
                );
            }
        }
        // Written by Bramble itself.
        Object::Event(_) | Object::ControllerRevision(_) => {}
    }
    errs
}

// ---------------------------------------------------------------------------
// StatefulSets, DaemonSets, Jobs, CronJobs, autoscalers, claims

fn validate_stateful_set(
    set: &k8s_openapi::api::apps::v1::StatefulSet,
    errs: &mut Vec<FieldError>,
) {
    let spec = set.spec.clone().unwrap_or_default();
    validate_workload(
        spec.replicas,
        Some(&spec.selector),
        Some(&spec.template),
        spec.min_ready_seconds,
        errs,
    );
    one_of(
        "spec.podManagementPolicy",
        spec.pod_management_policy.as_deref(),
        &["OrderedReady", "Parallel"],
        errs,
    );
    non_negative(
        "spec.revisionHistoryLimit",
        spec.revision_history_limit,
        errs,
    );
    if let Some(u) = &spec.update_strategy {
        one_of(
            "spec.updateStrategy.type",
            u.type_.as_deref(),
            &["RollingUpdate", "OnDelete"],
            errs,
        );
        if u.type_.as_deref() == Some("OnDelete") && u.rolling_update.is_some() {
            errs.push(FieldError::invalid(
                "spec.updateStrategy.rollingUpdate",
                json!({}),
                "only allowed for updateStrategy 'RollingUpdate'",
            ));
        }
        if let Some(ru) = &u.rolling_update {
            non_negative(
                "spec.updateStrategy.rollingUpdate.partition",
                ru.partition,
                errs,
            );
        }
    }
    let mut names = HashSet::new();
    for (i, c) in spec.volume_claim_templates.iter().flatten().enumerate() {
        let path = format!("spec.volumeClaimTemplates[{i}]");
        match c.metadata.name.as_deref() {
            None | Some("") => errs.push(FieldError::required(format!("{path}.metadata.name"), "")),
            Some(n) => {
                push_all(
                    errs,
                    &format!("{path}.metadata.name"),
                    n,
                    dns1123_label_errors(n),
                );
                if !names.insert(n.to_string()) {
                    errs.push(FieldError::duplicate(
                        format!("{path}.metadata.name"),
                        json!(n),
                    ));
                }
            }
        }
        validate_claim_spec(c.spec.as_ref(), &format!("{path}.spec"), errs);
    }
}

fn validate_daemon_set(ds: &k8s_openapi::api::apps::v1::DaemonSet, errs: &mut Vec<FieldError>) {
    let spec = ds.spec.clone().unwrap_or_default();
    validate_workload(
        None,
        Some(&spec.selector),
        Some(&spec.template),
        spec.min_ready_seconds,
        errs,
    );
    if let Some(u) = &spec.update_strategy {
        one_of(
            "spec.updateStrategy.type",
            u.type_.as_deref(),
            &["RollingUpdate", "OnDelete"],
            errs,
        );
        if let Some(ru) = &u.rolling_update {
            let unavailable_zero = int_or_percent(
                "spec.updateStrategy.rollingUpdate.maxUnavailable",
                ru.max_unavailable.as_ref(),
                true,
                errs,
            );
            let surge_zero = int_or_percent(
                "spec.updateStrategy.rollingUpdate.maxSurge",
                ru.max_surge.as_ref(),
                true,
                errs,
            );
            if unavailable_zero && surge_zero {
                errs.push(FieldError::invalid(
                    "spec.updateStrategy.rollingUpdate.maxUnavailable",
                    json!(0),
                    "may not be 0 when `maxSurge` is 0",
                ));
            }
        }
    }
}

/// A Job's spec at `path` (`spec`, or `spec.jobTemplate.spec`).
fn validate_job_spec(
    spec: &k8s_openapi::api::batch::v1::JobSpec,
    path: &str,
    _stored: bool,
    errs: &mut Vec<FieldError>,
) {
    non_negative(&format!("{path}.parallelism"), spec.parallelism, errs);
    non_negative(&format!("{path}.completions"), spec.completions, errs);
    non_negative(&format!("{path}.backoffLimit"), spec.backoff_limit, errs);
    non_negative(
        &format!("{path}.ttlSecondsAfterFinished"),
        spec.ttl_seconds_after_finished,
        errs,
    );
    if let Some(d) = spec.active_deadline_seconds.filter(|d| *d <= 0) {
        errs.push(FieldError::invalid(
            format!("{path}.activeDeadlineSeconds"),
            json!(d),
            "must be greater than 0",
        ));
    }
    one_of(
        &format!("{path}.completionMode"),
        spec.completion_mode.as_deref(),
        &["NonIndexed", "Indexed"],
        errs,
    );
    let tpath = format!("{path}.template");
    if let Some(meta) = &spec.template.metadata {
        validate_labels(
            &format!("{tpath}.metadata.labels"),
            meta.labels.as_ref(),
            errs,
        );
    }
    let pod = spec.template.spec.clone().unwrap_or_default();
    validate_pod_spec(&pod, &format!("{tpath}.spec"), false, errs);
    match pod.restart_policy.as_deref() {
        Some("OnFailure") | Some("Never") => {}
        None => errs.push(FieldError::required(
            format!("{tpath}.spec.restartPolicy"),
            "valid values: \"OnFailure\", \"Never\"",
        )),
        Some(other) => errs.push(FieldError::unsupported(
            format!("{tpath}.spec.restartPolicy"),
            other,
            &["OnFailure", "Never"],
        )),
    }
    if spec.manual_selector == Some(true) {
        match &spec.selector {
            None => errs.push(FieldError::required(format!("{path}.selector"), "")),
            Some(sel) => {
                validate_label_selector(sel, &format!("{path}.selector"), errs);
                let labels = spec
                    .template
                    .metadata
                    .as_ref()
                    .and_then(|m| m.labels.clone())
                    .unwrap_or_default();
                if !selector::matches(sel, &labels) {
                    errs.push(FieldError::invalid(
                        format!("{path}.selector"),
                        serde_json::to_value(sel).unwrap_or(Value::Null),
                        "selector does not match template labels",
                    ));
                }
            }
        }
    }
}

fn validate_cron_job(cj: &k8s_openapi::api::batch::v1::CronJob, errs: &mut Vec<FieldError>) {
    let Some(spec) = &cj.spec else {
        errs.push(FieldError::required("spec", ""));
        return;
    };
    if spec.schedule.trim().is_empty() {
        errs.push(FieldError::required("spec.schedule", ""));
    } else {
        match super::cron::Schedule::parse(&spec.schedule, spec.time_zone.as_deref()) {
            Ok(_) => {}
            Err(super::cron::ScheduleError::TimeZone(tz)) => errs.push(FieldError::invalid(
                "spec.timeZone",
                json!(tz),
                "unknown time zone",
            )),
            Err(e) => errs.push(FieldError::invalid(
                "spec.schedule",
                json!(spec.schedule),
                &e.to_string(),
            )),
        }
    }
    one_of(
        "spec.concurrencyPolicy",
        spec.concurrency_policy.as_deref(),
        &["Allow", "Forbid", "Replace"],
        errs,
    );
    non_negative(
        "spec.successfulJobsHistoryLimit",
        spec.successful_jobs_history_limit,
        errs,
    );
    non_negative(
        "spec.failedJobsHistoryLimit",
        spec.failed_jobs_history_limit,
        errs,
    );
    if let Some(d) = spec.starting_deadline_seconds.filter(|d| *d < 0) {
        errs.push(FieldError::invalid(
            "spec.startingDeadlineSeconds",
            json!(d),
            "must be greater than or equal to 0",
        ));
    }
    match &spec.job_template.spec {
        Some(js) => validate_job_spec(js, "spec.jobTemplate.spec", false, errs),
        None => errs.push(FieldError::required("spec.jobTemplate.spec", "")),
    }
}

fn validate_hpa(
    h: &k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler,
    errs: &mut Vec<FieldError>,
) {
    let Some(spec) = &h.spec else {
        errs.push(FieldError::required("spec", ""));
        return;
    };
    let r = &spec.scale_target_ref;
    if r.kind.is_empty() {
        errs.push(FieldError::required("spec.scaleTargetRef.kind", ""));
    } else if !matches!(r.kind.as_str(), "Deployment" | "StatefulSet" | "ReplicaSet") {
        errs.push(FieldError::unsupported(
            "spec.scaleTargetRef.kind",
            &r.kind,
            &["Deployment", "ReplicaSet", "StatefulSet"],
        ));
    }
    if r.name.is_empty() {
        errs.push(FieldError::required("spec.scaleTargetRef.name", ""));
    }
    let min = spec.min_replicas.unwrap_or(1);
    if min < 1 {
        errs.push(FieldError::invalid(
            "spec.minReplicas",
            json!(min),
            "must be greater than or equal to 1",
        ));
    }
    if spec.max_replicas < min.max(1) {
        errs.push(FieldError::invalid(
            "spec.maxReplicas",
            json!(spec.max_replicas),
            "must be greater than or equal to `minReplicas`",
        ));
    }
    for (i, m) in spec.metrics.iter().flatten().enumerate() {
        let path = format!("spec.metrics[{i}]");
        one_of(
            &format!("{path}.type"),
            Some(m.type_.as_str()),
            &[
                "ContainerResource",
                "External",
                "Object",
                "Pods",
                "Resource",
            ],
            errs,
        );
        if m.type_ == "Resource" {
            let Some(res) = &m.resource else {
                errs.push(FieldError::required(
                    format!("{path}.resource"),
                    "must populate information for the given metric source",
                ));
                continue;
            };
            one_of(
                &format!("{path}.resource.target.type"),
                Some(res.target.type_.as_str()),
                &["AverageValue", "Utilization", "Value"],
                errs,
            );
            if res.target.type_ == "Utilization"
                && res.target.average_utilization.is_none_or(|u| u <= 0)
            {
                errs.push(FieldError::required(
                    format!("{path}.resource.target.averageUtilization"),
                    "must be set to a positive value when `type` is 'Utilization'",
                ));
            }
        }
    }
}

fn validate_claim_spec(
    spec: Option<&k8s_openapi::api::core::v1::PersistentVolumeClaimSpec>,
    path: &str,
    errs: &mut Vec<FieldError>,
) {
    let Some(spec) = spec else {
        errs.push(FieldError::required(path, ""));
        return;
    };
    let modes = spec.access_modes.clone().unwrap_or_default();
    if modes.is_empty() {
        errs.push(FieldError::required(
            format!("{path}.accessModes"),
            "at least 1 access mode is required",
        ));
    }
    for (i, m) in modes.iter().enumerate() {
        one_of(
            &format!("{path}.accessModes[{i}]"),
            Some(m.as_str()),
            &[
                "ReadOnlyMany",
                "ReadWriteMany",
                "ReadWriteOnce",
                "ReadWriteOncePod",
            ],
            errs,
        );
    }
    let storage = spec
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"));
    if storage.is_none() {
        errs.push(FieldError::required(
            format!("{path}.resources[storage]"),
            "",
        ));
    }
}

// ---------------------------------------------------------------------------
// Name and label syntax (k8s.io/apimachinery/pkg/util/validation)

const DNS1123_LABEL_MAX: usize = 63;
const DNS1123_SUBDOMAIN_MAX: usize = 253;
const QUALIFIED_NAME_MAX: usize = 63;
const LABEL_VALUE_MAX: usize = 63;
const CONFIG_KEY_MAX: usize = 253;
const IANA_SVC_NAME_MAX: usize = 15;

fn is_lower_alnum(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

fn dns1123_label_ok(s: &str) -> bool {
    !s.is_empty()
        && s.chars().all(|c| is_lower_alnum(c) || c == '-')
        && s.starts_with(is_lower_alnum)
        && s.ends_with(is_lower_alnum)
}

/// Reasons `s` is not an RFC 1123 label (empty when it is one).
pub fn dns1123_label_errors(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > DNS1123_LABEL_MAX {
        errs.push(format!(
            "must be no more than {DNS1123_LABEL_MAX} characters"
        ));
    }
    if !dns1123_label_ok(s) {
        errs.push(
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', \
             and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', \
             regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
                .to_string(),
        );
    }
    errs
}

/// Reasons `s` is not an RFC 1123 subdomain (empty when it is one).
pub fn dns1123_subdomain_errors(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > DNS1123_SUBDOMAIN_MAX {
        errs.push(format!(
            "must be no more than {DNS1123_SUBDOMAIN_MAX} characters"
        ));
    }
    if !s.split('.').all(dns1123_label_ok) {
        errs.push(
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' \
             or '.', and must start and end with an alphanumeric character (e.g. 'example.com', \
             regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
                .to_string(),
        );
    }
    errs
}

/// `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`, possibly empty when `allow_empty`.
fn label_charset_ok(s: &str) -> bool {
    s.chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// Reasons `s` is not a qualified name (a label or annotation key: an optional
/// DNS-subdomain prefix and `/`, then a name of at most 63 characters).
pub fn qualified_name_errors(s: &str) -> Vec<String> {
    const NAME_FMT: &str = "must consist of alphanumeric characters, '-', '_' or '.', and must start \
         and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex \
         used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";
    let mut errs = Vec::new();
    let parts: Vec<&str> = s.split('/').collect();
    let name = match parts.as_slice() {
        [name] => *name,
        [prefix, name] => {
            if prefix.is_empty() {
                errs.push("prefix part must be non-empty".to_string());
            } else {
                errs.extend(
                    dns1123_subdomain_errors(prefix)
                        .into_iter()
                        .map(|e| format!("prefix part {e}")),
                );
            }
            name
        }
        _ => {
            errs.push(format!(
                "a qualified name {NAME_FMT} with an optional DNS subdomain prefix and '/' (e.g. \
                 'example.com/MyName')"
            ));
            return errs;
        }
    };
    if name.is_empty() {
        errs.push("name part must be non-empty".to_string());
    } else if name.len() > QUALIFIED_NAME_MAX {
        errs.push(format!(
            "name part must be no more than {QUALIFIED_NAME_MAX} characters"
        ));
    }
    if !name.is_empty() && !label_charset_ok(name) {
        errs.push(format!("name part {NAME_FMT}"));
    }
    errs
}

/// Reasons `s` is not a valid label value (which may be empty).
pub fn label_value_errors(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > LABEL_VALUE_MAX {
        errs.push(format!("must be no more than {LABEL_VALUE_MAX} characters"));
    }
    if !s.is_empty() && !label_charset_ok(s) {
        errs.push(
            "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' \
             or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or \
             'my_value',  or '12345', regex used for validation is \
             '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"
                .to_string(),
        );
    }
    errs
}

/// Reasons `s` is not a valid ConfigMap/Secret key.
pub fn config_map_key_errors(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > CONFIG_KEY_MAX {
        errs.push(format!("must be no more than {CONFIG_KEY_MAX} characters"));
    }
    if s.is_empty()
        || !s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        errs.push(
            "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. \
             'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is \
             '[-._a-zA-Z0-9]+')"
                .to_string(),
        );
    }
    if s == "." {
        errs.push("must not be '.'".to_string());
    } else if s == ".." {
        errs.push("must not be '..'".to_string());
    } else if s.starts_with("..") {
        errs.push("must not start with '..'".to_string());
    }
    errs
}

/// Reasons `s` is not an IANA service name (a named port).
pub fn iana_svc_name_errors(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > IANA_SVC_NAME_MAX {
        errs.push(format!(
            "must be no more than {IANA_SVC_NAME_MAX} characters"
        ));
    }
    if !s.chars().all(|c| is_lower_alnum(c) || c == '-') {
        errs.push("must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)".into());
    }
    if s.contains("--") {
        errs.push("must not contain consecutive hyphens".into());
    }
    if !s.chars().any(|c| c.is_ascii_lowercase()) {
        errs.push("must contain at least one letter (a-z)".into());
    }
    if s.starts_with('-') || s.ends_with('-') {
        errs.push("must not begin or end with a hyphen".into());
    }
    errs
}

/// Reasons `s` is not a valid environment variable name.
pub fn env_var_name_errors(s: &str) -> Vec<String> {
    let ok = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
        && !s.starts_with(|c: char| c.is_ascii_digit());
    if ok {
        Vec::new()
    } else {
        vec![
            "a valid environment variable name must consist of alphabetic characters, digits, '_', \
             '-', or '.', and must not start with a digit (e.g. 'my.env-name',  or 'MY_ENV.NAME',  \
             or 'MyEnvName1', regex used for validation is '[-._a-zA-Z][-._a-zA-Z0-9]*')"
                .into(),
        ]
    }
}

const PORT_RANGE_MSG: &str = "must be between 1 and 65535, inclusive";

fn port_ok(p: i32) -> bool {
    (1..=65535).contains(&p)
}

fn push_all(errs: &mut Vec<FieldError>, path: &str, value: &str, reasons: Vec<String>) {
    for r in reasons {
        errs.push(FieldError::invalid(path, json!(value), &r));
    }
}

fn non_negative(path: &str, value: Option<i32>, errs: &mut Vec<FieldError>) {
    if let Some(v) = value.filter(|v| *v < 0) {
        errs.push(FieldError::invalid(
            path,
            json!(v),
            "must be greater than or equal to 0",
        ));
    }
}

fn protocol(path: &str, value: Option<&str>, errs: &mut Vec<FieldError>) {
    match value {
        None | Some("TCP") | Some("UDP") => {}
        Some("SCTP") => errs.push(FieldError {
            path: path.to_string(),
            message:
                "Unsupported value: \"SCTP\": not supported by Bramble yet; supported values: \
                      \"TCP\", \"UDP\""
                    .into(),
        }),
        Some(other) => errs.push(FieldError::unsupported(path, other, &["TCP", "UDP"])),
    }
}

fn one_of(path: &str, value: Option<&str>, allowed: &[&str], errs: &mut Vec<FieldError>) {
    if let Some(v) = value.filter(|v| !allowed.contains(v)) {
        errs.push(FieldError::unsupported(path, v, allowed));
    }
}

// ---------------------------------------------------------------------------
// Metadata

fn validate_meta(kind: Kind, meta: &ObjectMeta, errs: &mut Vec<FieldError>) {
    match meta.name.as_deref() {
        None | Some("") => errs.push(FieldError::required(
            "metadata.name",
            "name or generateName is required",
        )),
        Some(name) => {
            let reasons = match kind {
                Kind::Namespace | Kind::Service => dns1123_label_errors(name),
                _ => dns1123_subdomain_errors(name),
            };
            push_all(errs, "metadata.name", name, reasons);
        }
    }
    match meta.namespace.as_deref() {
        None | Some("") => {}
        Some(ns) if kind.namespaced() => {
            push_all(errs, "metadata.namespace", ns, dns1123_label_errors(ns));
        }
        Some(_) => errs.push(FieldError::forbidden(
            "metadata.namespace",
            "not allowed on this type",
        )),
    }
    validate_labels("metadata.labels", meta.labels.as_ref(), errs);
    validate_annotations("metadata.annotations", meta.annotations.as_ref(), errs);
}

/// Label keys and values.
pub fn validate_labels(
    path: &str,
    labels: Option<&BTreeMap<String, String>>,
    errs: &mut Vec<FieldError>,
) {
    for (k, v) in labels.into_iter().flatten() {
        push_all(errs, path, k, qualified_name_errors(k));
        push_all(errs, path, v, label_value_errors(v));
    }
}

const ANNOTATIONS_MAX_BYTES: usize = 256 * 1024;

fn validate_annotations(
    path: &str,
    annotations: Option<&BTreeMap<String, String>>,
    errs: &mut Vec<FieldError>,
) {
    let mut total = 0;
    for (k, v) in annotations.into_iter().flatten() {
        push_all(
            errs,
            path,
            k,
            qualified_name_errors(&k.to_ascii_lowercase()),
        );
        total += k.len() + v.len();
    }
    if total > ANNOTATIONS_MAX_BYTES {
        errs.push(FieldError {
            path: path.to_string(),
            message: format!("Too long: must have at most {ANNOTATIONS_MAX_BYTES} bytes"),
        });
    }
}

// ---------------------------------------------------------------------------
// Pods

/// Validates a pod spec at `path` (`spec`, or `spec.template.spec` when
/// `in_template`, where Kubernetes only allows `restartPolicy: Always`).
pub fn validate_pod_spec(
    spec: &PodSpec,
    path: &str,
    in_template: bool,
    errs: &mut Vec<FieldError>,
) {
    if spec.containers.is_empty() {
        errs.push(FieldError::required(format!("{path}.containers"), ""));
    }
    let mut names = HashSet::new();
    let mut port_names = HashSet::new();
    // Init and app containers share one name space, as in Kubernetes.
    for (i, c) in spec.init_containers.iter().flatten().enumerate() {
        let cpath = format!("{path}.initContainers[{i}]");
        validate_container(c, &cpath, &mut names, &mut HashSet::new(), errs);
        for (field, probe) in [
            ("livenessProbe", &c.liveness_probe),
            ("readinessProbe", &c.readiness_probe),
            ("startupProbe", &c.startup_probe),
        ] {
            if probe.is_some() {
                errs.push(FieldError::forbidden(
                    format!("{cpath}.{field}"),
                    "may not be set for init containers",
                ));
            }
        }
    }
    for (i, c) in spec.containers.iter().enumerate() {
        let cpath = format!("{path}.containers[{i}]");
        validate_container(c, &cpath, &mut names, &mut port_names, errs);
    }
    let restart = spec.restart_policy.as_deref();
    if in_template {
        one_of(&format!("{path}.restartPolicy"), restart, &["Always"], errs);
    } else {
        one_of(
            &format!("{path}.restartPolicy"),
            restart,
            &["Always", "OnFailure", "Never"],
            errs,
        );
    }
    one_of(
        &format!("{path}.dnsPolicy"),
        spec.dns_policy.as_deref(),
        &["ClusterFirstWithHostNet", "ClusterFirst", "Default", "None"],
        errs,
    );
    validate_dns_config(spec, path, errs);
    if let Some(g) = spec.termination_grace_period_seconds.filter(|g| *g < 0) {
        errs.push(FieldError::invalid(
            format!("{path}.terminationGracePeriodSeconds"),
            json!(g),
            "must be greater than or equal to 0",
        ));
    }
    if let Some(node) = spec.node_name.as_deref().filter(|n| !n.is_empty()) {
        push_all(
            errs,
            &format!("{path}.nodeName"),
            node,
            dns1123_subdomain_errors(node),
        );
    }
    if let Some(h) = spec.hostname.as_deref().filter(|h| !h.is_empty()) {
        push_all(
            errs,
            &format!("{path}.hostname"),
            h,
            dns1123_label_errors(h),
        );
    }
    validate_labels(
        &format!("{path}.nodeSelector"),
        spec.node_selector.as_ref(),
        errs,
    );
}

/// `subdomain` and `dnsConfig`, with the API server's limits (3 nameservers,
/// 32 search domains of 2048 characters in all); `dnsPolicy: None` needs a
/// nameserver.
fn validate_dns_config(spec: &PodSpec, path: &str, errs: &mut Vec<FieldError>) {
    if let Some(sub) = spec.subdomain.as_deref().filter(|s| !s.is_empty()) {
        push_all(
            errs,
            &format!("{path}.subdomain"),
            sub,
            dns1123_label_errors(sub),
        );
    }
    let config = spec.dns_config.clone().unwrap_or_default();
    let nameservers = config.nameservers.unwrap_or_default();
    if spec.dns_policy.as_deref() == Some("None") && nameservers.is_empty() {
        errs.push(FieldError::required(
            format!("{path}.dnsConfig.nameservers"),
            "must provide at least one DNS nameserver when `dnsPolicy` is None",
        ));
    }
    if nameservers.len() > 3 {
        errs.push(FieldError::invalid(
            format!("{path}.dnsConfig.nameservers"),
            json!(nameservers),
            "must not have more than 3 nameservers",
        ));
    }
    for (i, ns) in nameservers.iter().enumerate() {
        if ns.parse::<std::net::IpAddr>().is_err() {
            errs.push(FieldError::invalid(
                format!("{path}.dnsConfig.nameservers[{i}]"),
                json!(ns),
                "must be a valid IP address",
            ));
        }
    }
    let searches = config.searches.unwrap_or_default();
    if searches.len() > 32 || searches.iter().map(|s| s.len() + 1).sum::<usize>() > 2048 {
        errs.push(FieldError::invalid(
            format!("{path}.dnsConfig.searches"),
            json!(searches.len()),
            "must not have more than 32 search paths or 2048 characters in all",
        ));
    }
    for (i, domain) in searches.iter().enumerate() {
        let d = domain.trim_end_matches('.');
        push_all(
            errs,
            &format!("{path}.dnsConfig.searches[{i}]"),
            domain,
            dns1123_subdomain_errors(d),
        );
    }
    for (i, o) in config.options.iter().flatten().enumerate() {
        if o.name.as_deref().is_none_or(str::is_empty) {
            errs.push(FieldError::required(
                format!("{path}.dnsConfig.options[{i}].name"),
                "",
            ));
        }
    }
}

fn validate_container(
    c: &Container,
    path: &str,
    names: &mut HashSet<String>,
    port_names: &mut HashSet<String>,
    errs: &mut Vec<FieldError>,
) {
    if c.name.is_empty() {
        errs.push(FieldError::required(format!("{path}.name"), ""));
    } else {
        push_all(
            errs,
            &format!("{path}.name"),
            &c.name,
            dns1123_label_errors(&c.name),
        );
        if !names.insert(c.name.clone()) {
            errs.push(FieldError::duplicate(format!("{path}.name"), json!(c.name)));
        }
    }
    if c.image.as_deref().is_none_or(|i| i.trim().is_empty()) {
        errs.push(FieldError::required(format!("{path}.image"), ""));
    }
    one_of(
        &format!("{path}.imagePullPolicy"),
        c.image_pull_policy.as_deref(),
        &["Always", "IfNotPresent", "Never"],
        errs,
    );
    one_of(
        &format!("{path}.terminationMessagePolicy"),
        c.termination_message_policy.as_deref(),
        &["File", "FallbackToLogsOnError"],
        errs,
    );
    for (j, p) in c.ports.iter().flatten().enumerate() {
        validate_container_port(p, &format!("{path}.ports[{j}]"), port_names, errs);
    }
    for (j, e) in c.env.iter().flatten().enumerate() {
        let epath = format!("{path}.env[{j}].name");
        if e.name.is_empty() {
            errs.push(FieldError::required(epath, ""));
        } else {
            push_all(errs, &epath, &e.name, env_var_name_errors(&e.name));
        }
    }
    for (field, probe, single_success) in [
        ("livenessProbe", &c.liveness_probe, true),
        ("readinessProbe", &c.readiness_probe, false),
        ("startupProbe", &c.startup_probe, true),
    ] {
        if let Some(p) = probe {
            validate_probe(p, &format!("{path}.{field}"), single_success, errs);
        }
    }
    if let Some(l) = &c.lifecycle {
        for (field, hook) in [("postStart", &l.post_start), ("preStop", &l.pre_stop)] {
            if let Some(h) = hook {
                validate_hook(h, &format!("{path}.lifecycle.{field}"), errs);
            }
        }
    }
}

/// An `exec` handler runs a command: it must name one.
fn validate_exec(
    e: &k8s_openapi::api::core::v1::ExecAction,
    path: &str,
    errs: &mut Vec<FieldError>,
) {
    if e.command.as_ref().is_none_or(|c| c.is_empty()) {
        errs.push(FieldError::required(format!("{path}.exec.command"), ""));
    }
}

/// Exactly one of a probe's or hook's handlers is set.
fn validate_one_handler(set: &[bool], path: &str, errs: &mut Vec<FieldError>) {
    match set.iter().filter(|h| **h).count() {
        0 => errs.push(FieldError::required(
            path.to_string(),
            "must specify a handler type",
        )),
        1 => {}
        _ => errs.push(FieldError::forbidden(
            path.to_string(),
            "may not specify more than 1 handler type",
        )),
    }
}

/// A lifecycle hook has exactly one handler, as a probe does.
fn validate_hook(
    h: &k8s_openapi::api::core::v1::LifecycleHandler,
    path: &str,
    errs: &mut Vec<FieldError>,
) {
    let handlers = [
        h.exec.is_some(),
        h.http_get.is_some(),
        h.tcp_socket.is_some(),
        h.sleep.is_some(),
    ];
    validate_one_handler(&handlers, path, errs);
    if let Some(e) = &h.exec {
        validate_exec(e, path, errs);
    }
    if let Some(s) = h.sleep.as_ref().filter(|s| s.seconds < 0) {
        errs.push(FieldError::invalid(
            format!("{path}.sleep.seconds"),
            json!(s.seconds),
            "must be greater than or equal to 0",
        ));
    }
}

/// A probe has exactly one handler and sane thresholds; liveness and startup
/// probes must succeed once to count (`successThreshold: 1`).
fn validate_probe(p: &Probe, path: &str, single_success: bool, errs: &mut Vec<FieldError>) {
    let handlers = [
        p.exec.is_some(),
        p.http_get.is_some(),
        p.tcp_socket.is_some(),
        p.grpc.is_some(),
    ];
    validate_one_handler(&handlers, path, errs);
    if let Some(e) = &p.exec {
        validate_exec(e, path, errs);
    }
    for (field, v, min) in [
        ("initialDelaySeconds", p.initial_delay_seconds, 0),
        ("timeoutSeconds", p.timeout_seconds, 1),
        ("periodSeconds", p.period_seconds, 1),
        ("successThreshold", p.success_threshold, 1),
        ("failureThreshold", p.failure_threshold, 1),
    ] {
        if let Some(v) = v.filter(|v| *v < min) {
            errs.push(FieldError::invalid(
                format!("{path}.{field}"),
                json!(v),
                &format!("must be greater than or equal to {min}"),
            ));
        }
    }
    if single_success && p.success_threshold.is_some_and(|s| s != 1) {
        errs.push(FieldError::invalid(
            format!("{path}.successThreshold"),
            json!(p.success_threshold),
            "must be 1",
        ));
    }
}

fn validate_container_port(
    p: &ContainerPort,
    path: &str,
    port_names: &mut HashSet<String>,
    errs: &mut Vec<FieldError>,
) {
    if !port_ok(p.container_port) {
        errs.push(FieldError::invalid(
            format!("{path}.containerPort"),
            json!(p.container_port),
            PORT_RANGE_MSG,
        ));
    }
    if let Some(h) = p.host_port.filter(|h| *h != 0 && !port_ok(*h)) {
        errs.push(FieldError::invalid(
            format!("{path}.hostPort"),
            json!(h),
            PORT_RANGE_MSG,
        ));
    }
    protocol(&format!("{path}.protocol"), p.protocol.as_deref(), errs);
    if let Some(name) = p.name.as_deref().filter(|n| !n.is_empty()) {
        push_all(
            errs,
            &format!("{path}.name"),
            name,
            iana_svc_name_errors(name),
        );
        if !port_names.insert(name.to_string()) {
            errs.push(FieldError::duplicate(format!("{path}.name"), json!(name)));
        }
    }
}

// ---------------------------------------------------------------------------
// ReplicaSets and Deployments

fn validate_workload(
    replicas: Option<i32>,
    selector: Option<&LabelSelector>,
    template: Option<&PodTemplateSpec>,
    min_ready_seconds: Option<i32>,
    errs: &mut Vec<FieldError>,
) {
    non_negative("spec.replicas", replicas, errs);
    non_negative("spec.minReadySeconds", min_ready_seconds, errs);
    let selector = selector.filter(|s| {
        s.match_labels.as_ref().is_some_and(|m| !m.is_empty())
            || s.match_expressions.as_ref().is_some_and(|m| !m.is_empty())
    });
    let template_labels = template
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    match selector {
        None => errs.push(FieldError::required("spec.selector", "")),
        Some(sel) => {
            let before = errs.len();
            validate_label_selector(sel, "spec.selector", errs);
            if errs.len() == before && !selector::matches(sel, &template_labels) {
                let shown = match &sel.match_expressions {
                    Some(e) if !e.is_empty() => serde_json::to_value(sel).unwrap_or(Value::Null),
                    _ => json!(sel.match_labels.clone().unwrap_or_default()),
                };
                errs.push(FieldError::invalid(
                    "spec.selector",
                    shown,
                    "selector does not match template labels",
                ));
            }
        }
    }
    match template {
        None => errs.push(FieldError::required("spec.template", "")),
        Some(t) => {
            if let Some(meta) = &t.metadata {
                validate_labels("spec.template.metadata.labels", meta.labels.as_ref(), errs);
                validate_annotations(
                    "spec.template.metadata.annotations",
                    meta.annotations.as_ref(),
                    errs,
                );
            }
            let spec = t.spec.clone().unwrap_or_default();
            validate_pod_spec(&spec, "spec.template.spec", true, errs);
        }
    }
}

/// Syntax of a `LabelSelector`: keys, values and operators.
pub fn validate_label_selector(sel: &LabelSelector, path: &str, errs: &mut Vec<FieldError>) {
    validate_labels(
        &format!("{path}.matchLabels"),
        sel.match_labels.as_ref(),
        errs,
    );
    for (i, req) in sel.match_expressions.iter().flatten().enumerate() {
        let rpath = format!("{path}.matchExpressions[{i}]");
        push_all(
            errs,
            &format!("{rpath}.key"),
            &req.key,
            qualified_name_errors(&req.key),
        );
        let has_values = req.values.as_ref().is_some_and(|v| !v.is_empty());
        match req.operator.as_str() {
            "In" | "NotIn" => {
                if !has_values {
                    errs.push(FieldError::required(
                        format!("{rpath}.values"),
                        "must be specified when `operator` is 'In' or 'NotIn'",
                    ));
                }
            }
            "Exists" | "DoesNotExist" => {
                if has_values {
                    errs.push(FieldError::forbidden(
                        format!("{rpath}.values"),
                        "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
                    ));
                }
            }
            other => errs.push(FieldError::unsupported(
                format!("{rpath}.operator"),
                other,
                &["In", "NotIn", "Exists", "DoesNotExist"],
            )),
        }
        for (j, v) in req.values.iter().flatten().enumerate() {
            push_all(
                errs,
                &format!("{rpath}.values[{j}]"),
                v,
                label_value_errors(v),
            );
        }
    }
}

fn validate_strategy(strategy: &DeploymentStrategy, errs: &mut Vec<FieldError>) {
    match strategy.type_.as_deref() {
        None | Some("RollingUpdate") => {
            if let Some(ru) = &strategy.rolling_update {
                validate_rolling_update(ru, errs);
            }
        }
        Some("Recreate") => {
            if strategy.rolling_update.is_some() {
                errs.push(FieldError::forbidden(
                    "spec.strategy.rollingUpdate",
                    "may not be specified when strategy `type` is 'Recreate'",
                ));
            }
        }
        Some(other) => errs.push(FieldError::unsupported(
            "spec.strategy.type",
            other,
            &["Recreate", "RollingUpdate"],
        )),
    }
}

/// Whether an int-or-percent is zero, after checking its syntax.
fn int_or_percent(
    path: &str,
    v: Option<&IntOrString>,
    max_100: bool,
    errs: &mut Vec<FieldError>,
) -> bool {
    match v {
        None => false,
        Some(IntOrString::Int(i)) => {
            if *i < 0 {
                errs.push(FieldError::invalid(
                    path,
                    json!(i),
                    "must be greater than or equal to 0",
                ));
            }
            *i == 0
        }
        Some(IntOrString::String(s)) => {
            match s.strip_suffix('%').and_then(|n| n.parse::<i32>().ok()) {
                Some(n) if n >= 0 => {
                    if max_100 && n > 100 {
                        errs.push(FieldError::invalid(
                            path,
                            json!(s),
                            "must not be greater than 100%",
                        ));
                    }
                    n == 0
                }
                _ => {
                    errs.push(FieldError::invalid(
                        path,
                        json!(s),
                        "a valid percent string must be a numeric string followed by an ending '%' \
                         (e.g. '1%',  or '93%', regex used for validation is '[0-9]+%')",
                    ));
                    false
                }
            }
        }
    }
}

fn validate_rolling_update(ru: &RollingUpdateDeployment, errs: &mut Vec<FieldError>) {
    let unavailable_zero = int_or_percent(
        "spec.strategy.rollingUpdate.maxUnavailable",
        ru.max_unavailable.as_ref(),
        true,
        errs,
    );
    let surge_zero = int_or_percent(
        "spec.strategy.rollingUpdate.maxSurge",
        ru.max_surge.as_ref(),
        false,
        errs,
    );
    if unavailable_zero && surge_zero {
        errs.push(FieldError::invalid(
            "spec.strategy.rollingUpdate.maxUnavailable",
            json!(0),
            "may not be 0 when `maxSurge` is 0",
        ));
    }
}

// ---------------------------------------------------------------------------
// Services

fn validate_service(svc: &Service, opts: &ValidationOptions, errs: &mut Vec<FieldError>) {
    let spec = svc.spec.clone().unwrap_or_default();
    let type_ = spec.type_.as_deref().unwrap_or("ClusterIP");
    let node_ports_allowed = match type_ {
        "ClusterIP" | "ExternalName" => false,
        "NodePort" | "LoadBalancer" => true,
        other => {
            errs.push(FieldError::unsupported(
                "spec.type",
                other,
                &["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"],
            ));
            false
        }
    };
    let external = type_ == "ExternalName";
    let cluster_ip = spec.cluster_ip.as_deref().unwrap_or("");
    let headless = cluster_ip == "None";
    if external {
        match spec
            .external_name
            .as_deref()
            .map(|n| n.trim_end_matches('.'))
        {
            None | Some("") => errs.push(FieldError::required("spec.externalName", "")),
            Some(name) => {
                let reasons = dns1123_subdomain_errors(&name.to_ascii_lowercase());
                push_all(
                    errs,
                    "spec.externalName",
                    spec.external_name.as_deref().unwrap_or_default(),
                    reasons,
                );
            }
        }
        if !cluster_ip.is_empty() {
            errs.push(FieldError::forbidden(
                "spec.clusterIP",
                "may not be set for ExternalName services",
            ));
        }
    } else if !cluster_ip.is_empty() && !headless && cluster_ip.parse::<Ipv4Addr>().is_err() {
        let detail = if cluster_ip.parse::<std::net::Ipv6Addr>().is_ok() {
            "IPv6 is not supported by Bramble yet"
        } else {
            "must be a valid IPv4 address (e.g. 10.96.0.10) or \"None\""
        };
        errs.push(FieldError::invalid(
            "spec.clusterIP",
            json!(cluster_ip),
            detail,
        ));
    }
    if headless && (type_ == "NodePort" || type_ == "LoadBalancer") {
        errs.push(FieldError::invalid(
            "spec.clusterIP",
            json!("None"),
            &format!("may not be set to 'None' for {type_} services"),
        ));
    }
    if let Some(ips) = spec.cluster_ips.as_ref().filter(|ips| !ips.is_empty()) {
        if !cluster_ip.is_empty() && ips[0] != cluster_ip {
            errs.push(FieldError::invalid(
                "spec.clusterIPs[0]",
                json!(ips[0]),
                "must match `spec.clusterIP`",
            ));
        }
        if ips.len() > 1 {
            errs.push(FieldError::invalid(
                "spec.clusterIPs",
                json!(ips),
                "dual-stack Services are not supported by Bramble yet",
            ));
        }
    }
    let ports = spec.ports.as_deref().unwrap_or_default();
    if ports.is_empty() && !headless && !external {
        errs.push(FieldError::required("spec.ports", ""));
    }
    let mut names = HashSet::new();
    let mut port_protocols = HashSet::new();
    let mut node_ports = HashSet::new();
    for (i, p) in ports.iter().enumerate() {
        let path = format!("spec.ports[{i}]");
        validate_service_port(p, &path, ports.len() > 1, &mut names, errs);
        let proto = p.protocol.clone().unwrap_or_else(|| "TCP".into());
        if !port_protocols.insert((p.port, proto.clone())) {
            errs.push(FieldError::duplicate(
                path.clone(),
                json!({"port": p.port, "protocol": proto}),
            ));
        }
        if let Some(np) = p.node_port.filter(|np| *np != 0) {
            let np_path = format!("{path}.nodePort");
            if !node_ports_allowed {
                errs.push(FieldError::forbidden(
                    np_path,
                    &format!("may not be used when `type` is '{type_}'"),
                ));
            } else if !u16::try_from(np).is_ok_and(|np| opts.node_port_range.contains(&np)) {
                errs.push(FieldError::invalid(
                    np_path,
                    json!(np),
                    &format!(
                        "provided port is not in the valid range. The range of valid ports is {}-{}",
                        opts.node_port_range.start(),
                        opts.node_port_range.end()
                    ),
                ));
            } else if !node_ports.insert((np, proto)) {
                errs.push(FieldError::duplicate(np_path, json!(np)));
            }
        }
    }
    if let Some(sel) = &spec.selector {
        validate_labels("spec.selector", Some(sel), errs);
    }
    one_of(
        "spec.sessionAffinity",
        spec.session_affinity.as_deref(),
        &["ClientIP", "None"],
        errs,
    );
    if let Some(t) = spec
        .session_affinity_config
        .as_ref()
        .and_then(|c| c.client_ip.as_ref()?.timeout_seconds)
    {
        let path = "spec.sessionAffinityConfig.clientIP.timeoutSeconds";
        if spec.session_affinity.as_deref() != Some("ClientIP") {
            errs.push(FieldError::forbidden(
                path,
                "must not be set when `sessionAffinity` is not ClientIP",
            ));
        } else if !(1..=86_400).contains(&t) {
            errs.push(FieldError::invalid(
                path,
                json!(t),
                "must be greater than 0 and less than 86400",
            ));
        }
    }
    if let Some(v) = svc
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(crate::api::routing::BALANCE_ANNOTATION))
        && crate::api::routing::Balance::parse(v).is_none()
    {
        errs.push(FieldError::unsupported(
            format!(
                "metadata.annotations[{}]",
                crate::api::routing::BALANCE_ANNOTATION
            ),
            v,
            &["round-robin", "least-connections"],
        ));
    }
    if let Some(v) = svc
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(crate::api::routing::PROXY_MODE_ANNOTATION))
    {
        let path = format!(
            "metadata.annotations[{}]",
            crate::api::routing::PROXY_MODE_ANNOTATION
        );
        match crate::api::routing::ProxyMode::parse(v) {
            None => errs.push(FieldError::unsupported(path, v, &["userspace", "kernel"])),
            // The kernel path is nftables round-robin: it has no way to
            // count connections or to remember a client.
            Some(crate::api::routing::ProxyMode::Kernel) => {
                let least = svc
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(crate::api::routing::BALANCE_ANNOTATION))
                    .is_some_and(|b| b == "least-connections");
                if least || spec.session_affinity.as_deref() == Some("ClientIP") {
                    errs.push(FieldError::invalid(
                        path,
                        json!(v),
                        "the kernel path balances round-robin only: not with least-connections or sessionAffinity: ClientIP",
                    ));
                }
            }
            Some(_) => {}
        }
    }
    one_of(
        "spec.internalTrafficPolicy",
        spec.internal_traffic_policy.as_deref(),
        &["Cluster", "Local"],
        errs,
    );
    one_of(
        "spec.externalTrafficPolicy",
        spec.external_traffic_policy.as_deref(),
        &["Cluster", "Local"],
        errs,
    );
    one_of(
        "spec.ipFamilyPolicy",
        spec.ip_family_policy.as_deref(),
        &["SingleStack", "PreferDualStack"],
        errs,
    );
    for (i, fam) in spec.ip_families.iter().flatten().enumerate() {
        one_of(&format!("spec.ipFamilies[{i}]"), Some(fam), &["IPv4"], errs);
    }
}

fn validate_service_port(
    p: &ServicePort,
    path: &str,
    multiple: bool,
    names: &mut HashSet<String>,
    errs: &mut Vec<FieldError>,
) {
    match p.name.as_deref().filter(|n| !n.is_empty()) {
        None if multiple => errs.push(FieldError::required(format!("{path}.name"), "")),
        None => {}
        Some(name) => {
            push_all(
                errs,
                &format!("{path}.name"),
                name,
                dns1123_label_errors(name),
            );
            if !names.insert(name.to_string()) {
                errs.push(FieldError::duplicate(format!("{path}.name"), json!(name)));
            }
        }
    }
    if !port_ok(p.port) {
        errs.push(FieldError::invalid(
            format!("{path}.port"),
            json!(p.port),
            PORT_RANGE_MSG,
        ));
    }
    protocol(&format!("{path}.protocol"), p.protocol.as_deref(), errs);
    match &p.target_port {
        None => {}
        Some(IntOrString::Int(t)) if !port_ok(*t) => {
            errs.push(FieldError::invalid(
                format!("{path}.targetPort"),
                json!(t),
                PORT_RANGE_MSG,
            ));
        }
        Some(IntOrString::Int(_)) => {}
        Some(IntOrString::String(s)) => {
            push_all(
                errs,
                &format!("{path}.targetPort"),
                s,
                iana_svc_name_errors(s),
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Endpoints and ConfigMaps

fn validate_endpoints(ep: &Endpoints, errs: &mut Vec<FieldError>) {
    for (i, subset) in ep.subsets.iter().flatten().enumerate() {
        let spath = format!("subsets[{i}]");
        let check =
            |list: Option<&Vec<EndpointAddress>>, field: &str, errs: &mut Vec<FieldError>| {
                for (j, a) in list.into_iter().flatten().enumerate() {
                    if a.ip.parse::<Ipv4Addr>().is_err() {
                        errs.push(FieldError::invalid(
                            format!("{spath}.{field}[{j}].ip"),
                            json!(a.ip),
                            "must be a valid IPv4 address",
                        ));
                    }
                }
            };
        check(subset.addresses.as_ref(), "addresses", errs);
        check(
            subset.not_ready_addresses.as_ref(),
            "notReadyAddresses",
            errs,
        );
        for (k, p) in subset.ports.iter().flatten().enumerate() {
            let ppath = format!("{spath}.ports[{k}]");
            if !port_ok(p.port) {
                errs.push(FieldError::invalid(
                    format!("{ppath}.port"),
                    json!(p.port),
                    PORT_RANGE_MSG,
                ));
            }
            protocol(&format!("{ppath}.protocol"), p.protocol.as_deref(), errs);
            if let Some(name) = p.name.as_deref().filter(|n| !n.is_empty()) {
                push_all(
                    errs,
                    &format!("{ppath}.name"),
                    name,
                    dns1123_label_errors(name),
                );
            }
        }
    }
}

const CONFIG_MAP_MAX_BYTES: usize = 1024 * 1024;

fn validate_config_map(cm: &ConfigMap, errs: &mut Vec<FieldError>) {
    let data: BTreeSet<&String> = cm.data.iter().flatten().map(|(k, _)| k).collect();
    let mut total = 0;
    for (k, v) in cm.data.iter().flatten() {
        push_all(errs, &format!("data[{k}]"), k, config_map_key_errors(k));
        total += v.len();
    }
    for (k, v) in cm.binary_data.iter().flatten() {
        push_all(
            errs,
            &format!("binaryData[{k}]"),
            k,
            config_map_key_errors(k),
        );
        if data.contains(k) {
            errs.push(FieldError::invalid(
                format!("data[{k}]"),
                json!(k),
                "duplicate of key present in binaryData",
            ));
        }
        total += v.0.len();
    }
    if total > CONFIG_MAP_MAX_BYTES {
        errs.push(FieldError {
            path: String::new(),
            message: format!("Too long: must have at most {CONFIG_MAP_MAX_BYTES} bytes"),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(kind: Kind, v: Value) -> Object {
        Object::from_json(kind, v).unwrap()
    }

    fn messages(o: &Object) -> Vec<String> {
        validate(o).iter().map(|e| e.to_string()).collect()
    }

    fn has(errs: &[String], needle: &str) -> bool {
        errs.iter().any(|e| e.contains(needle))
    }

    fn deployment(selector: Value, labels: Value) -> Object {
        obj(
            Kind::Deployment,
            json!({
                "metadata": {"name": "web"},
                "spec": {
                    "replicas": 2,
                    "selector": selector,
                    "template": {
                        "metadata": {"labels": labels},
                        "spec": {"containers": [{"name": "web", "image": "nginx"}]}
                    }
                }
            }),
        )
    }

    #[test]
    fn name_syntax() {
        assert!(dns1123_label_errors("web-1").is_empty());
        assert!(!dns1123_label_errors("Web").is_empty());
        assert!(!dns1123_label_errors("-web").is_empty());
        assert!(!dns1123_label_errors("a.b").is_empty());
        assert!(!dns1123_label_errors(&"a".repeat(64)).is_empty());
        assert!(dns1123_subdomain_errors("a.b-c.d").is_empty());
        assert!(!dns1123_subdomain_errors("a..b").is_empty());
        assert!(!dns1123_subdomain_errors(&"a".repeat(254)).is_empty());
        assert!(qualified_name_errors("app.kubernetes.io/name").is_empty());
        assert!(qualified_name_errors("Under_score.Dot").is_empty());
        assert!(!qualified_name_errors("a/b/c").is_empty());
        assert!(!qualified_name_errors("/b").is_empty());
        assert!(!qualified_name_errors("Bad.Prefix/b").is_empty());
        assert!(!qualified_name_errors("a b").is_empty());
        assert!(label_value_errors("").is_empty());
        assert!(label_value_errors("v1.2_3").is_empty());
        assert!(!label_value_errors("-x").is_empty());
        assert!(config_map_key_errors("app.properties").is_empty());
        assert!(!config_map_key_errors("a/b").is_empty());
        assert!(!config_map_key_errors("..x").is_empty());
        assert!(iana_svc_name_errors("http").is_empty());
        assert!(!iana_svc_name_errors("8080").is_empty());
        assert!(!iana_svc_name_errors("a--b").is_empty());
        assert!(!iana_svc_name_errors("way-too-long-a-name").is_empty());
        assert!(env_var_name_errors("MY_VAR.x-1").is_empty());
        assert!(!env_var_name_errors("1VAR").is_empty());
    }

    #[test]
    fn invalid_names_per_kind() {
        let e = messages(&obj(
            Kind::ConfigMap,
            json!({"metadata": {"name": "My_Config"}}),
        ));
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].starts_with(
            "metadata.name: Invalid value: \"My_Config\": a lowercase RFC 1123 subdomain"
        ));
        // Dots are fine in subdomains, not in labels.
        assert!(messages(&obj(Kind::ConfigMap, json!({"metadata": {"name": "a.b"}}))).is_empty());
        let e = messages(&obj(Kind::Namespace, json!({"metadata": {"name": "a.b"}})));
        assert!(has(&e, "RFC 1123 label"), "{e:?}");
        let e = messages(&obj(Kind::ConfigMap, json!({"metadata": {}})));
        assert_eq!(
            e,
            vec!["metadata.name: Required value: name or generateName is required"]
        );
        let e = messages(&obj(
            Kind::ConfigMap,
            json!({"metadata": {"name": "x", "namespace": "Bad", "labels": {"a b": "c", "ok": "-v"}}}),
        ));
        assert!(
            has(&e, "metadata.namespace: Invalid value: \"Bad\""),
            "{e:?}"
        );
        assert!(has(&e, "metadata.labels: Invalid value: \"a b\""), "{e:?}");
        assert!(has(&e, "metadata.labels: Invalid value: \"-v\""), "{e:?}");
        let e = messages(&obj(
            Kind::Node,
            json!({"metadata": {"name": "n", "namespace": "x"}}),
        ));
        assert!(has(&e, "metadata.namespace: Forbidden"), "{e:?}");
    }

    #[test]
    fn exec_handlers_need_a_command_and_hooks_one_handler() {
        let pod = |container: Value| {
            obj(
                Kind::Pod,
                json!({"metadata": {"name": "p"}, "spec": {"containers": [container]}}),
            )
        };
        let e = messages(&pod(json!({"name": "c", "image": "i",
            "readinessProbe": {"exec": {"command": []}},
            "lifecycle": {
                "postStart": {"exec": {}, "sleep": {"seconds": 1}},
                "preStop": {"sleep": {"seconds": -1}}
            }
        })));
        assert_eq!(
            e,
            vec![
                "spec.containers[0].readinessProbe.exec.command: Required value",
                "spec.containers[0].lifecycle.postStart: Forbidden: may not specify more than 1 handler type",
                "spec.containers[0].lifecycle.postStart.exec.command: Required value",
                "spec.containers[0].lifecycle.preStop.sleep.seconds: Invalid value: -1: must be greater than or equal to 0",
            ]
        );
        let ok = pod(json!({"name": "c", "image": "i",
            "livenessProbe": {"exec": {"command": ["cat", "/tmp/ok"]}},
            "lifecycle": {"preStop": {"exec": {"command": ["sh", "-c", "sleep 1"]}}}
        }));
        assert_eq!(messages(&ok), Vec::<String>::new());
    }

    #[test]
    fn workload_selector_must_match_template() {
        let ok = deployment(
            json!({"matchLabels": {"app": "web"}}),
            json!({"app": "web", "x": "y"}),
        );
        assert_eq!(messages(&ok), Vec::<String>::new());
        let bad = deployment(json!({"matchLabels": {"app": "x"}}), json!({"app": "web"}));
        assert_eq!(
            messages(&bad),
            vec![
                r#"spec.selector: Invalid value: {"app":"x"}: selector does not match template labels"#
            ]
        );
        let expr = deployment(
            json!({"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["web"]}]}),
            json!({"app": "web"}),
        );
        assert!(has(
            &messages(&expr),
            "selector does not match template labels"
        ));
        let empty = deployment(json!({}), json!({"app": "web"}));
        assert_eq!(messages(&empty), vec!["spec.selector: Required value"]);
        let bad_op = deployment(
            json!({"matchExpressions": [{"key": "app", "operator": "Near"}]}),
            json!({"app": "web"}),
        );
        assert!(has(
            &messages(&bad_op),
            "spec.selector.matchExpressions[0].operator: Unsupported value: \"Near\""
        ));
    }

    #[test]
    fn workload_pod_template_rules() {
        let o = obj(
            Kind::ReplicaSet,
            json!({
                "metadata": {"name": "rs"},
                "spec": {
                    "replicas": -1,
                    "selector": {"matchLabels": {"app": "a"}},
                    "template": {
                        "metadata": {"labels": {"app": "a"}},
                        "spec": {
                            "restartPolicy": "Never",
                            "containers": [
                                {"name": "a", "image": "x", "ports": [
                                    {"containerPort": 0},
                                    {"containerPort": 53, "protocol": "SCTP"}
                                ]},
                                {"name": "a", "image": ""},
                                {"name": "Bad_Name", "image": "x"}
                            ]
                        }
                    }
                }
            }),
        );
        let e = messages(&o);
        assert!(
            has(
                &e,
                "spec.replicas: Invalid value: -1: must be greater than or equal to 0"
            ),
            "{e:?}"
        );
        assert!(
            has(
                &e,
                "spec.template.spec.restartPolicy: Unsupported value: \"Never\": supported values: \"Always\""
            ),
            "{e:?}"
        );
        assert!(
            has(
                &e,
                "spec.template.spec.containers[0].ports[0].containerPort: Invalid value: 0: must be between 1 and 65535, inclusive"
            ),
            "{e:?}"
        );
        assert!(
            has(
                &e,
                "containers[0].ports[1].protocol: Unsupported value: \"SCTP\": not supported by Bramble"
            ),
            "{e:?}"
        );
        assert!(
            has(
                &e,
                "spec.template.spec.containers[1].name: Duplicate value: \"a\""
            ),
            "{e:?}"
        );
        assert!(
            has(&e, "spec.template.spec.containers[1].image: Required value"),
            "{e:?}"
        );
        assert!(
            has(
                &e,
                "spec.template.spec.containers[2].name: Invalid value: \"Bad_Name\""
            ),
            "{e:?}"
        );
    }

    #[test]
    fn pod_rules() {
        let o = obj(
            Kind::Pod,
            json!({"metadata": {"name": "p"}, "spec": {"containers": [], "restartPolicy": "Sometimes"}}),
        );
        let e = messages(&o);
        assert!(has(&e, "spec.containers: Required value"), "{e:?}");
        assert!(
            has(&e, "spec.restartPolicy: Unsupported value: \"Sometimes\""),
            "{e:?}"
        );
        let o = obj(
            Kind::Pod,
            json!({"metadata": {"name": "p"}, "spec": {"restartPolicy": "Never",
            "containers": [{"name": "c", "image": "i", "env": [{"name": "1X"}]}]}}),
        );
        let e = messages(&o);
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            has(&e, "spec.containers[0].env[0].name: Invalid value: \"1X\""),
            "{e:?}"
        );
    }

    #[test]
    fn deployment_strategy() {
        let mut o = deployment(
            json!({"matchLabels": {"app": "web"}}),
            json!({"app": "web"}),
        );
        if let Object::Deployment(d) = &mut o {
            d.spec.as_mut().unwrap().strategy = Some(serde_json::from_value(json!({
                "type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": "0%"}
            })).unwrap());
        }
        assert!(has(&messages(&o), "may not be 0 when `maxSurge` is 0"));
        if let Object::Deployment(d) = &mut o {
            d.spec.as_mut().unwrap().strategy =
                Some(serde_json::from_value(json!({"type": "Blue"})).unwrap());
        }
        assert!(has(
            &messages(&o),
            "spec.strategy.type: Unsupported value: \"Blue\""
        ));
        if let Object::Deployment(d) = &mut o {
            d.spec.as_mut().unwrap().strategy = Some(
                serde_json::from_value(json!({
                    "type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "x%"}
                }))
                .unwrap(),
            );
        }
        assert!(has(&messages(&o), "a valid percent string"));
    }

    fn service(spec: Value) -> Object {
        obj(
            Kind::Service,
            json!({"metadata": {"name": "web"}, "spec": spec}),
        )
    }

    #[test]
    fn service_rules() {
        let ok = service(json!({"type": "NodePort", "selector": {"app": "web"},
            "ports": [{"port": 80, "targetPort": 8080, "nodePort": 30080}]}));
        assert_eq!(messages(&ok), Vec::<String>::new());
        assert!(messages(&service(json!({"clusterIP": "None"}))).is_empty());
        let e = messages(&service(json!({})));
        assert_eq!(e, vec!["spec.ports: Required value"]);
        let lb =
            service(json!({"type": "LoadBalancer", "ports": [{"port": 80, "nodePort": 30080}]}));
        assert!(messages(&lb).is_empty(), "{:?}", messages(&lb));
        let e = messages(&service(
            json!({"type": "LoadBalancer", "clusterIP": "None", "ports": [{"port": 80}]}),
        ));
        assert!(
            has(&e, "may not be set to 'None' for LoadBalancer services"),
            "{e:?}"
        );
        let ext = service(json!({"type": "ExternalName", "externalName": "db.example.org."}));
        assert!(messages(&ext).is_empty(), "{:?}", messages(&ext));
        let e = messages(&service(json!({"type": "ExternalName"})));
        assert_eq!(e, vec!["spec.externalName: Required value"]);
        let e = messages(&service(
            json!({"type": "ExternalName", "externalName": "not a name", "clusterIP": "10.96.0.3"}),
        ));
        assert!(has(&e, "spec.externalName: Invalid value"), "{e:?}");
        assert!(
            has(
                &e,
                "spec.clusterIP: Forbidden: may not be set for ExternalName"
            ),
            "{e:?}"
        );
        let e = messages(&service(
            json!({"type": "ExternalName", "externalName": "a.org", "ports": [{"port": 80, "nodePort": 30080}]}),
        ));
        assert!(has(&e, "spec.ports[0].nodePort: Forbidden"), "{e:?}");
        let e = messages(&service(
            json!({"type": "Ingress", "ports": [{"port": 80}]}),
        ));
        assert!(
            has(&e, "spec.type: Unsupported value: \"Ingress\""),
            "{e:?}"
        );
        let e = messages(&service(
            json!({"ports": [{"port": 80}], "sessionAffinity": "ClientIP",
            "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 0}}}),
        ));
        assert!(
            has(
                &e,
                "spec.sessionAffinityConfig.clientIP.timeoutSeconds: Invalid value: 0"
            ),
            "{e:?}"
        );
        let bad_balance = obj(
            Kind::Service,
            json!({"metadata": {"name": "web", "annotations": {"bramble.io/load-balancing": "random"}},
                   "spec": {"ports": [{"port": 80}]}}),
        );
        let e = messages(&bad_balance);
        assert!(
            has(
                &e,
                "metadata.annotations[bramble.io/load-balancing]: Unsupported value: \"random\""
            ),
            "{e:?}"
        );
        let e = messages(&service(
            json!({"ports": [{"port": 80, "nodePort": 30080}]}),
        ));
        assert!(
            has(
                &e,
                "spec.ports[0].nodePort: Forbidden: may not be used when `type` is 'ClusterIP'"
            ),
            "{e:?}"
        );
        let e = messages(&service(
            json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 80}]}),
        ));
        assert!(has(&e, "range of valid ports is 30000-32767"), "{e:?}");
        let custom = ValidationOptions {
            node_port_range: 80..=90,
        };
        let o = service(json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 80}]}));
        assert!(validate_with(&o, &custom).is_empty());
        let e = messages(&service(json!({"clusterIP": "10.96.0.300", "ports": [
            {"port": 80}, {"name": "b", "port": 80, "protocol": "SCTP", "targetPort": "HTTP"},
            {"name": "b", "port": 70000}
        ]})));
        assert!(
            has(&e, "spec.clusterIP: Invalid value: \"10.96.0.300\""),
            "{e:?}"
        );
        assert!(has(&e, "spec.ports[0].name: Required value"), "{e:?}");
        assert!(
            has(&e, "spec.ports[1].protocol: Unsupported value: \"SCTP\""),
            "{e:?}"
        );
        assert!(
            has(&e, "spec.ports[1].targetPort: Invalid value: \"HTTP\""),
            "{e:?}"
        );
        assert!(
            has(&e, "spec.ports[2].name: Duplicate value: \"b\""),
            "{e:?}"
        );
        assert!(has(&e, "spec.ports[2].port: Invalid value: 70000"), "{e:?}");
        let e = messages(&service(
            json!({"ports": [{"name": "a", "port": 80}, {"name": "b", "port": 80}]}),
        ));
        assert_eq!(
            e,
            vec![r#"spec.ports[1]: Duplicate value: {"port":80,"protocol":"TCP"}"#]
        );
        let e = messages(&service(
            json!({"clusterIP": "fd00::1", "ports": [{"port": 80}]}),
        ));
        assert!(has(&e, "IPv6 is not supported"), "{e:?}");
        let e = messages(&service(
            json!({"ports": [{"port": 80}], "selector": {"app": "a b"}}),
        ));
        assert!(has(&e, "spec.selector: Invalid value: \"a b\""), "{e:?}");
    }

    #[test]
    fn config_map_and_endpoints() {
        let o = obj(
            Kind::ConfigMap,
            json!({"metadata": {"name": "c"},
            "data": {"ok.key": "1", "bad/key": "2", "both": "x"},
            "binaryData": {"both": "eA=="}}),
        );
        let e = messages(&o);
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(
            has(
                &e,
                "data[bad/key]: Invalid value: \"bad/key\": a valid config key"
            ),
            "{e:?}"
        );
        assert!(
            has(
                &e,
                "data[both]: Invalid value: \"both\": duplicate of key present in binaryData"
            ),
            "{e:?}"
        );
        let o = obj(
            Kind::Endpoints,
            json!({"metadata": {"name": "web"}, "subsets": [
                {"addresses": [{"ip": "10.88.0.2"}, {"ip": "nope"}], "ports": [{"port": 0}]}
            ]}),
        );
        let e = messages(&o);
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(
            has(&e, "subsets[0].addresses[1].ip: Invalid value: \"nope\""),
            "{e:?}"
        );
        assert!(
            has(&e, "subsets[0].ports[0].port: Invalid value: 0"),
            "{e:?}"
        );
    }
}
