//! HorizontalPodAutoscaler (autoscaling/v2): scales a Deployment, StatefulSet
//! or ReplicaSet on the CPU and memory its pods use, as their nodes measure
//! it in cgroups (the snapshot's `usage`).
//!
//! Per `Resource` metric: utilization is the pods' summed usage over their
//! summed requests (`target.type: Utilization`), or the average usage per
//! pod (`AverageValue`); the desired count is `ceil(pods × usage / target)`,
//! unchanged within a 10 % tolerance, the largest over all metrics, clamped to
//! `[minReplicas, maxReplicas]`. Scaling up is at most double or +4 pods per
//! step; scaling down waits for `behavior.scaleDown.stabilizationWindowSeconds`
//! (default 300) since the last scale, a simpler stand-in for Kubernetes'
//! window of recommendations. Pods without a measurement yet are left out.

use std::collections::BTreeMap;

use k8s_openapi::api::autoscaling::v2::{
    HorizontalPodAutoscaler, HorizontalPodAutoscalerCondition, HorizontalPodAutoscalerStatus,
    MetricStatus, MetricValueStatus, ResourceMetricStatus,
};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use super::{Action, Snapshot, events, find, is_finished, is_terminating};
use crate::api::{Kind, Object, selector};

const CONTROLLER: &str = "horizontal-pod-autoscaler";
const TOLERANCE: f64 = 0.1;
const DEFAULT_DOWN_WINDOW: i64 = 300;

/// A Kubernetes quantity in milli-units (`100m` → 100, `1` → 1000,
/// `128Mi` → 134217728000): enough for CPU and memory requests.
pub fn milli(q: &Quantity) -> Option<i64> {
    let s = q.0.trim();
    let split = s.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(s.len());
    let (num, suffix) = s.split_at(split);
    let value: f64 = num.parse().ok()?;
    let factor: f64 = match suffix {
        "" => 1000.0,
        "m" => 1.0,
        "k" => 1e6,
        "M" => 1e9,
        "G" => 1e12,
        "T" => 1e15,
        "Ki" => 1024.0 * 1000.0,
        "Mi" => 1024.0 * 1024.0 * 1000.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0 * 1000.0,
        "Ti" => 1024f64.powi(4) * 1000.0,
        _ => return None,
    };
    Some((value * factor).round() as i64)
}

/// A pod's summed request of `resource` in milli-units (CPU millicores,
/// memory milli-bytes).
fn request(pod: &Pod, resource: &str) -> Option<i64> {
    let mut total = 0;
    for c in pod.spec.iter().flat_map(|s| s.containers.iter()) {
        let r = c
            .resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .and_then(|r| r.get(resource))
            .and_then(milli)?;
        total += r;
    }
    Some(total)
}

/// The scale target: its current replicas and selector.
fn target(snap: &Snapshot, hpa: &HorizontalPodAutoscaler) -> Option<(Object, i32, LabelSelector)> {
    let spec = hpa.spec.as_ref()?;
    let ns = hpa.metadata.namespace.as_deref().unwrap_or("default");
    let r = &spec.scale_target_ref;
    let kind = Kind::from_manifest(&r.kind)?;
    let obj = find(snap, kind, ns, &r.name)?.clone();
    let (replicas, sel) = match &obj {
        Object::Deployment(d) => {
            let s = d.spec.as_ref()?;
            (s.replicas.unwrap_or(1), s.selector.clone())
        }
        Object::StatefulSet(d) => {
            let s = d.spec.as_ref()?;
            (s.replicas.unwrap_or(1), s.selector.clone())
        }
        Object::ReplicaSet(d) => {
            let s = d.spec.as_ref()?;
            (s.replicas.unwrap_or(1), s.selector.clone())
        }
        _ => return None,
    };
    Some((obj, replicas, sel))
}

pub fn reconcile(snap: &Snapshot) -> Vec<Action> {
    let mut out = Vec::new();
    for hpa in snap.hpas() {
        out.extend(reconcile_one(snap, hpa));
    }
    out
}

/// What one metric says: (desired replicas, its status for `currentMetrics`,
/// the `TARGETS` text).
fn evaluate(
    snap: &Snapshot,
    metric: &k8s_openapi::api::autoscaling::v2::MetricSpec,
    pods: &[&Pod],
    current: i32,
) -> Option<(i32, MetricStatus)> {
    let res = metric
        .resource
        .as_ref()
        .filter(|_| metric.type_ == "Resource")?;
    let measured: Vec<(&Pod, i64)> = pods
        .iter()
        .filter_map(|p| {
            let u = snap.usage.get(p.metadata.uid.as_deref()?)?;
            let v = if res.name == "cpu" {
                u.cpu_millis
            } else if res.name == "memory" {
                u.memory_bytes * 1000
            } else {
                return None;
            };
            Some((*p, v))
        })
        .collect();
    if measured.is_empty() {
        return None;
    }
    let n = measured.len() as f64;
    let usage: i64 = measured.iter().map(|(_, v)| v).sum();
    let (ratio, status) = match res.target.type_.as_str() {
        "Utilization" => {
            let target = f64::from(res.target.average_utilization?);
            let requested: i64 = measured
                .iter()
                .map(|(p, _)| request(p, &res.name))
                .sum::<Option<i64>>()?;
            if requested == 0 {
                return None;
            }
            let util = usage as f64 * 100.0 / requested as f64;
            (
                util / target,
                MetricValueStatus {
                    average_utilization: Some(util.round() as i32),
                    average_value: Some(quantity(&res.name, usage / measured.len() as i64)),
                    value: None,
                },
            )
        }
        "AverageValue" => {
            let target = milli(res.target.average_value.as_ref()?)? as f64;
            let avg = usage as f64 / n;
            (
                avg / target,
                MetricValueStatus {
                    average_value: Some(quantity(&res.name, avg as i64)),
                    average_utilization: None,
                    value: None,
                },
            )
        }
        _ => return None,
    };
    let desired = if (ratio - 1.0).abs() <= TOLERANCE {
        current
    } else {
        (ratio * n).ceil() as i32
    };
    Some((
        desired,
        MetricStatus {
            type_: "Resource".into(),
            resource: Some(ResourceMetricStatus {
                name: res.name.clone(),
                current: status,
            }),
            ..Default::default()
        },
    ))
}

fn quantity(resource: &str, milli: i64) -> Quantity {
    if resource == "cpu" {
        Quantity(format!("{milli}m"))
    } else {
        Quantity(format!("{}", milli / 1000))
    }
}

fn condition(
    old: &HorizontalPodAutoscalerStatus,
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
    now: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
) -> HorizontalPodAutoscalerCondition {
    let status = if ok { "True" } else { "False" };
    let prev = old.conditions.iter().flatten().find(|c| c.type_ == type_);
    let transition = match prev {
        Some(p) if p.status == status => p.last_transition_time.clone(),
        _ => Some(now.clone()),
    };
    HorizontalPodAutoscalerCondition {
        type_: type_.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message),
        last_transition_time: transition,
    }
}

fn reconcile_one(snap: &Snapshot, hpa: &HorizontalPodAutoscaler) -> Vec<Action> {
    let mut out = Vec::new();
    let Some(spec) = &hpa.spec else { return out };
    let old = hpa.status.clone().unwrap_or_default();
    let now = super::time(snap.now);
    let hobj = Object::HorizontalPodAutoscaler(hpa.clone());
    let Some((target_obj, current, sel)) = target(snap, hpa) else {
        let mut status = old.clone();
        status.conditions = Some(vec![condition(
            &old,
            "AbleToScale",
            false,
            "FailedGetScale",
            format!(
                "the HPA controller was unable to get the target's current scale: {} \"{}\" not found",
                spec.scale_target_ref.kind.to_ascii_lowercase(),
                spec.scale_target_ref.name
            ),
            &now,
        )]);
        if hpa.status.as_ref() != Some(&status) {
            let mut h = hpa.clone();
            h.status = Some(status);
            out.push(Action::Update(Object::HorizontalPodAutoscaler(h)));
        }
        return out;
    };
    let ns = hpa.metadata.namespace.clone().unwrap_or_default();
    let no_labels = BTreeMap::new();
    let pods: Vec<&Pod> = snap
        .pods()
        .filter(|p| {
            p.metadata.namespace.as_deref() == Some(ns.as_str())
                && !is_terminating(p)
                && !is_finished(p)
                && selector::matches(&sel, p.metadata.labels.as_ref().unwrap_or(&no_labels))
        })
        .collect();
    let min = spec.min_replicas.unwrap_or(1).max(1);
    let max = spec.max_replicas.max(min);
    let default_metric = vec![k8s_openapi::api::autoscaling::v2::MetricSpec {
        type_: "Resource".into(),
        resource: Some(k8s_openapi::api::autoscaling::v2::ResourceMetricSource {
            name: "cpu".into(),
            target: k8s_openapi::api::autoscaling::v2::MetricTarget {
                type_: "Utilization".into(),
                average_utilization: Some(80),
                ..Default::default()
            },
        }),
        ..Default::default()
    }];
    let metrics = spec
        .metrics
        .clone()
        .filter(|m| !m.is_empty())
        .unwrap_or(default_metric);
    let mut proposals = Vec::new();
    let mut current_metrics = Vec::new();
    let mut reason_metric = String::new();
    for m in &metrics {
        if let Some((desired, st)) = evaluate(snap, m, &pods, current) {
            if proposals.iter().all(|d| desired > *d) {
                reason_metric = st
                    .resource
                    .as_ref()
                    .map(|r| r.name.clone())
                    .unwrap_or_default();
            }
            proposals.push(desired);
            current_metrics.push(st);
        }
    }
    let active = !proposals.is_empty() && current > 0;
    let mut desired = proposals.iter().copied().max().unwrap_or(current);
    if current == 0 {
        desired = 0; // scaling was switched off by setting replicas to 0
    }
    let mut limited = false;
    if current > 0 {
        let up_limit = (current * 2).max(current + 4);
        if desired > up_limit {
            desired = up_limit;
        }
        if desired > max {
            desired = max;
            limited = true;
        } else if desired < min {
            desired = min;
            limited = true;
        }
    }
    if desired < current {
        let window = spec
            .behavior
            .as_ref()
            .and_then(|b| b.scale_down.as_ref())
            .and_then(|d| d.stabilization_window_seconds)
            .map_or(DEFAULT_DOWN_WINDOW, i64::from);
        let recent = old
            .last_scale_time
            .as_ref()
            .is_some_and(|t| snap.now.duration_since(t.0).as_secs() < window);
        if recent {
            desired = current;
        }
    }
    let mut status = HorizontalPodAutoscalerStatus {
        current_replicas: Some(current),
        desired_replicas: desired,
        current_metrics: (!current_metrics.is_empty()).then_some(current_metrics),
        last_scale_time: old.last_scale_time.clone(),
        observed_generation: hpa.metadata.generation,
        conditions: None,
    };
    if desired != current && active {
        let mut t = target_obj.clone();
        match &mut t {
            Object::Deployment(d) => {
                d.spec.get_or_insert_with(Default::default).replicas = Some(desired)
            }
            Object::StatefulSet(d) => {
                d.spec.get_or_insert_with(Default::default).replicas = Some(desired)
            }
            Object::ReplicaSet(d) => {
                d.spec.get_or_insert_with(Default::default).replicas = Some(desired)
            }
            _ => {}
        }
        out.push(Action::Update(t));
        let direction = if desired > current { "above" } else { "below" };
        out.push(events::emit(
            snap,
            &hobj,
            false,
            "SuccessfulRescale",
            format!(
                "New size: {desired}; reason: {reason_metric} resource utilization (percentage of request) {direction} target"
            ),
            CONTROLLER,
        ));
        status.last_scale_time = Some(now.clone());
    }
    status.conditions = Some(vec![
        condition(
            &old,
            "AbleToScale",
            true,
            "ReadyForNewScale",
            "recommended size matches current size".into(),
            &now,
        ),
        if active {
            condition(
                &old,
                "ScalingActive",
                true,
                "ValidMetricFound",
                "the HPA was able to successfully calculate a replica count from cpu resource utilization (percentage of request)".into(),
                &now,
            )
        } else {
            condition(
                &old,
                "ScalingActive",
                false,
                "FailedGetResourceMetric",
                "the HPA was unable to compute the replica count: no metrics returned from resource metrics API".into(),
                &now,
            )
        },
        condition(
            &old,
            "ScalingLimited",
            limited,
            if limited {
                "TooManyReplicas"
            } else {
                "DesiredWithinRange"
            },
            if limited {
                "the desired replica count is more than the maximum replica count".into()
            } else {
                "the desired count is within the acceptable range".into()
            },
            &now,
        ),
    ]);
    if hpa.status.as_ref() != Some(&status) {
        let mut h = hpa.clone();
        h.status = Some(status);
        out.push(Action::Update(Object::HorizontalPodAutoscaler(h)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::master::controllers::PodUsage;
    use crate::master::controllers::tests_support::*;
    use k8s_openapi::api::autoscaling::v2::{
        CrossVersionObjectReference, HorizontalPodAutoscalerSpec, MetricSpec, MetricTarget,
        ResourceMetricSource,
    };
    use k8s_openapi::api::core::v1::ResourceRequirements;

    fn hpa(target: i32) -> HorizontalPodAutoscaler {
        HorizontalPodAutoscaler {
            metadata: meta("web", "default"),
            spec: Some(HorizontalPodAutoscalerSpec {
                scale_target_ref: CrossVersionObjectReference {
                    api_version: Some("apps/v1".into()),
                    kind: "Deployment".into(),
                    name: "web".into(),
                },
                min_replicas: Some(1),
                max_replicas: 5,
                metrics: Some(vec![MetricSpec {
                    type_: "Resource".into(),
                    resource: Some(ResourceMetricSource {
                        name: "cpu".into(),
                        target: MetricTarget {
                            type_: "Utilization".into(),
                            average_utilization: Some(target),
                            ..Default::default()
                        },
                    }),
                    ..Default::default()
                }]),
                behavior: None,
            }),
            status: None,
        }
    }

    fn busy_pods(
        n: usize,
        cpu_each: i64,
    ) -> (Vec<Object>, std::collections::HashMap<String, PodUsage>) {
        let rs = replicaset("web-abc", "default", n as i32);
        let mut objs = Vec::new();
        let mut usage = std::collections::HashMap::new();
        for i in 0..n {
            let mut p = owned_pod(&format!("web-{i}"), &rs, Some("n1"), true);
            p.spec.as_mut().unwrap().containers[0].resources = Some(ResourceRequirements {
                requests: Some([("cpu".to_string(), Quantity("100m".into()))].into()),
                ..Default::default()
            });
            usage.insert(
                format!("uid-web-{i}"),
                PodUsage {
                    cpu_millis: cpu_each,
                    ..Default::default()
                },
            );
            objs.push(Object::Pod(p));
        }
        (objs, usage)
    }

    fn scaled_to(actions: &[Action]) -> Option<i32> {
        actions.iter().find_map(|a| match a {
            Action::Update(Object::Deployment(d)) => d.spec.as_ref()?.replicas,
            _ => None,
        })
    }

    #[test]
    fn quantities() {
        assert_eq!(milli(&Quantity("100m".into())), Some(100));
        assert_eq!(milli(&Quantity("1.5".into())), Some(1500));
        assert_eq!(milli(&Quantity("128Mi".into())), Some(134_217_728_000));
        assert_eq!(milli(&Quantity("1x".into())), None);
    }

    #[test]
    fn scales_up_on_cpu_and_respects_max() {
        let (mut objs, usage) = busy_pods(2, 200); // 200% of request against 50%
        objs.push(Object::Deployment(deployment("web", "default", 2)));
        objs.push(Object::HorizontalPodAutoscaler(hpa(50)));
        let mut snap = snapshot(objs);
        snap.usage = usage;
        let actions = reconcile(&snap);
        assert_eq!(
            scaled_to(&actions),
            Some(5),
            "ceil(2 × 4) = 8, capped at maxReplicas 5"
        );
    }

    #[test]
    fn within_tolerance_nothing_moves_and_scale_down_waits() {
        let (mut objs, usage) = busy_pods(2, 52);
        objs.push(Object::Deployment(deployment("web", "default", 2)));
        objs.push(Object::HorizontalPodAutoscaler(hpa(50)));
        let mut snap = snapshot(objs.clone());
        snap.usage = usage;
        assert_eq!(scaled_to(&reconcile(&snap)), None);
        // Idle pods: down to 1, unless it scaled a minute ago.
        let (_, idle) = busy_pods(2, 1);
        snap.usage = idle;
        assert_eq!(scaled_to(&reconcile(&snap)), Some(1));
        let mut h = hpa(50);
        h.status = Some(HorizontalPodAutoscalerStatus {
            last_scale_time: Some(super::super::time(
                snap.now
                    .checked_sub(jiff::SignedDuration::from_secs(60))
                    .unwrap(),
            )),
            ..Default::default()
        });
        objs.retain(|o| o.kind() != Kind::HorizontalPodAutoscaler);
        objs.push(Object::HorizontalPodAutoscaler(h));
        let usage = snap.usage.clone();
        let mut snap = snapshot(objs);
        snap.usage = usage;
        assert_eq!(scaled_to(&reconcile(&snap)), None);
    }

    #[test]
    fn scales_on_memory_utilization_and_average_value() {
        let mib = 1024 * 1024;
        let mut objs = Vec::new();
        let mut usage = std::collections::HashMap::new();
        let rs = replicaset("web-abc", "default", 2);
        for i in 0..2 {
            let mut p = owned_pod(&format!("web-{i}"), &rs, Some("n1"), true);
            p.spec.as_mut().unwrap().containers[0].resources = Some(ResourceRequirements {
                requests: Some([("memory".to_string(), Quantity("100Mi".into()))].into()),
                ..Default::default()
            });
            usage.insert(
                format!("uid-web-{i}"),
                PodUsage {
                    memory_bytes: 150 * mib,
                    ..Default::default()
                },
            );
            objs.push(Object::Pod(p));
        }
        objs.push(Object::Deployment(deployment("web", "default", 2)));
        let with_target = |target: MetricTarget| {
            let mut h = hpa(50);
            h.spec.as_mut().unwrap().metrics = Some(vec![MetricSpec {
                type_: "Resource".into(),
                resource: Some(ResourceMetricSource {
                    name: "memory".into(),
                    target,
                }),
                ..Default::default()
            }]);
            Object::HorizontalPodAutoscaler(h)
        };
        // 150% of the request against 100%: ceil(2 × 1.5) = 3.
        let mut o = objs.clone();
        o.push(with_target(MetricTarget {
            type_: "Utilization".into(),
            average_utilization: Some(100),
            ..Default::default()
        }));
        let mut snap = snapshot(o);
        snap.usage = usage.clone();
        assert_eq!(scaled_to(&reconcile(&snap)), Some(3));
        // 150Mi each against an average of 50Mi: ceil(2 × 3) = 6, capped at 5.
        let mut o = objs;
        o.push(with_target(MetricTarget {
            type_: "AverageValue".into(),
            average_value: Some(Quantity("50Mi".into())),
            ..Default::default()
        }));
        let mut snap = snapshot(o);
        snap.usage = usage;
        assert_eq!(scaled_to(&reconcile(&snap)), Some(5));
    }
}
