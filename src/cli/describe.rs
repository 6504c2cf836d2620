//! `bramble describe KIND NAME`.

use std::path::Path;
use std::process::ExitCode;

use super::CliError;
use super::client::Client;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// `pod web-1`, `deploy/web`…
    #[arg(required = true)]
    pub what: Vec<String>,
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    #[arg(short = 'l', long)]
    pub selector: Option<String>,
}

pub async fn run(args: Args, config: Option<&Path>) -> Result<ExitCode, CliError> {
    let targets = super::targets::parse(&args.what)?;
    let ns = args
        .namespace
        .unwrap_or_else(|| crate::api::DEFAULT_NAMESPACE.to_string());
    let cfg = super::load_config(config)?;
    let mut client = Client::connect(&cfg).await?;
    let result =
        super::get::fetch(&mut client, &targets, Some(&ns), args.selector.as_deref()).await;
    client.close().await;
    let now = jiff::Timestamp::now();
    let objects = result?;
    for (i, obj) in objects.iter().enumerate() {
        if i > 0 {
            println!();
        }
        print!("{}", super::printers::describe(obj, &[], now));
    }
    Ok(ExitCode::SUCCESS)
}
