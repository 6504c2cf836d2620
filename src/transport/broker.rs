//! The embedded broker: rumqttd in its own threads, for `bramble up` and
//! `bramble master` without `--broker`.
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

/// Starts rumqttd listening (MQTT 3.1.1) on `listen` and waits until it accepts
/// connections.
pub fn start(listen: SocketAddr) -> Result<EmbeddedBroker, TransportError> {
    // rumqttd only logs a failed bind from its own thread; find out here, so a
    // port held by another program is an error rather than a broker we'd think
    // we had.
    drop(
        std::net::TcpListener::bind(listen)
            .map_err(|e| TransportError::Broker(format!("cannot listen on {listen}: {e}")))?,
    );
    let connections = ConnectionSettings {
        connection_timeout_ms: 10_000,
        max_payload_size: MAX_PACKET,
        max_inflight_count: 100,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    };
    let server = ServerSettings {
        name: "v4".to_string(),
        listen,
        tls: None,
        next_connection_delay_ms: 1,
        connections,
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
        v4: Some(HashMap::from([("1".to_string(), server)])),
        v5: None,
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
        .map_err(|e| TransportError::Broker(e.to_string()))?;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if TcpStream::connect_timeout(&listen, Duration::from_millis(200)).is_ok() {
            return Ok(EmbeddedBroker { listen });
        }
        if Instant::now() > deadline {
            return Err(TransportError::Broker(format!(
                "not listening on {listen} after 5 s (port taken?)"
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::client::{Mqtt, MqttEvent, MqttOptions};

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

    #[tokio::test]
    async fn publish_large_and_retained() {
        let addr = free_port();
        start(addr).unwrap();
        assert!(start(addr).is_err(), "second broker on a taken port");
        let url = format!("mqtt://{addr}");
        let mut will = MqttOptions::new(&url, "dying");
        will.last_will = Some(("t/online".into(), b"false".to_vec()));
        will.keep_alive = Duration::from_secs(5);
        let (dying, _drx) = Mqtt::connect(will, Some(Duration::from_secs(5)))
            .await
            .unwrap();
        dying
            .publish("t/retained", b"kept".to_vec(), true)
            .await
            .unwrap();

        let (sub, mut rx) =
            Mqtt::connect(MqttOptions::new(&url, "sub"), Some(Duration::from_secs(5)))
                .await
                .unwrap();
        sub.subscribe("t/#").await.unwrap();
        subscribed(&mut rx).await;
        assert_eq!(
            next_message(&mut rx).await,
            ("t/retained".into(), b"kept".to_vec())
        );
        dying.publish("t/x", vec![7; 100_000], false).await.unwrap();
        assert_eq!(
            next_message(&mut rx).await,
            ("t/x".into(), vec![7; 100_000])
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
