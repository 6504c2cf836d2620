//! CronJob controller: creates a Job from `jobTemplate` at each time the
//! `schedule` (standard five-field cron, `@hourly` and friends, parsed by the
//! `croner` crate) names, in `timeZone` (UTC when unset: the master's clock,
//! not a Pi's local setting).
//!
//! The clock is the snapshot's `now`, so schedules are tested without
//! waiting. Only the most recent missed time runs (as Kubernetes does);
//! `startingDeadlineSeconds` drops times older than that. `concurrencyPolicy`:
//! Allow, Forbid (skip while a Job runs), Replace (delete the running Job
//! first). Finished Jobs beyond `successfulJobsHistoryLimit` (3) and
//! `failedJobsHistoryLimit` (1) are deleted, oldest first. Jobs are named
//! `<cronjob>-<scheduled minute since the epoch>`, so a time runs once.

use k8s_openapi::api::batch::v1::{CronJob, CronJobStatus, Job};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::job::finished;
use super::{Action, Snapshot, controller_of, events, owner_ref, uid};
use crate::api::cron::Schedule;
use crate::api::{Kind, Object};

const CONTROLLER: &str = "cronjob-controller";
pub const SCHEDULED_ANNOTATION: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";

pub fn reconcile(snap: &Snapshot) -> Vec<Action> {
    let mut out = Vec::new();
    for cj in snap.cronjobs() {
        if cj.metadata.deletion_timestamp.is_some() {
            continue;
        }
        out.extend(reconcile_one(snap, cj));
    }
    out
}

/// The Job name for the time `t`.
pub fn job_name(cj: &str, t: jiff::Timestamp) -> String {
    format!("{cj}-{}", t.as_second() / 60)
}

fn reconcile_one(snap: &Snapshot, cj: &CronJob) -> Vec<Action> {
    let mut out = Vec::new();
    let Some(spec) = &cj.spec else { return out };
    let Some(name) = cj.metadata.name.as_deref() else {
        return out;
    };
    let cj_obj = Object::CronJob(cj.clone());
    let mut jobs: Vec<&Job> = snap
        .jobs()
        .filter(|j| controller_of(&j.metadata).is_some_and(|r| r.uid == uid(&cj.metadata)))
        .collect();
    jobs.sort_by_key(|j| j.metadata.creation_timestamp.as_ref().map(|t| t.0));
    let running: Vec<&&Job> = jobs.iter().filter(|j| finished(j).is_none()).collect();
    let old = cj.status.clone().unwrap_or_default();
    let mut status = CronJobStatus {
        active: None,
        last_schedule_time: old.last_schedule_time.clone(),
        last_successful_time: old.last_successful_time.clone(),
    };
    for j in &jobs {
        if let Some(("Complete", at)) = finished(j)
            && status
                .last_successful_time
                .as_ref()
                .is_none_or(|t| t.0 < at)
        {
            status.last_successful_time = Some(super::time(at));
        }
    }

    // History limits.
    for (kind, limit) in [
        ("Complete", spec.successful_jobs_history_limit.unwrap_or(3)),
        ("Failed", spec.failed_jobs_history_limit.unwrap_or(1)),
    ] {
        let done: Vec<&&Job> = jobs
            .iter()
            .filter(|j| finished(j).is_some_and(|(k, _)| k == kind))
            .collect();
        let limit = limit.max(0) as usize;
        if done.len() > limit {
            for j in &done[..done.len() - limit] {
                out.push(Action::Delete {
                    key: Object::Job((**j).clone()).key(),
                    resource_version: super::rv(&j.metadata),
                });
            }
        }
    }

    let mut active: Vec<ObjectReference> = running.iter().map(|j| job_ref(j)).collect();
    let schedule = Schedule::parse(&spec.schedule, spec.time_zone.as_deref());
    match (&schedule, spec.suspend == Some(true)) {
        (Err(e), _) => {
            out.push(events::emit(
                snap,
                &cj_obj,
                true,
                "UnparseableSchedule",
                e.to_string(),
                CONTROLLER,
            ));
        }
        (Ok(_), true) => {}
        (Ok(sched), false) => {
            let mut earliest = old
                .last_schedule_time
                .as_ref()
                .or(cj.metadata.creation_timestamp.as_ref())
                .map(|t| t.0)
                .unwrap_or(snap.now);
            if let Some(deadline) = spec.starting_deadline_seconds {
                let floor = snap.now - jiff::SignedDuration::from_secs(deadline);
                earliest = earliest.max(floor);
            }
            if let Some(t) = sched.most_recent(earliest, snap.now) {
                let jname = job_name(name, t);
                let exists = jobs
                    .iter()
                    .any(|j| j.metadata.name.as_deref() == Some(jname.as_str()));
                let policy = spec.concurrency_policy.as_deref().unwrap_or("Allow");
                if exists {
                    status.last_schedule_time = Some(super::time(t));
                } else if policy == "Forbid" && !running.is_empty() {
                    // Skipped: this time passes without a run.
                } else {
                    if policy == "Replace" {
                        for j in &running {
                            out.push(Action::Delete {
                                key: Object::Job((***j).clone()).key(),
                                resource_version: super::rv(&j.metadata),
                            });
                            out.push(events::emit(
                                snap,
                                &cj_obj,
                                false,
                                "SuccessfulDelete",
                                format!("Deleted job {}", j.metadata.name.as_deref().unwrap_or("")),
                                CONTROLLER,
                            ));
                        }
                        active.clear();
                    }
                    out.push(Action::Create(Object::Job(new_job(cj, &jname, t))));
                    out.push(events::emit(
                        snap,
                        &cj_obj,
                        false,
                        "SuccessfulCreate",
                        format!("Created job {jname}"),
                        CONTROLLER,
                    ));
                    status.last_schedule_time = Some(super::time(t));
                }
            }
        }
    }
    status.active = (!active.is_empty()).then_some(active);
    if cj.status.as_ref() != Some(&status) {
        let mut c = cj.clone();
        c.status = Some(status);
        out.push(Action::Update(Object::CronJob(c)));
    }
    out
}

fn job_ref(j: &Job) -> ObjectReference {
    ObjectReference {
        api_version: Some("batch/v1".into()),
        kind: Some("Job".into()),
        name: j.metadata.name.clone(),
        namespace: j.metadata.namespace.clone(),
        uid: j.metadata.uid.clone(),
        resource_version: j.metadata.resource_version.clone(),
        ..Default::default()
    }
}

fn new_job(cj: &CronJob, name: &str, t: jiff::Timestamp) -> Job {
    let spec = cj.spec.clone().unwrap_or_default();
    let tmeta = spec.job_template.metadata.clone().unwrap_or_default();
    let mut annotations = tmeta.annotations.unwrap_or_default();
    annotations.insert(SCHEDULED_ANNOTATION.into(), t.to_string());
    Job {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: cj.metadata.namespace.clone(),
            labels: tmeta.labels,
            annotations: Some(annotations),
            owner_references: Some(vec![owner_ref(
                Kind::CronJob,
                cj.metadata.name.as_deref().unwrap_or(""),
                uid(&cj.metadata),
            )]),
            ..Default::default()
        },
        spec: spec.job_template.spec,
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::cron::ScheduleError;
    use crate::master::controllers::tests_support::*;
    use k8s_openapi::api::batch::v1::{
        CronJobSpec, JobCondition, JobSpec, JobStatus, JobTemplateSpec,
    };

    fn cj(schedule: &str, policy: &str) -> CronJob {
        let mut m = meta("tick", "default");
        m.creation_timestamp = Some(super::super::time(
            jiff::Timestamp::from_second(1_800_000_000 - 600).unwrap(),
        ));
        CronJob {
            metadata: m,
            spec: Some(CronJobSpec {
                schedule: schedule.into(),
                concurrency_policy: Some(policy.into()),
                job_template: JobTemplateSpec {
                    metadata: None,
                    spec: Some(JobSpec {
                        template: template("tick"),
                        ..Default::default()
                    }),
                },
                ..Default::default()
            }),
            status: None,
        }
    }

    fn ts(s: &str) -> jiff::Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn schedule_parsing() {
        let s = Schedule::parse("*/5 * * * *", None).unwrap();
        let now = ts("2026-01-01T10:07:30Z");
        assert_eq!(
            s.most_recent(ts("2026-01-01T09:00:00Z"), now),
            Some(ts("2026-01-01T10:05:00Z"))
        );
        assert_eq!(
            s.most_recent(ts("2026-01-01T10:05:00Z"), now),
            None,
            "already ran"
        );
        assert_eq!(s.next_after(now), Some(ts("2026-01-01T10:10:00Z")));
        let daily = Schedule::parse("@daily", None).unwrap();
        assert_eq!(daily.next_after(now), Some(ts("2026-01-02T00:00:00Z")));
        let paris = Schedule::parse("0 9 * * *", Some("Europe/Paris")).unwrap();
        assert_eq!(paris.next_after(now), Some(ts("2026-01-02T08:00:00Z")));
        assert!(Schedule::parse("* * * *", None).is_err());
        assert!(Schedule::parse("61 * * * *", None).is_err());
        assert!(matches!(
            Schedule::parse("* * * * *", Some("Mars/Base")),
            Err(ScheduleError::TimeZone(_))
        ));
    }

    #[test]
    fn every_minute_creates_one_job_per_minute() {
        let c = cj("* * * * *", "Allow");
        let snap = snapshot(vec![Object::CronJob(c.clone())]);
        let actions = reconcile(&snap);
        let job = actions
            .iter()
            .find_map(|a| match a {
                Action::Create(Object::Job(j)) => Some(j.clone()),
                _ => None,
            })
            .expect("a Job for the current minute");
        let minute = snap.now.as_second() / 60;
        assert_eq!(job.metadata.name.clone().unwrap(), format!("tick-{minute}"));
        assert_eq!(controller_of(&job.metadata).unwrap().uid, "uid-tick");
    }

    fn running_job(c: &CronJob, name: &str, done: Option<&str>) -> Job {
        let mut j = new_job(
            c,
            name,
            jiff::Timestamp::from_second(1_799_999_000).unwrap(),
        );
        j.metadata.uid = Some(format!("uid-{name}"));
        j.metadata.creation_timestamp = Some(super::super::time(
            jiff::Timestamp::from_second(1_799_999_000).unwrap(),
        ));
        j.status = done.map(|t| JobStatus {
            conditions: Some(vec![JobCondition {
                type_: t.into(),
                status: "True".into(),
                last_transition_time: Some(super::super::time(
                    jiff::Timestamp::from_second(1_799_999_100).unwrap(),
                )),
                ..Default::default()
            }]),
            ..Default::default()
        });
        j
    }

    #[test]
    fn forbid_skips_while_running_replace_deletes() {
        let c = cj("* * * * *", "Forbid");
        let snap = snapshot(vec![
            Object::CronJob(c.clone()),
            Object::Job(running_job(&c, "tick-1", None)),
        ]);
        assert!(
            !reconcile(&snap)
                .iter()
                .any(|a| matches!(a, Action::Create(Object::Job(_))))
        );
        let c = cj("* * * * *", "Replace");
        let snap = snapshot(vec![
            Object::CronJob(c.clone()),
            Object::Job(running_job(&c, "tick-1", None)),
        ]);
        let actions = reconcile(&snap);
        assert!(
            actions
                .iter()
                .any(|a| matches!(a, Action::Delete { key, .. } if key.name == "tick-1"))
        );
        assert!(
            actions
                .iter()
                .any(|a| matches!(a, Action::Create(Object::Job(_))))
        );
    }

    #[test]
    fn history_limits() {
        let mut c = cj("0 0 1 1 *", "Allow");
        c.spec.as_mut().unwrap().successful_jobs_history_limit = Some(1);
        let snap = snapshot(vec![
            Object::CronJob(c.clone()),
            Object::Job(running_job(&c, "tick-1", Some("Complete"))),
            Object::Job(running_job(&c, "tick-2", Some("Complete"))),
            Object::Job(running_job(&c, "tick-3", Some("Failed"))),
        ]);
        let deleted: Vec<String> = reconcile(&snap)
            .iter()
            .filter_map(|a| match a {
                Action::Delete { key, .. } => Some(key.name.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(deleted, vec!["tick-1"]);
    }
}
