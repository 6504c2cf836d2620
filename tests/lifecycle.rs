//! The pod lifecycle on real containers: init containers in order before the
//! app, readiness deciding Endpoints, a failing liveness probe restarting a
//! container, and postStart/preStop hooks reaching a server the test runs.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Cluster, ClusterOptions};

fn apply(c: &Cluster, name: &str, text: &str) {
    let path = c.dir.join(name);
    std::fs::write(&path, text).unwrap();
    c.ok(&["apply", "-f", path.to_str().unwrap()]);
}

fn pod(c: &Cluster, name: &str) -> serde_json::Value {
    c.json(&["get", "pod", name])
}

fn status_column(c: &Cluster, name: &str) -> String {
    let out = c.ok(&["get", "pod", name, "--no-headers"]);
    out.split_whitespace().nth(2).unwrap_or("").to_string()
}

const INIT: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: inits
spec:
  initContainers:
  - name: first
    image: bramble.local/demo:v1
    command: ["sh", "-c", "echo first; sleep 1"]
  - name: second
    image: bramble.local/demo:v1
    command: ["sh", "-c", "echo second"]
  containers:
  - name: app
    image: bramble.local/demo:v1
    command: ["sh", "-c", "echo app; sleep 3600"]
---
apiVersion: v1
kind: Pod
metadata:
  name: badinit
spec:
  restartPolicy: Never
  initContainers:
  - name: broken
    image: bramble.local/demo:v1
    command: ["sh", "-c", "exit 4"]
  containers:
  - name: app
    image: bramble.local/demo:v1
    command: ["sh", "-c", "sleep 3600"]
"#;

#[test]
fn init_containers_run_in_order_and_a_failed_one_fails_the_pod() {
    let c = Cluster::start(ClusterOptions {
        demo: true,
        broker: None,
    });
    apply(&c, "init.yaml", INIT);
    c.wait_for("inits Running", Duration::from_secs(60), || {
        pod(&c, "inits")["status"]["phase"] == "Running"
    });
    let p = pod(&c, "inits");
    let inits = p["status"]["initContainerStatuses"].as_array().unwrap();
    assert_eq!(inits.len(), 2);
    for s in inits {
        assert_eq!(s["state"]["terminated"]["exitCode"], 0, "{s}");
    }
    // The second init container finished after the first.
    let first = inits[0]["state"]["terminated"]["finishedAt"]
        .as_str()
        .unwrap()
        .to_string();
    let second = inits[1]["state"]["terminated"]["startedAt"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(second >= first, "{first} then {second}");
    assert_eq!(status_column(&c, "inits"), "Running");

    c.wait_for("badinit Failed", Duration::from_secs(60), || {
        pod(&c, "badinit")["status"]["phase"] == "Failed"
    });
    assert_eq!(status_column(&c, "badinit"), "Init:Error");
    let p = pod(&c, "badinit");
    assert!(
        p["status"]["containerStatuses"][0]["state"]["running"].is_null(),
        "the app never ran"
    );
}

const PROBES: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: ready
  labels: {app: probed}
spec:
  containers:
  - name: web
    image: bramble.local/demo:v1
    readinessProbe:
      tcpSocket: {port: 8080}
      periodSeconds: 1
---
apiVersion: v1
kind: Pod
metadata:
  name: never-ready
  labels: {app: probed}
spec:
  containers:
  - name: web
    image: bramble.local/demo:v1
    readinessProbe:
      httpGet: {port: 8080, path: /missing.html}
      periodSeconds: 1
---
apiVersion: v1
kind: Pod
metadata:
  name: dead
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: web
    image: bramble.local/demo:v1
    livenessProbe:
      tcpSocket: {port: 9999}
      periodSeconds: 1
      failureThreshold: 2
---
apiVersion: v1
kind: Service
metadata:
  name: probed
spec:
  selector: {app: probed}
  ports:
  - port: 80
    targetPort: 8080
"#;

#[test]
fn readiness_decides_endpoints_and_liveness_restarts() {
    let c = Cluster::start(ClusterOptions {
        demo: true,
        broker: None,
    });
    apply(&c, "probes.yaml", PROBES);
    c.wait_for("ready is Ready", Duration::from_secs(60), || {
        pod(&c, "ready")["status"]["containerStatuses"][0]["ready"] == true
    });
    let ready_ip = pod(&c, "ready")["status"]["podIP"]
        .as_str()
        .unwrap()
        .to_string();
    let never_ip = pod(&c, "never-ready")["status"]["podIP"]
        .as_str()
        .unwrap_or("")
        .to_string();
    c.wait_for(
        "endpoints list the ready pod",
        Duration::from_secs(30),
        || c.ok(&["get", "endpoints", "probed"]).contains(&ready_ip),
    );
    let ep = c.json(&["get", "endpoints", "probed"]);
    let subset = &ep["subsets"][0];
    let ready: Vec<&str> = subset["addresses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["ip"].as_str().unwrap())
        .collect();
    assert_eq!(ready, vec![ready_ip.as_str()]);
    let not_ready = subset["notReadyAddresses"].as_array().unwrap();
    assert!(not_ready.iter().any(|a| a["ip"] == never_ip), "{ep}");
    assert_eq!(
        c.ok(&["get", "pod", "never-ready", "--no-headers"])
            .split_whitespace()
            .nth(1),
        Some("0/1")
    );
    let described = c.ok(&["describe", "pod", "never-ready"]);
    assert!(
        described.contains("Readiness probe failed: HTTP probe failed with statuscode: 404"),
        "{described}"
    );

    c.wait_for(
        "dead restarted by its liveness probe",
        Duration::from_secs(90),
        || {
            pod(&c, "dead")["status"]["containerStatuses"][0]["restartCount"]
                .as_i64()
                .unwrap_or(0)
                >= 1
        },
    );
    let described = c.ok(&["describe", "pod", "dead"]);
    assert!(described.contains("Liveness probe failed"), "{described}");
    assert!(
        described.contains("failed liveness probe, will be restarted"),
        "{described}"
    );
}

/// A one-request-at-a-time HTTP server that records the paths it was asked for.
fn recorder() -> (u16, Arc<Mutex<Vec<String>>>) {
    let l = TcpListener::bind("0.0.0.0:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let s = seen.clone();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut buf = [0u8; 1024];
            let n = conn.read(&mut buf).unwrap_or(0);
            let req = String::from_utf8_lossy(&buf[..n]).into_owned();
            if let Some(path) = req.split_whitespace().nth(1) {
                s.lock().unwrap().push(path.to_string());
            }
            let _ = conn
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    });
    (port, seen)
}

#[test]
fn post_start_and_pre_stop_hooks_run() {
    let c = Cluster::start(ClusterOptions {
        demo: true,
        broker: None,
    });
    let (port, seen) = recorder();
    let manifest = format!(
        r#"
apiVersion: v1
kind: Pod
metadata:
  name: hooked
spec:
  terminationGracePeriodSeconds: 5
  containers:
  - name: web
    image: bramble.local/demo:v1
    lifecycle:
      postStart:
        httpGet: {{host: "127.0.0.1", port: {port}, path: /post-start}}
      preStop:
        httpGet: {{host: "127.0.0.1", port: {port}, path: /pre-stop}}
"#
    );
    apply(&c, "hooks.yaml", &manifest);
    c.wait_for("postStart hook", Duration::from_secs(60), || {
        seen.lock().unwrap().contains(&"/post-start".to_string())
    });
    c.ok(&["delete", "pod", "hooked"]);
    assert!(
        seen.lock().unwrap().contains(&"/pre-stop".to_string()),
        "preStop ran before the pod was gone"
    );
}
