//! Workload controllers end to end on a real one-machine cluster (`bramble
//! up --demo`): a rolling update of 10 demo replicas behind their NodePort
//! with a client sending requests all along (no request may fail), an
//! impossible rollout that stops at maxUnavailable and reports
//! ProgressDeadlineExceeded until `rollout undo` restores it, a Job that
//! completes 3 times, a StatefulSet that starts in order with a bound claim
//! per pod (its data kept for the next pod, names resolved through the
//! headless Service), a CronJob that runs, an autoscaler that scales a CPU-burning
//! Deployment, apply's three-way merge, a stale resourceVersion refused,
//! namespace deletion, and Secrets not readable in the redb file.

mod common;

use std::time::{Duration, Instant};

use common::prober::Prober;
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

/// Fails the test when a request failed, naming each failure.
fn no_failures(during: &str, ok: u64, failures: &[String]) {
    assert!(
        failures.is_empty(),
        "{} of {} requests failed during {during}:\n{}",
        failures.len(),
        ok + failures.len() as u64,
        failures.join("\n")
    );
}

#[test]
fn deployment_rollouts_behind_a_service() {
    let c = Cluster::start(ClusterOptions {
        demo: true,
        broker: None,
    });
    c.wait_for("two demo pods", Duration::from_secs(90), || {
        c.running_ready(DEMO).len() == 2
    });

    // ---- Rolling update of 10 replicas behind the NodePort.
    c.ok(&["scale", "deployment/demo", "--replicas=10"]);
    c.wait_for("ten demo pods", Duration::from_secs(120), || {
        c.running_ready(DEMO).len() == 10
    });
    let node_port = format!("127.0.0.1:{}", c.node_port);
    let prober = Prober::start(node_port.clone(), "Hello from", Duration::from_millis(20));
    c.wait_for("the client's first answer", Duration::from_secs(30), || {
        prober.counts().0 > 0
    });
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
    let (ok, failures) = prober.finish_with_failures();
    eprintln!(
        "rolling update of 10 replicas: {:.1} s, {ok} requests answered, {} failed",
        rollout_time.as_secs_f64(),
        failures.len()
    );
    assert!(ok > 20, "the client kept asking: {ok}");
    no_failures("the rolling update", ok, &failures);
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
    let revision = |c: &Cluster| {
        c.json(&["get", "deployment", "demo"])["metadata"]["annotations"]
            ["deployment.kubernetes.io/revision"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    assert_eq!(revision(&c), "2");

    // ---- An impossible rollout, prepared while paused (nothing moves), then
    // resumed: it stops at maxUnavailable and reports ProgressDeadlineExceeded;
    // undo restores it. The Service answers every request all along.
    let prober = Prober::start(node_port.clone(), "Hello from", Duration::from_millis(20));
    apply(
        &c,
        "deadline.yaml",
        &demo_deployment(10, IMAGE, "  progressDeadlineSeconds: 10\n"),
    );
    c.ok(&["rollout", "pause", "deployment/demo"]);
    let set = c.ok(&[
        "set",
        "image",
        "deployment/demo",
        "web=bramble.local/does-not-exist:1",
    ]);
    assert!(set.contains("deployment.apps/demo"), "{set}");
    c.wait_for("the paused spec observed", Duration::from_secs(30), || {
        let d = c.json(&["get", "deployment", "demo"]);
        d["status"]["observedGeneration"] == d["metadata"]["generation"]
    });
    assert_eq!(revision(&c), "2", "a paused Deployment does not roll");
    assert!(
        c.ok(&["describe", "deployment", "demo"])
            .contains("DeploymentPaused")
    );
    assert!(images_of(&c).iter().all(|i| i == IMAGE));
    c.ok(&["rollout", "resume", "deployment/demo"]);
    let out = c.bramble(&["rollout", "status", "deployment/demo", "--timeout", "120s"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "rollout status fails");
    assert!(err.contains("exceeded its progress deadline"), "{err}");
    assert_eq!(revision(&c), "3");
    // 25% of 10: at most 2 unavailable, so at least 8 old pods still serve,
    // and the new ReplicaSet got no more than 25% surge.
    let serving = c.running_ready(DEMO);
    assert!(serving.len() >= 8, "{} pods serve", serving.len());
    assert!(images_of(&c).iter().all(|i| i == IMAGE));
    let all = c.pods(DEMO);
    assert!(all.len() <= 13, "{} pods in all (10 + surge 3)", all.len());
    let d = c.json(&["get", "deployment", "demo"]);
    let cond = d["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Progressing")
        .unwrap()
        .clone();
    assert_eq!(cond["reason"], "ProgressDeadlineExceeded", "{cond}");
    assert_eq!(cond["status"], "False", "{cond}");
    let history = c.ok(&["rollout", "history", "deployment/demo"]);
    for n in ["1", "2", "3"] {
        assert!(
            history
                .lines()
                .any(|l| l.split_whitespace().next() == Some(n)),
            "revision {n} in:\n{history}"
        );
    }
    // Undo to revision 2 brings the working template back (as revision 4).
    let undo = c.ok(&["rollout", "undo", "deployment/demo", "--to-revision=2"]);
    assert!(undo.contains("rolled back"), "{undo}");
    let status = c.ok(&["rollout", "status", "deployment/demo", "--timeout", "180s"]);
    assert!(status.contains("successfully rolled out"), "{status}");
    c.wait_for("ten working pods", Duration::from_secs(60), || {
        let imgs = images_of(&c);
        imgs.len() == 10 && imgs.iter().all(|i| i == IMAGE) && c.pods(DEMO).len() == 10
    });
    assert_eq!(revision(&c), "4");
    let (ok, failures) = prober.finish_with_failures();
    assert!(ok > 20, "the client kept asking: {ok}");
    no_failures("the impossible rollout and its undo", ok, &failures);

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
    // An apply whose second object is stale stores neither.
    let stale = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: fresh\ndata:\n  a: \"1\"\n---\n{}",
        demo_deployment(3, IMAGE, "").replacen(
            "  name: demo\n",
            "  name: demo\n  resourceVersion: \"1\"\n",
            1
        )
    );
    let path = c.dir.join("stale.yaml");
    std::fs::write(&path, stale).unwrap();
    let out = c.bramble(&["apply", "-f", path.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a stale apply fails");
    assert!(err.contains("Conflict"), "{err}");
    assert!(
        !c.bramble(&["get", "configmap", "fresh"]).status.success(),
        "nothing of a refused apply is stored"
    );
    assert_eq!(
        c.json(&["get", "deployment", "demo"])["spec"]["replicas"],
        10
    );
}

#[test]
fn workloads_and_objects() {
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
    std::fs::write(&path, cm("  a: \"9\"\n")).unwrap();
    let dry = c.ok(&["apply", "-f", path.to_str().unwrap(), "--dry-run=client"]);
    assert!(dry.contains("configured (dry run)"), "{dry}");
    let dry = c.ok(&["apply", "-f", path.to_str().unwrap(), "--dry-run=server"]);
    assert!(dry.contains("configured (server dry run)"), "{dry}");
    assert_eq!(c.json(&["get", "configmap", "settings"])["data"]["a"], "1");
    c.ok(&["annotate", "configmap", "settings", "note=kept"]);
    let out = c.bramble(&["annotate", "configmap", "settings", "note=again"]);
    assert!(
        !out.status.success(),
        "annotate does not overwrite without --overwrite"
    );
    c.ok(&[
        "annotate",
        "configmap",
        "settings",
        "note=again",
        "--overwrite",
    ]);
    c.ok(&["label", "configmap", "settings", "team-"]);
    let got = c.json(&["get", "configmap", "settings"]);
    assert_eq!(got["metadata"]["annotations"]["note"], "again", "{got}");
    assert!(got["metadata"]["labels"]["team"].is_null(), "{got}");

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
          volumeMounts:
            - name: data
              mountPath: /data
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
    // Stable names through the headless Service, from inside a pod.
    let ip1 = p1["status"]["podIP"].as_str().unwrap().to_string();
    let looked_up = c.ok(&[
        "exec",
        "store-0",
        "--",
        "nslookup",
        "store-1.store.default.svc.cluster.local",
    ]);
    assert!(looked_up.contains(&ip1), "{looked_up}");
    // What a pod writes to its claim is there for the next pod of its ordinal.
    c.ok(&[
        "exec",
        "store-0",
        "--",
        "sh",
        "-c",
        "echo kept > /data/file",
    ]);
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
    assert_eq!(
        c.ok(&["exec", "store-0", "--", "cat", "/data/file"]).trim(),
        "kept"
    );
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
    // --cascade=orphan: the Deployment goes, its ReplicaSet and pod stay and
    // are adopted again (same pod) by a Deployment with the same selector.
    let rs_of = || {
        let rs = c.json(&["get", "rs", "-n", "scratch"]);
        rs["items"].as_array().unwrap().clone()
    };
    let pod_uids = || {
        let p = c.json(&["get", "pods", "-n", "scratch"]);
        let mut uids: Vec<String> = p["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["metadata"]["uid"].as_str().unwrap().to_string())
            .collect();
        uids.sort();
        uids
    };
    c.wait_for("the scratch pod Running", Duration::from_secs(60), || {
        c.json(&["get", "pods", "-n", "scratch"])["items"]
            .as_array()
            .is_some_and(|i| i.len() == 1 && i[0]["status"]["phase"] == "Running")
    });
    let before = pod_uids();
    c.ok(&[
        "delete",
        "deployment",
        "demo",
        "-n",
        "scratch",
        "--cascade=orphan",
    ]);
    let rs = rs_of();
    assert_eq!(rs.len(), 1, "the ReplicaSet stays");
    assert!(
        rs[0]["metadata"]["ownerReferences"]
            .as_array()
            .is_none_or(|r| r.is_empty()),
        "and is released: {}",
        rs[0]
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(pod_uids(), before, "its pod stays");
    c.ok(&["apply", "-n", "scratch", "-f", path.to_str().unwrap()]);
    c.wait_for("the ReplicaSet adopted", Duration::from_secs(30), || {
        rs_of()
            .first()
            .is_some_and(|r| r["metadata"]["ownerReferences"][0]["kind"] == "Deployment")
    });
    assert_eq!(rs_of().len(), 1, "no second ReplicaSet");
    assert_eq!(pod_uids(), before, "the same pod serves");
    // --cascade=foreground: the Deployment stays until its ReplicaSet and pod
    // are gone (`delete` waits for that).
    c.ok(&[
        "delete",
        "deployment",
        "demo",
        "-n",
        "scratch",
        "--cascade=foreground",
    ]);
    assert!(rs_of().is_empty(), "dependents went first");
    assert!(pod_uids().is_empty(), "dependents went first");
    c.ok(&["apply", "-n", "scratch", "-f", path.to_str().unwrap()]);
    c.wait_for("a pod in scratch again", Duration::from_secs(60), || {
        !pod_uids().is_empty()
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
