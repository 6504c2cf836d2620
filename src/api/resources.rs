//! What a pod asks for: effective container requests and limits (a limit
//! without a request is also the request, as Kubernetes' API defaulting
//! makes it), the pod's total request as the scheduler counts it, and its QoS
//! class. Pure.
//!
//! Owns: resource arithmetic over pod specs. Must not touch: cgroups (the
//! worker maps these to the runtime) or node bookkeeping (the scheduler).

use k8s_openapi::api::core::v1::{Container, Pod, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use super::quantity::{self, QuantityError};

/// A container's CPU (millicores) and memory (bytes), requests and limits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ContainerResources {
    pub cpu_request_millis: Option<i64>,
    pub cpu_limit_millis: Option<i64>,
    pub memory_request_bytes: Option<i64>,
    pub memory_limit_bytes: Option<i64>,
}

fn get<'a>(
    map: &'a Option<std::collections::BTreeMap<String, Quantity>>,
    name: &str,
) -> Option<&'a Quantity> {
    map.as_ref()?.get(name)
}

/// The container's resources; a request missing where a limit is set takes
/// the limit.
pub fn container_resources(c: &Container) -> Result<ContainerResources, QuantityError> {
    let empty = ResourceRequirements::default();
    let r = c.resources.as_ref().unwrap_or(&empty);
    let cpu = |m: &Option<_>| get(m, "cpu").map(quantity::cpu_millis).transpose();
    let mem = |m: &Option<_>| get(m, "memory").map(quantity::units).transpose();
    let cpu_limit = cpu(&r.limits)?;
    let memory_limit = mem(&r.limits)?;
    Ok(ContainerResources {
        cpu_request_millis: cpu(&r.requests)?.or(cpu_limit),
        cpu_limit_millis: cpu_limit,
        memory_request_bytes: mem(&r.requests)?.or(memory_limit),
        memory_limit_bytes: memory_limit,
    })
}

/// The pod's request as the scheduler counts it: the larger of the sum over
/// its containers and the largest init container, per resource.
/// Unparseable quantities count as zero (validation rejects them earlier).
pub fn pod_requests(pod: &Pod) -> (i64, i64) {
    let Some(spec) = pod.spec.as_ref() else {
        return (0, 0);
    };
    let req = |c: &Container| {
        let r = container_resources(c).unwrap_or_default();
        (
            r.cpu_request_millis.unwrap_or(0),
            r.memory_request_bytes.unwrap_or(0),
        )
    };
    let (mut cpu, mut mem) = spec
        .containers
        .iter()
        .map(req)
        .fold((0, 0), |(a, b), (c, d)| (a + c, b + d));
    for init in spec.init_containers.iter().flatten() {
        let (c, m) = req(init);
        cpu = cpu.max(c);
        mem = mem.max(m);
    }
    (cpu, mem)
}

/// Kubernetes' QoS class: `Guaranteed` when every container limits CPU and
/// memory and requests exactly that, `BestEffort` when no container asks for
/// or limits either, `Burstable` otherwise.
pub fn qos_class(pod: &Pod) -> &'static str {
    let Some(spec) = pod.spec.as_ref() else {
        return "BestEffort";
    };
    let mut any = false;
    let mut guaranteed = true;
    for c in spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
    {
        let r = container_resources(c).unwrap_or_default();
        let nonzero = |v: Option<i64>| v.filter(|v| *v != 0);
        let (rc, lc) = (nonzero(r.cpu_request_millis), nonzero(r.cpu_limit_millis));
        let (rm, lm) = (
            nonzero(r.memory_request_bytes),
            nonzero(r.memory_limit_bytes),
        );
        any |= rc.is_some() || lc.is_some() || rm.is_some() || lm.is_some();
        if lc.is_none() || lm.is_none() || rc != lc || rm != lm {
            guaranteed = false;
        }
    }
    match (any, guaranteed) {
        (false, _) => "BestEffort",
        (true, true) => "Guaranteed",
        (true, false) => "Burstable",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::PodSpec;
    use std::collections::BTreeMap;

    fn res(pairs: &[(&str, &str)]) -> Option<BTreeMap<String, Quantity>> {
        (!pairs.is_empty()).then(|| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), Quantity(v.to_string())))
                .collect()
        })
    }

    fn container(requests: &[(&str, &str)], limits: &[(&str, &str)]) -> Container {
        Container {
            name: "c".into(),
            resources: Some(ResourceRequirements {
                requests: res(requests),
                limits: res(limits),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn pod(containers: Vec<Container>, init: Vec<Container>) -> Pod {
        Pod {
            spec: Some(PodSpec {
                containers,
                init_containers: (!init.is_empty()).then_some(init),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn limits_default_requests() {
        let r =
            container_resources(&container(&[], &[("cpu", "500m"), ("memory", "64Mi")])).unwrap();
        assert_eq!(r.cpu_request_millis, Some(500));
        assert_eq!(r.memory_request_bytes, Some(64 << 20));
        let r = container_resources(&container(&[("cpu", "100m")], &[("cpu", "1")])).unwrap();
        assert_eq!(
            (r.cpu_request_millis, r.cpu_limit_millis),
            (Some(100), Some(1000))
        );
        assert_eq!(r.memory_limit_bytes, None);
        assert!(container_resources(&container(&[("cpu", "lots")], &[])).is_err());
    }

    #[test]
    fn pod_request_sums_containers_and_maxes_init() {
        let p = pod(
            vec![
                container(&[("cpu", "100m"), ("memory", "10Mi")], &[]),
                container(&[("cpu", "200m")], &[]),
            ],
            vec![container(&[("cpu", "1"), ("memory", "1Mi")], &[])],
        );
        assert_eq!(pod_requests(&p), (1000, 10 << 20));
        assert_eq!(
            pod_requests(&pod(vec![container(&[], &[])], vec![])),
            (0, 0)
        );
    }

    #[test]
    fn qos_classes() {
        let g = container(&[], &[("cpu", "1"), ("memory", "1Gi")]);
        assert_eq!(qos_class(&pod(vec![g.clone()], vec![])), "Guaranteed");
        let g2 = container(
            &[("cpu", "1000m"), ("memory", "1Gi")],
            &[("cpu", "1"), ("memory", "1024Mi")],
        );
        assert_eq!(qos_class(&pod(vec![g.clone(), g2], vec![])), "Guaranteed");
        let under = container(&[("cpu", "500m")], &[("cpu", "1"), ("memory", "1Gi")]);
        assert_eq!(qos_class(&pod(vec![under], vec![])), "Burstable");
        let only_requests = container(&[("memory", "1Mi")], &[]);
        assert_eq!(qos_class(&pod(vec![only_requests], vec![])), "Burstable");
        let none = container(&[], &[]);
        assert_eq!(qos_class(&pod(vec![none.clone()], vec![])), "BestEffort");
        assert_eq!(qos_class(&pod(vec![g, none], vec![])), "Burstable");
        assert_eq!(qos_class(&Pod::default()), "BestEffort");
    }
}
