//! `bramble set image KIND/NAME container=image…`.

use std::path::Path;
use std::process::ExitCode;

use crate::transport::messages::{Request, SetImageRequest};

use super::CliError;
use super::client::Client;
use super::dry_run::{self, DryRun};

#[derive(clap::Subcommand, Debug)]
pub enum Cmd {
    /// Change the image of containers of a workload or pod.
    Image(ImageArgs),
}

#[derive(clap::Args, Debug)]
pub struct ImageArgs {
    /// `deployment/web web=nginx:1.25` (`*=image` for every container).
    #[arg(required = true, num_args = 2..)]
    pub args: Vec<String>,
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    #[arg(long = "dry-run", default_value = "none", num_args = 0..=1, default_missing_value = "client")]
    pub dry_run: String,
}

pub async fn run(cmd: Cmd, config: Option<&Path>) -> Result<ExitCode, CliError> {
    let Cmd::Image(a) = cmd;
    let (targets, images): (Vec<String>, Vec<String>) =
        a.args.into_iter().partition(|s| !s.contains('='));
    let images: Vec<(String, String)> = images
        .iter()
        .map(|s| {
            let (c, i) = s.split_once('=').expect("partitioned on '='");
            (c.to_string(), i.to_string())
        })
        .collect();
    if images.iter().any(|(c, i)| c.is_empty() || i.is_empty()) {
        return Err(CliError::Usage("images must be CONTAINER=IMAGE".into()));
    }
    let dry = dry_run::parse(&a.dry_run)?;
    let ns = a
        .namespace
        .unwrap_or_else(|| crate::api::DEFAULT_NAMESPACE.to_string());
    let parsed = super::targets::parse(&targets)?;
    let cfg = super::load_config(config)?;
    let mut client = Client::connect(&cfg).await?;
    let mut result = Ok(ExitCode::SUCCESS);
    for (kind, name) in parsed {
        let Some(name) = name else {
            result = Err(CliError::Usage("set image needs TYPE/NAME".into()));
            break;
        };
        if dry == DryRun::Client {
            println!("{}/{name} image updated (dry run)", kind.qualified());
            continue;
        }
        let req = SetImageRequest {
            kind,
            namespace: ns.clone(),
            name,
            images: images.clone(),
            dry_run: dry == DryRun::Server,
        };
        match client.call(Request::SetImage(req)).await {
            Ok(r) => {
                if let Err(e) = dry_run::print_done(r, dry) {
                    result = Err(e);
                    break;
                }
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
