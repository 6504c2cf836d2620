//! The MQTT client every role uses: rumqttc behind a small wrapper that
//! re-subscribes after every reconnect and hands incoming messages to one
//! channel, whichever protocol version ([`MqttVersion`]) and transport
//! (`mqtt://` or `mqtts://` with a CA file) the broker wants.
//!
//! Sessions are clean: the broker is not trusted to keep anything for us, so
//! after a reconnect we subscribe again and tell the owner ([`MqttEvent::Connected`])
//! so it can ask for what it may have missed.
//!
//! TLS is rustls 0.23 with aws-lc-rs, the same stack the image puller
//! (oci-client) uses: no second TLS library in the binary.
//!
//! Must not touch: the store, the runtime, the network; nothing here opens a
//! message (that is [`super::envelope`]).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::QoS as QoS5;
use rumqttc::{QoS, TlsConfiguration, Transport};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::TransportError;

/// Largest message we send or accept; a full assignment for a busy node fits.
pub const MAX_PACKET: usize = 4 * 1024 * 1024;

/// The MQTT protocol version a client speaks. 3.1.1 is the default: every
/// broker a home lab runs speaks it, and Bramble needs nothing only 5 has
/// (its own envelope carries ids, replies and signatures).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum MqttVersion {
    #[default]
    V311,
    V5,
}

impl std::str::FromStr for MqttVersion {
    type Err = String;
    fn from_str(s: &str) -> Result<MqttVersion, String> {
        match s.trim().trim_start_matches(['v', 'V']) {
            "3.1.1" | "311" | "4" => Ok(MqttVersion::V311),
            "5" | "5.0" => Ok(MqttVersion::V5),
            other => Err(format!(
                "MQTT version {other:?}: expected \"3.1.1\" or \"5\""
            )),
        }
    }
}

impl std::fmt::Display for MqttVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MqttVersion::V311 => "3.1.1",
            MqttVersion::V5 => "5",
        })
    }
}

impl Serialize for MqttVersion {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// `"3.1.1"` or `"5"`, and in a TOML file also the bare number `5` (or `4`,
/// 3.1.1's protocol level).
impl<'de> Deserialize<'de> for MqttVersion {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<MqttVersion, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = MqttVersion;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("\"3.1.1\" or \"5\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<MqttVersion, E> {
                v.parse().map_err(E::custom)
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<MqttVersion, E> {
                v.to_string().parse().map_err(E::custom)
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<MqttVersion, E> {
                v.to_string().parse().map_err(E::custom)
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<MqttVersion, E> {
                v.to_string().parse().map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// How a role reaches its broker: `--broker`, `--broker-ca` and
/// `--mqtt-version` (or the same keys in master.toml / worker.toml and the
/// CLI's config).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BrokerConfig {
    /// `mqtt[s]://[user:pass@]host[:port]`.
    pub url: String,
    /// PEM file of the CA(s) the broker's certificate must chain to
    /// (`mqtts://` only); without it, the system's trusted roots.
    pub ca_file: Option<PathBuf>,
    pub version: MqttVersion,
}

impl BrokerConfig {
    /// A plain broker at `url`, MQTT 3.1.1 (the embedded broker, tests).
    pub fn new(url: &str) -> BrokerConfig {
        BrokerConfig {
            url: url.to_string(),
            ..BrokerConfig::default()
        }
    }

    /// Checks the URL and reads the CA file, so a bad setting fails at start
    /// with its name rather than as a connection that never comes.
    pub fn check(&self) -> Result<BrokerUrl, TransportError> {
        let url = parse_url(&self.url)?;
        tls_config(&url, self.ca_file.as_deref())?;
        Ok(url)
    }

    /// The URL without its password, for logs and messages.
    pub fn display_url(&self) -> String {
        redact(&self.url)
    }
}

/// The longest wait between two connection attempts: a client finds a
/// broker back at most this long after it returns.
pub const MAX_RECONNECT_BACKOFF: Duration = Duration::from_secs(5);

#[derive(Clone, Debug)]
pub struct MqttOptions {
    /// `mqtt[s]://[user:pass@]host[:port]` (port 1883, or 8883 for mqtts).
    pub url: String,
    pub client_id: String,
    /// Topic and payload published (retained) by the broker if we vanish.
    pub last_will: Option<(String, Vec<u8>)>,
    pub keep_alive: Duration,
    /// Topic prefixes whose retained messages are dropped (and logged) rather
    /// than delivered: a command left retained on the broker must not run
    /// again at every (re)subscription.
    pub ignore_retained: Vec<String>,
    /// CA file for an `mqtts://` broker (default: the system's roots).
    pub ca_file: Option<PathBuf>,
    pub version: MqttVersion,
}

impl MqttOptions {
    pub fn new(url: &str, client_id: &str) -> MqttOptions {
        MqttOptions {
            url: url.to_string(),
            client_id: client_id.to_string(),
            last_will: None,
            keep_alive: Duration::from_secs(10),
            ignore_retained: Vec::new(),
            ca_file: None,
            version: MqttVersion::default(),
        }
    }

    /// Options for `broker` as a role was configured with it.
    pub fn for_broker(broker: &BrokerConfig, client_id: &str) -> MqttOptions {
        MqttOptions {
            ca_file: broker.ca_file.clone(),
            version: broker.version,
            ..MqttOptions::new(&broker.url, client_id)
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
    /// `mqtts://` (or `ssl://`).
    pub tls: bool,
}

/// Parses `mqtt://`, `tcp://` (port 1883 by default), `mqtts://` or
/// `ssl://` (TLS, port 8883 by default) URLs. User and password are
/// percent-decoded, as in any URL (`%40` for `@`, `%3A` for `:`).
pub fn parse_url(url: &str) -> Result<BrokerUrl, TransportError> {
    let bad = |reason: &str| TransportError::BadUrl {
        url: redact(url),
        reason: reason.to_string(),
    };
    let (rest, tls) = if let Some(r) = url.strip_prefix("mqtt://") {
        (r, false)
    } else if let Some(r) = url.strip_prefix("tcp://") {
        (r, false)
    } else if let Some(r) = url.strip_prefix("mqtts://") {
        (r, true)
    } else if let Some(r) = url.strip_prefix("ssl://") {
        (r, true)
    } else {
        return Err(bad("expected mqtt://host[:port] or mqtts://host[:port]"));
    };
    let rest = rest.trim_end_matches('/');
    let (auth, hostport) = match rest.rsplit_once('@') {
        Some((a, h)) => (Some(a), h),
        None => (None, rest),
    };
    let (username, password) = match auth {
        Some(a) => match a.split_once(':') {
            Some((u, p)) => (Some(percent_decode(u)), Some(percent_decode(p))),
            None => (Some(percent_decode(a)), None),
        },
        None => (None, None),
    };
    if username.as_deref() == Some("") {
        return Err(bad("empty user name before '@'"));
    }
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (
            h,
            p.parse::<u16>().map_err(|_| bad("port is not a number"))?,
        ),
        _ => (hostport, if tls { 8883 } else { 1883 }),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(bad("no host"));
    }
    if host.contains('/') {
        return Err(bad("a broker URL has no path"));
    }
    Ok(BrokerUrl {
        host: host.to_string(),
        port,
        username,
        password,
        tls,
    })
}

/// `url` with the password replaced by `***` (what logs and errors show).
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    match rest.rsplit_once('@') {
        Some((auth, hostport)) => match auth.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{hostport}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap_or_else(|_| s.to_string())
}

/// The rustls client config for a TLS broker: roots from `ca_file`, or the
/// system's. `None` for a plain broker.
fn tls_config(
    url: &BrokerUrl,
    ca_file: Option<&Path>,
) -> Result<Option<Arc<rustls::ClientConfig>>, TransportError> {
    if !url.tls {
        return match ca_file {
            Some(path) => Err(TransportError::CaFile {
                path: path.to_path_buf(),
                reason: "a CA file is for TLS brokers: the broker URL must be mqtts://".into(),
            }),
            None => Ok(None),
        };
    }
    let roots = match ca_file {
        Some(path) => load_ca_file(path)?,
        None => system_roots()?,
    };
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TransportError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Some(Arc::new(config)))
}

/// Every certificate in a PEM file (or one DER certificate), each of which
/// must parse.
fn load_ca_file(path: &Path) -> Result<rustls::RootCertStore, TransportError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let bad = |reason: String| TransportError::CaFile {
        path: path.to_path_buf(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    let mut certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<_, _>>()
        .map_err(|e| bad(format!("not a PEM file: {e}")))?;
    if certs.is_empty() && bytes.first() == Some(&0x30) {
        certs.push(CertificateDer::from(bytes));
    }
    if certs.is_empty() {
        return Err(bad(
            "no certificate in it (expected PEM: -----BEGIN CERTIFICATE-----)".into(),
        ));
    }
    let mut roots = rustls::RootCertStore::empty();
    for (i, cert) in certs.into_iter().enumerate() {
        roots
            .add(cert)
            .map_err(|e| bad(format!("certificate {}: {e}", i + 1)))?;
    }
    Ok(roots)
}

fn system_roots() -> Result<rustls::RootCertStore, TransportError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(found.certs);
    if roots.is_empty() {
        return Err(TransportError::Tls(
            "no trusted CA certificates on this system (install ca-certificates, or give --broker-ca FILE)"
                .into(),
        ));
    }
    Ok(roots)
}

/// A connected client. Cheap to clone.
#[derive(Clone)]
pub struct Mqtt {
    client: Client,
    subs: Arc<Mutex<Vec<String>>>,
}

/// The two rumqttc clients; their requests are the same, their types not.
#[derive(Clone)]
enum Client {
    V4(rumqttc::AsyncClient),
    V5(rumqttc::v5::AsyncClient),
}

enum EventLoop {
    V4(Box<rumqttc::EventLoop>),
    V5(Box<rumqttc::v5::EventLoop>),
}

/// What the loop needs from an event of either version.
enum Polled {
    Connected,
    SubAck,
    Publish {
        topic: String,
        payload: Bytes,
        retain: bool,
    },
    Disconnecting,
    Other,
    Failed(String),
}

impl EventLoop {
    async fn poll(&mut self) -> Polled {
        use rumqttc::Outgoing;
        match self {
            EventLoop::V4(l) => {
                use rumqttc::{Event, Packet};
                match l.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => Polled::Connected,
                    Ok(Event::Incoming(Packet::SubAck(_))) => Polled::SubAck,
                    Ok(Event::Incoming(Packet::Publish(p))) => Polled::Publish {
                        topic: p.topic,
                        payload: p.payload,
                        retain: p.retain,
                    },
                    Ok(Event::Outgoing(Outgoing::Disconnect)) => Polled::Disconnecting,
                    Ok(_) => Polled::Other,
                    Err(e) => Polled::Failed(describe_v4(&e)),
                }
            }
            EventLoop::V5(l) => {
                use rumqttc::v5::Event;
                use rumqttc::v5::mqttbytes::v5::Packet;
                match l.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => Polled::Connected,
                    Ok(Event::Incoming(Packet::SubAck(_))) => Polled::SubAck,
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        match String::from_utf8(p.topic.to_vec()) {
                            Ok(topic) => Polled::Publish {
                                topic,
                                payload: p.payload,
                                retain: p.retain,
                            },
                            Err(_) => {
                                tracing::warn!("dropped a message whose topic is not UTF-8");
                                Polled::Other
                            }
                        }
                    }
                    Ok(Event::Outgoing(Outgoing::Disconnect)) => Polled::Disconnecting,
                    Ok(_) => Polled::Other,
                    Err(e) => Polled::Failed(describe_v5(&e)),
                }
            }
        }
    }
}

fn describe_v4(e: &rumqttc::ConnectionError) -> String {
    use rumqttc::{ConnectReturnCode as C, ConnectionError as E};
    match e {
        E::ConnectionRefused(C::BadUserNamePassword) => {
            "the broker refused the user name or password".into()
        }
        E::ConnectionRefused(C::NotAuthorized) => {
            "the broker refused the connection: not authorized (wrong or missing user name and password?)".into()
        }
        E::ConnectionRefused(C::RefusedProtocolVersion) => {
            "the broker does not accept MQTT 3.1.1".into()
        }
        E::ConnectionRefused(code) => format!("the broker refused the connection ({code:?})"),
        E::Tls(t) => describe_tls(t),
        E::NotConnAck(p) => format!("the broker answered with {p:?} instead of CONNACK"),
        other => other.to_string(),
    }
}

fn describe_v5(e: &rumqttc::v5::ConnectionError) -> String {
    use rumqttc::v5::ConnectionError as E;
    use rumqttc::v5::mqttbytes::v5::ConnectReturnCode as C;
    match e {
        E::ConnectionRefused(C::BadUserNamePassword) => {
            "the broker refused the user name or password".into()
        }
        E::ConnectionRefused(C::NotAuthorized) => {
            "the broker refused the connection: not authorized (wrong or missing user name and password?)".into()
        }
        E::ConnectionRefused(C::UnsupportedProtocolVersion | C::RefusedProtocolVersion) => {
            "the broker does not accept MQTT 5 (try --mqtt-version 3.1.1)".into()
        }
        E::ConnectionRefused(code) => format!("the broker refused the connection ({code:?})"),
        E::Tls(t) => describe_tls(t),
        E::NotConnAck(p) => format!(
            "the broker answered with {p:?} instead of CONNACK (does it speak MQTT 5? try --mqtt-version 3.1.1)"
        ),
        other => other.to_string(),
    }
}

/// A TLS failure, saying what to check when it is the certificate.
fn describe_tls(e: &rumqttc::TlsError) -> String {
    if let rumqttc::TlsError::Io(io) = e
        && let Some(tls) = io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>())
    {
        return match tls {
            rustls::Error::InvalidCertificate(_) => format!(
                "TLS: {tls} (the broker's certificate must chain to the CA in --broker-ca, \
                 or to a system root without it, and name the URL's host)"
            ),
            other => format!("TLS: {other}"),
        };
    }
    format!("TLS: {e}")
}

impl Client {
    fn try_subscribe(&self, filter: String) -> Result<(), String> {
        match self {
            Client::V4(c) => c
                .try_subscribe(filter, QoS::AtLeastOnce)
                .map_err(|e| e.to_string()),
            Client::V5(c) => c
                .try_subscribe(filter, QoS5::AtLeastOnce)
                .map_err(|e| e.to_string()),
        }
    }
}

impl Mqtt {
    /// Starts the client. With `wait` set, returns only after the first
    /// successful connection (or fails with [`TransportError::Unreachable`]);
    /// without, it keeps retrying in the background, logging each new reason
    /// it cannot connect.
    pub async fn connect(
        opts: MqttOptions,
        wait: Option<Duration>,
    ) -> Result<(Mqtt, mpsc::Receiver<MqttEvent>), TransportError> {
        let url = parse_url(&opts.url)?;
        let tls = tls_config(&url, opts.ca_file.as_deref())?;
        let transport = match tls {
            Some(config) => Transport::Tls(TlsConfiguration::Rustls(config)),
            None => Transport::Tcp,
        };
        let (client, eventloop) = match opts.version {
            MqttVersion::V311 => {
                let mut o =
                    rumqttc::MqttOptions::new(opts.client_id.clone(), url.host.clone(), url.port);
                o.set_keep_alive(opts.keep_alive)
                    .set_clean_session(true)
                    .set_max_packet_size(MAX_PACKET, MAX_PACKET)
                    .set_transport(transport);
                if let (Some(u), p) = (&url.username, &url.password) {
                    o.set_credentials(u.clone(), p.clone().unwrap_or_default());
                }
                if let Some((topic, payload)) = &opts.last_will {
                    o.set_last_will(rumqttc::LastWill::new(
                        topic.clone(),
                        payload.clone(),
                        QoS::AtLeastOnce,
                        true,
                    ));
                }
                let (c, l) = rumqttc::AsyncClient::new(o, 256);
                (Client::V4(c), EventLoop::V4(Box::new(l)))
            }
            MqttVersion::V5 => {
                let mut o = rumqttc::v5::MqttOptions::new(
                    opts.client_id.clone(),
                    url.host.clone(),
                    url.port,
                );
                o.set_keep_alive(opts.keep_alive)
                    .set_clean_start(true)
                    // Also tells the broker not to send us anything larger.
                    .set_max_packet_size(Some(MAX_PACKET as u32))
                    .set_transport(transport);
                if let (Some(u), p) = (&url.username, &url.password) {
                    o.set_credentials(u.clone(), p.clone().unwrap_or_default());
                }
                if let Some((topic, payload)) = &opts.last_will {
                    o.set_last_will(rumqttc::v5::mqttbytes::v5::LastWill::new(
                        topic.clone(),
                        payload.clone(),
                        QoS5::AtLeastOnce,
                        true,
                        None,
                    ));
                }
                let (c, l) = rumqttc::v5::AsyncClient::new(o, 256);
                (Client::V5(c), EventLoop::V5(Box::new(l)))
            }
        };
        let subs: Arc<Mutex<Vec<String>>> = Arc::default();
        let (tx, rx) = mpsc::channel(1024);
        let (first_tx, first_rx) = tokio::sync::oneshot::channel::<Result<(), String>>();
        let loop_client = client.clone();
        let loop_subs = subs.clone();
        let waiting = wait.is_some();
        let ignore_retained = opts.ignore_retained.clone();
        let shown_url = redact(&opts.url);
        let version = opts.version;
        let mut eventloop = eventloop;
        tokio::spawn(async move {
            let mut first = Some(first_tx);
            let mut backoff = Duration::from_millis(200);
            // The last failure logged at warn: a broker that stays down is
            // one line, not one every 5 s.
            let mut last_failure: Option<String> = None;
            loop {
                match eventloop.poll().await {
                    Polled::Connected => {
                        backoff = Duration::from_millis(200);
                        if last_failure.take().is_some() {
                            tracing::info!(broker = %shown_url, "connected to the broker again");
                        }
                        let filters = loop_subs.lock().expect("subs lock").clone();
                        for f in filters {
                            if loop_client.try_subscribe(f).is_err() {
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
                    Polled::SubAck => {
                        if tx.send(MqttEvent::Subscribed).await.is_err() {
                            break;
                        }
                    }
                    Polled::Publish { topic, retain, .. }
                        if retain
                            && ignore_retained
                                .iter()
                                .any(|pre| topic.starts_with(pre.as_str())) =>
                    {
                        tracing::warn!(%topic, "dropped a retained message on a command topic");
                    }
                    Polled::Publish { topic, payload, .. } => {
                        if tx
                            .send(MqttEvent::Message { topic, payload })
                            .await
                            .is_err()
                        {
                            break;
                        }
                    }
                    Polled::Disconnecting => break,
                    Polled::Other => {}
                    Polled::Failed(reason) => {
                        if waiting && let Some(f) = first.take() {
                            let _ = f.send(Err(reason));
                            break;
                        }
                        if last_failure.as_deref() != Some(reason.as_str()) {
                            tracing::warn!(broker = %shown_url, mqtt = %version, %reason, "no connection to the broker; retrying");
                            last_failure = Some(reason);
                        } else {
                            tracing::debug!(broker = %shown_url, %reason, "still no connection to the broker");
                        }
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
                        url: redact(&opts.url),
                        reason,
                    });
                }
                Ok(Err(_)) | Err(_) => {
                    return Err(TransportError::Unreachable {
                        url: redact(&opts.url),
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
        match &self.client {
            Client::V4(c) => c
                .subscribe(filter, QoS::AtLeastOnce)
                .await
                .map_err(|e| e.to_string()),
            Client::V5(c) => c
                .subscribe(filter, QoS5::AtLeastOnce)
                .await
                .map_err(|e| e.to_string()),
        }
        .map_err(TransportError::Mqtt)
    }

    /// Stops a subscription (and its renewal after reconnects).
    pub async fn unsubscribe(&self, filter: &str) -> Result<(), TransportError> {
        self.subs.lock().expect("subs lock").retain(|f| f != filter);
        match &self.client {
            Client::V4(c) => c.unsubscribe(filter).await.map_err(|e| e.to_string()),
            Client::V5(c) => c.unsubscribe(filter).await.map_err(|e| e.to_string()),
        }
        .map_err(TransportError::Mqtt)
    }

    pub async fn publish(
        &self,
        topic: &str,
        payload: Vec<u8>,
        retain: bool,
    ) -> Result<(), TransportError> {
        check_size(topic, &payload)?;
        match &self.client {
            Client::V4(c) => c
                .publish(topic, QoS::AtLeastOnce, retain, payload)
                .await
                .map_err(|e| e.to_string()),
            Client::V5(c) => c
                .publish(topic, QoS5::AtLeastOnce, retain, payload)
                .await
                .map_err(|e| e.to_string()),
        }
        .map_err(TransportError::Mqtt)
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
        check_size(topic, &payload)?;
        match &self.client {
            Client::V4(c) => c
                .try_publish(topic, QoS::AtLeastOnce, retain, payload)
                .map_err(|e| e.to_string()),
            Client::V5(c) => c
                .try_publish(topic, QoS5::AtLeastOnce, retain, payload)
                .map_err(|e| e.to_string()),
        }
        .map_err(TransportError::Mqtt)
    }

    pub async fn disconnect(&self) {
        let _ = match &self.client {
            Client::V4(c) => c.disconnect().await.map_err(|e| e.to_string()),
            Client::V5(c) => c.disconnect().await.map_err(|e| e.to_string()),
        };
    }
}

/// rumqttc checks the size only for 3.1.1; one rule for both.
fn check_size(topic: &str, payload: &[u8]) -> Result<(), TransportError> {
    if payload.len() + topic.len() > MAX_PACKET {
        return Err(TransportError::Mqtt(format!(
            "a {} byte message on {topic} is over the {MAX_PACKET} byte limit",
            payload.len()
        )));
    }
    Ok(())
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
        assert_eq!((u.host.as_str(), u.port, u.tls), ("127.0.0.1", 1884, false));
        let u = parse_url("mqtt://bob:secret@pi.local").unwrap();
        assert_eq!(u.port, 1883);
        assert_eq!(u.username.as_deref(), Some("bob"));
        assert_eq!(u.password.as_deref(), Some("secret"));
        assert!(parse_url("http://x").is_err());
        assert!(parse_url("mqtt://x:notaport").is_err());
        assert!(parse_url("mqtt://x/path").is_err());
        assert!(parse_url("mqtt://:pw@x").is_err());
    }

    #[test]
    fn tls_urls_default_to_8883() {
        let u = parse_url("mqtts://broker.lan").unwrap();
        assert_eq!((u.host.as_str(), u.port, u.tls), ("broker.lan", 8883, true));
        let u = parse_url("ssl://10.0.0.1:8884/").unwrap();
        assert_eq!((u.host.as_str(), u.port, u.tls), ("10.0.0.1", 8884, true));
        let u = parse_url("mqtts://pi:p%40ss%3Aw@[fd00::1]:9883").unwrap();
        assert_eq!(u.host, "fd00::1");
        assert_eq!(u.port, 9883);
        assert_eq!(u.username.as_deref(), Some("pi"));
        assert_eq!(u.password.as_deref(), Some("p@ss:w"));
        // A password may hold '@' unencoded: the last one ends it.
        let u = parse_url("mqtts://pi:a@b@host").unwrap();
        assert_eq!(
            (u.password.as_deref(), u.host.as_str()),
            (Some("a@b"), "host")
        );
        // A lone '%' stays as it is.
        assert_eq!(
            parse_url("mqtt://u:100%@h").unwrap().password.as_deref(),
            Some("100%")
        );
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("mqtts://bob:secret@pi.local:8883"),
            "mqtts://bob:***@pi.local:8883"
        );
        assert_eq!(redact("mqtt://bob@pi.local"), "mqtt://bob@pi.local");
        assert_eq!(redact("mqtt://pi.local"), "mqtt://pi.local");
        let err = parse_url("mqtts://bob:secret@h:x").unwrap_err().to_string();
        assert!(!err.contains("secret") && err.contains("bob:***"), "{err}");
    }

    #[test]
    fn versions_parse_from_flags_and_files() {
        assert_eq!("3.1.1".parse::<MqttVersion>().unwrap(), MqttVersion::V311);
        assert_eq!("5".parse::<MqttVersion>().unwrap(), MqttVersion::V5);
        assert_eq!("v5".parse::<MqttVersion>().unwrap(), MqttVersion::V5);
        assert!("3.1".parse::<MqttVersion>().is_err());
        #[derive(Deserialize, Serialize)]
        struct F {
            v: MqttVersion,
        }
        for (text, want) in [
            ("v = 5", MqttVersion::V5),
            ("v = \"5\"", MqttVersion::V5),
            ("v = \"3.1.1\"", MqttVersion::V311),
            ("v = 4", MqttVersion::V311),
        ] {
            assert_eq!(toml::from_str::<F>(text).unwrap().v, want, "{text}");
        }
        let err = toml::from_str::<F>("v = 6").err().unwrap().to_string();
        assert!(err.contains("3.1.1"), "{err}");
        assert_eq!(
            toml::to_string(&F {
                v: MqttVersion::V311
            })
            .unwrap()
            .trim(),
            "v = \"3.1.1\""
        );
    }

    #[test]
    fn bad_ca_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let check = |url: &str, ca: &Path| {
            BrokerConfig {
                url: url.into(),
                ca_file: Some(ca.to_path_buf()),
                version: MqttVersion::V5,
            }
            .check()
            .unwrap_err()
            .to_string()
        };
        let missing = dir.path().join("missing.pem");
        let err = check("mqtts://h", &missing);
        assert!(
            err.contains("missing.pem") && err.contains("No such file"),
            "{err}"
        );

        let text = dir.path().join("text.pem");
        std::fs::write(&text, "hello, I am not a certificate\n").unwrap();
        let err = check("mqtts://h", &text);
        assert!(
            err.contains("text.pem") && err.contains("no certificate"),
            "{err}"
        );

        let broken = dir.path().join("broken.pem");
        std::fs::write(
            &broken,
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let err = check("mqtts://h", &broken);
        assert!(err.contains("broken.pem"), "{err}");

        // A CA file with a plain broker is a mistake, not something to ignore.
        let err = check("mqtt://h", &text);
        assert!(
            err.contains("text.pem") && err.contains("mqtts://"),
            "{err}"
        );
    }
}
