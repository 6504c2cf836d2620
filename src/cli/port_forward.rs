//! `bramble port-forward POD|deploy/NAME [LOCAL:]REMOTE… [--address A,…]`:
//! listens here and, for every connection accepted, opens a stream to the
//! pod's node, which connects to REMOTE on the pod's loopback. Runs until ^C.
//!
//! Must not touch: anything but its own listeners and connections.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::transport::messages::{Channel, FrameBody, PortForwardRequest, Request};
use crate::transport::stream::{CHUNK, Ends};

use super::CliError;
use super::client::Client;
use super::stream::{Mux, outcome_error, resolve_pod};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// `POD`, `pod/POD`, `deploy/NAME` or `rs/NAME`.
    pub pod: String,
    /// `[LOCAL:]REMOTE`: `8080:80`, `80` (same port here), `:80` (any free port here).
    #[arg(required = true, num_args = 1..)]
    pub ports: Vec<String>,
    /// Addresses to listen on, comma-separated (`localhost`: 127.0.0.1 and ::1).
    #[arg(long, default_value = "localhost", value_delimiter = ',')]
    pub address: Vec<String>,
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
}

/// `(local, remote)`; local 0 means any free port.
pub fn parse_port(spec: &str) -> Result<(u16, u16), String> {
    let bad = || format!("invalid port mapping {spec:?} (expected [LOCAL:]REMOTE, e.g. 8080:80)");
    let (local, remote) = match spec.split_once(':') {
        Some(("", r)) => (0, r),
        Some((l, r)) => (l.parse::<u16>().map_err(|_| bad())?, r),
        None => (u16::MAX, spec),
    };
    let remote: u16 = remote.parse().map_err(|_| bad())?;
    if remote == 0 {
        return Err(bad());
    }
    Ok((if local == u16::MAX { remote } else { local }, remote))
}

fn addresses(words: &[String]) -> Result<Vec<(IpAddr, bool)>, CliError> {
    let mut out = Vec::new();
    for w in words {
        if w == "localhost" {
            // ::1 only if this machine has it.
            out.push((IpAddr::from([127, 0, 0, 1]), true));
            out.push((IpAddr::from(std::net::Ipv6Addr::LOCALHOST), false));
        } else {
            let ip = w.parse().map_err(|_| {
                CliError::Usage(format!("{w} is not a valid IP address or localhost"))
            })?;
            out.push((ip, true));
        }
    }
    Ok(out)
}

fn show(addr: SocketAddr) -> String {
    match addr.ip() {
        IpAddr::V6(ip) => format!("[{ip}]:{}", addr.port()),
        IpAddr::V4(ip) => format!("{ip}:{}", addr.port()),
    }
}

pub async fn run(args: Args, config: Option<&Path>) -> Result<ExitCode, CliError> {
    let ns = args
        .namespace
        .clone()
        .unwrap_or_else(|| crate::api::DEFAULT_NAMESPACE.to_string());
    let ports = args
        .ports
        .iter()
        .map(|p| parse_port(p))
        .collect::<Result<Vec<_>, _>>()
        .map_err(CliError::Usage)?;
    let addrs = addresses(&args.address)?;
    let cfg = super::load_config(config)?;
    let mut client = Client::connect(&cfg).await?;
    let pod = match resolve_pod(&mut client, &args.pod, &ns).await {
        Ok(p) => p,
        Err(e) => {
            client.close().await;
            return Err(e);
        }
    };
    let mux = Arc::new(Mux::new(client));
    let result = forward(mux.clone(), &ns, &pod, &ports, &addrs).await;
    if let Ok(mux) = Arc::try_unwrap(mux) {
        mux.close().await;
    }
    result
}

async fn forward(
    mux: Arc<Mux>,
    ns: &str,
    pod: &str,
    ports: &[(u16, u16)],
    addrs: &[(IpAddr, bool)],
) -> Result<ExitCode, CliError> {
    let mut listeners = Vec::new();
    for &(local, remote) in ports {
        // `:80` picks one free port, the same on every address.
        let mut port = local;
        for &(ip, required) in addrs {
            match TcpListener::bind((ip, port)).await {
                Ok(l) => {
                    let addr = l.local_addr().map_err(|source| CliError::Io {
                        path: show(SocketAddr::new(ip, port)).into(),
                        source,
                    })?;
                    port = addr.port();
                    println!("Forwarding from {} -> {remote}", show(addr));
                    listeners.push((l, remote));
                }
                Err(_) if !required => {}
                Err(source) => {
                    return Err(CliError::Usage(format!(
                        "unable to listen on {}: {source}",
                        show(SocketAddr::new(ip, port))
                    )));
                }
            }
        }
    }
    let mut accepting = tokio::task::JoinSet::new();
    for (listener, remote) in listeners {
        let (mux, ns, pod) = (mux.clone(), ns.to_string(), pod.to_string());
        accepting.spawn(async move {
            loop {
                let Ok((conn, _)) = listener.accept().await else {
                    // Out of fds, most likely: give it a moment.
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                };
                let local = listener.local_addr().map(|a| a.port()).unwrap_or_default();
                println!("Handling connection for {local}");
                let (mux, ns, pod) = (mux.clone(), ns.clone(), pod.clone());
                tokio::spawn(async move {
                    if let Err(e) = connection(&mux, &ns, &pod, remote, conn).await {
                        eprintln!("error: an error occurred forwarding {local} -> {remote}: {e}");
                    }
                });
            }
        });
    }
    let _ = tokio::signal::ctrl_c().await;
    accepting.abort_all();
    Ok(ExitCode::SUCCESS)
}

/// One forwarded connection: local bytes out as stdin, the pod's back as stdout.
async fn connection(
    mux: &Mux,
    ns: &str,
    pod: &str,
    remote: u16,
    conn: TcpStream,
) -> Result<(), String> {
    let mut stream = mux
        .open(|stream_id| {
            Request::PortForward(PortForwardRequest {
                namespace: ns.to_string(),
                pod: pod.to_string(),
                port: remote,
                stream_id,
            })
        })
        .await
        .map_err(|e| e.to_string())?;
    let engine = stream.engine.take().expect("a fresh stream has its engine");
    let (mut rd, mut wr) = conn.into_split();
    let (source_tx, source) = mpsc::channel(1);
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; CHUNK];
        loop {
            let body = match rd.read(&mut buf).await {
                Ok(0) | Err(_) => FrameBody::Eof {
                    channel: Channel::Stdin,
                },
                Ok(n) => FrameBody::Data {
                    channel: Channel::Stdin,
                    bytes: buf[..n].to_vec(),
                },
            };
            let last = matches!(body, FrameBody::Eof { .. });
            if source_tx.send(body).await.is_err() || last {
                return;
            }
        }
    });
    let (sink, mut inbox) = mpsc::unbounded_channel();
    let (consumed, consumed_rx) = mpsc::unbounded_channel();
    let writer = tokio::spawn(async move {
        let mut error = None;
        while let Some((seq, body)) = inbox.recv().await {
            match body {
                FrameBody::Data { bytes, .. } => {
                    // The local client went away: the rest has nowhere to go.
                    let _ = wr.write_all(&bytes).await;
                }
                FrameBody::Eof { .. } => {
                    let _ = wr.shutdown().await;
                }
                FrameBody::End { error: e, .. } => error = e,
                FrameBody::Resize(_) => {}
            }
            let _ = consumed.send(seq);
        }
        error
    });
    let outcome = engine
        .run(Ends {
            source,
            sink,
            consumed: consumed_rx,
        })
        .await;
    reader.abort();
    let node = stream.node.clone();
    stream.finish().await;
    let error = writer.await.ok().flatten();
    match (error, outcome_error(&node, &outcome)) {
        (Some(e), _) | (None, Some(e)) => Err(e),
        (None, None) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_specs() {
        assert_eq!(parse_port("8080:80"), Ok((8080, 80)));
        assert_eq!(parse_port("80"), Ok((80, 80)));
        assert_eq!(parse_port(":80"), Ok((0, 80)));
        for bad in ["", "a:80", "80:", "80:0", "70000", "1:2:3"] {
            assert!(parse_port(bad).is_err(), "{bad}");
        }
    }
}
