//! The pod's shape, volumes and resources on the real parts (`bramble up`,
//! libcontainer, network namespaces, cgroups, tmpfs): containers of one pod
//! on localhost and sharing an emptyDir, env from every source with `$(VAR)`
//! expansion, configMap/secret/projected volumes updated in place (subPath
//! not), hostPath type checks, runAsUser/runAsGroup, a read-only root, a
//! workingDir the image lacks, privileged devices, host network, a hostPort, cgroup limits, an OOM kill,
//! configuration errors, and a pod too big for the node.
//!
//! One cluster serves every case (pods start side by side), so the file costs
//! one `bramble up`.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{Cluster, ClusterOptions, free_node_port, http_get};

const IMAGE: &str = "bramble.local/demo:v1";

/// `get -o json`, or `null` when the CLI fails (a condition being waited
/// on is then simply not met yet).
fn try_json(c: &Cluster, args: &[&str]) -> serde_json::Value {
    let mut a = args.to_vec();
    a.extend(["-o", "json"]);
    let out = c.bramble(&a);
    serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
}

fn pod_json(c: &Cluster, name: &str) -> serde_json::Value {
    try_json(c, &["get", "pod", name])
}

fn logs(c: &Cluster, pod: &str, container: &str) -> String {
    let out = c.bramble(&["logs", pod, "-c", container]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn wait_log(c: &Cluster, pod: &str, container: &str, needle: &str) -> String {
    let mut last = String::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while std::time::Instant::now() < deadline {
        last = logs(c, pod, container);
        if last.contains(needle) {
            return last;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    panic!(
        "{pod}/{container} never logged {needle:?}; logs:\n{last}\nstatus: {}\n{}",
        pod_json(c, pod)["status"],
        c.log_tail()
    );
}

/// The state of the pod's first (or named) container status.
fn container_state(c: &Cluster, pod: &str) -> serde_json::Value {
    pod_json(c, pod)["status"]["containerStatuses"][0]["state"].clone()
}

fn runtime_id(c: &Cluster, pod: &str, container: &str) -> String {
    let p = pod_json(c, pod);
    let statuses = p["status"]["containerStatuses"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let s = statuses
        .iter()
        .find(|s| s["name"] == container)
        .unwrap_or_else(|| panic!("no status for {pod}/{container}: {p}"));
    s["containerID"]
        .as_str()
        .and_then(|id| id.strip_prefix("bramble://"))
        .unwrap_or_else(|| panic!("no containerID for {pod}/{container}: {p}"))
        .to_string()
}

fn cgroup_file(c: &Cluster, controller: &str, id: &str, file: &str) -> String {
    let path = Path::new("/sys/fs/cgroup")
        .join(controller)
        .join(c.layout().cgroup_prefix())
        .join(id)
        .join(file);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .to_string()
}

fn mount_of(path: &Path) -> Option<String> {
    let real = std::fs::canonicalize(path).ok()?;
    let real = real.to_str()?.to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .ok()?
        .lines()
        .find(|l| l.split(' ').nth(4) == Some(real.as_str()))
        .map(String::from)
}

fn manifests(c: &Cluster, host_port: u16) -> String {
    let hp = c.dir.join("hostpath");
    format!(
        r#"
apiVersion: v1
kind: ConfigMap
metadata: {{name: cfg}}
data:
  who: world
  mode: fast
  greeting.txt: v1
---
apiVersion: v1
kind: Secret
metadata: {{name: creds}}
data:
  password: cHc=
stringData:
  token: s3cret
---
apiVersion: v1
kind: Pod
metadata: {{name: shape}}
spec:
  restartPolicy: Never
  volumes:
    - name: shared
      emptyDir: {{}}
    - name: mem
      emptyDir: {{medium: Memory, sizeLimit: 16Mi}}
  containers:
    - name: server
      image: {IMAGE}
      imagePullPolicy: Never
      command: [sh, -c, "mkdir -p /www && echo served-over-localhost > /www/index.html && echo shared-by-server > /shared/note && exec httpd -f -p 9000 -h /www"]
      volumeMounts: [{{name: shared, mountPath: /shared}}]
    - name: client
      image: {IMAGE}
      imagePullPolicy: Never
      command: [sh, -c, "until wget -q -O - http://127.0.0.1:9000/ 2>/dev/null; do sleep 0.2; done; until [ -f /shared/note ]; do sleep 0.2; done; cat /shared/note; grep ' /mem ' /proc/mounts; echo client-done; exec sleep 3600"]
      volumeMounts: [{{name: shared, mountPath: /shared}}, {{name: mem, mountPath: /mem}}]
---
apiVersion: v1
kind: Pod
metadata:
  name: env
  labels: {{app: envtest}}
spec:
  restartPolicy: Never
  containers:
    - name: main
      image: {IMAGE}
      imagePullPolicy: Never
      command: [sh, -c, 'env | sort; echo "ARG1=$1 ARG2=$2"; exec sleep 3600', sh, "$(FROM_CM)", "$$(FROM_CM)"]
      envFrom:
        - configMapRef: {{name: cfg}}
          prefix: CFG_
        - secretRef: {{name: creds}}
      env:
        - {{name: LITERAL, value: plain}}
        - name: FROM_CM
          valueFrom: {{configMapKeyRef: {{name: cfg, key: mode}}}}
        - name: FROM_SECRET
          valueFrom: {{secretKeyRef: {{name: creds, key: token}}}}
        - name: OPTIONAL
          valueFrom: {{secretKeyRef: {{name: creds, key: absent, optional: true}}}}
        - name: POD_NAME
          valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}
        - name: POD_NS
          valueFrom: {{fieldRef: {{fieldPath: metadata.namespace}}}}
        - name: POD_IP
          valueFrom: {{fieldRef: {{fieldPath: status.podIP}}}}
        - name: NODE
          valueFrom: {{fieldRef: {{fieldPath: spec.nodeName}}}}
        - name: APP
          valueFrom: {{fieldRef: {{fieldPath: "metadata.labels['app']"}}}}
        - {{name: EXPANDED, value: "$(POD_NAME)-$(FROM_CM)-$(NOPE)-$$(POD_NAME)"}}
---
apiVersion: v1
kind: Pod
metadata:
  name: vols
  labels: {{tier: backend}}
spec:
  restartPolicy: Never
  volumes:
    - name: picked
      configMap:
        name: cfg
        items: [{{key: greeting.txt, path: conf/greeting, mode: 384}}]
    - name: all
      configMap: {{name: cfg}}
    - name: secret
      secret: {{secretName: creds, defaultMode: 256}}
    - name: proj
      projected:
        sources:
          - downwardAPI:
              items:
                - {{path: labels, fieldRef: {{fieldPath: metadata.labels}}}}
                - {{path: name, fieldRef: {{fieldPath: metadata.name}}}}
          - configMap: {{name: cfg, items: [{{key: who, path: who}}]}}
  containers:
    - name: main
      image: {IMAGE}
      imagePullPolicy: Never
      command: [sh, -c, "ls -lL /cfg/conf/greeting /secret/token; grep ' /secret ' /proc/mounts; echo PROJ `cat /proj/labels` `cat /proj/name` `cat /proj/who`; while true; do echo CFG=`cat /cfg/conf/greeting` SUB=`cat /sub/greeting.txt` ALL=`cat /all/greeting.txt`; sleep 0.5; done"]
      volumeMounts:
        - {{name: picked, mountPath: /cfg}}
        - {{name: all, mountPath: /all}}
        - {{name: all, mountPath: /sub/greeting.txt, subPath: greeting.txt}}
        - {{name: secret, mountPath: /secret}}
        - {{name: proj, mountPath: /proj}}
---
apiVersion: v1
kind: Pod
metadata: {{name: hostpath}}
spec:
  restartPolicy: Never
  volumes:
    - name: made
      hostPath: {{path: {hp}/made, type: DirectoryOrCreate}}
    - name: file
      hostPath: {{path: {hp}/given.txt, type: File}}
  containers:
    - name: main
      image: {IMAGE}
      imagePullPolicy: Never
      command: [sh, -c, "cat /given.txt; echo from-container > /made/out; echo hostpath-done; exec sleep 3600"]
      volumeMounts: [{{name: made, mountPath: /made}}, {{name: file, mountPath: /given.txt}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: hostpath-missing}}
spec:
  restartPolicy: Never
  volumes:
    - name: file
      hostPath: {{path: {hp}/missing.txt, type: File}}
  containers:
    - name: main
      image: {IMAGE}
      imagePullPolicy: Never
      volumeMounts: [{{name: file, mountPath: /f}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: ids}}
spec:
  restartPolicy: Never
  securityContext: {{runAsUser: 1234, runAsGroup: 5678, supplementalGroups: [777]}}
  containers:
    - name: main
      image: {IMAGE}
      imagePullPolicy: Never
      securityContext: {{readOnlyRootFilesystem: true}}
      workingDir: /made/here
      command: [sh, -c, "pwd; ls -ld /made/here; id; touch /written 2>/dev/null && echo ROOTFS-WRITABLE || echo ROOTFS-READONLY; exec sleep 3600"]
---
apiVersion: v1
kind: Pod
metadata: {{name: privileged}}
spec:
  restartPolicy: Never
  hostPID: true
  containers:
    - name: main
      image: {IMAGE}
      imagePullPolicy: Never
      securityContext: {{privileged: true}}
      command: [sh, -c, "ls /dev; grep CapEff /proc/self/status; echo PID1=`cat /proc/1/comm`; echo priv-done; exec sleep 3600"]
---
apiVersion: v1
kind: Pod
metadata: {{name: unprivileged}}
spec:
  restartPolicy: Never
  containers:
    - name: main
      image: {IMAGE}
      imagePullPolicy: Never
      command: [sh, -c, "ls /dev; echo PID1=`cat /proc/1/comm`; echo unpriv-done; exec sleep 3600"]
---
apiVersion: v1
kind: Pod
metadata: {{name: hostnet}}
spec:
  restartPolicy: Never
  hostNetwork: true
  containers:
    - name: main
      image: {IMAGE}
      imagePullPolicy: Never
      command: [sh, -c, "ls /sys/class/net; echo hostnet-done; exec sleep 3600"]
---
apiVersion: v1
kind: Pod
metadata: {{name: hostport}}
spec:
  containers:
    - name: web
      image: {IMAGE}
      imagePullPolicy: Never
      ports: [{{containerPort: 8080, hostPort: {host_port}}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: limited}}
spec:
  restartPolicy: Never
  containers:
    - name: main
      image: {IMAGE}
      imagePullPolicy: Never
      command: [sleep, "3600"]
      resources:
        limits: {{cpu: 250m, memory: 48Mi}}
---
apiVersion: v1
kind: Pod
metadata: {{name: oom}}
spec:
  restartPolicy: Never
  containers:
    - name: main
      image: {IMAGE}
      imagePullPolicy: Never
      command: [sh, -c, "a=x; while true; do a=$a$a; done"]
      resources:
        limits: {{memory: 32Mi}}
---
apiVersion: v1
kind: Pod
metadata: {{name: nonroot}}
spec:
  restartPolicy: Never
  securityContext: {{runAsNonRoot: true}}
  containers:
    - name: main
      image: {IMAGE}
      imagePullPolicy: Never
---
apiVersion: v1
kind: Pod
metadata: {{name: missing-key}}
spec:
  restartPolicy: Never
  containers:
    - name: main
      image: {IMAGE}
      imagePullPolicy: Never
      env:
        - name: X
          valueFrom: {{configMapKeyRef: {{name: cfg, key: nope}}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: greedy}}
spec:
  containers:
    - name: main
      image: {IMAGE}
      imagePullPolicy: Never
      resources:
        requests: {{cpu: "1000"}}
"#,
        hp = hp.display()
    )
}

#[test]
fn pod_shape_volumes_and_resources() {
    let c = Cluster::start(ClusterOptions {
        demo: true,
        broker: None,
    });
    let hp = c.dir.join("hostpath");
    std::fs::create_dir_all(&hp).unwrap();
    std::fs::write(hp.join("given.txt"), "given-by-host\n").unwrap();
    let host_port = free_node_port();
    let manifest = c.dir.join("podspec.yaml");
    std::fs::write(&manifest, manifests(&c, host_port)).unwrap();
    c.ok(&["apply", "-f", manifest.to_str().unwrap()]);

    // Two containers of one pod: localhost, a shared emptyDir, a tmpfs one.
    let out = wait_log(&c, "shape", "client", "client-done");
    assert!(out.contains("served-over-localhost"), "{out}");
    assert!(out.contains("shared-by-server"), "{out}");
    let mem_line = out
        .lines()
        .find(|l| l.contains(" /mem "))
        .unwrap_or_default();
    assert!(mem_line.starts_with("tmpfs /mem tmpfs"), "{out}");
    assert!(mem_line.contains("size=16384k"), "{mem_line}");

    // The environment, from every source, and $(VAR) in env, command, args.
    let out = wait_log(&c, "env", "main", "ARG1=");
    let env_pod = pod_json(&c, "env");
    let pod_ip = env_pod["status"]["podIP"].as_str().unwrap().to_string();
    for line in [
        "LITERAL=plain",
        "FROM_CM=fast",
        "FROM_SECRET=s3cret",
        "CFG_who=world",
        "CFG_mode=fast",
        "token=s3cret",
        "password=pw",
        "POD_NAME=env",
        "POD_NS=default",
        &format!("POD_IP={pod_ip}"),
        &format!("NODE={}", c.node),
        "APP=envtest",
        "EXPANDED=env-fast-$(NOPE)-$(POD_NAME)",
        "ARG1=fast ARG2=$(FROM_CM)",
    ] {
        assert!(
            out.lines().any(|l| l == line),
            "missing {line:?} in:\n{out}"
        );
    }
    assert!(!out.contains("OPTIONAL="), "{out}");
    assert_eq!(env_pod["status"]["qosClass"], "BestEffort");

    // configMap, secret and projected volumes.
    let out = wait_log(&c, "vols", "main", "CFG=v1 SUB=v1 ALL=v1");
    let modes: Vec<&str> = out.lines().filter(|l| l.starts_with('-')).collect();
    assert!(
        modes
            .iter()
            .any(|l| l.starts_with("-rw-------") && l.ends_with("/cfg/conf/greeting")),
        "{out}"
    );
    assert!(
        modes
            .iter()
            .any(|l| l.starts_with("-r--------") && l.ends_with("/secret/token")),
        "{out}"
    );
    assert!(
        out.lines().any(|l| l.starts_with("tmpfs /secret tmpfs")),
        "{out}"
    );
    assert!(out.contains("PROJ tier=\"backend\" vols world"), "{out}");
    // On the host, the secret volume is a tmpfs of its own.
    let vols_uid = pod_json(&c, "vols")["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_string();
    let secret_dir = c
        .data_dir
        .join("pods")
        .join(&vols_uid)
        .join("volumes/secret");
    let mount = mount_of(&secret_dir).expect("the secret volume is a mount point");
    assert!(mount.contains(" - tmpfs "), "{mount}");
    // An update of the ConfigMap reaches the files, but not the subPath.
    std::fs::write(
        c.dir.join("cfg2.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cfg}\ndata: {who: world, mode: fast, greeting.txt: v2}\n",
    )
    .unwrap();
    c.ok(&["apply", "-f", c.dir.join("cfg2.yaml").to_str().unwrap()]);
    wait_log(&c, "vols", "main", "CFG=v2 SUB=v1 ALL=v2");

    // hostPath: DirectoryOrCreate creates, File reads, a missing File fails.
    wait_log(&c, "hostpath", "main", "hostpath-done");
    assert!(logs(&c, "hostpath", "main").contains("given-by-host"));
    assert_eq!(
        std::fs::read_to_string(hp.join("made/out")).unwrap(),
        "from-container\n"
    );
    c.wait_for(
        "the missing hostPath reported",
        Duration::from_secs(60),
        || {
            let w = &container_state(&c, "hostpath-missing")["waiting"];
            w["reason"] == "ContainerCreating"
                && w["message"].as_str().is_some_and(|m| {
                    m.contains("hostPath type check failed")
                        && m.contains("missing.txt is not a file")
                })
        },
    );
    c.wait_for("a FailedMount event", Duration::from_secs(30), || {
        c.ok(&["get", "events"]).contains("FailedMount")
    });

    // runAsUser/runAsGroup/supplementalGroups, and a read-only root; a
    // workingDir the image lacks is made (0755, root's, as runc makes it).
    let out = wait_log(&c, "ids", "main", "ROOTFS-");
    assert!(out.lines().any(|l| l == "/made/here"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("drwxr-xr-x") && l.contains(" root ")),
        "{out}"
    );
    assert!(out.contains("uid=1234 gid=5678"), "{out}");
    assert!(out.contains("777"), "{out}");
    assert!(out.contains("ROOTFS-READONLY"), "{out}");

    // Privileged: the host's devices and every capability; hostPID.
    let block = std::fs::read_dir("/sys/block")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .find(|n| Path::new("/dev").join(n).exists())
        .expect("a host block device");
    let out = wait_log(&c, "privileged", "main", "priv-done");
    assert!(
        out.lines().any(|l| l == block),
        "/dev/{block} not in:\n{out}"
    );
    let cap_eff = out
        .lines()
        .find(|l| l.starts_with("CapEff"))
        .unwrap_or_default();
    // Every capability this node can give: the agent's bounding set.
    let all = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:").map(|v| v.trim().to_string()))
        .unwrap();
    assert!(cap_eff.ends_with(&all), "{cap_eff} vs {all}");
    assert!(
        !out.contains("PID1=sh"),
        "hostPID shows the host's init: {out}"
    );
    let out = wait_log(&c, "unprivileged", "main", "unpriv-done");
    assert!(!out.lines().any(|l| l == block), "{out}");
    assert!(out.contains("PID1=sh"), "{out}");

    // Host network: the node's interfaces and the node's IP.
    let out = wait_log(&c, "hostnet", "main", "hostnet-done");
    assert!(out.lines().any(|l| l == c.bridge), "{out}");
    let p = pod_json(&c, "hostnet");
    assert_eq!(p["status"]["podIP"], p["status"]["hostIP"]);

    // hostPort: the node's port reaches the pod.
    c.wait_for("the hostPort answering", Duration::from_secs(60), || {
        http_get(&format!("127.0.0.1:{host_port}")).is_some_and(|b| b.contains("hostport"))
    });

    // Limits in the cgroup (v1 on this machine), and the QoS they make.
    c.wait_for("limited running", Duration::from_secs(60), || {
        !container_state(&c, "limited")["running"].is_null()
    });
    let id = runtime_id(&c, "limited", "main");
    assert_eq!(
        cgroup_file(&c, "memory", &id, "memory.limit_in_bytes"),
        (48u64 << 20).to_string()
    );
    assert_eq!(cgroup_file(&c, "cpu", &id, "cpu.cfs_quota_us"), "25000");
    assert_eq!(cgroup_file(&c, "cpu", &id, "cpu.cfs_period_us"), "100000");
    assert_eq!(cgroup_file(&c, "cpu", &id, "cpu.shares"), "256");
    assert_eq!(cgroup_file(&c, "pids", &id, "pids.max"), "4096");
    assert_eq!(pod_json(&c, "limited")["status"]["qosClass"], "Guaranteed");

    // A process past its memory limit is OOMKilled, exit 137.
    c.wait_for("oom terminated", Duration::from_secs(90), || {
        !container_state(&c, "oom")["terminated"].is_null()
    });
    let t = container_state(&c, "oom")["terminated"].clone();
    assert_eq!(t["reason"], "OOMKilled", "{t}");
    assert_eq!(t["exitCode"], 137, "{t}");
    assert_eq!(pod_json(&c, "oom")["status"]["phase"], "Failed");

    // Configuration errors wait as CreateContainerConfigError.
    for (pod, needle) in [
        ("nonroot", "runAsNonRoot"),
        (
            "missing-key",
            "couldn't find key nope in ConfigMap default/cfg",
        ),
    ] {
        c.wait_for(&format!("{pod} refused"), Duration::from_secs(60), || {
            let w = &container_state(&c, pod)["waiting"];
            w["reason"] == "CreateContainerConfigError"
                && w["message"].as_str().is_some_and(|m| m.contains(needle))
        });
    }

    // More CPU than the node has: Pending, and the scheduler says why.
    let greedy = pod_json(&c, "greedy");
    assert_eq!(greedy["status"]["phase"], "Pending", "{greedy}");
    let cond = greedy["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "PodScheduled")
        .cloned()
        .unwrap();
    assert_eq!(cond["status"], "False");
    assert!(
        cond["message"]
            .as_str()
            .unwrap()
            .contains("1 Insufficient cpu"),
        "{cond}"
    );
    let node = c.json(&["get", "node", &c.node]);
    assert!(node["status"]["allocatable"]["cpu"].is_string(), "{node}");
    assert!(
        node["status"]["capacity"]["ephemeral-storage"].is_string(),
        "{node}"
    );

    // Deleting the pods releases their volumes: no mounts, no directories.
    c.ok(&["delete", "-f", manifest.to_str().unwrap()]);
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let pods = try_json(&c, &["get", "pods"]);
        // Only the demo's own pods stay.
        if pods["items"].as_array().is_some_and(|a| {
            a.iter().all(|p| {
                p["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with("demo-"))
            })
        }) {
            break;
        }
        if std::time::Instant::now() > deadline {
            let left: Vec<String> = pods["items"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| format!("{} {}", p["metadata"]["name"], p["status"]))
                .collect();
            panic!("pods not gone:\n{}\n{}", left.join("\n"), c.log_tail());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let pods_dir = c.data_dir.join("pods");
    c.wait_for("pod volumes removed", Duration::from_secs(30), || {
        common::entries(&pods_dir).is_empty()
    });
    let real = std::fs::canonicalize(&c.data_dir).unwrap();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&format!("{}/pods", real.display())),
        "volume mounts left behind"
    );
}
