//! `bramble delete KIND NAME... | KIND/NAME... | -f FILE | KIND -l SEL | KIND --all`.
//! Like kubectl, it waits until what it deleted is gone (`--wait=false` not to).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use crate::api::{Kind, ObjectKey};
use crate::transport::messages::{DeleteRequest, ErrorCode, GetRequest, Request, Response};

use super::CliError;
use super::client::Client;

#[derive(clap::Args, Debug)]
pub struct Args {
    pub what: Vec<String>,
    #[arg(short = 'f', long = "filename")]
    pub files: Vec<String>,
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    #[arg(short = 'l', long)]
    pub selector: Option<String>,
    /// Every object of the kind in the namespace.
    #[arg(long)]
    pub all: bool,
    /// `background` (default), `foreground` (dependents first, then the
    /// object), or `orphan` (dependents stay). `true`/`false` as kubectl.
    #[arg(long, default_value = "background", num_args = 0..=1, default_missing_value = "background")]
    pub cascade: String,
    #[arg(long = "dry-run", default_value = "none", num_args = 0..=1, default_missing_value = "client")]
    pub dry_run: String,
    /// Wait until the objects are gone.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub wait: bool,
}

pub async fn run(args: Args, config: Option<&Path>) -> Result<ExitCode, CliError> {
    let propagation = match args.cascade.as_str() {
        "background" | "true" => "background",
        "foreground" => "foreground",
        "orphan" | "false" => "orphan",
        other => {
            return Err(CliError::Usage(format!(
                "--cascade={other}: must be background, foreground, or orphan"
            )));
        }
    };
    let dry = super::dry_run::parse(&args.dry_run)?;
    let ns = args
        .namespace
        .clone()
        .unwrap_or_else(|| crate::api::DEFAULT_NAMESPACE.to_string());
    // (kind, namespace) → names
    let mut requests: BTreeMap<(Kind, String), Vec<String>> = BTreeMap::new();
    let mut by_selector: Vec<Kind> = Vec::new();
    if !args.files.is_empty() {
        for p in super::apply::read_manifests(&args.files, args.namespace.as_deref())? {
            let key = p.object.key();
            requests
                .entry((key.kind, key.namespace))
                .or_default()
                .push(key.name);
        }
    } else {
        for (kind, name) in super::targets::parse(&args.what)? {
            match name {
                Some(n) => requests.entry((kind, ns.clone())).or_default().push(n),
                None if args.all || args.selector.is_some() => by_selector.push(kind),
                None => {
                    return Err(CliError::Usage(
                        "resource(s) were provided, but no name was specified".into(),
                    ));
                }
            }
        }
    }
    let cfg = super::load_config(config)?;
    let mut client = Client::connect(&cfg).await?;
    let mut deleted: Vec<ObjectKey> = Vec::new();
    let mut result = Ok(());
    let mut calls: Vec<DeleteRequest> = requests
        .into_iter()
        .map(|((kind, namespace), names)| DeleteRequest {
            kind,
            namespace,
            names,
            selector: None,
            all: false,
            propagation: Some(propagation.to_string()),
            dry_run: dry != super::dry_run::DryRun::None,
        })
        .collect();
    calls.extend(by_selector.into_iter().map(|kind| DeleteRequest {
        kind,
        namespace: ns.clone(),
        names: vec![],
        selector: args.selector.clone(),
        all: args.all,
        propagation: Some(propagation.to_string()),
        dry_run: dry != super::dry_run::DryRun::None,
    }));
    // The uids of what is named, to tell it from a successor of the same name.
    let mut uids: BTreeMap<ObjectKey, String> = BTreeMap::new();
    for req in &calls {
        for name in &req.names {
            let key = ObjectKey::new(req.kind, &req.namespace, name);
            if let Ok(Some(u)) = uid_of(&mut client, &key).await {
                uids.insert(key, u);
            }
        }
    }
    for req in calls {
        match client.call(Request::Delete(req)).await {
            Ok(Response::Deleted(keys)) => {
                for k in &keys {
                    println!(
                        "{} \"{}\" deleted{}",
                        k.kind.qualified(),
                        k.name,
                        super::dry_run::suffix(dry)
                    );
                }
                deleted.extend(keys);
            }
            Ok(other) => {
                result = Err(CliError::Unexpected(Box::new(other)));
                break;
            }
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    if result.is_ok() && args.wait && dry == super::dry_run::DryRun::None {
        result = wait_gone(&mut client, &deleted, &uids).await;
    }
    client.close().await;
    result.map(|()| ExitCode::SUCCESS)
}

/// The uid an object has now, if it exists.
async fn uid_of(client: &mut Client, key: &ObjectKey) -> Result<Option<String>, CliError> {
    let req = GetRequest {
        kind: key.kind,
        namespace: Some(key.namespace.clone()),
        name: Some(key.name.clone()),
        selector: None,
    };
    match client.call(Request::Get(req)).await {
        Err(CliError::Api(e)) if e.code == ErrorCode::NotFound => Ok(None),
        Err(e) => Err(e),
        Ok(Response::Objects(objs)) => Ok(objs.first().and_then(|o| o.meta().uid.clone())),
        Ok(other) => Err(CliError::Unexpected(Box::new(other))),
    }
}

/// Waits until each deleted object is gone: not found, or found with another
/// uid (a controller made a new one under the same name, as a StatefulSet
/// does), as kubectl compares uids.
async fn wait_gone(
    client: &mut Client,
    keys: &[ObjectKey],
    uids: &BTreeMap<ObjectKey, String>,
) -> Result<(), CliError> {
    for key in keys {
        loop {
            match uid_of(client, key).await? {
                None => break,
                Some(u) if uids.get(key).is_some_and(|old| *old != u) => break,
                Some(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }
    Ok(())
}
