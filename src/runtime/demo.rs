//! The demo image, built on the node from Debian's static busybox: a web
//! server answering with the pod's name and IP. It is written as an OCI
//! image-layout tar and goes through [`ImageStore::import_archive`] like any
//! user archive, so running the demo exercises the real import path.
//!
//! Deterministic: fixed mtimes and owners, sorted entries, no timestamps in
//! the config, so building twice gives the same manifest digest.

use std::fs;
use std::io::Write;
use std::path::Path;

use serde_json::json;

use super::images::layer::sha256_digest;
use super::{ImageStore, Platform, RuntimeError};

/// The demo image's name.
pub const DEMO_IMAGE: &str = "bramble.local/demo:v1";

/// The port the demo's httpd listens on.
pub const DEMO_PORT: u16 = 8080;

/// Every applet the demo (and debugging inside it) needs, linked to busybox.
const APPLETS: &[&str] = &[
    "[", "awk", "cat", "cp", "cut", "date", "echo", "env", "false", "grep", "head", "hostname",
    "httpd", "id", "ip", "kill", "ln", "ls", "mkdir", "mv", "nc", "nslookup", "ping", "printf",
    "ps", "pwd", "rm", "sed", "sh", "sleep", "sort", "stty", "tail", "tee", "test", "top", "touch",
    "tr", "true", "tty", "uname", "wc", "wget",
];

/// Writes the page and serves it; `hostname` is the pod name, the IP is the
/// first global IPv4 address of the pod's network namespace. The shell stays
/// PID 1 with a TERM trap: a PID 1 without a handler ignores SIGTERM, and the
/// pod would take its whole grace period to stop.
const SCRIPT: &str = r#"ip=$(ip -4 -o addr show scope global 2>/dev/null | awk '{split($4, a, "/"); print a[1]; exit}')
printf '<html><body><h1>Hello from %s</h1><p>pod IP: %s</p></body></html>\n' "$(hostname)" "${ip:-none}" > /www/index.html
echo "demo: serving $(hostname) (${ip:-no IP}) on :8080"
trap 'echo "demo: stopping"; exit 0' TERM INT
httpd -f -p 8080 -h /www &
wait"#;

/// A fixed mtime (2024-01-01T00:00:00Z) for every entry.
const MTIME: u64 = 1_704_067_200;

/// Builds `bramble.local/demo:v1` from the static busybox at `busybox`
/// and imports it into `store`. Returns the manifest digest.
pub fn build_demo_image(store: &ImageStore, busybox: &Path) -> Result<String, RuntimeError> {
    let binary = fs::read(busybox).map_err(|source| RuntimeError::Io {
        context: format!("reading busybox at {}", busybox.display()),
        source,
    })?;
    let archive = demo_layout(&binary)?;
    // Garbage collection clears tmp/; hold it off until the import is done.
    let _hold = store.lock_shared()?;
    let file = store.tmp_path("demo");
    let result = fs::write(&file, &archive)
        .map_err(|source| RuntimeError::Io {
            context: format!("writing {}", file.display()),
            source,
        })
        .and_then(|_| store.import_archive(&file));
    let _ = fs::remove_file(&file);
    let summaries = result?;
    summaries
        .into_iter()
        .next()
        .map(|s| s.digest)
        .ok_or_else(|| RuntimeError::Image("demo archive imported no image".into()))
}

/// Writes the demo image's OCI image-layout tar to `dest` (for
/// `bramble image import`, e.g. on a master whose mirror serves it).
pub fn write_demo_archive(busybox: &Path, dest: &Path) -> Result<(), RuntimeError> {
    let binary = fs::read(busybox).map_err(|source| RuntimeError::Io {
        context: format!("reading busybox at {}", busybox.display()),
        source,
    })?;
    fs::write(dest, demo_layout(&binary)?).map_err(|source| RuntimeError::Io {
        context: format!("writing {}", dest.display()),
        source,
    })
}

/// The OCI image-layout tar of the demo image.
fn demo_layout(busybox: &[u8]) -> Result<Vec<u8>, RuntimeError> {
    let layer = demo_layer(busybox)?;
    let layer_digest = sha256_digest(&layer);
    let platform = Platform::host();
    let mut config = json!({
        "architecture": platform.architecture,
        "os": platform.os,
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["/bin/sh", "-c", SCRIPT],
            "WorkingDir": "/",
            "ExposedPorts": { (format!("{DEMO_PORT}/tcp")): {} },
        },
        "rootfs": { "type": "layers", "diff_ids": [layer_digest] },
    });
    if let Some(v) = &platform.variant {
        config["variant"] = json!(v);
    }
    let config = serde_json::to_vec(&config).expect("config serializes");
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": sha256_digest(&config),
            "size": config.len(),
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": layer_digest,
            "size": layer.len(),
        }],
    }))
    .expect("manifest serializes");
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": sha256_digest(&manifest),
            "size": manifest.len(),
            "annotations": {
                "io.containerd.image.name": DEMO_IMAGE,
                "org.opencontainers.image.ref.name": DEMO_IMAGE,
            },
        }],
    }))
    .expect("index serializes");
    let mut files: Vec<(String, &[u8])> = vec![
        ("oci-layout".into(), br#"{"imageLayoutVersion":"1.0.0"}"#),
        ("index.json".into(), &index),
    ];
    for blob in [&layer[..], &config[..], &manifest[..]] {
        let hex = sha256_digest(blob)["sha256:".len()..].to_string();
        files.push((format!("blobs/sha256/{hex}"), blob));
    }
    let mut tar = DeterministicTar::new();
    for dir in ["blobs", "blobs/sha256"] {
        tar.dir(dir, 0o755)?;
    }
    files.sort_by(|a, b| a.0.cmp(&b.0));
    for (path, data) in files {
        tar.file(&path, 0o644, data)?;
    }
    tar.finish()
}

/// The one layer: busybox, its applet links, `/www` and a minimal `/etc`.
fn demo_layer(busybox: &[u8]) -> Result<Vec<u8>, RuntimeError> {
    let passwd =
        b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n";
    let group = b"root:x:0:\nnogroup:x:65534:\n";
    let mut tar = DeterministicTar::new();
    tar.dir("bin", 0o755)?;
    tar.file("bin/busybox", 0o755, busybox)?;
    let mut applets: Vec<&str> = APPLETS.to_vec();
    applets.sort_unstable();
    for applet in applets {
        tar.symlink(&format!("bin/{applet}"), "busybox")?;
    }
    for (dir, mode) in [("dev", 0o755), ("etc", 0o755)] {
        tar.dir(dir, mode)?;
    }
    tar.file("etc/group", 0o644, group)?;
    tar.file("etc/passwd", 0o644, passwd)?;
    for (dir, mode) in [
        ("proc", 0o555),
        ("root", 0o700),
        ("sys", 0o555),
        ("tmp", 0o1777),
        ("www", 0o755),
    ] {
        tar.dir(dir, mode)?;
    }
    tar.finish()
}

/// A tar writer whose output depends only on what is added (in that order).
struct DeterministicTar(tar::Builder<Vec<u8>>);

impl DeterministicTar {
    fn new() -> Self {
        DeterministicTar(tar::Builder::new(Vec::new()))
    }

    fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_mtime(MTIME);
        h.set_uid(0);
        h.set_gid(0);
        h
    }

    fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> Result<(), RuntimeError> {
        let mut h = Self::header(tar::EntryType::Regular, mode, data.len() as u64);
        self.0.append_data(&mut h, path, data).map_err(tar_err)
    }

    fn dir(&mut self, path: &str, mode: u32) -> Result<(), RuntimeError> {
        let mut h = Self::header(tar::EntryType::Directory, mode, 0);
        self.0
            .append_data(&mut h, format!("{path}/"), &[][..])
            .map_err(tar_err)
    }

    fn symlink(&mut self, path: &str, target: &str) -> Result<(), RuntimeError> {
        let mut h = Self::header(tar::EntryType::Symlink, 0o777, 0);
        self.0.append_link(&mut h, path, target).map_err(tar_err)
    }

    fn finish(self) -> Result<Vec<u8>, RuntimeError> {
        let mut out = self.0.into_inner().map_err(tar_err)?;
        out.flush().map_err(tar_err)?;
        Ok(out)
    }
}

fn tar_err(source: std::io::Error) -> RuntimeError {
    RuntimeError::Io {
        context: "building the demo image".into(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_deterministic() {
        let a = demo_layout(b"not really busybox").unwrap();
        let b = demo_layout(b"not really busybox").unwrap();
        assert_eq!(sha256_digest(&a), sha256_digest(&b));
        assert_ne!(
            sha256_digest(&a),
            sha256_digest(&demo_layout(b"other").unwrap())
        );
    }
}
