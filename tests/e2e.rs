//! End to end on the real parts: `bramble up --demo` in a temp dir (embedded
//! broker, redb, libcontainer, network namespaces, the proxy), then HTTP from
//! both pods through the NodePort and the ClusterIP, a container killed with
//! SIGKILL and restarted, scaling to 3 and to 0, and a delete that leaves
//! nothing behind. The same slice runs once more with Debian's Mosquitto as
//! the broker.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{Cluster, ClusterOptions, entries, free_port, who_answers};

const DEMO: &str = "app=demo";

fn names(pods: &[serde_json::Value]) -> Vec<String> {
    pods.iter()
        .map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
        .collect()
}

/// The pid of a container's init process, from libcontainer's state file.
fn container_pid(c: &Cluster, container_id: &str) -> i32 {
    let state = c
        .layout()
        .container_state()
        .join(container_id)
        .join("state.json");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    v["pid"].as_i64().unwrap() as i32
}

/// The pods' cgroups: `<prefix>/<container>` in every hierarchy mounted,
/// whether cgroup v1 (one per controller, this machine) or v2 (the unified
/// one, a Pi with Raspberry Pi OS).
fn cgroup_children(c: &Cluster) -> Vec<std::path::PathBuf> {
    let prefix = c.layout().cgroup_prefix();
    let hierarchies = bramble::runtime::linux::cgroup_hierarchies();
    assert!(!hierarchies.is_empty(), "no cgroup hierarchy mounted");
    let mut out = Vec::new();
    for root in hierarchies {
        let dir = root.join(&prefix);
        out.extend(entries(&dir).into_iter().filter(|p| p.is_dir()));
    }
    out
}

fn bridge_ports(bridge: &str) -> String {
    let out = Command::new("ip")
        .args(["-o", "link", "show", "master", bridge])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Mount points at or under any of `dirs`, from this process's mountinfo
/// (which lists bind mounts, overlays, tmpfs volumes and netns files alike).
fn mounts_under(dirs: &[&Path]) -> Vec<String> {
    let roots: Vec<String> = dirs
        .iter()
        .map(|d| {
            std::fs::canonicalize(d)
                .unwrap_or(d.to_path_buf())
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| {
            // `id parent maj:min root mount-point ...`, spaces escaped as \040.
            l.split(' ').nth(4).is_some_and(|m| {
                let m = m.replace("\\040", " ");
                roots
                    .iter()
                    .any(|r| m == *r || m.starts_with(&format!("{r}/")))
            })
        })
        .map(String::from)
        .collect()
}

fn the_slice(c: &Cluster) {
    c.wait_for(
        "two demo pods Running and Ready",
        Duration::from_secs(90),
        || c.running_ready(DEMO).len() == 2,
    );
    let pods = c.running_ready(DEMO);
    let pod_names = names(&pods);
    let wide = c.ok(&["get", "pods", "-o", "wide"]);
    for p in &pods {
        let ip = p["status"]["podIP"].as_str().unwrap();
        assert!(
            wide.contains(ip),
            "wide output shows the pod IP {ip}:\n{wide}"
        );
    }
    assert!(
        wide.contains(&c.node),
        "wide output names the node:\n{wide}"
    );

    // Through the NodePort, both pods answer.
    let node_port = format!("127.0.0.1:{}", c.node_port);
    c.wait_for(
        "both pods through the NodePort",
        Duration::from_secs(30),
        || who_answers(&node_port, &pod_names, 10).len() == 2,
    );
    // Through the ClusterIP too.
    let svc = c.json(&["get", "svc", "demo"]);
    let cluster_ip = svc["spec"]["clusterIP"].as_str().unwrap().to_string();
    assert!(
        cluster_ip.starts_with(&format!("10.{}.128.", c.net.octet)),
        "{cluster_ip}"
    );
    let via_cluster_ip = format!("{cluster_ip}:80");
    c.wait_for(
        "both pods through the ClusterIP",
        Duration::from_secs(30),
        || who_answers(&via_cluster_ip, &pod_names, 10).len() == 2,
    );
    let eps = c.ok(&["get", "endpoints", "demo"]);
    for p in &pods {
        assert!(
            eps.contains(p["status"]["podIP"].as_str().unwrap()),
            "{eps}"
        );
    }

    // kill -9 one container's process: it comes back and serves again.
    let victim = &pods[0];
    let victim_name = victim["metadata"]["name"].as_str().unwrap().to_string();
    let cid = victim["status"]["containerStatuses"][0]["containerID"]
        .as_str()
        .unwrap()
        .trim_start_matches("bramble://")
        .to_string();
    let pid = container_pid(c, &cid);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    c.wait_for(
        "the killed container restarted",
        Duration::from_secs(60),
        || {
            let p = c.json(&["get", "pod", &victim_name]);
            p["status"]["containerStatuses"][0]["restartCount"]
                .as_i64()
                .unwrap_or(0)
                >= 1
                && p["status"]["containerStatuses"][0]["ready"] == true
        },
    );
    let p = c.json(&["get", "pod", &victim_name]);
    assert_eq!(
        p["status"]["containerStatuses"][0]["lastState"]["terminated"]["exitCode"],
        137
    );
    c.wait_for("the restarted pod serving", Duration::from_secs(30), || {
        who_answers(&node_port, std::slice::from_ref(&victim_name), 10).len() == 1
    });
    // Events of the whole story, as describe shows them.
    let described = c.ok(&["describe", "pod", &victim_name]);
    for what in [
        "Scheduled",
        "Successfully assigned default/",
        "Started container web",
    ] {
        assert!(
            described.contains(what),
            "describe shows {what:?}:\n{described}"
        );
    }
    let events = c.ok(&["get", "events"]);
    assert!(
        events.contains("SuccessfulCreate") && events.contains("ScalingReplicaSet"),
        "{events}"
    );

    // The restarted container's log, through the node's signed stream.
    let logs = c.ok(&["logs", &victim_name]);
    assert!(
        logs.contains(&format!("demo: serving {victim_name}")),
        "logs: {logs:?}"
    );
    let logs = c.ok(&["logs", "deploy/demo", "--tail", "1"]);
    assert_eq!(logs.lines().count(), 1, "--tail 1: {logs:?}");

    // Scale to 3, then to 0.
    c.ok(&["scale", "deployment/demo", "--replicas=3"]);
    c.wait_for("three pods", Duration::from_secs(60), || {
        c.running_ready(DEMO).len() == 3
    });
    let three = names(&c.running_ready(DEMO));
    c.wait_for("all three answering", Duration::from_secs(30), || {
        who_answers(&node_port, &three, 20).len() == 3
    });
    c.ok(&["scale", "deployment/demo", "--replicas=0"]);
    c.wait_for("no pods", Duration::from_secs(60), || {
        c.pods(DEMO).is_empty()
    });
    assert!(
        common::http_get(&node_port).is_none(),
        "no endpoint, no answer"
    );

    // Back to 2 and delete the Deployment: everything it held goes.
    c.ok(&["scale", "deployment/demo", "--replicas=2"]);
    c.wait_for("two pods again", Duration::from_secs(60), || {
        c.running_ready(DEMO).len() == 2
    });
    assert!(
        !cgroup_children(c).is_empty(),
        "pods have cgroups while they run"
    );
    assert!(
        !bridge_ports(&c.bridge).is_empty(),
        "pods have veths while they run"
    );
    assert!(
        !mounts_under(&[&c.dir, &c.layout().run_dir]).is_empty(),
        "pods have mounts (netns files at least) while they run"
    );
    let out = c.ok(&["delete", "deployment", "demo"]);
    assert!(out.contains("deployment.apps \"demo\" deleted"), "{out}");
    c.wait_for("every pod gone", Duration::from_secs(60), || {
        c.pods(DEMO).is_empty()
    });
    c.wait_for(
        "containers, veths, netns, mounts and cgroups gone",
        Duration::from_secs(30),
        || {
            entries(&c.layout().container_state()).is_empty()
                && bridge_ports(&c.bridge).is_empty()
                && entries(&c.layout().netns_dir()).is_empty()
                && mounts_under(&[&c.dir, &c.layout().run_dir]).is_empty()
                && cgroup_children(c).is_empty()
        },
    );
    assert!(c.ok(&["get", "rs"]).is_empty(), "ReplicaSet collected");
}

#[test]
fn demo_slice_on_the_embedded_broker() {
    let c = Cluster::start(ClusterOptions {
        demo: true,
        broker: None,
    });
    the_slice(&c);
}

struct Mosquitto(Child, std::path::PathBuf);

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        let _ = std::fs::remove_file(&self.1);
    }
}

#[test]
fn demo_slice_on_mosquitto() {
    let port = free_port();
    let conf = std::env::temp_dir().join(format!("bramble-mosquitto-{port}.conf"));
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
    let _mosquitto = Mosquitto(child, conf);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "mosquitto did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let c = Cluster::start(ClusterOptions {
        demo: true,
        broker: Some(format!("mqtt://127.0.0.1:{port}")),
    });
    the_slice(&c);
}

/// SIGTERM while `bramble up` is still starting (deploying the demo) is a
/// clean stop too: the handler is in place before anything starts, so the
/// agent exits with status 0 and removes its pid file instead of dying of
/// the signal's default action.
#[test]
fn a_signal_during_startup_stops_cleanly() {
    let mut c = Cluster::launch(
        ClusterOptions {
            demo: true,
            broker: None,
        },
        &[],
    );
    let pid_file = c.layout().pid_file();
    // Polled closely, so the signal lands while the demo is being deployed.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !pid_file.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "no pid file\n{}",
            c.log_tail()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // Cluster::stop insists on exit status 0 and the pid file gone.
    c.stop();
    // And Ctrl-C once it runs.
    c.restart();
    c.stop_with(nix::sys::signal::Signal::SIGINT);
}
