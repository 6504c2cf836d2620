//! `bramble image prepare-sd IMAGE|DEVICE`: writes onto a Raspberry Pi OS
//! image (`.img`, `.img.xz`) or SD card what a Pi needs to join the cluster
//! on first boot, with no keyboard: the binary, the worker's settings, the
//! unit, the memory cgroup kernel arguments and the first-boot step
//! (`crate::install::sd` does the work).

use std::path::PathBuf;
use std::process::ExitCode;

use crate::install::boot::MARKER;
use crate::install::sd::{self, FirstBootHook, PrepareOptions};
use crate::install::{InstallError, name};

use super::CliError;
use super::install::WorkerFlags;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A Raspberry Pi OS image (`.img`, or `.img.xz`, unpacked beside it) or
    /// an SD card's block device (`/dev/sdb`, `/dev/mmcblk0`), not mounted.
    pub target: PathBuf,
    /// The `bramble` binary built for the image's architecture
    /// (aarch64 for 64-bit Raspberry Pi OS, armv7 for 32-bit; cross/README.md).
    #[arg(long)]
    pub binary: PathBuf,
    #[command(flatten)]
    pub settings: WorkerFlags,
    /// The node's name. One image flashed onto several Pis needs a rule instead.
    #[arg(long, conflicts_with = "node_name_rule")]
    pub node_name: Option<String>,
    /// How the Pi names itself on first boot (and sets its hostname):
    /// `{serial}`, `{mac}`, `{hostname}` and literal text.
    #[arg(long, default_value = "pi-{serial}")]
    pub node_name_rule: String,
    /// Where an `.img.xz` is unpacked (default: beside it, without `.xz`).
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Overwrite the unpacked image if it exists.
    #[arg(long)]
    pub force: bool,
}

pub fn run(a: Args) -> Result<ExitCode, CliError> {
    if a.settings.token.is_none() {
        return Err(InstallError::Invalid {
            field: "token",
            reason:
                "required: a flashed Pi joins with it (the master's /var/lib/bramble/join-token)"
                    .into(),
        }
        .into());
    }
    let worker = a.settings.settings(a.node_name.clone())?.to_file()?;
    let rule = match &a.node_name {
        Some(_) => None,
        None => {
            name::check_rule(&a.node_name_rule)?;
            Some(a.node_name_rule.clone())
        }
    };
    let prepared = sd::prepare(&PrepareOptions {
        target: a.target,
        output: a.output,
        force: a.force,
        binary: a.binary,
        worker,
        node_name_rule: rule.clone(),
    })?;
    println!("prepared {}", prepared.image.display());
    println!("  architecture: {}", prepared.arch);
    let kernels = if prepared.kernels.is_empty() {
        "none found".to_string()
    } else {
        prepared.kernels.join(", ")
    };
    let args = if prepared.cgroup_args.is_empty() {
        "none needed".to_string()
    } else {
        prepared.cgroup_args.join(" ")
    };
    println!("  kernels: {kernels}; memory cgroup arguments: {args}");
    let hook = match prepared.hook {
        FirstBootHook::CloudInit => "cloud-init user-data (bootcmd)",
        FirstBootHook::Firstrun => "firstrun.sh (systemd.run= in cmdline.txt)",
    };
    println!("  first boot: {hook}, marked {MARKER}");
    match (
        &rule,
        prepared.root.changed.is_empty() && prepared.boot.changed.is_empty(),
    ) {
        (_, true) => println!("  nothing changed: the image was already prepared this way"),
        (Some(rule), false) => println!("  the node names itself {rule} on first boot"),
        (None, false) => {}
    }
    for p in &prepared.root.changed {
        println!("  wrote {p}");
    }
    for p in &prepared.boot.changed {
        println!("  wrote {}/{p}", prepared.boot_path);
    }
    Ok(ExitCode::SUCCESS)
}
