//! `bramble logs POD [-c CONTAINER] [-f] [-p] [--tail N] [--since D |
//! --since-time T] [--timestamps]` (also `deploy/NAME`): the master
//! introduces the client to the pod's node, whose signed frames arrive on the
//! stream; the client acknowledges what it has printed, which both paces the
//! node and keeps a follow stream alive.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use crate::transport::messages::{FrameBody, LogsRequest, Request, Since};
use crate::transport::stream::Ends;

use super::CliError;
use super::client::Client;
use super::stream::{Mux, outcome_error, resolve_pod};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// `POD`, `pod/POD`, `deploy/NAME` or `rs/NAME`.
    pub pod: String,
    #[arg(short = 'c', long)]
    pub container: Option<String>,
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// The previous (terminated) instance of the container.
    #[arg(short = 'p', long)]
    pub previous: bool,
    /// Lines from the end to show (all when negative).
    #[arg(long, default_value_t = -1, allow_hyphen_values = true)]
    pub tail: i64,
    /// Only lines newer than this: `30s`, `10m`, `2h`, `1h30m`.
    #[arg(long)]
    pub since: Option<String>,
    /// Only lines written at or after this time (RFC 3339).
    #[arg(long = "since-time")]
    pub since_time: Option<String>,
    /// Prefix each line with when it was written.
    #[arg(long)]
    pub timestamps: bool,
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
}

/// Parses kubectl's durations: `90s`, `10m`, `2h`, `1h30m`, `500ms`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("invalid duration {text:?} (expected e.g. 30s, 10m, 2h, 1h30m)");
    if text.is_empty() {
        return Err(bad());
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        if digits == 0 {
            return Err(bad());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let per = match &rest[..unit_len] {
            "ms" => Duration::from_millis(1),
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            _ => return Err(bad()),
        };
        total += per
            .checked_mul(u32::try_from(n).map_err(|_| bad())?)
            .ok_or_else(bad)?;
        rest = &rest[unit_len..];
    }
    Ok(total)
}

fn since(args: &Args) -> Result<Option<Since>, CliError> {
    match (&args.since, &args.since_time) {
        (Some(_), Some(_)) => Err(CliError::Usage(
            "at most one of `sinceTime` or `sinceSeconds` may be specified".into(),
        )),
        (Some(d), None) => {
            let d = parse_duration(d).map_err(CliError::Usage)?;
            // kubectl rounds up to whole seconds.
            Ok(Some(Since::Seconds(d.as_millis().div_ceil(1000) as u64)))
        }
        (None, Some(t)) => {
            let at: jiff::Timestamp = t.parse().map_err(|e| {
                CliError::Usage(format!("--since-time {t:?} is not an RFC 3339 time: {e}"))
            })?;
            Ok(Some(Since::UnixMs(at.as_millisecond())))
        }
        (None, None) => Ok(None),
    }
}

pub async fn run(args: Args, config: Option<&Path>) -> Result<ExitCode, CliError> {
    let ns = args
        .namespace
        .clone()
        .unwrap_or_else(|| crate::api::DEFAULT_NAMESPACE.to_string());
    let since = since(&args)?;
    let cfg = super::load_config(config)?;
    let mut client = Client::connect(&cfg).await?;
    let pod = match resolve_pod(&mut client, &args.pod, &ns).await {
        Ok(p) => p,
        Err(e) => {
            client.close().await;
            return Err(e);
        }
    };
    let mux = Mux::new(client);
    let result = stream(&mux, &args, &ns, pod, since).await;
    mux.close().await;
    result
}

async fn stream(
    mux: &Mux,
    args: &Args,
    ns: &str,
    pod: String,
    since: Option<Since>,
) -> Result<ExitCode, CliError> {
    let mut conn = mux
        .open(|stream_id| {
            Request::Logs(LogsRequest {
                namespace: ns.to_string(),
                pod,
                container: args.container.clone(),
                follow: args.follow,
                tail: u64::try_from(args.tail).ok(),
                stream_id,
                previous: args.previous,
                since,
                timestamps: args.timestamps,
            })
        })
        .await?;
    let engine = conn.engine.take().expect("a fresh stream has its engine");
    // Nothing to send: the source stays open and empty.
    let (_source_tx, source) = mpsc::channel(1);
    let (sink, mut inbox) = mpsc::unbounded_channel();
    let (consumed, consumed_rx) = mpsc::unbounded_channel();
    let printer = tokio::spawn(async move {
        let mut stdout = tokio::io::stdout();
        let mut error = None;
        while let Some((seq, body)) = inbox.recv().await {
            match body {
                FrameBody::Data { bytes, .. } => {
                    let _ = stdout.write_all(&bytes).await;
                    let _ = stdout.flush().await;
                }
                FrameBody::End { error: e, .. } => error = e,
                _ => {}
            }
            let _ = consumed.send(seq);
        }
        error
    });
    let run = engine.run(Ends {
        source,
        sink,
        consumed: consumed_rx,
    });
    let outcome = tokio::select! {
        o = run => o,
        // kubectl logs -f ends quietly on ^C.
        _ = tokio::signal::ctrl_c() => {
            conn.close().await;
            conn.finish().await;
            return Ok(ExitCode::SUCCESS);
        }
    };
    let node = conn.node.clone();
    conn.finish().await;
    let error = printer.await.ok().flatten();
    match (outcome_error(&node, &outcome), error) {
        (_, Some(e)) | (Some(e), None) => Err(CliError::Stream(e)),
        (None, None) => Ok(ExitCode::SUCCESS),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        for bad in ["", "5", "m", "5x", "-5s", "1.5h"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
