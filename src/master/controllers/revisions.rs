//! Revision history of StatefulSets and DaemonSets, as Kubernetes keeps it:
//! one `ControllerRevision` per pod template, named `<owner>-<hash>`, owned by
//! the workload, with `data` holding `{"spec": {"template": …}}` and a
//! revision number. Pods carry the revision's name in the
//! `controller-revision-hash` label, which is how the controllers tell
//! updated pods from old ones and how `rollout history|undo` finds templates.
//! (Deployments keep their history in their ReplicaSets instead.)

use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;

use super::deployment::pod_template_hash;
use super::{Action, Snapshot, controller_of, owner_ref, uid};
use crate::api::{Kind, Object};

pub const REVISION_LABEL: &str = "controller-revision-hash";

/// The revisions owned by `owner_uid`, oldest first.
pub fn of<'a>(snap: &'a Snapshot, owner_uid: &str) -> Vec<&'a ControllerRevision> {
    let mut v: Vec<&ControllerRevision> = snap
        .revisions()
        .filter(|r| controller_of(&r.metadata).is_some_and(|o| o.uid == owner_uid))
        .collect();
    v.sort_by_key(|r| r.revision);
    v
}

/// The revision name for `template` of the workload `name`.
pub fn name_for(name: &str, template: &PodTemplateSpec) -> String {
    format!("{name}-{}", pod_template_hash(template))
}

/// The template a revision holds.
pub fn template(rev: &ControllerRevision) -> Option<PodTemplateSpec> {
    let data = rev.data.as_ref()?;
    serde_json::from_value(data.0.get("spec")?.get("template")?.clone()).ok()
}

/// Ensures a revision exists for `template` (with the highest number if it
/// comes back from the past), and deletes the oldest unused ones beyond
/// `limit`. `in_use` are the revision names pods still carry.
pub fn sync(
    snap: &Snapshot,
    kind: Kind,
    owner: &ObjectMeta,
    template: &PodTemplateSpec,
    limit: usize,
    in_use: &[&str],
) -> Vec<Action> {
    let mut out = Vec::new();
    let name = owner.name.as_deref().unwrap_or("");
    let owner_uid = uid(owner);
    let existing = of(snap, owner_uid);
    let wanted = name_for(name, template);
    let max = existing.iter().map(|r| r.revision).max().unwrap_or(0);
    match existing
        .iter()
        .find(|r| r.metadata.name.as_deref() == Some(wanted.as_str()))
    {
        Some(r) if r.revision == max => {}
        Some(r) => {
            let mut r = (*r).clone();
            r.revision = max + 1;
            out.push(Action::Update(Object::ControllerRevision(r)));
        }
        None => {
            let mut labels = template
                .metadata
                .as_ref()
                .and_then(|m| m.labels.clone())
                .unwrap_or_default();
            labels.insert(REVISION_LABEL.into(), wanted.clone());
            out.push(Action::Create(Object::ControllerRevision(
                ControllerRevision {
                    metadata: ObjectMeta {
                        name: Some(wanted.clone()),
                        namespace: owner.namespace.clone(),
                        labels: Some(labels),
                        owner_references: Some(vec![owner_ref(kind, name, owner_uid)]),
                        ..Default::default()
                    },
                    data: Some(RawExtension(
                        serde_json::json!({"spec": {"template": template}}),
                    )),
                    revision: max + 1,
                },
            )));
        }
    }
    let unused: Vec<&&ControllerRevision> = existing
        .iter()
        .filter(|r| {
            let n = r.metadata.name.as_deref().unwrap_or("");
            n != wanted && !in_use.contains(&n)
        })
        .collect();
    if unused.len() > limit {
        for r in &unused[..unused.len() - limit] {
            out.push(Action::Delete {
                key: Object::ControllerRevision((**r).clone()).key(),
                resource_version: super::rv(&r.metadata),
            });
        }
    }
    out
}
