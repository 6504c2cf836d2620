//! `bramble logs POD [-c CONTAINER] [-f] [--tail N]` (also `deploy/NAME`):
//! the master introduces the client to the pod's node, whose signed chunks
//! arrive on the stream topic; the client acks them, which both paces the node
//! and keeps a follow stream alive.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use crate::api::{Kind, Object};
use crate::transport::envelope;
use crate::transport::messages::{LogsRequest, Request, Response, StreamMsg};
use crate::transport::{MqttEvent, PublicKey};

use super::CliError;
use super::client::Client;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// `POD`, `pod/POD`, `deploy/NAME` or `rs/NAME`.
    pub pod: String,
    #[arg(short = 'c', long)]
    pub container: Option<String>,
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Lines from the end to show (all when negative).
    #[arg(long, default_value_t = -1, allow_hyphen_values = true)]
    pub tail: i64,
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
}

const KEEPALIVE: Duration = Duration::from_secs(10);
const SILENCE: Duration = Duration::from_secs(20);

/// The pod a `logs` argument names: a pod, or the first pod of a workload.
async fn resolve(client: &mut Client, what: &str, ns: &str) -> Result<String, CliError> {
    let Some((kind, name)) = what.split_once('/') else {
        return Ok(what.to_string());
    };
    let kind = super::targets::kind(kind)?;
    if kind == Kind::Pod {
        return Ok(name.to_string());
    }
    let objs = super::get::fetch(client, &[(kind, Some(name.to_string()))], Some(ns), None).await?;
    let selector = match objs.first() {
        Some(Object::Deployment(d)) => d.spec.as_ref().map(|s| s.selector.clone()),
        Some(Object::ReplicaSet(r)) => r.spec.as_ref().map(|s| s.selector.clone()),
        _ => None,
    }
    .and_then(|s| s.match_labels)
    .ok_or_else(|| {
        CliError::Usage(format!(
            "cannot get logs of {what}: not a pod, deployment or replicaset"
        ))
    })?;
    let sel = selector
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let pods = super::get::fetch(client, &[(Kind::Pod, None)], Some(ns), Some(&sel)).await?;
    pods.iter()
        .map(|p| p.name().to_string())
        .min()
        .ok_or_else(|| CliError::Usage(format!("{what} has no pods")))
}

pub async fn run(args: Args, config: Option<&Path>) -> Result<ExitCode, CliError> {
    let ns = args
        .namespace
        .clone()
        .unwrap_or_else(|| crate::api::DEFAULT_NAMESPACE.to_string());
    let cfg = super::load_config(config)?;
    let mut client = Client::connect(&cfg).await?;
    let result = stream(&mut client, &args, &ns).await;
    client.close().await;
    result
}

async fn stream(client: &mut Client, args: &Args, ns: &str) -> Result<ExitCode, CliError> {
    let pod = resolve(client, &args.pod, ns).await?;
    let id = format!("{:016x}", rand::random::<u64>());
    let out_filter = client.topics.stream_out_any_node(&id);
    client.subscribe(&out_filter).await?;
    let req = LogsRequest {
        namespace: ns.to_string(),
        pod,
        container: args.container.clone(),
        follow: args.follow,
        tail: u64::try_from(args.tail).ok(),
        stream_id: id.clone(),
    };
    let (node, node_key) = match client.call(Request::Logs(req)).await? {
        Response::LogStream { node, node_key } => (node, node_key),
        other => return Err(CliError::Unexpected(Box::new(other))),
    };
    let key: PublicKey = node_key.parse()?;
    let node_sender = envelope::node_id(&node);
    client.verifier.trust(node_sender.clone(), key);
    let out_topic = client.topics.stream_out(&node, &id);
    let in_topic = client.topics.stream_in(&node, &id);
    let mut last_seq = 0u64;
    let mut stdout = std::io::stdout();
    let mut keepalive = tokio::time::interval(KEEPALIVE);
    keepalive.tick().await;
    let mut silence = tokio::time::Instant::now() + SILENCE;
    loop {
        tokio::select! {
            ev = client.events.recv() => {
                let Some(MqttEvent::Message { topic, payload }) = ev else {
                    if ev.is_none() { return Err(CliError::Timeout("connection to the broker closed".into())); }
                    continue;
                };
                if topic != out_topic {
                    continue;
                }
                let msg = match client.verifier.open::<StreamMsg>(&topic, &payload) {
                    Ok(o) if o.from == node_sender => o.body,
                    Ok(_) => continue,
                    Err(e) => {
                        tracing::warn!(error = %e, "dropped a log chunk");
                        continue;
                    }
                };
                silence = tokio::time::Instant::now() + SILENCE;
                match msg {
                    StreamMsg::Data { seq, bytes } => {
                        if seq <= last_seq {
                            continue;
                        }
                        last_seq = seq;
                        let _ = stdout.write_all(&bytes);
                        let _ = stdout.flush();
                        let ack = client.sealer.seal(&in_topic, &node_sender, &StreamMsg::Ack { seq });
                        client.mqtt.publish(&in_topic, ack, false).await?;
                    }
                    StreamMsg::End { error: None } => return Ok(ExitCode::SUCCESS),
                    StreamMsg::End { error: Some(e) } => {
                        return Err(CliError::Timeout(format!("log stream from {node} ended: {e}")));
                    }
                    _ => {}
                }
            }
            // A follow stream stays alive only while we say we are here.
            _ = keepalive.tick() => {
                let ack = client.sealer.seal(&in_topic, &node_sender, &StreamMsg::Ack { seq: last_seq });
                client.mqtt.publish(&in_topic, ack, false).await?;
            }
            _ = tokio::time::sleep_until(silence), if !args.follow => {
                return Err(CliError::Timeout(format!("node {node} stopped sending the log")));
            }
            _ = tokio::signal::ctrl_c() => {
                let close = client.sealer.seal(&in_topic, &node_sender, &StreamMsg::Close);
                let _ = client.mqtt.publish(&in_topic, close, false).await;
                return Ok(ExitCode::SUCCESS);
            }
        }
    }
}
