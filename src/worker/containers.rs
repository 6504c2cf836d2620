//! From a pod's spec to what the runtime runs: one [`ContainerConfig`] per
//! container start. Pure: the node-side facts (runtime id, netns, log file,
//! volume directories) come in through [`Placement`], the ConfigMaps and
//! Secrets of the node's assignment and the node's own facts through
//! [`NodeContext`].
//!
//! Owns: the environment (literal values, `valueFrom`, `envFrom`, Kubernetes'
//! `$(VAR)` expansion of env values, command and args), the effective
//! `securityContext` (pod-level overridden by the container's), cgroup
//! resources from requests and limits, and volume mounts. The downward API
//! values ([`field_value`], [`resource_value`]) are shared with the volumes.
//!
//! Must not touch: the filesystem (the volumes module materialises volumes),
//! the runtime, the pod's records.

use std::collections::BTreeMap;
use std::path::PathBuf;

use k8s_openapi::api::core::v1::{
    ConfigMap, Container, Pod, PodSecurityContext, ResourceFieldSelector, Secret, SecurityContext,
};

use crate::api::quantity;
use crate::api::resources::container_resources;
use crate::runtime::{BindMount, ContainerConfig, Propagation, Resources, SecurityConfig};

use super::podsync::PodRecord;

/// Where on this node a container start lands.
#[derive(Clone, Debug, Default)]
pub struct Placement {
    pub runtime_id: String,
    /// The pod's network namespace; `None` for host network.
    pub netns: Option<PathBuf>,
    pub log_path: PathBuf,
    /// The host directory (or file, for a hostPath) of each of the pod's
    /// volumes, as the volumes module prepared them.
    pub volumes: BTreeMap<String, PathBuf>,
}

/// What the node knows that a container's configuration may need.
#[derive(Clone, Copy, Debug, Default)]
pub struct NodeContext<'a> {
    pub node_name: &'a str,
    /// The node's hostname: a `hostNetwork` pod's hostname.
    pub node_hostname: &'a str,
    pub host_ip: &'a str,
    /// The ConfigMaps and Secrets of the node's assignment.
    pub configmaps: &'a [ConfigMap],
    pub secrets: &'a [Secret],
    /// What `resourceFieldRef` reports for a limit the container does not set.
    pub allocatable_cpu_millis: i64,
    pub allocatable_memory_bytes: i64,
    /// The node's per-container pids limit.
    pub pids_limit: Option<i64>,
}

/// Why a container cannot be configured: the kubelet's
/// `CreateContainerConfigError`. The message is what Kubernetes says.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("configmap {0:?} not found")]
    ConfigMapNotFound(String),
    #[error("secret {0:?} not found")]
    SecretNotFound(String),
    #[error("couldn't find key {key} in ConfigMap {namespace}/{name}")]
    ConfigMapKey {
        key: String,
        namespace: String,
        name: String,
    },
    #[error("couldn't find key {key} in Secret {namespace}/{name}")]
    SecretKey {
        key: String,
        namespace: String,
        name: String,
    },
    #[error("env {var}: unsupported fieldPath {path:?}")]
    FieldPath { var: String, path: String },
    #[error("{field}: {reason}")]
    Resource { field: String, reason: String },
    #[error("{field}: {reason}")]
    Security { field: String, reason: String },
    #[error("volumeMounts {mount:?}: {reason}")]
    Mount { mount: String, reason: String },
}

/// The runtime's view of starting `container` of `pod` now. `service_env`
/// is the Service variables of the pod's namespace (empty with
/// `enableServiceLinks: false`): the kubelet's base environment, so the
/// container's own `env` overrides them and `$(VAR)` in env values, command
/// and args sees them.
pub fn container_config(
    pod: &Pod,
    rec: &PodRecord,
    container: &Container,
    place: Placement,
    node: &NodeContext,
    service_env: &[(String, String)],
) -> Result<ContainerConfig, ConfigError> {
    let spec = pod.spec.clone().unwrap_or_default();
    let env = environment(pod, rec, container, node, service_env)?;
    let lookup: BTreeMap<&str, &str> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let expand_all = |v: &Option<Vec<String>>| -> Vec<String> {
        v.iter()
            .flatten()
            .map(|s| expand(s, &|n| lookup.get(n).map(|v| v.to_string())))
            .collect()
    };
    let host_network = spec.host_network == Some(true);
    let hostname = if host_network {
        node.node_hostname.to_string()
    } else {
        spec.hostname.clone().unwrap_or_else(|| rec.name.clone())
    };
    let security = security(
        spec.security_context.as_ref(),
        container.security_context.as_ref(),
    )?;
    let mounts = mounts(pod, container, &place.volumes, security.privileged)?;
    Ok(ContainerConfig {
        id: place.runtime_id,
        pod_uid: rec.uid.clone(),
        pod_namespace: rec.namespace.clone(),
        pod_name: rec.name.clone(),
        container_name: container.name.clone(),
        image: container.image.clone().unwrap_or_default(),
        command: expand_all(&container.command),
        args: expand_all(&container.args),
        env,
        working_dir: container.working_dir.clone(),
        hostname,
        resolv_conf: None,
        netns: place.netns,
        log_path: place.log_path,
        resources: resources(container, node)?,
        mounts,
        security,
        host_pid: spec.host_pid == Some(true),
    })
}

fn resources(container: &Container, node: &NodeContext) -> Result<Resources, ConfigError> {
    let r = container_resources(container).map_err(|e| ConfigError::Resource {
        field: format!("containers[{}].resources", container.name),
        reason: e.to_string(),
    })?;
    Ok(Resources {
        memory_limit_bytes: r.memory_limit_bytes.filter(|b| *b > 0),
        cpu_limit_millis: r.cpu_limit_millis.filter(|m| *m > 0),
        cpu_request_millis: r.cpu_request_millis.filter(|m| *m > 0),
        pids_limit: node.pids_limit.filter(|l| *l > 0),
    })
}

/// Kubernetes' `$(VAR)` expansion: `$(NAME)` is replaced by NAME's value
/// when `lookup` knows it and left as written otherwise; `$$` is a literal
/// `$`; any other `$` stays as it is.
pub fn expand(input: &str, lookup: &dyn Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('(') {
            match body.find(')') {
                Some(end) => {
                    let name = &body[..end];
                    match lookup(name) {
                        Some(v) => out.push_str(&v),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &body[end + 1..];
                }
                None => {
                    out.push_str("$(");
                    rest = body;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

fn find_configmap<'a>(node: &NodeContext<'a>, ns: &str, name: &str) -> Option<&'a ConfigMap> {
    node.configmaps.iter().find(|c| {
        c.metadata.namespace.as_deref() == Some(ns) && c.metadata.name.as_deref() == Some(name)
    })
}

fn find_secret<'a>(node: &NodeContext<'a>, ns: &str, name: &str) -> Option<&'a Secret> {
    node.secrets.iter().find(|s| {
        s.metadata.namespace.as_deref() == Some(ns) && s.metadata.name.as_deref() == Some(name)
    })
}

/// A ConfigMap's entries as the volumes and the environment see them.
pub fn configmap_data(cm: &ConfigMap) -> BTreeMap<String, Vec<u8>> {
    let mut out: BTreeMap<String, Vec<u8>> = cm
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.clone().into_bytes()))
        .collect();
    for (k, v) in cm.binary_data.iter().flatten() {
        out.insert(k.clone(), v.0.clone());
    }
    out
}

/// A Secret's entries: `data`, with `stringData` written over it, as the API
/// server merges them on write.
pub fn secret_data(s: &Secret) -> BTreeMap<String, Vec<u8>> {
    let mut out: BTreeMap<String, Vec<u8>> = s
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.0.clone()))
        .collect();
    for (k, v) in s.string_data.iter().flatten() {
        out.insert(k.clone(), v.clone().into_bytes());
    }
    out
}

/// Looks a ConfigMap up for the pod's namespace.
pub fn configmap<'a>(
    node: &NodeContext<'a>,
    pod: &Pod,
    name: &str,
) -> Result<&'a ConfigMap, ConfigError> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
    find_configmap(node, ns, name).ok_or_else(|| ConfigError::ConfigMapNotFound(name.into()))
}

/// Looks a Secret up for the pod's namespace.
pub fn secret<'a>(
    node: &NodeContext<'a>,
    pod: &Pod,
    name: &str,
) -> Result<&'a Secret, ConfigError> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
    find_secret(node, ns, name).ok_or_else(|| ConfigError::SecretNotFound(name.into()))
}

/// Whether `name` is a valid environment variable name (Kubernetes' C
/// identifier rule, relaxed as it is since 1.30 to any printable ASCII but `=`).
fn valid_env_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b'=')
}

/// The container's environment, in Kubernetes' order: the Service
/// variables, then `envFrom` sources in turn, then `env` entries, a later
/// name replacing an earlier one in place.
fn environment(
    pod: &Pod,
    rec: &PodRecord,
    container: &Container,
    node: &NodeContext,
    service_env: &[(String, String)],
) -> Result<Vec<(String, String)>, ConfigError> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let mut env: Vec<(String, String)> = service_env.to_vec();
    let set = |env: &mut Vec<(String, String)>, k: String, v: String| match env
        .iter_mut()
        .find(|(key, _)| *key == k)
    {
        Some(slot) => slot.1 = v,
        None => env.push((k, v)),
    };
    for from in container.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        let entries = if let Some(r) = &from.config_map_ref {
            match configmap(node, pod, &r.name) {
                Ok(cm) => cm.data.clone().unwrap_or_default(),
                Err(_) if r.optional == Some(true) => continue,
                Err(e) => return Err(e),
            }
        } else if let Some(r) = &from.secret_ref {
            match secret(node, pod, &r.name) {
                Ok(s) => secret_data(s)
                    .into_iter()
                    .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
                    .collect(),
                Err(_) if r.optional == Some(true) => continue,
                Err(e) => return Err(e),
            }
        } else {
            continue;
        };
        for (k, v) in entries {
            let name = format!("{prefix}{k}");
            // The kubelet skips invalid names (with an event) rather than fail.
            if valid_env_name(&name) {
                set(&mut env, name, v);
            }
        }
    }
    for e in container.env.iter().flatten() {
        let value = match &e.value_from {
            None => {
                let current: BTreeMap<String, String> = env.iter().cloned().collect();
                expand(e.value.as_deref().unwrap_or_default(), &|n| {
                    current.get(n).cloned()
                })
            }
            Some(from) => {
                if let Some(r) = &from.config_map_key_ref {
                    let cm = match configmap(node, pod, &r.name) {
                        Ok(cm) => cm,
                        Err(_) if r.optional == Some(true) => continue,
                        Err(err) => return Err(err),
                    };
                    match cm.data.as_ref().and_then(|d| d.get(&r.key)) {
                        Some(v) => v.clone(),
                        None if r.optional == Some(true) => continue,
                        None => {
                            return Err(ConfigError::ConfigMapKey {
                                key: r.key.clone(),
                                namespace: ns.clone(),
                                name: r.name.clone(),
                            });
                        }
                    }
                } else if let Some(r) = &from.secret_key_ref {
                    let s = match secret(node, pod, &r.name) {
                        Ok(s) => s,
                        Err(_) if r.optional == Some(true) => continue,
                        Err(err) => return Err(err),
                    };
                    match secret_data(s).get(&r.key) {
                        Some(v) => String::from_utf8_lossy(v).into_owned(),
                        None if r.optional == Some(true) => continue,
                        None => {
                            return Err(ConfigError::SecretKey {
                                key: r.key.clone(),
                                namespace: ns.clone(),
                                name: r.name.clone(),
                            });
                        }
                    }
                } else if let Some(f) = &from.field_ref {
                    field_value(pod, rec, node, &f.field_path).ok_or_else(|| {
                        ConfigError::FieldPath {
                            var: e.name.clone(),
                            path: f.field_path.clone(),
                        }
                    })?
                } else if let Some(r) = &from.resource_field_ref {
                    resource_value(pod, container, r, node)?
                } else {
                    String::new()
                }
            }
        };
        set(&mut env, e.name.clone(), value);
    }
    Ok(env)
}

/// The pod's IP as Kubernetes reports it: the node's for host network.
fn pod_ip(pod: &Pod, rec: &PodRecord, node: &NodeContext) -> String {
    let host_network = pod.spec.as_ref().and_then(|s| s.host_network) == Some(true);
    match rec.ip {
        Some(ip) if !host_network => ip.to_string(),
        _ if host_network => node.host_ip.to_string(),
        _ => String::new(),
    }
}

/// `metadata.labels` / `metadata.annotations` as a downward API file:
/// `key="value"` lines, sorted, values quoted like Go's `%q`.
pub fn format_map(map: &BTreeMap<String, String>) -> String {
    map.iter()
        .map(|(k, v)| format!("{k}={}\n", serde_json::Value::String(v.clone())))
        .collect()
}

/// A downward API `fieldRef`: `metadata.name`, `metadata.namespace`,
/// `metadata.uid`, `metadata.labels['k']`, `metadata.annotations['k']`,
/// `metadata.labels` and `metadata.annotations` (volumes only, all of them),
/// `spec.nodeName`, `spec.serviceAccountName`, `status.podIP`,
/// `status.podIPs`, `status.hostIP`, `status.hostIPs`. `None` when unsupported.
pub fn field_value(pod: &Pod, rec: &PodRecord, node: &NodeContext, path: &str) -> Option<String> {
    let m = &pod.metadata;
    let spec = pod.spec.as_ref();
    let subscript = |prefix: &str| -> Option<String> {
        let rest = path
            .strip_prefix(prefix)?
            .strip_prefix('[')?
            .strip_suffix(']')?;
        let key = rest
            .strip_prefix('\'')
            .and_then(|r| r.strip_suffix('\''))
            .or_else(|| rest.strip_prefix('"').and_then(|r| r.strip_suffix('"')))?;
        Some(key.to_string())
    };
    if let Some(k) = subscript("metadata.labels") {
        return Some(
            m.labels
                .as_ref()
                .and_then(|l| l.get(&k))
                .cloned()
                .unwrap_or_default(),
        );
    }
    if let Some(k) = subscript("metadata.annotations") {
        return Some(
            m.annotations
                .as_ref()
                .and_then(|a| a.get(&k))
                .cloned()
                .unwrap_or_default(),
        );
    }
    Some(match path {
        "metadata.name" => rec.name.clone(),
        "metadata.namespace" => rec.namespace.clone(),
        "metadata.uid" => rec.uid.clone(),
        "metadata.labels" => format_map(&m.labels.clone().unwrap_or_default()),
        "metadata.annotations" => format_map(&m.annotations.clone().unwrap_or_default()),
        "spec.nodeName" => spec
            .and_then(|s| s.node_name.clone())
            .unwrap_or_else(|| node.node_name.to_string()),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".into()),
        "status.podIP" | "status.podIPs" => pod_ip(pod, rec, node),
        "status.hostIP" | "status.hostIPs" => node.host_ip.to_string(),
        _ => return None,
    })
}

/// A downward API `resourceFieldRef`: a container's CPU or memory request or
/// limit over `divisor`, rounded up; an unset limit is the node's
/// allocatable, as the kubelet reports it.
pub fn resource_value(
    pod: &Pod,
    container: &Container,
    sel: &ResourceFieldSelector,
    node: &NodeContext,
) -> Result<String, ConfigError> {
    let field = format!("resourceFieldRef {}", sel.resource);
    let err = |reason: String| ConfigError::Resource {
        field: field.clone(),
        reason,
    };
    let target = match sel.container_name.as_deref().filter(|n| !n.is_empty()) {
        Some(name) => pod
            .spec
            .iter()
            .flat_map(|s| {
                s.containers
                    .iter()
                    .chain(s.init_containers.iter().flatten())
            })
            .find(|c| c.name == name)
            .ok_or_else(|| err(format!("no container {name:?} in the pod")))?,
        None => container,
    };
    let r = container_resources(target).map_err(|e| err(e.to_string()))?;
    let divisor = sel
        .divisor
        .as_ref()
        .map(|d| quantity::parse(&d.0))
        .transpose()
        .map_err(|e| err(e.to_string()))?
        .filter(|d| !d.is_zero())
        .unwrap_or(quantity::Amount::from_units(1));
    let div_ceil = |v: i128, d: i128| -> i128 { (v + d - 1).div_euclid(d) };
    let value: i128 = match sel.resource.as_str() {
        "limits.cpu" | "requests.cpu" => {
            let millis = if sel.resource == "limits.cpu" {
                r.cpu_limit_millis.unwrap_or(node.allocatable_cpu_millis)
            } else {
                r.cpu_request_millis.unwrap_or(0)
            };
            let d = divisor.millis_ceil().max(1) as i128;
            div_ceil(millis as i128, d)
        }
        "limits.memory" | "requests.memory" => {
            let bytes = if sel.resource == "limits.memory" {
                r.memory_limit_bytes
                    .unwrap_or(node.allocatable_memory_bytes)
            } else {
                r.memory_request_bytes.unwrap_or(0)
            };
            div_ceil(bytes as i128, divisor.units_ceil().max(1) as i128)
        }
        "limits.ephemeral-storage" | "requests.ephemeral-storage" => 0,
        other => return Err(err(format!("unsupported resource {other:?}"))),
    };
    Ok(value.to_string())
}

fn uid(v: Option<i64>, field: &str) -> Result<Option<u32>, ConfigError> {
    v.map(|n| {
        u32::try_from(n).map_err(|_| ConfigError::Security {
            field: field.into(),
            reason: format!("{n} is not a valid ID"),
        })
    })
    .transpose()
}

/// The pod's and the container's `securityContext`, the container's winning.
fn security(
    pod: Option<&PodSecurityContext>,
    c: Option<&SecurityContext>,
) -> Result<SecurityConfig, ConfigError> {
    let p = pod.cloned().unwrap_or_default();
    let c = c.cloned().unwrap_or_default();
    let mut groups = Vec::new();
    for g in p
        .supplemental_groups
        .iter()
        .flatten()
        .chain(p.fs_group.iter())
    {
        if let Some(g) = uid(Some(*g), "securityContext.supplementalGroups")?
            && !groups.contains(&g)
        {
            groups.push(g);
        }
    }
    let privileged = c.privileged == Some(true);
    let caps = c.capabilities.unwrap_or_default();
    Ok(SecurityConfig {
        run_as_user: uid(c.run_as_user.or(p.run_as_user), "securityContext.runAsUser")?,
        run_as_group: uid(
            c.run_as_group.or(p.run_as_group),
            "securityContext.runAsGroup",
        )?,
        run_as_non_root: c.run_as_non_root.or(p.run_as_non_root) == Some(true),
        supplemental_groups: groups,
        read_only_rootfs: c.read_only_root_filesystem == Some(true),
        privileged,
        no_new_privileges: c.allow_privilege_escalation == Some(false) && !privileged,
        capabilities_add: caps.add.unwrap_or_default(),
        capabilities_drop: caps.drop.unwrap_or_default(),
    })
}

/// Volume kinds whose content the kubelet owns: always mounted read-only.
fn kubelet_managed(pod: &Pod, volume: &str) -> bool {
    pod.spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .find(|v| v.name == volume)
        .is_some_and(|v| {
            v.config_map.is_some()
                || v.secret.is_some()
                || v.downward_api.is_some()
                || v.projected.is_some()
        })
}

fn mounts(
    pod: &Pod,
    container: &Container,
    volumes: &BTreeMap<String, PathBuf>,
    privileged: bool,
) -> Result<Vec<BindMount>, ConfigError> {
    let mut out = Vec::new();
    for m in container.volume_mounts.iter().flatten() {
        let fail = |reason: String| ConfigError::Mount {
            mount: m.mount_path.clone(),
            reason,
        };
        let base = volumes
            .get(&m.name)
            .ok_or_else(|| fail(format!("no volume {:?} in the pod", m.name)))?;
        let source = match m.sub_path.as_deref().filter(|s| !s.is_empty()) {
            Some(sub) => {
                let p = std::path::Path::new(sub);
                if p.is_absolute()
                    || p.components()
                        .any(|c| matches!(c, std::path::Component::ParentDir))
                {
                    return Err(fail(format!(
                        "subPath {sub:?} must be a relative path without '..'"
                    )));
                }
                base.join(p)
            }
            None => base.clone(),
        };
        let propagation = match m.mount_propagation.as_deref() {
            None | Some("None") => Propagation::Private,
            Some("HostToContainer") => Propagation::HostToContainer,
            Some("Bidirectional") if privileged => Propagation::Bidirectional,
            Some("Bidirectional") => {
                return Err(fail(
                    "Bidirectional mount propagation needs a privileged container".into(),
                ));
            }
            Some(other) => return Err(fail(format!("unknown mountPropagation {other:?}"))),
        };
        out.push(BindMount {
            source,
            destination: m.mount_path.clone(),
            read_only: m.read_only == Some(true) || kubelet_managed(pod, &m.name),
            propagation,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;
    use k8s_openapi::api::core::v1::{
        Capabilities, ConfigMapEnvSource, ConfigMapKeySelector, EnvFromSource, EnvVar,
        EnvVarSource, ObjectFieldSelector, PodSpec, ResourceRequirements, SecretEnvSource,
        SecretKeySelector, Volume, VolumeMount,
    };
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn lit(name: &str, value: &str) -> EnvVar {
        EnvVar {
            name: name.into(),
            value: Some(value.into()),
            ..Default::default()
        }
    }

    fn from(name: &str, src: EnvVarSource) -> EnvVar {
        EnvVar {
            name: name.into(),
            value_from: Some(src),
            ..Default::default()
        }
    }

    fn pod_with(container: Container) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("p".into()),
                namespace: Some("default".into()),
                uid: Some("u1".into()),
                labels: Some(BTreeMap::from([("app".into(), "web".into())])),
                ..Default::default()
            },
            spec: Some(PodSpec {
                containers: vec![container],
                node_name: Some("n1".into()),
                ..Default::default()
            }),
            status: None,
        }
    }

    fn cm(name: &str, data: &[(&str, &str)]) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                ..Default::default()
            },
            data: Some(
                data.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..Default::default()
        }
    }

    fn secret_obj(name: &str, data: &[(&str, &str)]) -> Secret {
        Secret {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                ..Default::default()
            },
            data: Some(
                data.iter()
                    .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                    .collect(),
            ),
            ..Default::default()
        }
    }

    fn config(pod: &Pod, node: &NodeContext) -> Result<ContainerConfig, ConfigError> {
        let mut rec = PodRecord::new(pod, 0);
        rec.ip = Some("10.88.0.7".parse().unwrap());
        let container = pod.spec.as_ref().unwrap().containers[0].clone();
        container_config(
            pod,
            &rec,
            &container,
            Placement {
                runtime_id: "u1-web-0".into(),
                log_path: "/l".into(),
                volumes: BTreeMap::from([("data".to_string(), PathBuf::from("/v/data"))]),
                ..Default::default()
            },
            node,
            &[],
        )
    }

    #[test]
    fn command_args_env_and_hostname() {
        let container = Container {
            name: "web".into(),
            image: Some("demo".into()),
            command: Some(vec!["sh".into()]),
            args: Some(vec!["-c".into(), "true".into()]),
            env: Some(vec![lit("A", "1")]),
            ..Default::default()
        };
        let cfg = config(&pod_with(container), &NodeContext::default()).unwrap();
        assert_eq!(cfg.hostname, "p");
        assert_eq!(cfg.command, vec!["sh"]);
        assert_eq!(cfg.args, vec!["-c", "true"]);
        assert_eq!(cfg.env, vec![("A".to_string(), "1".to_string())]);
    }

    #[test]
    fn service_variables_are_the_base_of_env_and_expansion() {
        let container = Container {
            name: "web".into(),
            image: Some("demo".into()),
            command: Some(vec!["wget".into()]),
            args: Some(vec![
                "http://$(WEB_SERVICE_HOST):$(WEB_SERVICE_PORT)/".into(),
                "$(URL)".into(),
            ]),
            env: Some(vec![
                lit("URL", "http://$(WEB_SERVICE_HOST):$(WEB_SERVICE_PORT)"),
                // The container's own value wins over the Service's.
                lit("DB_SERVICE_PORT", "6543"),
            ]),
            ..Default::default()
        };
        let pod = pod_with(container.clone());
        let mut rec = PodRecord::new(&pod, 0);
        rec.ip = Some("10.88.0.7".parse().unwrap());
        let service_env = [
            ("DB_SERVICE_HOST".to_string(), "10.96.0.9".to_string()),
            ("DB_SERVICE_PORT".to_string(), "5432".to_string()),
            ("WEB_SERVICE_HOST".to_string(), "10.96.0.5".to_string()),
            ("WEB_SERVICE_PORT".to_string(), "80".to_string()),
        ];
        let cfg = container_config(
            &pod,
            &rec,
            &container,
            Placement::default(),
            &NodeContext::default(),
            &service_env,
        )
        .unwrap();
        assert_eq!(
            cfg.args,
            vec!["http://10.96.0.5:80/", "http://10.96.0.5:80"]
        );
        let env: BTreeMap<&str, &str> = cfg
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(env.len(), cfg.env.len(), "one entry per name");
        assert_eq!(env["URL"], "http://10.96.0.5:80");
        assert_eq!(env["DB_SERVICE_PORT"], "6543");
        assert_eq!(env["WEB_SERVICE_HOST"], "10.96.0.5");
        // The Service variables come first, as the kubelet orders them.
        assert_eq!(cfg.env[0].0, "DB_SERVICE_HOST");
    }

    #[test]
    fn expansion_rules() {
        let vars = BTreeMap::from([("A", "1"), ("B", "two")]);
        let f = |s: &str| expand(s, &|n| vars.get(n).map(|v| v.to_string()));
        assert_eq!(f("$(A)-$(B)"), "1-two");
        assert_eq!(f("$(MISSING)"), "$(MISSING)");
        assert_eq!(f("$$(A)"), "$(A)");
        assert_eq!(f("$$$(A)"), "$1");
        assert_eq!(f("cost: $5"), "cost: $5");
        assert_eq!(f("$(A"), "$(A");
        assert_eq!(f("trailing $"), "trailing $");
        assert_eq!(f("$()"), "$()");
        assert_eq!(f("x$(A)y$(B)z"), "x1ytwoz");
        assert_eq!(f("ünï$(A)çødé"), "ünï1çødé");
    }

    #[test]
    fn env_from_every_source_in_kubernetes_order() {
        let container = Container {
            name: "web".into(),
            env_from: Some(vec![
                EnvFromSource {
                    config_map_ref: Some(ConfigMapEnvSource {
                        name: "cfg".into(),
                        optional: None,
                    }),
                    prefix: Some("CFG_".into()),
                    ..Default::default()
                },
                EnvFromSource {
                    secret_ref: Some(SecretEnvSource {
                        name: "creds".into(),
                        optional: None,
                    }),
                    ..Default::default()
                },
                EnvFromSource {
                    config_map_ref: Some(ConfigMapEnvSource {
                        name: "absent".into(),
                        optional: Some(true),
                    }),
                    ..Default::default()
                },
            ]),
            env: Some(vec![
                lit("GREETING", "hello $(CFG_who) at $(POD_NAME)"),
                from(
                    "POD_NAME",
                    EnvVarSource {
                        field_ref: Some(ObjectFieldSelector {
                            field_path: "metadata.name".into(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                ),
                lit("LATER", "$(POD_NAME)/$(password)/$$(POD_NAME)"),
                from(
                    "MODE",
                    EnvVarSource {
                        config_map_key_ref: Some(ConfigMapKeySelector {
                            name: "cfg".into(),
                            key: "mode".into(),
                            optional: None,
                        }),
                        ..Default::default()
                    },
                ),
                from(
                    "TOKEN",
                    EnvVarSource {
                        secret_key_ref: Some(SecretKeySelector {
                            name: "creds".into(),
                            key: "token".into(),
                            optional: None,
                        }),
                        ..Default::default()
                    },
                ),
                from(
                    "APP",
                    EnvVarSource {
                        field_ref: Some(ObjectFieldSelector {
                            field_path: "metadata.labels['app']".into(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                ),
                from(
                    "IP",
                    EnvVarSource {
                        field_ref: Some(ObjectFieldSelector {
                            field_path: "status.podIP".into(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                ),
                from(
                    "MAYBE",
                    EnvVarSource {
                        secret_key_ref: Some(SecretKeySelector {
                            name: "creds".into(),
                            key: "nope".into(),
                            optional: Some(true),
                        }),
                        ..Default::default()
                    },
                ),
            ]),
            command: Some(vec!["echo".into(), "$(MODE)".into(), "$$(MODE)".into()]),
            ..Default::default()
        };
        let cms = [cm("cfg", &[("who", "world"), ("mode", "fast")])];
        let secrets = [secret_obj(
            "creds",
            &[("token", "s3cret"), ("password", "pw")],
        )];
        let node = NodeContext {
            configmaps: &cms,
            secrets: &secrets,
            host_ip: "192.168.1.5",
            ..Default::default()
        };
        let cfg = config(&pod_with(container), &node).unwrap();
        let env: BTreeMap<_, _> = cfg.env.iter().cloned().collect();
        assert_eq!(env["CFG_who"], "world");
        assert_eq!(env["CFG_mode"], "fast");
        assert_eq!(env["password"], "pw");
        // POD_NAME is defined after GREETING: not expanded there, as in Kubernetes.
        assert_eq!(env["GREETING"], "hello world at $(POD_NAME)");
        assert_eq!(env["LATER"], "p/pw/$(POD_NAME)");
        assert_eq!(env["MODE"], "fast");
        assert_eq!(env["TOKEN"], "s3cret");
        assert_eq!(env["APP"], "web");
        assert_eq!(env["IP"], "10.88.0.7");
        assert!(!env.contains_key("MAYBE"));
        assert_eq!(cfg.command, vec!["echo", "fast", "$(MODE)"]);
        assert_eq!(cfg.env[0].0, "CFG_mode", "envFrom first, sorted by key");
    }

    #[test]
    fn missing_references_are_config_errors() {
        let with_env = |e: EnvVar| Container {
            name: "web".into(),
            env: Some(vec![e]),
            ..Default::default()
        };
        let cm_key = |name: &str, key: &str| {
            from(
                "X",
                EnvVarSource {
                    config_map_key_ref: Some(ConfigMapKeySelector {
                        name: name.into(),
                        key: key.into(),
                        optional: None,
                    }),
                    ..Default::default()
                },
            )
        };
        let cms = [cm("cfg", &[("a", "1")])];
        let node = NodeContext {
            configmaps: &cms,
            ..Default::default()
        };
        let err = config(&pod_with(with_env(cm_key("nope", "a"))), &node).unwrap_err();
        assert_eq!(err.to_string(), "configmap \"nope\" not found");
        let err = config(&pod_with(with_env(cm_key("cfg", "b"))), &node).unwrap_err();
        assert_eq!(
            err.to_string(),
            "couldn't find key b in ConfigMap default/cfg"
        );
        let bad_field = from(
            "X",
            EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: "spec.bogus".into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
        );
        assert!(matches!(
            config(&pod_with(with_env(bad_field)), &node),
            Err(ConfigError::FieldPath { .. })
        ));
        let secret_ref = Container {
            name: "web".into(),
            env_from: Some(vec![EnvFromSource {
                secret_ref: Some(SecretEnvSource {
                    name: "gone".into(),
                    optional: None,
                }),
                ..Default::default()
            }]),
            ..Default::default()
        };
        assert_eq!(
            config(&pod_with(secret_ref), &node)
                .unwrap_err()
                .to_string(),
            "secret \"gone\" not found"
        );
    }

    #[test]
    fn resource_fields_resources_and_security() {
        let res = |pairs: &[(&str, &str)]| {
            Some(
                pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), Quantity(v.to_string())))
                    .collect(),
            )
        };
        let rf = |name: &str, resource: &str, divisor: Option<&str>| {
            from(
                name,
                EnvVarSource {
                    resource_field_ref: Some(ResourceFieldSelector {
                        resource: resource.into(),
                        divisor: divisor.map(|d| Quantity(d.into())),
                        container_name: None,
                    }),
                    ..Default::default()
                },
            )
        };
        let container = Container {
            name: "web".into(),
            resources: Some(ResourceRequirements {
                requests: res(&[("cpu", "250m")]),
                limits: res(&[("cpu", "1500m"), ("memory", "64Mi")]),
                ..Default::default()
            }),
            env: Some(vec![
                rf("CPU_LIMIT", "limits.cpu", None),
                rf("CPU_LIMIT_M", "limits.cpu", Some("1m")),
                rf("CPU_REQ", "requests.cpu", Some("1m")),
                rf("MEM_LIMIT_MI", "limits.memory", Some("1Mi")),
                rf("MEM_REQ", "requests.memory", None),
            ]),
            security_context: Some(SecurityContext {
                run_as_user: Some(1000),
                read_only_root_filesystem: Some(true),
                allow_privilege_escalation: Some(false),
                capabilities: Some(Capabilities {
                    add: Some(vec!["NET_ADMIN".into()]),
                    drop: Some(vec!["ALL".into()]),
                }),
                ..Default::default()
            }),
            volume_mounts: Some(vec![
                VolumeMount {
                    name: "data".into(),
                    mount_path: "/data".into(),
                    ..Default::default()
                },
                VolumeMount {
                    name: "data".into(),
                    mount_path: "/one".into(),
                    sub_path: Some("sub/file".into()),
                    read_only: Some(true),
                    ..Default::default()
                },
            ]),
            ..Default::default()
        };
        let mut pod = pod_with(container);
        let spec = pod.spec.as_mut().unwrap();
        spec.security_context = Some(PodSecurityContext {
            run_as_user: Some(5),
            run_as_group: Some(3000),
            fs_group: Some(2000),
            supplemental_groups: Some(vec![4000]),
            ..Default::default()
        });
        spec.volumes = Some(vec![Volume {
            name: "data".into(),
            ..Default::default()
        }]);
        let node = NodeContext {
            pids_limit: Some(1024),
            ..Default::default()
        };
        let cfg = config(&pod, &node).unwrap();
        let env: BTreeMap<_, _> = cfg.env.iter().cloned().collect();
        assert_eq!(env["CPU_LIMIT"], "2", "1.5 cores rounded up");
        assert_eq!(env["CPU_LIMIT_M"], "1500");
        assert_eq!(env["CPU_REQ"], "250");
        assert_eq!(env["MEM_LIMIT_MI"], "64");
        assert_eq!(
            env["MEM_REQ"],
            (64 << 20).to_string(),
            "request defaults to the limit"
        );
        assert_eq!(
            cfg.resources,
            Resources {
                memory_limit_bytes: Some(64 << 20),
                cpu_limit_millis: Some(1500),
                cpu_request_millis: Some(250),
                pids_limit: Some(1024),
            }
        );
        let s = &cfg.security;
        assert_eq!(s.run_as_user, Some(1000), "the container's wins");
        assert_eq!(s.run_as_group, Some(3000));
        assert_eq!(s.supplemental_groups, vec![4000, 2000]);
        assert!(s.read_only_rootfs && s.no_new_privileges && !s.privileged);
        assert_eq!(s.capabilities_add, vec!["NET_ADMIN"]);
        assert_eq!(cfg.mounts.len(), 2);
        assert_eq!(cfg.mounts[0].source, PathBuf::from("/v/data"));
        assert!(!cfg.mounts[0].read_only);
        assert_eq!(cfg.mounts[1].source, PathBuf::from("/v/data/sub/file"));
        assert!(cfg.mounts[1].read_only);
    }

    #[test]
    fn bad_mounts_and_host_namespaces() {
        let mount = |sub: Option<&str>, prop: Option<&str>| Container {
            name: "web".into(),
            volume_mounts: Some(vec![VolumeMount {
                name: "data".into(),
                mount_path: "/d".into(),
                sub_path: sub.map(String::from),
                mount_propagation: prop.map(String::from),
                ..Default::default()
            }]),
            ..Default::default()
        };
        let node = NodeContext {
            node_hostname: "pi1",
            host_ip: "192.168.1.5",
            ..Default::default()
        };
        assert!(config(&pod_with(mount(Some("../x"), None)), &node).is_err());
        assert!(config(&pod_with(mount(Some("/x"), None)), &node).is_err());
        assert!(config(&pod_with(mount(None, Some("Bidirectional"))), &node).is_err());
        let cfg = config(&pod_with(mount(None, Some("HostToContainer"))), &node).unwrap();
        assert_eq!(cfg.mounts[0].propagation, Propagation::HostToContainer);
        let mut unknown = pod_with(mount(None, None));
        unknown.spec.as_mut().unwrap().containers[0]
            .volume_mounts
            .as_mut()
            .unwrap()[0]
            .name = "ghost".into();
        assert!(matches!(
            config(&unknown, &node),
            Err(ConfigError::Mount { .. })
        ));

        let mut host = pod_with(Container {
            name: "web".into(),
            env: Some(vec![from(
                "IP",
                EnvVarSource {
                    field_ref: Some(ObjectFieldSelector {
                        field_path: "status.podIP".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            )]),
            ..Default::default()
        });
        let spec = host.spec.as_mut().unwrap();
        spec.host_network = Some(true);
        spec.host_pid = Some(true);
        let cfg = config(&host, &node).unwrap();
        assert_eq!(cfg.hostname, "pi1");
        assert!(cfg.host_pid);
        assert_eq!(cfg.env, vec![("IP".to_string(), "192.168.1.5".to_string())]);
    }

    #[test]
    fn downward_api_maps_are_quoted_and_sorted() {
        let m = BTreeMap::from([
            ("b".to_string(), "two words".to_string()),
            ("a".to_string(), "quote\"d\n".to_string()),
        ]);
        assert_eq!(format_map(&m), "a=\"quote\\\"d\\n\"\nb=\"two words\"\n");
    }
}
