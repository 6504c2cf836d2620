//! `bramble label|annotate [--overwrite] KIND NAME… key=value… key-…`.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;

use crate::transport::messages::{LabelRequest, Request};

use super::CliError;
use super::client::Client;
use super::dry_run::{self, DryRun};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// `pods web-1 app=web tier-` or `pod/web-1 app=web`.
    #[arg(required = true)]
    pub args: Vec<String>,
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    #[arg(short = 'l', long)]
    pub selector: Option<String>,
    #[arg(long)]
    pub all: bool,
    /// Replace values already set.
    #[arg(long)]
    pub overwrite: bool,
    /// Only if the object is still at this resourceVersion.
    #[arg(long = "resource-version")]
    pub resource_version: Option<String>,
    #[arg(long = "dry-run", default_value = "none", num_args = 0..=1, default_missing_value = "client")]
    pub dry_run: String,
}

pub async fn run(
    args: Args,
    annotations: bool,
    config: Option<&Path>,
) -> Result<ExitCode, CliError> {
    let mut set = BTreeMap::new();
    let mut remove = Vec::new();
    let mut what = Vec::new();
    for a in &args.args {
        if let Some((k, v)) = a.split_once('=') {
            set.insert(k.to_string(), v.to_string());
        } else if let Some(k) = a.strip_suffix('-').filter(|_| !what.is_empty()) {
            remove.push(k.to_string());
        } else {
            what.push(a.clone());
        }
    }
    if set.is_empty() && remove.is_empty() {
        return Err(CliError::Usage(format!(
            "at least one {} update is required",
            if annotations { "annotation" } else { "label" }
        )));
    }
    let targets = super::targets::parse(&what)?;
    let kind = targets[0].0;
    if targets.iter().any(|(k, _)| *k != kind) {
        return Err(CliError::Usage("one kind at a time".into()));
    }
    let names: Vec<String> = targets.into_iter().filter_map(|(_, n)| n).collect();
    let dry = dry_run::parse(&args.dry_run)?;
    let word = if annotations { "annotated" } else { "labeled" };
    if dry == DryRun::Client {
        for n in &names {
            println!("{}/{n} {word} (dry run)", kind.qualified());
        }
        return Ok(ExitCode::SUCCESS);
    }
    let req = LabelRequest {
        kind,
        namespace: args
            .namespace
            .unwrap_or_else(|| crate::api::DEFAULT_NAMESPACE.to_string()),
        names,
        selector: args.selector,
        all: args.all,
        annotations,
        set,
        remove,
        overwrite: args.overwrite,
        resource_version: args.resource_version,
        dry_run: dry == DryRun::Server,
    };
    let cfg = super::load_config(config)?;
    let mut client = Client::connect(&cfg).await?;
    let r = client.call(Request::Label(req)).await;
    client.close().await;
    dry_run::print_done(r?, dry)
}
