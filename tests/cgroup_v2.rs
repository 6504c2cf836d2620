//! Resource limits on cgroup v2 (the Pi's layout), checked on any machine:
//! the OCI spec Bramble builds for a container is applied by libcontainer's
//! own v2 cgroup manager (`libcgroups`, the code that runs on a v2 node) to a
//! directory laid out like a v2 cgroup, and the files it writes are read
//! back. This machine mounts cgroup v1, so the end-to-end tests only ever
//! see v1 files; this pins the v2 names and values: `memory.max`,
//! `memory.swap.max`, `cpu.max`, `cpu.weight` (from shares, with the formula
//! runc and crun use: 2 → 1, 1024 → 100), `pids.max`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bramble::runtime::spec::{EtcFiles, SpecInputs, build_spec};
use bramble::runtime::{ContainerConfig, Resources};
use libcgroups::common::{CgroupManager, ControllerOpt};
use oci_spec::image::ImageConfiguration;

/// The files of a v2 cgroup a limit is written to. They start empty (a
/// write to a regular file does not replace it as a cgroup file's does), so
/// what is read back is exactly what was written.
const V2_FILES: &[&str] = &[
    "cgroup.subtree_control",
    "cgroup.procs",
    "cpu.max",
    "cpu.weight",
    "cpu.idle",
    "memory.max",
    "memory.swap.max",
    "memory.low",
    "memory.high",
    "pids.max",
];

/// A cgroup v2 root at `root` with the container's cgroup `rel` in it.
fn v2_tree(root: &Path, rel: &Path) -> PathBuf {
    std::fs::write(
        root.join("cgroup.controllers"),
        "cpuset cpu io memory hugetlb pids",
    )
    .unwrap();
    let mut dir = root.to_path_buf();
    for part in rel.components().skip(1) {
        dir = dir.join(part);
        std::fs::create_dir_all(&dir).unwrap();
        for name in V2_FILES {
            std::fs::write(dir.join(name), "").unwrap();
        }
    }
    dir
}

/// The limit files written, and what was written to them.
fn written(dir: &Path) -> BTreeMap<String, String> {
    V2_FILES
        .iter()
        .filter(|f| !f.starts_with("cgroup."))
        .filter_map(|f| {
            let v = std::fs::read_to_string(dir.join(f)).unwrap();
            (!v.is_empty()).then(|| (f.to_string(), v.trim().to_string()))
        })
        .collect()
}

/// Applies the spec Bramble builds for `resources` with libcgroups' v2
/// manager, and returns the files it wrote.
fn apply_v2(resources: Resources, limit_swap: bool) -> BTreeMap<String, String> {
    let image: ImageConfiguration = serde_json::from_value(serde_json::json!({
        "architecture": "arm64", "os": "linux",
        "config": {"Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": []}
    }))
    .unwrap();
    let config = ContainerConfig {
        id: "p-c-0".into(),
        container_name: "c".into(),
        image: "x".into(),
        hostname: "p".into(),
        resources,
        ..Default::default()
    };
    let etc = EtcFiles {
        hosts: "/h".into(),
        resolv_conf: "/r".into(),
        hostname: "/n".into(),
    };
    let cgroups_path = PathBuf::from("/bramble/0123abcd/p-c-0");
    let spec = build_spec(&SpecInputs {
        config: &config,
        image: &image,
        rootfs: Path::new("/rootfs"),
        cgroups_path: cgroups_path.clone(),
        etc: &etc,
        passwd: None,
        group: None,
        limit_swap,
        host_devices: &[],
        available_caps: (1 << 41) - 1,
    })
    .unwrap();
    let linux = spec.linux().as_ref().unwrap();
    assert_eq!(
        linux.cgroups_path().as_deref(),
        Some(cgroups_path.as_path())
    );
    let root = tempfile::tempdir().unwrap();
    let dir = v2_tree(root.path(), &cgroups_path);
    let manager =
        libcgroups::v2::manager::Manager::new(root.path().to_path_buf(), cgroups_path).unwrap();
    manager
        .apply(&ControllerOpt {
            resources: linux.resources().as_ref().unwrap(),
            disable_oom_killer: false,
            oom_score_adj: None,
            freezer_state: None,
        })
        .unwrap();
    written(&dir)
}

fn files(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn limits_and_requests_become_v2_files() {
    // limits {cpu: 250m, memory: 48Mi}, request cpu 250m, the node's pids cap.
    let got = apply_v2(
        Resources {
            memory_limit_bytes: Some(48 << 20),
            cpu_limit_millis: Some(250),
            cpu_request_millis: Some(250),
            pids_limit: Some(4096),
        },
        true,
    );
    assert_eq!(
        got,
        files(&[
            ("memory.max", "50331648"),
            // A memory limit bars swap too, as the kubelet's NoSwap does.
            ("memory.swap.max", "0"),
            ("cpu.max", "25000 100000"),
            // shares 256 → weight ⌈10^((l² + 125 l) / 612 − 7/34)⌉, l = log2 256.
            ("cpu.weight", "35"),
            ("pids.max", "4096"),
        ])
    );
}

#[test]
fn best_effort_gets_the_minimum_weight_and_no_limits() {
    let got = apply_v2(Resources::default(), true);
    assert_eq!(
        got,
        // shares 2 (the kubelet's minimum) → weight 1; nothing else is
        // limited, so the kernel's defaults (`max`) stay.
        files(&[("cpu.weight", "1")])
    );
}

#[test]
fn without_swap_accounting_swap_is_left_alone() {
    let got = apply_v2(
        Resources {
            memory_limit_bytes: Some(64 << 20),
            cpu_limit_millis: Some(1500),
            cpu_request_millis: Some(1000),
            pids_limit: None,
        },
        false,
    );
    assert_eq!(
        got,
        files(&[
            // memory.swap.max not written: the kernel's default stays.
            ("memory.max", "67108864"),
            ("cpu.max", "150000 100000"),
            // shares 1024 (one CPU) → weight 100, the v2 default.
            ("cpu.weight", "100"),
        ])
    );
}
