//! `bramble scale deployment/web --replicas=3` (or `scale deployment web`).

use std::path::Path;
use std::process::ExitCode;

use crate::transport::messages::{Request, Response, ScaleRequest};

use super::CliError;
use super::client::Client;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[arg(required = true)]
    pub what: Vec<String>,
    #[arg(long, required = true)]
    pub replicas: i32,
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// Only if the object is still at this resourceVersion.
    #[arg(long = "resource-version")]
    pub resource_version: Option<String>,
    /// Only if it has this many replicas now.
    #[arg(long = "current-replicas")]
    pub current_replicas: Option<i32>,
    #[arg(long = "dry-run", default_value = "none", num_args = 0..=1, default_missing_value = "client")]
    pub dry_run: String,
}

pub async fn run(args: Args, config: Option<&Path>) -> Result<ExitCode, CliError> {
    let targets = super::targets::parse(&args.what)?;
    let dry = super::dry_run::parse(&args.dry_run)?;
    let ns = args
        .namespace
        .unwrap_or_else(|| crate::api::DEFAULT_NAMESPACE.to_string());
    let cfg = super::load_config(config)?;
    let mut client = Client::connect(&cfg).await?;
    let mut result = Ok(ExitCode::SUCCESS);
    for (kind, name) in targets {
        let Some(name) = name else {
            result = Err(CliError::Usage(
                "scale needs a name: scale deployment/NAME --replicas=N".into(),
            ));
            break;
        };
        let req = ScaleRequest {
            kind,
            namespace: ns.clone(),
            name,
            replicas: args.replicas,
            resource_version: args.resource_version.clone(),
            current_replicas: args.current_replicas,
            dry_run: dry != super::dry_run::DryRun::None,
        };
        match client.call(Request::Scale(req)).await {
            Ok(Response::Scaled(key)) => println!("{key} scaled{}", super::dry_run::suffix(dry)),
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
    client.close().await;
    result
}
