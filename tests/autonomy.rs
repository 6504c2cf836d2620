//! A worker on its own (`common::multi::TestCluster`, real processes in their
//! own network namespaces):
//!
//! 1. Secrets travel sealed to their node: a raw subscriber on
//!    `node/+/assign` never sees a Secret's value, another node's key does
//!    not open it, the worker's redb does not hold it in clear, and the pod
//!    still gets it (env and volume).
//! 2. Edge autonomy across the worker's own restart: with the master (and
//!    its embedded broker) `kill -9`ed, the worker is `kill -9`ed and started
//!    again; from its own redb it keeps the healthy pod running, restarts the
//!    crashing one (which needs the Secret, so the stored seal must open),
//!    and routes the Service. The master back, the nodes are Ready and no
//!    healthy pod was restarted.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use bramble::transport::messages::Assignment;
use bramble::transport::{KeyPair, Mqtt, MqttEvent, MqttOptions, Topics, envelope, seal};
use common::multi::{TestCluster, TestClusterOptions};

fn manifests(value_b64: &str, starts: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Secret
metadata:
  name: db
data:
  password: {value_b64}
---
apiVersion: v1
kind: Pod
metadata:
  name: web
  labels:
    app: web
spec:
  nodeSelector:
    kubernetes.io/hostname: w1
  containers:
    - name: web
      image: bramble.local/demo:v1
      imagePullPolicy: Never
      ports:
        - name: http
          containerPort: 8080
      env:
        - name: DB_PASSWORD
          valueFrom:
            secretKeyRef:
              name: db
              key: password
      volumeMounts:
        - name: db
          mountPath: /etc/db
  volumes:
    - name: db
      secret:
        secretName: db
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
---
apiVersion: v1
kind: Pod
metadata:
  name: crasher
spec:
  nodeSelector:
    kubernetes.io/hostname: w1
  containers:
    - name: c
      image: bramble.local/demo:v1
      imagePullPolicy: Never
      command: ["sh", "-c", "echo \"start $DB_PASSWORD\" >> /starts/log; exit 1"]
      env:
        - name: DB_PASSWORD
          valueFrom:
            secretKeyRef:
              name: db
              key: password
      volumeMounts:
        - name: starts
          mountPath: /starts
  volumes:
    - name: starts
      hostPath:
        path: {starts}
        type: DirectoryOrCreate
"#
    )
}

/// A topic and its payload, as the eavesdropper got them.
type Message = (String, Vec<u8>);

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn container(p: &serde_json::Value) -> (String, String, i64) {
    let s = &p["status"]["containerStatuses"][0];
    (
        s["containerID"].as_str().unwrap_or("").to_string(),
        s["state"]["running"]["startedAt"]
            .as_str()
            .unwrap_or("")
            .to_string(),
        s["restartCount"].as_i64().unwrap_or(-1),
    )
}

fn starts(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// `curl` inside `node`'s network namespace; the body, if any.
fn curl_in(c: &TestCluster, node: &str, url: &str) -> String {
    let out = c.worker(node).run_in("curl", &["-s", "-m", "5", url]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn sealed_secrets_and_autonomy_across_a_worker_restart() {
    let mut c = TestCluster::start(TestClusterOptions {
        workers: 2,
        master_args: vec![],
        broker: None,
    });
    let value = format!("pw-{}-{:016x}", c.tag, rand::random::<u64>());
    let value_b64 = base64::engine::general_purpose::STANDARD.encode(&value);
    let starts_dir = c.dir.join("starts");
    let starts_log = starts_dir.join("log");

    // A raw client of the broker, subscribed to every node's assignment
    // before anything names the Secret.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let seen: Arc<Mutex<Vec<Message>>> = Arc::default();
    let (mqtt, mut events) = rt
        .block_on(Mqtt::connect(
            MqttOptions::new(&c.broker, "eavesdropper"),
            Some(Duration::from_secs(10)),
        ))
        .unwrap();
    let topics = Topics::default();
    rt.block_on(mqtt.subscribe(&topics.assign("+"))).unwrap();
    let sink = seen.clone();
    rt.spawn(async move {
        while let Some(ev) = events.recv().await {
            if let MqttEvent::Message { topic, payload } = ev {
                sink.lock().unwrap().push((topic, payload.to_vec()));
            }
        }
    });

    let path = c.dir.join("app.yaml");
    std::fs::write(&path, manifests(&value_b64, starts_dir.to_str().unwrap())).unwrap();
    c.ok(&["apply", "-f", path.to_str().unwrap()]);
    c.wait_for("web Running on w1", Duration::from_secs(60), || {
        c.running_ready("app=web").len() == 1
    });

    // The pod sees the value, in its env and its volume.
    let out = c.ok(&[
        "exec",
        "web",
        "--",
        "sh",
        "-c",
        "echo \"env=$DB_PASSWORD\"; echo \"file=$(cat /etc/db/password)\"",
    ]);
    assert!(out.contains(&format!("env={value}")), "{out}");
    assert!(out.contains(&format!("file={value}")), "{out}");

    // On the broker: w1's assignment carries the Secret sealed to w1, which
    // w1's key opens and w2's does not; no payload holds the value.
    let layout = |n: &str| bramble::config::Layout::new(&c.worker(n).data_dir).unwrap();
    let w1_key = KeyPair::load(&layout("w1").node_key()).unwrap();
    let w2_key = KeyPair::load(&layout("w2").node_key()).unwrap();
    let w1_topic = topics.assign("w1");
    c.wait_for(
        "a sealed assignment for w1 on the broker",
        Duration::from_secs(10),
        || {
            seen.lock().unwrap().iter().any(|(t, p)| {
                *t == w1_topic
                    && envelope::peek::<Assignment>(p)
                        .is_ok_and(|(_, a)| a.sealed_secrets.is_some())
            })
        },
    );
    let payloads = seen.lock().unwrap().clone();
    assert!(payloads.iter().any(|(t, _)| *t == topics.assign("w2")));
    for (topic, payload) in &payloads {
        assert!(
            !contains(payload, value.as_bytes()) && !contains(payload, value_b64.as_bytes()),
            "the Secret's value in clear on {topic}"
        );
        let (_, a) = envelope::peek::<Assignment>(payload).unwrap();
        assert!(a.secrets.is_empty(), "nothing decodes as clear secrets");
        if *topic != w1_topic || a.sealed_secrets.is_none() {
            continue;
        }
        let mut other = a.clone();
        assert!(
            seal::open_secrets(&mut other, &w2_key).is_err(),
            "w2's key opens w1's Secrets"
        );
        let mut mine = a;
        seal::open_secrets(&mut mine, &w1_key).unwrap();
        let data = mine.secrets[0].data.as_ref().unwrap();
        assert_eq!(data["password"].0, value.as_bytes());
    }
    rt.block_on(mqtt.disconnect());
    drop(rt);
    let worker_db = layout("w1").worker_db();
    let raw = std::fs::read(&worker_db).unwrap();
    assert!(
        !contains(&raw, value.as_bytes()) && !contains(&raw, value_b64.as_bytes()),
        "{} holds the Secret in clear",
        worker_db.display()
    );

    autonomy(&mut c, &value, &starts_log);
}

fn autonomy(c: &mut TestCluster, value: &str, starts_log: &std::path::Path) {
    let web = c.running_ready("app=web").remove(0);
    let web_before = container(&web);
    let web_ip = web["status"]["podIP"].as_str().unwrap().to_string();
    let svc = c.json(&["get", "svc", "web"]);
    let cluster_ip = svc["spec"]["clusterIP"].as_str().unwrap().to_string();
    let node_port = svc["spec"]["ports"][0]["nodePort"].as_i64().unwrap();
    c.wait_for(
        "the crasher restarted once",
        Duration::from_secs(60),
        || starts(starts_log).len() >= 2,
    );

    // The master and its broker gone; then the worker too, and back alone.
    c.master.kill9();
    let w1 = c.worker_mut("w1");
    w1.kill9();
    let pos = w1.args.iter().position(|a| a == "--join").unwrap();
    w1.args.drain(pos..pos + 2);
    w1.spawn();
    let before_restart = starts(starts_log).len();

    // From its own redb: the Service routes, by ClusterIP and NodePort, to
    // the pod that kept running.
    let w1_ip = c.worker("w1").ip;
    for url in [
        format!("http://{web_ip}:8080/"),
        format!("http://{cluster_ip}/"),
        format!("http://{w1_ip}:{node_port}/"),
    ] {
        c.wait_for(
            &format!("{url} answering inside w1 without the master"),
            Duration::from_secs(30),
            || curl_in(c, "w1", &url).contains("Hello from web"),
        );
    }
    // The crasher is restarted by the agent alone, with the Secret it opened
    // from its stored (sealed) assignment.
    c.wait_for(
        "the crasher restarted by the restarted agent",
        Duration::from_secs(60),
        || starts(starts_log).len() > before_restart,
    );
    let lines = starts(starts_log);
    assert!(
        lines.iter().all(|l| *l == format!("start {value}")),
        "{lines:?}"
    );

    // The master back: both sides reconcile, the healthy pod untouched.
    c.master.spawn();
    c.wait_for(
        "w1 and w2 Ready after the master's return",
        Duration::from_secs(60),
        || c.node_ready("w1") && c.node_ready("w2"),
    );
    // Statuses the master shows are fresh once they count the restarts made
    // without it.
    c.wait_for(
        "the master seeing the restarts made without it",
        Duration::from_secs(30),
        || {
            let crasher = c.json(&["get", "pod", "crasher"]);
            crasher["status"]["containerStatuses"][0]["restartCount"]
                .as_i64()
                .is_some_and(|n| n >= before_restart as i64)
        },
    );
    let web = c.running_ready("app=web");
    assert_eq!(web.len(), 1, "{web:?}");
    assert_eq!(container(&web[0]), web_before, "web was not restarted");
    assert!(curl_in(c, "w2", &format!("http://{cluster_ip}/")).contains("Hello from web"));
}
