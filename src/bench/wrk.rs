//! Debian's `wrk` against a URL, and what it printed, parsed.

use std::path::Path;
use std::process::Command;

use super::{BenchError, io_err};

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Wrk {
    pub requests_per_second: f64,
    pub p50: String,
    pub p99: String,
    pub transfer: String,
    /// wrk's "Socket errors" / "Non-2xx" line, if it printed one.
    pub errors: Option<String>,
}

/// `wrk -tT -cC -dDs --latency URL`.
pub fn run(
    wrk: &Path,
    url: &str,
    threads: u32,
    connections: u32,
    seconds: u64,
) -> Result<Wrk, BenchError> {
    let out = Command::new(wrk)
        .args([
            format!("-t{threads}"),
            format!("-c{connections}"),
            format!("-d{seconds}s"),
            "--latency".into(),
            url.into(),
        ])
        .output()
        .map_err(io_err(wrk))?;
    if !out.status.success() {
        return Err(BenchError::command(&format!("wrk {url}"), &out));
    }
    let parsed = parse(&String::from_utf8_lossy(&out.stdout));
    if parsed.requests_per_second == 0.0 {
        return Err(BenchError::Parse {
            what: format!("wrk {url}"),
            detail: String::from_utf8_lossy(&out.stdout).into_owned(),
        });
    }
    Ok(parsed)
}

pub fn parse(text: &str) -> Wrk {
    let field = |prefix: &str| -> String {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix).map(|r| r.trim().to_string()))
            .unwrap_or_else(|| "?".into())
    };
    Wrk {
        requests_per_second: field("Requests/sec:").parse().unwrap_or(0.0),
        p50: field("50%"),
        p99: field("99%"),
        transfer: field("Transfer/sec:"),
        errors: text
            .lines()
            .find(|l| l.contains("Socket errors") || l.contains("Non-2xx"))
            .map(|l| l.trim().to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_wrk_output() {
        let text = "Running 1s test @ http://127.0.0.1:8080/\n  2 threads and 4 connections\n  Latency Distribution\n     50%  101.00us\n     75%  150.00us\n     90%  200.00us\n     99%  1.20ms\n  12345 requests in 1.00s, 1.00MB read\n  Socket errors: connect 0, read 1, write 0, timeout 0\nRequests/sec:  12345.67\nTransfer/sec:      1.00MB\n";
        let w = parse(text);
        assert_eq!(w.requests_per_second, 12345.67);
        assert_eq!(w.p50, "101.00us");
        assert_eq!(w.p99, "1.20ms");
        assert_eq!(w.transfer, "1.00MB");
        assert!(w.errors.unwrap().starts_with("Socket errors"));
    }
}
