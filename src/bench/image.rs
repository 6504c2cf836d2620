//! The bench's images, the same bytes for Bramble and the peers: the demo
//! image's rootfs (Debian's static busybox, see `runtime::demo`) as-is, and
//! the "serve" image: that rootfs plus this very binary and the shared
//! libraries it loads, so a pod can run `bramble __bench-serve`.
//!
//! Writes only into the scratch directory it is given; the Bramble side goes
//! through `ImageStore::import_archive` like any user archive.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::json;
use sha2::{Digest, Sha256};

use super::{BenchError, io_err};
use crate::runtime::{ImageStore, Platform};

/// Where the serve image holds the bramble binary.
pub const SERVE_BINARY: &str = "/bin/bramble-serve";

fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

fn tar_err(path: &Path) -> impl FnOnce(std::io::Error) -> BenchError + '_ {
    move |source| BenchError::Io {
        context: format!("writing the image tar {}", path.display()),
        source,
    }
}

/// A header owned by root, with every numeric field set (unpackers insist).
fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_704_067_200);
    h
}

/// A plain rootfs tar of `dir` (what `docker import` takes, and the layer of
/// the OCI archive), with `extra` files (host path → path in the image) added.
pub fn rootfs_tar(dir: &Path, extra: &[(PathBuf, String)], out: &Path) -> Result<(), BenchError> {
    let file = std::fs::File::create(out).map_err(io_err(out))?;
    let mut b = tar::Builder::new(file);
    b.follow_symlinks(false);
    b.append_dir_all(".", dir).map_err(tar_err(out))?;
    let mut dirs_done = std::collections::BTreeSet::new();
    for (host, inside) in extra {
        let inside = inside.trim_start_matches('/');
        // Parents first (`lib/x86_64-linux-gnu/`), for tars that need them.
        let mut parent = Path::new(inside).parent();
        let mut parents = Vec::new();
        while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
            parents.push(p.to_path_buf());
            parent = p.parent();
        }
        for p in parents.into_iter().rev() {
            if dir.join(&p).exists() || !dirs_done.insert(p.clone()) {
                continue;
            }
            let mut h = header(tar::EntryType::Directory, 0o755, 0);
            b.append_data(&mut h, format!("{}/", p.display()), &[][..])
                .map_err(tar_err(out))?;
        }
        // Follows symlinks on the host (libc.so.6 → libc-2.36.so): the image
        // gets the file under the name the loader asks for.
        let data = std::fs::read(host).map_err(io_err(host))?;
        let mut h = header(tar::EntryType::Regular, 0o755, data.len() as u64);
        b.append_data(&mut h, inside, &data[..])
            .map_err(tar_err(out))?;
    }
    b.into_inner().map_err(tar_err(out))?;
    Ok(())
}

/// The shared libraries `exe` loads (`ldd`), as (host path, same path).
pub fn libraries(exe: &Path) -> Result<Vec<(PathBuf, String)>, BenchError> {
    let out = Command::new("ldd").arg(exe).output().map_err(io_err(exe))?;
    if !out.status.success() {
        // A static binary needs nothing.
        return Ok(Vec::new());
    }
    Ok(parse_ldd(&String::from_utf8_lossy(&out.stdout)))
}

fn parse_ldd(text: &str) -> Vec<(PathBuf, String)> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            let path = match l.split_once("=>") {
                Some((_, right)) => right.split_whitespace().next()?,
                None => l.split_whitespace().next()?,
            };
            path.starts_with('/')
                .then(|| (PathBuf::from(path), path.to_string()))
        })
        .collect()
}

/// A copy of this binary without debug info (a debug build is hundreds of
/// megabytes, mostly DWARF), or a plain copy when `strip` is missing.
pub fn stripped_self(scratch: &Path) -> Result<PathBuf, BenchError> {
    let exe = std::env::current_exe().map_err(io_err(Path::new("/proc/self/exe")))?;
    let out = scratch.join("bramble-serve");
    let stripped = Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(&out)
        .arg(&exe)
        .status()
        .is_ok_and(|s| s.success());
    if !stripped {
        std::fs::copy(&exe, &out).map_err(io_err(&exe))?;
    }
    Ok(out)
}

/// Wraps a rootfs tar into an OCI image-layout archive named `name` (with
/// `cmd` as its default command) and imports it into `store`.
pub fn import_into_bramble(
    store: &ImageStore,
    rootfs_tar: &Path,
    name: &str,
    cmd: &[&str],
    scratch: &Path,
) -> Result<(), BenchError> {
    let layer = std::fs::read(rootfs_tar).map_err(io_err(rootfs_tar))?;
    let layer_digest = digest(&layer);
    let platform = Platform::host();
    let mut config = json!({
        "architecture": platform.architecture,
        "os": platform.os,
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": cmd,
            "WorkingDir": "/",
        },
        "rootfs": { "type": "layers", "diff_ids": [layer_digest] },
    });
    if let Some(v) = &platform.variant {
        config["variant"] = json!(v);
    }
    let config = config.to_string().into_bytes();
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": digest(&config),
            "size": config.len(),
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": layer_digest,
            "size": layer.len(),
        }],
    })
    .to_string()
    .into_bytes();
    let index = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest(&manifest),
            "size": manifest.len(),
            "annotations": {
                "io.containerd.image.name": name,
                "org.opencontainers.image.ref.name": name,
            },
        }],
    })
    .to_string()
    .into_bytes();
    let archive = scratch.join("oci-image.tar");
    let file = std::fs::File::create(&archive).map_err(io_err(&archive))?;
    let mut b = tar::Builder::new(file);
    let mut add = |path: &str, data: &[u8]| -> Result<(), BenchError> {
        let mut h = header(tar::EntryType::Regular, 0o644, data.len() as u64);
        b.append_data(&mut h, path, data).map_err(tar_err(&archive))
    };
    add("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    add("index.json", &index)?;
    for blob in [&layer[..], &config[..], &manifest[..]] {
        let hex = &digest(blob)["sha256:".len()..];
        add(&format!("blobs/sha256/{hex}"), blob)?;
    }
    b.into_inner().map_err(tar_err(&archive))?;
    let result = store.import_archive(&archive);
    let _ = std::fs::remove_file(&archive);
    result?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ldd() {
        // A Pi's ldd output: the parser must not care which triple the paths name.
        let text = "\tlinux-vdso.so.1 (0x0000ffff)\n\tlibseccomp.so.2 => /lib/aarch64-linux-gnu/libseccomp.so.2 (0x0000ff)\n\tlibc.so.6 => /lib/aarch64-linux-gnu/libc.so.6 (0x0000ff)\n\t/lib/ld-linux-aarch64.so.1 (0x0000ff)\n";
        let libs: Vec<String> = parse_ldd(text).into_iter().map(|(_, p)| p).collect();
        assert_eq!(
            libs,
            [
                "/lib/aarch64-linux-gnu/libseccomp.so.2",
                "/lib/aarch64-linux-gnu/libc.so.6",
                "/lib/ld-linux-aarch64.so.1"
            ]
        );
    }
}
