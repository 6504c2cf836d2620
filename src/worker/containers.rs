//! From a pod's spec to what the runtime runs: one [`ContainerConfig`] per
//! container start. Pure: the node-side facts (runtime id, netns, log file)
//! come in through [`Placement`].

use std::path::PathBuf;

use k8s_openapi::api::core::v1::{Container, Pod};

use crate::runtime::{ContainerConfig, Resources};

use super::podsync::PodRecord;

/// Where on this node a container start lands.
#[derive(Clone, Debug)]
pub struct Placement {
    pub runtime_id: String,
    /// The pod's network namespace; `None` for host network.
    pub netns: Option<PathBuf>,
    pub log_path: PathBuf,
}

/// The runtime's view of starting `container` of `pod` now.
pub fn container_config(
    _pod: &Pod,
    rec: &PodRecord,
    container: &Container,
    place: Placement,
) -> ContainerConfig {
    ContainerConfig {
        id: place.runtime_id,
        pod_uid: rec.uid.clone(),
        pod_namespace: rec.namespace.clone(),
        pod_name: rec.name.clone(),
        container_name: container.name.clone(),
        image: container.image.clone().unwrap_or_default(),
        command: container.command.clone().unwrap_or_default(),
        args: container.args.clone().unwrap_or_default(),
        env: container
            .env
            .iter()
            .flatten()
            .filter_map(|e| Some((e.name.clone(), e.value.clone()?)))
            .collect(),
        working_dir: container.working_dir.clone(),
        hostname: rec.name.clone(),
        resolv_conf: None,
        netns: place.netns,
        log_path: place.log_path,
        resources: Resources::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{EnvVar, PodSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    #[test]
    fn command_args_env_and_hostname() {
        let container = Container {
            name: "web".into(),
            image: Some("demo".into()),
            command: Some(vec!["sh".into()]),
            args: Some(vec!["-c".into(), "true".into()]),
            env: Some(vec![EnvVar {
                name: "A".into(),
                value: Some("1".into()),
                ..Default::default()
            }]),
            ..Default::default()
        };
        let pod = Pod {
            metadata: ObjectMeta {
                name: Some("p".into()),
                namespace: Some("default".into()),
                uid: Some("u1".into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                containers: vec![container.clone()],
                ..Default::default()
            }),
            status: None,
        };
        let rec = PodRecord::new(&pod, 0);
        let cfg = container_config(
            &pod,
            &rec,
            &container,
            Placement {
                runtime_id: "u1-web-0".into(),
                netns: None,
                log_path: "/l".into(),
            },
        );
        assert_eq!(cfg.hostname, "p");
        assert_eq!(cfg.command, vec!["sh"]);
        assert_eq!(cfg.args, vec!["-c", "true"]);
        assert_eq!(cfg.env, vec![("A".to_string(), "1".to_string())]);
    }
}
