//! The master's registry mirror over real sockets: its OCI distribution
//! endpoint spoken to raw (tags, digests, HEAD, ranges, 404s, garbage and
//! oversized requests, tokens), then real pulls through it as a worker does
//! them: each platform of a multi-arch import, a tampered blob refused, the
//! fallback to the image's registry (Debian's `docker-registry`) when the
//! mirror lacks the image, refuses the node or is down, and a master that
//! pulled an image serving it on.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bramble::master::mirror::{Readers, start};
use bramble::runtime::images::mirror::{TagAnswer, tag_message};
use bramble::runtime::images::{PullEvent, PullOptions};
use bramble::runtime::{Credential, ImageStore, Platform, RegistryMirror, RuntimeError};
use bramble::store::Store;
use bramble::transport::{KeyPair, PublicKey, mirror_token};
use common::registry::{Env, Layout, Registry, busybox_layer, count, digest, hex_of, noise_layer};
use tokio::sync::watch;

/// A running mirror over a master store that keeps blobs, serving the
/// registered node `w1`.
struct Mirror {
    addr: SocketAddr,
    images: ImageStore,
    node_key: KeyPair,
    cluster_key: KeyPair,
    _stop: watch::Sender<bool>,
}

async fn start_mirror(env: &Env) -> Mirror {
    let images = env.store("master");
    let store = Store::open(&env.path("master.redb")).unwrap();
    let node_key = KeyPair::generate();
    bramble::master::register_node(
        &store,
        "w1",
        &node_key.public(),
        "10.88.0.0/16".parse().unwrap(),
        BTreeMap::new(),
    )
    .unwrap();
    let (stop, stop_rx) = watch::channel(false);
    let cluster_key = KeyPair::generate();
    let readers = Readers {
        store,
        admin_keys: vec![],
        clock_window: Duration::from_secs(600),
        cluster_key: cluster_key.clone(),
    };
    let addr = start(
        "127.0.0.1:0".parse().unwrap(),
        images.clone(),
        readers,
        stop_rx,
    )
    .await
    .unwrap();
    assert!(images.keeps_layer_blobs());
    Mirror {
        addr,
        images,
        node_key,
        cluster_key,
        _stop: stop,
    }
}

impl Mirror {
    fn token(&self) -> String {
        mirror_token::mint(
            &self.node_key,
            "node:w1",
            jiff::Timestamp::now().as_second(),
        )
    }

    /// Pull options of node `w1` on `platform`, mirror first.
    fn options(&self, platform: &str) -> PullOptions {
        options_via(
            &self.addr.to_string(),
            self.node_key.clone(),
            self.cluster_key.public(),
            platform,
        )
    }
}

fn options_via(mirror: &str, key: KeyPair, master: PublicKey, platform: &str) -> PullOptions {
    let o = PullOptions {
        platform: Platform::parse(platform).unwrap(),
        connect_timeout: Duration::from_secs(3),
        ..PullOptions::default()
    };
    o.mirror.set(Some(RegistryMirror {
        registry: mirror.to_string(),
        credential: Arc::new(move || {
            Some(Credential::Bearer(mirror_token::mint(
                &key,
                "node:w1",
                jiff::Timestamp::now().as_second(),
            )))
        }),
        verify: Arc::new(move |m, sig| master.verify(m, sig)),
    }));
    o
}

fn quiet(_: &PullEvent) {}

/// A multi-arch image as an OCI layout archive named `name`: amd64, arm64
/// and arm/v7, told apart by their configs and a layer of their own.
/// Returns the archive and the digests of the index and of each manifest.
struct MultiArch {
    archive: PathBuf,
    index: String,
    manifests: BTreeMap<&'static str, String>,
    /// A layer blob only the arm64 manifest names.
    arm64_layer: String,
}

fn multi_arch(env: &Env, name: &str) -> MultiArch {
    let bb = busybox_layer();
    let mut l = Layout::default();
    let mut manifests = BTreeMap::new();
    let mut descs = Vec::new();
    let mut arm64_layer = String::new();
    for (i, (key, arch, variant)) in [
        ("amd64", "amd64", None),
        ("arm64", "arm64", Some("v8")),
        ("arm/v7", "arm", Some("v7")),
    ]
    .into_iter()
    .enumerate()
    {
        let own = noise_layer(key.replace('/', "-").as_str(), 20_000, i as u64 + 1);
        let d = l.manifest(arch, variant, &[bb.clone(), own.clone()]);
        manifests.insert(key, d["digest"].as_str().unwrap().to_string());
        if key == "arm64" {
            arm64_layer = digest(&common::registry::gzip(&own));
        }
        descs.push(d);
    }
    let idx = l.index(descs);
    let index = idx["digest"].as_str().unwrap().to_string();
    l.tag(idx, "v1");
    let dir = env.path(&format!("layout-{}", hex_of(&index)));
    l.write(&dir);
    name_layout(&dir, name);
    MultiArch {
        archive: tar_dir(&dir, &env.path(&format!("{}.tar", hex_of(&index)))),
        index,
        manifests,
        arm64_layer,
    }
}

/// Names every entry of a layout's index.json (containerd's annotation).
fn name_layout(dir: &Path, name: &str) {
    let path = dir.join("index.json");
    let mut index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    for m in index["manifests"].as_array_mut().unwrap() {
        m["annotations"]["io.containerd.image.name"] = serde_json::json!(name);
    }
    std::fs::write(&path, serde_json::to_vec(&index).unwrap()).unwrap();
}

fn tar_dir(dir: &Path, out: &Path) -> PathBuf {
    let mut b = tar::Builder::new(std::fs::File::create(out).unwrap());
    b.append_dir_all(".", dir).unwrap();
    b.finish().unwrap();
    out.to_path_buf()
}

// ---- a raw HTTP/1.1 client --------------------------------------------------

struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn error_code(&self) -> String {
        let v: serde_json::Value = serde_json::from_slice(&self.body).unwrap_or_default();
        v["errors"][0]["code"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

/// Sends `raw` and reads until the server closes; `None` when it closed
/// without answering.
async fn raw(addr: SocketAddr, raw: Vec<u8>) -> Option<Resp> {
    tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let _ = s.write_all(&raw);
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
        let head = String::from_utf8_lossy(&buf[..end]).to_string();
        let mut lines = head.lines();
        let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        Some(Resp {
            status,
            headers,
            body: buf[end + 4..].to_vec(),
        })
    })
    .await
    .unwrap()
}

async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    extra: &[(&str, &str)],
) -> Resp {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    for (k, v) in extra {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    raw(addr, req.into_bytes())
        .await
        .unwrap_or_else(|| panic!("no answer to {method} {path}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_speaks_the_distribution_api() {
    let env = Env::new("bramble-mirror-");
    let m = start_mirror(&env).await;
    let image = multi_arch(&env, "bramble.local/multi:v1");
    let imported = m.images.import_archive(&image.archive).unwrap();
    assert_eq!(imported.len(), 1, "the host's platform, runnable here");
    let t = m.token();
    let tok = Some(t.as_str());
    let a = m.addr;

    // The version check: a token is needed, a forged one is refused.
    let r = request(a, "GET", "/v2/", None, &[]).await;
    assert_eq!(r.status, 401);
    assert!(r.header("www-authenticate").is_some());
    assert_eq!(r.error_code(), "UNAUTHORIZED");
    let forged = mirror_token::mint(&KeyPair::generate(), "node:w1", 0);
    assert_eq!(
        request(a, "GET", "/v2/", Some(&forged), &[]).await.status,
        401
    );
    let stranger = mirror_token::mint(
        &KeyPair::generate(),
        "node:w9",
        jiff::Timestamp::now().as_second(),
    );
    assert_eq!(
        request(a, "GET", "/v2/", Some(&stranger), &[]).await.status,
        401
    );
    let r = request(a, "GET", "/v2/", tok, &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("docker-distribution-api-version"),
        Some("registry/2.0")
    );
    // The token as Basic credentials' password (docker, containerd).
    use base64::Engine as _;
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("w1:{t}"));
    let r = request(
        a,
        "GET",
        "/v2/",
        None,
        &[("Authorization", &format!("Basic {basic}"))],
    )
    .await;
    assert_eq!(r.status, 200);

    // The tag: the whole index, as imported; by digest: each manifest.
    let path = "/v2/bramble.local/multi/manifests/v1";
    let r = request(a, "GET", path, tok, &[]).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        r.header("content-type"),
        Some("application/vnd.oci.image.index.v1+json")
    );
    assert_eq!(
        r.header("docker-content-digest"),
        Some(image.index.as_str())
    );
    assert_eq!(digest(&r.body), image.index);
    let index_len = r.body.len();
    let index: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(index["manifests"].as_array().unwrap().len(), 3);
    for d in image.manifests.values() {
        let r = request(
            a,
            "GET",
            &format!("/v2/bramble.local/multi/manifests/{d}"),
            tok,
            &[],
        )
        .await;
        assert_eq!(r.status, 200);
        assert_eq!(digest(&r.body), *d);
        assert_eq!(
            r.header("content-type"),
            Some("application/vnd.oci.image.manifest.v1+json")
        );
    }
    // The tag's digest, signed by the master's cluster key (what nodes ask).
    let r = request(a, "GET", "/bramble/v1/tag/bramble.local/multi/v1", tok, &[]).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let answer: TagAnswer = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(answer.reference, "bramble.local/multi:v1");
    assert_eq!(answer.digest, image.index);
    let sig: [u8; 64] = hex::decode(&answer.signature).unwrap().try_into().unwrap();
    assert!(m.cluster_key.public().verify(
        &tag_message(&answer.reference, &answer.digest, answer.time),
        &sig
    ));
    let r = request(
        a,
        "GET",
        "/bramble/v1/tag/bramble.local/multi/v1",
        None,
        &[],
    )
    .await;
    assert_eq!(r.status, 401);
    let r = request(a, "GET", "/bramble/v1/tag/bramble.local/multi/v9", tok, &[]).await;
    assert_eq!(r.status, 404);
    // containerd's form: the registry in `ns`.
    let r = request(
        a,
        "GET",
        "/v2/multi/manifests/v1?ns=bramble.local",
        tok,
        &[],
    )
    .await;
    assert_eq!(r.status, 200);
    // HEAD: the same headers, no body.
    let r = request(a, "HEAD", path, tok, &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("docker-content-digest"),
        Some(image.index.as_str())
    );
    assert_eq!(
        r.header("content-length"),
        Some(index_len.to_string().as_str())
    );
    assert!(r.body.is_empty());

    // A blob: whole, HEAD, a range from an offset.
    let layer = &image.arm64_layer;
    let blob_path = format!("/v2/bramble.local/multi/blobs/{layer}");
    let r = request(a, "GET", &blob_path, tok, &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(digest(&r.body), *layer);
    let whole = r.body;
    let r = request(a, "HEAD", &blob_path, tok, &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-length"),
        Some(whole.len().to_string().as_str())
    );
    assert!(r.body.is_empty());
    let r = request(a, "GET", &blob_path, tok, &[("Range", "bytes=100-")]).await;
    assert_eq!(r.status, 206);
    assert_eq!(r.body, whole[100..]);
    assert_eq!(
        r.header("content-range"),
        Some(format!("bytes 100-{}/{}", whole.len() - 1, whole.len()).as_str())
    );
    let r = request(a, "GET", &blob_path, tok, &[("Range", "bytes=99999999-")]).await;
    assert_eq!(r.status, 416);

    // What is not there, and what is not a request of ours.
    let zero = format!("sha256:{}", "0".repeat(64));
    for (method, path, status, code) in [
        (
            "GET",
            "/v2/bramble.local/multi/manifests/v2",
            404,
            "MANIFEST_UNKNOWN",
        ),
        (
            "GET",
            "/v2/bramble.local/other/manifests/v1",
            404,
            "MANIFEST_UNKNOWN",
        ),
        ("HEAD", "/v2/bramble.local/multi/manifests/v2", 404, ""),
        (
            "GET",
            &format!("/v2/x/manifests/{zero}"),
            404,
            "MANIFEST_UNKNOWN",
        ),
        ("GET", &format!("/v2/x/blobs/{zero}"), 404, "BLOB_UNKNOWN"),
        // A blob that is no manifest, asked for as one.
        (
            "GET",
            &format!("/v2/x/manifests/{layer}"),
            404,
            "MANIFEST_UNKNOWN",
        ),
        ("GET", "/v2/x/blobs/sha256:1234", 400, "DIGEST_INVALID"),
        ("GET", "/v2/x/blobs/md5:1234", 400, "DIGEST_INVALID"),
        ("GET", "/v2/x/manifests/..", 400, "TAG_INVALID"),
        ("GET", "/v2/../../etc/blobs/passwd", 400, "NAME_INVALID"),
        ("GET", "/v2/UPPER/manifests/v1", 400, "NAME_INVALID"),
        ("GET", "/v2/x/tags/list", 404, "NOT_FOUND"),
        ("GET", "/etc/passwd", 404, "NOT_FOUND"),
        ("DELETE", &blob_path, 405, "UNSUPPORTED"),
        ("PUT", "/v2/x/manifests/v1", 405, "UNSUPPORTED"),
    ] {
        let r = request(a, method, path, tok, &[]).await;
        assert_eq!(r.status, status, "{method} {path}");
        if !code.is_empty() {
            assert_eq!(r.error_code(), code, "{method} {path}");
        }
    }
    // Garbage, oversized headers, a request cut short: refused or dropped,
    // and the mirror still answers.
    let r = raw(a, b"\x00\x01\x02 garbage\r\n\r\n".to_vec()).await;
    assert!(r.is_none_or(|r| r.status == 400));
    let huge = format!(
        "GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    let r = raw(a, huge.into_bytes()).await;
    assert!(r.is_none_or(|r| r.status == 431), "oversized headers");
    let _ = raw(a, b"GET /v2/ HTTP/1.1\r\nHost:".to_vec()).await;
    assert_eq!(request(a, "GET", "/v2/", tok, &[]).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_pull_each_platform_from_the_mirror() {
    let env = Env::new("bramble-mirror-");
    let m = start_mirror(&env).await;
    let image = multi_arch(&env, "bramble.local/multi:v1");
    m.images.import_archive(&image.archive).unwrap();
    // Nothing answers for bramble.local: only the mirror can serve it.
    for platform in ["linux/arm64", "linux/arm/v7", "linux/amd64"] {
        let worker = env.store(&format!("worker-{}", platform.replace('/', "-")));
        let info = worker
            .pull("bramble.local/multi:v1", &[], &m.options(platform), &quiet)
            .await
            .unwrap_or_else(|e| panic!("{platform}: {e}"));
        let key = platform.trim_start_matches("linux/");
        assert_eq!(info.manifest_digest, image.manifests[key], "{platform}");
        assert_eq!(info.reference, "bramble.local/multi:v1");
        let stats = info.pulled.unwrap();
        assert_eq!((stats.layers, stats.layers_fetched), (2, 2));
        let resolved = worker.resolve("bramble.local/multi:v1").unwrap();
        assert!(resolved.layer_dirs.iter().all(|d| d.is_dir()));
        assert!(resolved.layer_dirs[0].join("bin/busybox").is_file());
        // A worker keeps no layer blobs: only its manifest and config.
        assert_eq!(count(&worker, "blobs/sha256"), 2, "{platform}");
        assert!(!worker.keeps_layer_blobs());
    }
    // Pinned to the index's digest, too.
    let worker = env.store("worker-pinned");
    let pinned = format!("bramble.local/multi@{}", image.index);
    let info = worker
        .pull(&pinned, &[], &m.options("linux/arm64"), &quiet)
        .await
        .unwrap();
    assert_eq!(info.manifest_digest, image.manifests["arm64"]);
    // A platform the image lacks: the mirror's index says so, and the
    // image's own registry does not answer.
    let err = env
        .store("worker-riscv")
        .pull(
            "bramble.local/multi:v1",
            &[],
            &m.options("linux/riscv64"),
            &quiet,
        )
        .await
        .unwrap_err();
    let RuntimeError::PullFailed { mirror_error, .. } = &err else {
        panic!("{err}");
    };
    assert!(
        matches!(**mirror_error, RuntimeError::NoMatchingPlatform { .. }),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_blob_is_refused_and_nothing_stored() {
    let env = Env::new("bramble-mirror-");
    let m = start_mirror(&env).await;
    let image = multi_arch(&env, "bramble.local/multi:v1");
    m.images.import_archive(&image.archive).unwrap();
    // Flip bytes of the arm64 manifest's own layer on the master's disk.
    let file = m
        .images
        .root()
        .join("blobs/sha256")
        .join(hex_of(&image.arm64_layer));
    let mut bytes = std::fs::read(&file).unwrap();
    let n = bytes.len();
    for b in &mut bytes[n / 2..n / 2 + 16] {
        *b ^= 0xff;
    }
    std::fs::write(&file, &bytes).unwrap();

    let worker = env.store("worker");
    let err = worker
        .pull(
            "bramble.local/multi:v1",
            &[],
            &m.options("linux/arm64"),
            &quiet,
        )
        .await
        .unwrap_err();
    let RuntimeError::PullFailed {
        mirror,
        mirror_error,
        ..
    } = &err
    else {
        panic!("expected the mirror's failure, then the registry's: {err}");
    };
    assert_eq!(*mirror, m.addr.to_string());
    let RuntimeError::DigestMismatch {
        expected, actual, ..
    } = &**mirror_error
    else {
        panic!("{err}");
    };
    assert_eq!(*expected, image.arm64_layer);
    assert_eq!(*actual, digest(&bytes));
    assert!(err.to_string().contains("digest mismatch"), "{err}");
    // Nothing of it kept: no reference, no layer, no partial download.
    assert!(worker.list().unwrap().is_empty());
    assert_eq!(count(&worker, "downloads"), 0);
    assert_eq!(count(&worker, "refs"), 0);
    // The busybox layer came first and verified; it is shared, not an image.
    assert!(matches!(
        worker.resolve("bramble.local/multi:v1"),
        Err(RuntimeError::ImageNotPresent(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_image_on_the_mirror_pulls_fall_back_to_its_registry() {
    let env = Env::new("bramble-mirror-");
    let reg = Registry::start(None);
    let host = Platform::host();
    let mut l = Layout::default();
    let man = l.manifest(
        &host.architecture,
        host.variant.as_deref(),
        &[busybox_layer(), noise_layer("f", 10_000, 7)],
    );
    let manifest_digest = man["digest"].as_str().unwrap().to_string();
    l.tag(man, "v1");
    l.write(&env.path("app-layout"));
    reg.push(&env.path("app-layout"), "v1", "test/app");
    let image = format!("{}:v1", reg.image("test/app"));
    let m = start_mirror(&env).await;

    // The mirror lacks it: 404 there, then the registry.
    let w = env.store("w-404");
    let info = w
        .pull(&image, &[], &m.options(&host.to_string()), &quiet)
        .await
        .unwrap();
    assert_eq!(info.manifest_digest, manifest_digest);

    // The mirror refuses this node (not registered).
    let w = env.store("w-401");
    let o = options_via(
        &m.addr.to_string(),
        KeyPair::generate(),
        m.cluster_key.public(),
        &host.to_string(),
    );
    w.pull(&image, &[], &o, &quiet).await.unwrap();

    // The mirror is down.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = closed.local_addr().unwrap().to_string();
    drop(closed);
    let w = env.store("w-down");
    let o = options_via(
        &dead,
        m.node_key.clone(),
        m.cluster_key.public(),
        &host.to_string(),
    );
    w.pull(&image, &[], &o, &quiet).await.unwrap();

    // Neither has it: both reasons.
    let err = env
        .store("w-none")
        .pull(
            &format!("{}:nope", reg.image("test/app")),
            &[],
            &m.options(&host.to_string()),
            &quiet,
        )
        .await
        .unwrap_err();
    let RuntimeError::PullFailed {
        mirror_error,
        registry,
        ..
    } = &err
    else {
        panic!("{err}");
    };
    assert!(
        matches!(**mirror_error, RuntimeError::RegistryNotFound { .. }),
        "{err}"
    );
    assert!(
        matches!(**registry, RuntimeError::RegistryNotFound { .. }),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_master_pulled_it_serves_on() {
    let env = Env::new("bramble-mirror-");
    let reg = Registry::start(None);
    let host = Platform::host();
    let mut l = Layout::default();
    let layers = [busybox_layer(), noise_layer("p", 30_000, 5)];
    let ms = vec![
        l.manifest(&host.architecture, host.variant.as_deref(), &layers),
        l.manifest("riscv64", None, &layers),
    ];
    let idx = l.index(ms);
    let index_digest = idx["digest"].as_str().unwrap().to_string();
    l.tag(idx, "v1");
    l.write(&env.path("layout"));
    reg.push(&env.path("layout"), "v1", "test/pulled");
    let image = format!("{}:v1", reg.image("test/pulled"));
    let m = start_mirror(&env).await;
    // The master pulls it for itself (no mirror in its own options).
    let info = m
        .images
        .pull(&image, &[], &PullOptions::default(), &quiet)
        .await
        .unwrap();
    assert!(m.images.servable(&info.manifest_digest));
    assert!(m.images.servable(&index_digest));
    drop(reg);

    // The registry is gone: the worker gets it from the master.
    let w = env.store("w");
    let got = w
        .pull(&image, &[], &m.options(&host.to_string()), &quiet)
        .await
        .unwrap();
    assert_eq!(got.manifest_digest, info.manifest_digest);
    w.resolve(&image).unwrap();
    // The platform the master did not pull: its manifest is not there.
    let err = env
        .store("w-riscv")
        .pull(&image, &[], &m.options("linux/riscv64"), &quiet)
        .await
        .unwrap_err();
    let RuntimeError::PullFailed { mirror_error, .. } = &err else {
        panic!("{err}");
    };
    assert!(
        matches!(**mirror_error, RuntimeError::RegistryNotFound { .. }),
        "{err}"
    );

    // Removing the image from the master removes every blob it kept.
    m.images.remove(&image).unwrap();
    assert_eq!(count(&m.images, "blobs/sha256"), 0);
    assert_eq!(count(&m.images, "mirror"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_for_other_platforms_is_kept_for_the_mirror_only() {
    let env = Env::new("bramble-mirror-");
    let m = start_mirror(&env).await;
    // arm64 and arm/v7 only: nothing the (x86_64) master runs.
    let mut l = Layout::default();
    let layers = [busybox_layer()];
    let ms = vec![
        l.manifest("arm64", Some("v8"), &layers),
        l.manifest("arm", Some("v7"), &layers),
    ];
    let arm64 = ms[0]["digest"].as_str().unwrap().to_string();
    let idx = l.index(ms);
    l.tag(idx, "v1");
    let dir = env.path("layout");
    l.write(&dir);
    name_layout(&dir, "bramble.local/pi-only:v1");
    let archive = tar_dir(&dir, &env.path("pi-only.tar"));
    if Platform::host().architecture == "arm64" {
        return; // runs here: not the case under test
    }
    // A worker's store refuses it; the master's keeps it for the mirror.
    assert!(matches!(
        env.store("plain").import_archive(&archive),
        Err(RuntimeError::NoMatchingPlatform { .. })
    ));
    let imported = m.images.import_archive(&archive).unwrap();
    assert_eq!(imported.len(), 1);
    assert!(!imported[0].runs_here);
    let listed = m.images.list().unwrap();
    assert_eq!(listed.len(), 1);
    assert!(!listed[0].runs_here);
    assert_eq!(count(&m.images, "layers"), 0, "nothing unpacked here");
    let info = env
        .store("pi")
        .pull(
            "bramble.local/pi-only:v1",
            &[],
            &m.options("linux/arm64"),
            &quiet,
        )
        .await
        .unwrap();
    assert_eq!(info.manifest_digest, arm64);
    m.images.remove("bramble.local/pi-only:v1").unwrap();
    assert_eq!(count(&m.images, "blobs/sha256"), 0);
    assert!(m.images.list().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_the_master_did_not_sign_is_refused() {
    let env = Env::new("bramble-mirror-");
    let m = start_mirror(&env).await;
    let image = multi_arch(&env, "bramble.local/multi:v1");
    m.images.import_archive(&image.archive).unwrap();
    // A node that pinned another master (as if someone in the middle
    // answered for this one): the tag's digest does not verify.
    let worker = env.store("worker");
    let o = options_via(
        &m.addr.to_string(),
        m.node_key.clone(),
        KeyPair::generate().public(),
        "linux/arm64",
    );
    let err = worker
        .pull("bramble.local/multi:v1", &[], &o, &quiet)
        .await
        .unwrap_err();
    let RuntimeError::PullFailed { mirror_error, .. } = &err else {
        panic!("{err}");
    };
    assert!(
        matches!(&**mirror_error, RuntimeError::RegistryProtocol { reason, .. } if reason.contains("not signed by the master")),
        "{err}"
    );
    assert!(worker.list().unwrap().is_empty());
    assert_eq!(count(&worker, "layers"), 0, "nothing fetched");
    // Pinned by digest, nothing needs the master's word: the digest is.
    let pinned = format!("bramble.local/multi@{}", image.index);
    let info = worker.pull(&pinned, &[], &o, &quiet).await.unwrap();
    assert_eq!(info.manifest_digest, image.manifests["arm64"]);
}
