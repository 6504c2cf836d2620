//! Defaulting: fills in what the Kubernetes API server would default when an
//! object is created, so that `get -o yaml` looks like Kubernetes' and the
//! controllers never have to guess (replicas 1, restartPolicy Always, …).
//!
//! Owns: default values only; it never overwrites a value the user set, so
//! [`apply`] is idempotent. Must not touch: validation (runs after), allocation
//! of ClusterIPs or nodePorts (the master's job), storage.

use k8s_openapi::api::apps::v1::{DeploymentStrategy, RollingUpdateDeployment};
use k8s_openapi::api::core::v1::{
    Container, EndpointPort, NamespaceStatus, PodSecurityContext, PodSpec, PodStatus,
    PodTemplateSpec, Probe, ServicePort, ServiceSpec,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{DEFAULT_NAMESPACE, Object};

pub const DEFAULT_MAX_SURGE: &str = "25%";
pub const DEFAULT_MAX_UNAVAILABLE: &str = "25%";
pub const DEFAULT_REVISION_HISTORY_LIMIT: i32 = 10;
pub const DEFAULT_PROGRESS_DEADLINE_SECONDS: i32 = 600;
pub const DEFAULT_TERMINATION_GRACE_PERIOD_SECONDS: i64 = 30;
pub const DEFAULT_SCHEDULER_NAME: &str = "default-scheduler";
pub const DEFAULT_TERMINATION_MESSAGE_PATH: &str = "/dev/termination-log";

/// Fills in every defaulted field of `obj` that is absent.
pub fn apply(obj: &mut Object) {
    if obj.kind().namespaced() {
        let ns = &mut obj.meta_mut().namespace;
        if ns.as_deref().is_none_or(str::is_empty) {
            *ns = Some(DEFAULT_NAMESPACE.to_string());
        }
    }
    match obj {
        Object::Pod(pod) => {
            pod_spec(pod.spec.get_or_insert_with(PodSpec::default));
            // The API server's create strategy starts every pod Pending.
            let status = pod.status.get_or_insert_with(PodStatus::default);
            status.phase.get_or_insert_with(|| "Pending".to_string());
        }
        Object::ReplicaSet(rs) => {
            if let Some(spec) = &mut rs.spec {
                spec.replicas.get_or_insert(1);
                if let Some(t) = &mut spec.template {
                    template(t);
                }
            }
        }
        Object::Deployment(d) => {
            if let Some(spec) = &mut d.spec {
                spec.replicas.get_or_insert(1);
                spec.revision_history_limit
                    .get_or_insert(DEFAULT_REVISION_HISTORY_LIMIT);
                spec.progress_deadline_seconds
                    .get_or_insert(DEFAULT_PROGRESS_DEADLINE_SECONDS);
                strategy(
                    spec.strategy
                        .get_or_insert_with(DeploymentStrategy::default),
                );
                template(&mut spec.template);
            }
        }
        Object::Service(svc) => service(svc.spec.get_or_insert_with(ServiceSpec::default)),
        Object::Endpoints(ep) => {
            for subset in ep.subsets.iter_mut().flatten() {
                for p in subset.ports.iter_mut().flatten() {
                    endpoint_port(p);
                }
            }
        }
        Object::Namespace(ns) => {
            let status = ns.status.get_or_insert_with(NamespaceStatus::default);
            status.phase.get_or_insert_with(|| "Active".to_string());
        }
        Object::StatefulSet(set) => {
            if let Some(spec) = &mut set.spec {
                spec.replicas.get_or_insert(1);
                spec.pod_management_policy
                    .get_or_insert_with(|| "OrderedReady".into());
                spec.revision_history_limit
                    .get_or_insert(DEFAULT_REVISION_HISTORY_LIMIT);
                let u = spec.update_strategy.get_or_insert_with(Default::default);
                let t = u.type_.get_or_insert_with(|| "RollingUpdate".into());
                if t == "RollingUpdate" {
                    u.rolling_update
                        .get_or_insert_with(Default::default)
                        .partition
                        .get_or_insert(0);
                }
                let p = spec
                    .persistent_volume_claim_retention_policy
                    .get_or_insert_with(Default::default);
                p.when_deleted.get_or_insert_with(|| "Retain".into());
                p.when_scaled.get_or_insert_with(|| "Retain".into());
                for c in spec.volume_claim_templates.iter_mut().flatten() {
                    claim(c);
                }
                template(&mut spec.template);
            }
        }
        Object::DaemonSet(ds) => {
            if let Some(spec) = &mut ds.spec {
                spec.revision_history_limit
                    .get_or_insert(DEFAULT_REVISION_HISTORY_LIMIT);
                let u = spec.update_strategy.get_or_insert_with(Default::default);
                let t = u.type_.get_or_insert_with(|| "RollingUpdate".into());
                if t == "RollingUpdate" {
                    let ru = u.rolling_update.get_or_insert_with(Default::default);
                    ru.max_unavailable.get_or_insert(IntOrString::Int(1));
                    ru.max_surge.get_or_insert(IntOrString::Int(0));
                }
                template(&mut spec.template);
            }
        }
        Object::Job(job) => {
            if let Some(spec) = &mut job.spec {
                job_spec(spec);
            }
        }
        Object::CronJob(cj) => {
            if let Some(spec) = &mut cj.spec {
                spec.concurrency_policy
                    .get_or_insert_with(|| "Allow".into());
                spec.suspend.get_or_insert(false);
                spec.successful_jobs_history_limit.get_or_insert(3);
                spec.failed_jobs_history_limit.get_or_insert(1);
                if let Some(js) = &mut spec.job_template.spec {
                    job_spec(js);
                }
            }
        }
        Object::HorizontalPodAutoscaler(h) => {
            if let Some(spec) = &mut h.spec {
                spec.min_replicas.get_or_insert(1);
            }
        }
        Object::PersistentVolumeClaim(c) => {
            claim(c);
            let st = c.status.get_or_insert_with(Default::default);
            st.phase.get_or_insert_with(|| "Pending".into());
        }
        Object::Secret(secret) => {
            secret.type_.get_or_insert_with(|| "Opaque".into());
            // `stringData` is write-only: it is merged into `data`, as the
            // API server does.
            if let Some(strings) = secret.string_data.take() {
                let data = secret.data.get_or_insert_with(Default::default);
                for (k, v) in strings {
                    data.insert(k, k8s_openapi::ByteString(v.into_bytes()));
                }
            }
        }
        _ => {}
    }
}

fn job_spec(spec: &mut k8s_openapi::api::batch::v1::JobSpec) {
    if spec.completions.is_none() && spec.parallelism.is_none() {
        spec.completions = Some(1);
        spec.parallelism = Some(1);
    }
    spec.parallelism.get_or_insert(1);
    spec.backoff_limit.get_or_insert(6);
    spec.completion_mode
        .get_or_insert_with(|| "NonIndexed".into());
    spec.suspend.get_or_insert(false);
    spec.pod_replacement_policy
        .get_or_insert_with(|| "TerminatingOrFailed".into());
    if let Some(t) = &mut spec.template.spec {
        // A Job's pods must not restart forever; Kubernetes insists on the
        // field, so defaulting leaves it for validation to report.
        let policy = t.restart_policy.take();
        pod_spec(t);
        t.restart_policy = policy;
    }
}

fn claim(c: &mut k8s_openapi::api::core::v1::PersistentVolumeClaim) {
    if let Some(spec) = &mut c.spec {
        spec.volume_mode.get_or_insert_with(|| "Filesystem".into());
    }
}

fn template(t: &mut PodTemplateSpec) {
    if let Some(spec) = &mut t.spec {
        pod_spec(spec);
    }
}

fn strategy(s: &mut DeploymentStrategy) {
    let type_ = s.type_.get_or_insert_with(|| "RollingUpdate".to_string());
    if type_ == "RollingUpdate" {
        let ru = s
            .rolling_update
            .get_or_insert_with(RollingUpdateDeployment::default);
        ru.max_surge
            .get_or_insert_with(|| IntOrString::String(DEFAULT_MAX_SURGE.into()));
        ru.max_unavailable
            .get_or_insert_with(|| IntOrString::String(DEFAULT_MAX_UNAVAILABLE.into()));
    }
}

/// Defaults of a pod spec, also applied to ReplicaSet and Deployment templates.
pub fn pod_spec(spec: &mut PodSpec) {
    spec.restart_policy
        .get_or_insert_with(|| "Always".to_string());
    spec.dns_policy
        .get_or_insert_with(|| "ClusterFirst".to_string());
    spec.termination_grace_period_seconds
        .get_or_insert(DEFAULT_TERMINATION_GRACE_PERIOD_SECONDS);
    spec.scheduler_name
        .get_or_insert_with(|| DEFAULT_SCHEDULER_NAME.to_string());
    spec.security_context
        .get_or_insert_with(PodSecurityContext::default);
    for c in spec
        .init_containers
        .iter_mut()
        .flatten()
        .chain(spec.containers.iter_mut())
    {
        container(c);
    }
}

/// The API server's probe defaults: 1 s timeout, every 10 s, 1 success, 3
/// failures; HTTP on `/`.
fn probe(p: &mut Probe) {
    p.timeout_seconds.get_or_insert(1);
    p.period_seconds.get_or_insert(10);
    p.success_threshold.get_or_insert(1);
    p.failure_threshold.get_or_insert(3);
    if let Some(h) = p.http_get.as_mut() {
        h.path.get_or_insert_with(|| "/".to_string());
        h.scheme.get_or_insert_with(|| "HTTP".to_string());
    }
}

fn container(c: &mut Container) {
    if c.image_pull_policy.is_none() {
        let policy = image_pull_policy(c.image.as_deref().unwrap_or(""));
        c.image_pull_policy = Some(policy.to_string());
    }
    c.termination_message_path
        .get_or_insert_with(|| DEFAULT_TERMINATION_MESSAGE_PATH.to_string());
    c.termination_message_policy
        .get_or_insert_with(|| "File".to_string());
    for p in c.ports.iter_mut().flatten() {
        p.protocol.get_or_insert_with(|| "TCP".to_string());
    }
    for p in [
        &mut c.liveness_probe,
        &mut c.readiness_probe,
        &mut c.startup_probe,
    ]
    .into_iter()
    .flatten()
    {
        probe(p);
    }
}

/// `Always` when the image's tag is `latest` or absent (and it has no digest),
/// `IfNotPresent` otherwise: Kubernetes' rule.
pub fn image_pull_policy(image: &str) -> &'static str {
    // The tag can only be in the last path component: `host:5000/app` has none.
    let last = image.rsplit('/').next().unwrap_or(image);
    if last.contains('@') {
        return "IfNotPresent";
    }
    match last.split_once(':') {
        None => "Always",
        Some((_, "latest")) => "Always",
        Some(_) => "IfNotPresent",
    }
}

fn service(spec: &mut ServiceSpec) {
    spec.type_.get_or_insert_with(|| "ClusterIP".to_string());
    spec.session_affinity
        .get_or_insert_with(|| "None".to_string());
    spec.internal_traffic_policy
        .get_or_insert_with(|| "Cluster".to_string());
    spec.ip_family_policy
        .get_or_insert_with(|| "SingleStack".to_string());
    if spec.ip_families.as_ref().is_none_or(Vec::is_empty) {
        spec.ip_families = Some(vec!["IPv4".to_string()]);
    }
    for p in spec.ports.iter_mut().flatten() {
        service_port(p);
    }
}

fn service_port(p: &mut ServicePort) {
    p.protocol.get_or_insert_with(|| "TCP".to_string());
    let unset = match &p.target_port {
        None => true,
        Some(IntOrString::Int(0)) => true,
        Some(IntOrString::String(s)) => s.is_empty(),
        Some(IntOrString::Int(_)) => false,
    };
    if unset {
        p.target_port = Some(IntOrString::Int(p.port));
    }
}

fn endpoint_port(p: &mut EndpointPort) {
    p.protocol.get_or_insert_with(|| "TCP".to_string());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Kind;
    use serde_json::json;

    fn obj(kind: Kind, v: serde_json::Value) -> Object {
        Object::from_json(kind, v).unwrap()
    }

    #[test]
    fn deployment_defaults_like_the_api_server() {
        let mut d = obj(
            Kind::Deployment,
            json!({
                "metadata": {"name": "web"},
                "spec": {
                    "selector": {"matchLabels": {"app": "web"}},
                    "template": {
                        "metadata": {"labels": {"app": "web"}},
                        "spec": {"containers": [
                            {"name": "a", "image": "nginx", "ports": [{"containerPort": 80}]},
                            {"name": "b", "image": "nginx:1.25"},
                            {"name": "c", "image": "reg:5000/x@sha256:abcd"},
                            {"name": "d", "image": "reg:5000/x"},
                            {"name": "e", "image": "x:latest", "imagePullPolicy": "Never"}
                        ]}
                    }
                }
            }),
        );
        apply(&mut d);
        let j = d.to_json();
        assert_eq!(j["metadata"]["namespace"], "default");
        let spec = &j["spec"];
        assert_eq!(spec["replicas"], 1);
        assert_eq!(spec["revisionHistoryLimit"], 10);
        assert_eq!(spec["progressDeadlineSeconds"], 600);
        assert_eq!(
            spec["strategy"],
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}})
        );
        let pod = &spec["template"]["spec"];
        assert_eq!(pod["restartPolicy"], "Always");
        assert_eq!(pod["dnsPolicy"], "ClusterFirst");
        assert_eq!(pod["terminationGracePeriodSeconds"], 30);
        assert_eq!(pod["schedulerName"], "default-scheduler");
        assert_eq!(pod["securityContext"], json!({}));
        let c = &pod["containers"];
        let policies: Vec<&str> = (0..5)
            .map(|i| c[i]["imagePullPolicy"].as_str().unwrap())
            .collect();
        assert_eq!(
            policies,
            ["Always", "IfNotPresent", "IfNotPresent", "Always", "Never"]
        );
        assert_eq!(c[0]["terminationMessagePath"], "/dev/termination-log");
        assert_eq!(c[0]["terminationMessagePolicy"], "File");
        assert_eq!(c[0]["ports"][0]["protocol"], "TCP");
    }

    #[test]
    fn recreate_strategy_gets_no_rolling_update() {
        let mut d = obj(
            Kind::Deployment,
            json!({"metadata": {"name": "w"}, "spec": {"strategy": {"type": "Recreate"}}}),
        );
        apply(&mut d);
        assert_eq!(d.to_json()["spec"]["strategy"], json!({"type": "Recreate"}));
    }

    #[test]
    fn service_defaults() {
        let mut s = obj(
            Kind::Service,
            json!({"metadata": {"name": "web", "namespace": "apps"},
                   "spec": {"ports": [{"port": 80}, {"port": 81, "targetPort": "http", "protocol": "UDP"}]}}),
        );
        apply(&mut s);
        let j = s.to_json();
        assert_eq!(j["metadata"]["namespace"], "apps");
        let spec = &j["spec"];
        assert_eq!(spec["type"], "ClusterIP");
        assert_eq!(spec["sessionAffinity"], "None");
        assert_eq!(spec["internalTrafficPolicy"], "Cluster");
        assert_eq!(spec["ipFamilies"], json!(["IPv4"]));
        assert_eq!(spec["ipFamilyPolicy"], "SingleStack");
        assert_eq!(
            spec["ports"][0],
            json!({"port": 80, "protocol": "TCP", "targetPort": 80})
        );
        assert_eq!(
            spec["ports"][1],
            json!({"port": 81, "protocol": "UDP", "targetPort": "http"})
        );
    }

    #[test]
    fn cluster_scoped_kinds_get_no_namespace() {
        let mut n = obj(Kind::Node, json!({"metadata": {"name": "pi1"}}));
        apply(&mut n);
        assert_eq!(n.meta().namespace, None);
        let mut ns = obj(Kind::Namespace, json!({"metadata": {"name": "apps"}}));
        apply(&mut ns);
        assert_eq!(ns.to_json()["status"]["phase"], "Active");
    }

    #[test]
    fn defaults_are_idempotent() {
        let objects = [
            obj(
                Kind::Pod,
                json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "i"}]}}),
            ),
            obj(
                Kind::ReplicaSet,
                json!({"metadata": {"name": "r"}, "spec": {"selector": {}, "template": {"spec": {"containers": [{"name": "c"}]}}}}),
            ),
            obj(
                Kind::Deployment,
                json!({"metadata": {"name": "d"}, "spec": {"template": {"spec": {"containers": [{"name": "c"}]}}}}),
            ),
            obj(
                Kind::Service,
                json!({"metadata": {"name": "s"}, "spec": {"ports": [{"port": 1}]}}),
            ),
            obj(
                Kind::Endpoints,
                json!({"metadata": {"name": "s"}, "subsets": [{"ports": [{"port": 1}]}]}),
            ),
            obj(Kind::ConfigMap, json!({"metadata": {"name": "c"}})),
            obj(Kind::Namespace, json!({"metadata": {"name": "n"}})),
            obj(Kind::Node, json!({"metadata": {"name": "n"}})),
        ];
        for mut o in objects {
            apply(&mut o);
            let once = o.clone();
            apply(&mut o);
            assert_eq!(o, once, "{:?}", o.kind());
            // And the defaulted object survives the wire.
            assert_eq!(Object::from_cbor(&o.to_cbor()).unwrap(), o);
        }
    }
}
