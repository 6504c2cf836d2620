//! Bad input loses nothing: a manifest with a YAML error, a wrong type, an
//! invalid name or a selector that does not match its template is refused
//! with an error naming the file and line (or field path), and nothing of a
//! multi-document apply is stored. Unsigned, badly signed, replayed or
//! malformed MQTT messages are dropped and logged; master and worker keep
//! running.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bramble::api::{ConfigMap, Object};
use bramble::transport::envelope::{self, Envelope, MASTER_ID};
use bramble::transport::messages::{
    ApplyRequest, Command, NodeFacts, NodeReport, Request, StreamKind, StreamMsg, StreamOpen,
};
use bramble::transport::{KeyPair, Mqtt, MqttEvent, MqttOptions, Sealer, Topics};
use common::{Cluster, ClusterOptions};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

fn apply_file(c: &Cluster, name: &str, text: &str) -> (bool, String) {
    let path = c.dir.join(name);
    std::fs::write(&path, text).unwrap();
    let out = c.bramble(&["apply", "-f", path.to_str().unwrap()]);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn configmaps(c: &Cluster) -> Vec<String> {
    c.json(&["get", "configmaps"])["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap().to_string())
        .collect()
}

const GOOD_CM: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: fine\ndata:\n  a: b\n";

#[test]
fn bad_manifests_are_refused_whole_with_file_and_line() {
    let c = Cluster::start(ClusterOptions {
        demo: false,
        broker: None,
    });

    // A YAML error in the third document: nothing of the first two is stored.
    let text = format!(
        "{GOOD_CM}---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: fine2\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: [broken\n"
    );
    let (ok, err) = apply_file(&c, "syntax.yaml", &text);
    assert!(!ok);
    assert!(err.contains("syntax.yaml:"), "{err}");
    assert!(configmaps(&c).is_empty(), "nothing stored");

    // A wrong type, named with its field path and line.
    let text = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  replicas: three\n  selector:\n    matchLabels: {app: web}\n  template:\n    metadata:\n      labels: {app: web}\n    spec:\n      containers:\n      - name: web\n        image: busybox\n";
    let (ok, err) = apply_file(&c, "type.yaml", text);
    assert!(!ok);
    assert!(
        err.contains("type.yaml:6") && err.contains("replicas"),
        "{err}"
    );

    // An invalid name in document 2 of 2: document 1 is not stored either.
    let text =
        format!("{GOOD_CM}---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: Not_A_Name\n");
    let (ok, err) = apply_file(&c, "name.yaml", &text);
    assert!(!ok);
    assert!(
        err.contains("name.yaml:") && err.contains("metadata.name"),
        "{err}"
    );
    assert!(configmaps(&c).is_empty(), "nothing stored");

    // A selector that does not match the template.
    let text = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  selector:\n    matchLabels: {app: web}\n  template:\n    metadata:\n      labels: {app: other}\n    spec:\n      containers:\n      - name: web\n        image: busybox\n";
    let (ok, err) = apply_file(&c, "selector.yaml", text);
    assert!(!ok);
    assert!(
        err.contains("selector.yaml:") && err.contains("selector"),
        "{err}"
    );
    assert!(c.ok(&["get", "deployments"]).is_empty());

    // Unknown and unimplemented fields warn, naming the field; the rest applies.
    let text = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: warned\n  labelz: {a: b}\ndata:\n  a: b\n";
    let (ok, err) = apply_file(&c, "warn.yaml", text);
    assert!(ok, "{err}");
    assert!(err.contains("labelz"), "warning names the field: {err}");

    // A server-side dry run checks everything and stores nothing.
    let path = c.dir.join("dry.yaml");
    std::fs::write(&path, GOOD_CM).unwrap();
    let out = c.ok(&["apply", "--dry-run=server", "-f", path.to_str().unwrap()]);
    assert!(
        out.contains("configmap/fine created (server dry run)"),
        "{out}"
    );
    assert_eq!(configmaps(&c), vec!["warned".to_string()]);

    // Refused by the master alone (the CLI cannot know a NodePort is taken):
    // document 1 is fine, document 2 wants the port another Service holds.
    // The error names the object and the field; document 1 is not stored.
    let port = common::free_node_port();
    let service = |name: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  type: NodePort\n  selector: {{app: x}}\n  ports:\n  - port: 80\n    nodePort: {port}\n"
        )
    };
    let (ok, err) = apply_file(&c, "holder.yaml", &service("holder"));
    assert!(ok, "{err}");
    let text = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: first-of-two\n---\n{}",
        service("second")
    );
    let (ok, err) = apply_file(&c, "taken.yaml", &text);
    assert!(!ok, "a taken nodePort is refused");
    assert!(
        err.contains("\"second\"")
            && err.contains("spec.ports[0].nodePort")
            && err.contains("already allocated"),
        "{err}"
    );
    assert_eq!(
        configmaps(&c),
        vec!["warned".to_string()],
        "document 1 not stored"
    );
    assert!(!c.bramble(&["get", "svc", "second"]).status.success());

    cli_forms(&c);
}

/// The CLI's forms of input and output: `apply -f DIR` (its .yaml, .yml and
/// .json files), `apply -f -` (stdin), a JSON manifest, `kind: List`,
/// `get -o yaml`, `cluster-info`.
fn cli_forms(c: &Cluster) {
    let dir = c.dir.join("manifests");
    std::fs::create_dir_all(&dir).unwrap();
    let cm_yaml = |name: &str, v: &str| {
        format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\ndata:\n  k: {v}\n")
    };
    std::fs::write(dir.join("a.yaml"), cm_yaml("from-dir-a", "yaml-dir")).unwrap();
    std::fs::write(dir.join("b.yml"), cm_yaml("from-dir-b", "yml-dir")).unwrap();
    std::fs::write(
        dir.join("c.json"),
        r#"{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "from-dir-c"}, "data": {"k": "json-dir"}}"#,
    )
    .unwrap();
    std::fs::write(dir.join("README.txt"), "not a manifest: skipped").unwrap();
    let out = c.ok(&["apply", "-f", dir.to_str().unwrap()]);
    for name in ["from-dir-a", "from-dir-b", "from-dir-c"] {
        assert!(out.contains(&format!("configmap/{name} created")), "{out}");
    }

    // A JSON file on its own, a List in it.
    let list = c.dir.join("list.json");
    std::fs::write(
        &list,
        r#"{"apiVersion": "v1", "kind": "List", "items": [
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "in-list-1"}, "data": {"k": "one"}},
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "in-list-2"}, "data": {"k": "two"}}
        ]}"#,
    )
    .unwrap();
    let out = c.ok(&["apply", "-f", list.to_str().unwrap()]);
    assert!(
        out.contains("configmap/in-list-1 created") && out.contains("configmap/in-list-2 created"),
        "{out}"
    );

    // Multi-document YAML on stdin.
    let mut child = std::process::Command::new(common::BIN)
        .args(["apply", "-f", "-"])
        .env("BRAMBLE_CONFIG", &c.config)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        write!(
            stdin,
            "{}---\n{}",
            cm_yaml("from-stdin-1", "s1"),
            cm_yaml("from-stdin-2", "s2")
        )
        .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("configmap/from-stdin-1 created")
            && stdout.contains("configmap/from-stdin-2 created"),
        "{stdout}"
    );

    let stored = configmaps(c);
    for (name, value) in [
        ("from-dir-a", "yaml-dir"),
        ("from-dir-b", "yml-dir"),
        ("from-dir-c", "json-dir"),
        ("in-list-1", "one"),
        ("in-list-2", "two"),
        ("from-stdin-1", "s1"),
        ("from-stdin-2", "s2"),
    ] {
        assert!(stored.contains(&name.to_string()), "{name} in {stored:?}");
        // `get -o yaml` is YAML of the object as stored.
        let yaml = c.ok(&["get", "configmap", name, "-o", "yaml"]);
        let v: serde_json::Value = serde_yaml_ng::from_str(&yaml).unwrap();
        assert_eq!(v["kind"], "ConfigMap", "{yaml}");
        assert_eq!(v["metadata"]["name"], name, "{yaml}");
        assert_eq!(v["metadata"]["namespace"], "default", "{yaml}");
        assert_eq!(v["data"]["k"], value, "{yaml}");
        assert!(
            v["metadata"]["uid"].as_str().is_some_and(|u| !u.is_empty()),
            "{yaml}"
        );
    }
    assert!(!stored.contains(&"README".to_string()));

    let info = c.ok(&["cluster-info"]);
    assert!(info.contains("Bramble master is running"), "{info}");
    assert!(info.contains(&c.broker), "names the broker: {info}");
    assert!(info.contains(&format!("Nodes: {}", c.node)), "{info}");
    assert!(info.contains(&c.net.cluster_cidr()), "{info}");
    assert!(info.contains(&c.net.service_cidr()), "{info}");
}

async fn raw_client(c: &Cluster) -> (Mqtt, tokio::sync::mpsc::Receiver<MqttEvent>) {
    Mqtt::connect(
        MqttOptions::new(&c.broker, &format!("forger-{}", rand::random::<u32>())),
        Some(Duration::from_secs(5)),
    )
    .await
    .unwrap()
}

fn admin_key(c: &Cluster) -> KeyPair {
    KeyPair::load(&c.layout().admin_key()).unwrap()
}

fn cm(name: &str) -> Object {
    Object::ConfigMap(ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("default".into()),
            ..Default::default()
        },
        ..Default::default()
    })
}

fn apply_command(reply_to: &str, name: &str) -> Command {
    Command {
        id: 1,
        reply_to: reply_to.into(),
        reply_as: "client:forger".into(),
        request: Request::Apply(ApplyRequest {
            objects: vec![cm(name)],
            dry_run: false,
        }),
    }
}

/// The `dropped message` lines of the agent's log whose topic is `topic`
/// and whose reason contains `reason`.
fn drops(log: &str, topic: &str, reason: &str) -> usize {
    strip_ansi(log)
        .lines()
        .filter(|l| {
            l.contains("dropped message")
                && l.contains(&format!("topic={topic} "))
                && l.contains(reason)
        })
        .count()
}

/// `text` without its terminal colour codes (`ESC [ ... m`).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(ch) = chars.next() {
        if ch == '\x1b' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(ch);
        }
    }
    out
}

/// `bytes`, a genuine envelope, with its signature taken off.
fn unsigned(bytes: &[u8]) -> Vec<u8> {
    let mut env: Envelope = ciborium::from_reader(bytes).unwrap();
    env.sig = Vec::new();
    let mut out = Vec::new();
    ciborium::into_writer(&env, &mut out).unwrap();
    out
}

/// Messages a raw subscriber received: topic and payload.
type Captured = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// Collects messages from a raw subscriber in the background.
fn collect(
    rt: &tokio::runtime::Handle,
    mut events: tokio::sync::mpsc::Receiver<MqttEvent>,
) -> Captured {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    rt.spawn(async move {
        while let Some(ev) = events.recv().await {
            if let MqttEvent::Message { topic, payload } = ev {
                sink.lock().unwrap().push((topic, payload.to_vec()));
            }
        }
    });
    seen
}

/// The first captured stream open on a worker's `/in` topic.
fn captured_open(seen: &Mutex<Vec<(String, Vec<u8>)>>) -> Option<(String, Vec<u8>, StreamOpen)> {
    seen.lock()
        .unwrap()
        .iter()
        .find_map(|(t, b)| match envelope::peek::<StreamMsg>(b) {
            Ok((from, StreamMsg::Open(open))) if from == MASTER_ID => {
                Some((t.clone(), b.clone(), open))
            }
            _ => None,
        })
}

fn demo_pod(c: &Cluster) -> String {
    c.wait_for("a demo pod Running", Duration::from_secs(90), || {
        !c.running_ready("app=demo").is_empty()
    });
    c.running_ready("app=demo")[0]["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_replayed_messages_are_dropped() {
    let c = Cluster::start(ClusterOptions {
        demo: true,
        broker: None,
    });
    let topics = Topics::default();
    let (mqtt, events) = raw_client(&c).await;
    mqtt.subscribe(&topics.stream_in_filter(&c.node))
        .await
        .unwrap();
    let seen = collect(&tokio::runtime::Handle::current(), events);
    let cmd_topic = topics.cmd("apply");
    let reply_to = topics.reply("forger");

    // A genuine stream open to the worker, captured off the broker (`logs`
    // makes the master send one), for a replay below.
    let pod = tokio::task::block_in_place(|| demo_pod(&c));
    tokio::task::block_in_place(|| c.ok(&["logs", &pod]));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let (open_topic, open_bytes, _) = loop {
        if let Some(o) = captured_open(&seen) {
            break o;
        }
        assert!(std::time::Instant::now() < deadline, "no stream open seen");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    // To the master. Garbage, and an envelope from a key it does not know.
    mqtt.publish(&cmd_topic, b"\xff\xfe not cbor".to_vec(), false)
        .await
        .unwrap();
    let stranger = Sealer::new(KeyPair::generate(), "admin:stranger");
    mqtt.publish(
        &cmd_topic,
        stranger.seal(&cmd_topic, MASTER_ID, &apply_command(&reply_to, "forged")),
        false,
    )
    .await
    .unwrap();
    // The admin's id with another key: a bad signature.
    let admin = admin_key(&c);
    let admin_id = envelope::admin_id(&admin.public());
    let impostor = Sealer::new(KeyPair::generate(), admin_id.clone());
    mqtt.publish(
        &cmd_topic,
        impostor.seal(&cmd_topic, MASTER_ID, &apply_command(&reply_to, "impostor")),
        false,
    )
    .await
    .unwrap();
    // A genuine command moved to another topic breaks its signature.
    let genuine = Sealer::new(admin.clone(), admin_id.clone());
    let moved = genuine.seal(&cmd_topic, MASTER_ID, &apply_command(&reply_to, "moved"));
    mqtt.publish(&topics.cmd("get"), moved, false)
        .await
        .unwrap();
    // A well-formed envelope from the admin's id with no signature at all.
    let delete_topic = topics.cmd("delete");
    let bare = unsigned(&genuine.seal(
        &delete_topic,
        MASTER_ID,
        &apply_command(&reply_to, "unsigned"),
    ));
    mqtt.publish(&delete_topic, bare, false).await.unwrap();

    // A genuine command, captured and replayed after its effect was undone.
    let captured = genuine.seal(&cmd_topic, MASTER_ID, &apply_command(&reply_to, "replayed"));
    mqtt.publish(&cmd_topic, captured.clone(), false)
        .await
        .unwrap();
    tokio::task::block_in_place(|| {
        c.wait_for("the genuine command", Duration::from_secs(10), || {
            c.bramble(&["get", "cm", "replayed"]).status.success()
        });
        c.ok(&["delete", "cm", "replayed"]);
    });
    mqtt.publish(&cmd_topic, captured, false).await.unwrap();

    // A status report for the node, signed by a stranger and by the admin key
    // (which may not speak for a node).
    let status_topic = topics.status(&c.node);
    let report = NodeReport {
        node: c.node.clone(),
        assignment_generation: 0,
        services_generation: 0,
        info: NodeFacts::default(),
        pods: vec![],
        events: vec![],
        object_events: vec![],
        session: 0,
    };
    let as_node = Sealer::new(KeyPair::generate(), envelope::node_id(&c.node));
    mqtt.publish(
        &status_topic,
        as_node.seal(&status_topic, MASTER_ID, &report),
        false,
    )
    .await
    .unwrap();
    mqtt.publish(
        &status_topic,
        genuine.seal(&status_topic, MASTER_ID, &report),
        false,
    )
    .await
    .unwrap();

    // To the worker. An assignment from someone who is not the master, and
    // garbage on the same topic.
    let assign_topic = topics.assign(&c.node);
    let fake_master = Sealer::new(KeyPair::generate(), MASTER_ID);
    let assignment = bramble::transport::messages::Assignment {
        node: c.node.clone(),
        generation: u64::MAX,
        pod_cidr: "10.1.0.0/24".into(),
        pods: vec![],
        configmaps: vec![],
        secrets: vec![],
        sealed_secrets: None,
        clock_echo: None,
    };
    mqtt.publish(
        &assign_topic,
        fake_master.seal(&assign_topic, &envelope::node_id(&c.node), &assignment),
        false,
    )
    .await
    .unwrap();
    mqtt.publish(&assign_topic, b"\x00garbage".to_vec(), false)
        .await
        .unwrap();
    // An unsigned Service table claiming to be the master's.
    let services_topic = topics.services();
    let table = bramble::transport::messages::ServiceTable {
        generation: u64::MAX,
        ..Default::default()
    };
    mqtt.publish(
        &services_topic,
        unsigned(&fake_master.seal(&services_topic, envelope::TO_ANYONE, &table)),
        false,
    )
    .await
    .unwrap();
    // Garbage on a stream, and the captured stream open replayed.
    let garbage_stream = topics.stream_in(&c.node, "forged-stream");
    mqtt.publish(&garbage_stream, b"\xa1\x01".to_vec(), false)
        .await
        .unwrap();
    mqtt.publish(&open_topic, open_bytes, false).await.unwrap();

    // Every one of them is dropped and logged, each exactly once.
    let (cmd_get, status_topic) = (topics.cmd("get"), topics.status(&c.node));
    let stranger_reason = "\"admin:stranger\" is not trusted".to_string();
    let admin_bad_sig = format!("bad signature from \"{admin_id}\"");
    let node_id = envelope::node_id(&c.node);
    let node_bad_sig = format!("bad signature from \"{node_id}\"");
    let admin_for_node = format!("{admin_id} reporting for node {}", c.node);
    let expected: Vec<(&str, &str, &str)> = vec![
        ("master: garbage", &cmd_topic, "not a Bramble envelope"),
        ("master: unknown key", &cmd_topic, &stranger_reason),
        ("master: impostor key", &cmd_topic, &admin_bad_sig),
        ("master: moved topic", &cmd_get, &admin_bad_sig),
        ("master: unsigned", &delete_topic, &admin_bad_sig),
        ("master: replayed", &cmd_topic, "replayed message"),
        (
            "master: node report, stranger's key",
            &status_topic,
            &node_bad_sig,
        ),
        (
            "master: node report, admin's key",
            &status_topic,
            &admin_for_node,
        ),
        (
            "worker: fake master",
            &assign_topic,
            "bad signature from \"master\"",
        ),
        (
            "worker: garbage assignment",
            &assign_topic,
            "not a Bramble envelope",
        ),
        (
            "worker: unsigned table",
            &services_topic,
            "bad signature from \"master\"",
        ),
        (
            "worker: garbage on a stream",
            &garbage_stream,
            "not a Bramble envelope",
        ),
        ("worker: replayed open", &open_topic, "replayed message"),
    ];
    let counts = |log: &str| -> Vec<usize> {
        expected
            .iter()
            .map(|(_, topic, reason)| drops(log, topic, reason))
            .collect()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let log = std::fs::read_to_string(&c.log).unwrap();
        let got = counts(&log);
        if got.iter().all(|n| *n >= 1) || std::time::Instant::now() > deadline {
            for ((what, topic, reason), n) in expected.iter().zip(&got) {
                assert_eq!(
                    *n,
                    1,
                    "{what}: {n} drops logged on {topic} for {reason:?}\n{}",
                    c.log_tail()
                );
            }
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        counts(&std::fs::read_to_string(&c.log).unwrap()),
        vec![1; expected.len()]
    );
    tokio::task::block_in_place(|| {
        for name in ["forged", "impostor", "moved", "unsigned", "replayed"] {
            assert!(
                !c.bramble(&["get", "cm", name]).status.success(),
                "{name} must not exist"
            );
        }
        // Master and worker kept running: a new pod is scheduled, started
        // and reported Running.
        let nodes = c.ok(&["get", "nodes"]);
        assert!(
            nodes.contains(&c.node) && nodes.contains("Ready"),
            "{nodes}"
        );
        let (ok, err) = apply_file(
            &c,
            "after.yaml",
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: after-forgeries\nspec:\n  containers:\n  - name: app\n    image: bramble.local/demo:v1\n    command: [sh, -c, sleep 3600]\n",
        );
        assert!(ok, "{err}");
        c.wait_for("the new pod Running", Duration::from_secs(60), || {
            c.json(&["get", "pod", "after-forgeries"])["status"]["phase"] == "Running"
        });
    });
    drop(mqtt);
}

/// A command and an exec captured off the broker, replayed after the agent
/// restarted (Ctrl-C, then `bramble up` again): the master's and the
/// worker's memory of what they saw is gone, their redb files remember, so
/// neither runs again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_replayed_after_a_restart_are_dropped() {
    let mut c = Cluster::start(ClusterOptions {
        demo: true,
        broker: None,
    });
    let topics = Topics::default();
    let (mqtt, events) = raw_client(&c).await;
    mqtt.subscribe(&format!("{}/cmd/#", topics.prefix()))
        .await
        .unwrap();
    mqtt.subscribe(&topics.stream_in_filter(&c.node))
        .await
        .unwrap();
    let seen = collect(&tokio::runtime::Handle::current(), events);
    let cmd_topic = topics.cmd("apply");

    let pod = tokio::task::block_in_place(|| {
        let (ok, err) = apply_file(
            &c,
            "cm.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: applied-once\n",
        );
        assert!(ok, "{err}");
        let pod = demo_pod(&c);
        c.ok(&[
            "exec",
            &pod,
            "--",
            "sh",
            "-c",
            "echo ran >> /tmp/replay-mark",
        ]);
        pod
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let (cmd_bytes, (open_topic, open_bytes)) = loop {
        let cmd = seen
            .lock()
            .unwrap()
            .iter()
            .find(|(t, _)| *t == cmd_topic)
            .map(|(_, b)| b.clone());
        let open = captured_open(&seen).filter(|(_, _, o)| {
            matches!(&o.kind, StreamKind::Exec { command, .. } if command.iter().any(|a| a.contains("replay-mark")))
        });
        if let (Some(cmd), Some((t, b, _))) = (cmd, open) {
            break (cmd, (t, b));
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the apply and the exec were not seen on the broker"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    drop(mqtt);
    tokio::task::block_in_place(|| {
        c.ok(&["delete", "configmap", "applied-once"]);
        // Ctrl-C: a clean stop (exit status 0, pid file removed).
        c.stop_with(nix::sys::signal::Signal::SIGINT);
        c.restart();
    });

    // The restarted broker has no memory either: send both until the log
    // says they were dropped (each copy that arrives is a replay).
    let (mqtt, _events) = raw_client(&c).await;
    let log_has =
        |what: &str, topic: &str| drops(&std::fs::read_to_string(&c.log).unwrap(), topic, what) > 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !(log_has("seen before a restart", &cmd_topic)
        && log_has("replayed stream open", &open_topic))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "replays not reported as dropped\n{}",
            c.log_tail()
        );
        mqtt.publish(&cmd_topic, cmd_bytes.clone(), false)
            .await
            .unwrap();
        mqtt.publish(&open_topic, open_bytes.clone(), false)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::task::block_in_place(|| {
        assert!(
            !c.bramble(&["get", "configmap", "applied-once"])
                .status
                .success(),
            "the replayed apply recreated the ConfigMap\n{}",
            c.log_tail()
        );
        let mark = c.ok(&["exec", &pod, "--", "cat", "/tmp/replay-mark"]);
        assert_eq!(mark, "ran\n", "the replayed exec ran again");
    });
    drop(mqtt);
}

/// A crash-looping container does not fill the disk with logs: as the
/// kubelet, the agent keeps the current attempt's log and the one before
/// (what `logs --previous` shows), no more.
#[test]
fn a_crash_loop_keeps_two_attempts_of_logs() {
    let c = Cluster::start(ClusterOptions {
        demo: true,
        broker: None,
    });
    let (ok, err) = apply_file(
        &c,
        "crashloop.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: crashloop\nspec:\n  containers:\n  - name: app\n    image: bramble.local/demo:v1\n    command: [sh, -c, 'echo attempt $(cat /proc/sys/kernel/random/uuid); exit 1']\n",
    );
    assert!(ok, "{err}");
    let restarts = || {
        c.json(&["get", "pod", "crashloop"])["status"]["containerStatuses"][0]["restartCount"]
            .as_i64()
            .unwrap_or(0)
    };
    // Back-off 0, 10, 20 s: the fourth attempt starts about 30 s in.
    c.wait_for("restartCount 3", Duration::from_secs(120), || {
        restarts() >= 3
    });
    let uid = c.json(&["get", "pod", "crashloop"])["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_string();
    let dir = c
        .layout()
        .logs()
        .join(format!("default_crashloop_{uid}"))
        .join("app");
    let attempt_logs = || -> Vec<String> {
        let mut names: Vec<String> = common::entries(&dir)
            .iter()
            .filter_map(|p| p.file_name()?.to_str().map(String::from))
            .filter(|n| n.ends_with(".log"))
            .collect();
        names.sort();
        names
    };
    let logs = attempt_logs();
    assert!(
        !logs.is_empty() && logs.len() <= 2,
        "at most the current and the previous attempt: {logs:?}"
    );
    assert!(
        !logs.contains(&"0.log".to_string()),
        "the first attempt's log is gone after 3 restarts: {logs:?}"
    );
    // `logs --previous` still shows the attempt before the current one.
    let mut current = String::new();
    let mut previous = String::new();
    c.wait_for("both attempts' logs", Duration::from_secs(60), || {
        current = c.ok(&["logs", "crashloop"]);
        previous = c.ok(&["logs", "crashloop", "--previous"]);
        current.starts_with("attempt ") && previous.starts_with("attempt ")
    });
    assert_ne!(current, previous, "--previous shows the older attempt");
    assert!(attempt_logs().len() <= 2, "{:?}", attempt_logs());
}
