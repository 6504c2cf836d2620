//! Pods outlive their agent: `kill -9` of `bramble up` leaves the containers
//! running and serving; the restarted agent takes them back from its own redb
//! and the runtime's state without restarting them, and no log line a
//! container wrote while the agent was gone is lost.

mod common;

use std::time::Duration;

use common::{Cluster, ClusterOptions, http_get};

const COUNTER: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: counter
spec:
  containers:
  - name: c
    image: bramble.local/demo:v1
    command: ["sh", "-c", "i=0; while true; do echo line $i; i=$((i+1)); sleep 0.2; done"]
"#;

#[test]
fn pods_survive_kill_9_of_the_agent_and_are_adopted() {
    let mut c = Cluster::start(ClusterOptions {
        demo: true,
        broker: None,
    });
    let path = c.dir.join("counter.yaml");
    std::fs::write(&path, COUNTER).unwrap();
    c.ok(&["apply", "-f", path.to_str().unwrap()]);
    c.wait_for("demo and counter running", Duration::from_secs(60), || {
        c.running_ready("app=demo").len() == 2
            && c.json(&["get", "pod", "counter"])["status"]["phase"] == "Running"
    });
    let pods = c.running_ready("app=demo");
    let ip = pods[0]["status"]["podIP"].as_str().unwrap().to_string();
    let ids_before: Vec<String> = pods
        .iter()
        .map(|p| {
            p["status"]["containerStatuses"][0]["containerID"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();

    c.kill9();
    // With the agent gone, the pod still serves on its own address.
    assert!(
        http_get(&format!("{ip}:8080")).is_some(),
        "the pod kept serving without its agent"
    );
    std::thread::sleep(Duration::from_secs(2));

    c.restart();
    c.wait_for(
        "the agent back, pods Ready",
        Duration::from_secs(60),
        || c.running_ready("app=demo").len() == 2,
    );
    let pods = c.running_ready("app=demo");
    let ids_after: Vec<String> = pods
        .iter()
        .map(|p| {
            p["status"]["containerStatuses"][0]["containerID"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(ids_before, ids_after, "the same containers, not new ones");
    for p in &pods {
        assert_eq!(
            p["status"]["containerStatuses"][0]["restartCount"], 0,
            "{p}"
        );
    }
    c.wait_for("the counter adopted", Duration::from_secs(30), || {
        c.json(&["get", "pod", "counter"])["status"]["containerStatuses"][0]["ready"] == true
    });
    assert_eq!(
        c.json(&["get", "pod", "counter"])["status"]["containerStatuses"][0]["restartCount"],
        0
    );
    // Every line, including those written while no agent ran, in order.
    let logs = c.ok(&["logs", "counter"]);
    let numbers: Vec<u64> = logs
        .lines()
        .filter_map(|l| l.strip_prefix("line ")?.parse().ok())
        .collect();
    assert!(numbers.len() > 10, "{logs}");
    for (i, n) in numbers.iter().enumerate() {
        assert_eq!(*n, i as u64, "no line lost or reordered");
    }
}
