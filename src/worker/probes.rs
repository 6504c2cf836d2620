//! Probes and lifecycle hooks, as the node runs them: TCP connects and HTTP
//! GETs from the agent to the pod's address (the agent sits on the pod
//! bridge, as the kubelet sits on the node), and `sleep` hooks. The verdicts
//! go back into the pod state machine (`podsync`); nothing here decides what a
//! result means.
//!
//! `exec` and `grpc` handlers and HTTPS are not run yet: [`supported`] says
//! so, and such probes act as if absent (their fields warn when applied).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    Container, HTTPGetAction, LifecycleHandler, Probe, TCPSocketAction,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Whether Bramble runs this probe.
pub fn supported(p: &Probe) -> bool {
    p.tcp_socket.is_some()
        || p.http_get
            .as_ref()
            .is_some_and(|h| h.scheme.as_deref().unwrap_or("HTTP") == "HTTP")
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

fn host(h: Option<&String>, pod_ip: IpAddr) -> Result<IpAddr, String> {
    match h.filter(|h| !h.is_empty()) {
        None => Ok(pod_ip),
        Some(h) => h
            .parse()
            .map_err(|_| format!("host {h:?} is not an IP address")),
    }
}

async fn tcp(
    action: &TCPSocketAction,
    container: &Container,
    pod_ip: IpAddr,
    timeout: Duration,
) -> Result<(), String> {
    let addr = SocketAddr::new(
        host(action.host.as_ref(), pod_ip)?,
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
    pod_ip: IpAddr,
    timeout: Duration,
) -> Result<(), String> {
    let addr = SocketAddr::new(
        host(action.host.as_ref(), pod_ip)?,
        resolve_port(&action.port, container)?,
    );
    let path = action
        .path
        .clone()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "/".into());
    let url = format!("http://{addr}{path}");
    let request = async {
        let mut s = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("Get \"{url}\": dial tcp {addr}: {e}"))?;
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

/// Runs one probe against a container of a pod at `pod_ip`.
pub async fn check(probe: &Probe, container: &Container, pod_ip: IpAddr) -> Result<(), String> {
    let timeout = Duration::from_secs(probe.timeout_seconds.unwrap_or(1).max(1) as u64);
    if let Some(t) = &probe.tcp_socket {
        return tcp(t, container, pod_ip, timeout).await;
    }
    if let Some(h) = &probe.http_get {
        return http(h, container, pod_ip, timeout).await;
    }
    Ok(())
}

/// Runs a lifecycle hook (postStart or preStop), bounded by `limit`.
pub async fn run_hook(
    handler: &LifecycleHandler,
    container: &Container,
    pod_ip: IpAddr,
    limit: Duration,
) -> Result<(), String> {
    if let Some(s) = &handler.sleep {
        tokio::time::sleep(Duration::from_secs(s.seconds.max(0) as u64).min(limit)).await;
        return Ok(());
    }
    if let Some(h) = &handler.http_get {
        return http(h, container, pod_ip, limit.min(Duration::from_secs(30))).await;
    }
    if let Some(t) = &handler.tcp_socket {
        return tcp(t, container, pod_ip, limit.min(Duration::from_secs(30))).await;
    }
    // exec hooks need exec in containers: reported as not implemented when
    // applied, and skipped here.
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ContainerPort, HTTPHeader};

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
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let (port, req) = server(204).await;
        let mut c = container();
        c.ports.as_mut().unwrap()[0].container_port = i32::from(port);
        check(&http_probe(IntOrString::String("http".into())), &c, lo)
            .await
            .unwrap();
        let sent = req.await.unwrap();
        assert!(
            sent.starts_with("GET /healthz HTTP/1.1\r\n") && sent.contains("X-Probe: yes"),
            "{sent}"
        );
        let (port, _) = server(503).await;
        let err = check(&http_probe(IntOrString::Int(i32::from(port))), &c, lo)
            .await
            .unwrap_err();
        assert_eq!(err, "HTTP probe failed with statuscode: 503");
        let err = check(&http_probe(IntOrString::String("nope".into())), &c, lo)
            .await
            .unwrap_err();
        assert!(err.contains("no port named"), "{err}");
    }

    #[tokio::test]
    async fn tcp_probe_refused_is_a_failure() {
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
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
        let err = check(&p, &container(), lo).await.unwrap_err();
        assert!(err.contains("dial tcp"), "{err}");
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let p = Probe {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::Int(i32::from(l.local_addr().unwrap().port())),
                host: None,
            }),
            ..Default::default()
        };
        check(&p, &container(), lo).await.unwrap();
    }
}
