//! `bramble apply -f FILE|DIR|-`: parse, validate and send every object in one
//! request, so a multi-document apply is all or nothing.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::api::manifest::{self, DocError, ManifestError, Parsed};
use crate::transport::messages::{ApplyRequest, Request, Response};

use super::CliError;
use super::client::Client;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Manifest file, directory (its .yaml, .yml and .json files) or `-` for stdin.
    #[arg(short = 'f', long = "filename", required = true)]
    pub files: Vec<String>,
    /// `none`, `client` (validate locally only) or `server` (the master checks
    /// everything and stores nothing).
    #[arg(long = "dry-run", default_value = "none", num_args = 0..=1, default_missing_value = "client")]
    pub dry_run: String,
    /// Namespace for objects that name none.
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
}

/// Reads and parses every manifest named; all errors of all files together.
pub fn read_manifests(files: &[String], namespace: Option<&str>) -> Result<Vec<Parsed>, CliError> {
    let mut sources: Vec<(String, String)> = Vec::new();
    for f in files {
        if f == "-" {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .map_err(|source| CliError::Io {
                    path: "-".into(),
                    source,
                })?;
            sources.push(("-".into(), text));
            continue;
        }
        let path = PathBuf::from(f);
        let io = |source| CliError::Io {
            path: path.clone(),
            source,
        };
        if path.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(&path)
                .map_err(io)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.is_file()
                        && matches!(
                            p.extension().and_then(|e| e.to_str()),
                            Some("yaml" | "yml" | "json")
                        )
                })
                .collect();
            entries.sort();
            for p in entries {
                let text = std::fs::read_to_string(&p).map_err(|source| CliError::Io {
                    path: p.clone(),
                    source,
                })?;
                sources.push((display(&p), text));
            }
        } else {
            let text = std::fs::read_to_string(&path).map_err(io)?;
            sources.push((display(&path), text));
        }
    }
    let mut parsed = Vec::new();
    let mut errors: Vec<DocError> = Vec::new();
    for (name, text) in &sources {
        match manifest::parse(name, text) {
            Ok(p) => parsed.extend(p),
            Err(e) => errors.extend(e.errors),
        }
    }
    if let Some(ns) = namespace {
        for p in &mut parsed {
            if !p.object.kind().namespaced() {
                continue;
            }
            match p.object.meta().namespace.as_deref() {
                // Defaults filled `default` in where the manifest named none.
                Some(have) if have != ns && have != crate::api::DEFAULT_NAMESPACE => {
                    errors.push(DocError {
                        source: p.origin.source.clone(),
                        document: p.origin.document,
                        line: p.origin.line,
                        column: None,
                        object: Some(format!("{} {}", p.object.kind(), p.object.name())),
                        message: format!(
                            "the namespace from the provided object \"{have}\" does not match the namespace \"{ns}\". You must pass '--namespace={have}' to perform this operation."
                        ),
                    });
                }
                _ => {
                    p.object.meta_mut().namespace = Some(ns.to_string());
                    p.written.meta_mut().namespace = Some(ns.to_string());
                }
            }
        }
    }
    if !errors.is_empty() {
        return Err(ManifestError { errors }.into());
    }
    if parsed.is_empty() {
        return Err(CliError::Usage("no objects passed to apply".into()));
    }
    Ok(parsed)
}

fn display(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

pub fn print_warnings(parsed: &[Parsed]) {
    for p in parsed {
        for w in &p.warnings {
            eprintln!("Warning: {}: {w}", p.origin);
        }
    }
}

pub async fn run(args: Args, config: Option<&Path>) -> Result<ExitCode, CliError> {
    let parsed = read_manifests(&args.files, args.namespace.as_deref())?;
    print_warnings(&parsed);
    let mode = super::dry_run::parse(&args.dry_run)?;
    let cfg = super::load_config(config)?;
    let mut client = Client::connect(&cfg).await?;
    if mode == super::dry_run::DryRun::Client {
        // Checked here only; the master is asked whether each exists.
        let mut result = Ok(ExitCode::SUCCESS);
        for p in &parsed {
            let key = p.object.key();
            let req = crate::transport::messages::GetRequest {
                kind: key.kind,
                namespace: Some(key.namespace.clone()),
                name: Some(key.name.clone()),
                selector: None,
            };
            let word = match client.call(Request::Get(req)).await {
                Ok(_) => "configured",
                Err(CliError::Api(e))
                    if e.code == crate::transport::messages::ErrorCode::NotFound =>
                {
                    "created"
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            };
            println!("{key} {word} (dry run)");
        }
        client.close().await;
        return result;
    }
    let dry_run = mode == super::dry_run::DryRun::Server;
    let objects = parsed.into_iter().map(|p| p.written).collect();
    let response = client
        .call(Request::Apply(ApplyRequest { objects, dry_run }))
        .await;
    client.close().await;
    match response? {
        Response::Applied(items) => {
            for item in items {
                for w in &item.warnings {
                    eprintln!("Warning: {}: {w}", item.key);
                }
                let suffix = if dry_run { " (server dry run)" } else { "" };
                println!("{} {}{suffix}", item.key, item.outcome);
            }
            Ok(ExitCode::SUCCESS)
        }
        other => Err(CliError::Unexpected(Box::new(other))),
    }
}
