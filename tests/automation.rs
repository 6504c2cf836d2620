//! Automation tools against a real `bramble up --demo`, with real clients:
//! Debian's `mosquitto_pub`/`mosquitto_sub` and a paho-mqtt Python script
//! (`tests/automation_paho.py`).
//!
//! - JSON commands on `bramble/v1/api/<verb>` with a scoped API token:
//!   scale, get, restart do what they say and answer on the reply topic;
//!   out-of-scope verbs and namespaces, malformed JSON, a replayed id and a
//!   revoked token are refused with an error there, and the master keeps
//!   going; a command left retained on the broker is not run again when the
//!   master resubscribes (run on Mosquitto, which outlives the master).
//! - Home Assistant discovery: the retained configs for the node and the
//!   opted-in Deployment follow HA's schema, the state topics carry the
//!   numbers, the number entity's command template scales the Deployment,
//!   and deleting it clears its entities.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use common::{Cluster, ClusterOptions, free_port};

const PREFIX: &str = "bramble/v1";

fn port_of(c: &Cluster) -> String {
    c.broker.rsplit(':').next().unwrap().to_string()
}

/// A `mosquitto_sub -v` child whose lines arrive on a channel; killed on drop.
struct Sub {
    child: Child,
    rx: mpsc::Receiver<(String, String)>,
}

impl Sub {
    fn start(port: &str, topic: &str) -> Sub {
        let mut child = Command::new("mosquitto_sub")
            .args(["-h", "127.0.0.1", "-p", port, "-q", "1", "-v", "-t", topic])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto_sub runs (apt-get install mosquitto-clients)");
        let out = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let (t, p) = line.split_once(' ').unwrap_or((line.as_str(), ""));
                if tx.send((t.to_string(), p.to_string())).is_err() {
                    break;
                }
            }
        });
        Sub { child, rx }
    }

    /// The next JSON message whose `id` is `id`.
    fn reply(&self, id: &str, c: &Cluster) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            let Ok((_, p)) = self.rx.recv_timeout(left) else {
                break;
            };
            if let Ok(v) = serde_json::from_str::<Value>(&p)
                && v["id"] == id
            {
                return v;
            }
        }
        panic!("no reply with id {id}\n{}", c.log_tail());
    }
}

impl Drop for Sub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn publish(port: &str, topic: &str, payload: &str, retain: bool) {
    let mut cmd = Command::new("mosquitto_pub");
    cmd.args([
        "-h",
        "127.0.0.1",
        "-p",
        port,
        "-q",
        "1",
        "-t",
        topic,
        "-m",
        payload,
    ]);
    if retain {
        cmd.arg("-r");
    }
    let out = cmd.output().expect("mosquitto_pub runs");
    assert!(
        out.status.success(),
        "mosquitto_pub: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Retained messages under `filter`, topic → payload.
fn retained(port: &str, filter: &str) -> BTreeMap<String, String> {
    let out = Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            port,
            "-v",
            "--retained-only",
            "-W",
            "3",
            "-t",
            filter,
        ])
        .output()
        .expect("mosquitto_sub runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(t, p)| (t.to_string(), p.to_string()))
        .collect()
}

/// Sends `{"verb", body + token + reply_to + id}` and waits for its reply.
fn call(c: &Cluster, sub: &Sub, reply_to: &str, verb: &str, mut body: Value, id: &str) -> Value {
    body["reply_to"] = json!(reply_to);
    body["id"] = json!(id);
    publish(
        &port_of(c),
        &format!("{PREFIX}/api/{verb}"),
        &body.to_string(),
        false,
    );
    sub.reply(id, c)
}

/// Publishes pings until the master answers one: the subscription is live.
fn wait_for_api(c: &Cluster, sub: &Sub, reply_to: &str, token: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    for i in 0.. {
        assert!(
            Instant::now() < deadline,
            "the master never answered\n{}",
            c.log_tail()
        );
        let id = format!("ping-{i}-{:x}", rand::random::<u32>());
        let body = json!({"token": token, "reply_to": reply_to, "id": id, "kind": "Deployment", "name": "demo"});
        publish(
            &port_of(c),
            &format!("{PREFIX}/api/get"),
            &body.to_string(),
            false,
        );
        let until = Instant::now() + Duration::from_secs(1);
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            match sub.rx.recv_timeout(left) {
                Ok((_, p)) if p.contains(&id) => return,
                Ok(_) => {}
                Err(_) => break,
            }
        }
    }
}

fn spec_replicas(c: &Cluster) -> i64 {
    c.json(&["get", "deployment", "demo"])["spec"]["replicas"]
        .as_i64()
        .unwrap()
}

struct Mosquitto(Child, std::path::PathBuf);

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        let _ = std::fs::remove_file(&self.1);
    }
}

fn mosquitto() -> (Mosquitto, u16) {
    let port = free_port();
    let conf = std::env::temp_dir().join(format!("bramble-automation-mosquitto-{port}.conf"));
    std::fs::write(
        &conf,
        format!("listener {port} 127.0.0.1\nallow_anonymous true\nmessage_size_limit 0\npersistence false\n"),
    )
    .unwrap();
    let child = Command::new("mosquitto")
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("mosquitto is installed (apt-get install mosquitto)");
    let guard = Mosquitto(child, conf);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "mosquitto did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    (guard, port)
}

#[test]
fn json_commands_from_mosquitto_clients_and_paho() {
    let (_mosquitto, port) = mosquitto();
    let mut c = Cluster::start(ClusterOptions {
        demo: true,
        broker: Some(format!("mqtt://127.0.0.1:{port}")),
    });
    let port = port.to_string();
    c.wait_for("2 demo pods ready", Duration::from_secs(120), || {
        c.running_ready("app=demo").len() == 2
    });

    // Tokens: created, listed without their secret.
    let token = c
        .ok(&[
            "token",
            "create",
            "--api",
            "--verbs",
            "scale,restart,get",
            "--namespace",
            "default",
            "--description",
            "automation test",
            "-q",
        ])
        .trim()
        .to_string();
    assert!(token.starts_with("bramble_"), "{token}");
    let id = token.split('_').nth(1).unwrap().to_string();
    let join = c
        .ok(&["token", "create", "--ttl", "1h", "-q"])
        .trim()
        .to_string();
    assert!(join.starts_with("BRAMBLE1."), "{join}");
    let list = c.ok(&["token", "list"]);
    assert!(list.starts_with("ID "), "{list}");
    assert!(
        list.contains(&id) && list.contains("scale,restart,get in default"),
        "{list}"
    );
    assert!(list.contains("automation test"), "{list}");
    assert!(
        !list.contains(&token) && !list.contains(join.rsplit('.').next().unwrap()),
        "secrets listed: {list}"
    );

    let reply_to = format!("{PREFIX}/reply/mq-{}", &id);
    let sub = Sub::start(&port, &reply_to);
    wait_for_api(&c, &sub, &reply_to, &token);

    // scale, with mosquitto_pub.
    let r = call(
        &c,
        &sub,
        &reply_to,
        "scale",
        json!({"token": token, "namespace": "default", "kind": "Deployment", "name": "demo", "replicas": 3}),
        "s1",
    );
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["result"]["replicas"], 3, "{r}");
    c.wait_for("3 demo pods ready", Duration::from_secs(120), || {
        c.running_ready("app=demo").len() == 3
    });
    // The same id again: a replay.
    let r = call(
        &c,
        &sub,
        &reply_to,
        "scale",
        json!({"token": token, "name": "demo", "replicas": 1}),
        "s1",
    );
    assert_eq!(
        (&r["ok"], &r["code"]),
        (&json!(false), &json!("conflict")),
        "{r}"
    );
    // Outside the scope: refused, nothing done.
    let r = call(
        &c,
        &sub,
        &reply_to,
        "delete",
        json!({"token": token, "name": "demo"}),
        "d1",
    );
    assert_eq!(r["code"], "forbidden", "{r}");
    let r = call(
        &c,
        &sub,
        &reply_to,
        "scale",
        json!({"token": token, "namespace": "kube-system", "name": "demo", "replicas": 0}),
        "s2",
    );
    assert_eq!(r["code"], "forbidden", "{r}");
    // Malformed JSON: an error on the reply topic, and the master goes on.
    publish(
        &port,
        &format!("{PREFIX}/api/scale"),
        &format!("{{\"reply_to\": \"{reply_to}\", \"id\": \"m1\", \"token\": "),
        false,
    );
    publish(
        &port,
        &format!("{PREFIX}/api/scale"),
        &format!("{{\"reply_to\": \"{reply_to}\", \"id\": \"m2\", \"token\": 7}}"),
        false,
    );
    let r = sub.reply("m2", &c);
    assert_eq!(r["code"], "bad_request", "{r}");
    assert_eq!(spec_replicas(&c), 3);

    // paho-mqtt: get, restart, and an out-of-scope verb.
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/automation_paho.py");
    let commands = json!([
        ["get", {"token": token, "kind": "deployment", "name": "demo"}],
        ["restart", {"token": token, "name": "demo"}],
        ["apply", {"token": token, "manifest": "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n"}],
    ]);
    let out = Command::new("/usr/bin/python3")
        .args([script, "127.0.0.1", &port, PREFIX, &commands.to_string()])
        .output()
        .expect("python3 runs (apt-get install python3-paho-mqtt)");
    assert!(
        out.status.success(),
        "paho script: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        c.log_tail()
    );
    let replies: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        replies[0]["result"]["object"]["spec"]["replicas"], 3,
        "{}",
        replies[0]
    );
    assert_eq!(replies[1]["ok"], true, "{}", replies[1]);
    assert_eq!(replies[2]["code"], "forbidden", "{}", replies[2]);
    let dep = c.json(&["get", "deployment", "demo"]);
    assert!(
        dep["spec"]["template"]["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"]
            .is_string(),
        "{dep}"
    );

    // A command left retained on the broker runs when it is sent (the
    // broker delivers it live), and not again when the master comes back and
    // subscribes.
    let retained_cmd =
        json!({"token": token, "reply_to": reply_to, "id": "r1", "name": "demo", "replicas": 1});
    publish(
        &port,
        &format!("{PREFIX}/api/scale"),
        &retained_cmd.to_string(),
        true,
    );
    assert_eq!(sub.reply("r1", &c)["ok"], true);
    c.ok(&["scale", "deployment/demo", "--replicas=2"]);
    c.stop();
    c.restart();
    wait_for_api(&c, &sub, &reply_to, &token);
    // Ordered after the retained delivery on the master's one loop.
    let r = call(
        &c,
        &sub,
        &reply_to,
        "get",
        json!({"token": token, "name": "demo"}),
        "after-restart",
    );
    assert_eq!(
        r["result"]["object"]["spec"]["replicas"], 2,
        "the retained command ran again: {r}"
    );
    let log = std::fs::read_to_string(&c.log).unwrap();
    assert!(
        log.contains("dropped a retained message on a command topic"),
        "{}",
        c.log_tail()
    );
    publish(&port, &format!("{PREFIX}/api/scale"), "", true);

    // Revoked: refused.
    assert!(c.ok(&["token", "revoke", &id]).contains("revoked"));
    let r = call(
        &c,
        &sub,
        &reply_to,
        "scale",
        json!({"token": token, "name": "demo", "replicas": 1}),
        "s3",
    );
    assert_eq!(r["code"], "forbidden", "{r}");
    assert!(r["error"].as_str().unwrap().contains("not known"), "{r}");
    assert_eq!(spec_replicas(&c), 2);
    assert!(!c.ok(&["token", "list"]).contains(&id));
}

#[test]
fn home_assistant_discovery() {
    let c = Cluster::start(ClusterOptions {
        demo: true,
        broker: None,
    });
    let port = port_of(&c);
    c.wait_for("2 demo pods ready", Duration::from_secs(120), || {
        c.running_ready("app=demo").len() == 2
    });
    c.ok(&[
        "label",
        "deployment",
        "demo",
        "bramble.io/home-assistant=true",
    ]);

    let node = c.node.clone();
    let mut configs = BTreeMap::new();
    c.wait_for("discovery configs", Duration::from_secs(30), || {
        configs = retained(&port, "homeassistant/#");
        configs.keys().any(|t| t.contains("/number/"))
            && configs
                .keys()
                .any(|t| t.contains(&format!("node_{node}_ready")))
    });
    let thermal = std::path::Path::new("/sys/class/thermal/thermal_zone0/temp").exists();
    let mut components = Vec::new();
    for (topic, payload) in &configs {
        let v: Value =
            serde_json::from_str(payload).unwrap_or_else(|e| panic!("{topic}: {e}: {payload}"));
        let parts: Vec<&str> = topic.split('/').collect();
        assert_eq!(
            (parts.len(), parts[0], parts[4]),
            (5, "homeassistant", "config"),
            "{topic}"
        );
        // HA's required keys per component, and what grouping needs.
        let required: &[&str] = match parts[1] {
            "sensor" | "binary_sensor" => &["state_topic"],
            "number" | "button" => &["command_topic"],
            other => panic!("unexpected component {other} in {topic}"),
        };
        for k in required
            .iter()
            .chain(&["unique_id", "name", "device", "availability"])
        {
            assert!(!v[*k].is_null(), "{topic}: no {k}");
        }
        components.push((parts[1].to_string(), parts[3].to_string(), v));
    }
    let find = |comp: &str, suffix: &str| -> Value {
        components
            .iter()
            .find(|(c, id, _)| c == comp && id.ends_with(suffix))
            .map(|(_, _, v)| v.clone())
            .unwrap_or_else(|| panic!("no {comp} *{suffix}: {:?}", configs.keys()))
    };
    let ready = find("binary_sensor", &format!("node_{node}_ready"));
    find("sensor", &format!("node_{node}_cpu"));
    find("sensor", &format!("node_{node}_memory"));
    assert_eq!(
        components
            .iter()
            .any(|(_, id, _)| id.ends_with("_temperature")),
        thermal,
        "a temperature sensor exactly when the node has a thermal zone"
    );
    assert!(
        ready["availability"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["topic"] == format!("{PREFIX}/node/{node}/online"))
    );
    find("sensor", "deploy_default_demo_replicas");
    find("button", "deploy_default_demo_restart");
    let number = find("number", "deploy_default_demo_scale");
    assert_eq!(number["command_topic"], format!("{PREFIX}/api/scale"));

    // State topics, with the JSON the templates read.
    let node_topic = ready["state_topic"].as_str().unwrap();
    let node_state: Value = serde_json::from_str(&retained(&port, node_topic)[node_topic]).unwrap();
    assert_eq!(node_state["ready"], "ON", "{node_state}");
    assert!(node_state["pods"].as_i64().unwrap() >= 2, "{node_state}");
    let deploy_topic = number["state_topic"].as_str().unwrap().to_string();
    let mut state = Value::Null;
    c.wait_for(
        "ready 2/2 in the state topic",
        Duration::from_secs(30),
        || {
            state = retained(&port, &deploy_topic)
                .get(&deploy_topic)
                .and_then(|p| serde_json::from_str(p).ok())
                .unwrap_or_default();
            state["ready"] == 2 && state["desired"] == 2
        },
    );

    // Dashboards' summaries: the cluster in one message, the latest Events
    // (the demo Deployment's scaling is among them).
    c.wait_for(
        "cluster and events summaries",
        Duration::from_secs(30),
        || {
            let state = retained(&port, &format!("{PREFIX}/state/#"));
            let json = |t: &str| -> Value {
                state
                    .get(&format!("{PREFIX}/state/{t}"))
                    .and_then(|p| serde_json::from_str(p).ok())
                    .unwrap_or_default()
            };
            let cluster = json("cluster");
            let events = json("events");
            cluster["nodes_ready"] == 1
                && cluster["pods_by_phase"]["Running"].as_i64() >= Some(2)
                && events.as_array().is_some_and(|e| {
                    e.iter().any(|e| {
                        e["object"] == "deployment/demo" && e["reason"] == "ScalingReplicaSet"
                    })
                })
        },
    );

    // Drive the number entity as Home Assistant does: its template, rendered.
    let command = number["command_template"]
        .as_str()
        .unwrap()
        .replace("{{ value | int }}", "1");
    publish(
        &port,
        number["command_topic"].as_str().unwrap(),
        &command,
        false,
    );
    c.wait_for(
        "the number entity scaled demo to 1",
        Duration::from_secs(30),
        || spec_replicas(&c) == 1,
    );
    c.wait_for(
        "desired 1 in the state topic",
        Duration::from_secs(30),
        || {
            retained(&port, &deploy_topic)
                .get(&deploy_topic)
                .and_then(|p| serde_json::from_str::<Value>(p).ok())
                .is_some_and(|s| s["desired"] == 1)
        },
    );

    // Deleted: its entities and state go.
    c.ok(&["delete", "deployment", "demo"]);
    c.wait_for("demo's entities cleared", Duration::from_secs(30), || {
        let now = retained(&port, "homeassistant/#");
        !now.keys().any(|t| t.contains("deploy_default_demo"))
            && now.keys().any(|t| t.contains("node_"))
            && !retained(&port, &format!("{PREFIX}/state/deployment/#")).contains_key(&deploy_topic)
    });
}
