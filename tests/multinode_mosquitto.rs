//! A cluster on Debian's Mosquitto instead of the embedded broker, the way a
//! home lab that already runs one would set it up: TLS with the lab's own CA
//! (`--broker-ca`), a user and password in the URL, the master and one
//! worker on MQTT 5, the other worker on 3.1.1. Workers join, a Deployment
//! spreads and serves; then the broker is `kill -9`ed and started again on
//! the same port (its retained messages and sessions gone): every node
//! reconnects, the cluster converges, a new apply works, and no healthy pod
//! was restarted.

mod common;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::time::Duration;

use common::mosquitto::Mosquitto;
use common::multi::{LanBroker, TestCluster, TestClusterOptions};

const WEB: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 4
  selector:
    matchLabels:
      app: web
  template:
    metadata:
      labels:
        app: web
    spec:
      containers:
        - name: web
          image: bramble.local/demo:v1
          imagePullPolicy: Never
          ports:
            - name: http
              containerPort: 8080
---
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  type: NodePort
  selector:
    app: web
  ports:
    - name: http
      port: 80
      targetPort: http
      nodePort: 31081
"#;

const AFTER: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: after
spec:
  replicas: 2
  selector:
    matchLabels:
      app: after
  template:
    metadata:
      labels:
        app: after
    spec:
      containers:
        - name: web
          image: bramble.local/demo:v1
          imagePullPolicy: Never
"#;

fn apply(c: &TestCluster, name: &str, yaml: &str) {
    let path = c.dir.join(name);
    std::fs::write(&path, yaml).unwrap();
    c.ok(&["apply", "-f", path.to_str().unwrap()]);
}

fn spread(pods: &[serde_json::Value]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for p in pods {
        *out.entry(p["spec"]["nodeName"].as_str().unwrap_or("").to_string())
            .or_default() += 1;
    }
    out
}

/// Pod name → (container start time, restart count).
fn starts(c: &TestCluster) -> BTreeMap<String, (String, i64)> {
    c.running_ready("app=web")
        .iter()
        .map(|p| {
            let s = &p["status"]["containerStatuses"][0];
            (
                p["metadata"]["name"].as_str().unwrap().to_string(),
                (
                    s["state"]["running"]["startedAt"]
                        .as_str()
                        .unwrap_or("")
                        .to_string(),
                    s["restartCount"].as_i64().unwrap_or(-1),
                ),
            )
        })
        .collect()
}

/// Every worker's NodePort answers from a web pod.
fn serves(c: &TestCluster) -> bool {
    let names: Vec<String> = c
        .running_ready("app=web")
        .iter()
        .map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    c.workers.iter().all(|w| {
        common::http_get(&format!("{}:31081", w.ip))
            .is_some_and(|body| names.iter().any(|n| body.contains(n.as_str())))
    })
}

#[test]
fn cluster_on_mosquitto_over_tls_survives_a_broker_restart() {
    let broker_dir =
        std::env::temp_dir().join(format!("bramble-mosquitto-{:08x}", rand::random::<u32>()));
    // Declared before the cluster, so dropped after it: the nodes go first.
    let mosquitto: RefCell<Option<Mosquitto>> = RefCell::new(None);
    let ca = broker_dir.join("ca.pem").display().to_string();
    let c = TestCluster::start_with_broker(
        TestClusterOptions {
            workers: 2,
            master_args: vec![
                "--broker-ca".into(),
                ca.clone(),
                "--mqtt-version".into(),
                "5".into(),
            ],
            broker: None,
        },
        LanBroker {
            start: Box::new(|host| {
                let m = Mosquitto::start(&broker_dir, host.into());
                let url = m.url();
                *mosquitto.borrow_mut() = Some(m);
                url
            }),
            worker_args: Box::new(|i| {
                let mut args = vec!["--broker-ca".to_string(), ca.clone()];
                if i == 0 {
                    args.extend(["--mqtt-version".into(), "5".into()]);
                }
                args
            }),
        },
    );
    assert!(c.broker.starts_with("mqtts://pi:"), "{}", c.broker);

    // Both versions really are in use, and the password reached the broker
    // (it allows no anonymous client). Mosquitto logs MQTT 5 as p5 and 3.1.1
    // as p2.
    {
        let m = mosquitto.borrow();
        let log = m.as_ref().unwrap().log();
        for (client, level) in [
            ("bramble-node-w1", "p5"),
            ("bramble-node-w2", "p2"),
            ("bramble-master-", "p5"),
        ] {
            assert!(
                log.lines().any(|l| l.contains(&format!(" as {client}"))
                    && l.contains(&format!("({level},"))
                    && l.contains("u'pi'")),
                "{client} on {level} as pi:\n{log}"
            );
        }
    }

    apply(&c, "web.yaml", WEB);
    c.wait_for("4 web pods Running", Duration::from_secs(90), || {
        c.running_ready("app=web").len() == 4
    });
    assert_eq!(
        spread(&c.running_ready("app=web")),
        BTreeMap::from([("w1".into(), 2), ("w2".into(), 2)])
    );
    c.wait_for(
        "the NodePort on every worker",
        Duration::from_secs(30),
        || serves(&c),
    );
    let before = starts(&c);
    let reconnects = |c: &TestCluster| -> Vec<usize> {
        std::iter::once(&c.master)
            .chain(c.workers.iter())
            .map(|n| n.log().matches("connected to the broker again").count())
            .collect()
    };
    let reconnected = reconnects(&c);

    // The broker dies and comes back empty.
    mosquitto.borrow_mut().as_mut().unwrap().restart();
    c.wait_for(
        "every node back on the broker",
        Duration::from_secs(30),
        || {
            reconnects(&c)
                .iter()
                .zip(&reconnected)
                .all(|(now, then)| now > then)
        },
    );
    c.wait_for("both workers Ready", Duration::from_secs(30), || {
        ["w1", "w2"].iter().all(|n| c.node_ready(n))
    });
    apply(&c, "after.yaml", AFTER);
    c.wait_for(
        "a Deployment applied after the restart Running",
        Duration::from_secs(60),
        || c.running_ready("app=after").len() == 2,
    );
    c.wait_for(
        "the NodePort still answering",
        Duration::from_secs(30),
        || serves(&c),
    );
    assert_eq!(starts(&c), before, "the same web pods, never restarted");
    assert!(["w1", "w2"].iter().all(|n| c.node_ready(n)));
}
