//! The MQTT client against real brokers: the embedded one (plain, both
//! versions on one port) and Debian's Mosquitto over TLS with a password
//! file. The same checks run on both, in both protocol versions and across
//! them: round trip of a large message, retained messages (and the dropping
//! of retained commands), the Last Will of a client that dies. Then what
//! must fail does, saying why: the wrong CA, the wrong password, none.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use bramble::transport::{Mqtt, MqttEvent, MqttOptions, MqttVersion, TransportError};
use common::mosquitto::{self, Mosquitto};
use tokio::runtime::Runtime;
use tokio::sync::mpsc::Receiver;

const WAIT: Duration = Duration::from_secs(10);

/// How to reach one broker.
#[derive(Clone)]
struct Target {
    url: String,
    ca: Option<PathBuf>,
}

impl Target {
    fn opts(&self, id: &str, version: MqttVersion) -> MqttOptions {
        MqttOptions {
            ca_file: self.ca.clone(),
            version,
            ..MqttOptions::new(&self.url, id)
        }
    }
}

/// A client in a runtime of its own: shutting that runtime down drops the
/// connection without a DISCONNECT, as a crash would, so the broker
/// publishes the Last Will.
struct Doomed {
    rt: Option<Runtime>,
    mqtt: Mqtt,
}

impl Doomed {
    fn connect(opts: MqttOptions) -> Doomed {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let (mqtt, mut events) = rt.block_on(Mqtt::connect(opts, Some(WAIT))).unwrap();
        rt.spawn(async move { while events.recv().await.is_some() {} });
        Doomed { rt: Some(rt), mqtt }
    }

    /// Publishes from the client's own runtime.
    async fn publish(&self, topic: &str, payload: &[u8], retain: bool) {
        let (mqtt, topic, payload) = (self.mqtt.clone(), topic.to_string(), payload.to_vec());
        let sent = self
            .rt
            .as_ref()
            .unwrap()
            .spawn(async move { mqtt.publish(&topic, payload, retain).await });
        sent.await.unwrap().unwrap();
    }

    fn crash(mut self) {
        self.rt.take().unwrap().shutdown_background();
    }
}

async fn next_event(rx: &mut Receiver<MqttEvent>, what: &str) -> MqttEvent {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .unwrap_or_else(|_| panic!("{what} within {WAIT:?}"))
        .expect("client running")
}

async fn next_message(rx: &mut Receiver<MqttEvent>, what: &str) -> (String, Vec<u8>) {
    loop {
        if let MqttEvent::Message { topic, payload } = next_event(rx, what).await {
            return (topic, payload.to_vec());
        }
    }
}

async fn subscribe(mqtt: &Mqtt, rx: &mut Receiver<MqttEvent>, filter: &str) {
    mqtt.subscribe(filter).await.unwrap();
    while !matches!(next_event(rx, "SUBACK").await, MqttEvent::Subscribed) {}
}

/// Client `a` (speaking `va`) publishes and dies; clients speaking `vb`
/// watch.
fn conformance(target: &Target, va: MqttVersion, vb: MqttVersion) {
    let p = format!("t{:08x}", rand::random::<u32>());
    let rt = Runtime::new().unwrap();
    let mut a_opts = target.opts(&format!("{p}-a"), va);
    a_opts.last_will = Some((format!("{p}/online"), b"false".to_vec()));
    a_opts.keep_alive = Duration::from_secs(5);
    let a = Doomed::connect(a_opts);

    rt.block_on(async {
        let (b, mut brx) = Mqtt::connect(target.opts(&format!("{p}-b"), vb), Some(WAIT))
            .await
            .unwrap();
        subscribe(&b, &mut brx, &format!("{p}/#")).await;

        // Live, then retained for a later subscriber. b having it means the
        // broker holds it.
        a.publish(&format!("{p}/retained"), b"kept", true).await;
        a.publish(&format!("{p}/cmd/x"), b"run me once", true).await;
        assert_eq!(
            next_message(&mut brx, "live").await,
            (format!("{p}/retained"), b"kept".to_vec())
        );
        assert_eq!(next_message(&mut brx, "live").await.0, format!("{p}/cmd/x"));
        let mut late = target.opts(&format!("{p}-c"), vb);
        late.ignore_retained = vec![format!("{p}/cmd/")];
        let (c, mut crx) = Mqtt::connect(late, Some(WAIT)).await.unwrap();
        subscribe(&c, &mut crx, &format!("{p}/#")).await;
        assert_eq!(
            next_message(&mut crx, "retained").await,
            (format!("{p}/retained"), b"kept".to_vec())
        );

        // Large, and after the retained ones: the retained command was dropped.
        let big: Vec<u8> = (0..300_000u32).map(|i| i as u8).collect();
        a.publish(&format!("{p}/big"), &big, false).await;
        assert_eq!(
            next_message(&mut brx, "big").await,
            (format!("{p}/big"), big.clone())
        );
        assert_eq!(
            next_message(&mut crx, "big").await,
            (format!("{p}/big"), big),
            "the retained command was not delivered"
        );

        a.crash();
        assert_eq!(
            next_message(&mut brx, "the Last Will").await,
            (format!("{p}/online"), b"false".to_vec())
        );
        b.disconnect().await;
        c.disconnect().await;
    });
}

fn connect_error(target: &Target, version: MqttVersion) -> String {
    let rt = Runtime::new().unwrap();
    match rt.block_on(Mqtt::connect(target.opts("refused", version), Some(WAIT))) {
        Ok(_) => panic!("{} connected", target.url),
        Err(e @ TransportError::Unreachable { .. }) => {
            eprintln!("{version}: {e}");
            e.to_string()
        }
        Err(e) => panic!("not a connection error: {e}"),
    }
}

#[test]
fn embedded_broker_both_versions() {
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let broker = bramble::transport::broker::start(addr).unwrap();
    let target = Target {
        url: format!("mqtt://{}", broker.listen),
        ca: None,
    };
    for (a, b) in [
        (MqttVersion::V311, MqttVersion::V5),
        (MqttVersion::V5, MqttVersion::V311),
    ] {
        conformance(&target, a, b);
    }
}

#[test]
fn mosquitto_over_tls_with_a_password() {
    let dir = std::env::temp_dir().join(format!("bramble-brokers-{:08x}", rand::random::<u32>()));
    let m = Mosquitto::start(&dir, "127.0.0.1".parse().unwrap());
    let target = Target {
        url: m.url(),
        ca: Some(m.pki.ca.clone()),
    };
    for (a, b) in [
        (MqttVersion::V311, MqttVersion::V5),
        (MqttVersion::V5, MqttVersion::V311),
    ] {
        conformance(&target, a, b);
    }

    for v in [MqttVersion::V311, MqttVersion::V5] {
        // A certificate from a CA we were not told to trust.
        let wrong_ca = Target {
            ca: Some(m.pki.other_ca.clone()),
            ..target.clone()
        };
        let err = connect_error(&wrong_ca, v);
        assert!(
            err.contains("TLS") && err.contains("UnknownIssuer") && err.contains("--broker-ca"),
            "{v}: {err}"
        );
        assert!(!err.contains(mosquitto::PASSWORD_IN_URL), "{err}");

        let wrong_password = Target {
            url: m.url_as(mosquitto::USER, "nope"),
            ..target.clone()
        };
        let err = connect_error(&wrong_password, v);
        assert!(
            err.contains("refused") && err.contains("password") && !err.contains("nope"),
            "{v}: {err}"
        );

        let anonymous = Target {
            url: format!("mqtts://{}:{}", m.ip, m.port),
            ..target.clone()
        };
        let err = connect_error(&anonymous, v);
        assert!(err.contains("refused"), "{v}: {err}");

        // Plain MQTT to a TLS port is no connection either.
        let plain = Target {
            url: format!("mqtt://{}:{}", m.ip, m.port),
            ca: None,
        };
        connect_error(&plain, v);
    }
}

/// Bad broker settings stop `bramble master` and `bramble worker` at once,
/// naming the file or flag, before anything is created.
#[test]
fn bad_broker_settings_are_refused_up_front() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data_arg = data.to_str().unwrap();
    let missing = dir.path().join("missing-ca.pem");
    let not_pem = dir.path().join("notes.txt");
    std::fs::write(&not_pem, "not a certificate\n").unwrap();
    let fails = |args: &[&str], wanted: &[&str]| {
        let out = std::process::Command::new(common::BIN)
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        for w in wanted {
            assert!(err.contains(w), "{args:?}: {w:?} not in: {err}");
        }
    };
    let worker = |broker: &str, ca: &std::path::Path| {
        vec![
            "worker".to_string(),
            "--join".into(),
            "BRAMBLE1.x.y".into(),
            "--broker".into(),
            broker.into(),
            "--broker-ca".into(),
            ca.display().to_string(),
            "--data-dir".into(),
            data_arg.into(),
        ]
    };
    let args = worker("mqtts://pi:pw@127.0.0.1:1", &missing);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    fails(&args, &[missing.to_str().unwrap()]);
    let args = worker("mqtts://127.0.0.1:1", &not_pem);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    fails(&args, &[not_pem.to_str().unwrap(), "no certificate"]);
    let args = worker("mqtt://127.0.0.1:1", &not_pem);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    fails(&args, &[not_pem.to_str().unwrap(), "mqtts://"]);
    fails(
        &[
            "master",
            "--data-dir",
            data_arg,
            "--broker-ca",
            not_pem.to_str().unwrap(),
        ],
        &["--broker-ca", "embedded broker"],
    );
    fails(
        &["master", "--data-dir", data_arg, "--mqtt-version", "6"],
        &["3.1.1"],
    );
    assert!(!data.exists(), "nothing was created");
}
