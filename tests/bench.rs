//! `bramble bench --quick` runs to the end: every figure on Bramble's side
//! (the idle ones for `bramble up` and for a split cluster's worker and
//! master), and on the peers' side (Docker, Swarm, crun) where they can be
//! installed and started — otherwise the report says "peer skipped: why".
//! Asserts the shape of the report and that the peers left nothing behind;
//! never a time.

use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_bramble");

fn links() -> Vec<String> {
    let out = Command::new("ip")
        .args(["-o", "link", "show"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let name = l.split(':').nth(1)?.trim();
            Some(name.split('@').next()?.to_string())
        })
        .collect()
}

fn bench_dirs() -> Vec<String> {
    ["/run", "/var/lib"]
        .iter()
        .flat_map(|d| std::fs::read_dir(d).into_iter().flatten())
        .filter_map(|e| e.ok())
        .map(|e| e.path().display().to_string())
        .filter(|p| p.contains("bramble-bench-"))
        .collect()
}

#[test]
fn quick_bench_runs_to_the_end() {
    let links_before = links();
    let dirs_before = bench_dirs();
    let work = tempfile::tempdir().unwrap();
    let out_file = work.path().join("bench.json");
    let out = Command::new(BIN)
        .args(["bench", "--quick", "--format", "json", "--work-dir"])
        .arg(work.path())
        .arg("--output")
        .arg(&out_file)
        .output()
        .expect("bramble bench runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "bramble bench --quick failed:\n{stderr}"
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out_file).unwrap()).unwrap();

    let rows = report["rows"].as_array().unwrap();
    let figures: Vec<&str> = rows.iter().map(|r| r["figure"].as_str().unwrap()).collect();
    for expected in [
        "pod/container start",
        "idle memory: RSS",
        "idle memory: PSS",
        "idle CPU",
        "disk written while idle",
        "container killed → replacement serving",
        "scale 1 → 10 replicas",
        "command round trip",
    ] {
        assert!(
            figures.iter().any(|f| f.starts_with(expected)),
            "no {expected:?} row in {figures:?}\n{stderr}"
        );
    }
    // Every idle figure has a row for each Bramble setup: the one-process
    // `up`, and the worker and the master of a split cluster.
    for figure in ["idle memory: RSS", "idle CPU", "disk written while idle"] {
        let setups: Vec<&str> = rows
            .iter()
            .filter(|r| r["figure"].as_str().unwrap().starts_with(figure))
            .map(|r| r["bramble_setup"].as_str().unwrap())
            .collect();
        for role in [
            "`bramble up`",
            "`bramble worker` alone",
            "`bramble master` alone",
        ] {
            assert!(
                setups.iter().any(|s| s.starts_with(role)),
                "no {role} row for {figure:?}: {setups:?}"
            );
        }
    }
    let notes: Vec<&str> = report["notes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    let wrk_present = !notes
        .iter()
        .any(|n| n.starts_with("proxy throughput skipped"));
    if wrk_present {
        assert!(
            figures
                .iter()
                .any(|f| f.starts_with("HTTP keep-alive throughput"))
        );
    }
    for row in rows {
        // Bramble's side is always measured (a node IP aside, which a
        // machine without a default route lacks).
        let b = &row["bramble"];
        assert!(
            b.get("measured").is_some()
                || b["skipped"].as_str().is_some_and(|w| w.contains("node IP")),
            "Bramble side not measured: {row}\n{stderr}"
        );
        // The peer's side is measured or says why not.
        let p = &row["peer"];
        assert!(
            p.get("measured").is_some() || p["skipped"].as_str().is_some_and(|w| !w.is_empty()),
            "peer side neither measured nor skipped with a reason: {row}"
        );
    }
    let docker_skipped = rows
        .iter()
        .filter(|r| r["peer_setup"].as_str().unwrap().contains("docker run"))
        .any(|r| r["peer"].get("skipped").is_some());
    if docker_skipped {
        assert!(
            notes.iter().any(|n| n.starts_with("peer skipped: ")) || stderr.contains("peer failed"),
            "Docker's row is empty but no note says why: {notes:?}"
        );
    }

    // The peers' shutdown left nothing the bench made.
    let links_after = links();
    for docker_link in ["docker0", "docker_gwbridge"] {
        if !links_before.iter().any(|l| l == docker_link) {
            assert!(
                !links_after.iter().any(|l| l == docker_link),
                "{docker_link} left behind"
            );
        }
    }
    let new_dirs: Vec<String> = bench_dirs()
        .into_iter()
        .filter(|d| !dirs_before.contains(d))
        .collect();
    assert!(new_dirs.is_empty(), "left behind: {new_dirs:?}");
    assert_eq!(
        report["left_behind"].as_array().map(Vec::len),
        Some(0),
        "the report lists leftovers: {}",
        report["left_behind"]
    );
    let dockerd_left = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .any(|c| String::from_utf8_lossy(&c).contains("bramble-bench-"));
    assert!(
        !dockerd_left,
        "a process of the bench's dockerd is still running"
    );
    assert!(
        std::fs::read_dir(work.path()).unwrap().all(|e| e
            .unwrap()
            .file_name()
            .to_str()
            .is_some_and(|n| n == "bench.json")),
        "scratch files left in {}",
        Path::new(work.path()).display()
    );
}
