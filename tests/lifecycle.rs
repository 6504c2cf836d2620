//! The pod lifecycle on real containers: init containers in order before the
//! app (sharing a volume with it), a crash loop as `get` and `describe` show
//! it, graceful termination (SIGTERM handled, or SIGKILL after the grace
//! period), readiness deciding Endpoints, a failing
//! liveness probe restarting a container, postStart/preStop hooks reaching a
//! server the test runs, and exec probes and hooks run inside the container
//! (a readiness file toggled with `bramble exec`, a liveness command that
//! times out, hooks writing to a hostPath the test reads).

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
  volumes:
  - name: work
    emptyDir: {}
  initContainers:
  - name: first
    image: bramble.local/demo:v1
    command: ["sh", "-c", "echo first; echo from-first > /work/seed; sleep 1"]
    volumeMounts: [{name: work, mountPath: /work}]
  - name: second
    image: bramble.local/demo:v1
    command: ["sh", "-c", "echo second"]
  containers:
  - name: app
    image: bramble.local/demo:v1
    command: ["sh", "-c", "echo app; cat /work/seed; sleep 3600"]
    volumeMounts: [{name: work, mountPath: /work}]
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
---
apiVersion: v1
kind: Pod
metadata:
  name: crasher
spec:
  containers:
  - name: app
    image: bramble.local/demo:v1
    command: ["sh", "-c", "exit 1"]
---
apiVersion: v1
kind: Pod
metadata:
  name: stubborn
spec:
  terminationGracePeriodSeconds: 2
  containers:
  - name: app
    image: bramble.local/demo:v1
    command: ["sh", "-c", "trap '' TERM; while true; do sleep 1; done"]
    livenessProbe:
      exec: {command: [sh, -c, "test ! -e /tmp/die"]}
      periodSeconds: 1
      failureThreshold: 1
---
apiVersion: v1
kind: Pod
metadata:
  name: polite
spec:
  terminationGracePeriodSeconds: 60
  containers:
  - name: app
    image: bramble.local/demo:v1
    command: ["sh", "-c", "trap 'exit 7' TERM; while true; do sleep 1; done"]
    livenessProbe:
      exec: {command: [sh, -c, "test ! -e /tmp/die"]}
      periodSeconds: 1
      failureThreshold: 1
"#;

fn restarts(c: &Cluster, name: &str) -> i64 {
    pod(c, name)["status"]["containerStatuses"][0]["restartCount"]
        .as_i64()
        .unwrap_or(0)
}

fn last_exit_code(c: &Cluster, name: &str) -> serde_json::Value {
    pod(c, name)["status"]["containerStatuses"][0]["lastState"]["terminated"]["exitCode"].clone()
}

#[test]
fn init_containers_crash_loops_and_graceful_termination() {
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
    // What the first init container wrote, the app reads.
    c.wait_for("the app read the seed", Duration::from_secs(30), || {
        c.ok(&["logs", "inits", "-c", "app"]).contains("from-first")
    });

    c.wait_for("badinit Failed", Duration::from_secs(60), || {
        pod(&c, "badinit")["status"]["phase"] == "Failed"
    });
    assert_eq!(status_column(&c, "badinit"), "Init:Error");
    let p = pod(&c, "badinit");
    assert!(
        p["status"]["containerStatuses"][0]["state"]["running"].is_null(),
        "the app never ran"
    );

    // A container that keeps failing: restarted at once, then backed off,
    // as kubectl shows it.
    c.wait_for(
        "crasher in CrashLoopBackOff",
        Duration::from_secs(60),
        || status_column(&c, "crasher") == "CrashLoopBackOff",
    );
    let described = c.ok(&["describe", "pod", "crasher"]);
    assert!(
        described.contains("Back-off restarting failed container app in pod crasher"),
        "{described}"
    );
    assert_eq!(last_exit_code(&c, "crasher"), 1);

    // A stop is SIGTERM, then SIGKILL when the grace period is over. A
    // failed liveness probe stops the container the way a deletion does,
    // and its restart keeps the exit code to look at: SIGKILL's 137 for the
    // container that ignores SIGTERM, its own 7 for the one that handles it
    // (its grace period of 60 s never runs out).
    for name in ["stubborn", "polite"] {
        c.wait_for(&format!("{name} running"), Duration::from_secs(60), || {
            !pod(&c, name)["status"]["containerStatuses"][0]["state"]["running"].is_null()
        });
        c.ok(&["exec", name, "--", "touch", "/tmp/die"]);
    }
    for (name, code) in [("stubborn", 137), ("polite", 7)] {
        c.wait_for(
            &format!("{name} restarted"),
            Duration::from_secs(90),
            || {
                restarts(&c, name) >= 1
                    && !pod(&c, name)["status"]["containerStatuses"][0]["state"]["running"]
                        .is_null()
            },
        );
        assert_eq!(last_exit_code(&c, name), code, "{}", pod(&c, name));
    }
    // Deleted, the stubborn pod is gone no sooner than its grace period.
    let begun = std::time::Instant::now();
    c.ok(&["delete", "pod", "stubborn"]);
    let took = begun.elapsed();
    assert!(took >= Duration::from_secs(2), "deleted in {took:?}");
    assert!(
        !c.ok(&["get", "pods", "--no-headers"]).contains("stubborn"),
        "stubborn still listed after its deletion returned"
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

fn exec_manifest(out: &std::path::Path) -> String {
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata:
  name: exec-probed
  labels: {{app: exec-probed}}
spec:
  terminationGracePeriodSeconds: 10
  volumes:
  - name: out
    hostPath: {{path: {out}, type: Directory}}
  containers:
  - name: web
    image: bramble.local/demo:v1
    volumeMounts: [{{name: out, mountPath: /out}}]
    readinessProbe:
      exec: {{command: [cat, /tmp/ready]}}
      periodSeconds: 1
    lifecycle:
      postStart:
        exec: {{command: [sh, -c, "id -u > /out/post-start"]}}
      preStop:
        exec: {{command: [sh, -c, "echo pre-stop > /out/pre-stop"]}}
---
apiVersion: v1
kind: Pod
metadata:
  name: slow-live
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: web
    image: bramble.local/demo:v1
    livenessProbe:
      exec: {{command: [sleep, "30"]}}
      timeoutSeconds: 1
      periodSeconds: 1
      failureThreshold: 1
---
apiVersion: v1
kind: Service
metadata:
  name: exec-probed
spec:
  selector: {{app: exec-probed}}
  ports:
  - port: 80
    targetPort: 8080
"#,
        out = out.display()
    )
}

fn ready(c: &Cluster, name: &str) -> bool {
    pod(c, name)["status"]["containerStatuses"][0]["ready"] == true
}

#[test]
fn exec_probes_and_hooks_run_in_the_container() {
    let c = Cluster::start(ClusterOptions {
        demo: true,
        broker: None,
    });
    let out = c.dir.join("hook-out");
    std::fs::create_dir_all(&out).unwrap();
    apply(&c, "exec.yaml", &exec_manifest(&out));

    // postStart ran in the container (as its user), once it started.
    c.wait_for("the postStart hook's file", Duration::from_secs(60), || {
        std::fs::read_to_string(out.join("post-start")).is_ok_and(|s| s == "0\n")
    });
    // No /tmp/ready: running, not ready, and the command's own words say why.
    c.wait_for("a failed readiness probe", Duration::from_secs(30), || {
        c.ok(&["describe", "pod", "exec-probed"])
            .contains("Readiness probe failed: cat: can't open '/tmp/ready'")
    });
    assert!(!ready(&c, "exec-probed"));
    c.ok(&["exec", "exec-probed", "--", "touch", "/tmp/ready"]);
    c.wait_for(
        "ready once the file exists",
        Duration::from_secs(30),
        || ready(&c, "exec-probed"),
    );
    let ip = pod(&c, "exec-probed")["status"]["podIP"]
        .as_str()
        .unwrap()
        .to_string();
    c.wait_for(
        "in the Service's endpoints",
        Duration::from_secs(30),
        || {
            let ep = c.json(&["get", "endpoints", "exec-probed"]);
            ep["subsets"][0]["addresses"][0]["ip"] == ip.as_str()
        },
    );
    c.ok(&["exec", "exec-probed", "--", "rm", "/tmp/ready"]);
    c.wait_for("not ready once it is gone", Duration::from_secs(30), || {
        !ready(&c, "exec-probed")
    });

    // A liveness command that outlives timeoutSeconds fails, and restarts
    // the container.
    c.wait_for(
        "slow-live restarted by its liveness probe",
        Duration::from_secs(90),
        || {
            pod(&c, "slow-live")["status"]["containerStatuses"][0]["restartCount"]
                .as_i64()
                .unwrap_or(0)
                >= 1
        },
    );
    let described = c.ok(&["describe", "pod", "slow-live"]);
    assert!(
        described.contains("Liveness probe failed: command \"sleep 30\" timed out"),
        "{described}"
    );

    // preStop runs in the container before it is stopped.
    assert!(!out.join("pre-stop").exists());
    c.ok(&["delete", "pod", "exec-probed"]);
    assert_eq!(
        std::fs::read_to_string(out.join("pre-stop")).unwrap(),
        "pre-stop\n",
        "preStop ran before the pod was gone"
    );
}
