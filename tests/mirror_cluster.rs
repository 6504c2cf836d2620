//! Air-gapped images across the cluster: the demo image is imported on the
//! master only (`bramble image import`), the workers' stores start empty and
//! no registry answers for `bramble.local`, yet a Deployment's pods run on
//! every worker: each pulled the image from the master's registry mirror
//! (real processes in their own network namespaces, real containers).

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use bramble::runtime::ImageStore;
use common::multi::{DemoImage, TestCluster, TestClusterOptions};

const WEB: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 4
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
          imagePullPolicy: IfNotPresent
          ports:
            - name: http
              containerPort: 8080
"#;

fn store_of(data_dir: &std::path::Path) -> ImageStore {
    let layout = bramble::config::Layout::new(data_dir).unwrap();
    ImageStore::open(&layout.images()).unwrap()
}

#[test]
fn workers_run_an_image_imported_on_the_master_only() {
    let c = TestCluster::start_with(
        TestClusterOptions {
            workers: 2,
            master_args: vec![],
            broker: None,
        },
        DemoImage::OnMasterOnly,
    );
    let on_master = store_of(&c.master.data_dir).list().unwrap();
    assert_eq!(on_master.len(), 1, "{on_master:?}");
    let digest = on_master[0].digest.clone();
    for w in &c.workers {
        assert!(
            store_of(&w.data_dir).list().unwrap().is_empty(),
            "{} starts without images",
            w.name
        );
    }

    let path = c.dir.join("web.yaml");
    std::fs::write(&path, WEB).unwrap();
    c.ok(&["apply", "-f", path.to_str().unwrap()]);
    c.wait_for(
        "4 pods Running and Ready on both workers",
        Duration::from_secs(60),
        || {
            let pods = c.running_ready("app=web");
            let nodes: BTreeSet<&str> = pods
                .iter()
                .filter_map(|p| p["spec"]["nodeName"].as_str())
                .collect();
            pods.len() == 4 && nodes.len() == 2
        },
    );

    // Each worker now holds the master's image, pulled from its mirror.
    for w in &c.workers {
        let images = store_of(&w.data_dir).list().unwrap();
        assert_eq!(images.len(), 1, "{}: {images:?}", w.name);
        assert_eq!(images[0].reference, "bramble.local/demo:v1");
        assert_eq!(images[0].digest, digest, "{}", w.name);
        assert!(
            w.log()
                .contains("pulls ask the master's registry mirror first"),
            "{}",
            w.log_tail(30)
        );
    }
    // And the containers run the image: each serves its demo page (no
    // readiness probe: httpd may need a moment after Ready).
    for p in c.running_ready("app=web") {
        let name = p["metadata"]["name"].as_str().unwrap().to_string();
        c.wait_for(&format!("{name} serving"), Duration::from_secs(20), || {
            let out = c.bramble(&[
                "exec",
                &name,
                "--",
                "wget",
                "-qO-",
                "http://127.0.0.1:8080/",
            ]);
            String::from_utf8_lossy(&out.stdout).contains(&name)
        });
    }
}
