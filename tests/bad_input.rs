//! Bad input loses nothing: a manifest with a YAML error, a wrong type, an
//! invalid name or a selector that does not match its template is refused
//! with an error naming the file and line (or field path), and nothing of a
//! multi-document apply is stored. Unsigned, badly signed, replayed or
//! malformed MQTT messages are dropped and logged; master and worker keep
//! running.

mod common;

use std::time::Duration;

use bramble::api::{ConfigMap, Object};
use bramble::transport::envelope::{self, MASTER_ID};
use bramble::transport::messages::{ApplyRequest, Command, NodeFacts, NodeReport, Request};
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_replayed_messages_are_dropped() {
    let c = Cluster::start(ClusterOptions {
        demo: false,
        broker: None,
    });
    let topics = Topics::default();
    let (mqtt, events) = raw_client(&c).await;
    let cmd_topic = topics.cmd("apply");
    let reply_to = topics.reply("forger");

    // Garbage, and an envelope from a key the master does not know.
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
    let impostor = Sealer::new(KeyPair::generate(), envelope::admin_id(&admin.public()));
    mqtt.publish(
        &cmd_topic,
        impostor.seal(&cmd_topic, MASTER_ID, &apply_command(&reply_to, "impostor")),
        false,
    )
    .await
    .unwrap();
    // A genuine command moved to another topic breaks its signature.
    let genuine = Sealer::new(admin.clone(), envelope::admin_id(&admin.public()));
    let moved = genuine.seal(&cmd_topic, MASTER_ID, &apply_command(&reply_to, "moved"));
    mqtt.publish(&topics.cmd("get"), moved, false)
        .await
        .unwrap();

    // A genuine command, captured and replayed after its effect was undone.
    let captured = genuine.seal(&cmd_topic, MASTER_ID, &apply_command(&reply_to, "replayed"));
    mqtt.publish(&cmd_topic, captured.clone(), false)
        .await
        .unwrap();
    c.wait_for("the genuine command", Duration::from_secs(10), || {
        c.bramble(&["get", "cm", "replayed"]).status.success()
    });
    c.ok(&["delete", "cm", "replayed"]);
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

    // An assignment to the worker from someone who is not the master.
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

    // Give them time to arrive, then check that none had an effect and that
    // everything still works.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for name in ["forged", "impostor", "moved", "replayed"] {
        assert!(
            !c.bramble(&["get", "cm", name]).status.success(),
            "{name} must not exist"
        );
    }
    let nodes = c.ok(&["get", "nodes"]);
    assert!(
        nodes.contains(&c.node) && nodes.contains("Ready"),
        "{nodes}"
    );
    let log = std::fs::read_to_string(&c.log).unwrap();
    assert!(log.contains("dropped message"), "drops are logged");
    assert!(
        log.matches("dropped message").count() >= 6,
        "{}",
        c.log_tail()
    );
    drop(events);
}
