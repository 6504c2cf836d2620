//! A real registry for tests: Debian's `docker-registry` on a free port
//! (loopback, or a [`LanAddr`] of its own) with its own storage directory
//! (and htpasswd auth, or HTTPS, when asked),
//! killed on drop; OCI image layouts built here and pushed to it with
//! `skopeo copy --all`, including multi-arch indexes.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use sha2::{Digest, Sha256};

/// A scratch directory for image stores, removed on drop.
pub struct Env {
    pub dir: tempfile::TempDir,
}

impl Env {
    pub fn new(prefix: &str) -> Env {
        Env {
            dir: tempfile::Builder::new()
                .prefix(prefix)
                .tempdir_in("/tmp")
                .unwrap(),
        }
    }

    pub fn store(&self, name: &str) -> bramble::runtime::ImageStore {
        bramble::runtime::ImageStore::open(&self.dir.path().join(name)).unwrap()
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// How many entries a store has under `sub` (`blobs/sha256`, `layers`…).
pub fn count(store: &bramble::runtime::ImageStore, sub: &str) -> usize {
    std::fs::read_dir(store.root().join(sub)).unwrap().count()
}

pub fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

pub fn hex_of(d: &str) -> &str {
    d.strip_prefix("sha256:").unwrap()
}

/// A non-loopback address of this machine, for registries that must not
/// count as loopback (always plain HTTP): a /32 on one end of a veth pair
/// of its own (in 198.18.0.0/15, by pid and a counter), deleted on drop.
pub struct LanAddr {
    pub ip: Ipv4Addr,
    link: String,
}

impl LanAddr {
    pub fn take() -> LanAddr {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed) % 8;
        let pid = std::process::id();
        let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) + (pid % 16384) * 8 + n);
        let link = format!("btr{}x{n}", pid % 100_000);
        let ip_cmd = |args: &[&str]| {
            let out = Command::new("ip").args(args).output().expect("ip runs");
            assert!(
                out.status.success(),
                "ip {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let _ = Command::new("ip").args(["link", "del", &link]).output();
        let peer = format!("{link}p");
        ip_cmd(&["link", "add", &link, "type", "veth", "peer", "name", &peer]);
        let lan = LanAddr { ip, link };
        ip_cmd(&["addr", "add", &format!("{ip}/32"), "dev", &lan.link]);
        ip_cmd(&["link", "set", &lan.link, "up"]);
        ip_cmd(&["link", "set", &peer, "up"]);
        lan
    }
}

impl Drop for LanAddr {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.link])
            .output();
    }
}

/// Where and how a [`Registry`] serves.
pub struct RegistryOptions<'a> {
    pub ip: IpAddr,
    /// `user:password` for htpasswd auth.
    pub creds: Option<&'a str>,
    /// Certificate and key files: HTTPS instead of plain HTTP.
    pub tls: Option<(&'a Path, &'a Path)>,
}

pub struct Registry {
    child: Child,
    pub ip: IpAddr,
    pub port: u16,
    pub dir: tempfile::TempDir,
    /// `user:password` when the registry wants basic auth.
    pub creds: Option<String>,
}

impl Registry {
    /// Starts a registry on loopback; with `creds` (`user:password`) it
    /// refuses anonymous requests (htpasswd, bcrypt).
    pub fn start(creds: Option<&str>) -> Registry {
        Registry::start_with(RegistryOptions {
            ip: Ipv4Addr::LOCALHOST.into(),
            creds,
            tls: None,
        })
    }

    pub fn start_with(opts: RegistryOptions) -> Registry {
        let RegistryOptions { ip, creds, tls } = opts;
        let dir = tempfile::Builder::new()
            .prefix("bramble-registry-")
            .tempdir_in("/tmp")
            .unwrap();
        let port = std::net::TcpListener::bind((ip, 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let storage = dir.path().join("storage");
        std::fs::create_dir_all(&storage).unwrap();
        let mut auth = String::new();
        if let Some(c) = creds {
            let (user, pass) = c.split_once(':').unwrap();
            let out = Command::new("htpasswd")
                .args(["-Bbn", user, pass])
                .output()
                .expect("htpasswd (apache2-utils) runs");
            assert!(out.status.success());
            let file = dir.path().join("htpasswd");
            std::fs::write(&file, &out.stdout).unwrap();
            auth = format!(
                "auth:\n  htpasswd:\n    realm: bramble-test\n    path: {}\n",
                file.display()
            );
        }
        let tls = match tls {
            Some((cert, key)) => format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                cert.display(),
                key.display()
            ),
            None => String::new(),
        };
        let config = format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {}\n{tls}{auth}",
            storage.display(),
            std::net::SocketAddr::new(ip, port)
        );
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).unwrap();
        let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("docker-registry (Debian's docker-registry package) runs");
        let r = Registry {
            child,
            ip,
            port,
            dir,
            creds: creds.map(str::to_string),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while http_status(&r.addr(), "/v2/").is_none() {
            assert!(
                Instant::now() < deadline,
                "registry did not come up: {}",
                std::fs::read_to_string(r.dir.path().join("registry.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        r
    }

    pub fn addr(&self) -> String {
        std::net::SocketAddr::new(self.ip, self.port).to_string()
    }

    /// `ADDR:PORT/<repo>`.
    pub fn image(&self, repo: &str) -> String {
        format!("{}/{repo}", self.addr())
    }

    /// Pushes the layout's image tagged `tag` (all platforms) as `repo:tag`.
    pub fn push(&self, layout: &Path, tag: &str, repo: &str) {
        let mut cmd = Command::new("skopeo");
        cmd.args(["--insecure-policy", "copy", "--all", "--quiet"])
            .args(["--dest-tls-verify=false"]);
        if let Some(c) = &self.creds {
            cmd.args(["--dest-creds", c]);
        }
        let out = cmd
            .arg(format!("oci:{}:{tag}", layout.display()))
            .arg(format!("docker://{}:{tag}", self.image(repo)))
            .output()
            .expect("skopeo runs");
        assert!(
            out.status.success(),
            "skopeo copy failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The file the registry keeps a blob's bytes in.
    pub fn blob_file(&self, digest: &str) -> PathBuf {
        let h = hex_of(digest);
        self.dir
            .path()
            .join("storage/docker/registry/v2/blobs/sha256")
            .join(&h[..2])
            .join(h)
            .join("data")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The status code of a plain HTTP/1.0 GET, if anything answers.
pub fn http_status(addr: &str, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

pub enum E<'a> {
    Dir(&'a str),
    File(&'a str, &'a [u8], u32),
    Link(&'a str, &'a str),
}

/// An uncompressed layer tar.
pub fn layer(entries: &[E]) -> Vec<u8> {
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

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(data).unwrap();
    gz.finish().unwrap()
}

/// `/bin/busybox` with `/bin/sh` pointing at it.
pub fn busybox_layer() -> Vec<u8> {
    let bb = std::fs::read("/bin/busybox").unwrap();
    layer(&[
        E::Dir("bin"),
        E::File("bin/busybox", &bb, 0o755),
        E::Link("bin/sh", "busybox"),
    ])
}

/// One file of `size` bytes that do not compress (so the layer is as big).
pub fn noise_layer(name: &str, size: usize, seed: u64) -> Vec<u8> {
    let mut data = Vec::with_capacity(size + 32);
    let mut block = Sha256::digest(seed.to_le_bytes()).to_vec();
    while data.len() < size {
        data.extend_from_slice(&block);
        block = Sha256::digest(&block).to_vec();
    }
    data.truncate(size);
    layer(&[
        E::Dir("data"),
        E::File(&format!("data/{name}"), &data, 0o644),
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

/// An OCI image layout directory under construction.
#[derive(Default)]
pub struct Layout {
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

    /// Adds a manifest for `layers` (uncompressed tars, stored gzipped)
    /// and returns its descriptor, with its platform.
    pub fn manifest(
        &mut self,
        arch: &str,
        variant: Option<&str>,
        layers: &[Vec<u8>],
    ) -> serde_json::Value {
        let diff_ids: Vec<String> = layers.iter().map(|l| digest(l)).collect();
        let mut cfg = self.blob(config(arch, variant, &diff_ids));
        cfg["mediaType"] = json!("application/vnd.oci.image.config.v1+json");
        let layer_descs: Vec<serde_json::Value> = layers
            .iter()
            .map(|l| {
                let mut d = self.blob(gzip(l));
                d["mediaType"] = json!("application/vnd.oci.image.layer.v1.tar+gzip");
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

    /// An image index over `manifests`.
    pub fn index(&mut self, manifests: Vec<serde_json::Value>) -> serde_json::Value {
        let idx = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": manifests,
        });
        let mut d = self.blob(serde_json::to_vec(&idx).unwrap());
        d["mediaType"] = json!("application/vnd.oci.image.index.v1+json");
        d
    }

    /// Names `desc` `tag` in the layout's index.json.
    pub fn tag(&mut self, mut desc: serde_json::Value, tag: &str) {
        if let Some(o) = desc.as_object_mut() {
            o.remove("platform");
        }
        desc["annotations"] = json!({"org.opencontainers.image.ref.name": tag});
        self.index.push(desc);
    }

    /// Writes the layout to `dir`.
    pub fn write(&self, dir: &Path) {
        std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        std::fs::write(
            dir.join("index.json"),
            serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": self.index})).unwrap(),
        )
        .unwrap();
        for (d, b) in &self.blobs {
            std::fs::write(dir.join("blobs/sha256").join(hex_of(d)), b).unwrap();
        }
    }
}
