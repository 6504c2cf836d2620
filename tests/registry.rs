//! Pulls from a real registry (Debian's `docker-registry` on loopback, images
//! pushed by skopeo): platform selection from a multi-arch index, layers
//! shared between images fetched once, basic auth, and the bad cases — a
//! missing tag, a corrupted blob, a connection dropped mid-layer, a full
//! disk — each a clear error with nothing half-written left in the store.
//! Then disk-pressure GC, the CLI, and a cluster whose worker pulls.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bramble::runtime::images::RegistryCa;
use bramble::runtime::images::credentials::parse_docker_config;
use bramble::runtime::images::gc::DiskUsage;
use bramble::runtime::images::pull::is_insecure;
use bramble::runtime::images::{GcPolicy, PullEvent, PullOptions};
use bramble::runtime::{Credential, ImageStore, Platform, RegistryAuth, RuntimeError};
use common::mosquitto::Pki;
use common::registry::{
    Env, LanAddr, Layout, Registry, RegistryOptions, busybox_layer, count, noise_layer,
};
use common::{BIN, Cluster, ClusterOptions};

/// `app:v1` (busybox + two noise layers) and `app2:v1` (busybox + one
/// other): three and two layers, the busybox one shared.
fn push_apps(reg: &Registry, env: &Env) -> (String, String) {
    let bb = busybox_layer();
    let host = Platform::host();
    let mut l = Layout::default();
    let m = l.manifest(
        &host.architecture,
        host.variant.as_deref(),
        &[
            bb.clone(),
            noise_layer("a", 50_000, 1),
            noise_layer("b", 300_000, 2),
        ],
    );
    l.tag(m, "v1");
    let mut l2 = Layout::default();
    let m2 = l2.manifest(
        &host.architecture,
        host.variant.as_deref(),
        &[bb, noise_layer("c", 20_000, 3)],
    );
    l2.tag(m2, "v1");
    l.write(&env.path("app-layout"));
    l2.write(&env.path("app2-layout"));
    reg.push(&env.path("app-layout"), "v1", "test/app");
    reg.push(&env.path("app2-layout"), "v1", "test/app2");
    (
        format!("{}:v1", reg.image("test/app")),
        format!("{}:v1", reg.image("test/app2")),
    )
}

/// A multi-arch `multi:v1`: amd64, arm64 and arm/v7 manifests over the same
/// layers, told apart by their configs.
fn push_multi(reg: &Registry, env: &Env) -> (String, String) {
    let layers = [busybox_layer(), noise_layer("m", 10_000, 9)];
    let mut l = Layout::default();
    let ms = vec![
        l.manifest("amd64", None, &layers),
        l.manifest("arm64", Some("v8"), &layers),
        l.manifest("arm", Some("v7"), &layers),
    ];
    let idx = l.index(ms);
    let index_digest = idx["digest"].as_str().unwrap().to_string();
    l.tag(idx, "v1");
    l.write(&env.path("multi-layout"));
    reg.push(&env.path("multi-layout"), "v1", "test/multi");
    (format!("{}:v1", reg.image("test/multi")), index_digest)
}

fn opts(platform: &str) -> PullOptions {
    PullOptions {
        platform: Platform::parse(platform).unwrap(),
        ..PullOptions::default()
    }
}

fn quiet(_: &PullEvent) {}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_arch_index_picks_the_node_platform() {
    let env = Env::new("bramble-pull-");
    let reg = Registry::start(None);
    let (image, index_digest) = push_multi(&reg, &env);
    for (i, (platform, arch, variant)) in [
        (
            Platform::host().to_string(),
            Platform::host().architecture,
            Platform::host().variant,
        ),
        (
            "linux/arm64".to_string(),
            "arm64".to_string(),
            Some("v8".to_string()),
        ),
        (
            "linux/arm/v7".to_string(),
            "arm".to_string(),
            Some("v7".to_string()),
        ),
        // An arm/v8 32-bit node does not exist; a v7 image runs on a v8-capable arm too.
        (
            "linux/arm/v8".to_string(),
            "arm".to_string(),
            Some("v7".to_string()),
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let store = env.store(&format!("s{i}"));
        let info = store
            .pull(&image, &[], &opts(&platform), &quiet)
            .await
            .unwrap();
        let stats = info.pulled.unwrap();
        assert_eq!((stats.layers, stats.layers_fetched), (2, 2));
        let r = store.resolve(&image).unwrap();
        assert_eq!(r.manifest_digest, info.manifest_digest);
        assert_eq!(r.config.architecture().to_string(), arch, "{platform}");
        assert_eq!(r.config.variant().clone(), variant, "{platform}");
        assert!(r.layer_dirs[0].join("bin/busybox").is_file());
    }
    // Pinned by the index's digest: the same platform manifest, under a
    // reference of its own that `image rm` removes.
    let store = env.store("s0");
    let pinned = format!("{}@{index_digest}", reg.image("test/multi"));
    let info = store
        .pull(&pinned, &[], &opts(&Platform::host().to_string()), &quiet)
        .await
        .unwrap();
    assert_eq!(
        info.manifest_digest,
        store.resolve(&image).unwrap().manifest_digest
    );
    assert_eq!(
        store.resolve(&pinned).unwrap().manifest_digest,
        info.manifest_digest
    );
    store.remove(&pinned).unwrap();
    assert!(store.resolve(&pinned).is_err());
    assert!(store.resolve(&image).is_ok());

    // A platform the index lacks: a clear error, nothing stored.
    let store = env.store("riscv");
    let err = store
        .pull(&image, &[], &opts("linux/riscv64"), &quiet)
        .await
        .unwrap_err();
    match &err {
        RuntimeError::NoMatchingPlatform {
            what,
            wanted,
            available,
        } => {
            assert!(
                what.contains("test/multi:v1") && what.contains(&reg.addr()),
                "{what}"
            );
            assert_eq!(wanted, "linux/riscv64");
            assert_eq!(available, "linux/amd64, linux/arm64/v8, linux/arm/v7");
        }
        e => panic!("expected NoMatchingPlatform, got {e}"),
    }
    assert!(store.list().unwrap().is_empty());
    assert_eq!(count(&store, "layers"), 0);

    // Without a manifest of its own architecture, a node takes one it runs,
    // by containerd's rules: arm64 a 32-bit arm one, amd64 a 386 one.
    let mut l = Layout::default();
    let layers = [busybox_layer()];
    let ms = vec![
        l.manifest("386", None, &layers),
        l.manifest("arm", Some("v7"), &layers),
    ];
    let idx = l.index(ms);
    l.tag(idx, "v1");
    l.write(&env.path("compat-layout"));
    reg.push(&env.path("compat-layout"), "v1", "test/compat");
    let compat = format!("{}:v1", reg.image("test/compat"));
    for (i, (node, arch, variant)) in [
        ("linux/arm64", "arm", Some("v7")),
        ("linux/amd64", "386", None),
    ]
    .into_iter()
    .enumerate()
    {
        let store = env.store(&format!("compat{i}"));
        store.pull(&compat, &[], &opts(node), &quiet).await.unwrap();
        let r = store.resolve(&compat).unwrap();
        assert_eq!(r.config.architecture().to_string(), arch, "{node}");
        assert_eq!(r.config.variant().as_deref(), variant, "{node}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_layers_are_fetched_once() {
    let env = Env::new("bramble-pull-");
    let reg = Registry::start(None);
    let (app, app2) = push_apps(&reg, &env);
    let store = env.store("s");
    let host = Platform::host().to_string();
    let info = store.pull(&app, &[], &opts(&host), &quiet).await.unwrap();
    let s = info.pulled.unwrap();
    assert_eq!((s.layers, s.layers_fetched), (3, 3));

    let events = Mutex::new(Vec::new());
    let info2 = store
        .pull(&app2, &[], &opts(&host), &|e| {
            events.lock().unwrap().push(e.clone())
        })
        .await
        .unwrap();
    let s2 = info2.pulled.unwrap();
    assert_eq!((s2.layers, s2.layers_fetched), (2, 1));
    let events = events.into_inner().unwrap();
    assert!(matches!(&events[0], PullEvent::Resolved { layers, .. } if layers.len() == 2));
    assert!(events.contains(&PullEvent::LayerPresent { index: 0 }));
    assert!(events.contains(&PullEvent::LayerDone { index: 1 }));
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, PullEvent::LayerProgress { index: 0, .. }))
    );
    // busybox + a + b + c: four layers, stored once each.
    assert_eq!(count(&store, "layers"), 4);
    assert_eq!(
        store.resolve(&app).unwrap().layer_dirs[0],
        store.resolve(&app2).unwrap().layer_dirs[0]
    );
    // Pulling again (policy Always) fetches only manifest and config.
    let again = store.pull(&app, &[], &opts(&host), &quiet).await.unwrap();
    assert_eq!(again.manifest_digest, info.manifest_digest);
    assert_eq!(again.pulled.unwrap().layers_fetched, 0);
    assert_eq!(count(&store, "downloads"), 0);
    assert_eq!(count(&store, "tmp"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_from_credentials_and_docker_config() {
    let env = Env::new("bramble-pull-");
    let reg = Registry::start(Some("pi:raspberry"));
    let (app, _) = push_apps(&reg, &env);
    let store = env.store("s");
    let host = opts(&Platform::host().to_string());

    let err = store.pull(&app, &[], &host, &quiet).await.unwrap_err();
    assert!(
        matches!(&err, RuntimeError::RegistryUnauthorized { registry, .. } if *registry == reg.addr()),
        "{err}"
    );
    assert!(err.to_string().contains("401"), "{err}");

    let cred = |user: &str, pass: &str| RegistryAuth {
        registry: reg.addr(),
        credential: Credential::Basic {
            username: user.into(),
            password: pass.into(),
        },
    };
    let err = store
        .pull(&app, &[cred("pi", "wrong")], &host, &quiet)
        .await
        .unwrap_err();
    assert!(
        matches!(err, RuntimeError::RegistryUnauthorized { .. }),
        "{err}"
    );
    assert!(store.list().unwrap().is_empty());

    // The right one after a wrong one for the same registry: both are tried.
    let more_specific = RegistryAuth {
        registry: format!("{}/test", reg.addr()),
        ..cred("pi", "wrong")
    };
    store
        .pull(
            &app,
            &[cred("pi", "raspberry"), more_specific],
            &host,
            &quiet,
        )
        .await
        .unwrap();

    // From a dockerconfigjson, as an imagePullSecret carries it.
    let config = format!(
        r#"{{"auths": {{"http://{}/v2/": {{"username": "pi", "password": "raspberry"}}}}}}"#,
        reg.addr()
    );
    let auths = parse_docker_config("test", config.as_bytes()).unwrap();
    let store2 = env.store("s2");
    store2.pull(&app, &auths, &host, &quiet).await.unwrap();
    assert!(store2.resolve(&app).is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_tags_and_unreachable_registries() {
    let env = Env::new("bramble-pull-");
    let reg = Registry::start(None);
    let (app, _) = push_apps(&reg, &env);
    let store = env.store("s");
    let host = opts(&Platform::host().to_string());
    for missing in [
        format!("{}:nope", reg.image("test/app")),
        format!("{}:v1", reg.image("test/absent")),
    ] {
        let err = store.pull(&missing, &[], &host, &quiet).await.unwrap_err();
        assert!(
            matches!(&err, RuntimeError::RegistryNotFound { image, .. } if *image == missing),
            "{err}"
        );
        assert!(err.to_string().contains("404"), "{err}");
    }
    // Nobody listens there.
    let closed = format!("127.0.0.1:{}/test/app:v1", common::free_port());
    let err = store.pull(&closed, &[], &host, &quiet).await.unwrap_err();
    assert!(
        matches!(&err, RuntimeError::RegistryConnection { .. }),
        "{err}"
    );
    // Not even a reference.
    let err = store
        .pull("Not A Reference", &[], &host, &quiet)
        .await
        .unwrap_err();
    assert!(
        matches!(err, RuntimeError::InvalidImageReference { .. }),
        "{err}"
    );
    assert!(store.list().unwrap().is_empty());
    store.pull(&app, &[], &host, &quiet).await.unwrap();
}

/// A home-lab registry over HTTPS with a certificate from its own CA, on an
/// address that is not loopback (so HTTPS really is spoken): refused with a
/// TLS error naming the registry until that CA is given, by the library's
/// options and by `bramble image pull --registry-ca`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_registry_with_a_home_lab_ca() {
    let env = Env::new("bramble-pull-");
    let lan = LanAddr::take();
    let pki = Pki::make(&env.path("pki"), &[lan.ip.into()]);
    let reg = Registry::start_with(RegistryOptions {
        ip: lan.ip.into(),
        creds: None,
        tls: Some((&pki.cert, &pki.key)),
    });
    assert!(
        !is_insecure(&reg.addr(), &[]),
        "{} is spoken to over HTTPS",
        reg.addr()
    );
    let (app, _) = push_apps(&reg, &env);
    let host = opts(&Platform::host().to_string());

    let store = env.store("s");
    let untrusted = |err: RuntimeError| match &err {
        RuntimeError::RegistryConnection {
            registry, cause, ..
        } => {
            assert_eq!(*registry, reg.addr());
            assert!(
                cause.contains("certificate") && cause.contains("--registry-ca"),
                "{cause}"
            );
        }
        e => panic!("expected a TLS failure, got {e}"),
    };
    untrusted(store.pull(&app, &[], &host, &quiet).await.unwrap_err());
    // Another CA does not vouch for it either.
    let other = PullOptions {
        registry_ca: Some(RegistryCa::load(&pki.other_ca).unwrap()),
        ..host.clone()
    };
    untrusted(store.pull(&app, &[], &other, &quiet).await.unwrap_err());
    assert!(store.list().unwrap().is_empty());

    let trusted = PullOptions {
        registry_ca: Some(RegistryCa::load(&pki.ca).unwrap()),
        ..host.clone()
    };
    let info = store.pull(&app, &[], &trusted, &quiet).await.unwrap();
    assert_eq!(info.pulled.unwrap().layers_fetched, 3);
    assert!(
        store.resolve(&app).unwrap().layer_dirs[0]
            .join("bin/busybox")
            .is_file()
    );

    // The CLI: the same refusal, then the flag; a file that holds no
    // certificate is a usage error naming it.
    let data = env.path("cli-data");
    let run = |extra: &[&str]| {
        Command::new(BIN)
            .args(["image", "pull", &app, "--data-dir"])
            .arg(&data)
            .args(extra)
            .env("BRAMBLE_CONFIG", env.path("none.toml"))
            .output()
            .unwrap()
    };
    let out = run(&[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&reg.addr()) && stderr.contains("--registry-ca"),
        "{stderr}"
    );
    let out = run(&["--registry-ca", pki.ca.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("3 layers"));
    let not_a_ca = env.path("not-a-ca.pem");
    std::fs::write(&not_a_ca, "hello\n").unwrap();
    let out = run(&["--registry-ca", not_a_ca.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("not-a-ca.pem") && stderr.contains("no certificate"),
        "{stderr}"
    );
}

/// A plain-HTTP registry off loopback is spoken to over HTTPS (and fails,
/// saying so) unless it is listed as insecure, by address or by host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_registry_needs_insecure_registry_off_loopback() {
    let env = Env::new("bramble-pull-");
    let lan = LanAddr::take();
    let reg = Registry::start_with(RegistryOptions {
        ip: lan.ip.into(),
        creds: None,
        tls: None,
    });
    let (app, _) = push_apps(&reg, &env);
    let host = opts(&Platform::host().to_string());
    let store = env.store("s");
    let err = store.pull(&app, &[], &host, &quiet).await.unwrap_err();
    match &err {
        RuntimeError::RegistryConnection {
            registry, cause, ..
        } => {
            assert_eq!(*registry, reg.addr());
            assert!(cause.contains("--insecure-registry"), "{cause}");
        }
        e => panic!("expected a TLS failure, got {e}"),
    }
    assert!(store.list().unwrap().is_empty());
    for insecure in [reg.addr(), lan.ip.to_string()] {
        let store = env.store(&format!("s-{insecure}"));
        let o = PullOptions {
            insecure_registries: vec![insecure.clone()],
            ..host.clone()
        };
        store.pull(&app, &[], &o, &quiet).await.unwrap();
        assert!(store.resolve(&app).is_ok(), "{insecure}");
    }
}

/// A "registry" that answers every request with HTTP 500, until dropped.
struct FailingServer {
    port: u16,
    stop: Arc<AtomicBool>,
}

impl FailingServer {
    fn start() -> FailingServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let Ok((mut conn, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                conn.set_nonblocking(false).unwrap();
                conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut buf = [0u8; 4096];
                let _ = conn.read(&mut buf);
                let body = "storage backend exploded";
                let _ = write!(
                    conn,
                    "HTTP/1.1 500 Internal Server Error\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        FailingServer { port, stop }
    }
}

impl Drop for FailingServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_name_their_status() {
    let env = Env::new("bramble-pull-");
    let server = FailingServer::start();
    let store = env.store("s");
    let image = format!("127.0.0.1:{}/test/app:v1", server.port);
    let err = store
        .pull(&image, &[], &opts(&Platform::host().to_string()), &quiet)
        .await
        .unwrap_err();
    match &err {
        RuntimeError::RegistryStatus {
            registry,
            status,
            detail,
            ..
        } => {
            assert_eq!(*registry, format!("127.0.0.1:{}", server.port));
            assert_eq!(*status, 500);
            assert!(detail.contains("storage backend exploded"), "{detail}");
        }
        e => panic!("expected RegistryStatus, got {e}"),
    }
    assert!(err.to_string().contains("HTTP 500"), "{err}");
    assert!(store.list().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_blob_is_refused_and_nothing_stored() {
    let env = Env::new("bramble-pull-");
    let reg = Registry::start(None);
    let (app, _) = push_apps(&reg, &env);
    // The third layer's bytes, replaced by garbage of the same length.
    let manifest: serde_json::Value = {
        let out = Command::new("skopeo")
            .args(["inspect", "--raw", "--tls-verify=false"])
            .arg(format!("docker://{app}"))
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let victim = manifest["layers"][2]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let file = reg.blob_file(&victim);
    let len = std::fs::metadata(&file).unwrap().len() as usize;
    std::fs::write(&file, vec![0x5a; len]).unwrap();

    let store = env.store("s");
    let host = opts(&Platform::host().to_string());
    let err = store.pull(&app, &[], &host, &quiet).await.unwrap_err();
    match &err {
        RuntimeError::DigestMismatch { what, expected, .. } => {
            assert_eq!(*expected, victim);
            assert!(
                what.contains(&victim) && what.contains(&reg.addr()),
                "{what}"
            );
        }
        e => panic!("expected a digest mismatch, got {e}"),
    }
    // No image, no unverified layer, no download kept for resuming.
    assert!(store.list().unwrap().is_empty());
    assert!(store.resolve(&app).is_err());
    assert_eq!(count(&store, "downloads"), 0);
    assert_eq!(count(&store, "tmp"), 0);
    assert_eq!(count(&store, "layers"), 2, "only the verified layers");
}

/// A TCP proxy in front of the registry that cuts every connection once it
/// has relayed `limit` bytes of response.
struct CuttingProxy {
    port: u16,
    stop: Arc<AtomicBool>,
    cuts: Arc<Mutex<u32>>,
}

impl CuttingProxy {
    fn start(upstream: String, limit: usize) -> CuttingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let cuts = Arc::new(Mutex::new(0));
        let (s, c) = (stop.clone(), cuts.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let Ok((client, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                let upstream = upstream.clone();
                let cuts = c.clone();
                std::thread::spawn(move || relay(client, &upstream, limit, &cuts));
            }
        });
        CuttingProxy { port, stop, cuts }
    }
}

fn relay(client: TcpStream, upstream: &str, limit: usize, cuts: &Mutex<u32>) {
    client.set_nonblocking(false).unwrap();
    let Ok(server) = TcpStream::connect(upstream) else {
        return;
    };
    let timeout = Some(Duration::from_secs(10));
    for s in [&client, &server] {
        s.set_read_timeout(timeout).unwrap();
    }
    let (mut c_in, mut s_out) = (client.try_clone().unwrap(), server.try_clone().unwrap());
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut c_in, &mut s_out);
    });
    let (mut s_in, mut c_out) = (server, client);
    let mut relayed = 0;
    let mut buf = [0u8; 8192];
    loop {
        let n = match s_in.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let n = n.min(limit - relayed);
        if c_out.write_all(&buf[..n]).is_err() {
            break;
        }
        relayed += n;
        if relayed >= limit {
            *cuts.lock().unwrap() += 1;
            break;
        }
    }
    let _ = c_out.shutdown(std::net::Shutdown::Both);
    let _ = s_in.shutdown(std::net::Shutdown::Both);
}

impl Drop for CuttingProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_dropped_mid_layer_then_resumed() {
    let env = Env::new("bramble-pull-");
    let reg = Registry::start(None);
    let (app, _) = push_apps(&reg, &env);
    let proxy = CuttingProxy::start(reg.addr(), 200_000);
    let through_proxy = app.replace(&reg.addr(), &format!("127.0.0.1:{}", proxy.port));
    let store = env.store("s");
    let host = opts(&Platform::host().to_string());

    let err = store
        .pull(&through_proxy, &[], &host, &quiet)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, RuntimeError::RegistryConnection { registry, .. } if registry.ends_with(&proxy.port.to_string())),
        "{err}"
    );
    assert!(*proxy.cuts.lock().unwrap() >= 1);
    // Nothing usable was stored; what was fetched waits to be resumed.
    assert!(store.list().unwrap().is_empty());
    assert!(store.resolve(&through_proxy).is_err());
    assert_eq!(count(&store, "tmp"), 0);
    let partial: Vec<u64> = std::fs::read_dir(store.root().join("downloads"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .collect();
    assert_eq!(partial.len(), 1, "one partial layer download");
    assert!(partial[0] > 0);

    // Through the registry's own port: resumed, verified, complete.
    let events = Mutex::new(Vec::new());
    store
        .pull(&app, &[], &host, &|e| {
            events.lock().unwrap().push(e.clone())
        })
        .await
        .unwrap();
    let resumed_at = events
        .into_inner()
        .unwrap()
        .into_iter()
        .find_map(|e| match e {
            PullEvent::LayerProgress { done, .. } if done > 0 => Some(done),
            _ => None,
        });
    assert!(resumed_at.is_some());
    let r = store.resolve(&app).unwrap();
    assert_eq!(r.layer_dirs.len(), 3);
    let noise = std::fs::metadata(r.layer_dirs[2].join("data/b")).unwrap();
    assert_eq!(noise.len(), 300_000);
    assert_eq!(count(&store, "downloads"), 0);
}

/// A small tmpfs, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .unwrap()
            .success();
        assert!(ok, "mounting a tmpfs on {}", dir.display());
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_is_a_clear_error_and_leaves_nothing() {
    let env = Env::new("bramble-pull-");
    let reg = Registry::start(None);
    let (app, _) = push_apps(&reg, &env);
    // Room for the busybox layer's download but not for it unpacked too.
    let _fs = Tmpfs::mount(&env.path("small"), "1500k");
    let store = ImageStore::open(&env.path("small/images")).unwrap();
    let host = opts(&Platform::host().to_string());
    let err = store.pull(&app, &[], &host, &quiet).await.unwrap_err();
    assert!(matches!(err, RuntimeError::DiskFull { .. }), "{err}");
    assert!(err.to_string().contains("no space left"), "{err}");
    assert!(store.list().unwrap().is_empty());
    assert_eq!(count(&store, "tmp"), 0);
    assert_eq!(
        count(&store, "downloads"),
        0,
        "a partial download is not kept on a full disk"
    );
    assert_eq!(count(&store, "layers"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_pressure_collects_least_recently_used_unleased_images() {
    let env = Env::new("bramble-pull-");
    let reg = Registry::start(None);
    let host = Platform::host();
    let mut refs = Vec::new();
    for (i, name) in ["old-in-use", "older", "newer"].into_iter().enumerate() {
        let mut l = Layout::default();
        let m = l.manifest(
            &host.architecture,
            host.variant.as_deref(),
            &[noise_layer(name, 1_000_000, 100 + i as u64)],
        );
        l.tag(m, "v1");
        let dir = env.path(&format!("{name}-layout"));
        l.write(&dir);
        reg.push(&dir, "v1", &format!("gc/{name}"));
        refs.push(format!("{}:v1", reg.image(&format!("gc/{name}"))));
    }
    let _fs = Tmpfs::mount(&env.path("disk"), "8m");
    let store = ImageStore::open(&env.path("disk/images")).unwrap();
    let o = opts(&host.to_string());
    for r in &refs {
        store.pull(r, &[], &o, &quiet).await.unwrap();
        // Distinct last-use times.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The oldest is run by a container: its lease keeps it.
    let held = store.resolve(&refs[0]).unwrap();
    store.acquire_lease("ctr-1", &held).unwrap();
    let usage = DiskUsage::of(store.root()).unwrap();
    let used_pct = ((usage.total - usage.available) * 100 / usage.total) as u8;
    assert!(used_pct >= 30, "{used_pct}% used");

    // Below the high threshold: nothing happens.
    let calm = GcPolicy {
        high_percent: used_pct + 5,
        low_percent: 1,
        min_age: Duration::ZERO,
    };
    assert!(store.collect_for_disk(&calm).unwrap().is_empty());

    // Above it: unused images go, least recently used first, until below
    // the low threshold (one image of three is about 12 points of 8 MiB).
    let pressed = GcPolicy {
        high_percent: used_pct,
        low_percent: used_pct - 5,
        min_age: Duration::ZERO,
    };
    let removed = store.collect_for_disk(&pressed).unwrap();
    assert_eq!(removed, vec![refs[1].clone()]);
    assert!(store.resolve(&refs[0]).is_ok());
    assert!(store.resolve(&refs[2]).is_ok());

    // Everything collectable goes, but never the leased image; a recent
    // image is spared by the minimum age.
    let all = GcPolicy {
        high_percent: 1,
        low_percent: 1,
        min_age: Duration::from_secs(3600),
    };
    assert!(store.collect_for_disk(&all).unwrap().is_empty());
    let all = GcPolicy {
        min_age: Duration::ZERO,
        ..all
    };
    assert_eq!(store.collect_for_disk(&all).unwrap(), vec![refs[2].clone()]);
    assert!(store.resolve(&refs[0]).is_ok());
    store.release_lease("ctr-1").unwrap();
}

#[test]
fn cli_pull_ls_rm_with_plain_progress() {
    let env = Env::new("bramble-pull-");
    let reg = Registry::start(Some("pi:raspberry"));
    let (app, app2) = push_apps(&reg, &env);
    let data = env.path("data");
    let run = |args: &[&str]| {
        Command::new(BIN)
            .args(args)
            .arg("--data-dir")
            .arg(&data)
            .env("BRAMBLE_CONFIG", env.path("none.toml"))
            .output()
            .unwrap()
    };
    let out = run(&["image", "pull", &app]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("unauthorized") && stderr.contains("401"),
        "{stderr}"
    );

    let out = run(&["image", "pull", &app, "--creds", "pi:raspberry"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Not a terminal: plain lines, one per layer step.
    assert!(
        stdout.contains("pulling ") && stdout.contains("3 layers"),
        "{stdout}"
    );
    assert_eq!(stdout.matches(" done").count(), 3, "{stdout}");
    assert!(stdout.contains("3 fetched"), "{stdout}");

    let auth_file = env.path("config.json");
    std::fs::write(
        &auth_file,
        format!(
            r#"{{"auths": {{"{}": {{"auth": "cGk6cmFzcGJlcnJ5"}}}}}}"#,
            reg.addr()
        ),
    )
    .unwrap();
    let out = run(&[
        "image",
        "pull",
        &app2,
        "--auth-file",
        auth_file.to_str().unwrap(),
        "--platform",
        &Platform::host().to_string(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("already present") && stdout.contains("1 fetched"),
        "{stdout}"
    );

    let out = run(&["image", "pull", &app2, "--platform", "linux"]);
    assert_eq!(
        out.status.code(),
        Some(64),
        "a bad --platform is a usage error"
    );

    let ls = String::from_utf8(run(&["image", "ls"]).stdout).unwrap();
    assert!(
        ls.contains("test/app:v1") && ls.contains("test/app2:v1"),
        "{ls}"
    );
    assert!(run(&["image", "rm", &app]).status.success());
    let ls = String::from_utf8(run(&["image", "ls"]).stdout).unwrap();
    assert!(
        !ls.contains("test/app:v1") && ls.contains("test/app2:v1"),
        "{ls}"
    );
}

/// The screen a terminal `width` columns wide shows after `raw`: enough of
/// a VT100 for indicatif (which pads lines to the width and relies on
/// wrapping, moves up and down with CSI A/B and clears with CSI K).
fn screen_lines(raw: &[u8], width: usize) -> Vec<String> {
    let text = String::from_utf8_lossy(raw);
    let mut screen: Vec<Vec<char>> = vec![Vec::new()];
    let (mut row, mut col) = (0usize, 0usize);
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' => col = 0,
            '\n' => row += 1,
            '\x1b' => {
                if chars.next_if_eq(&'[').is_none() {
                    chars.next();
                    continue;
                }
                let mut params = String::new();
                let mut fin = ' ';
                for f in chars.by_ref() {
                    if ('\x40'..='\x7e').contains(&f) {
                        fin = f;
                        break;
                    }
                    params.push(f);
                }
                let n = params.parse::<usize>().unwrap_or(1);
                match fin {
                    'A' => row = row.saturating_sub(n),
                    'B' => row += n,
                    'K' => {
                        if let Some(line) = screen.get_mut(row) {
                            line.clear();
                        }
                    }
                    _ => {}
                }
            }
            c => {
                if col >= width {
                    row += 1;
                    col = 0;
                }
                if screen.len() <= row {
                    screen.resize(row + 1, Vec::new());
                }
                let line = &mut screen[row];
                if line.len() <= col {
                    line.resize(col + 1, ' ');
                }
                line[col] = c;
                col += 1;
            }
        }
        if screen.len() <= row {
            screen.resize(row + 1, Vec::new());
        }
    }
    screen
        .iter()
        .map(|l| l.iter().collect::<String>().trim_end().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

/// `bramble image pull` on a terminal: a bar per layer with bytes and a
/// rate, drawn on stdout, the terminal the choice looked at, even with
/// stderr not a terminal; the summary line last.
#[test]
fn cli_pull_on_a_terminal_draws_bars() {
    let env = Env::new("bramble-pull-");
    let reg = Registry::start(None);
    let (app, _) = push_apps(&reg, &env);
    let size = nix::pty::Winsize {
        ws_row: 40,
        ws_col: 120,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = nix::pty::openpty(Some(&size), None).unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args(["image", "pull", &app, "--data-dir"])
        .arg(env.path("data"))
        .env("BRAMBLE_CONFIG", env.path("none.toml"))
        .stdin(std::process::Stdio::null())
        .stdout(pty.slave)
        .stderr(std::process::Stdio::piped());
    let child = cmd.spawn().unwrap();
    // The only other handle on the terminal's slave side: once the CLI
    // exits, reading the master side ends (EIO).
    drop(cmd);
    let mut master = std::fs::File::from(pty.master);
    let reader = std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = master.read(&mut buf) {
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
        }
        seen
    });
    let out = child.wait_with_output().unwrap();
    let seen = reader.join().unwrap();
    let lines = screen_lines(&seen, usize::from(size.ws_col));
    let shown = lines.join("\n");
    assert!(
        out.status.success(),
        "{}\n{shown}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Bars, not the plain lines.
    assert!(!shown.contains("pulling "), "{shown}");
    for i in 1..=3 {
        let bar = lines
            .iter()
            .rev()
            .find(|l| l.starts_with(&format!("layer {i}/3 ")))
            .unwrap_or_else(|| panic!("no bar for layer {i}: {shown}"));
        assert!(bar.contains("/s") && bar.ends_with("done"), "{bar}");
    }
    // After the bars, the summary (wrapped: it is wider than the terminal).
    let after = lines.iter().rposition(|l| l.starts_with("layer ")).unwrap();
    let summary = lines[after + 1..].concat();
    assert!(
        summary.starts_with("pulled ")
            && summary.contains("3 layers, 3 fetched")
            && summary.ends_with("0 already present"),
        "{shown}"
    );
}

fn describe(c: &Cluster, pod: &str) -> String {
    String::from_utf8_lossy(&c.bramble(&["describe", "pod", pod]).stdout).into_owned()
}

fn waiting_reason(c: &Cluster, pod: &str) -> String {
    let v = c.json(&["get", "pod", pod]);
    v["status"]["containerStatuses"][0]["state"]["waiting"]["reason"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// An index with manifests only for platforms no test machine is (nor runs).
fn push_foreign(reg: &Registry, env: &Env) -> String {
    let layers = [busybox_layer()];
    let mut l = Layout::default();
    let ms = vec![
        l.manifest("riscv64", None, &layers),
        l.manifest("s390x", None, &layers),
    ];
    let idx = l.index(ms);
    l.tag(idx, "v1");
    l.write(&env.path("foreign-layout"));
    reg.push(&env.path("foreign-layout"), "v1", "test/foreign");
    format!("{}:v1", reg.image("test/foreign"))
}

fn waiting_message(c: &Cluster, pod: &str) -> String {
    let v = c.json(&["get", "pod", pod]);
    v["status"]["containerStatuses"][0]["state"]["waiting"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// A worker (`bramble up --registry-ca`) pulling from a home-lab registry
/// over HTTPS with basic auth, through a pod's `imagePullSecrets`; and the
/// bad cases through real pods: a missing tag, a reference that does not
/// parse, no pull secret for a registry that wants one, no manifest for the
/// node's platform, `Never` with the image absent. Each ends in its status
/// and Event; the node stays Ready and a pod applied after them runs.
#[test]
fn worker_pulls_with_pull_secrets_and_backs_off_on_a_missing_tag() {
    let env = Env::new("bramble-pull-");
    let lan = LanAddr::take();
    let pki = Pki::make(&env.path("pki"), &[lan.ip.into()]);
    let reg = Registry::start_with(RegistryOptions {
        ip: lan.ip.into(),
        creds: Some("pi:raspberry"),
        tls: Some((&pki.cert, &pki.key)),
    });
    let (app, app2) = push_apps(&reg, &env);
    let foreign = push_foreign(&reg, &env);
    let c = Cluster::start_with(
        ClusterOptions {
            demo: false,
            broker: None,
        },
        &["--registry-ca".to_string(), pki.ca.display().to_string()],
    );
    let config = format!(
        r#"{{"auths": {{"{}": {{"username": "pi", "password": "raspberry"}}}}}}"#,
        reg.addr()
    );
    use base64::Engine as _;
    let encoded = base64::engine::general_purpose::STANDARD.encode(config);
    let missing = format!("{}:missing", reg.image("test/app"));
    let badref = format!("{}:v1", reg.image("test/Bad_Name"));
    let absent = format!("{}:v1", reg.image("test/never-pulled"));
    let manifest = format!(
        r#"apiVersion: v1
kind: Secret
metadata: {{name: regcred}}
type: kubernetes.io/dockerconfigjson
data:
  .dockerconfigjson: {encoded}
---
apiVersion: v1
kind: Pod
metadata: {{name: pulled}}
spec:
  imagePullSecrets: [{{name: regcred}}]
  containers:
  - name: main
    image: {app}
    command: ["/bin/busybox", "sleep", "3600"]
---
apiVersion: v1
kind: Pod
metadata: {{name: missing}}
spec:
  imagePullSecrets: [{{name: regcred}}]
  containers:
  - name: main
    image: {missing}
    command: ["/bin/busybox", "sleep", "3600"]
---
apiVersion: v1
kind: Pod
metadata: {{name: badref}}
spec:
  containers:
  - name: main
    image: {badref}
---
apiVersion: v1
kind: Pod
metadata: {{name: nosecret}}
spec:
  containers:
  - name: main
    image: {app2}
    command: ["/bin/busybox", "sleep", "3600"]
---
apiVersion: v1
kind: Pod
metadata: {{name: foreign}}
spec:
  imagePullSecrets: [{{name: regcred}}]
  containers:
  - name: main
    image: {foreign}
    command: ["/bin/busybox", "sleep", "3600"]
---
apiVersion: v1
kind: Pod
metadata: {{name: never}}
spec:
  containers:
  - name: main
    image: {absent}
    imagePullPolicy: Never
"#
    );
    let file = env.path("pods.yaml");
    std::fs::write(&file, manifest).unwrap();
    c.ok(&["apply", "-f", file.to_str().unwrap()]);

    c.wait_for("the pulled pod Running", Duration::from_secs(60), || {
        c.json(&["get", "pod", "pulled"])["status"]["phase"] == "Running"
    });
    let d = describe(&c, "pulled");
    assert!(
        d.contains("Pulling") && d.contains("Successfully pulled image"),
        "{d}"
    );

    c.wait_for("ImagePullBackOff", Duration::from_secs(60), || {
        waiting_reason(&c, "missing") == "ImagePullBackOff"
    });
    let d = describe(&c, "missing");
    assert!(d.contains("Failed to pull image"), "{d}");
    assert!(d.contains("not found") && d.contains("404"), "{d}");
    assert!(d.contains("ErrImagePull"), "{d}");
    assert!(d.contains("Back-off pulling image"), "{d}");

    // A reference that does not parse: its own reason, an Event, no pull.
    c.wait_for("InvalidImageName", Duration::from_secs(30), || {
        waiting_reason(&c, "badref") == "InvalidImageName"
    });
    let d = describe(&c, "badref");
    assert!(d.contains("is invalid"), "{d}");

    // No pull secret for a registry that wants one: the registry's 401.
    c.wait_for("nosecret ImagePullBackOff", Duration::from_secs(60), || {
        waiting_reason(&c, "nosecret") == "ImagePullBackOff"
    });
    let d = describe(&c, "nosecret");
    assert!(
        d.contains("ErrImagePull") && d.contains("Failed to pull image"),
        "{d}"
    );
    assert!(d.contains("unauthorized") && d.contains("401"), "{d}");

    // No manifest for the node's platform: the pod's status says so.
    let node_platform = Platform::host().to_string();
    let mut seen = String::new();
    c.wait_for(
        "foreign's no-platform error",
        Duration::from_secs(60),
        || {
            let reason = waiting_reason(&c, "foreign");
            seen = format!("{reason}: {}", waiting_message(&c, "foreign"));
            reason == "ErrImagePull" && seen.contains("no manifest for platform")
        },
    );
    assert!(
        seen.contains(&node_platform) && seen.contains("linux/riscv64, linux/s390x"),
        "{seen}"
    );
    let d = describe(&c, "foreign");
    assert!(d.contains("no manifest for platform"), "{d}");

    // `Never` with the image absent: never pulled, its own reason.
    c.wait_for("ErrImageNeverPull", Duration::from_secs(30), || {
        waiting_reason(&c, "never") == "ErrImageNeverPull"
    });
    let msg = waiting_message(&c, "never");
    assert!(msg.contains("pull policy of Never"), "{msg}");
    let d = describe(&c, "never");
    assert!(
        d.contains("ErrImageNeverPull") && !d.contains("Pulling"),
        "{d}"
    );

    // The agent keeps running: the node reports Ready, the first pod still
    // runs, and a pod applied now pulls (over HTTPS again) and runs.
    assert!(c.child.as_ref().is_some());
    let nodes = c.ok(&["get", "nodes"]);
    assert!(
        nodes.contains("Ready") && !nodes.contains("NotReady"),
        "{nodes}"
    );
    assert_eq!(
        c.json(&["get", "pod", "pulled"])["status"]["phase"],
        "Running"
    );
    let late = format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: late}}
spec:
  imagePullSecrets: [{{name: regcred}}]
  containers:
  - name: main
    image: {app2}
    command: ["/bin/busybox", "sleep", "3600"]
"#
    );
    let file = env.path("late.yaml");
    std::fs::write(&file, late).unwrap();
    c.ok(&["apply", "-f", file.to_str().unwrap()]);
    c.wait_for("the late pod Running", Duration::from_secs(60), || {
        c.json(&["get", "pod", "late"])["status"]["phase"] == "Running"
    });
    let ls = String::from_utf8(
        Command::new(BIN)
            .args(["image", "ls", "--data-dir"])
            .arg(&c.data_dir)
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert!(
        ls.contains("test/app:v1") && ls.contains("test/app2:v1"),
        "{ls}"
    );
    assert!(!ls.contains("test/foreign"), "{ls}");
}
