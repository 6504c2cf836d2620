//! Workload controllers end to end on a real one-machine cluster (`bramble
//! up --demo`): a rolling update of 10 demo replicas behind their NodePort
//! with a client sending requests all along (no request may fail), an
//! impossible rollout that stops at maxUnavailable and reports
//! ProgressDeadlineExceeded until `rollout undo` restores it, a Job that
//! completes 3 times, a StatefulSet that starts in order with a bound claim
//! per pod, a CronJob that runs, an autoscaler that scales a CPU-burning
//! Deployment, apply's three-way merge, a stale resourceVersion refused,
//! namespace deletion, and Secrets not readable in the redb file.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Cluster, ClusterOptions};

const DEMO: &str = "app=demo";
const IMAGE: &str = "bramble.local/demo:v1";

fn apply(c: &Cluster, name: &str, yaml: &str) -> String {
    let path = c.dir.join(name);
    std::fs::write(&path, yaml).unwrap();
    c.ok(&["apply", "-f", path.to_str().unwrap()])
}

fn demo_deployment(replicas: u32, image: &str, extra: &str) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: demo
  labels:
    app: demo
spec:
  replicas: {replicas}
{extra}  selector:
    matchLabels:
      app: demo
  template:
    metadata:
      labels:
        app: demo
    spec:
      containers:
        - name: web
          image: {image}
          imagePullPolicy: Never
          ports:
            - name: http
              containerPort: 8080
"#
    )
}

/// Sends requests one after another until stopped; counts answers and failures.
struct Prober {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Prober {
    fn start(addr: String) -> Prober {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let (s, o, f) = (stop.clone(), ok.clone(), failed.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match common::http_get(&addr) {
                    Some(body) if body.contains("demo: serving") || body.contains("200") => {
                        o.fetch_add(1, Ordering::Relaxed)
                    }
                    _ => f.fetch_add(1, Ordering::Relaxed),
                };
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Prober {
            stop,
            ok,
            failed,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn images_of(c: &Cluster) -> Vec<String> {
    c.running_ready(DEMO)
        .iter()
        .map(|p| {
            p["spec"]["containers"][0]["image"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect()
}

#[test]
fn workload_controllers_end_to_end() {
    let c = Cluster::start(ClusterOptions {
        demo: true,
        broker: None,
    });
    c.wait_for("two demo pods", Duration::from_secs(90), || {
        c.running_ready(DEMO).len() == 2
    });

    // A CronJob every minute, checked at the end.
    apply(
        &c,
        "cron.yaml",
        &format!(
            r#"apiVersion: batch/v1
kind: CronJob
metadata:
  name: tick
spec:
  schedule: "* * * * *"
  jobTemplate:
    spec:
      template:
        spec:
          containers:
            - name: tick
              image: {IMAGE}
              imagePullPolicy: Never
              command: ["sh", "-c", "echo tick"]
          restartPolicy: Never
"#
        ),
    );

    // ---- Rolling update of 10 replicas behind the NodePort.
    c.ok(&["scale", "deployment/demo", "--replicas=10"]);
    c.wait_for("ten demo pods", Duration::from_secs(120), || {
        c.running_ready(DEMO).len() == 10
    });
    let node_port = format!("127.0.0.1:{}", c.node_port);
    let prober = Prober::start(node_port.clone());
    std::thread::sleep(Duration::from_secs(1));
    let started = Instant::now();
    let old_pods: Vec<String> = c
        .running_ready(DEMO)
        .iter()
        .map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    c.ok(&["rollout", "restart", "deployment/demo"]);
    let status = c.ok(&["rollout", "status", "deployment/demo", "--timeout", "180s"]);
    let rollout_time = started.elapsed();
    assert!(status.contains("successfully rolled out"), "{status}");
    std::thread::sleep(Duration::from_secs(1));
    let (ok, failed) = prober.finish();
    eprintln!(
        "rolling update of 10 replicas: {:.1} s, {ok} requests answered, {failed} failed",
        rollout_time.as_secs_f64()
    );
    assert!(ok > 20, "the client kept asking: {ok}");
    assert_eq!(
        failed,
        0,
        "no request failed during the rolling update ({ok} answered)\n{}",
        c.log_tail()
    );
    let new_pods: Vec<String> = c
        .running_ready(DEMO)
        .iter()
        .map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(new_pods.len(), 10);
    assert!(
        new_pods.iter().all(|p| !old_pods.contains(p)),
        "every pod replaced"
    );
    let described = c.ok(&["describe", "deployment", "demo"]);
    assert!(described.contains("NewReplicaSetAvailable"), "{described}");
    assert!(c.ok(&["get", "events"]).contains("Scaled down replica set"));

    // ---- An impossible rollout stops at maxUnavailable and times out.
    apply(
        &c,
        "bad.yaml",
        &demo_deployment(
            10,
            "bramble.local/does-not-exist:1",
            "  progressDeadlineSeconds: 10\n",
        ),
    );
    let out = c.bramble(&["rollout", "status", "deployment/demo", "--timeout", "120s"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "rollout status fails");
    assert!(err.contains("exceeded its progress deadline"), "{err}");
    // 25% of 10: at most 2 unavailable, so at least 8 old pods still serve.
    let serving = c.running_ready(DEMO);
    assert!(serving.len() >= 8, "{} pods serve", serving.len());
    assert!(images_of(&c).iter().all(|i| i == IMAGE));
    assert!(
        common::http_get(&node_port).is_some(),
        "the Service still answers"
    );
    let d = c.json(&["get", "deployment", "demo"]);
    let cond = d["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Progressing")
        .unwrap()
        .clone();
    assert_eq!(cond["reason"], "ProgressDeadlineExceeded", "{cond}");
    let history = c.ok(&["rollout", "history", "deployment/demo"]);
    assert!(
        history.contains("REVISION") && history.contains("3"),
        "{history}"
    );
    // Undo brings the working template back.
    let undo = c.ok(&["rollout", "undo", "deployment/demo"]);
    assert!(undo.contains("rolled back"), "{undo}");
    let status = c.ok(&["rollout", "status", "deployment/demo", "--timeout", "180s"]);
    assert!(status.contains("successfully rolled out"), "{status}");
    c.wait_for("ten working pods", Duration::from_secs(60), || {
        let imgs = images_of(&c);
        imgs.len() == 10 && imgs.iter().all(|i| i == IMAGE) && c.pods(DEMO).len() == 10
    });

    // ---- A stale resourceVersion is refused, nothing applied.
    let out = c.bramble(&[
        "label",
        "deployment",
        "demo",
        "stale=yes",
        "--resource-version",
        "1",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Conflict") && err.contains("has been modified"),
        "{err}"
    );
    assert!(c.json(&["get", "deployment", "demo"])["metadata"]["labels"]["stale"].is_null());
    c.ok(&["scale", "deployment/demo", "--replicas=2"]);

    // ---- apply merges like kubectl's: a field dropped from the manifest goes,
    // a label added by `label` stays; diff shows the change first.
    let cm = |data: &str| {
        format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\ndata:\n{data}")
    };
    apply(&c, "cm.yaml", &cm("  a: \"1\"\n  b: \"2\"\n"));
    c.ok(&["label", "configmap", "settings", "team=home"]);
    let path = c.dir.join("cm.yaml");
    std::fs::write(&path, cm("  a: \"1\"\n")).unwrap();
    let diff = c.bramble(&["diff", "-f", path.to_str().unwrap()]);
    assert_eq!(diff.status.code(), Some(1), "diff finds a change");
    assert!(
        String::from_utf8_lossy(&diff.stdout).contains("-  b: "),
        "{}",
        String::from_utf8_lossy(&diff.stdout)
    );
    c.ok(&["apply", "-f", path.to_str().unwrap()]);
    let got = c.json(&["get", "configmap", "settings"]);
    assert!(got["data"]["b"].is_null(), "{got}");
    assert_eq!(got["data"]["a"], "1");
    assert_eq!(got["metadata"]["labels"]["team"], "home", "{got}");
    let dry = c.ok(&["apply", "-f", path.to_str().unwrap(), "--dry-run=server"]);
    assert!(dry.contains("unchanged (server dry run)"), "{dry}");

    // ---- Secrets are sealed in the store file.
    apply(
        &c,
        "secret.yaml",
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: db\nstringData:\n  password: plaintext-hunter2-xyz\n",
    );
    let s = c.json(&["get", "secret", "db"]);
    assert!(s["data"]["password"].is_string(), "{s}");
    let raw = std::fs::read(c.layout().master_db()).unwrap();
    assert!(
        !raw.windows(20).any(|w| w == b"plaintext-hunter2-xyz"),
        "the plaintext is not in master.redb"
    );

    // ---- A Job completes three times, two at a time.
    apply(
        &c,
        "job.yaml",
        &format!(
            r#"apiVersion: batch/v1
kind: Job
metadata:
  name: count
spec:
  completions: 3
  parallelism: 2
  template:
    spec:
      containers:
        - name: count
          image: {IMAGE}
          imagePullPolicy: Never
          command: ["sh", "-c", "echo done"]
      restartPolicy: Never
"#
        ),
    );
    c.wait_for("the Job complete", Duration::from_secs(90), || {
        let j = c.json(&["get", "job", "count"]);
        j["status"]["succeeded"] == 3
            && j["status"]["conditions"]
                .as_array()
                .is_some_and(|cs| cs.iter().any(|c| c["type"] == "Complete"))
    });
    assert!(c.ok(&["get", "jobs"]).contains("Complete"));

    // ---- A StatefulSet starts in order, each pod with its own bound claim.
    apply(
        &c,
        "sts.yaml",
        &format!(
            r#"apiVersion: v1
kind: Service
metadata:
  name: store
spec:
  clusterIP: None
  selector:
    app: store
  ports:
    - port: 8080
---
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: store
spec:
  serviceName: store
  replicas: 2
  selector:
    matchLabels:
      app: store
  template:
    metadata:
      labels:
        app: store
    spec:
      containers:
        - name: web
          image: {IMAGE}
          imagePullPolicy: Never
  volumeClaimTemplates:
    - metadata:
        name: data
      spec:
        accessModes: ["ReadWriteOnce"]
        resources:
          requests:
            storage: 1Gi
"#
        ),
    );
    c.wait_for("both ordinals ready", Duration::from_secs(90), || {
        c.running_ready("app=store").len() == 2
    });
    let p0 = c.json(&["get", "pod", "store-0"]);
    let p1 = c.json(&["get", "pod", "store-1"]);
    let created = |p: &serde_json::Value| {
        p["metadata"]["creationTimestamp"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let ready_at = |p: &serde_json::Value| {
        p["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Ready")
            .unwrap()["lastTransitionTime"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert!(
        ready_at(&p0) <= created(&p1),
        "store-1 was made after store-0 was ready"
    );
    assert_eq!(p0["spec"]["hostname"], "store-0");
    assert_eq!(p0["spec"]["subdomain"], "store");
    let claim = c.json(&["get", "pvc", "data-store-0"]);
    assert_eq!(claim["status"]["phase"], "Bound", "{claim}");
    assert_eq!(
        claim["metadata"]["annotations"]["volume.kubernetes.io/selected-node"],
        c.node.as_str()
    );
    let claim_uid = claim["metadata"]["uid"].as_str().unwrap().to_string();
    assert_eq!(
        p0["metadata"]["annotations"]["volumes.bramble.io/data"],
        claim_uid.as_str()
    );
    // The pod comes back with the same claim on the same node.
    let old_uid = p0["metadata"]["uid"].as_str().unwrap().to_string();
    c.ok(&["delete", "pod", "store-0"]);
    c.wait_for("store-0 back", Duration::from_secs(90), || {
        let p = c.json(&["get", "pods", "-l", "app=store"]);
        p["items"].as_array().unwrap().iter().any(|p| {
            p["metadata"]["name"] == "store-0"
                && p["metadata"]["uid"] != old_uid.as_str()
                && p["status"]["phase"] == "Running"
        })
    });
    let p0 = c.json(&["get", "pod", "store-0"]);
    assert_eq!(
        p0["metadata"]["annotations"]["volumes.bramble.io/data"],
        claim_uid.as_str()
    );
    assert_eq!(p0["spec"]["nodeName"], c.node.as_str());
    c.ok(&["scale", "statefulset/store", "--replicas=1"]);
    c.wait_for("store-1 gone", Duration::from_secs(60), || {
        c.pods("app=store").len() == 1
    });
    assert!(
        c.ok(&["get", "pvc"]).contains("data-store-1"),
        "claims are kept"
    );

    // ---- The autoscaler scales a CPU-burning Deployment up.
    apply(
        &c,
        "burn.yaml",
        &format!(
            r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: burn
spec:
  replicas: 1
  selector:
    matchLabels:
      app: burn
  template:
    metadata:
      labels:
        app: burn
    spec:
      containers:
        - name: burn
          image: {IMAGE}
          imagePullPolicy: Never
          command: ["sh", "-c", "while true; do :; done"]
          resources:
            requests:
              cpu: 100m
---
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: burn
spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: burn
  minReplicas: 1
  maxReplicas: 2
  metrics:
    - type: Resource
      resource:
        name: cpu
        target:
          type: Utilization
          averageUtilization: 50
"#
        ),
    );
    c.wait_for(
        "the autoscaler scaled burn to 2",
        Duration::from_secs(90),
        || c.json(&["get", "deployment", "burn"])["spec"]["replicas"] == 2,
    );
    let top = c.ok(&["top", "pods", "-l", "app=burn"]);
    assert!(top.contains("CPU(cores)") && top.contains("burn-"), "{top}");
    let hpa = c.ok(&["get", "hpa", "burn"]);
    assert!(hpa.contains("cpu: ") && hpa.contains("/50%"), "{hpa}");
    c.ok(&["delete", "deployment", "burn", "--wait=false"]);
    c.ok(&["top", "nodes"]);

    // ---- Deleting a namespace deletes what is in it.
    apply(
        &c,
        "ns.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: scratch\n",
    );
    let path = c.dir.join("in-ns.yaml");
    std::fs::write(&path, demo_deployment(1, IMAGE, "")).unwrap();
    c.ok(&["apply", "-n", "scratch", "-f", path.to_str().unwrap()]);
    c.wait_for("a pod in scratch", Duration::from_secs(60), || {
        c.json(&["get", "pods", "-n", "scratch"])["items"]
            .as_array()
            .is_some_and(|i| !i.is_empty())
    });
    c.ok(&["delete", "namespace", "scratch"]);
    assert!(c.bramble(&["get", "namespace", "scratch"]).status.code() != Some(0));
    let pods_left = c.json(&["get", "pods", "-A"]);
    assert!(
        pods_left["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["metadata"]["namespace"] != "scratch")
    );

    // ---- The CronJob ran.
    c.wait_for(
        "a Job of the CronJob complete",
        Duration::from_secs(120),
        || {
            let jobs = c.json(&["get", "jobs"]);
            jobs["items"].as_array().unwrap().iter().any(|j| {
                j["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with("tick-"))
                    && j["status"]["succeeded"] == 1
            })
        },
    );
    let cj = c.ok(&["get", "cronjobs"]);
    assert!(cj.contains("* * * * *"), "{cj}");
}
