//! `bramble image import FILE | ls | rm REF`: the local node's image store.
//! Importing works without a registry: an OCI image-layout archive or a
//! `docker save` archive goes straight into the content-addressed store the
//! node's runtime reads.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::config::Layout;
use crate::runtime::ImageStore;

use super::CliError;

#[derive(clap::Subcommand, Debug)]
pub enum Cmd {
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
                "this cluster's config names no local data directory; pass --data-dir".into(),
            )
        })?,
    };
    let layout = Layout::new(&dir)?;
    Ok(ImageStore::open(&layout.images())?)
}

pub async fn run(cmd: Cmd, config: Option<&Path>) -> Result<ExitCode, CliError> {
    match cmd {
        Cmd::Import { file, data_dir } => {
            let images = store(data_dir, config)?;
            let imported = tokio::task::spawn_blocking(move || images.import_archive(&file))
                .await
                .map_err(|e| CliError::Usage(format!("import task failed: {e}")))??;
            for img in imported {
                println!("imported {} ({})", img.reference, img.digest);
            }
        }
        Cmd::Ls { data_dir } => {
            let images = store(data_dir, config)?;
            println!("{:<50} {:<20} {:>10}", "IMAGE", "DIGEST", "SIZE");
            for img in images.list()? {
                let short = img
                    .digest
                    .trim_start_matches("sha256:")
                    .chars()
                    .take(12)
                    .collect::<String>();
                println!(
                    "{:<50} {:<20} {:>10}",
                    img.reference,
                    short,
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
    }
    Ok(ExitCode::SUCCESS)
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
