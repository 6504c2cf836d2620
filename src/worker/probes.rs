//! Probes and lifecycle hooks, as the node runs them: TCP connects and HTTP
//! GETs from the agent to the pod's address (the agent sits on the pod
//! bridge, as the kubelet sits on the node), commands run in the container
//! through [`Runtime::exec`], and `sleep` hooks. The verdicts go back into
//! the pod state machine (`podsync`); nothing here decides what a result
//! means.
//!
//! `grpc` probes call the standard health service (`grpc.health.v1.Health/
//! Check`) over plaintext HTTP/2, and HTTPS `httpGet` skips certificate
//! checks, both as the kubelet does.

use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{
    Container, ExecAction, GRPCAction, HTTPGetAction, LifecycleHandler, Probe, TCPSocketAction,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::runtime::{ExecHandle, ExecSpec, Runtime};

/// What a probe or hook acts on: the pod's address for the network handlers,
/// the container's current attempt for `exec`.
#[derive(Clone)]
pub struct Target {
    /// `None` until the pod has an address (network handlers then fail).
    pub pod_ip: Option<IpAddr>,
    pub runtime: Arc<dyn Runtime>,
    /// The runtime id of the container's current attempt.
    pub container_id: String,
}

impl Target {
    fn ip(&self) -> Result<IpAddr, String> {
        self.pod_ip
            .ok_or_else(|| "the pod has no IP address yet".to_string())
    }
}

/// How much of an exec probe's or hook's output is kept for its message (the
/// kubelet's limit); the rest is read and dropped so the command never blocks
/// on a full pipe.
const EXEC_OUTPUT_LIMIT: usize = 10 * 1024;

/// How long the output of a command that has exited is still read (a
/// background child may hold its pipes open for good).
const EXEC_DRAIN: Duration = Duration::from_millis(100);

/// Whether Bramble runs this probe.
pub fn supported(p: &Probe) -> bool {
    p.tcp_socket.is_some()
        || p.grpc.is_some()
        || p.exec
            .as_ref()
            .is_some_and(|e| e.command.as_ref().is_some_and(|c| !c.is_empty()))
        || p.http_get
            .as_ref()
            .is_some_and(|h| matches!(h.scheme.as_deref(), None | Some("HTTP" | "HTTPS")))
}

/// A port as a probe names it: a number, or a container port's name.
fn resolve_port(port: &IntOrString, container: &Container) -> Result<u16, String> {
    match port {
        IntOrString::Int(n) => u16::try_from(*n).map_err(|_| format!("port {n} out of range")),
        IntOrString::String(name) => container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| u16::try_from(p.container_port).ok())
            .ok_or_else(|| format!("container has no port named {name:?}")),
    }
}

fn host(h: Option<&String>, target: &Target) -> Result<IpAddr, String> {
    match h.filter(|h| !h.is_empty()) {
        None => target.ip(),
        Some(h) => h
            .parse()
            .map_err(|_| format!("host {h:?} is not an IP address")),
    }
}

async fn tcp(
    action: &TCPSocketAction,
    container: &Container,
    target: &Target,
    timeout: Duration,
) -> Result<(), String> {
    let addr = SocketAddr::new(
        host(action.host.as_ref(), target)?,
        resolve_port(&action.port, container)?,
    );
    match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("dial tcp {addr}: {e}")),
        Err(_) => Err(format!("dial tcp {addr}: i/o timeout")),
    }
}

/// GET, as the kubelet sends it; 200 ≤ status < 400 is a success.
async fn http(
    action: &HTTPGetAction,
    container: &Container,
    target: &Target,
    timeout: Duration,
) -> Result<(), String> {
    let addr = SocketAddr::new(
        host(action.host.as_ref(), target)?,
        resolve_port(&action.port, container)?,
    );
    let path = action
        .path
        .clone()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "/".into());
    let tls = action.scheme.as_deref() == Some("HTTPS");
    let url = format!("{}://{addr}{path}", if tls { "https" } else { "http" });
    let request = async {
        let s = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("Get \"{url}\": dial tcp {addr}: {e}"))?;
        let mut s: Box<dyn Stream> = if tls {
            let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
            let tls = tokio_rustls::TlsConnector::from(insecure_tls())
                .connect(name, s)
                .await
                .map_err(|e| format!("Get \"{url}\": {e}"))?;
            Box::new(tls)
        } else {
            Box::new(s)
        };
        let mut req = format!("GET {path} HTTP/1.1\r\n");
        let mut has_host = false;
        for h in action.http_headers.iter().flatten() {
            has_host |= h.name.eq_ignore_ascii_case("host");
            req.push_str(&format!("{}: {}\r\n", h.name, h.value));
        }
        if !has_host {
            req.push_str(&format!("Host: {addr}\r\n"));
        }
        req.push_str("User-Agent: kube-probe/1.34\r\nAccept: */*\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| format!("Get \"{url}\": {e}"))?;
        let mut head = vec![0u8; 256];
        let mut got = 0;
        while got < 12 {
            let n = s
                .read(&mut head[got..])
                .await
                .map_err(|e| format!("Get \"{url}\": {e}"))?;
            if n == 0 {
                break;
            }
            got += n;
        }
        let line = String::from_utf8_lossy(&head[..got]).into_owned();
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| format!("Get \"{url}\": malformed HTTP response"))?;
        if (200..400).contains(&status) {
            Ok(())
        } else {
            Err(format!("HTTP probe failed with statuscode: {status}"))
        }
    };
    match tokio::time::timeout(timeout, request).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "Get \"{url}\": context deadline exceeded (Client.Timeout exceeded while awaiting headers)"
        )),
    }
}

/// A connection a probe speaks HTTP over, plain or TLS.
trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Stream for T {}

/// The kubelet's HTTPS probes set `InsecureSkipVerify`: a pod's certificate
/// names whatever the application chose, rarely its IP. The handshake's own
/// signature is still checked, so the peer holds the key of the
/// certificate it shows.
fn insecure_tls() -> Arc<rustls::ClientConfig> {
    static CONFIG: std::sync::OnceLock<Arc<rustls::ClientConfig>> = std::sync::OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .expect("the aws-lc-rs provider supports the default TLS versions")
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
                .with_no_client_auth();
            Arc::new(config)
        })
        .clone()
}

#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Runs one probe against a container.
pub async fn check(probe: &Probe, container: &Container, target: &Target) -> Result<(), String> {
    let timeout = Duration::from_secs(probe.timeout_seconds.unwrap_or(1).max(1) as u64);
    if let Some(e) = &probe.exec {
        return exec(e, target, timeout).await;
    }
    if let Some(t) = &probe.tcp_socket {
        return tcp(t, container, target, timeout).await;
    }
    if let Some(h) = &probe.http_get {
        return http(h, container, target, timeout).await;
    }
    if let Some(g) = &probe.grpc {
        return grpc(g, target, timeout).await;
    }
    Ok(())
}

/// The health service's answers (`grpc.health.v1.HealthCheckResponse.ServingStatus`).
const GRPC_STATUSES: [&str; 4] = ["UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN"];

/// The largest health answer read; a real one is a few bytes.
const GRPC_ANSWER_LIMIT: usize = 64 * 1024;

/// `grpc.health.v1.Health/Check` for `action.service` (default: the whole
/// server); only `SERVING` is a success.
async fn grpc(action: &GRPCAction, target: &Target, timeout: Duration) -> Result<(), String> {
    let port =
        u16::try_from(action.port).map_err(|_| format!("port {} out of range", action.port))?;
    let addr = SocketAddr::new(target.ip()?, port);
    let service = action.service.clone().unwrap_or_default();
    let call = async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("failed to connect service {addr}: {e}"))?;
        let (client, connection) = h2::client::handshake(tcp)
            .await
            .map_err(|e| format!("failed to connect service {addr}: {e}"))?;
        // The connection is driven beside the call and dropped with it.
        let driver = AbortOnDrop(tokio::spawn(async move {
            let _ = connection.await;
        }));
        let rpc_err = |e: h2::Error| format!("rpc error: code = Unavailable desc = {e}");
        let mut client = client.ready().await.map_err(rpc_err)?;
        let request = http::Request::post(format!("http://{addr}/grpc.health.v1.Health/Check"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("user-agent", "kube-probe/1.34")
            .body(())
            .map_err(|e| e.to_string())?;
        let (answer, mut send) = client.send_request(request, false).map_err(rpc_err)?;
        send.send_data(grpc_request(&service).into(), true)
            .map_err(rpc_err)?;
        let (head, mut body) = answer.await.map_err(rpc_err)?.into_parts();
        if head.status != http::StatusCode::OK {
            return Err(format!(
                "rpc error: code = Unknown desc = HTTP status {}",
                head.status
            ));
        }
        let mut message = Vec::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.map_err(rpc_err)?;
            let _ = body.flow_control().release_capacity(chunk.len());
            message.extend_from_slice(&chunk);
            if message.len() > GRPC_ANSWER_LIMIT {
                return Err("rpc error: code = ResourceExhausted desc = answer too large".into());
            }
        }
        // A failed call may carry its status in the headers alone.
        let trailers = body.trailers().await.map_err(rpc_err)?;
        let field = |name: &str| {
            trailers
                .as_ref()
                .and_then(|t| t.get(name))
                .or_else(|| head.headers.get(name))
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        match field("grpc-status").as_deref() {
            Some("0") => {}
            Some(code) => {
                return Err(format!(
                    "rpc error: code = {code} desc = {}",
                    field("grpc-message").unwrap_or_default()
                ));
            }
            None => return Err("rpc error: code = Internal desc = no grpc-status".into()),
        }
        drop(driver);
        match grpc_serving_status(&message) {
            Some(1) => Ok(()),
            Some(n) => Err(format!(
                "service unhealthy (responded with {:?})",
                GRPC_STATUSES.get(n as usize).copied().unwrap_or("UNKNOWN")
            )),
            None => Err("rpc error: code = Internal desc = malformed health answer".into()),
        }
    };
    match tokio::time::timeout(timeout, call).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "timeout: health rpc did not complete within {}s",
            timeout.as_secs()
        )),
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A `HealthCheckRequest { service }` in gRPC's length-prefixed framing.
fn grpc_request(service: &str) -> Vec<u8> {
    let mut message = Vec::new();
    if !service.is_empty() {
        message.push(0x0a); // field 1, length-delimited
        put_varint(&mut message, service.len() as u64);
        message.extend_from_slice(service.as_bytes());
    }
    let mut framed = vec![0u8]; // not compressed
    framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
    framed.extend_from_slice(&message);
    framed
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn get_varint(b: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = b.split_first()?;
        *b = rest;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// `HealthCheckResponse.status` from one length-prefixed gRPC message
/// (absent field: 0, protobuf's default); `None` when malformed.
fn grpc_serving_status(framed: &[u8]) -> Option<u64> {
    let (head, rest) = framed.split_at_checked(5)?;
    if head[0] != 0 {
        return None; // compressed: we asked for nothing of the kind
    }
    let len = u32::from_be_bytes(head[1..5].try_into().ok()?) as usize;
    let mut b = rest.get(..len)?;
    let mut status = 0;
    while !b.is_empty() {
        let key = get_varint(&mut b)?;
        match key & 7 {
            0 => {
                let v = get_varint(&mut b)?;
                if key >> 3 == 1 {
                    status = v;
                }
            }
            1 => b = b.get(8..)?,
            2 => {
                let n = usize::try_from(get_varint(&mut b)?).ok()?;
                b = b.get(n..)?;
            }
            5 => b = b.get(4..)?,
            _ => return None,
        }
    }
    Some(status)
}

/// Runs a lifecycle hook (postStart or preStop), bounded by `limit`.
pub async fn run_hook(
    handler: &LifecycleHandler,
    container: &Container,
    target: &Target,
    limit: Duration,
) -> Result<(), String> {
    if let Some(s) = &handler.sleep {
        tokio::time::sleep(Duration::from_secs(s.seconds.max(0) as u64).min(limit)).await;
        return Ok(());
    }
    if let Some(e) = &handler.exec {
        return exec(e, target, limit).await;
    }
    if let Some(h) = &handler.http_get {
        return http(h, container, target, limit.min(Duration::from_secs(30))).await;
    }
    if let Some(t) = &handler.tcp_socket {
        return tcp(t, container, target, limit.min(Duration::from_secs(30))).await;
    }
    Ok(())
}

/// The command line as the kubelet quotes it in messages.
fn quoted(command: &[String]) -> String {
    format!("{:?}", command.join(" "))
}

/// Runs `action`'s command in the container; exit code 0 is a success. The
/// failure message is the command's output, as the kubelet's is (or the exit
/// code, when it printed nothing). `timeout` runs from the moment the command
/// is started, not from when the runtime was asked: exec helpers take turns,
/// and waiting for one's turn is not the command being slow.
async fn exec(action: &ExecAction, target: &Target, timeout: Duration) -> Result<(), String> {
    let command = action.command.clone().unwrap_or_default();
    if command.is_empty() {
        return Err("exec: no command given".into());
    }
    let runtime = target.runtime.clone();
    let id = target.container_id.clone();
    tokio::task::spawn_blocking(move || run_command(&*runtime, &id, &command, timeout))
        .await
        .map_err(|e| format!("exec task failed: {e}"))?
}

fn run_command(
    runtime: &dyn Runtime,
    id: &str,
    command: &[String],
    timeout: Duration,
) -> Result<(), String> {
    let spec = ExecSpec {
        command: command.to_vec(),
        ..ExecSpec::default()
    };
    let mut handle = runtime
        .exec(id, &spec)
        .map_err(|e| format!("command {} could not run: {e}", quoted(command)))?;
    let deadline = Instant::now() + timeout;
    let (exited, output) = collect(&mut handle, deadline);
    if !exited {
        // Dropping the handle kills the process group and reaps it.
        let _ = handle.process.signal(libc::SIGKILL);
        return Err(format!("command {} timed out", quoted(command)));
    }
    match handle.process.try_wait() {
        Ok(Some(0)) => Ok(()),
        Ok(Some(code)) => {
            let output = output.trim_end();
            Err(if output.is_empty() {
                format!("command {} exited with code {code}", quoted(command))
            } else {
                output.to_string()
            })
        }
        Ok(None) => Err(format!("command {}: exit status lost", quoted(command))),
        Err(e) => Err(format!("command {}: {e}", quoted(command))),
    }
}

/// Reads the process's stdout and stderr (the first [`EXEC_OUTPUT_LIMIT`]
/// bytes kept, interleaved as they come) until it exits or `deadline`
/// passes. Returns whether it exited, and the output.
fn collect(handle: &mut ExecHandle, deadline: Instant) -> (bool, String) {
    let mut pipes: Vec<OwnedFd> = std::iter::once(handle.stdout.try_clone().ok())
        .chain(std::iter::once(handle.stderr.take()))
        .flatten()
        .collect();
    let mut kept = Vec::new();
    let mut buf = [0u8; 4096];
    let mut exited_at: Option<Instant> = None;
    loop {
        let now = Instant::now();
        let until = match exited_at {
            Some(t) => t + EXEC_DRAIN,
            None => deadline,
        };
        if now >= until || (exited_at.is_some() && pipes.is_empty()) {
            break;
        }
        // Rounded up: a timeout that truncates to 0 ms would spin.
        let wait = PollTimeout::try_from(
            (until - now + Duration::from_millis(1)).min(Duration::from_secs(60)),
        )
        .unwrap_or(PollTimeout::ZERO);
        let (ready, exit_ready) = {
            let mut fds: Vec<PollFd> = pipes
                .iter()
                .map(|p| PollFd::new(p.as_fd(), PollFlags::POLLIN))
                .collect();
            if exited_at.is_none() {
                fds.push(PollFd::new(handle.process.exit_fd(), PollFlags::POLLIN));
            }
            match poll(&mut fds, wait) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => break,
            }
            let flags: Vec<bool> = fds
                .iter()
                .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
                .collect();
            let exit_ready = exited_at.is_none() && flags.last().copied().unwrap_or(false);
            let ready: Vec<bool> = flags.into_iter().take(pipes.len()).collect();
            (ready, exit_ready)
        };
        if exit_ready {
            exited_at = Some(Instant::now());
        }
        let mut closed = Vec::new();
        for (i, r) in ready.into_iter().enumerate() {
            if !r {
                continue;
            }
            match nix::unistd::read(&pipes[i], &mut buf) {
                Ok(0) | Err(_) => closed.push(i),
                Ok(n) => {
                    let room = EXEC_OUTPUT_LIMIT.saturating_sub(kept.len());
                    kept.extend_from_slice(&buf[..n.min(room)]);
                }
            }
        }
        for i in closed.into_iter().rev() {
            pipes.remove(i);
        }
    }
    (
        exited_at.is_some(),
        String::from_utf8_lossy(&kept).into_owned(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::fake::FakeRuntime;
    use crate::runtime::{ContainerConfig, PullPolicy};
    use k8s_openapi::api::core::v1::{ContainerPort, HTTPHeader};

    /// A target at loopback, with a running container in the fake runtime.
    fn target() -> Target {
        let runtime = Arc::new(FakeRuntime::new());
        runtime
            .ensure_image("busybox", PullPolicy::IfNotPresent, &[])
            .unwrap();
        runtime
            .run_container(&ContainerConfig {
                id: "p-c-0".into(),
                container_name: "c".into(),
                image: "busybox".into(),
                ..ContainerConfig::default()
            })
            .unwrap();
        Target {
            pod_ip: Some("127.0.0.1".parse().unwrap()),
            runtime,
            container_id: "p-c-0".into(),
        }
    }

    fn container() -> Container {
        Container {
            name: "c".into(),
            ports: Some(vec![ContainerPort {
                name: Some("http".into()),
                container_port: 0,
                ..Default::default()
            }]),
            ..Default::default()
        }
    }

    async fn server(status: u16) -> (u16, tokio::task::JoinHandle<String>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let h = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = vec![0u8; 1024];
            let n = s.read(&mut buf).await.unwrap();
            let _ = s
                .write_all(format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n").as_bytes())
                .await;
            String::from_utf8_lossy(&buf[..n]).into_owned()
        });
        (port, h)
    }

    fn http_probe(port: IntOrString) -> Probe {
        Probe {
            http_get: Some(HTTPGetAction {
                port,
                path: Some("/healthz".into()),
                http_headers: Some(vec![HTTPHeader {
                    name: "X-Probe".into(),
                    value: "yes".into(),
                }]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn http_probe_success_failure_and_named_ports() {
        let lo = target();
        let (port, req) = server(204).await;
        let mut c = container();
        c.ports.as_mut().unwrap()[0].container_port = i32::from(port);
        check(&http_probe(IntOrString::String("http".into())), &c, &lo)
            .await
            .unwrap();
        let sent = req.await.unwrap();
        assert!(
            sent.starts_with("GET /healthz HTTP/1.1\r\n") && sent.contains("X-Probe: yes"),
            "{sent}"
        );
        let (port, _) = server(503).await;
        let err = check(&http_probe(IntOrString::Int(i32::from(port))), &c, &lo)
            .await
            .unwrap_err();
        assert_eq!(err, "HTTP probe failed with statuscode: 503");
        let err = check(&http_probe(IntOrString::String("nope".into())), &c, &lo)
            .await
            .unwrap_err();
        assert!(err.contains("no port named"), "{err}");
    }

    /// An HTTPS server on loopback with a self-signed certificate for
    /// another name (as pods' certificates are), answering `status` once.
    async fn https_server(status: u16) -> (u16, tokio::task::JoinHandle<String>) {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let dir = tempfile::tempdir().unwrap();
        let (key, cert) = (dir.path().join("key.pem"), dir.path().join("cert.pem"));
        let out = std::process::Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"])
            .args(["-subj", "/CN=web.example"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .expect("openssl runs (scripts/deps installs it)");
        assert!(out.status.success(), "{out:?}");
        let certs = CertificateDer::pem_file_iter(&cert)
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(&key).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let h = tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            let mut s = acceptor.accept(s).await.unwrap();
            let mut buf = vec![0u8; 1024];
            let n = s.read(&mut buf).await.unwrap();
            s.write_all(format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n").as_bytes())
                .await
                .unwrap();
            let _ = s.shutdown().await;
            String::from_utf8_lossy(&buf[..n]).into_owned()
        });
        (port, h)
    }

    #[tokio::test]
    async fn https_probe_skips_certificate_checks_as_the_kubelet_does() {
        let lo = target();
        let c = container();
        let probe = |port: u16| Probe {
            http_get: Some(HTTPGetAction {
                port: IntOrString::Int(i32::from(port)),
                path: Some("/healthz".into()),
                scheme: Some("HTTPS".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(supported(&probe(443)));
        let (port, req) = https_server(200).await;
        check(&probe(port), &c, &lo).await.unwrap();
        assert!(req.await.unwrap().starts_with("GET /healthz HTTP/1.1\r\n"));
        let (port, _) = https_server(500).await;
        let err = check(&probe(port), &c, &lo).await.unwrap_err();
        assert_eq!(err, "HTTP probe failed with statuscode: 500");
        // A plain HTTP server behind an HTTPS probe: a failed handshake.
        let (port, _) = server(200).await;
        let err = check(&probe(port), &c, &lo).await.unwrap_err();
        assert!(
            err.starts_with(&format!("Get \"https://127.0.0.1:{port}/healthz\": ")),
            "{err}"
        );
    }

    /// A gRPC health server on loopback: every call is answered with
    /// `status` (`None`: a trailers-only UNIMPLEMENTED); the request bodies
    /// it received come back on the channel.
    async fn health_server(
        status: Option<u8>,
    ) -> (u16, tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let Ok(mut conn) = h2::server::handshake(s).await else {
                        return;
                    };
                    while let Some(Ok((req, mut respond))) = conn.accept().await {
                        assert_eq!(req.uri().path(), "/grpc.health.v1.Health/Check");
                        let mut body = req.into_body();
                        let mut got = Vec::new();
                        while let Some(Ok(c)) = body.data().await {
                            let _ = body.flow_control().release_capacity(c.len());
                            got.extend_from_slice(&c);
                        }
                        let _ = tx.send(got);
                        let head = http::Response::builder()
                            .status(200)
                            .header("content-type", "application/grpc");
                        let Some(status) = status else {
                            let head = head
                                .header("grpc-status", "12")
                                .header("grpc-message", "unknown service")
                                .body(())
                                .unwrap();
                            respond.send_response(head, true).unwrap();
                            continue;
                        };
                        let mut send = respond
                            .send_response(head.body(()).unwrap(), false)
                            .unwrap();
                        send.send_data(vec![0, 0, 0, 0, 2, 0x08, status].into(), false)
                            .unwrap();
                        let mut trailers = http::HeaderMap::new();
                        trailers.insert("grpc-status", "0".parse().unwrap());
                        send.send_trailers(trailers).unwrap();
                    }
                });
            }
        });
        (port, rx)
    }

    fn grpc_probe(port: u16, service: Option<&str>) -> Probe {
        Probe {
            grpc: Some(GRPCAction {
                port: i32::from(port),
                service: service.map(str::to_string),
            }),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn grpc_probe_asks_the_health_service() {
        let lo = target();
        let c = container();
        let (port, mut seen) = health_server(Some(1)).await;
        check(&grpc_probe(port, None), &c, &lo).await.unwrap();
        assert_eq!(seen.recv().await.unwrap(), [0, 0, 0, 0, 0]);
        check(&grpc_probe(port, Some("db")), &c, &lo).await.unwrap();
        assert_eq!(
            seen.recv().await.unwrap(),
            [0, 0, 0, 0, 4, 0x0a, 2, b'd', b'b']
        );

        let (port, _seen) = health_server(Some(2)).await;
        let err = check(&grpc_probe(port, None), &c, &lo).await.unwrap_err();
        assert_eq!(err, "service unhealthy (responded with \"NOT_SERVING\")");

        let (port, _seen) = health_server(None).await;
        let err = check(&grpc_probe(port, Some("x")), &c, &lo)
            .await
            .unwrap_err();
        assert_eq!(err, "rpc error: code = 12 desc = unknown service");

        // Not gRPC at all, and nothing listening: failures, never a hang.
        let (port, _) = server(200).await;
        assert!(check(&grpc_probe(port, None), &c, &lo).await.is_err());
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let err = check(&grpc_probe(closed, None), &c, &lo).await.unwrap_err();
        assert!(err.starts_with("failed to connect service"), "{err}");
    }

    #[test]
    fn grpc_health_answers_parse_or_are_refused() {
        assert_eq!(grpc_serving_status(&[0, 0, 0, 0, 2, 0x08, 1]), Some(1));
        // An empty message is the default status, UNKNOWN.
        assert_eq!(grpc_serving_status(&[0, 0, 0, 0, 0]), Some(0));
        // Unknown fields are skipped.
        assert_eq!(
            grpc_serving_status(&[0, 0, 0, 0, 6, 0x12, 2, b'h', b'i', 0x08, 2]),
            Some(2)
        );
        for bad in [
            &[][..],
            &[1, 0, 0, 0, 2, 0x08, 1],
            &[0, 0, 0, 0, 9, 0x08, 1],
            &[0, 0, 0, 0, 2, 0x08, 0x80],
            &[0, 0, 0, 0, 1, 0x0b],
        ] {
            assert_eq!(grpc_serving_status(bad), None, "{bad:?}");
        }
    }

    #[tokio::test]
    async fn tcp_probe_refused_is_a_failure() {
        let lo = target();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let p = Probe {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::Int(i32::from(port)),
                host: None,
            }),
            ..Default::default()
        };
        let err = check(&p, &container(), &lo).await.unwrap_err();
        assert!(err.contains("dial tcp"), "{err}");
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let p = Probe {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::Int(i32::from(l.local_addr().unwrap().port())),
                host: None,
            }),
            ..Default::default()
        };
        check(&p, &container(), &lo).await.unwrap();
    }

    fn exec_probe(command: &[&str]) -> Probe {
        Probe {
            exec: Some(ExecAction {
                command: Some(command.iter().map(|s| s.to_string()).collect()),
            }),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn exec_probe_runs_in_the_container_and_fails_when_it_cannot() {
        let t = target();
        assert!(supported(&exec_probe(&["cat", "/tmp/ready"])));
        assert!(!supported(&exec_probe(&[])));
        check(&exec_probe(&["cat", "/tmp/ready"]), &container(), &t)
            .await
            .unwrap();
        // The container's attempt is gone: a failure that names the command.
        t.runtime.kill_container("p-c-0", libc::SIGKILL).unwrap();
        let err = check(&exec_probe(&["cat", "/tmp/ready"]), &container(), &t)
            .await
            .unwrap_err();
        assert!(
            err.starts_with("command \"cat /tmp/ready\" could not run"),
            "{err}"
        );
        let hook = LifecycleHandler {
            exec: Some(ExecAction {
                command: Some(vec!["true".into()]),
            }),
            ..Default::default()
        };
        let err = run_hook(&hook, &container(), &t, Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(err.contains("could not run"), "{err}");
    }

    #[tokio::test]
    async fn network_handlers_need_the_pod_ip() {
        let mut t = target();
        t.pod_ip = None;
        let p = Probe {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::Int(80),
                host: None,
            }),
            ..Default::default()
        };
        let err = check(&p, &container(), &t).await.unwrap_err();
        assert_eq!(err, "the pod has no IP address yet");
    }
}
