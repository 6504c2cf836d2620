//! Job controller: runs pods to completion.
//!
//! `completions` successful pods (default 1; unset with `parallelism` set is
//! the work-queue mode: done when one succeeds and none runs), at most
//! `parallelism` at once (default 1). Failures (failed pods, and container
//! restarts under `restartPolicy: OnFailure`) beyond `backoffLimit` (default
//! 6) fail the Job (`BackoffLimitExceeded`); so does running longer than
//! `activeDeadlineSeconds` (`DeadlineExceeded`); either way the running pods
//! are deleted. A failed pod is replaced after a back-off of 10 s doubling
//! per failure, at most 6 min. A finished Job is deleted with its pods
//! `ttlSecondsAfterFinished` after it finished. `suspend` deletes the running
//! pods and starts none.
//!
//! The selector is the Job's own uid (`batch.kubernetes.io/controller-uid`),
//! written on the first pass, as the API server does on creation.

use k8s_openapi::api::batch::v1::{Job, JobCondition, JobStatus, UncountedTerminatedPods};
use k8s_openapi::api::core::v1::{Pod, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};

use super::{Action, Snapshot, events, is_ready, is_terminating, owner_ref, pod_phase, uid};
use crate::api::{Kind, Object};

const CONTROLLER: &str = "job-controller";
pub const CONTROLLER_UID_LABEL: &str = "batch.kubernetes.io/controller-uid";
pub const JOB_NAME_LABEL: &str = "batch.kubernetes.io/job-name";
const LEGACY_UID_LABEL: &str = "controller-uid";
const LEGACY_NAME_LABEL: &str = "job-name";
pub const DEFAULT_BACKOFF_LIMIT: i32 = 6;
const BACKOFF_BASE_SECONDS: i64 = 10;
const BACKOFF_MAX_SECONDS: i64 = 360;

pub fn reconcile(snap: &Snapshot, names: &mut dyn FnMut() -> String) -> Vec<Action> {
    let mut out = Vec::new();
    for job in snap.jobs() {
        if job.metadata.deletion_timestamp.is_some() {
            continue;
        }
        out.extend(reconcile_one(snap, job, names));
    }
    out
}

/// Whether a condition of `type_` is True.
pub fn has_condition(job: &Job, type_: &str) -> bool {
    job.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == type_ && c.status == "True")
}

/// Complete or Failed, and when.
pub fn finished(job: &Job) -> Option<(&'static str, jiff::Timestamp)> {
    for c in job.status.as_ref()?.conditions.iter().flatten() {
        if c.status == "True" && (c.type_ == "Complete" || c.type_ == "Failed") {
            let at = c.last_transition_time.as_ref().map(|t| t.0)?;
            return Some((
                if c.type_ == "Complete" {
                    "Complete"
                } else {
                    "Failed"
                },
                at,
            ));
        }
    }
    None
}

fn restarts(p: &Pod) -> i32 {
    p.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .into_iter()
        .flatten()
        .map(|c| c.restart_count)
        .sum()
}

/// When the newest failed pod stopped, for the back-off.
fn last_failure(pods: &[&Pod]) -> Option<jiff::Timestamp> {
    pods.iter()
        .filter(|p| pod_phase(p) == "Failed")
        .flat_map(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.container_statuses.clone())
                .unwrap_or_default()
        })
        .filter_map(|c| c.state?.terminated?.finished_at.map(|t| t.0))
        .max()
}

/// Back-off before the next pod after `failures` failures.
pub fn backoff(failures: i32) -> i64 {
    if failures <= 0 {
        return 0;
    }
    let exp = (failures - 1).min(10) as u32;
    (BACKOFF_BASE_SECONDS * 2i64.pow(exp)).min(BACKOFF_MAX_SECONDS)
}

fn reconcile_one(snap: &Snapshot, job: &Job, names: &mut dyn FnMut() -> String) -> Vec<Action> {
    let mut out = Vec::new();
    let Some(spec) = &job.spec else { return out };
    let Some(name) = job.metadata.name.as_deref() else {
        return out;
    };
    let job_uid = uid(&job.metadata).to_string();
    let job_obj = Object::Job(job.clone());

    // The selector the API server would have written at creation.
    let manual = spec.manual_selector == Some(true);
    let has_selector = spec.selector.as_ref().is_some_and(|s| {
        s.match_labels.as_ref().is_some_and(|m| !m.is_empty())
            || s.match_expressions.as_ref().is_some_and(|m| !m.is_empty())
    });
    if !manual && !has_selector {
        let mut j = job.clone();
        let s = j.spec.as_mut().expect("checked above");
        s.selector = Some(LabelSelector {
            match_labels: Some([(CONTROLLER_UID_LABEL.to_string(), job_uid.clone())].into()),
            match_expressions: None,
        });
        let labels = s
            .template
            .metadata
            .get_or_insert_with(Default::default)
            .labels
            .get_or_insert_with(Default::default);
        labels.insert(CONTROLLER_UID_LABEL.into(), job_uid.clone());
        labels.insert(JOB_NAME_LABEL.into(), name.to_string());
        labels.insert(LEGACY_UID_LABEL.into(), job_uid.clone());
        labels.insert(LEGACY_NAME_LABEL.into(), name.to_string());
        out.push(Action::Update(Object::Job(j)));
        return out;
    }

    let pods: Vec<&Pod> = snap.pods_of(&job_uid).collect();
    let active: Vec<&Pod> = pods
        .iter()
        .copied()
        .filter(|p| !is_terminating(p) && !matches!(pod_phase(p), "Succeeded" | "Failed"))
        .collect();
    let old = job.status.clone().unwrap_or_default();

    if let Some((_, at)) = finished(job) {
        // Leftover pods of a finished Job stop; the TTL deletes the Job.
        for p in &active {
            out.extend(super::pods::delete(p, snap.now));
        }
        if let Some(ttl) = spec.ttl_seconds_after_finished
            && snap.now.duration_since(at).as_secs() >= i64::from(ttl)
        {
            out.push(Action::Delete {
                key: job_obj.key(),
                resource_version: super::rv(&job.metadata),
            });
        }
        return out;
    }

    let now = super::time(snap.now);
    let start = old.start_time.clone().unwrap_or_else(|| now.clone());
    let on_failure = spec
        .template
        .spec
        .as_ref()
        .and_then(|s| s.restart_policy.as_deref())
        == Some("OnFailure");
    let succeeded = pods.iter().filter(|p| pod_phase(p) == "Succeeded").count() as i32;
    let mut failed = pods.iter().filter(|p| pod_phase(p) == "Failed").count() as i32;
    if on_failure {
        failed += pods.iter().map(|p| restarts(p)).sum::<i32>();
    }
    // Counts never go back (a pod may be deleted after it was counted).
    let succeeded = succeeded.max(old.succeeded.unwrap_or(0));
    let mut failed = failed.max(old.failed.unwrap_or(0));
    let parallelism = spec.parallelism.unwrap_or(1).max(0);
    let completions = spec.completions;
    let backoff_limit = spec.backoff_limit.unwrap_or(DEFAULT_BACKOFF_LIMIT);
    let suspended = spec.suspend == Some(true);

    let mut conditions: Vec<JobCondition> = old.conditions.clone().unwrap_or_default();
    let mut completion_time = old.completion_time.clone();
    let mut outcome: Option<(&str, &str, String)> = None;
    let elapsed = snap.now.duration_since(start.0).as_secs();
    if let Some(deadline) = spec.active_deadline_seconds.filter(|_| !suspended)
        && elapsed >= deadline
    {
        outcome = Some((
            "Failed",
            "DeadlineExceeded",
            "Job was active longer than specified deadline".into(),
        ));
    } else if failed > backoff_limit {
        outcome = Some((
            "Failed",
            "BackoffLimitExceeded",
            "Job has reached the specified backoff limit".into(),
        ));
    } else if completions.is_some_and(|c| succeeded >= c)
        || (completions.is_none() && succeeded > 0 && active.is_empty())
    {
        outcome = Some(("Complete", "", String::new()));
    }

    let mut to_create = 0;
    match &outcome {
        Some((type_, reason, message)) => {
            // The pods still running count as failed when the Job fails.
            if *type_ == "Failed" {
                failed += active.len() as i32;
            }
            for p in &active {
                out.extend(super::pods::delete(p, snap.now));
            }
            let target = if *type_ == "Failed" {
                "FailureTarget"
            } else {
                "SuccessCriteriaMet"
            };
            for t in [target, type_] {
                conditions.push(JobCondition {
                    type_: t.to_string(),
                    status: "True".into(),
                    reason: (!reason.is_empty()).then(|| reason.to_string()),
                    message: (!message.is_empty()).then(|| message.clone()),
                    last_probe_time: Some(now.clone()),
                    last_transition_time: Some(now.clone()),
                });
            }
            if *type_ == "Complete" {
                completion_time = Some(now.clone());
                out.push(events::emit(
                    snap,
                    &job_obj,
                    false,
                    "Completed",
                    "Job completed".into(),
                    CONTROLLER,
                ));
            } else {
                out.push(events::emit(
                    snap,
                    &job_obj,
                    true,
                    reason,
                    message.clone(),
                    CONTROLLER,
                ));
            }
        }
        None if suspended => {
            for p in &active {
                out.extend(super::pods::delete(p, snap.now));
            }
        }
        None => {
            let wanted = match completions {
                Some(c) => parallelism.min((c - succeeded).max(0)),
                None if succeeded > 0 => 0,
                None => parallelism,
            } as usize;
            if active.len() < wanted {
                let wait = backoff(failed);
                let ready_at = last_failure(&pods).map(|t| {
                    t.checked_add(jiff::SignedDuration::from_secs(wait))
                        .unwrap_or(t)
                });
                if ready_at.is_none_or(|t| t <= snap.now) {
                    to_create = wanted - active.len();
                }
            } else if active.len() > wanted {
                let mut extra = active.clone();
                extra.sort_by_key(|p| {
                    std::cmp::Reverse(p.metadata.creation_timestamp.as_ref().map(|t| t.0))
                });
                for p in extra.iter().take(active.len() - wanted) {
                    out.extend(super::pods::delete(p, snap.now));
                }
            }
        }
    }
    for _ in 0..to_create {
        let pod = new_pod(job, &names());
        let msg = format!(
            "Created pod: {}",
            pod.metadata.name.as_deref().unwrap_or("")
        );
        out.push(Action::Create(Object::Pod(pod)));
        out.push(events::emit(
            snap,
            &job_obj,
            false,
            "SuccessfulCreate",
            msg,
            CONTROLLER,
        ));
    }
    let active_now = if outcome.is_some() || suspended {
        0
    } else {
        active.len() + to_create
    };
    let status = JobStatus {
        active: (active_now > 0).then_some(active_now as i32),
        succeeded: (succeeded > 0).then_some(succeeded),
        failed: (failed > 0).then_some(failed),
        ready: Some(active.iter().filter(|p| is_ready(p)).count() as i32),
        terminating: Some(pods.iter().filter(|p| is_terminating(p)).count() as i32),
        start_time: (!suspended || old.start_time.is_some()).then_some(start),
        completion_time,
        conditions: (!conditions.is_empty()).then_some(conditions),
        uncounted_terminated_pods: Some(UncountedTerminatedPods::default()),
        ..old.clone()
    };
    if job.status.as_ref() != Some(&status) {
        let mut j = job.clone();
        j.status = Some(status);
        out.push(Action::Update(Object::Job(j)));
    }
    out
}

fn new_pod(job: &Job, suffix: &str) -> Pod {
    let spec = job.spec.clone().unwrap_or_default();
    let name = job.metadata.name.clone().unwrap_or_default();
    let tmeta = spec.template.metadata.clone().unwrap_or_default();
    Pod {
        metadata: ObjectMeta {
            name: Some(format!("{name}-{suffix}")),
            namespace: job.metadata.namespace.clone(),
            labels: tmeta.labels,
            annotations: tmeta.annotations,
            owner_references: Some(vec![owner_ref(Kind::Job, &name, uid(&job.metadata))]),
            ..Default::default()
        },
        spec: spec.template.spec.clone(),
        status: Some(PodStatus {
            phase: Some("Pending".into()),
            ..Default::default()
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::master::controllers::tests_support::*;
    use k8s_openapi::api::batch::v1::JobSpec;
    use k8s_openapi::api::core::v1::{ContainerState, ContainerStateTerminated, ContainerStatus};

    fn job(completions: Option<i32>, parallelism: i32) -> Job {
        let mut t = template("pi");
        t.spec.as_mut().unwrap().restart_policy = Some("Never".into());
        let mut j = Job {
            metadata: meta("pi", "default"),
            spec: Some(JobSpec {
                completions,
                parallelism: Some(parallelism),
                template: t,
                ..Default::default()
            }),
            status: None,
        };
        // As after the first pass.
        let snap = snapshot(vec![Object::Job(j.clone())]);
        if let Some(Action::Update(Object::Job(x))) = reconcile(&snap, &mut || unreachable!()).pop()
        {
            j = x;
        }
        j
    }

    fn pod(j: &Job, name: &str, phase: &str, finished_at: Option<jiff::Timestamp>) -> Pod {
        let mut p = new_pod(j, name);
        p.metadata.uid = Some(name.into());
        p.status = Some(PodStatus {
            phase: Some(phase.into()),
            container_statuses: finished_at.map(|t| {
                vec![ContainerStatus {
                    state: Some(ContainerState {
                        terminated: Some(ContainerStateTerminated {
                            exit_code: 1,
                            finished_at: Some(super::super::time(t)),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }]
            }),
            ..Default::default()
        });
        p
    }

    fn counter() -> impl FnMut() -> String {
        let mut n = 0;
        move || {
            n += 1;
            format!("p{n}")
        }
    }

    fn creates(actions: &[Action]) -> usize {
        actions
            .iter()
            .filter(|a| matches!(a, Action::Create(Object::Pod(_))))
            .count()
    }

    #[test]
    fn first_pass_writes_the_selector() {
        let j = job(Some(3), 2);
        let uid_label = &j
            .spec
            .as_ref()
            .unwrap()
            .selector
            .as_ref()
            .unwrap()
            .match_labels
            .as_ref()
            .unwrap()[CONTROLLER_UID_LABEL];
        assert_eq!(uid_label, "uid-pi");
    }

    #[test]
    fn parallelism_and_completions() {
        let j = job(Some(3), 2);
        let actions = reconcile(&snapshot(vec![Object::Job(j.clone())]), &mut counter());
        assert_eq!(creates(&actions), 2);
        // Two succeeded: one more, then done.
        let objs = vec![
            Object::Job(j.clone()),
            Object::Pod(pod(&j, "a", "Succeeded", None)),
            Object::Pod(pod(&j, "b", "Succeeded", None)),
        ];
        assert_eq!(
            creates(&reconcile(&snapshot(objs.clone()), &mut counter())),
            1
        );
        let mut objs = objs;
        objs.push(Object::Pod(pod(&j, "c", "Succeeded", None)));
        let actions = reconcile(&snapshot(objs), &mut counter());
        let Some(Action::Update(Object::Job(done))) = actions
            .iter()
            .find(|a| matches!(a, Action::Update(Object::Job(_))))
            .cloned()
        else {
            panic!("{actions:?}")
        };
        assert!(has_condition(&done, "Complete"));
        assert_eq!(done.status.as_ref().unwrap().succeeded, Some(3));
    }

    #[test]
    fn backoff_then_limit() {
        assert_eq!(
            (backoff(1), backoff(2), backoff(3), backoff(20)),
            (10, 20, 40, 360)
        );
        let mut j = job(Some(1), 1);
        j.spec.as_mut().unwrap().backoff_limit = Some(1);
        let snap0 = snapshot(vec![]);
        let failed_at = snap0
            .now
            .checked_sub(jiff::SignedDuration::from_secs(5))
            .unwrap();
        // One failure 5 s ago: the replacement waits for its 10 s back-off.
        let objs = vec![
            Object::Job(j.clone()),
            Object::Pod(pod(&j, "a", "Failed", Some(failed_at))),
        ];
        assert_eq!(
            creates(&reconcile(&snapshot(objs.clone()), &mut counter())),
            0
        );
        let mut later = snapshot(objs);
        later.now = later
            .now
            .checked_add(jiff::SignedDuration::from_secs(6))
            .unwrap();
        assert_eq!(creates(&reconcile(&later, &mut counter())), 1);
        // A second failure exceeds backoffLimit 1.
        let objs = vec![
            Object::Job(j.clone()),
            Object::Pod(pod(&j, "a", "Failed", Some(failed_at))),
            Object::Pod(pod(&j, "b", "Failed", Some(failed_at))),
        ];
        let actions = reconcile(&snapshot(objs), &mut counter());
        assert!(actions.iter().any(|a| matches!(a, Action::Update(Object::Job(x)) if has_condition(x, "Failed")
            && x.status.as_ref().unwrap().conditions.as_ref().unwrap().iter().any(|c| c.reason.as_deref() == Some("BackoffLimitExceeded")))));
    }

    #[test]
    fn active_deadline_fails_and_stops_pods_and_ttl_deletes() {
        let mut j = job(Some(1), 1);
        j.spec.as_mut().unwrap().active_deadline_seconds = Some(30);
        j.spec.as_mut().unwrap().ttl_seconds_after_finished = Some(60);
        let snap0 = snapshot(vec![]);
        j.status = Some(JobStatus {
            start_time: Some(super::super::time(
                snap0
                    .now
                    .checked_sub(jiff::SignedDuration::from_secs(31))
                    .unwrap(),
            )),
            ..Default::default()
        });
        let mut running = pod(&j, "a", "Running", None);
        running.spec.as_mut().unwrap().node_name = Some("n1".into());
        let actions = reconcile(
            &snapshot(vec![Object::Job(j.clone()), Object::Pod(running)]),
            &mut counter(),
        );
        assert!(actions.iter().any(|a| matches!(a, Action::Update(Object::Pod(p)) if p.metadata.deletion_timestamp.is_some())));
        let Some(Action::Update(Object::Job(failed))) = actions
            .iter()
            .find(|a| matches!(a, Action::Update(Object::Job(_))))
            .cloned()
        else {
            panic!()
        };
        assert!(has_condition(&failed, "Failed"));
        // 61 s after it failed, the TTL deletes it.
        let mut later = snapshot(vec![Object::Job(failed)]);
        later.now = later
            .now
            .checked_add(jiff::SignedDuration::from_secs(61))
            .unwrap();
        let actions = reconcile(&later, &mut counter());
        assert!(
            actions
                .iter()
                .any(|a| matches!(a, Action::Delete { key, .. } if key.name == "pi"))
        );
    }
}
