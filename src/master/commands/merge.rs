//! kubectl's three-way merge for `apply`, on the objects' JSON.
//!
//! Inputs: the configuration applied last time (kept in the
//! `kubectl.kubernetes.io/last-applied-configuration` annotation), the new
//! one, and the live object. A field set in the new configuration takes its
//! value; a field the last one set and the new one dropped is removed; a
//! field neither set (defaults, status, what `scale`, `label` or the
//! controllers wrote) stays as it is live.
//!
//! Lists of objects merge element by element on their key, as Kubernetes'
//! strategic merge patch does for the built-in types (`mountPath` for volume
//! mounts, `containerPort` for container ports, `port` for Service ports,
//! `name` for containers, env, volumes and the rest); other lists are
//! replaced whole.

use serde_json::{Map, Value};

pub const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

const MERGE_KEYS: &[&str] = &["mountPath", "containerPort", "port", "name"];

/// The merged object.
pub fn three_way(last: Option<&Value>, new: &Value, live: &Value) -> Value {
    merge(last, new, Some(live))
}

fn merge(last: Option<&Value>, new: &Value, live: Option<&Value>) -> Value {
    match (new, live) {
        (Value::Object(n), Some(Value::Object(l))) => {
            Value::Object(merge_map(last.and_then(Value::as_object), n, l))
        }
        (Value::Array(n), Some(Value::Array(l))) => {
            Value::Array(merge_list(last.and_then(Value::as_array), n, l))
        }
        _ => new.clone(),
    }
}

fn merge_map(
    last: Option<&Map<String, Value>>,
    new: &Map<String, Value>,
    live: &Map<String, Value>,
) -> Map<String, Value> {
    let mut out = live.clone();
    for k in last.into_iter().flat_map(|m| m.keys()) {
        if !new.contains_key(k) {
            out.remove(k);
        }
    }
    for (k, v) in new {
        if v.is_null() {
            out.remove(k);
        } else {
            let merged = merge(last.and_then(|m| m.get(k)), v, live.get(k));
            out.insert(k.clone(), merged);
        }
    }
    out
}

/// The key all object elements of the lists share, if any.
fn merge_key(lists: &[&[Value]]) -> Option<&'static str> {
    let elements: Vec<&Value> = lists.iter().flat_map(|l| l.iter()).collect();
    if elements.is_empty() || !elements.iter().all(|e| e.is_object()) {
        return None;
    }
    MERGE_KEYS.iter().copied().find(|k| {
        elements
            .iter()
            .all(|e| e.get(*k).is_some_and(|v| !v.is_null()))
    })
}

fn merge_list(last: Option<&Vec<Value>>, new: &[Value], live: &[Value]) -> Vec<Value> {
    let empty = Vec::new();
    let last_list = last.unwrap_or(&empty);
    let Some(key) = merge_key(&[new, live, last_list]) else {
        return new.to_vec();
    };
    let find = |list: &'_ [Value], v: &Value| -> Option<Value> {
        list.iter().find(|e| e.get(key) == v.get(key)).cloned()
    };
    let mut out: Vec<Value> = new
        .iter()
        .map(|n| {
            let l = find(live, n);
            let la = find(last_list, n);
            merge(la.as_ref(), n, l.as_ref())
        })
        .collect();
    // Elements someone else added stay; ones the last apply added and this
    // one dropped go.
    for l in live {
        if find(new, l).is_none() && find(last_list, l).is_none() {
            out.push(l.clone());
        }
    }
    out
}

/// What to store as the last-applied configuration: the new configuration
/// without status and without the annotation itself, compact JSON.
pub fn last_applied_text(new: &Value) -> String {
    let mut v = new.clone();
    if let Some(m) = v.as_object_mut() {
        m.remove("status");
        if let Some(ann) = m
            .get_mut("metadata")
            .and_then(|md| md.get_mut("annotations"))
            .and_then(Value::as_object_mut)
        {
            ann.remove(LAST_APPLIED);
        }
        if let Some(md) = m.get_mut("metadata").and_then(Value::as_object_mut)
            && md
                .get("annotations")
                .and_then(Value::as_object)
                .is_some_and(Map::is_empty)
        {
            md.remove("annotations");
        }
    }
    v.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn dropped_fields_go_others_stay() {
        let last = json!({"metadata": {"labels": {"a": "1", "b": "2"}}, "spec": {"replicas": 3, "paused": false}});
        let new = json!({"metadata": {"labels": {"a": "1"}}, "spec": {"replicas": 3}});
        let live = json!({"metadata": {"labels": {"a": "1", "b": "2", "added-by-label": "x"}, "uid": "u"},
                          "spec": {"replicas": 5, "paused": false, "revisionHistoryLimit": 10},
                          "status": {"replicas": 5}});
        let merged = three_way(Some(&last), &new, &live);
        assert_eq!(
            merged,
            json!({"metadata": {"labels": {"a": "1", "added-by-label": "x"}, "uid": "u"},
                   "spec": {"replicas": 3, "revisionHistoryLimit": 10},
                   "status": {"replicas": 5}})
        );
    }

    #[test]
    fn keyed_lists_merge_by_element() {
        let last = json!({"containers": [{"name": "web", "image": "v1", "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]}]});
        let new = json!({"containers": [{"name": "web", "image": "v2", "env": [{"name": "A", "value": "1"}]}]});
        let live = json!({"containers": [{"name": "web", "image": "v1", "imagePullPolicy": "IfNotPresent",
                            "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}, {"name": "C", "value": "3"}]},
                          {"name": "sidecar", "image": "s"}]});
        let merged = three_way(Some(&last), &new, &live);
        assert_eq!(
            merged,
            json!({"containers": [
                {"name": "web", "image": "v2", "imagePullPolicy": "IfNotPresent",
                 "env": [{"name": "A", "value": "1"}, {"name": "C", "value": "3"}]},
                {"name": "sidecar", "image": "s"}]})
        );
        // Service ports keep their allocated nodePort.
        let merged = three_way(
            None,
            &json!({"ports": [{"port": 80, "targetPort": 8080}]}),
            &json!({"ports": [{"port": 80, "targetPort": 80, "nodePort": 30080}]}),
        );
        assert_eq!(
            merged,
            json!({"ports": [{"port": 80, "targetPort": 8080, "nodePort": 30080}]})
        );
        // Lists of scalars are replaced.
        let merged = three_way(None, &json!({"args": ["a"]}), &json!({"args": ["a", "b"]}));
        assert_eq!(merged, json!({"args": ["a"]}));
    }

    #[test]
    fn without_last_applied_nothing_is_removed() {
        let merged = three_way(None, &json!({"a": 1}), &json!({"a": 0, "b": 2}));
        assert_eq!(merged, json!({"a": 1, "b": 2}));
        let text = last_applied_text(
            &json!({"metadata": {"annotations": {LAST_APPLIED: "x"}}, "status": {}}),
        );
        assert_eq!(text, r#"{"metadata":{}}"#);
    }
}
