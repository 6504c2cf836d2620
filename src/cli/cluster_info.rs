//! `bramble cluster-info`.

use std::path::Path;
use std::process::ExitCode;

use crate::transport::messages::{Request, Response};

use super::CliError;
use super::client::Client;

#[derive(clap::Args, Debug)]
pub struct Args {}

pub async fn run(_args: Args, config: Option<&Path>) -> Result<ExitCode, CliError> {
    let cfg = super::load_config(config)?;
    let mut client = Client::connect(&cfg).await?;
    let result = client.call(Request::ClusterInfo).await;
    client.close().await;
    match result? {
        Response::ClusterInfo(info) => {
            println!(
                "Bramble master is running, reached through the broker at {}",
                info.broker
            );
            println!("Master key: {}", info.master_key);
            println!("Nodes: {}", info.nodes.join(", "));
            println!(
                "Cluster CIDR: {}   Service CIDR: {}",
                info.cluster_cidr, info.service_cidr
            );
            println!("Version: {}", info.version);
            Ok(ExitCode::SUCCESS)
        }
        other => Err(CliError::Unexpected(Box::new(other))),
    }
}
