//! `bramble image pull REF | import FILE | ls | rm REF`: the image store of
//! the machine the CLI runs on (the data dir its config names, or
//! `--data-dir`). Pulling fetches from an OCI / Docker registry (the
//! platform of this machine unless `--platform`); importing works without a
//! registry from an OCI image-layout or `docker save` archive. Both go
//! straight into the content-addressed store the node's runtime reads. Run
//! on the master (whose CLI config `bramble master` writes), they fill the
//! store its registry mirror serves to every worker: an image imported there
//! reaches the cluster with no outside registry.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::config::Layout;
use crate::runtime::images::credentials::parse_docker_config;
use crate::runtime::images::{ImageRef, PullEvent, PullOptions, RegistryCa};
use crate::runtime::{Credential, ImageStore, Platform, RegistryAuth};

use super::CliError;

#[derive(clap::Subcommand, Debug)]
pub enum Cmd {
    /// Pull an image from a registry into this node's store.
    Pull {
        /// `busybox:1.36`, `reg.local:5000/app:v1`, `app@sha256:…`.
        reference: String,
        /// `OS/ARCH[/VARIANT]` to pick from a multi-arch image (default: this machine's).
        #[arg(long)]
        platform: Option<String>,
        /// Speak plain HTTP to this image's registry (loopback registries always are).
        #[arg(long)]
        insecure: bool,
        /// A PEM file of CAs to trust for the registry's HTTPS, besides the
        /// system's roots (a home-lab registry's own CA).
        #[arg(long, value_name = "FILE")]
        registry_ca: Option<PathBuf>,
        /// `USER:PASSWORD` for the image's registry.
        #[arg(long, value_name = "USER:PASSWORD")]
        creds: Option<String>,
        /// A docker `config.json` holding registry credentials (`auths`).
        #[arg(long, value_name = "FILE")]
        auth_file: Option<PathBuf>,
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Import an OCI image-layout or `docker save` archive (.tar, .tar.gz).
    Import {
        file: PathBuf,
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// List the images on this node.
    #[command(alias = "list")]
    Ls {
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Prepare a Raspberry Pi OS image or SD card to join the cluster on
    /// first boot (binary, worker settings, unit, kernel arguments).
    PrepareSd(super::prepare_sd::Args),
    /// Remove an image reference.
    Rm {
        reference: String,
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
}

fn store(data_dir: Option<PathBuf>, config: Option<&Path>) -> Result<ImageStore, CliError> {
    let dir = match data_dir {
        Some(d) => d,
        None => super::load_config(config)?.data_dir.ok_or_else(|| {
            CliError::Usage(
                "this cluster's config names no local data directory: `bramble image` works on the store of the machine it runs on; run it on the master (its registry mirror serves the workers) or pass --data-dir".into(),
            )
        })?,
    };
    let layout = Layout::new(&dir)?;
    Ok(ImageStore::open(&layout.images())?)
}

pub async fn run(cmd: Cmd, config: Option<&Path>) -> Result<ExitCode, CliError> {
    match cmd {
        Cmd::Pull {
            reference,
            platform,
            insecure,
            registry_ca,
            creds,
            auth_file,
            data_dir,
        } => {
            let images = store(data_dir, config)?;
            let mut options = PullOptions::default();
            if let Some(p) = platform {
                options.platform = Platform::parse(&p).ok_or_else(|| {
                    CliError::Usage(format!(
                        "--platform {p:?}: expected OS/ARCH[/VARIANT], like linux/arm64 or linux/arm/v7"
                    ))
                })?;
            }
            if let Some(path) = registry_ca {
                options.registry_ca = Some(
                    RegistryCa::load(&path)
                        .map_err(|e| CliError::Usage(format!("--registry-ca: {e}")))?,
                );
            }
            pull(&images, &reference, options, insecure, creds, auth_file).await?;
        }
        Cmd::Import { file, data_dir } => {
            let images = store(data_dir, config)?;
            let imported = tokio::task::spawn_blocking(move || images.import_archive(&file))
                .await
                .map_err(|e| CliError::Usage(format!("import task failed: {e}")))??;
            for img in imported {
                if img.runs_here {
                    println!("imported {} ({})", img.reference, img.digest);
                } else {
                    println!(
                        "imported {} ({}) for the registry mirror only: no manifest for this machine's platform",
                        img.reference, img.digest
                    );
                }
            }
        }
        Cmd::Ls { data_dir } => {
            let images = store(data_dir, config)?;
            println!("{:<50} {:<20} {:>10}", "IMAGE", "DIGEST", "SIZE");
            for img in images.list()? {
                let reference = if img.runs_here {
                    img.reference
                } else {
                    format!("{} (mirror only)", img.reference)
                };
                println!(
                    "{:<50} {:<20} {:>10}",
                    reference,
                    short(&img.digest),
                    human_size(img.size)
                );
            }
        }
        Cmd::Rm {
            reference,
            data_dir,
        } => {
            store(data_dir, config)?.remove(&reference)?;
            println!("removed {reference}");
        }
        Cmd::PrepareSd(a) => {
            return tokio::task::spawn_blocking(move || super::prepare_sd::run(a))
                .await
                .map_err(|e| CliError::Usage(format!("prepare-sd task failed: {e}")))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn pull(
    images: &ImageStore,
    reference: &str,
    mut options: PullOptions,
    insecure: bool,
    creds: Option<String>,
    auth_file: Option<PathBuf>,
) -> Result<(), CliError> {
    let registry = match ImageRef::parse(reference)? {
        ImageRef::Named { name, .. } => name.split('/').next().unwrap_or_default().to_string(),
        ImageRef::Digest(_) => {
            return Err(CliError::Usage(format!(
                "{reference}: a bare digest names a local image; pull NAME@sha256:… instead"
            )));
        }
    };
    if insecure {
        options.insecure_registries.push(registry.clone());
    }
    let mut auth = Vec::new();
    if let Some(c) = creds {
        let (username, password) = c
            .split_once(':')
            .ok_or_else(|| CliError::Usage("--creds: expected USER:PASSWORD".into()))?;
        auth.push(RegistryAuth {
            registry: registry.clone(),
            credential: Credential::Basic {
                username: username.into(),
                password: password.into(),
            },
        });
    }
    if let Some(file) = auth_file {
        let bytes = std::fs::read(&file).map_err(|source| CliError::Io {
            path: file.clone(),
            source,
        })?;
        auth.extend(
            parse_docker_config(&file.display().to_string(), &bytes)
                .map_err(|e| CliError::Usage(format!("--auth-file: {e}")))?,
        );
    }
    // Bars and plain lines both go to stdout, where the summary goes: the
    // choice and the drawing look at the same stream.
    let display = Progress::new(std::io::stdout().is_terminal());
    let info = images
        .pull(reference, &auth, &options, &|e| display.on(e))
        .await;
    display.finish();
    let info = info?;
    let stats = info.pulled.clone().unwrap_or_default();
    println!(
        "pulled {} ({}) for {} in {:.2}s: {} layers, {} fetched ({}), {} already present",
        info.reference,
        info.manifest_digest,
        options.platform,
        stats.duration.as_secs_f64(),
        stats.layers,
        stats.layers_fetched,
        human_size(stats.bytes_fetched),
        stats.layers - stats.layers_fetched
    );
    Ok(())
}

/// Pull progress: a bar per layer on a terminal, plain lines otherwise.
struct Progress {
    tty: bool,
    state: Mutex<ProgressState>,
}

#[derive(Default)]
struct ProgressState {
    multi: Option<MultiProgress>,
    bars: Vec<ProgressBar>,
    layers: Vec<(String, u64)>,
    started: Vec<bool>,
}

impl Progress {
    fn new(tty: bool) -> Progress {
        Progress {
            tty,
            state: Mutex::new(ProgressState::default()),
        }
    }

    fn on(&self, event: &PullEvent) {
        let mut st = self.state.lock().expect("progress lock");
        let n = st.layers.len();
        match event {
            PullEvent::Resolved {
                reference,
                manifest_digest,
                platform,
                layers,
            } => {
                st.layers = layers.clone();
                st.started = vec![false; layers.len()];
                if self.tty {
                    // indicatif's default target is stderr, which hides
                    // itself when stderr is not a terminal.
                    let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stdout());
                    let style = ProgressStyle::with_template(
                        "{prefix} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} {msg}",
                    )
                    .expect("valid progress template")
                    .progress_chars("=> ");
                    let n = layers.len();
                    st.bars = layers
                        .iter()
                        .enumerate()
                        .map(|(i, (d, size))| {
                            let bar = multi.add(ProgressBar::new(*size));
                            bar.set_style(style.clone());
                            bar.set_prefix(format!("layer {}/{n} {}", i + 1, short(d)));
                            bar.enable_steady_tick(Duration::from_millis(200));
                            bar
                        })
                        .collect();
                    st.multi = Some(multi);
                } else {
                    println!(
                        "pulling {reference} ({manifest_digest}) for {platform}: {} layers",
                        layers.len()
                    );
                }
            }
            PullEvent::LayerPresent { index } => {
                if let Some(bar) = st.bars.get(*index) {
                    // No bytes moved: no bar, no rate.
                    bar.set_style(
                        ProgressStyle::with_template("{prefix} {msg}")
                            .expect("valid progress template"),
                    );
                    bar.finish_with_message("already present");
                } else if let Some((d, _)) = st.layers.get(*index) {
                    println!("layer {}/{n} {} already present", index + 1, short(d));
                }
            }
            PullEvent::LayerProgress { index, done, total } => {
                if let Some(bar) = st.bars.get(*index) {
                    bar.set_position(*done);
                } else if st.started.get(*index) == Some(&false) {
                    st.started[*index] = true;
                    let d = st.layers.get(*index).map_or("", |(d, _)| d.as_str());
                    let resumed = if *done > 0 {
                        format!(", resuming at {}", human_size(*done))
                    } else {
                        String::new()
                    };
                    println!(
                        "layer {}/{n} {} fetching {}{resumed}",
                        index + 1,
                        short(d),
                        human_size(*total)
                    );
                }
            }
            PullEvent::LayerDone { index } => {
                if let Some(bar) = st.bars.get(*index) {
                    bar.finish_with_message("done");
                } else if let Some((d, _)) = st.layers.get(*index) {
                    println!("layer {}/{n} {} done", index + 1, short(d));
                }
            }
        }
    }

    /// Leaves the bars as they are (a failed pull shows where it stopped).
    fn finish(&self) {
        let st = self.state.lock().expect("progress lock");
        for bar in &st.bars {
            if !bar.is_finished() {
                bar.abandon();
            }
        }
    }
}

fn short(digest: &str) -> String {
    digest
        .trim_start_matches("sha256:")
        .chars()
        .take(12)
        .collect()
}

fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "kB", "MB", "GB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1000.0 && u < UNITS.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes}B")
    } else {
        format!("{v:.1}{}", UNITS[u])
    }
}
