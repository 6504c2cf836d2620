//! API objects: the Kubernetes types Bramble stores and serves, manifest parsing,
//! defaults and validation.
//!
//! Owns: the [`Object`] enum over the kinds Bramble implements (types from
//! `k8s-openapi`, never hand-written copies), object keys, label selectors,
//! manifest parsing with file/line errors and warnings for unimplemented fields.
//!
//! Must not touch: redb, MQTT, the runtime or the network. Everything here is pure
//! data in, data out, so the store, the master and the CLI can all share it.

pub mod cron;
pub mod defaults;
pub mod manifest;
pub mod quantity;
pub mod resources;
pub mod routing;
pub mod selector;
pub mod unimplemented;
pub mod validate;

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};

pub use k8s_openapi::api::apps::v1::{
    ControllerRevision, DaemonSet, Deployment, ReplicaSet, StatefulSet,
};
pub use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
pub use k8s_openapi::api::batch::v1::{CronJob, Job};
pub use k8s_openapi::api::core::v1::{
    ConfigMap, Endpoints, Event, Namespace, Node, PersistentVolumeClaim, Pod, Secret, Service,
};

/// Namespace used when a namespaced object names none.
pub const DEFAULT_NAMESPACE: &str = "default";

/// Annotation on a Node object holding the node's ed25519 public key (hex).
pub const NODE_KEY_ANNOTATION: &str = "bramble.io/public-key";

/// The one table of kinds: variant (also the k8s-openapi type's name),
/// apiVersion, plural, whether namespaced, and the short names a user may
/// type. Everything that depends only on the kind is generated from it, so a
/// new kind is one line in the `kinds!` call below (plus its printers,
/// defaults and validation).
macro_rules! kinds {
    ($( $kind:ident, $api:literal, $plural:literal, $namespaced:literal, [$($short:literal),*]; )*) => {
        /// The kinds Bramble implements, in the order `apply` creates them
        /// (namespaces before what lives in them, config before the pods that
        /// read it).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        pub enum Kind { $($kind,)* }

        /// One API object of a kind Bramble implements.
        ///
        /// On the wire and in the store it is CBOR, externally tagged by kind
        /// (`{"Pod": {...}}`); to users it is the plain Kubernetes object
        /// ([`Object::to_json`]).
        #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
        #[allow(clippy::large_enum_variant)]
        pub enum Object { $($kind($kind),)* }

        impl Kind {
            pub const ALL: &'static [Kind] = &[$(Kind::$kind,)*];

            /// The `kind:` string of a manifest.
            pub fn as_str(self) -> &'static str {
                match self { $(Kind::$kind => stringify!($kind),)* }
            }

            /// The `apiVersion:` a manifest of this kind carries.
            pub fn api_version(self) -> &'static str {
                match self { $(Kind::$kind => $api,)* }
            }

            /// Lower-case plural, as the API server names the resource.
            pub fn plural(self) -> &'static str {
                match self { $(Kind::$kind => $plural,)* }
            }

            pub fn namespaced(self) -> bool {
                match self { $(Kind::$kind => $namespaced,)* }
            }

            /// Parses what a user types after `get`/`delete`: singular, plural,
            /// short name, any case, with or without the API group
            /// (`deployments.apps`).
            pub fn from_cli(word: &str) -> Option<Kind> {
                let w = word.to_ascii_lowercase();
                let w = w.split('.').next().unwrap_or("");
                $(
                    if w == stringify!($kind).to_ascii_lowercase() || w == $plural $(|| w == $short)* {
                        return Some(Kind::$kind);
                    }
                )*
                None
            }
        }

        impl Object {
            pub fn kind(&self) -> Kind {
                match self { $(Object::$kind(_) => Kind::$kind,)* }
            }

            pub fn meta(&self) -> &ObjectMeta {
                match self { $(Object::$kind(o) => &o.metadata,)* }
            }

            pub fn meta_mut(&mut self) -> &mut ObjectMeta {
                match self { $(Object::$kind(o) => &mut o.metadata,)* }
            }

            /// The plain Kubernetes JSON form (`apiVersion`, `kind`,
            /// `metadata`, …), as `get -o json` prints it.
            pub fn to_json(&self) -> serde_json::Value {
                match self {
                    $(Object::$kind(o) => serde_json::to_value(o).unwrap_or(serde_json::Value::Null),)*
                }
            }

            /// Builds an object of `kind` from its plain Kubernetes JSON form.
            pub fn from_json(kind: Kind, value: serde_json::Value) -> Result<Object, serde_json::Error> {
                Ok(match kind { $(Kind::$kind => Object::$kind(serde_json::from_value(value)?),)* })
            }

            /// Deserializes an object of `kind` from any serde deserializer (the
            /// manifest parser wraps one to collect unknown fields).
            pub fn deserialize_kind<'de, D: serde::Deserializer<'de>>(
                kind: Kind,
                d: D,
            ) -> Result<Object, D::Error> {
                Ok(match kind { $(Kind::$kind => Object::$kind(Deserialize::deserialize(d)?),)* })
            }
        }

        $(
            impl From<$kind> for Object {
                fn from(o: $kind) -> Object { Object::$kind(o) }
            }
        )*
    };
}

kinds! {
    Namespace, "v1", "namespaces", false, ["ns"];
    Node, "v1", "nodes", false, ["no"];
    ConfigMap, "v1", "configmaps", true, ["cm"];
    Secret, "v1", "secrets", true, [];
    PersistentVolumeClaim, "v1", "persistentvolumeclaims", true, ["pvc"];
    Service, "v1", "services", true, ["svc"];
    Endpoints, "v1", "endpoints", true, ["ep"];
    Deployment, "apps/v1", "deployments", true, ["deploy"];
    ReplicaSet, "apps/v1", "replicasets", true, ["rs"];
    StatefulSet, "apps/v1", "statefulsets", true, ["sts"];
    DaemonSet, "apps/v1", "daemonsets", true, ["ds"];
    Job, "batch/v1", "jobs", true, [];
    CronJob, "batch/v1", "cronjobs", true, ["cj"];
    HorizontalPodAutoscaler, "autoscaling/v2", "horizontalpodautoscalers", true, ["hpa"];
    ControllerRevision, "apps/v1", "controllerrevisions", true, [];
    Pod, "v1", "pods", true, ["po"];
    Event, "v1", "events", true, ["ev"];
}

impl Kind {
    /// `deployment.apps`, `pod`: the prefix kubectl prints before `/name`.
    pub fn qualified(self) -> String {
        let lower = self.as_str().to_ascii_lowercase();
        match self.api_version().split_once('/') {
            Some((group, _)) => format!("{lower}.{group}"),
            None => lower,
        }
    }

    /// Parses a manifest's `kind:` (exact, case-sensitive, as the API server does).
    pub fn from_manifest(kind: &str) -> Option<Kind> {
        Kind::ALL.iter().copied().find(|k| k.as_str() == kind)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where an object lives: `kind/namespace/name` (namespace empty for cluster-scoped
/// kinds). Ordered so that a range scan lists one kind, then one namespace.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ObjectKey {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(kind: Kind, namespace: &str, name: &str) -> ObjectKey {
        let namespace = if kind.namespaced() { namespace } else { "" };
        ObjectKey {
            kind,
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
    }

    /// The store's key string.
    pub fn encode(&self) -> String {
        format!("{}/{}/{}", self.kind.as_str(), self.namespace, self.name)
    }
}

impl fmt::Display for ObjectKey {
    /// `deployment.apps/web` (namespace omitted, as kubectl prints it).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind.qualified(), self.name)
    }
}

impl Object {
    pub fn name(&self) -> &str {
        self.meta().name.as_deref().unwrap_or("")
    }

    /// The object's namespace; `""` for cluster-scoped kinds.
    pub fn namespace(&self) -> &str {
        if self.kind().namespaced() {
            self.meta()
                .namespace
                .as_deref()
                .unwrap_or(DEFAULT_NAMESPACE)
        } else {
            ""
        }
    }

    pub fn key(&self) -> ObjectKey {
        ObjectKey::new(self.kind(), self.namespace(), self.name())
    }

    pub fn labels(&self) -> &BTreeMap<String, String> {
        static EMPTY: BTreeMap<String, String> = BTreeMap::new();
        self.meta().labels.as_ref().unwrap_or(&EMPTY)
    }

    /// The stored resourceVersion, 0 when the object was never stored.
    pub fn resource_version(&self) -> u64 {
        self.meta()
            .resource_version
            .as_deref()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    /// CBOR bytes, as the store and the wire carry it.
    pub fn to_cbor(&self) -> Vec<u8> {
        let mut out = Vec::new();
        ciborium::into_writer(self, &mut out).expect("writing CBOR to a Vec cannot fail");
        out
    }

    pub fn from_cbor(bytes: &[u8]) -> Result<Object, ciborium::de::Error<std::io::Error>> {
        ciborium::from_reader(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ServicePort, ServiceSpec};
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

    #[test]
    fn cbor_round_trip_keeps_int_or_string() {
        let svc = Service {
            metadata: ObjectMeta {
                name: Some("web".into()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                ports: Some(vec![
                    ServicePort {
                        port: 80,
                        target_port: Some(IntOrString::Int(8080)),
                        ..Default::default()
                    },
                    ServicePort {
                        port: 81,
                        target_port: Some(IntOrString::String("http".into())),
                        ..Default::default()
                    },
                ]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let obj = Object::Service(svc);
        let back = Object::from_cbor(&obj.to_cbor()).unwrap();
        assert_eq!(back, obj);
        assert_eq!(back.key().encode(), "Service/default/web");
    }

    #[test]
    fn cli_kind_names() {
        assert_eq!(Kind::from_cli("deploy"), Some(Kind::Deployment));
        assert_eq!(Kind::from_cli("deployments.apps"), Some(Kind::Deployment));
        assert_eq!(Kind::from_cli("PO"), Some(Kind::Pod));
        assert_eq!(Kind::from_cli("widgets"), None);
        assert_eq!(Kind::Deployment.qualified(), "deployment.apps");
        assert_eq!(Kind::Pod.qualified(), "pod");
    }
}
