//! Adoption and release, as Kubernetes' `ControllerRefManager` does them: a
//! controller claims the orphans its selector matches (objects in its
//! namespace with no controller reference, not being deleted) by adding
//! itself as their controller; it lets go of the objects it owns that its
//! selector no longer matches.

use std::collections::{BTreeMap, HashSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};

use super::{controller_of, owner_ref, uid};
use crate::api::Kind;
use crate::api::selector;

/// The orphans among `candidates` that `selector` matches, each claimed in
/// `claimed` (by uid) so two controllers never adopt one object in a pass.
/// An empty selector adopts nothing (Kubernetes refuses to).
pub fn orphans<'a, T: 'a>(
    candidates: impl Iterator<Item = &'a T>,
    namespace: Option<&str>,
    sel: &LabelSelector,
    meta: impl Fn(&T) -> &ObjectMeta,
    claimed: &mut HashSet<String>,
) -> Vec<&'a T> {
    let empty = sel.match_labels.as_ref().is_none_or(BTreeMap::is_empty)
        && sel.match_expressions.as_ref().is_none_or(Vec::is_empty);
    if empty {
        return Vec::new();
    }
    let no_labels = BTreeMap::new();
    candidates
        .filter(|o| {
            let m = meta(o);
            m.namespace.as_deref() == namespace
                && controller_of(m).is_none()
                && m.deletion_timestamp.is_none()
                && selector::matches(sel, m.labels.as_ref().unwrap_or(&no_labels))
                && claimed.insert(uid(m).to_string())
        })
        .collect()
}

/// Makes `owner` the controller of the object with `meta`.
pub fn adopt(meta: &mut ObjectMeta, kind: Kind, owner: &ObjectMeta) {
    let r = owner_ref(
        kind,
        owner.name.as_deref().unwrap_or(""),
        owner.uid.as_deref().unwrap_or(""),
    );
    meta.owner_references.get_or_insert_with(Vec::new).push(r);
}

/// Removes the controller reference to `owner_uid`.
pub fn release(meta: &mut ObjectMeta, owner_uid: &str) {
    if let Some(refs) = &mut meta.owner_references {
        refs.retain(|r| r.uid != owner_uid);
        if refs.is_empty() {
            meta.owner_references = None;
        }
    }
}
