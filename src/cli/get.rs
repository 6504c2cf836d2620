//! `bramble get KIND [NAME...] [-o wide|yaml|json|name] [-n NS | -A] [-l SELECTOR]`.

use std::path::Path;
use std::process::ExitCode;

use crate::api::{Kind, Object};
use crate::transport::messages::{GetRequest, Request, Response};

use super::CliError;
use super::client::Client;
use super::printers::{self, TableOptions};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// `pods`, `deploy/web`, `svc a b`, `pods,svc`, `all`, `nodes`…
    #[arg(required = true)]
    pub what: Vec<String>,
    /// wide, yaml, json or name.
    #[arg(short = 'o', long = "output")]
    pub output: Option<String>,
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// Every namespace.
    #[arg(short = 'A', long = "all-namespaces")]
    pub all_namespaces: bool,
    /// Label selector (`app=web,tier!=db`).
    #[arg(short = 'l', long)]
    pub selector: Option<String>,
    #[arg(long = "no-headers")]
    pub no_headers: bool,
}

/// Fetches the objects named by `targets` (kind, optional name).
pub async fn fetch(
    client: &mut Client,
    targets: &[(Kind, Option<String>)],
    namespace: Option<&str>,
    selector: Option<&str>,
) -> Result<Vec<Object>, CliError> {
    let mut out = Vec::new();
    for (kind, name) in targets {
        let req = GetRequest {
            kind: *kind,
            namespace: namespace.map(String::from),
            name: name.clone(),
            selector: selector.map(String::from),
        };
        match client.call(Request::Get(req)).await? {
            Response::Objects(objs) => out.extend(objs),
            other => return Err(CliError::Unexpected(Box::new(other))),
        }
    }
    Ok(out)
}

pub async fn run(args: Args, config: Option<&Path>) -> Result<ExitCode, CliError> {
    let targets = super::targets::parse(&args.what)?;
    let output = args.output.as_deref().unwrap_or("");
    if !matches!(output, "" | "wide" | "yaml" | "json" | "name") {
        return Err(CliError::Usage(format!(
            "unable to match a printer suitable for the output format \"{output}\", allowed formats are: json,name,wide,yaml"
        )));
    }
    let namespace = if args.all_namespaces {
        None
    } else {
        Some(
            args.namespace
                .clone()
                .unwrap_or_else(|| crate::api::DEFAULT_NAMESPACE.to_string()),
        )
    };
    let cfg = super::load_config(config)?;
    let mut client = Client::connect(&cfg).await?;
    let result = fetch(
        &mut client,
        &targets,
        namespace.as_deref(),
        args.selector.as_deref(),
    )
    .await;
    client.close().await;
    let objects = result?;
    let single = targets.len() == 1 && targets[0].1.is_some();
    match output {
        "json" | "yaml" => {
            let value = if single {
                objects[0].to_json()
            } else {
                serde_json::json!({
                    "apiVersion": "v1",
                    "kind": "List",
                    "items": objects.iter().map(Object::to_json).collect::<Vec<_>>(),
                    "metadata": {"resourceVersion": ""},
                })
            };
            if output == "json" {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&value).unwrap_or_default()
                );
            } else {
                print!("{}", serde_yaml_ng::to_string(&value).unwrap_or_default());
            }
        }
        "name" => {
            for o in &objects {
                println!("{}", o.key());
            }
        }
        _ => {
            if objects.is_empty() {
                match &namespace {
                    Some(ns) if targets.iter().any(|(k, _)| k.namespaced()) => {
                        eprintln!("No resources found in {ns} namespace.")
                    }
                    _ => eprintln!("No resources found"),
                }
            } else {
                let opts = TableOptions {
                    wide: output == "wide",
                    with_namespace: args.all_namespaces,
                    now: jiff::Timestamp::now(),
                    no_headers: args.no_headers,
                    show_kind: targets.iter().any(|(k, _)| *k != targets[0].0),
                };
                print!("{}", printers::table(&objects, &opts));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
