//! `bramble cordon | uncordon | drain NODE`, with kubectl's words.
//!
//! `drain` cordons the node, then deletes its pods (each through the
//! graceful path, so preStop hooks and grace periods hold) and waits until
//! they are gone; their controllers start replacements elsewhere. As kubectl
//! does, it refuses DaemonSet pods unless `--ignore-daemonsets` (they would
//! come straight back) and pods no controller would replace unless `--force`.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use crate::api::{Kind, Object};
use crate::transport::messages::{CordonRequest, DeleteRequest, GetRequest, Request, Response};

use super::CliError;
use super::client::Client;

#[derive(clap::Args, Debug)]
pub struct CordonArgs {
    #[arg(required = true)]
    pub nodes: Vec<String>,
    #[arg(long = "dry-run", default_value = "none", num_args = 0..=1, default_missing_value = "client")]
    pub dry_run: String,
}

#[derive(clap::Args, Debug)]
pub struct DrainArgs {
    pub node: String,
    /// Leave DaemonSet-managed pods in place.
    #[arg(long)]
    pub ignore_daemonsets: bool,
    /// Also delete pods no controller manages (they are gone for good).
    #[arg(long)]
    pub force: bool,
    /// How long to wait for the pods to go (`0s`: do not wait).
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub timeout: Duration,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 90s or 5m"))?;
    match unit {
        "" | "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        _ => Err(format!("{s:?} is not a duration like 90s or 5m")),
    }
}

async fn cordon(
    client: &mut Client,
    nodes: Vec<String>,
    unschedulable: bool,
    dry_run: bool,
    suffix: &str,
) -> Result<(), CliError> {
    let req = CordonRequest {
        nodes,
        unschedulable,
        dry_run,
    };
    match client.call(Request::Cordon(req)).await? {
        Response::Done(done) => {
            for (key, word) in done {
                println!("node/{} {word}{suffix}", key.name);
            }
            Ok(())
        }
        other => Err(CliError::Unexpected(Box::new(other))),
    }
}

pub async fn run_cordon(
    args: CordonArgs,
    unschedulable: bool,
    config: Option<&Path>,
) -> Result<ExitCode, CliError> {
    let dry = super::dry_run::parse(&args.dry_run)?;
    let cfg = super::load_config(config)?;
    let mut client = Client::connect(&cfg).await?;
    let r = cordon(
        &mut client,
        args.nodes,
        unschedulable,
        dry != super::dry_run::DryRun::None,
        super::dry_run::suffix(dry),
    )
    .await;
    client.close().await;
    r.map(|()| ExitCode::SUCCESS)
}

/// Pods bound to `node` and not finished: (namespace, name) → (uid, owner kind).
async fn pods_on(
    client: &mut Client,
    node: &str,
) -> Result<BTreeMap<(String, String), (String, Option<String>)>, CliError> {
    let req = GetRequest {
        kind: Kind::Pod,
        namespace: None,
        name: None,
        selector: None,
    };
    let Response::Objects(objs) = client.call(Request::Get(req)).await? else {
        return Err(CliError::Stream("unexpected answer to get pods".into()));
    };
    Ok(objs
        .into_iter()
        .filter_map(|o| match o {
            Object::Pod(p) => Some(p),
            _ => None,
        })
        .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node))
        .filter(|p| {
            !matches!(
                p.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Succeeded" | "Failed")
            )
        })
        .map(|p| {
            let owner =
                crate::master::controllers::controller_of(&p.metadata).map(|r| r.kind.clone());
            (
                (
                    p.metadata.namespace.clone().unwrap_or_default(),
                    p.metadata.name.clone().unwrap_or_default(),
                ),
                (p.metadata.uid.clone().unwrap_or_default(), owner),
            )
        })
        .collect())
}

pub async fn run_drain(args: DrainArgs, config: Option<&Path>) -> Result<ExitCode, CliError> {
    let cfg = super::load_config(config)?;
    let mut client = Client::connect(&cfg).await?;
    let r = drain(&mut client, &args).await;
    client.close().await;
    r.map(|()| ExitCode::SUCCESS)
}

async fn drain(client: &mut Client, args: &DrainArgs) -> Result<(), CliError> {
    cordon(client, vec![args.node.clone()], true, false, "").await?;
    let pods = pods_on(client, &args.node).await?;
    let daemon: Vec<String> = pods
        .iter()
        .filter(|(_, (_, o))| o.as_deref() == Some("DaemonSet"))
        .map(|((ns, n), _)| format!("{ns}/{n}"))
        .collect();
    let unmanaged: Vec<String> = pods
        .iter()
        .filter(|(_, (_, o))| o.is_none())
        .map(|((ns, n), _)| format!("{ns}/{n}"))
        .collect();
    let mut problems = Vec::new();
    if !daemon.is_empty() && !args.ignore_daemonsets {
        problems.push(format!(
            "cannot delete DaemonSet-managed Pods (use --ignore-daemonsets to ignore): {}",
            daemon.join(", ")
        ));
    }
    if !unmanaged.is_empty() && !args.force {
        problems.push(format!(
            "cannot delete Pods that declare no controller (use --force to override): {}",
            unmanaged.join(", ")
        ));
    }
    if !problems.is_empty() {
        return Err(CliError::Usage(format!(
            "unable to drain node {:?} (it stays cordoned): {}",
            args.node,
            problems.join("; ")
        )));
    }
    if !daemon.is_empty() {
        println!(
            "Warning: ignoring DaemonSet-managed Pods: {}",
            daemon.join(", ")
        );
    }
    let evict: Vec<(&(String, String), &String)> = pods
        .iter()
        .filter(|(_, (_, o))| o.as_deref() != Some("DaemonSet"))
        .map(|(k, (uid, _))| (k, uid))
        .collect();
    for ((ns, name), _) in &evict {
        let req = DeleteRequest {
            kind: Kind::Pod,
            namespace: ns.clone(),
            names: vec![name.clone()],
            selector: None,
            all: false,
            propagation: None,
            dry_run: false,
        };
        match client.call(Request::Delete(req)).await {
            Ok(_) => println!("evicting pod {ns}/{name}"),
            Err(CliError::Api(e)) if e.code == crate::transport::messages::ErrorCode::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    let deadline = tokio::time::Instant::now() + args.timeout;
    loop {
        let now = pods_on(client, &args.node).await?;
        let left: Vec<String> = evict
            .iter()
            .filter(|(k, uid)| now.get(*k).is_some_and(|(u, _)| u == *uid))
            .map(|((ns, n), _)| format!("{ns}/{n}"))
            .collect();
        if left.is_empty() {
            for ((ns, name), _) in &evict {
                println!("pod/{name} evicted (namespace {ns})");
            }
            println!("node/{} drained", args.node);
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(CliError::Stream(format!(
                "drain did not complete within {:?}: still there: {}",
                args.timeout,
                left.join(", ")
            )));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
