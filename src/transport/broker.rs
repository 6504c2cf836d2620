//! The embedded broker: rumqttd in its own threads, for `bramble up` and
//! `bramble master` without `--broker`.
//!
//! rumqttd serves MQTT 3.1.1 and MQTT 5 on separate listeners; a small front
//! on the one public port reads each connection's CONNECT far enough to see
//! its protocol level and splices the connection to the matching listener on
//! loopback, so clients of either version share one port (and one router:
//! a 3.1.1 client and a 5 client see each other's messages).
//!
//! Plain TCP only: a cluster that wants TLS runs an external broker
//! (Mosquitto) and gives `--broker mqtts://…`.
//!
//! rumqttd keeps retained messages and the Last Will in memory only; nothing
//! in Bramble depends on them surviving a restart.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};

use super::TransportError;
use super::client::MAX_PACKET;

/// A running embedded broker. It lives until the process exits: rumqttd has no
/// stop call, and the agent's shutdown is the process's.
pub struct EmbeddedBroker {
    pub listen: SocketAddr,
}

/// Starts rumqttd and its front on `listen` (port 0 picks one) and waits
/// until both versions accept connections.
pub fn start(listen: SocketAddr) -> Result<EmbeddedBroker, TransportError> {
    let broker_err = |what: String| TransportError::Broker(what);
    // Bound here, so a port held by another program is an error rather than
    // a broker we'd think we had.
    let front = std::net::TcpListener::bind(listen)
        .map_err(|e| broker_err(format!("cannot listen on {listen}: {e}")))?;
    let listen = front
        .local_addr()
        .map_err(|e| broker_err(format!("{listen}: {e}")))?;
    front
        .set_nonblocking(true)
        .map_err(|e| broker_err(format!("{listen}: {e}")))?;
    let v4 = free_loopback_port()?;
    let v5 = free_loopback_port()?;
    let connections = ConnectionSettings {
        connection_timeout_ms: 10_000,
        max_payload_size: MAX_PACKET,
        max_inflight_count: 100,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    };
    let server = |name: &str, listen| ServerSettings {
        name: name.to_string(),
        listen,
        tls: None,
        next_connection_delay_ms: 1,
        connections: connections.clone(),
    };
    let config = Config {
        id: 0,
        router: RouterConfig {
            max_connections: 1024,
            max_outgoing_packet_count: 200,
            // Segments are per topic filter and kept in memory: small ones keep
            // the broker's footprint in line with the rest of the agent.
            max_segment_size: MAX_PACKET + 64 * 1024,
            max_segment_count: 2,
            ..RouterConfig::default()
        },
        v4: Some(HashMap::from([("1".to_string(), server("v4", v4))])),
        v5: Some(HashMap::from([("1".to_string(), server("v5", v5))])),
        ws: None,
        cluster: None,
        console: None,
        bridge: None,
        prometheus: None,
        metrics: None,
    };
    let mut broker = Broker::new(config);
    std::thread::Builder::new()
        .name("broker".into())
        .spawn(move || {
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "embedded broker stopped");
            }
        })
        .map_err(|e| broker_err(e.to_string()))?;
    let deadline = Instant::now() + Duration::from_secs(5);
    for backend in [v4, v5] {
        while TcpStream::connect_timeout(&backend, Duration::from_millis(200)).is_err() {
            if Instant::now() > deadline {
                return Err(broker_err(format!(
                    "rumqttd not listening on {backend} after 5 s"
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    // The front's own runtime, as rumqttd's servers have theirs: the broker
    // does not depend on the agent's.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| broker_err(format!("front runtime: {e}")))?;
    std::thread::Builder::new()
        .name("broker-front".into())
        .spawn(move || rt.block_on(front_loop(front, v4, v5)))
        .map_err(|e| broker_err(e.to_string()))?;
    Ok(EmbeddedBroker { listen })
}

/// A loopback port free now, for a rumqttd listener (rumqttd binds by
/// address and cannot be handed a socket).
fn free_loopback_port() -> Result<SocketAddr, TransportError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| TransportError::Broker(format!("no free loopback port: {e}")))
}

async fn front_loop(front: std::net::TcpListener, v4: SocketAddr, v5: SocketAddr) {
    let listener = match tokio::net::TcpListener::from_std(front) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "embedded broker front");
            return;
        }
    };
    loop {
        match listener.accept().await {
            Ok((conn, peer)) => {
                tokio::spawn(async move {
                    if let Err(e) = splice(conn, v4, v5).await {
                        tracing::debug!(%peer, error = %e, "broker connection ended");
                    }
                });
            }
            // Out of file descriptors, most likely: wait rather than spin.
            Err(e) => {
                tracing::warn!(error = %e, "embedded broker cannot accept");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Most bytes read before the protocol level must be known: fixed header
/// (5), name length (2), the longest name ("MQIsdp", 6), the level (1).
const HEAD_MAX: usize = 14;

/// The protocol level of the CONNECT at the start of `head`: `Ok(None)` when
/// more bytes are needed, `Err(())` when it is not a CONNECT at all.
fn protocol_level(head: &[u8]) -> Result<Option<u8>, ()> {
    let Some(&first) = head.first() else {
        return Ok(None);
    };
    if first != 0x10 {
        return Err(());
    }
    // The remaining length: 1 to 4 bytes, high bit set on all but the last.
    let mut i = 1;
    loop {
        match head.get(i) {
            None => return Ok(None),
            Some(b) if b & 0x80 == 0 => break,
            Some(_) if i == 4 => return Err(()),
            Some(_) => i += 1,
        }
    }
    let name_at = i + 1;
    let (Some(&hi), Some(&lo)) = (head.get(name_at), head.get(name_at + 1)) else {
        return Ok(None);
    };
    let name_len = usize::from(u16::from_be_bytes([hi, lo]));
    if name_len > 6 {
        return Err(());
    }
    Ok(head.get(name_at + 2 + name_len).copied())
}

/// Reads the start of a connection's CONNECT, then joins it to the listener
/// of its version. Either side closing ends both: MQTT has no use for a
/// half-closed connection, and a client gone silent (a pulled cable) must not
/// hold its splice once rumqttd's keep-alive has dropped it.
async fn splice(
    mut conn: tokio::net::TcpStream,
    v4: SocketAddr,
    v5: SocketAddr,
) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    conn.set_nodelay(true)?;
    let mut head = Vec::with_capacity(HEAD_MAX);
    let read_head = async {
        loop {
            match protocol_level(&head) {
                Ok(Some(level)) => return Ok(Some(level)),
                Err(()) => return Ok(None),
                Ok(None) if head.len() >= HEAD_MAX => return Ok(None),
                Ok(None) => {}
            }
            let mut byte = [0u8; HEAD_MAX];
            let want = HEAD_MAX - head.len();
            let n = conn.read(&mut byte[..want]).await?;
            if n == 0 {
                return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof));
            }
            head.extend_from_slice(&byte[..n]);
        }
    };
    // As long as rumqttd gives a client to send its CONNECT.
    let level = tokio::time::timeout(Duration::from_secs(10), read_head)
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    // Anything but 5 goes to the 3.1.1 listener, which answers it properly
    // (a 3.1 client is refused there with the right return code).
    let backend = if level == Some(5) { v5 } else { v4 };
    let mut up = tokio::net::TcpStream::connect(backend).await?;
    up.set_nodelay(true)?;
    up.write_all(&head).await?;
    let (mut cr, mut cw) = conn.split();
    let (mut ur, mut uw) = up.split();
    tokio::select! {
        r = tokio::io::copy(&mut cr, &mut uw) => r.map(drop),
        r = tokio::io::copy(&mut ur, &mut cw) => r.map(drop),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::client::{Mqtt, MqttEvent, MqttOptions, MqttVersion};

    fn free_port() -> SocketAddr {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    }

    async fn next_message(rx: &mut tokio::sync::mpsc::Receiver<MqttEvent>) -> (String, Vec<u8>) {
        loop {
            let ev = tokio::time::timeout(Duration::from_secs(5), rx.recv())
                .await
                .expect("message within 5 s")
                .expect("channel open");
            if let MqttEvent::Message { topic, payload } = ev {
                return (topic, payload.to_vec());
            }
        }
    }

    async fn subscribed(rx: &mut tokio::sync::mpsc::Receiver<MqttEvent>) {
        loop {
            let ev = tokio::time::timeout(Duration::from_secs(5), rx.recv())
                .await
                .expect("suback within 5 s")
                .expect("channel open");
            if matches!(ev, MqttEvent::Subscribed) {
                return;
            }
        }
    }

    #[test]
    fn protocol_levels() {
        // CONNECT, remaining length 16, "MQTT", level.
        let v311 = [0x10, 16, 0, 4, b'M', b'Q', b'T', b'T', 4, 2];
        let v5 = [0x10, 0x90, 0x01, 0, 4, b'M', b'Q', b'T', b'T', 5];
        let v31 = [0x10, 20, 0, 6, b'M', b'Q', b'I', b's', b'd', b'p', 3];
        assert_eq!(protocol_level(&v311), Ok(Some(4)));
        assert_eq!(protocol_level(&v5), Ok(Some(5)));
        assert_eq!(protocol_level(&v31), Ok(Some(3)));
        for n in 0..9 {
            assert_eq!(protocol_level(&v5[..n]), Ok(None), "{n} bytes");
        }
        assert_eq!(protocol_level(b"GET / HTTP/1.1"), Err(()));
        assert_eq!(protocol_level(&[0x10, 0xff, 0xff, 0xff, 0xff, 1]), Err(()));
        assert_eq!(protocol_level(&[0x10, 10, 0, 200]), Err(()));
    }

    #[tokio::test]
    async fn both_versions_on_one_port() {
        let addr = free_port();
        start(addr).unwrap();
        assert!(start(addr).is_err(), "second broker on a taken port");
        let url = format!("mqtt://{addr}");
        let opts = |id: &str, version| MqttOptions {
            version,
            ..MqttOptions::new(&url, id)
        };
        let (v5, _rx5) = Mqtt::connect(opts("five", MqttVersion::V5), Some(Duration::from_secs(5)))
            .await
            .unwrap();
        v5.publish("t/retained", b"kept".to_vec(), true)
            .await
            .unwrap();

        let (sub, mut rx) =
            Mqtt::connect(opts("sub", MqttVersion::V311), Some(Duration::from_secs(5)))
                .await
                .unwrap();
        sub.subscribe("t/#").await.unwrap();
        subscribed(&mut rx).await;
        assert_eq!(
            next_message(&mut rx).await,
            ("t/retained".into(), b"kept".to_vec())
        );
        v5.publish("t/x", vec![7; 100_000], false).await.unwrap();
        assert_eq!(
            next_message(&mut rx).await,
            ("t/x".into(), vec![7; 100_000])
        );
        assert!(
            v5.publish("t/y", vec![0; MAX_PACKET], false).await.is_err(),
            "over the limit"
        );
    }

    #[tokio::test]
    async fn unreachable_broker_is_a_clear_error() {
        let addr = free_port();
        let err = Mqtt::connect(
            MqttOptions::new(&format!("mqtt://{addr}"), "c"),
            Some(Duration::from_secs(2)),
        )
        .await
        .err()
        .expect("no broker there");
        assert!(
            err.to_string().contains("no connection to the broker"),
            "{err}"
        );
    }
}
