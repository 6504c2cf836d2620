//! Many nodes on one machine (`common::multi::TestCluster`): each node a real
//! `bramble` process in its own network namespace on a test LAN, joined by
//! token through the master's broker. One cluster serves the phases in turn
//! (starting one costs more than any phase).

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::multi::{TestCluster, TestClusterOptions};

const WEB: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 6
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
      nodePort: 31080
"#;

/// A pod pinned to w2 that tolerates an unreachable node for 5 minutes, as
/// Kubernetes' default toleration does: it must ride out a partition.
const STEADY: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: steady
  labels:
    app: steady
spec:
  nodeSelector:
    kubernetes.io/hostname: w2
  tolerations:
    - key: node.kubernetes.io/unreachable
      operator: Exists
      effect: NoExecute
      tolerationSeconds: 300
  containers:
    - name: web
      image: bramble.local/demo:v1
      imagePullPolicy: Never
"#;

fn nodes_of(pods: &[serde_json::Value]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for p in pods {
        *out.entry(p["spec"]["nodeName"].as_str().unwrap_or("").to_string())
            .or_default() += 1;
    }
    out
}

fn apply(c: &TestCluster, name: &str, yaml: &str) {
    let path = c.dir.join(name);
    std::fs::write(&path, yaml).unwrap();
    c.ok(&["apply", "-f", path.to_str().unwrap()]);
}

#[test]
fn cluster_of_three_workers() {
    let mut c = TestCluster::start(TestClusterOptions {
        workers: 3,
        master_args: vec![
            "--node-grace-seconds".into(),
            "3".into(),
            "--pod-eviction-seconds".into(),
            "1".into(),
        ],
        broker: None,
    });

    // Joined nodes carry their key, their own CIDR and the labels they report.
    let nodes = c.json(&["get", "nodes"]);
    let items = nodes["items"].as_array().unwrap();
    assert_eq!(items.len(), 3, "{nodes}");
    let cidrs: std::collections::BTreeSet<&str> = items
        .iter()
        .map(|n| n["spec"]["podCIDR"].as_str().unwrap())
        .collect();
    assert_eq!(cidrs.len(), 3, "each node its own pod CIDR: {cidrs:?}");
    for n in items {
        assert_eq!(n["metadata"]["labels"]["kubernetes.io/os"], "linux", "{n}");
        assert!(
            n["metadata"]["labels"]["kubernetes.io/arch"].is_string(),
            "{n}"
        );
    }

    // Six replicas spread two by two.
    apply(&c, "web.yaml", WEB);
    apply(&c, "steady.yaml", STEADY);
    c.wait_for("6 web pods Running", Duration::from_secs(120), || {
        c.running_ready("app=web").len() == 6
    });
    let spread = nodes_of(&c.running_ready("app=web"));
    assert_eq!(
        spread,
        BTreeMap::from([("w1".into(), 2), ("w2".into(), 2), ("w3".into(), 2)])
    );
    c.wait_for("steady Running", Duration::from_secs(60), || {
        c.running_ready("app=steady").len() == 1
    });

    cross_node_traffic(&c);
    forged_status_is_dropped(&c);
    revoked_token_joins_nothing(&c);
    partition(&mut c);
    worker_killed(&mut c);
    master_killed(&mut c);
    cordon_and_drain(&c);
    daemonset_on_every_node(&mut c);
}

/// `drain` refuses a pod nothing would replace, then empties a node of
/// managed pods; `uncordon` makes it schedulable again.
fn cordon_and_drain(c: &TestCluster) {
    let out = c.bramble(&["drain", "w2", "--timeout", "60s"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("declare no controller") && err.contains("default/steady"),
        "{err}"
    );
    let w2 = c.json(&["get", "node", "w2"]);
    assert_eq!(w2["spec"]["unschedulable"], true, "left cordoned: {w2}");
    c.ok(&["uncordon", "w2"]);

    let out = c.ok(&["drain", "w1", "--ignore-daemonsets", "--timeout", "60s"]);
    assert!(out.contains("node/w1 drained"), "{out}");
    c.wait_for("web Running off w1", Duration::from_secs(60), || {
        let pods = c.running_ready("app=web");
        pods.len() == 6 && !nodes_of(&pods).contains_key("w1")
    });
    assert_eq!(
        c.json(&["get", "node", "w1"])["spec"]["unschedulable"],
        true
    );
    let out = c.ok(&["uncordon", "w1"]);
    assert!(out.contains("node/w1 uncordoned"), "{out}");
    assert!(c.json(&["get", "node", "w1"])["spec"]["unschedulable"].is_null());
}

const AGENT: &str = r#"
apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: agent
spec:
  selector:
    matchLabels:
      app: agent
  updateStrategy:
    type: RollingUpdate
    rollingUpdate:
      maxUnavailable: 1
  template:
    metadata:
      labels:
        app: agent
    spec:
      containers:
        - name: agent
          image: bramble.local/demo:v1
          imagePullPolicy: Never
          env:
            - name: AGENT_VERSION
              value: "VERSION"
"#;

/// One DaemonSet pod on each node, also on a node that joins later (a Pi
/// flashed with a prepared worker.toml); a template change replaces them
/// all, one node at a time; deleting the DaemonSet removes them.
fn daemonset_on_every_node(c: &mut TestCluster) {
    let version = |p: &serde_json::Value| {
        p["spec"]["containers"][0]["env"][0]["value"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    let names = |pods: Vec<serde_json::Value>| -> Vec<String> {
        pods.iter()
            .map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
            .collect()
    };
    let mut all = BTreeMap::from([("w1".into(), 1), ("w2".into(), 1), ("w3".into(), 1)]);
    apply(c, "agent.yaml", &AGENT.replace("VERSION", "1"));
    c.wait_for("an agent pod on each node", Duration::from_secs(60), || {
        nodes_of(&c.running_ready("app=agent")) == all
    });

    let w4 = c.start_prepared_worker();
    all.insert(w4.clone(), 1);
    c.wait_for(
        "an agent pod on the new node",
        Duration::from_secs(90),
        || nodes_of(&c.running_ready("app=agent")) == all,
    );
    let first = names(c.running_ready("app=agent"));

    apply(c, "agent.yaml", &AGENT.replace("VERSION", "2"));
    c.wait_for("agent rolled to version 2", Duration::from_secs(90), || {
        let pods = c.pods("app=agent");
        pods.len() == all.len()
            && pods.iter().all(|p| version(p) == "2")
            && nodes_of(&c.running_ready("app=agent")) == all
    });
    let second = names(c.running_ready("app=agent"));
    assert!(
        second.iter().all(|n| !first.contains(n)),
        "every agent pod was replaced: {first:?} → {second:?}"
    );

    c.ok(&["delete", "daemonset", "agent"]);
    c.wait_for("agent pods gone", Duration::from_secs(60), || {
        c.pods("app=agent").is_empty()
    });
}

/// A pod reaches a pod on another node by its IP (host-gw routes) and the
/// Service's ClusterIP; a NodePort on any node answers. (No `wget -T`:
/// Debian's static busybox wget crashes on it.)
fn cross_node_traffic(c: &TestCluster) {
    // host-gw: w1 routes the other two nodes' pod CIDRs via their addresses.
    let nodes = c.json(&["get", "nodes"]);
    let mut want: Vec<String> = nodes["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["metadata"]["name"] != "w1")
        .map(|n| {
            let ip = c.worker(n["metadata"]["name"].as_str().unwrap()).ip;
            format!("{} via {ip}", n["spec"]["podCIDR"].as_str().unwrap())
        })
        .collect();
    want.sort();
    let out = c
        .worker("w1")
        .run_in("ip", &["route", "show", "proto", "77"]);
    let mut got: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.split(" dev ").next().unwrap().trim().to_string())
        .collect();
    got.sort();
    assert_eq!(got, want);
    let pods = c.running_ready("app=web");
    let on = |node: &str| {
        pods.iter()
            .find(|p| p["spec"]["nodeName"] == node)
            .unwrap()
            .clone()
    };
    let (a, b) = (on("w1"), on("w3"));
    let target = format!("http://{}:8080/", b["status"]["podIP"].as_str().unwrap());
    let out = c.ok(&[
        "exec",
        a["metadata"]["name"].as_str().unwrap(),
        "--",
        "wget",
        "-qO-",
        &target,
    ]);
    assert!(
        out.contains(b["metadata"]["name"].as_str().unwrap()),
        "w1's pod reached w3's pod: {out}"
    );
    let svc = c.json(&["get", "svc", "web"]);
    let cluster_ip = svc["spec"]["clusterIP"].as_str().unwrap().to_string();
    let mut served = std::collections::BTreeSet::new();
    for _ in 0..12 {
        let out = c.ok(&[
            "exec",
            a["metadata"]["name"].as_str().unwrap(),
            "--",
            "wget",
            "-qO-",
            &format!("http://{cluster_ip}/"),
        ]);
        served.extend(
            pods.iter()
                .filter(|p| out.contains(p["metadata"]["name"].as_str().unwrap()))
                .map(|p| p["spec"]["nodeName"].as_str().unwrap().to_string()),
        );
    }
    assert!(
        served.len() >= 2,
        "the ClusterIP spreads over nodes: {served:?}"
    );
    // From the LAN (the host), the NodePort of a node answers.
    let w2 = c.worker("w2");
    let body = common::http_get(&format!("{}:31080", w2.ip)).expect("NodePort on w2 answers");
    assert!(
        pods.iter()
            .any(|p| body.contains(p["metadata"]["name"].as_str().unwrap()))
    );
    kernel_path_across_nodes(c, &pods, a["metadata"]["name"].as_str().unwrap());
}

/// The same pods behind a Service on the kernel path: w1's DNAT sends its
/// pod's connections to pods on other nodes (masqueraded, so the replies come
/// back through w1), and w2's NodePort serves the LAN.
fn kernel_path_across_nodes(c: &TestCluster, pods: &[serde_json::Value], client: &str) {
    apply(
        c,
        "web-k.yaml",
        r#"apiVersion: v1
kind: Service
metadata:
  name: web-k
  annotations:
    bramble.io/proxy-mode: kernel
spec:
  type: NodePort
  selector:
    app: web
  ports:
    - name: http
      port: 80
      targetPort: http
      nodePort: 31081
"#,
    );
    let dnat_rules = |w: &str| {
        let out = c.worker(w).run_in("nft", &["list", "ruleset"]);
        String::from_utf8_lossy(&out.stdout)
            .matches("dnat to")
            .count()
    };
    c.wait_for(
        "every node's DNAT rules over the 6 pods",
        Duration::from_secs(60),
        || ["w1", "w2", "w3"].iter().all(|w| dnat_rules(w) >= 6),
    );
    let svc = c.json(&["get", "svc", "web-k"]);
    let cluster_ip = svc["spec"]["clusterIP"].as_str().unwrap().to_string();
    let mut served = std::collections::BTreeSet::new();
    for _ in 0..12 {
        let out = c.ok(&[
            "exec",
            client,
            "--",
            "wget",
            "-qO-",
            &format!("http://{cluster_ip}/"),
        ]);
        served.extend(
            pods.iter()
                .filter(|p| out.contains(p["metadata"]["name"].as_str().unwrap()))
                .map(|p| p["spec"]["nodeName"].as_str().unwrap().to_string()),
        );
    }
    assert!(
        served.len() >= 2,
        "the kernel path spreads over nodes: {served:?}"
    );
    let w2 = c.worker("w2");
    let mut lan = std::collections::BTreeSet::new();
    for _ in 0..12 {
        let body = common::http_get(&format!("{}:31081", w2.ip)).expect("kernel NodePort on w2");
        lan.extend(
            pods.iter()
                .filter(|p| body.contains(p["metadata"]["name"].as_str().unwrap()))
                .map(|p| p["spec"]["nodeName"].as_str().unwrap().to_string()),
        );
    }
    assert!(
        lan.len() >= 2,
        "w2's NodePort DNATs to other nodes: {lan:?}"
    );
    c.ok(&["delete", "svc", "web-k"]);
}

/// A node's key speaks for that node only: w1 reporting for w2 is dropped,
/// and so is an admin command signed by w1's key.
fn forged_status_is_dropped(c: &TestCluster) {
    use bramble::transport::envelope::{MASTER_ID, node_id};
    use bramble::transport::messages::{NodeFacts, NodeReport};
    use bramble::transport::{KeyPair, Mqtt, MqttOptions, Sealer, Topics};
    let w1 = c.worker("w1");
    let layout = bramble::config::Layout::new(&w1.data_dir).unwrap();
    let key = KeyPair::load(&layout.node_key()).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (mqtt, _events) = Mqtt::connect(
            MqttOptions::new(&c.broker, "forger"),
            Some(Duration::from_secs(10)),
        )
        .await
        .unwrap();
        let topics = Topics::default();
        let topic = topics.status("w2");
        let report = NodeReport {
            node: "w2".into(),
            assignment_generation: 0,
            services_generation: 0,
            info: NodeFacts::default(),
            pods: vec![],
            events: vec![],
            object_events: vec![],
            session: 0,
        };
        // Signed by w1's real key, as w1 and as w2.
        for id in [node_id("w1"), node_id("w2")] {
            let sealer = Sealer::new(key.clone(), id);
            mqtt.publish(&topic, sealer.seal(&topic, MASTER_ID, &report), false)
                .await
                .unwrap();
        }
        // An admin command (delete the web Deployment) signed by w1's key,
        // as the node and as an admin id of that key: neither runs.
        use bramble::transport::messages::{Command, DeleteRequest, Request};
        let cmd_topic = topics.cmd("delete");
        let cmd = Command {
            id: 1,
            reply_to: topics.reply("forger"),
            reply_as: "client:forger".into(),
            request: Request::Delete(DeleteRequest {
                kind: bramble::api::Kind::Deployment,
                namespace: "default".into(),
                names: vec!["web".into()],
                selector: None,
                all: false,
                propagation: None,
                dry_run: false,
            }),
        };
        let as_admin = bramble::transport::envelope::admin_id(&key.public());
        for id in [node_id("w1"), as_admin] {
            let sealer = Sealer::new(key.clone(), id);
            mqtt.publish(&cmd_topic, sealer.seal(&cmd_topic, MASTER_ID, &cmd), false)
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        mqtt.disconnect().await;
    });
    c.wait_for(
        "the master logging every forgery",
        Duration::from_secs(10),
        || {
            let log = c.master.log();
            log.contains("node:w1 reporting for node w2")
                && log.contains("bad signature")
                && log.contains("node:w1 may not issue commands")
        },
    );
    assert!(c.node_ready("w2"), "w2 is untouched");
    assert_eq!(nodes_of(&c.running_ready("app=web"))["w2"], 2);
    assert_eq!(c.json(&["get", "deployment", "web"])["spec"]["replicas"], 6);
}

/// A token deleted (revoked) on the master joins nothing, with a clear error.
fn revoked_token_joins_nothing(c: &TestCluster) {
    let token = c
        .ok(&["token", "create", "--ttl", "1h", "-q"])
        .trim()
        .to_string();
    let id = token.split('.').nth(2).unwrap().to_string();
    c.ok(&["token", "revoke", &id]);
    let w1 = c.worker("w1");
    let dir = c.dir.join("late-data");
    let out = w1.run_in(
        common::BIN,
        &[
            "worker",
            "--join",
            &token,
            "--broker",
            &c.broker,
            "--data-dir",
            dir.to_str().unwrap(),
            "--node-name",
            "late",
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("join refused") && err.contains(&id), "{err}");
    let missing = c.bramble(&["get", "node", "late"]);
    assert!(!missing.status.success(), "no node registered");
    // A token that is not even well-formed is refused before any network.
    let out = w1.run_in(
        common::BIN,
        &[
            "worker",
            "--join",
            "nonsense",
            "--broker",
            &c.broker,
            "--data-dir",
            dir.to_str().unwrap(),
            "--node-name",
            "late",
        ],
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("BRAMBLE1."));
}

fn container_started(p: &serde_json::Value) -> (String, i64) {
    let s = &p["status"]["containerStatuses"][0];
    (
        s["state"]["running"]["startedAt"]
            .as_str()
            .unwrap_or("")
            .to_string(),
        s["restartCount"].as_i64().unwrap_or(-1),
    )
}

/// w2's cable pulled: it goes NotReady, its pods keep serving on w2, the web
/// pods are replaced elsewhere; plugged back, it is Ready, the pod that
/// tolerated the partition was never restarted and the replaced ones are gone
/// from w2.
fn partition(c: &mut TestCluster) {
    let steady = c.running_ready("app=steady").remove(0);
    let before = container_started(&steady);
    let steady_ip = steady["status"]["podIP"].as_str().unwrap().to_string();
    let w2 = c.worker("w2");
    w2.set_link(false);
    c.wait_for("w2 NotReady", Duration::from_secs(30), || {
        !c.node_ready("w2")
    });
    // Still serving locally, from w2's own state.
    let out = w2.run_in(
        "curl",
        &["-s", "-m", "5", &format!("http://{steady_ip}:8080/")],
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("steady"),
        "{out:?}"
    );
    c.wait_for("web back to 6 without w2", Duration::from_secs(60), || {
        let pods = c.running_ready("app=web");
        pods.len() == 6 && !nodes_of(&pods).contains_key("w2")
    });
    c.worker("w2").set_link(true);
    c.wait_for("w2 Ready again", Duration::from_secs(60), || {
        c.node_ready("w2")
    });
    let steady = c.running_ready("app=steady");
    assert_eq!(steady.len(), 1);
    assert_eq!(
        container_started(&steady[0]),
        before,
        "steady was not restarted"
    );
    // The stale web pods on w2 are stopped by w2 itself.
    let w2 = c.worker("w2");
    c.wait_for(
        "w2 stopping its evicted pods",
        Duration::from_secs(60),
        || {
            let out = w2.run_in("ip", &["-o", "link", "show", "type", "veth"]);
            // eth0 (LAN) plus steady's veth; the evicted pods' veths are gone.
            String::from_utf8_lossy(&out.stdout).lines().count() == 2
        },
    );
}

/// `kill -9` of w3: its pods run elsewhere within the configured grace.
fn worker_killed(c: &mut TestCluster) {
    let on_w3 = nodes_of(&c.running_ready("app=web"))
        .get("w3")
        .copied()
        .unwrap_or(0);
    assert!(on_w3 > 0, "w3 has web pods to lose");
    let t0 = Instant::now();
    c.worker_mut("w3").kill9();
    c.wait_for("web all Running off w3", Duration::from_secs(60), || {
        let pods = c.running_ready("app=web");
        pods.len() == 6 && !nodes_of(&pods).contains_key("w3")
    });
    eprintln!(
        "MEASURE worker kill -9 -> {on_w3} pods Running elsewhere: {} ms",
        t0.elapsed().as_millis()
    );
    assert!(!c.node_ready("w3"));
    // Back again: it rejoins with its stored membership (no token needed).
    let w3 = c.worker_mut("w3");
    w3.args.retain(|a| a != "--join");
    let pos = w3
        .args
        .iter()
        .position(|a| a.starts_with("BRAMBLE1."))
        .unwrap();
    w3.args.remove(pos);
    w3.spawn();
    c.wait_for("w3 Ready again", Duration::from_secs(60), || {
        c.node_ready("w3")
    });
}

/// The master `kill -9`ed and restarted: nothing lost, workers reconnect,
/// healthy pods keep running.
fn master_killed(c: &mut TestCluster) {
    let before: BTreeMap<String, (String, i64)> = c
        .running_ready("app=web")
        .iter()
        .map(|p| {
            (
                p["metadata"]["name"].as_str().unwrap().to_string(),
                container_started(p),
            )
        })
        .collect();
    c.master.kill9();
    c.master.spawn();
    c.wait_for(
        "all workers Ready after the master's restart",
        Duration::from_secs(60),
        || ["w1", "w2", "w3"].iter().all(|n| c.node_ready(n)),
    );
    c.wait_for("6 web pods", Duration::from_secs(60), || {
        c.running_ready("app=web").len() == 6
    });
    let after: BTreeMap<String, (String, i64)> = c
        .running_ready("app=web")
        .iter()
        .map(|p| {
            (
                p["metadata"]["name"].as_str().unwrap().to_string(),
                container_started(p),
            )
        })
        .collect();
    assert_eq!(before, after, "the same pods, never restarted");
}
