//! `bramble top nodes|pods`: CPU and memory use as the nodes measure it in
//! their pods' cgroups (a node's use is the sum of its pods').

use std::path::Path;
use std::process::ExitCode;

use crate::transport::messages::{Request, Response, TopRequest, TopRow};

use super::CliError;
use super::client::Client;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// `nodes` (`node`, `no`) or `pods` (`pod`, `po`).
    pub what: String,
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    #[arg(short = 'A', long = "all-namespaces")]
    pub all_namespaces: bool,
    #[arg(short = 'l', long)]
    pub selector: Option<String>,
    /// Per container (pods).
    #[arg(long)]
    pub containers: bool,
    #[arg(long = "no-headers")]
    pub no_headers: bool,
}

/// `250m`, as kubectl prints CPU.
fn cpu(m: i64) -> String {
    format!("{m}m")
}

/// `12Mi`, as kubectl prints memory.
fn mem(b: i64) -> String {
    format!("{}Mi", b / (1024 * 1024))
}

fn pct(v: i64, of: i64) -> String {
    if of <= 0 {
        return "<unknown>".into();
    }
    format!("{}%", v * 100 / of)
}

pub fn render(
    rows: &[TopRow],
    nodes: bool,
    all_ns: bool,
    containers: bool,
    headers: bool,
) -> String {
    let mut text = String::new();
    if headers {
        text.push_str(match (nodes, all_ns, containers) {
            (true, _, _) => "NAME\tCPU(cores)\tCPU(%)\tMEMORY(bytes)\tMEMORY(%)\t\n",
            (false, true, true) => "NAMESPACE\tPOD\tNAME\tCPU(cores)\tMEMORY(bytes)\t\n",
            (false, true, false) => "NAMESPACE\tNAME\tCPU(cores)\tMEMORY(bytes)\t\n",
            (false, false, true) => "POD\tNAME\tCPU(cores)\tMEMORY(bytes)\t\n",
            (false, false, false) => "NAME\tCPU(cores)\tMEMORY(bytes)\t\n",
        });
    }
    for r in rows {
        if nodes {
            text.push_str(&format!(
                "{}\t{}\t{}\t{}\t{}\t\n",
                r.name,
                cpu(r.cpu_millis),
                pct(r.cpu_millis, r.cpu_capacity_millis),
                mem(r.memory_bytes),
                pct(r.memory_bytes, r.memory_capacity_bytes)
            ));
            continue;
        }
        if all_ns {
            text.push_str(&format!("{}\t", r.namespace));
        }
        text.push_str(&r.name);
        text.push('\t');
        if let Some(c) = &r.container {
            text.push_str(c);
            text.push('\t');
        }
        text.push_str(&format!(
            "{}\t{}\t\n",
            cpu(r.cpu_millis),
            mem(r.memory_bytes)
        ));
    }
    super::printers::tabwrite(&text, 0, 3)
}

pub async fn run(args: Args, config: Option<&Path>) -> Result<ExitCode, CliError> {
    let nodes = match args.what.as_str() {
        "nodes" | "node" | "no" => true,
        "pods" | "pod" | "po" => false,
        other => {
            return Err(CliError::Usage(format!(
                "top: unknown resource {other:?}: nodes or pods"
            )));
        }
    };
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
    let r = client
        .call(Request::Top(TopRequest {
            nodes,
            namespace,
            selector: args.selector.clone(),
            containers: args.containers,
        }))
        .await;
    client.close().await;
    match r? {
        Response::Top(report) => {
            if report.rows.is_empty() {
                return Err(CliError::Usage("metrics not available yet".into()));
            }
            print!(
                "{}",
                render(
                    &report.rows,
                    nodes,
                    args.all_namespaces,
                    args.containers,
                    !args.no_headers
                )
            );
            Ok(ExitCode::SUCCESS)
        }
        other => Err(CliError::Unexpected(Box::new(other))),
    }
}
