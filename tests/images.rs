//! The image store against real archives: `docker save` and OCI layout tars
//! built here with the `tar` crate from the host's busybox, and one converted
//! by skopeo; whiteouts checked through a real overlayfs mount.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use bramble::runtime::{ImageStore, Platform, RuntimeError};
use serde_json::json;
use sha2::{Digest, Sha256};

fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

fn hex_of(d: &str) -> &str {
    d.strip_prefix("sha256:").unwrap()
}

enum E<'a> {
    Dir(&'a str),
    File(&'a str, &'a [u8], u32),
    Link(&'a str, &'a str),
}

fn layer(entries: &[E]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_ustar();
        h.set_mtime(1_700_000_000);
        h.set_uid(0);
        h.set_gid(0);
        match e {
            E::Dir(p) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                b.append_data(&mut h, format!("{p}/"), &[][..]).unwrap();
            }
            E::File(p, data, mode) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(*mode);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, p, *data).unwrap();
            }
            E::Link(p, target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_size(0);
                b.append_link(&mut h, p, target).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(data).unwrap();
    gz.finish().unwrap()
}

fn busybox_layer() -> Vec<u8> {
    let bb = std::fs::read("/bin/busybox").unwrap();
    layer(&[
        E::Dir("bin"),
        E::File("bin/busybox", &bb, 0o755),
        E::Link("bin/sh", "busybox"),
    ])
}

fn config(arch: &str, variant: Option<&str>, diff_ids: &[String]) -> Vec<u8> {
    let mut c = json!({
        "architecture": arch,
        "os": "linux",
        "config": {"Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    if let Some(v) = variant {
        c["variant"] = json!(v);
    }
    serde_json::to_vec(&c).unwrap()
}

/// An OCI image layout under construction.
#[derive(Default)]
struct Layout {
    blobs: BTreeMap<String, Vec<u8>>,
    index: Vec<serde_json::Value>,
}

impl Layout {
    fn blob(&mut self, bytes: Vec<u8>) -> serde_json::Value {
        let d = digest(&bytes);
        let v = json!({"digest": d, "size": bytes.len()});
        self.blobs.insert(d, bytes);
        v
    }

    /// Adds a manifest for `layers` (uncompressed tars; stored gzipped when
    /// `gz`) and returns its descriptor.
    fn manifest(
        &mut self,
        arch: &str,
        variant: Option<&str>,
        layers: &[Vec<u8>],
        gz: bool,
    ) -> serde_json::Value {
        let diff_ids: Vec<String> = layers.iter().map(|l| digest(l)).collect();
        let mut cfg = self.blob(config(arch, variant, &diff_ids));
        cfg["mediaType"] = json!("application/vnd.oci.image.config.v1+json");
        let layer_descs: Vec<serde_json::Value> = layers
            .iter()
            .map(|l| {
                let (bytes, mt) = if gz {
                    (gzip(l), "application/vnd.oci.image.layer.v1.tar+gzip")
                } else {
                    (l.clone(), "application/vnd.oci.image.layer.v1.tar")
                };
                let mut d = self.blob(bytes);
                d["mediaType"] = json!(mt);
                d
            })
            .collect();
        let m = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": cfg,
            "layers": layer_descs,
        });
        let mut d = self.blob(serde_json::to_vec(&m).unwrap());
        d["mediaType"] = json!("application/vnd.oci.image.manifest.v1+json");
        let mut p = json!({"architecture": arch, "os": "linux"});
        if let Some(v) = variant {
            p["variant"] = json!(v);
        }
        d["platform"] = p;
        d
    }

    fn index_blob(&mut self, manifests: Vec<serde_json::Value>) -> serde_json::Value {
        let idx = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": manifests,
        });
        let mut d = self.blob(serde_json::to_vec(&idx).unwrap());
        d["mediaType"] = json!("application/vnd.oci.image.index.v1+json");
        d
    }

    fn add(&mut self, mut desc: serde_json::Value, name: Option<&str>) {
        if let Some(n) = name {
            desc["annotations"] = json!({
                "io.containerd.image.name": n,
                "org.opencontainers.image.ref.name": "latest",
            });
        }
        self.index.push(desc);
    }

    fn tar(&self) -> Vec<u8> {
        let mut files: Vec<(String, Vec<u8>)> = vec![
            (
                "oci-layout".into(),
                br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
            ),
            (
                "index.json".into(),
                serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": self.index})).unwrap(),
            ),
        ];
        for (d, b) in &self.blobs {
            files.push((format!("blobs/sha256/{}", hex_of(d)), b.clone()));
        }
        let mut b = tar::Builder::new(Vec::new());
        for (path, data) in files {
            let mut h = tar::Header::new_ustar();
            h.set_mode(0o644);
            h.set_size(data.len() as u64);
            h.set_entry_type(tar::EntryType::Regular);
            b.append_data(&mut h, path, &data[..]).unwrap();
        }
        b.into_inner().unwrap()
    }
}

/// A `docker save` archive (the classic layout: `<id>/layer.tar`).
fn docker_save(tags: &[&str], layers: &[Vec<u8>]) -> Vec<u8> {
    let diff_ids: Vec<String> = layers.iter().map(|l| digest(l)).collect();
    let cfg = config(
        &Platform::host().architecture,
        Platform::host().variant.as_deref(),
        &diff_ids,
    );
    let cfg_name = format!("{}.json", hex_of(&digest(&cfg)));
    let layer_paths: Vec<String> = diff_ids
        .iter()
        .map(|d| format!("{}/layer.tar", hex_of(d)))
        .collect();
    let manifest = json!([{"Config": cfg_name, "RepoTags": tags, "Layers": layer_paths}]);
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |path: &str, data: &[u8]| {
        let mut h = tar::Header::new_ustar();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, path, data).unwrap();
    };
    add(&cfg_name, &cfg);
    for (p, l) in layer_paths.iter().zip(layers) {
        add(p, l);
    }
    add("manifest.json", &serde_json::to_vec(&manifest).unwrap());
    b.into_inner().unwrap()
}

struct Env {
    dir: tempfile::TempDir,
    store: ImageStore,
}

fn env() -> Env {
    let dir = tempfile::Builder::new()
        .prefix("bramble-img-")
        .tempdir_in("/tmp")
        .unwrap();
    let store = ImageStore::open(&dir.path().join("store")).unwrap();
    Env { dir, store }
}

impl Env {
    fn write(&self, name: &str, data: &[u8]) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, data).unwrap();
        p
    }

    fn count(&self, sub: &str) -> usize {
        std::fs::read_dir(self.store.root().join(sub))
            .unwrap()
            .count()
    }
}

fn host_arch() -> String {
    Platform::host().architecture
}

#[test]
fn docker_save_and_oci_layout_share_layers() {
    let e = env();
    let base = busybox_layer();
    let extra = layer(&[E::Dir("etc"), E::File("etc/motd", b"hi\n", 0o644)]);

    let docker = e.write(
        "d.tar",
        &docker_save(
            &["dock:1", "reg:5000/x/dock:2"],
            std::slice::from_ref(&base),
        ),
    );
    let got = e.store.import_archive(&docker).unwrap();
    let refs: Vec<&str> = got.iter().map(|s| s.reference.as_str()).collect();
    assert_eq!(refs, ["docker.io/library/dock:1", "reg:5000/x/dock:2"]);
    assert_eq!(got[0].digest, got[1].digest);

    let mut oci = Layout::default();
    let m = oci.manifest(
        &host_arch(),
        Platform::host().variant.as_deref(),
        &[base.clone(), extra],
        true,
    );
    oci.add(m, Some("ghcr.io/me/app:v1"));
    // gzip the whole archive too.
    let oci_file = e.write("o.tar.gz", &gzip(&oci.tar()));
    let got = e.store.import_archive(&oci_file).unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].reference, "ghcr.io/me/app:v1");

    // busybox layer stored once, shared.
    assert_eq!(e.count("layers"), 2);
    let a = e.store.resolve("dock:1").unwrap();
    let b = e.store.resolve("ghcr.io/me/app:v1").unwrap();
    assert_eq!(a.layer_dirs[0], b.layer_dirs[0]);
    assert!(b.layer_dirs[1].join("etc/motd").is_file());
    assert!(a.layer_dirs[0].join("bin/busybox").is_file());
    assert_eq!(
        std::fs::read_link(a.layer_dirs[0].join("bin/sh")).unwrap(),
        Path::new("busybox")
    );
    // Re-import: idempotent, same digests.
    let again = e.store.import_archive(&docker).unwrap();
    assert_eq!(again[0].digest, a.manifest_digest);
    assert_eq!(e.count("tmp"), 0, "staging cleaned up");

    let list = e.store.list().unwrap();
    assert_eq!(list.len(), 3);
    // Removing one name keeps the image for the other; the last one collects it.
    e.store.remove("dock:1").unwrap();
    assert!(e.store.resolve("reg:5000/x/dock:2").is_ok());
    assert!(matches!(
        e.store.resolve("dock:1"),
        Err(RuntimeError::ImageNotPresent(_))
    ));
    e.store.remove("ghcr.io/me/app:v1").unwrap();
    assert_eq!(
        e.count("layers"),
        1,
        "the shared layer stays, the other goes"
    );
    e.store.remove("reg:5000/x/dock:2").unwrap();
    assert_eq!(
        (e.count("layers"), e.count("blobs/sha256"), e.count("refs")),
        (0, 0, 0)
    );
}

#[test]
fn skopeo_converted_archive_imports() {
    let e = env();
    let docker = e.write(
        "d.tar",
        &docker_save(&["skopeo/test:1"], &[busybox_layer()]),
    );
    let oci = e.dir.path().join("o.tar");
    let status = Command::new("skopeo")
        .args(["copy", "--quiet"])
        .arg(format!("docker-archive:{}", docker.display()))
        .arg(format!("oci-archive:{}:skopeo/test:1", oci.display()))
        .status()
        .unwrap();
    assert!(status.success());
    let got = e.store.import_archive(&oci).unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].reference, "docker.io/skopeo/test:1");
    let img = e.store.resolve("skopeo/test:1").unwrap();
    assert!(img.layer_dirs[0].join("bin/busybox").is_file());
}

#[test]
fn digest_mismatch_is_refused_and_nothing_stored() {
    let e = env();
    let mut oci = Layout::default();
    let m = oci.manifest(
        &host_arch(),
        Platform::host().variant.as_deref(),
        &[busybox_layer()],
        false,
    );
    oci.add(m, Some("bad:1"));
    // Corrupt the layer blob (the biggest), keeping its name.
    let (_, layer_bytes) = oci.blobs.iter_mut().max_by_key(|(_, b)| b.len()).unwrap();
    let n = layer_bytes.len();
    layer_bytes[n - 2000] ^= 0xff;
    let file = e.write("bad.tar", &oci.tar());
    let err = e.store.import_archive(&file).unwrap_err();
    assert!(matches!(err, RuntimeError::DigestMismatch { .. }), "{err}");
    assert_eq!(
        (
            e.count("layers"),
            e.count("refs"),
            e.count("blobs/sha256"),
            e.count("tmp")
        ),
        (0, 0, 0, 0)
    );

    // A corrupt manifest is refused the same way.
    let mut oci = Layout::default();
    let m = oci.manifest(
        &host_arch(),
        Platform::host().variant.as_deref(),
        &[layer(&[E::Dir("x")])],
        false,
    );
    let manifest_digest = m["digest"].as_str().unwrap().to_string();
    oci.add(m, Some("bad:2"));
    oci.blobs.get_mut(&manifest_digest).unwrap().push(b' ');
    let file = e.write("bad2.tar", &oci.tar());
    assert!(matches!(
        e.store.import_archive(&file),
        Err(RuntimeError::DigestMismatch { .. })
    ));
    assert_eq!(e.count("refs"), 0);
}

/// Unmounts on drop.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

#[test]
fn whiteouts_apply_in_the_mounted_rootfs() {
    let e = env();
    let l1 = layer(&[
        E::Dir("etc"),
        E::File("etc/gone", b"x", 0o644),
        E::File("etc/kept", b"k", 0o644),
        E::Dir("opq"),
        E::File("opq/old", b"o", 0o644),
    ]);
    let l2 = layer(&[
        E::Dir("etc"),
        E::File("etc/.wh.gone", b"", 0o644),
        E::Dir("opq"),
        E::File("opq/.wh..wh..opq", b"", 0o644),
        E::File("opq/new", b"n", 0o644),
    ]);
    let mut oci = Layout::default();
    let m = oci.manifest(
        &host_arch(),
        Platform::host().variant.as_deref(),
        &[l1, l2],
        true,
    );
    oci.add(m, Some("wh:1"));
    let file = e.write("wh.tar", &oci.tar());
    e.store.import_archive(&file).unwrap();
    let img = e.store.resolve("wh:1").unwrap();

    let (upper, work, root) = (
        e.dir.path().join("upper"),
        e.dir.path().join("work"),
        e.dir.path().join("root"),
    );
    for d in [&upper, &work, &root] {
        std::fs::create_dir(d).unwrap();
    }
    let lower: Vec<String> = img
        .layer_dirs
        .iter()
        .rev()
        .map(|p| p.display().to_string())
        .collect();
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.join(":"),
        upper.display(),
        work.display()
    );
    nix::mount::mount(
        Some("overlay"),
        &root,
        Some("overlay"),
        nix::mount::MsFlags::empty(),
        Some(opts.as_str()),
    )
    .unwrap();
    let _m = Mounted(root.clone());
    assert!(!root.join("etc/gone").exists());
    assert_eq!(std::fs::read(root.join("etc/kept")).unwrap(), b"k");
    assert!(!root.join("opq/old").exists());
    assert_eq!(std::fs::read(root.join("opq/new")).unwrap(), b"n");
}

#[test]
fn multi_platform_index_picks_the_node_platform() {
    let e = env();
    let mut oci = Layout::default();
    let base = layer(&[E::Dir("x")]);
    let per_arch = [
        ("amd64", None),
        ("arm64", Some("v8")),
        ("arm", Some("v7")),
        ("arm", Some("v6")),
    ];
    let manifests: Vec<_> = per_arch
        .iter()
        .map(|(a, v)| oci.manifest(a, *v, std::slice::from_ref(&base), true))
        .collect();
    // A nested index (as `skopeo copy --all` or buildx write) ...
    let idx = oci.index_blob(manifests.clone());
    oci.add(idx, Some("multi:nested"));
    // ... and platform manifests listed directly in index.json.
    for m in manifests {
        oci.add(m, Some("multi:flat"));
    }
    let file = e.write("multi.tar", &oci.tar());

    for (node, want_arch, want_variant) in [
        ("linux/amd64", "amd64", None),
        ("linux/arm64", "arm64", Some("v8")),
        ("linux/arm/v7", "arm", Some("v7")),
        ("linux/arm/v6", "arm", Some("v6")),
    ] {
        let e = env();
        let got = e
            .store
            .import_archive_for(&file, &Platform::parse(node).unwrap())
            .unwrap();
        assert_eq!(got.len(), 2, "{node}");
        for name in ["multi:nested", "multi:flat"] {
            let img = e.store.resolve(name).unwrap();
            assert_eq!(
                img.config.architecture().to_string(),
                want_arch,
                "{node} {name}"
            );
            assert_eq!(
                img.config.variant().as_deref(),
                want_variant,
                "{node} {name}"
            );
        }
    }
    let err = e
        .store
        .import_archive_for(&file, &Platform::parse("linux/riscv64").unwrap())
        .unwrap_err();
    match &err {
        RuntimeError::NoMatchingPlatform {
            wanted, available, ..
        } => {
            assert_eq!(wanted, "linux/riscv64");
            assert!(available.contains("linux/arm/v7"), "{available}");
        }
        other => panic!("{other}"),
    }
    assert_eq!(e.count("refs"), 0);

    // A single-platform image for another architecture is refused too.
    let mut arm_only = Layout::default();
    let m = arm_only.manifest("arm64", None, &[base], false);
    arm_only.add(m, Some("armonly:1"));
    let file = e.write("arm.tar", &arm_only.tar());
    assert!(matches!(
        e.store
            .import_archive_for(&file, &Platform::parse("linux/amd64").unwrap()),
        Err(RuntimeError::NoMatchingPlatform { .. })
    ));
}

#[test]
fn unnamed_image_gets_its_digest_then_a_tag() {
    let e = env();
    let mut oci = Layout::default();
    let m = oci.manifest(
        &host_arch(),
        Platform::host().variant.as_deref(),
        &[layer(&[E::Dir("y")])],
        false,
    );
    oci.add(m, None);
    let file = e.write("anon.tar", &oci.tar());
    let got = e.store.import_archive(&file).unwrap();
    assert_eq!(got.len(), 1);
    let digest = got[0].digest.clone();
    assert_eq!(got[0].reference, digest);
    assert!(e.store.resolve(&digest).is_ok());
    e.store.tag("local/anon:1", &digest).unwrap();
    assert_eq!(
        e.store.resolve("local/anon:1").unwrap().manifest_digest,
        digest
    );
    assert_eq!(
        e.store
            .list()
            .unwrap()
            .iter()
            .map(|s| s.reference.clone())
            .collect::<Vec<_>>(),
        ["docker.io/local/anon:1"]
    );
    assert!(e.store.resolve(&format!("local/anon@{digest}")).is_ok());
    assert!(matches!(
        e.store.tag("x:1", &format!("sha256:{}", "0".repeat(64))),
        Err(RuntimeError::ImageNotPresent(_))
    ));

    // A lease keeps the layers of a removed image until released.
    let img = e.store.resolve(&digest).unwrap();
    e.store.acquire_lease("holder-1", &img).unwrap();
    e.store.remove(&digest).unwrap();
    assert!(matches!(
        e.store.resolve(&digest),
        Err(RuntimeError::ImageNotPresent(_))
    ));
    assert!(img.layer_dirs[0].is_dir());
    e.store.release_lease("holder-1").unwrap();
    e.store.garbage_collect().unwrap();
    assert!(!img.layer_dirs[0].exists());
}

#[test]
fn concurrent_imports_of_one_archive() {
    let e = env();
    let file = e.write(
        "d.tar",
        &docker_save(&["race:1"], &[busybox_layer(), layer(&[E::Dir("z")])]),
    );
    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..2)
            .map(|_| {
                let store = e.store.clone();
                let file = file.clone();
                s.spawn(move || store.import_archive(&file))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for r in &results {
        assert_eq!(r.as_ref().unwrap()[0].reference, "docker.io/library/race:1");
    }
    assert_eq!(e.count("layers"), 2);
    assert_eq!(e.count("tmp"), 0);
    let img = e.store.resolve("race:1").unwrap();
    assert!(img.layer_dirs[0].join("bin/busybox").is_file());
}

#[test]
fn garbage_archives_are_refused() {
    let e = env();
    let file = e.write("junk.tar", b"definitely not a tar");
    assert!(e.store.import_archive(&file).is_err());
    let file = e.write("empty.tar", &layer(&[E::File("hello", b"x", 0o644)]));
    let err = e.store.import_archive(&file).unwrap_err();
    assert!(
        err.to_string().contains("neither an OCI image layout"),
        "{err}"
    );
    assert_eq!(e.count("tmp"), 0);
}

#[test]
fn demo_image_is_deterministic_and_runnable_config() {
    use bramble::runtime::demo::{DEMO_IMAGE, build_demo_image};
    let e = env();
    let a = build_demo_image(&e.store, Path::new("/bin/busybox")).unwrap();
    let b = build_demo_image(&e.store, Path::new("/bin/busybox")).unwrap();
    assert_eq!(a, b);
    let img = e.store.resolve(DEMO_IMAGE).unwrap();
    assert_eq!(img.manifest_digest, a);
    assert_eq!(img.layer_dirs.len(), 1);
    for applet in ["sh", "httpd", "wget", "nc", "hostname"] {
        assert!(
            img.layer_dirs[0].join("bin").join(applet).exists(),
            "{applet}"
        );
    }
    let cmd = img.config.config().as_ref().unwrap().cmd().clone().unwrap();
    assert!(cmd.last().unwrap().contains("httpd -f -p 8080 -h /www"));
}
