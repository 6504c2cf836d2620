//! Images for the pod sync loop: the pull policy, credentials from the pod's
//! `imagePullSecrets`, pulls in the background, their Events, and periodic
//! disk-pressure image garbage collection.
//!
//! A pull can take minutes, so it never runs inside a sync pass: the pass
//! that wants to start a container whose image must be pulled starts a
//! background task (one per image and credentials, shared by every container
//! waiting for it) and leaves the container `ContainerCreating`; when the
//! task ends, the agent loop hands its result to [`Agent::on_pull_done`],
//! which records it (Events, the pull back-off in `podsync`) and wakes the
//! loop, so the next pass starts the container or backs off.
//!
//! Pulls ask the master's registry mirror first when the Service table
//! names one ([`Agent::apply_registry_mirror`]).
//!
//! Owns: in-flight pulls and finished pulls not yet consumed by a start.
//! Must not touch: the pod state machine's rules (it calls
//! `PodRecord::on_pull_*`), the image store (only through the runtime seam).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Pod, Secret};
use tokio::sync::mpsc;

use super::Agent;
use super::podsync::Happening;
use crate::runtime::images::credentials::{parse_docker_config, parse_dockercfg};
use crate::runtime::images::mirror::mirror_address;
use crate::runtime::{
    Credential, ImageInfo, PullPolicy, RegistryAuth, RegistryMirror, RuntimeError,
};
use crate::transport::mirror_token;

/// Pulls that share everything share one task.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct PullKey {
    image: String,
    policy: PullPolicy,
    auth: Vec<RegistryAuth>,
}

/// A background pull's end, sent to the agent loop.
pub(super) struct PullDone {
    key: PullKey,
    result: Result<ImageInfo, RuntimeError>,
    elapsed: Duration,
}

/// `(pod uid, container name)`.
type Waiter = (String, String);

pub(super) struct ImagePulls {
    done: mpsc::UnboundedSender<PullDone>,
    in_flight: HashMap<PullKey, Vec<Waiter>>,
    /// Successful pulls a container has not started from yet.
    ready: HashMap<Waiter, ImageInfo>,
    gc_running: Arc<AtomicBool>,
}

impl ImagePulls {
    /// The pull tracker, and the receiver the agent loop waits on.
    pub(super) fn new() -> (ImagePulls, mpsc::UnboundedReceiver<PullDone>) {
        let (done, rx) = mpsc::unbounded_channel();
        (
            ImagePulls {
                done,
                in_flight: HashMap::new(),
                ready: HashMap::new(),
                gc_running: Arc::new(AtomicBool::new(false)),
            },
            rx,
        )
    }

    fn is_waiting(&self, waiter: &Waiter) -> bool {
        self.in_flight.values().any(|w| w.contains(waiter))
    }
}

/// The waiting reason a failed `ensure_image` gives the container.
pub fn failure_reason(e: &RuntimeError) -> &'static str {
    match e {
        RuntimeError::ImageNotPresent(_) => "ErrImageNeverPull",
        RuntimeError::InvalidImageReference { .. } => "InvalidImageName",
        _ => "ErrImagePull",
    }
}

/// The credentials a pod's `imagePullSecrets` give, from the Secrets the
/// master sent with the assignment, and what went wrong with the others
/// (missing, wrong type, malformed): those are skipped, as the kubelet does.
pub fn pull_credentials(pod: &Pod, secrets: &[Secret]) -> (Vec<RegistryAuth>, Vec<String>) {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let mut auths = Vec::new();
    let mut problems = Vec::new();
    let names = pod
        .spec
        .iter()
        .flat_map(|s| s.image_pull_secrets.iter().flatten())
        .map(|r| r.name.as_str());
    for name in names {
        let Some(secret) = secrets.iter().find(|s| {
            s.metadata.namespace.as_deref().unwrap_or("default") == ns
                && s.metadata.name.as_deref() == Some(name)
        }) else {
            problems.push(format!("secret {ns}/{name} not found"));
            continue;
        };
        let what = format!("secret {ns}/{name}");
        let value = |key: &str| -> Option<Vec<u8>> {
            secret
                .string_data
                .as_ref()
                .and_then(|d| d.get(key))
                .map(|v| v.as_bytes().to_vec())
                .or_else(|| secret.data.as_ref()?.get(key).map(|b| b.0.clone()))
        };
        let parsed = match secret.type_.as_deref() {
            Some("kubernetes.io/dockerconfigjson") => match value(".dockerconfigjson") {
                Some(bytes) => parse_docker_config(&what, &bytes).map_err(|e| e.to_string()),
                None => Err(format!("{what}: no .dockerconfigjson key")),
            },
            Some("kubernetes.io/dockercfg") => match value(".dockercfg") {
                Some(bytes) => parse_dockercfg(&what, &bytes).map_err(|e| e.to_string()),
                None => Err(format!("{what}: no .dockercfg key")),
            },
            other => Err(format!(
                "{what}: type {:?} is not kubernetes.io/dockerconfigjson",
                other.unwrap_or("Opaque")
            )),
        };
        match parsed {
            Ok(a) => auths.extend(a),
            Err(e) => problems.push(e),
        }
    }
    (auths, problems)
}

impl Agent {
    /// Whether `spec`'s image is ready for a start now. When it is not,
    /// the container's record says why (waiting for a pull, or failed) and
    /// a later pass asks again.
    pub(super) async fn image_ready(
        &mut self,
        uid: &str,
        pod: &Pod,
        spec: &Container,
        now: i64,
    ) -> bool {
        let image = spec.image.clone().unwrap_or_default();
        let waiter: Waiter = (uid.to_string(), spec.name.clone());
        if self.pulls.ready.remove(&waiter).is_some() {
            return true;
        }
        if self.pulls.is_waiting(&waiter) {
            return false;
        }
        let policy = PullPolicy::of(spec.image_pull_policy.as_deref(), &image);
        if policy != PullPolicy::Always {
            // Looking in the store is quick: done inline.
            let img = image.clone();
            let local = self
                .runtime_call(move |rt| rt.ensure_image(&img, PullPolicy::Never, &[]))
                .await;
            match local {
                Ok(_) => {
                    self.emit(
                        uid,
                        Happening::normal(
                            "Pulled",
                            format!("Container image \"{image}\" already present on machine"),
                        ),
                        now,
                    );
                    return true;
                }
                Err(RuntimeError::ImageNotPresent(_)) if policy == PullPolicy::IfNotPresent => {}
                Err(e) => {
                    let reason = failure_reason(&e);
                    let message = match &e {
                        RuntimeError::ImageNotPresent(_) => format!(
                            "Container image \"{image}\" is not present with pull policy of Never; import it with `bramble image import` or `bramble image pull`"
                        ),
                        _ => e.to_string(),
                    };
                    self.emit(uid, Happening::warning(reason, message.clone()), now);
                    if let Some(r) = self.records.get_mut(uid) {
                        r.on_start_failed(&spec.name, reason, message, now);
                    }
                    return false;
                }
            }
        }
        let secrets = self
            .assignment
            .as_ref()
            .map(|a| a.secrets.as_slice())
            .unwrap_or_default();
        let (auth, problems) = pull_credentials(pod, secrets);
        if !problems.is_empty() {
            tracing::warn!(%uid, problems = %problems.join("; "), "image pull secrets");
            self.emit(
                uid,
                Happening::warning(
                    "FailedToRetrieveImagePullSecret",
                    format!(
                        "Unable to retrieve some image pull secrets ({}); attempting to pull the image may not succeed.",
                        problems.join("; ")
                    ),
                ),
                now,
            );
        }
        self.emit(
            uid,
            Happening::normal("Pulling", format!("Pulling image \"{image}\"")),
            now,
        );
        if let Some(r) = self.records.get_mut(uid) {
            r.on_pull_started(&spec.name);
        }
        let key = PullKey {
            image: image.clone(),
            policy,
            auth,
        };
        if let Some(waiters) = self.pulls.in_flight.get_mut(&key) {
            waiters.push(waiter);
            return false;
        }
        self.pulls.in_flight.insert(key.clone(), vec![waiter]);
        let rt = self.cfg.runtime.clone();
        let done = self.pulls.done.clone();
        tracing::info!(%image, ?policy, "pulling image");
        tokio::spawn(async move {
            let started = tokio::time::Instant::now();
            let k = key.clone();
            let result =
                tokio::task::spawn_blocking(move || rt.ensure_image(&k.image, k.policy, &k.auth))
                    .await
                    .unwrap_or_else(|e| {
                        Err(RuntimeError::Image(format!(
                            "pulling {}: the pull task failed: {e}",
                            key.image
                        )))
                    });
            // The agent may be gone (shutdown): then nobody waits.
            let _ = done.send(PullDone {
                key,
                result,
                elapsed: started.elapsed(),
            });
        });
        false
    }

    /// Points the runtime's pulls at the registry mirror the master
    /// advertises in the Service table (or at none), with a token signed by
    /// this node's key, fresh for each pull, and the master's key to check
    /// the digests it signs for tags.
    pub(super) fn apply_registry_mirror(&self) {
        let broker_host = crate::transport::client::parse_url(&self.cfg.broker.url)
            .map(|u| u.host)
            .unwrap_or_default();
        let advertised = self.services.network.registry_mirror.as_deref();
        let address = advertised.and_then(|a| mirror_address(a, &broker_host));
        if let (Some(a), None) = (advertised, &address) {
            tracing::warn!(advertised = %a, "the master advertises a registry mirror address this node cannot use");
        }
        let mirror = address.map(|registry| {
            let key = self.cfg.node_key.clone();
            let id = crate::transport::envelope::node_id(&self.cfg.node_name);
            let master = self.cfg.master_key;
            RegistryMirror {
                registry,
                credential: Arc::new(move || {
                    let now = jiff::Timestamp::now().as_second();
                    Some(Credential::Bearer(mirror_token::mint(&key, &id, now)))
                }),
                verify: Arc::new(move |message, signature| master.verify(message, signature)),
            }
        });
        let registry = mirror.as_ref().map(|m| m.registry.clone());
        if self.cfg.runtime.set_registry_mirror(mirror) {
            match registry {
                Some(r) => {
                    tracing::info!(mirror = %r, "pulls ask the master's registry mirror first")
                }
                None => tracing::info!("no registry mirror: pulls go to each image's registry"),
            }
        }
    }

    /// A background pull ended: Events and state for every container that
    /// waited on it. The caller runs a sync pass next.
    pub(super) fn on_pull_done(&mut self, done: PullDone, now: i64) {
        let waiters = self.pulls.in_flight.remove(&done.key).unwrap_or_default();
        let image = &done.key.image;
        match &done.result {
            Ok(info) => {
                tracing::info!(%image, digest = %info.manifest_digest, elapsed = ?done.elapsed, "image pulled")
            }
            Err(e) => tracing::warn!(%image, error = %e, "image pull failed"),
        }
        for waiter in waiters {
            let (uid, container) = &waiter;
            if !self.records.contains_key(uid) {
                continue;
            }
            match &done.result {
                Ok(info) => {
                    self.emit(
                        uid,
                        Happening::normal(
                            "Pulled",
                            format!(
                                "Successfully pulled image \"{image}\" in {:.3}s. Image size: {} bytes.",
                                done.elapsed.as_secs_f64(),
                                info.size
                            ),
                        ),
                        now,
                    );
                    self.pulls.ready.insert(waiter.clone(), info.clone());
                }
                Err(e) => {
                    let reason = failure_reason(e);
                    self.emit(
                        uid,
                        Happening::warning(
                            "Failed",
                            format!("Failed to pull image \"{image}\": {e}"),
                        ),
                        now,
                    );
                    self.emit(
                        uid,
                        Happening::warning("Failed", format!("Error: {reason}")),
                        now,
                    );
                    if let Some(r) = self.records.get_mut(uid) {
                        r.on_pull_failed(container, reason, e.to_string(), now);
                    }
                }
            }
        }
    }

    /// Runs the runtime's disk-pressure image collection in the background
    /// (it waits for pulls to release the store), one at a time; forgets
    /// finished pulls of pods that are gone.
    pub(super) fn collect_images(&mut self) {
        let records = &self.records;
        self.pulls
            .ready
            .retain(|(uid, _), _| records.contains_key(uid));
        if self.pulls.gc_running.swap(true, Ordering::AcqRel) {
            return;
        }
        let rt = self.cfg.runtime.clone();
        let running = self.pulls.gc_running.clone();
        tokio::task::spawn_blocking(move || {
            match rt.collect_images() {
                Ok(removed) if !removed.is_empty() => {
                    tracing::info!(images = %removed.join(", "), "disk pressure: unused images removed");
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "image garbage collection failed"),
            }
            running.store(false, Ordering::Release);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;
    use k8s_openapi::api::core::v1::{LocalObjectReference, PodSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use std::collections::BTreeMap;

    fn secret(ns: &str, name: &str, type_: &str, key: &str, value: &str) -> Secret {
        Secret {
            metadata: ObjectMeta {
                namespace: Some(ns.into()),
                name: Some(name.into()),
                ..Default::default()
            },
            type_: Some(type_.into()),
            data: Some(BTreeMap::from([(
                key.to_string(),
                ByteString(value.as_bytes().to_vec()),
            )])),
            ..Default::default()
        }
    }

    fn pod(secrets: &[&str]) -> Pod {
        Pod {
            metadata: ObjectMeta {
                namespace: Some("apps".into()),
                name: Some("p".into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                image_pull_secrets: Some(
                    secrets
                        .iter()
                        .map(|s| LocalObjectReference {
                            name: s.to_string(),
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            status: None,
        }
    }

    #[test]
    fn credentials_from_pull_secrets() {
        let good = secret(
            "apps",
            "regcred",
            "kubernetes.io/dockerconfigjson",
            ".dockerconfigjson",
            r#"{"auths": {"127.0.0.1:5000": {"username": "u", "password": "p"}}}"#,
        );
        let legacy = secret(
            "apps",
            "old",
            "kubernetes.io/dockercfg",
            ".dockercfg",
            r#"{"reg:5000": {"username": "a", "password": "b"}}"#,
        );
        let elsewhere = secret(
            "other",
            "theirs",
            "kubernetes.io/dockerconfigjson",
            ".dockerconfigjson",
            r#"{"auths": {}}"#,
        );
        let opaque = secret("apps", "opaque", "Opaque", "x", "y");
        let broken = secret(
            "apps",
            "broken",
            "kubernetes.io/dockerconfigjson",
            ".dockerconfigjson",
            "{",
        );
        let secrets = vec![good, legacy, elsewhere, opaque, broken];
        let (auths, problems) = pull_credentials(
            &pod(&["regcred", "old", "theirs", "opaque", "broken", "missing"]),
            &secrets,
        );
        let registries: Vec<&str> = auths.iter().map(|a| a.registry.as_str()).collect();
        assert_eq!(registries, vec!["127.0.0.1:5000", "reg:5000"]);
        assert_eq!(problems.len(), 4, "{problems:?}");
        assert!(problems[0].contains("apps/theirs not found"));
        assert!(problems[1].contains("Opaque"));
        assert!(problems[2].contains("secret apps/broken"));
        assert!(problems[3].contains("apps/missing not found"));
        let (none, problems) = pull_credentials(&pod(&[]), &secrets);
        assert!(none.is_empty() && problems.is_empty());
    }

    #[test]
    fn reasons() {
        assert_eq!(
            failure_reason(&RuntimeError::ImageNotPresent("x".into())),
            "ErrImageNeverPull"
        );
        assert_eq!(
            failure_reason(&RuntimeError::InvalidImageReference {
                reference: "X".into(),
                reason: "upper case".into()
            }),
            "InvalidImageName"
        );
        assert_eq!(
            failure_reason(&RuntimeError::RegistryNotFound {
                registry: "r".into(),
                image: "r/x:1".into(),
                detail: "HTTP 404".into()
            }),
            "ErrImagePull"
        );
    }
}
