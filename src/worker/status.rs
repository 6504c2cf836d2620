//! Pod status as the worker reports it, computed from its records. Pure, and
//! deterministic for unchanged records (timestamps come from the records, not
//! the clock), so an unchanged pod produces an identical report and costs the
//! master no write.

use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStateRunning, ContainerStateTerminated,
    ContainerStateWaiting, ContainerStatus, HostIP, Pod, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::podsync::{CState, ContainerRecord, PodRecord, Terminated};

fn ts(ms: i64) -> Option<Time> {
    // Whole seconds: what Kubernetes' Time carries, so a value read back
    // compares equal to the one written.
    jiff::Timestamp::from_second(ms.div_euclid(1000))
        .ok()
        .map(Time)
}

fn terminated(t: &Terminated, id: &str) -> ContainerStateTerminated {
    ContainerStateTerminated {
        exit_code: t.exit_code,
        signal: t.signal,
        reason: Some(t.reason.clone()),
        started_at: ts(t.started_at),
        finished_at: ts(t.finished_at),
        container_id: (!id.is_empty()).then(|| format!("bramble://{id}")),
        message: None,
    }
}

fn container_status(c: &ContainerRecord, spec: Option<&Container>) -> ContainerStatus {
    let id = c.runtime_id.clone().unwrap_or_default();
    let state = match &c.state {
        CState::Waiting { reason, message } => ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some(reason.clone()),
                message: message.clone(),
            }),
            ..Default::default()
        },
        CState::Running { started_at } => ContainerState {
            running: Some(ContainerStateRunning {
                started_at: ts(*started_at),
            }),
            ..Default::default()
        },
        CState::Terminated(t) => ContainerState {
            terminated: Some(terminated(t, &id)),
            ..Default::default()
        },
    };
    // An init container is ready once it has completed, as Kubernetes shows.
    let ready = if c.init {
        matches!(&c.state, CState::Terminated(t) if t.exit_code == 0)
    } else {
        c.is_ready(spec)
    };
    ContainerStatus {
        name: c.name.clone(),
        image: c.image.clone(),
        image_id: String::new(),
        container_id: (!id.is_empty()).then(|| format!("bramble://{id}")),
        ready,
        started: Some(!c.init && c.effectively_started(spec)),
        restart_count: c.restart_count as i32,
        state: Some(state),
        last_state: c.last_termination.as_ref().map(|t| ContainerState {
            terminated: Some(terminated(t, "")),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn condition(type_: &str, ok: bool, since: i64, reason: Option<&str>) -> PodCondition {
    PodCondition {
        type_: type_.into(),
        status: if ok { "True" } else { "False" }.into(),
        last_transition_time: ts(since),
        reason: (!ok).then(|| reason.unwrap_or("ContainersNotReady").to_string()),
        ..Default::default()
    }
}

/// The status of a pod the worker holds.
pub fn pod_status(pod: &Pod, record: &PodRecord, host_ip: &str) -> PodStatus {
    let statuses: Vec<ContainerStatus> = pod
        .spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .filter_map(|c| Some(container_status(record.containers.get(&c.name)?, Some(c))))
        .collect();
    let init_statuses: Vec<ContainerStatus> = pod
        .spec
        .iter()
        .flat_map(|s| s.init_containers.iter().flatten())
        .filter_map(|c| Some(container_status(record.containers.get(&c.name)?, Some(c))))
        .collect();
    let apps = || record.containers.values().filter(|c| !c.init);
    let policy = pod
        .spec
        .as_ref()
        .and_then(|s| s.restart_policy.as_deref())
        .unwrap_or("Always");
    let all_terminated =
        apps().count() > 0 && apps().all(|c| matches!(c.state, CState::Terminated(_)));
    let any_started = apps().any(|c| c.attempt > 0);
    let phase = if record.init_failed(pod) {
        "Failed"
    } else if !record.initialized {
        "Pending"
    } else if all_terminated && policy != "Always" {
        let failed = apps().any(|c| match &c.state {
            CState::Terminated(t) => t.exit_code != 0,
            _ => false,
        });
        if failed { "Failed" } else { "Succeeded" }
    } else if any_started {
        "Running"
    } else {
        "Pending"
    };
    let ready = !statuses.is_empty() && statuses.iter().all(|s| s.ready);
    // The last change of any container marks when readiness last flipped.
    let changed = record
        .containers
        .values()
        .map(|c| match &c.state {
            CState::Running { started_at } => *started_at,
            CState::Terminated(t) => t.finished_at,
            CState::Waiting { .. } => c
                .last_termination
                .as_ref()
                .map_or(record.created_at, |t| t.finished_at),
        })
        .max()
        .unwrap_or(record.created_at);
    PodStatus {
        phase: Some(phase.into()),
        conditions: Some(vec![
            condition(
                "Initialized",
                record.initialized,
                record.created_at,
                Some("ContainersNotInitialized"),
            ),
            condition("Ready", ready, changed, None),
            condition("ContainersReady", ready, changed, None),
        ]),
        container_statuses: Some(statuses),
        init_container_statuses: (!init_statuses.is_empty()).then_some(init_statuses),
        host_ip: Some(host_ip.to_string()),
        host_ips: Some(vec![HostIP {
            ip: host_ip.to_string(),
        }]),
        pod_ip: record.ip.map(|i| i.to_string()),
        pod_ips: record.ip.map(|i| vec![PodIP { ip: i.to_string() }]),
        start_time: ts(record.started_at.unwrap_or(record.created_at)),
        qos_class: Some(crate::api::resources::qos_class(pod).into()),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Container, PodSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn pod() -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("p".into()),
                uid: Some("u".into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "c".into(),
                    image: Some("demo".into()),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            status: None,
        }
    }

    #[test]
    fn pending_then_running_and_ready() {
        let p = pod();
        let mut r = PodRecord::new(&p, 1_000);
        let s = pod_status(&p, &r, "192.168.1.2");
        assert_eq!(s.phase.as_deref(), Some("Pending"));
        let w = s.container_statuses.unwrap()[0]
            .state
            .clone()
            .unwrap()
            .waiting
            .unwrap();
        assert_eq!(w.reason.as_deref(), Some("ContainerCreating"));
        r.ip = Some("10.88.0.2".parse().unwrap());
        r.on_started("c", "id".into(), 2_000);
        let s = pod_status(&p, &r, "192.168.1.2");
        assert_eq!(s.phase.as_deref(), Some("Running"));
        assert_eq!(s.pod_ip.as_deref(), Some("10.88.0.2"));
        assert!(
            s.conditions
                .as_ref()
                .unwrap()
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        );
        assert_eq!(s, pod_status(&p, &r, "192.168.1.2"), "deterministic");
    }
}
