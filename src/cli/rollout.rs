//! `bramble rollout status|history|undo|pause|resume|restart KIND/NAME`.
//!
//! `status` polls the object and prints kubectl's messages until the rollout
//! is done (exit 0) or has exceeded its progress deadline (exit 1);
//! `history` lists revisions from the ReplicaSets (Deployment) or
//! ControllerRevisions (StatefulSet, DaemonSet); the others are one command
//! to the master each.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use crate::api::{Kind, Object};
use crate::master::controllers::deployment::{
    CHANGE_CAUSE_ANNOTATION, TIMED_OUT_REASON, revision, template_of,
};
use crate::master::controllers::revisions;
use crate::transport::messages::{Request, RolloutAction, RolloutRequest};

use super::CliError;
use super::client::Client;

#[derive(clap::Subcommand, Debug)]
pub enum Cmd {
    /// Watch a rollout until it completes.
    Status(StatusArgs),
    /// List the revisions of a workload.
    History(HistoryArgs),
    /// Roll back to the previous (or a given) revision.
    Undo(UndoArgs),
    /// Stop a Deployment's rollout where it is.
    Pause(Target),
    /// Let a paused Deployment's rollout go on.
    Resume(Target),
    /// Replace every pod of a workload, one rollout step at a time.
    Restart(Target),
}

#[derive(clap::Args, Debug)]
pub struct Target {
    /// `deployment/web` or `deployment web`.
    #[arg(required = true)]
    pub what: Vec<String>,
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    #[arg(long = "dry-run", default_value = "none", num_args = 0..=1, default_missing_value = "client")]
    pub dry_run: String,
}

#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    pub target: Target,
    /// Keep watching until done (`--watch=false`: print once).
    #[arg(short = 'w', long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub watch: bool,
    /// Give up after this long (`0`: never), e.g. `90s`, `5m`.
    #[arg(long, default_value = "0s")]
    pub timeout: String,
}

#[derive(clap::Args, Debug)]
pub struct HistoryArgs {
    #[command(flatten)]
    pub target: Target,
    /// Show the pod template of this revision.
    #[arg(long)]
    pub revision: Option<i64>,
}

#[derive(clap::Args, Debug)]
pub struct UndoArgs {
    #[command(flatten)]
    pub target: Target,
    #[arg(long = "to-revision", default_value_t = 0)]
    pub to_revision: i64,
}

fn target(t: &Target) -> Result<(Kind, String, String), CliError> {
    let mut parsed = super::targets::parse(&t.what)?;
    let ns = t
        .namespace
        .clone()
        .unwrap_or_else(|| crate::api::DEFAULT_NAMESPACE.to_string());
    match (parsed.len(), parsed.pop()) {
        (1, Some((kind, Some(name)))) => Ok((kind, ns, name)),
        _ => Err(CliError::Usage(
            "rollout needs exactly one resource: TYPE/NAME or TYPE NAME".into(),
        )),
    }
}

/// `90s`, `5m`, `1h`, `0`.
pub fn parse_duration(s: &str) -> Result<Duration, CliError> {
    let bad = || CliError::Usage(format!("invalid duration {s:?}: use e.g. 90s, 5m, 1h"));
    let s = s.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?);
    let n: u64 = num.parse().map_err(|_| bad())?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => return Err(bad()),
    };
    Ok(Duration::from_secs(secs))
}

async fn get_one(
    client: &mut Client,
    kind: Kind,
    ns: &str,
    name: &str,
) -> Result<Object, CliError> {
    let objs = super::get::fetch(client, &[(kind, Some(name.to_string()))], Some(ns), None).await?;
    objs.into_iter()
        .next()
        .ok_or_else(|| CliError::Usage(format!("{} \"{name}\" not found", kind.plural())))
}

/// kubectl's status viewer: (message, done), or an error when the rollout
/// cannot finish.
pub fn status_message(obj: &Object) -> Result<(String, bool), String> {
    match obj {
        Object::Deployment(d) => {
            let name = d.metadata.name.as_deref().unwrap_or("");
            let st = d.status.clone().unwrap_or_default();
            if d.metadata.generation > st.observed_generation {
                return Ok((
                    "Waiting for deployment spec update to be observed...".into(),
                    false,
                ));
            }
            let cond = st
                .conditions
                .iter()
                .flatten()
                .find(|c| c.type_ == "Progressing");
            if cond.is_some_and(|c| c.reason.as_deref() == Some(TIMED_OUT_REASON)) {
                return Err(format!(
                    "deployment \"{name}\" exceeded its progress deadline"
                ));
            }
            let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
            let updated = st.updated_replicas.unwrap_or(0);
            let replicas = st.replicas.unwrap_or(0);
            let available = st.available_replicas.unwrap_or(0);
            if updated < want {
                return Ok((
                    format!(
                        "Waiting for deployment \"{name}\" rollout to finish: {updated} out of {want} new replicas have been updated..."
                    ),
                    false,
                ));
            }
            if replicas > updated {
                return Ok((
                    format!(
                        "Waiting for deployment \"{name}\" rollout to finish: {} old replicas are pending termination...",
                        replicas - updated
                    ),
                    false,
                ));
            }
            if available < updated {
                return Ok((
                    format!(
                        "Waiting for deployment \"{name}\" rollout to finish: {available} of {updated} updated replicas are available..."
                    ),
                    false,
                ));
            }
            Ok((
                format!("deployment \"{name}\" successfully rolled out"),
                true,
            ))
        }
        Object::StatefulSet(s) => {
            let st = s.status.clone().unwrap_or_default();
            let spec = s.spec.clone().unwrap_or_default();
            if s.metadata.generation > st.observed_generation {
                return Ok((
                    "Waiting for statefulset spec update to be observed...".into(),
                    false,
                ));
            }
            let replicas = spec.replicas.unwrap_or(1);
            let ready = st.ready_replicas.unwrap_or(0);
            if ready < replicas {
                return Ok((
                    format!("Waiting for {} pods to be ready...", replicas - ready),
                    false,
                ));
            }
            let partition = spec
                .update_strategy
                .as_ref()
                .and_then(|u| u.rolling_update.as_ref())
                .and_then(|r| r.partition)
                .unwrap_or(0);
            let updated = st.updated_replicas.unwrap_or(0);
            if partition > 0 {
                let want = replicas - partition;
                if updated < want {
                    return Ok((
                        format!(
                            "Waiting for partitioned roll out to finish: {updated} out of {want} new pods have been updated..."
                        ),
                        false,
                    ));
                }
                return Ok((
                    format!(
                        "partitioned roll out complete: {updated} new pods have been updated..."
                    ),
                    true,
                ));
            }
            let update = st.update_revision.clone().unwrap_or_default();
            if st.current_revision.as_deref() != Some(update.as_str()) {
                return Ok((
                    format!(
                        "waiting for statefulset rolling update to complete {updated} pods at revision {update}..."
                    ),
                    false,
                ));
            }
            Ok((
                format!(
                    "statefulset rolling update complete {} pods at revision {update}...",
                    st.current_replicas.unwrap_or(0)
                ),
                true,
            ))
        }
        Object::DaemonSet(d) => {
            let name = d.metadata.name.as_deref().unwrap_or("");
            let st = d.status.clone().unwrap_or_default();
            if d.metadata.generation > st.observed_generation {
                return Ok((
                    "Waiting for daemon set spec update to be observed...".into(),
                    false,
                ));
            }
            let desired = st.desired_number_scheduled;
            let updated = st.updated_number_scheduled.unwrap_or(0);
            let available = st.number_available.unwrap_or(0);
            if updated < desired {
                return Ok((
                    format!(
                        "Waiting for daemon set \"{name}\" rollout to finish: {updated} out of {desired} new pods have been updated..."
                    ),
                    false,
                ));
            }
            if available < desired {
                return Ok((
                    format!(
                        "Waiting for daemon set \"{name}\" rollout to finish: {available} of {desired} updated pods are available..."
                    ),
                    false,
                ));
            }
            Ok((
                format!("daemon set \"{name}\" successfully rolled out"),
                true,
            ))
        }
        other => Err(format!(
            "no status viewer has been implemented for {}",
            other.kind().plural()
        )),
    }
}

pub async fn run(cmd: Cmd, config: Option<&Path>) -> Result<ExitCode, CliError> {
    let cfg = super::load_config(config)?;
    match cmd {
        Cmd::Status(a) => {
            let (kind, ns, name) = target(&a.target)?;
            let timeout = parse_duration(&a.timeout)?;
            let start = tokio::time::Instant::now();
            let mut client = Client::connect(&cfg).await?;
            let mut last = String::new();
            let result = loop {
                let obj = match get_one(&mut client, kind, &ns, &name).await {
                    Ok(o) => o,
                    Err(e) => break Err(e),
                };
                match status_message(&obj) {
                    Err(e) => break Err(CliError::Usage(e)),
                    Ok((msg, done)) => {
                        if msg != last {
                            println!("{msg}");
                            last = msg;
                        }
                        if done || !a.watch {
                            break Ok(ExitCode::SUCCESS);
                        }
                    }
                }
                if !timeout.is_zero() && start.elapsed() >= timeout {
                    break Err(CliError::Timeout(
                        "timed out waiting for the condition".into(),
                    ));
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            };
            client.close().await;
            result
        }
        Cmd::History(a) => {
            let (kind, ns, name) = target(&a.target)?;
            let mut client = Client::connect(&cfg).await?;
            let obj = get_one(&mut client, kind, &ns, &name).await;
            let uid = obj
                .as_ref()
                .ok()
                .and_then(|o| o.meta().uid.clone())
                .unwrap_or_default();
            let owned_kind = if kind == Kind::Deployment {
                Kind::ReplicaSet
            } else {
                Kind::ControllerRevision
            };
            let list = super::get::fetch(&mut client, &[(owned_kind, None)], Some(&ns), None).await;
            client.close().await;
            let obj = obj?;
            let mut revs: Vec<(
                i64,
                String,
                Option<k8s_openapi::api::core::v1::PodTemplateSpec>,
            )> = list?
                .iter()
                .filter(|o| {
                    crate::master::controllers::controller_of(o.meta())
                        .is_some_and(|r| r.uid == uid)
                })
                .filter_map(|o| match o {
                    Object::ReplicaSet(rs) => Some((
                        revision(&rs.metadata),
                        rs.metadata
                            .annotations
                            .as_ref()
                            .and_then(|a| a.get(CHANGE_CAUSE_ANNOTATION))
                            .cloned()
                            .unwrap_or_else(|| "<none>".into()),
                        template_of(rs),
                    )),
                    Object::ControllerRevision(r) => Some((
                        r.revision,
                        r.metadata
                            .annotations
                            .as_ref()
                            .and_then(|a| a.get(CHANGE_CAUSE_ANNOTATION))
                            .cloned()
                            .unwrap_or_else(|| "<none>".into()),
                        revisions::template(r),
                    )),
                    _ => None,
                })
                .collect();
            revs.sort_by_key(|r| r.0);
            match a.revision {
                Some(n) => {
                    let Some((_, _, Some(t))) = revs.iter().find(|r| r.0 == n) else {
                        return Err(CliError::Usage(format!(
                            "unable to find the specified revision {n}"
                        )));
                    };
                    println!("{} with revision #{n}", obj.key());
                    println!("Pod Template:");
                    let yaml = serde_yaml_ng::to_string(t).unwrap_or_default();
                    for line in yaml.lines() {
                        println!("  {line}");
                    }
                }
                None => {
                    println!("{}", obj.key());
                    let mut text = String::from("REVISION\tCHANGE-CAUSE\n");
                    for (n, cause, _) in &revs {
                        text.push_str(&format!("{n}\t{cause}\n"));
                    }
                    print!("{}", super::printers::tabwrite(&text, 6, 2));
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Undo(a) => {
            let action = RolloutAction::Undo {
                to_revision: (a.to_revision != 0).then_some(a.to_revision),
            };
            simple(&cfg, &a.target, action).await
        }
        Cmd::Pause(t) => simple(&cfg, &t, RolloutAction::Pause).await,
        Cmd::Resume(t) => simple(&cfg, &t, RolloutAction::Resume).await,
        Cmd::Restart(t) => simple(&cfg, &t, RolloutAction::Restart).await,
    }
}

async fn simple(
    cfg: &crate::config::ClientConfig,
    t: &Target,
    action: RolloutAction,
) -> Result<ExitCode, CliError> {
    let (kind, namespace, name) = target(t)?;
    let dry = super::dry_run::parse(&t.dry_run)?;
    if dry == super::dry_run::DryRun::Client {
        println!("{kind}/{name} (dry run)");
        return Ok(ExitCode::SUCCESS);
    }
    let mut client = Client::connect(cfg).await?;
    let r = client
        .call(Request::Rollout(RolloutRequest {
            kind,
            namespace,
            name,
            action,
            dry_run: dry == super::dry_run::DryRun::Server,
        }))
        .await;
    client.close().await;
    super::dry_run::print_done(r?, dry)
}
