//! Every write the CLI saw acknowledged survives `kill -9` of the master:
//! the store commits durably before the master replies.

mod common;

use common::{Cluster, ClusterOptions};

#[test]
fn acknowledged_applies_survive_kill_9_of_the_master() {
    let mut c = Cluster::start(ClusterOptions {
        demo: false,
        broker: None,
    });
    let manifests = c.dir.join("cm");
    std::fs::create_dir_all(&manifests).unwrap();
    let mut acked = Vec::new();
    for i in 0..20 {
        let file = manifests.join(format!("cm{i}.yaml"));
        std::fs::write(
            &file,
            format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: acked-{i}\ndata:\n  n: \"{i}\"\n"),
        )
        .unwrap();
        let out = c.ok(&["apply", "-f", file.to_str().unwrap()]);
        assert!(
            out.contains(&format!("configmap/acked-{i} created")),
            "{out}"
        );
        acked.push(i);
    }
    c.kill9();
    c.restart();
    let list = c.json(&["get", "configmaps"]);
    let items = list["items"].as_array().unwrap();
    for i in acked {
        let cm = items
            .iter()
            .find(|cm| cm["metadata"]["name"] == format!("acked-{i}"))
            .unwrap_or_else(|| panic!("acked-{i} lost after kill -9"));
        assert_eq!(cm["data"]["n"], i.to_string());
    }
}
