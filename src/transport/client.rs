//! The MQTT client every role uses: rumqttc behind a small wrapper that
//! re-subscribes after every reconnect and hands incoming messages to one
//! channel.
//!
//! Sessions are clean: the broker is not trusted to keep anything for us, so
//! after a reconnect we subscribe again and tell the owner ([`MqttEvent::Connected`])
//! so it can ask for what it may have missed.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rumqttc::{AsyncClient, Event, LastWill, Packet, QoS};
use tokio::sync::mpsc;

use super::TransportError;

/// Largest message we send or accept; a full assignment for a busy node fits.
pub const MAX_PACKET: usize = 4 * 1024 * 1024;

/// The longest wait between two connection attempts: a client finds a
/// broker back at most this long after it returns.
pub const MAX_RECONNECT_BACKOFF: Duration = Duration::from_secs(5);

#[derive(Clone, Debug)]
pub struct MqttOptions {
    /// `mqtt://[user:pass@]host[:port]` (port 1883 by default).
    pub url: String,
    pub client_id: String,
    /// Topic and payload published (retained) by the broker if we vanish.
    pub last_will: Option<(String, Vec<u8>)>,
    pub keep_alive: Duration,
    /// Topic prefixes whose retained messages are dropped (and logged) rather
    /// than delivered: a command left retained on the broker must not run
    /// again at every (re)subscription.
    pub ignore_retained: Vec<String>,
}

impl MqttOptions {
    pub fn new(url: &str, client_id: &str) -> MqttOptions {
        MqttOptions {
            url: url.to_string(),
            client_id: client_id.to_string(),
            last_will: None,
            keep_alive: Duration::from_secs(10),
            ignore_retained: Vec::new(),
        }
    }
}

#[derive(Debug)]
pub enum MqttEvent {
    /// (Re)connected and re-subscribed.
    Connected,
    /// The broker acknowledged a subscription.
    Subscribed,
    Message {
        topic: String,
        payload: Bytes,
    },
}

/// A parsed broker URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokerUrl {
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<String>,
}

pub fn parse_url(url: &str) -> Result<BrokerUrl, TransportError> {
    let bad = |reason: &str| TransportError::BadUrl {
        url: url.to_string(),
        reason: reason.to_string(),
    };
    let rest = if let Some(r) = url.strip_prefix("mqtt://") {
        r
    } else if let Some(r) = url.strip_prefix("tcp://") {
        r
    } else if url.starts_with("mqtts://") || url.starts_with("ssl://") {
        return Err(bad("TLS brokers are not supported yet; use mqtt://"));
    } else {
        return Err(bad("expected mqtt://host[:port]"));
    };
    let rest = rest.trim_end_matches('/');
    let (auth, hostport) = match rest.rsplit_once('@') {
        Some((a, h)) => (Some(a), h),
        None => (None, rest),
    };
    let (username, password) = match auth {
        Some(a) => match a.split_once(':') {
            Some((u, p)) => (Some(u.to_string()), Some(p.to_string())),
            None => (Some(a.to_string()), None),
        },
        None => (None, None),
    };
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (
            h,
            p.parse::<u16>().map_err(|_| bad("port is not a number"))?,
        ),
        _ => (hostport, 1883),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(bad("no host"));
    }
    Ok(BrokerUrl {
        host: host.to_string(),
        port,
        username,
        password,
    })
}

/// A connected client. Cheap to clone.
#[derive(Clone)]
pub struct Mqtt {
    client: AsyncClient,
    subs: Arc<Mutex<Vec<String>>>,
}

impl Mqtt {
    /// Starts the client. With `wait` set, returns only after the first
    /// successful connection (or fails with [`TransportError::Unreachable`]);
    /// without, it keeps retrying in the background.
    pub async fn connect(
        opts: MqttOptions,
        wait: Option<Duration>,
    ) -> Result<(Mqtt, mpsc::Receiver<MqttEvent>), TransportError> {
        let url = parse_url(&opts.url)?;
        let mut o = rumqttc::MqttOptions::new(opts.client_id.clone(), url.host.clone(), url.port);
        o.set_keep_alive(opts.keep_alive)
            .set_clean_session(true)
            .set_max_packet_size(MAX_PACKET, MAX_PACKET);
        if let (Some(u), p) = (&url.username, &url.password) {
            o.set_credentials(u.clone(), p.clone().unwrap_or_default());
        }
        if let Some((topic, payload)) = &opts.last_will {
            o.set_last_will(LastWill::new(
                topic.clone(),
                payload.clone(),
                QoS::AtLeastOnce,
                true,
            ));
        }
        let (client, mut eventloop) = AsyncClient::new(o, 256);
        let subs: Arc<Mutex<Vec<String>>> = Arc::default();
        let (tx, rx) = mpsc::channel(1024);
        let (first_tx, first_rx) = tokio::sync::oneshot::channel::<Result<(), String>>();
        let loop_client = client.clone();
        let loop_subs = subs.clone();
        let waiting = wait.is_some();
        let ignore_retained = opts.ignore_retained.clone();
        tokio::spawn(async move {
            let mut first = Some(first_tx);
            let mut backoff = Duration::from_millis(200);
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        backoff = Duration::from_millis(200);
                        let filters = loop_subs.lock().expect("subs lock").clone();
                        for f in filters {
                            if loop_client.try_subscribe(f, QoS::AtLeastOnce).is_err() {
                                tracing::warn!("MQTT request queue full while re-subscribing");
                            }
                        }
                        if let Some(f) = first.take() {
                            let _ = f.send(Ok(()));
                        }
                        if tx.send(MqttEvent::Connected).await.is_err() {
                            break;
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if tx.send(MqttEvent::Subscribed).await.is_err() {
                            break;
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p)))
                        if p.retain
                            && ignore_retained
                                .iter()
                                .any(|pre| p.topic.starts_with(pre.as_str())) =>
                    {
                        tracing::warn!(topic = %p.topic, "dropped a retained message on a command topic");
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let ev = MqttEvent::Message {
                            topic: p.topic,
                            payload: p.payload,
                        };
                        if tx.send(ev).await.is_err() {
                            break;
                        }
                    }
                    Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => break,
                    Ok(_) => {}
                    Err(e) => {
                        if waiting && let Some(f) = first.take() {
                            let _ = f.send(Err(e.to_string()));
                            break;
                        }
                        tracing::debug!(error = %e, "MQTT connection lost; retrying");
                        if tx.is_closed() {
                            break;
                        }
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(MAX_RECONNECT_BACKOFF);
                    }
                }
            }
        });
        if let Some(limit) = wait {
            match tokio::time::timeout(limit, first_rx).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(reason))) => {
                    return Err(TransportError::Unreachable {
                        url: opts.url,
                        reason,
                    });
                }
                Ok(Err(_)) | Err(_) => {
                    return Err(TransportError::Unreachable {
                        url: opts.url,
                        reason: format!("no answer within {limit:?}"),
                    });
                }
            }
        }
        Ok((Mqtt { client, subs }, rx))
    }

    /// Subscribes now and again after every reconnect.
    pub async fn subscribe(&self, filter: &str) -> Result<(), TransportError> {
        self.subs
            .lock()
            .expect("subs lock")
            .push(filter.to_string());
        self.client
            .subscribe(filter, QoS::AtLeastOnce)
            .await
            .map_err(|e| TransportError::Mqtt(e.to_string()))
    }

    /// Stops a subscription (and its renewal after reconnects).
    pub async fn unsubscribe(&self, filter: &str) -> Result<(), TransportError> {
        self.subs.lock().expect("subs lock").retain(|f| f != filter);
        self.client
            .unsubscribe(filter)
            .await
            .map_err(|e| TransportError::Mqtt(e.to_string()))
    }

    pub async fn publish(
        &self,
        topic: &str,
        payload: Vec<u8>,
        retain: bool,
    ) -> Result<(), TransportError> {
        self.client
            .publish(topic, QoS::AtLeastOnce, retain, payload)
            .await
            .map_err(|e| TransportError::Mqtt(e.to_string()))
    }

    /// Like [`Mqtt::publish`], but never waits: while the broker is away,
    /// requests queue in the client (256 at most) and `publish` blocks once
    /// the queue is full. For messages that are state, sent again anyway
    /// (heartbeats), a full queue just drops this one.
    pub fn try_publish(
        &self,
        topic: &str,
        payload: Vec<u8>,
        retain: bool,
    ) -> Result<(), TransportError> {
        self.client
            .try_publish(topic, QoS::AtLeastOnce, retain, payload)
            .map_err(|e| TransportError::Mqtt(e.to_string()))
    }

    pub async fn disconnect(&self) {
        let _ = self.client.disconnect().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With the broker gone, the request queue fills; `try_publish` then
    /// fails at once instead of blocking its caller (the worker's loop).
    #[tokio::test]
    async fn try_publish_never_blocks_without_a_broker() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let (mqtt, _events) = Mqtt::connect(
            MqttOptions::new(&format!("mqtt://127.0.0.1:{port}"), "lonely"),
            None,
        )
        .await
        .unwrap();
        let outcomes: Vec<bool> = (0..400)
            .map(|_| mqtt.try_publish("t", vec![0; 8], false).is_ok())
            .collect();
        assert!(outcomes[0]);
        assert!(!outcomes[399], "the queue is bounded");
        // What the worker's loop used to do, and why it must not.
        let blocked = tokio::time::timeout(
            Duration::from_millis(200),
            mqtt.publish("t", vec![0; 8], false),
        )
        .await;
        assert!(blocked.is_err(), "publish waits for room in the queue");
    }

    #[test]
    fn urls() {
        let u = parse_url("mqtt://127.0.0.1:1884").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("127.0.0.1", 1884));
        let u = parse_url("mqtt://bob:secret@pi.local").unwrap();
        assert_eq!(u.port, 1883);
        assert_eq!(u.username.as_deref(), Some("bob"));
        assert_eq!(u.password.as_deref(), Some("secret"));
        assert!(parse_url("http://x").is_err());
        assert!(parse_url("mqtt://x:notaport").is_err());
        assert!(parse_url("mqtts://x").is_err());
    }
}
