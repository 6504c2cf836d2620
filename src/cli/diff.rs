//! `bramble diff -f FILE`: what `apply` would change, as a unified diff of
//! the live objects against the master's server-side dry run of the apply.
//! Exit status as kubectl's: 0 no differences, 1 differences, >1 an error.

use std::path::Path;
use std::process::ExitCode;

use similar::TextDiff;

use crate::api::Object;
use crate::transport::messages::{ApplyRequest, ErrorCode, GetRequest, Request, Response};

use super::CliError;
use super::client::Client;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[arg(short = 'f', long = "filename", required = true)]
    pub files: Vec<String>,
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
}

/// The YAML compared: without the fields that change on every write.
fn yaml(obj: Option<&Object>) -> String {
    let Some(o) = obj else { return String::new() };
    let mut v = o.to_json();
    if let Some(md) = v.get_mut("metadata").and_then(|m| m.as_object_mut()) {
        md.remove("managedFields");
    }
    serde_yaml_ng::to_string(&v).unwrap_or_default()
}

/// The unified diff of one object, with kubectl's file names.
pub fn unified(name: &str, live: Option<&Object>, merged: Option<&Object>) -> String {
    let (a, b) = (yaml(live), yaml(merged));
    if a == b {
        return String::new();
    }
    TextDiff::from_lines(&a, &b)
        .unified_diff()
        .header(&format!("/tmp/LIVE/{name}"), &format!("/tmp/MERGED/{name}"))
        .to_string()
}

pub async fn run(args: Args, config: Option<&Path>) -> Result<ExitCode, CliError> {
    let parsed = super::apply::read_manifests(&args.files, args.namespace.as_deref())?;
    super::apply::print_warnings(&parsed);
    let cfg = super::load_config(config)?;
    let mut client = Client::connect(&cfg).await?;
    let objects: Vec<Object> = parsed.iter().map(|p| p.written.clone()).collect();
    let result = async {
        let applied = match client
            .call(Request::Apply(ApplyRequest {
                objects,
                dry_run: true,
            }))
            .await?
        {
            Response::Applied(items) => items,
            other => return Err(CliError::Unexpected(Box::new(other))),
        };
        let mut out = String::new();
        for item in applied {
            let key = item.key.clone();
            let live = match client
                .call(Request::Get(GetRequest {
                    kind: key.kind,
                    namespace: Some(key.namespace.clone()),
                    name: Some(key.name.clone()),
                    selector: None,
                }))
                .await
            {
                Ok(Response::Objects(mut v)) => v.pop(),
                Err(CliError::Api(e)) if e.code == ErrorCode::NotFound => None,
                Err(e) => return Err(e),
                Ok(other) => return Err(CliError::Unexpected(Box::new(other))),
            };
            let (group, version) = match key.kind.api_version().split_once('/') {
                Some((g, v)) => (g.to_string(), v.to_string()),
                None => ("".to_string(), key.kind.api_version().to_string()),
            };
            let name = format!(
                "{}{version}.{}.{}.{}",
                if group.is_empty() {
                    String::new()
                } else {
                    format!("{group}.")
                },
                key.kind,
                if key.namespace.is_empty() {
                    ""
                } else {
                    key.namespace.as_str()
                },
                key.name
            );
            out.push_str(&unified(&name, live.as_ref(), item.object.as_ref()));
        }
        Ok(out)
    }
    .await;
    client.close().await;
    let out = result?;
    print!("{out}");
    Ok(if out.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
