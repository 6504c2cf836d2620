//! Fields Bramble accepts but does not act on.
//!
//! A manifest written for Kubernetes applies unchanged, but a field Bramble
//! ignores must never vanish silently: [`check`] walks an object's JSON form
//! against the per-kind table of field paths Bramble implements and returns one
//! warning per set field outside it. Later work extends the tables below as
//! features land (probes, volumes, resources, affinity, …).
//!
//! Owns: the tables of implemented fields. Must not touch: validation (values
//! that would change meaning are errors there, not warnings here), defaults.

use serde_json::Value;

use super::{Kind, Object};

/// Metadata fields Bramble implements or owns (server-set fields such as
/// `managedFields` come back in objects exported from a real cluster and are
/// ignored the way `status` is). `finalizers` and `generateName` are not
/// implemented.
const METADATA: &[&str] = &[
    "name",
    "namespace",
    "labels",
    "annotations",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "ownerReferences",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
    "selfLink",
];

/// A Secret is stored, served, and sent to the nodes whose pods use it.
const SECRET: &[&str] = &["data", "stringData", "type", "immutable"];

const EVENT: &[&str] = &[
    "involvedObject",
    "reason",
    "message",
    "type",
    "source",
    "firstTimestamp",
    "lastTimestamp",
    "eventTime",
    "count",
    "reportingComponent",
    "reportingInstance",
    "action",
    "related",
    "series",
];

/// Metadata of a pod template.
const TEMPLATE_METADATA: &[&str] = &["name", "labels", "annotations"];

/// Pod spec fields, relative to the spec (`spec.` of a Pod,
/// `spec.template.spec.` of a ReplicaSet or Deployment). `[]` stands for every
/// element of a list; a path allows everything beneath it.
const POD_SPEC: &[&str] = &[
    "containers[].name",
    "containers[].image",
    "containers[].imagePullPolicy",
    "containers[].command",
    "containers[].args",
    "containers[].env[].name",
    "containers[].env[].value",
    "containers[].env[].valueFrom.configMapKeyRef",
    "containers[].env[].valueFrom.secretKeyRef",
    "containers[].env[].valueFrom.fieldRef",
    "containers[].env[].valueFrom.resourceFieldRef",
    "containers[].envFrom",
    "containers[].workingDir",
    "containers[].ports[].name",
    "containers[].ports[].containerPort",
    "containers[].ports[].protocol",
    // Forwarded from every node address (hostIP only matters to the scheduler).
    "containers[].ports[].hostPort",
    // cpu and memory become cgroup limits and scheduler requests.
    "containers[].resources.limits",
    "containers[].resources.requests",
    "containers[].volumeMounts[].name",
    "containers[].volumeMounts[].mountPath",
    "containers[].volumeMounts[].readOnly",
    "containers[].volumeMounts[].subPath",
    "containers[].volumeMounts[].mountPropagation",
    "containers[].securityContext.runAsUser",
    "containers[].securityContext.runAsGroup",
    "containers[].securityContext.runAsNonRoot",
    "containers[].securityContext.readOnlyRootFilesystem",
    "containers[].securityContext.privileged",
    "containers[].securityContext.allowPrivilegeEscalation",
    "containers[].securityContext.capabilities",
    "volumes[].name",
    "volumes[].emptyDir",
    "volumes[].hostPath",
    "volumes[].configMap",
    "volumes[].secret",
    "volumes[].downwardAPI",
    "volumes[].projected.defaultMode",
    "volumes[].projected.sources[].configMap",
    "volumes[].projected.sources[].secret",
    "volumes[].projected.sources[].downwardAPI",
    // A local-path directory on the claim's node (master/controllers/volumes.rs).
    "volumes[].persistentVolumeClaim.claimName",
    "securityContext.runAsUser",
    "securityContext.runAsGroup",
    "securityContext.runAsNonRoot",
    "securityContext.supplementalGroups",
    "securityContext.fsGroup",
    "hostNetwork",
    "hostPID",
    "containers[].terminationMessagePath",
    "containers[].terminationMessagePolicy",
    "restartPolicy",
    "terminationGracePeriodSeconds",
    "dnsPolicy",
    "schedulerName",
    "nodeName",
    "nodeSelector",
    // The scheduler's filters and scores (and eviction from unreachable nodes).
    "affinity.nodeAffinity",
    "tolerations",
    "hostname",
    // Probes with exec, TCP, HTTP(S) and gRPC handlers.
    "containers[].livenessProbe.exec",
    "containers[].livenessProbe.tcpSocket",
    "containers[].livenessProbe.grpc",
    "containers[].livenessProbe.httpGet.scheme",
    "containers[].livenessProbe.httpGet.path",
    "containers[].livenessProbe.httpGet.port",
    "containers[].livenessProbe.httpGet.host",
    "containers[].livenessProbe.httpGet.httpHeaders",
    "containers[].livenessProbe.initialDelaySeconds",
    "containers[].livenessProbe.periodSeconds",
    "containers[].livenessProbe.timeoutSeconds",
    "containers[].livenessProbe.successThreshold",
    "containers[].livenessProbe.failureThreshold",
    "containers[].livenessProbe.terminationGracePeriodSeconds",
    "containers[].readinessProbe.exec",
    "containers[].readinessProbe.tcpSocket",
    "containers[].readinessProbe.grpc",
    "containers[].readinessProbe.httpGet.scheme",
    "containers[].readinessProbe.httpGet.path",
    "containers[].readinessProbe.httpGet.port",
    "containers[].readinessProbe.httpGet.host",
    "containers[].readinessProbe.httpGet.httpHeaders",
    "containers[].readinessProbe.initialDelaySeconds",
    "containers[].readinessProbe.periodSeconds",
    "containers[].readinessProbe.timeoutSeconds",
    "containers[].readinessProbe.successThreshold",
    "containers[].readinessProbe.failureThreshold",
    "containers[].startupProbe.exec",
    "containers[].startupProbe.tcpSocket",
    "containers[].startupProbe.grpc",
    "containers[].startupProbe.httpGet.scheme",
    "containers[].startupProbe.httpGet.path",
    "containers[].startupProbe.httpGet.port",
    "containers[].startupProbe.httpGet.host",
    "containers[].startupProbe.httpGet.httpHeaders",
    "containers[].startupProbe.initialDelaySeconds",
    "containers[].startupProbe.periodSeconds",
    "containers[].startupProbe.timeoutSeconds",
    "containers[].startupProbe.successThreshold",
    "containers[].startupProbe.failureThreshold",
    "containers[].startupProbe.terminationGracePeriodSeconds",
    // Lifecycle hooks with exec, TCP, HTTP and sleep handlers.
    "containers[].lifecycle.postStart.exec",
    "containers[].lifecycle.postStart.httpGet.path",
    "containers[].lifecycle.postStart.httpGet.port",
    "containers[].lifecycle.postStart.httpGet.host",
    "containers[].lifecycle.postStart.httpGet.httpHeaders",
    "containers[].lifecycle.postStart.httpGet.scheme",
    "containers[].lifecycle.postStart.tcpSocket",
    "containers[].lifecycle.postStart.sleep",
    "containers[].lifecycle.preStop.exec",
    "containers[].lifecycle.preStop.httpGet.path",
    "containers[].lifecycle.preStop.httpGet.port",
    "containers[].lifecycle.preStop.httpGet.host",
    "containers[].lifecycle.preStop.httpGet.httpHeaders",
    "containers[].lifecycle.preStop.httpGet.scheme",
    "containers[].lifecycle.preStop.tcpSocket",
    "containers[].lifecycle.preStop.sleep",
    // Init containers, run in order before the app containers.
    "initContainers[].name",
    "initContainers[].image",
    "initContainers[].imagePullPolicy",
    "initContainers[].command",
    "initContainers[].args",
    "initContainers[].env[].name",
    "initContainers[].env[].value",
    "initContainers[].workingDir",
    "initContainers[].env[].valueFrom.configMapKeyRef",
    "initContainers[].env[].valueFrom.secretKeyRef",
    "initContainers[].env[].valueFrom.fieldRef",
    "initContainers[].env[].valueFrom.resourceFieldRef",
    "initContainers[].envFrom",
    "initContainers[].resources.limits",
    "initContainers[].resources.requests",
    "initContainers[].volumeMounts[].name",
    "initContainers[].volumeMounts[].mountPath",
    "initContainers[].volumeMounts[].readOnly",
    "initContainers[].volumeMounts[].subPath",
    "initContainers[].volumeMounts[].mountPropagation",
    "initContainers[].securityContext.runAsUser",
    "initContainers[].securityContext.runAsGroup",
    "initContainers[].securityContext.runAsNonRoot",
    "initContainers[].securityContext.readOnlyRootFilesystem",
    "initContainers[].securityContext.privileged",
    "initContainers[].securityContext.allowPrivilegeEscalation",
    "initContainers[].securityContext.capabilities",
    "initContainers[].terminationMessagePath",
    "initContainers[].terminationMessagePolicy",
    "imagePullSecrets",
    "subdomain",
    "dnsConfig",
    "enableServiceLinks",
];

/// Kubernetes' default values of pod spec fields Bramble does not implement:
/// setting one to its default changes nothing, so it does not warn.
const POD_SPEC_DEFAULTS: &[(&str, KubeDefault)] = &[
    ("hostNetwork", KubeDefault::Bool(false)),
    ("hostPID", KubeDefault::Bool(false)),
    ("hostIPC", KubeDefault::Bool(false)),
    ("shareProcessNamespace", KubeDefault::Bool(false)),
    ("preemptionPolicy", KubeDefault::Str("PreemptLowerPriority")),
    ("priority", KubeDefault::Int(0)),
    ("serviceAccountName", KubeDefault::Str("default")),
    ("serviceAccount", KubeDefault::Str("default")),
    ("containers[].stdin", KubeDefault::Bool(false)),
    ("containers[].stdinOnce", KubeDefault::Bool(false)),
    ("containers[].tty", KubeDefault::Bool(false)),
];

const REPLICASET_SPEC: &[&str] = &["replicas", "selector", "minReadySeconds"];

const DEPLOYMENT_SPEC: &[&str] = &[
    "replicas",
    "selector",
    "strategy",
    "revisionHistoryLimit",
    "progressDeadlineSeconds",
    "minReadySeconds",
    "paused",
];

const SERVICE_SPEC: &[&str] = &[
    "type",
    "selector",
    "ports[].name",
    "ports[].protocol",
    "ports[].port",
    "ports[].targetPort",
    "ports[].nodePort",
    "clusterIP",
    "clusterIPs",
    "sessionAffinity",
    "sessionAffinityConfig",
    "internalTrafficPolicy",
    "externalTrafficPolicy",
    "ipFamilies",
    "ipFamilyPolicy",
    "externalName",
    "publishNotReadyAddresses",
    "allocateLoadBalancerNodePorts",
];

const STATEFULSET_SPEC: &[&str] = &[
    "replicas",
    "selector",
    "serviceName",
    "podManagementPolicy",
    "updateStrategy.type",
    "updateStrategy.rollingUpdate.partition",
    "revisionHistoryLimit",
    "minReadySeconds",
    "volumeClaimTemplates[].apiVersion",
    "volumeClaimTemplates[].kind",
    "volumeClaimTemplates[].metadata.name",
    "volumeClaimTemplates[].metadata.labels",
    "volumeClaimTemplates[].metadata.annotations",
    "volumeClaimTemplates[].spec.accessModes",
    "volumeClaimTemplates[].spec.resources.requests",
    "volumeClaimTemplates[].spec.storageClassName",
    "volumeClaimTemplates[].spec.volumeMode",
    "volumeClaimTemplates[].status",
];

/// Retain is what Bramble does with claims; Delete would change meaning.
const STATEFULSET_DEFAULTS: &[(&str, KubeDefault)] = &[
    (
        "persistentVolumeClaimRetentionPolicy.whenDeleted",
        KubeDefault::Str("Retain"),
    ),
    (
        "persistentVolumeClaimRetentionPolicy.whenScaled",
        KubeDefault::Str("Retain"),
    ),
];

const DAEMONSET_SPEC: &[&str] = &[
    "selector",
    "updateStrategy.type",
    "updateStrategy.rollingUpdate.maxUnavailable",
    "revisionHistoryLimit",
    "minReadySeconds",
];

const DAEMONSET_DEFAULTS: &[(&str, KubeDefault)] =
    &[("updateStrategy.rollingUpdate.maxSurge", KubeDefault::Int(0))];

/// Relative to the Job spec.
const JOB_SPEC: &[&str] = &[
    "parallelism",
    "completions",
    "backoffLimit",
    "activeDeadlineSeconds",
    "ttlSecondsAfterFinished",
    "suspend",
    "selector",
    "manualSelector",
];

const JOB_DEFAULTS: &[(&str, KubeDefault)] = &[
    ("completionMode", KubeDefault::Str("NonIndexed")),
    (
        "podReplacementPolicy",
        KubeDefault::Str("TerminatingOrFailed"),
    ),
];

const CRONJOB_SPEC: &[&str] = &[
    "schedule",
    "timeZone",
    "concurrencyPolicy",
    "suspend",
    "successfulJobsHistoryLimit",
    "failedJobsHistoryLimit",
    "startingDeadlineSeconds",
    "jobTemplate.metadata.labels",
    "jobTemplate.metadata.annotations",
];

const HPA_SPEC: &[&str] = &[
    "scaleTargetRef",
    "minReplicas",
    "maxReplicas",
    "metrics[].type",
    "metrics[].resource",
    "behavior.scaleDown.stabilizationWindowSeconds",
];

const PVC: &[&str] = &[
    "spec.accessModes",
    "spec.resources.requests",
    "spec.storageClassName",
    "spec.volumeMode",
    "spec.volumeName",
];

const CONFIGMAP: &[&str] = &["data", "binaryData", "immutable"];
const NAMESPACE_SPEC: &[&str] = &["finalizers"];
const ENDPOINTS: &[&str] = &["subsets"];
const NODE_SPEC: &[&str] = &["podCIDR", "podCIDRs", "unschedulable"];

/// A Kubernetes default value, for [`POD_SPEC_DEFAULTS`] and friends.
#[derive(Clone, Copy, Debug)]
enum KubeDefault {
    Bool(bool),
    Int(i64),
    Str(&'static str),
}

impl KubeDefault {
    fn equals(self, v: &Value) -> bool {
        match self {
            KubeDefault::Bool(b) => v.as_bool() == Some(b),
            KubeDefault::Int(i) => v.as_i64() == Some(i),
            KubeDefault::Str(s) => v.as_str() == Some(s),
        }
    }
}

/// The implemented paths and known defaults of one kind, as full path patterns
/// (`spec.template.spec.containers[].name`).
struct Table {
    allowed: Vec<String>,
    defaults: Vec<(String, KubeDefault)>,
}

impl Table {
    fn for_kind(kind: Kind) -> Table {
        let mut t = Table {
            allowed: vec!["apiVersion".into(), "kind".into(), "status".into()],
            defaults: Vec::new(),
        };
        t.allow("metadata.", METADATA);
        let pod_template = |t: &mut Table| {
            t.allow("spec.template.metadata.", TEMPLATE_METADATA);
            t.allow("spec.template.spec.", POD_SPEC);
            t.default("spec.template.spec.", POD_SPEC_DEFAULTS);
        };
        match kind {
            Kind::Pod => {
                t.allow("spec.", POD_SPEC);
                t.default("spec.", POD_SPEC_DEFAULTS);
            }
            Kind::ReplicaSet => {
                t.allow("spec.", REPLICASET_SPEC);
                pod_template(&mut t);
            }
            Kind::Deployment => {
                t.allow("spec.", DEPLOYMENT_SPEC);
                pod_template(&mut t);
            }
            Kind::Service => {
                t.allow("spec.", SERVICE_SPEC);
            }
            Kind::ConfigMap => t.allow("", CONFIGMAP),
            Kind::Namespace => t.allow("spec.", NAMESPACE_SPEC),
            Kind::Endpoints => t.allow("", ENDPOINTS),
            Kind::Node => t.allow("spec.", NODE_SPEC),
            Kind::Secret => t.allow("", SECRET),
            // Events are written by Bramble itself; all of one is its own.
            Kind::Event => t.allow("", EVENT),
            // Written by the StatefulSet and DaemonSet controllers.
            Kind::ControllerRevision => t.allow("", &["data", "revision"]),
            Kind::StatefulSet => {
                t.allow("spec.", STATEFULSET_SPEC);
                t.default("spec.", STATEFULSET_DEFAULTS);
                pod_template(&mut t);
            }
            Kind::DaemonSet => {
                t.allow("spec.", DAEMONSET_SPEC);
                t.default("spec.", DAEMONSET_DEFAULTS);
                pod_template(&mut t);
            }
            Kind::Job => {
                t.allow("spec.", JOB_SPEC);
                t.default("spec.", JOB_DEFAULTS);
                pod_template(&mut t);
            }
            Kind::CronJob => {
                t.allow("spec.", CRONJOB_SPEC);
                t.allow("spec.jobTemplate.spec.", JOB_SPEC);
                t.default("spec.jobTemplate.spec.", JOB_DEFAULTS);
                t.allow(
                    "spec.jobTemplate.spec.template.metadata.",
                    TEMPLATE_METADATA,
                );
                t.allow("spec.jobTemplate.spec.template.spec.", POD_SPEC);
                t.default("spec.jobTemplate.spec.template.spec.", POD_SPEC_DEFAULTS);
            }
            Kind::HorizontalPodAutoscaler => t.allow("spec.", HPA_SPEC),
            Kind::PersistentVolumeClaim => t.allow("", PVC),
        }
        t
    }

    fn allow(&mut self, prefix: &str, paths: &[&str]) {
        self.allowed
            .extend(paths.iter().map(|p| format!("{prefix}{p}")));
    }

    fn default(&mut self, prefix: &str, defaults: &[(&str, KubeDefault)]) {
        self.defaults
            .extend(defaults.iter().map(|(p, d)| (format!("{prefix}{p}"), *d)));
    }

    fn allows(&self, pattern: &str) -> bool {
        self.allowed.iter().any(|a| a == pattern)
    }

    /// Whether some implemented path lies beneath `pattern`, so the walk must
    /// look inside it.
    fn leads_somewhere(&self, pattern: &str) -> bool {
        let defaults = self.defaults.iter().map(|(p, _)| p);
        self.allowed.iter().chain(defaults).any(|a| {
            a.strip_prefix(pattern)
                .is_some_and(|rest| rest.starts_with('.') || rest.starts_with("[]"))
        })
    }

    fn is_default(&self, pattern: &str, v: &Value) -> bool {
        self.defaults
            .iter()
            .any(|(p, d)| p == pattern && d.equals(v))
    }
}

/// `null`, `{}`, `[]` and `""` are unset as far as Kubernetes is concerned.
fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::String(s) => s.is_empty(),
        _ => false,
    }
}

/// One warning per set field of `obj` that Bramble does not implement, e.g.
/// `spec.template.spec.containers[0].livenessProbe: not implemented by Bramble, ignored`.
pub fn check(obj: &Object) -> Vec<String> {
    let table = Table::for_kind(obj.kind());
    let mut out = Vec::new();
    walk(&obj.to_json(), "", "", &table, &mut out);
    out
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

/// Walks the members of `value` (an object). `pattern` is the path with list
/// indices written `[]` (what the table holds), `shown` the same path with the
/// real indices (what the user reads).
fn walk(value: &Value, pattern: &str, shown: &str, table: &Table, out: &mut Vec<String>) {
    let Value::Object(map) = value else {
        return;
    };
    for (key, v) in map {
        let pattern = join(pattern, key);
        let shown = join(shown, key);
        if table.allows(&pattern) {
            continue;
        }
        if table.leads_somewhere(&pattern) {
            descend(v, &pattern, &shown, table, out);
        } else if !is_empty(v) && !table.is_default(&pattern, v) {
            out.push(format!("{shown}: not implemented by Bramble, ignored"));
        }
    }
}

fn descend(v: &Value, pattern: &str, shown: &str, table: &Table, out: &mut Vec<String>) {
    match v {
        Value::Object(_) => walk(v, pattern, shown, table, out),
        Value::Array(items) => {
            let pattern = format!("{pattern}[]");
            for (i, item) in items.iter().enumerate() {
                let shown = format!("{shown}[{i}]");
                descend(item, &pattern, &shown, table, out);
            }
        }
        // A scalar where the schema has a structure: the deserializer would
        // have rejected it, nothing to report here.
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::defaults;
    use serde_json::json;

    fn obj(kind: Kind, v: Value) -> Object {
        let mut o = Object::from_json(kind, v).unwrap();
        defaults::apply(&mut o);
        o
    }

    #[test]
    fn deployment_probe_and_resources_warn() {
        let d = obj(
            Kind::Deployment,
            json!({
                "metadata": {"name": "web", "finalizers": ["x"], "managedFields": [{"manager": "kubectl"}]},
                "spec": {
                    "replicas": 2,
                    "selector": {"matchLabels": {"app": "web"}},
                    "template": {
                        "metadata": {"labels": {"app": "web"}, "creationTimestamp": null},
                        "spec": {
                            "hostNetwork": false,
                            "enableServiceLinks": true,
                            "volumes": [],
                            "securityContext": {"runAsUser": 1000, "seccompProfile": {"type": "RuntimeDefault"}},
                            "containers": [{
                                "name": "web",
                                "image": "nginx",
                                "tty": false,
                                "livenessProbe": {"grpc": {"port": 9000}, "periodSeconds": 5},
                                "readinessProbe": {"exec": {"command": ["true"]}, "periodSeconds": 5},
                                "startupProbe": {"httpGet": {"port": 80, "scheme": "HTTPS"}},
                                "lifecycle": {"preStop": {"exec": {"command": ["true"]}}, "postStart": {"httpGet": {"port": 80, "scheme": "HTTP"}}},
                                "resources": {},
                                "env": [{"name": "A", "value": "1"}, {"name": "B", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                                "ports": [{"containerPort": 80, "hostPort": 8080}]
                            }]
                        }
                    }
                },
                "status": {"replicas": 2}
            }),
        );
        assert_eq!(
            check(&d),
            vec![
                "metadata.finalizers: not implemented by Bramble, ignored",
                "spec.template.spec.securityContext.seccompProfile: not implemented by Bramble, ignored",
            ]
        );
    }

    #[test]
    fn service_and_pod() {
        let s = obj(
            Kind::Service,
            json!({"metadata": {"name": "s"}, "spec": {
                "type": "NodePort", "externalTrafficPolicy": "Local", "internalTrafficPolicy": "Local",
                "externalIPs": ["1.2.3.4"], "ports": [{"port": 80, "appProtocol": "http"}]
            }}),
        );
        assert_eq!(
            check(&s),
            vec![
                "spec.externalIPs: not implemented by Bramble, ignored",
                "spec.ports[0].appProtocol: not implemented by Bramble, ignored",
            ]
        );
        let p = obj(
            Kind::Pod,
            json!({"metadata": {"name": "p"}, "spec": {"hostNetwork": true, "hostIPC": true, "nodeName": "pi1",
                "volumes": [{"name": "d", "emptyDir": {}}, {"name": "pvc", "persistentVolumeClaim": {"claimName": "x", "readOnly": true}}],
                "containers": [{"name": "c", "image": "i", "command": ["sh"], "workingDir": "/",
                    "volumeMounts": [{"name": "d", "mountPath": "/d", "subPathExpr": "$(X)"}]}]}}),
        );
        assert_eq!(
            check(&p),
            vec![
                "spec.containers[0].volumeMounts[0].subPathExpr: not implemented by Bramble, ignored",
                "spec.hostIPC: not implemented by Bramble, ignored",
                "spec.volumes[1].persistentVolumeClaim.readOnly: not implemented by Bramble, ignored",
            ]
        );
    }

    #[test]
    fn other_kinds() {
        let n = obj(
            Kind::Node,
            json!({"metadata": {"name": "pi1"}, "spec": {"podCIDR": "10.88.1.0/24", "taints": [{"key": "k", "effect": "NoSchedule"}]},
                   "status": {"capacity": {"cpu": "4"}}}),
        );
        assert_eq!(
            check(&n),
            vec!["spec.taints: not implemented by Bramble, ignored"]
        );
        let c = obj(
            Kind::ConfigMap,
            json!({"metadata": {"name": "c"}, "data": {"a": "b"}, "immutable": true}),
        );
        assert!(check(&c).is_empty());
        let e = obj(
            Kind::Endpoints,
            json!({"metadata": {"name": "e"}, "subsets": [{"addresses": [{"ip": "10.88.0.2"}]}]}),
        );
        assert!(check(&e).is_empty());
        let ns = obj(
            Kind::Namespace,
            json!({"metadata": {"name": "n", "generateName": "x-"}, "spec": {"finalizers": ["kubernetes"]}}),
        );
        assert_eq!(
            check(&ns),
            vec!["metadata.generateName: not implemented by Bramble, ignored"]
        );
    }
}
