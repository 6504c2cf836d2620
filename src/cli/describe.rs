//! `bramble describe KIND NAME`: the object and the Events about it.

use std::path::Path;
use std::process::ExitCode;

use crate::api::{Event, Kind, Object};

use super::CliError;
use super::client::Client;
use super::printers::human_duration;

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

/// kubectl's Events table lines for `describe`, oldest first.
fn event_lines(events: &[&Event], now: jiff::Timestamp) -> Vec<String> {
    if events.is_empty() {
        return Vec::new();
    }
    let mut sorted: Vec<&Event> = events.to_vec();
    sorted.sort_by_key(|e| e.last_timestamp.as_ref().map(|t| t.0));
    let mut lines = vec![
        "Type\tReason\tAge\tFrom\tMessage".to_string(),
        "----\t------\t----\t----\t-------".to_string(),
    ];
    for e in sorted {
        let last = e.last_timestamp.as_ref().map(|t| t.0).unwrap_or(now);
        let mut age = human_duration(now.duration_since(last));
        if let (Some(n), Some(first)) = (e.count.filter(|n| *n > 1), &e.first_timestamp) {
            age = format!(
                "{age} (x{n} over {})",
                human_duration(now.duration_since(first.0))
            );
        }
        let from = e
            .source
            .as_ref()
            .and_then(|s| s.component.clone())
            .or_else(|| e.reporting_component.clone())
            .unwrap_or_default();
        lines.push(format!(
            "{}\t{}\t{age}\t{from}\t{}",
            e.type_.as_deref().unwrap_or(""),
            e.reason.as_deref().unwrap_or(""),
            e.message.as_deref().unwrap_or("").replace('\n', " ")
        ));
    }
    lines
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
    let events = match &result {
        Ok(_) => super::get::fetch(&mut client, &[(Kind::Event, None)], Some(&ns), None).await,
        Err(_) => Ok(Vec::new()),
    };
    client.close().await;
    let now = jiff::Timestamp::now();
    let objects = result?;
    let events = events?;
    for (i, obj) in objects.iter().enumerate() {
        if i > 0 {
            println!();
        }
        let uid = obj.meta().uid.clone().unwrap_or_default();
        let mine: Vec<&Event> = events
            .iter()
            .filter_map(|e| match e {
                Object::Event(e) if e.involved_object.uid.as_deref() == Some(uid.as_str()) => {
                    Some(e)
                }
                _ => None,
            })
            .collect();
        print!(
            "{}",
            super::printers::describe(obj, &event_lines(&mine, now), now)
        );
    }
    Ok(ExitCode::SUCCESS)
}
