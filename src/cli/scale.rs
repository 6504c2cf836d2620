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
}

pub async fn run(args: Args, config: Option<&Path>) -> Result<ExitCode, CliError> {
    let targets = super::targets::parse(&args.what)?;
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
        };
        match client.call(Request::Scale(req)).await {
            Ok(Response::Scaled(key)) => println!("{key} scaled"),
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
