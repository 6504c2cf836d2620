//! `cargo bench --bench pull`: pulling a multi-layer image from a registry
//! on loopback (Debian's `docker-registry`), measured.
//!
//! - cold: into an empty store (every layer fetched, verified, unpacked);
//! - warm: again into the same store (manifest and config only, as a pull
//!   with `imagePullPolicy: Always` of an unchanged image);
//! - shared: a second image sharing all but its top layer.
//!
//! Run by `cargo test --all-targets` too, then in a quick mode (one round)
//! that only checks the bench runs to the end.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use bramble::runtime::images::PullOptions;
use bramble::runtime::{ImageStore, Platform};
use common::registry::{Layout, Registry, busybox_layer, noise_layer};

const NOISE_LAYERS: usize = 3;
const NOISE_BYTES: usize = 4_000_000;

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let rounds = if full { 10 } else { 1 };
    let dir = tempfile::Builder::new()
        .prefix("bramble-bench-pull-")
        .tempdir_in("/tmp")
        .unwrap();
    let reg = Registry::start(None);
    let host = Platform::host();
    let base: Vec<Vec<u8>> = std::iter::once(busybox_layer())
        .chain((0..NOISE_LAYERS).map(|i| noise_layer(&format!("n{i}"), NOISE_BYTES, i as u64)))
        .collect();
    let mut sizes = 0usize;
    for (tag, top) in [("v1", 1000u64), ("v2", 2000)] {
        let mut layers = base.clone();
        layers.push(noise_layer("top", 500_000, top));
        sizes = layers.iter().map(Vec::len).sum();
        let mut l = Layout::default();
        let m = l.manifest(&host.architecture, host.variant.as_deref(), &layers);
        l.tag(m, tag);
        let path = dir.path().join(format!("layout-{tag}"));
        l.write(&path);
        reg.push(&path, tag, "bench/app");
    }
    let v1 = format!("{}:v1", reg.image("bench/app"));
    let v2 = format!("{}:v2", reg.image("bench/app"));
    let options = PullOptions::default();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (mut cold, mut warm, mut shared) = (Vec::new(), Vec::new(), Vec::new());
    let mut fetched = 0;
    for round in 0..rounds {
        let store = ImageStore::open(&dir.path().join(format!("store-{round}"))).unwrap();
        rt.block_on(async {
            let t = Instant::now();
            let info = store.pull(&v1, &[], &options, &|_| {}).await.unwrap();
            cold.push(t.elapsed());
            fetched = info.pulled.unwrap().bytes_fetched;
            let t = Instant::now();
            store.pull(&v1, &[], &options, &|_| {}).await.unwrap();
            warm.push(t.elapsed());
            let t = Instant::now();
            let info = store.pull(&v2, &[], &options, &|_| {}).await.unwrap();
            shared.push(t.elapsed());
            assert_eq!(info.pulled.unwrap().layers_fetched, 1);
        });
        let _ = std::fs::remove_dir_all(dir.path().join(format!("store-{round}")));
    }
    println!(
        "image: {} layers, {:.1} MB unpacked, {:.1} MB fetched (gzip)",
        NOISE_LAYERS + 2,
        sizes as f64 / 1e6,
        fetched as f64 / 1e6
    );
    println!("| pull ({rounds} runs) | median | min | max |");
    println!("|---|---|---|---|");
    for (name, v) in [
        ("cold: every layer fetched", &mut cold),
        ("warm: already stored (manifest + config)", &mut warm),
        ("second image sharing all but one layer", &mut shared),
    ] {
        let (min, max) = (*v.iter().min().unwrap(), *v.iter().max().unwrap());
        println!("| {name} | {} | {} | {} |", ms(median(v)), ms(min), ms(max));
    }
}
