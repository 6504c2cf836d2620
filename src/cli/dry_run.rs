//! `--dry-run=none|client|server`, shared by the mutating verbs, and the
//! printing of what a command did.

use std::process::ExitCode;

use crate::transport::messages::Response;

use super::CliError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DryRun {
    None,
    /// Checked locally, nothing sent.
    Client,
    /// The master checks everything and stores nothing.
    Server,
}

pub fn parse(s: &str) -> Result<DryRun, CliError> {
    match s {
        "none" | "false" => Ok(DryRun::None),
        "client" | "true" => Ok(DryRun::Client),
        "server" => Ok(DryRun::Server),
        other => Err(CliError::Usage(format!(
            "--dry-run={other}: must be one of none, client, server"
        ))),
    }
}

pub fn suffix(d: DryRun) -> &'static str {
    match d {
        DryRun::None => "",
        DryRun::Client => " (dry run)",
        DryRun::Server => " (server dry run)",
    }
}

/// Prints `kind/name word` for each object of a `Done` answer.
pub fn print_done(r: Response, d: DryRun) -> Result<ExitCode, CliError> {
    match r {
        Response::Done(items) => {
            for (key, word) in items {
                println!("{key} {word}{}", suffix(d));
            }
            Ok(ExitCode::SUCCESS)
        }
        other => Err(CliError::Unexpected(Box::new(other))),
    }
}
