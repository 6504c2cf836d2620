//! Importing an archive: OCI image layout or `docker save`, optionally gzipped.
//!
//! The archive is staged (extracted) under the store's `tmp/`, the images in
//! it are chosen (one manifest per name, for the node's platform), every blob
//! is verified against its digest, and only then are layers, config, manifest
//! and finally the references renamed into the store.
//!
//! A store that keeps layer blobs (the master's, for its mirror) also keeps
//! each image whole, as the archive holds it: the index with every
//! platform's manifest, config and layer blobs, each verified; only the
//! node's own platform is unpacked. An image with no manifest for the
//! node's platform is then kept for the mirror alone instead of refused.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use oci_spec::image::{
    Descriptor, ImageConfiguration, ImageIndex, ImageIndexBuilder, ImageManifest,
    ImageManifestBuilder, MediaType,
};
use serde::Deserialize;

use super::layer::{self, HashingReader, sha256_digest};
use super::platform::{Platform, select_platform};
use super::reference::normalize;
use super::{ImageStore, ImageSummary, Served, io_err};
use crate::runtime::RuntimeError;

const NAME_ANNOTATION: &str = "io.containerd.image.name";
const REF_NAME_ANNOTATION: &str = "org.opencontainers.image.ref.name";

/// One image chosen from the archive, verified, ready to commit.
struct Candidate {
    names: Vec<String>,
    manifest_bytes: Vec<u8>,
    manifest_digest: String,
    manifest: ImageManifest,
    config_bytes: Vec<u8>,
    config: ImageConfiguration,
    /// Staged layer blobs, bottom first.
    layer_files: Vec<PathBuf>,
}

/// An image as the mirror serves it: its top manifest or index, and every
/// blob below it, verified, ready to commit.
struct ServedImage {
    names: Vec<String>,
    /// The index (or manifest) the mirror answers for the names.
    top_digest: String,
    /// Layers first, the top last: a reader never finds a manifest whose
    /// blobs are not there yet.
    blobs: Vec<(String, Staged)>,
}

enum Staged {
    Bytes(Vec<u8>),
    /// A verified file in the staging directory.
    File(PathBuf),
}

/// What an archive holds: images for this node, and (keeping blobs) the
/// images whole for the mirror.
#[derive(Default)]
struct Chosen {
    candidates: Vec<Candidate>,
    served: Vec<ServedImage>,
}

/// A staging directory removed on drop, whatever happened.
struct Staging(PathBuf);

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

pub(super) fn import(
    store: &ImageStore,
    file: &Path,
    platform: &Platform,
) -> Result<Vec<ImageSummary>, RuntimeError> {
    let staging = Staging(store.tmp_path("import"));
    fs::create_dir(&staging.0).map_err(io_err(format!("creating {}", staging.0.display())))?;
    extract(file, &staging.0)?;
    let dir = fs::canonicalize(&staging.0).map_err(io_err("staging directory"))?;
    let keep = store.keeps_layer_blobs();
    let chosen = if dir.join("index.json").is_file() {
        oci_layout(&dir, platform, file, keep)?
    } else if dir.join("manifest.json").is_file() {
        docker_save(&dir, platform, file, keep)?
    } else {
        return Err(RuntimeError::Image(format!(
            "{}: neither an OCI image layout (no index.json) nor a docker save archive (no manifest.json)",
            file.display()
        )));
    };
    // Blobs for the mirror first, so a ref never names a manifest the
    // mirror cannot serve whole.
    for served in &chosen.served {
        store_served_blobs(store, served)?;
    }
    let mut summaries = Vec::new();
    let mut runnable = HashSet::new();
    for c in chosen.candidates {
        let s = commit(store, c)?;
        runnable.extend(s.iter().map(|s| (s.reference.clone(), s.digest.clone())));
        summaries.extend(s);
    }
    for served in chosen.served {
        summaries.extend(commit_served(store, served, &runnable)?);
    }
    Ok(summaries)
}

/// Extracts the outer archive: only directories, files and symlinks that stay inside.
fn extract(file: &Path, dest: &Path) -> Result<(), RuntimeError> {
    let what = file.display().to_string();
    let f = fs::File::open(file).map_err(io_err(format!("opening {what}")))?;
    let mut archive = tar::Archive::new(layer::decompress(f, &what)?);
    for entry in archive
        .entries()
        .map_err(io_err(format!("reading {what}")))?
    {
        let mut entry = entry.map_err(io_err(format!("reading {what}")))?;
        let kind = entry.header().entry_type();
        if !(kind.is_file() || kind.is_dir() || kind.is_symlink()) {
            continue;
        }
        let path = entry.path().map_err(io_err(format!("reading {what}")))?;
        layer::relative_inside(&path)?;
        if !entry
            .unpack_in(dest)
            .map_err(io_err(format!("extracting {what}")))?
        {
            return Err(RuntimeError::Image(format!(
                "{what}: entry would land outside the archive"
            )));
        }
    }
    Ok(())
}

/// `dir/rel`, resolved, refusing anything (e.g. a symlink) leading outside `dir`.
fn staged_file(dir: &Path, rel: &str) -> Result<PathBuf, RuntimeError> {
    let rel = layer::relative_inside(Path::new(rel))?;
    let path = fs::canonicalize(dir.join(&rel))
        .map_err(io_err(format!("archive member {}", rel.display())))?;
    if !path.starts_with(dir) || !path.is_file() {
        return Err(RuntimeError::Image(format!(
            "archive member {} is not a file inside the archive",
            rel.display()
        )));
    }
    Ok(path)
}

fn blob_file(dir: &Path, digest: &str) -> Result<PathBuf, RuntimeError> {
    let (alg, hex) = digest
        .split_once(':')
        .ok_or_else(|| RuntimeError::Image(format!("malformed digest {digest:?}")))?;
    staged_file(dir, &format!("blobs/{alg}/{hex}"))
}

/// Reads a small (JSON) blob and checks its digest and size.
fn read_verified(dir: &Path, desc: &Descriptor, what: &str) -> Result<Vec<u8>, RuntimeError> {
    let digest = desc.digest().to_string();
    let bytes = fs::read(blob_file(dir, &digest)?).map_err(io_err(format!("reading {what}")))?;
    let actual = sha256_digest(&bytes);
    if actual != digest {
        return Err(RuntimeError::DigestMismatch {
            what: what.to_string(),
            expected: digest,
            actual,
        });
    }
    if bytes.len() as u64 != desc.size() {
        return Err(RuntimeError::Image(format!(
            "{what}: size {} does not match the descriptor's {}",
            bytes.len(),
            desc.size()
        )));
    }
    Ok(bytes)
}

fn is_index(media_type: &MediaType) -> bool {
    match media_type {
        MediaType::ImageIndex => true,
        MediaType::Other(m) => m == "application/vnd.docker.distribution.manifest.list.v2+json",
        _ => false,
    }
}

pub(super) fn descriptor_platform(d: &Descriptor) -> Option<Platform> {
    d.platform().as_ref().map(|p| {
        Platform::new(
            &p.os().to_string(),
            &p.architecture().to_string(),
            p.variant().as_deref(),
        )
    })
}

fn available(descs: &[&Descriptor]) -> String {
    let list: Vec<String> = descs
        .iter()
        .map(|d| descriptor_platform(d).map_or_else(|| "(none)".to_string(), |p| p.to_string()))
        .collect();
    list.join(", ")
}

/// The image name an OCI index entry carries, if any. A bare tag in
/// `ref.name` (`latest`) names no repository, so it names nothing.
fn entry_name(d: &Descriptor) -> Option<String> {
    let annotations = d.annotations().as_ref()?;
    if let Some(n) = annotations.get(NAME_ANNOTATION) {
        return Some(n.clone());
    }
    annotations
        .get(REF_NAME_ANNOTATION)
        .filter(|r| r.contains('/') || r.contains(':'))
        .cloned()
}

fn oci_layout(
    dir: &Path,
    platform: &Platform,
    file: &Path,
    keep: bool,
) -> Result<Chosen, RuntimeError> {
    let index_path = dir.join("index.json");
    let index = ImageIndex::from_file(&index_path)
        .map_err(|e| RuntimeError::Image(format!("{}: index.json: {e}", file.display())))?;
    // Entries naming the same image (or all unnamed ones) are alternatives,
    // one per platform.
    let mut groups: Vec<(Option<String>, Vec<&Descriptor>)> = Vec::new();
    for d in index.manifests() {
        let name = entry_name(d);
        match groups.iter_mut().find(|(n, _)| *n == name) {
            Some((_, v)) => v.push(d),
            None => groups.push((name, vec![d])),
        }
    }
    let mut out = Chosen::default();
    for (name, descs) in groups {
        let what = format!(
            "{} ({})",
            file.display(),
            name.as_deref().unwrap_or("unnamed")
        );
        let names = match &name {
            Some(n) => vec![normalize(n)?],
            None => vec![],
        };
        if descs.len() > 1 && descs.iter().all(|d| descriptor_platform(d).is_none()) {
            return Err(RuntimeError::Image(format!(
                "{what}: {} manifests with neither distinct names nor platforms",
                descs.len()
            )));
        }
        match host_candidate(dir, &descs, platform, &what, names.clone()) {
            Ok(c) => out.candidates.push(c),
            // Kept whole for the mirror: other nodes may run it.
            Err(RuntimeError::NoMatchingPlatform { .. }) if keep => {
                tracing::info!(image = %what, %platform, "no manifest for this node's platform: kept for the registry mirror only");
            }
            Err(e) => return Err(e),
        }
        if keep {
            out.served.push(served_image(dir, &descs, &what, names)?);
        }
    }
    Ok(out)
}

/// The image of a group of index entries (one per platform) for `platform`.
fn host_candidate(
    dir: &Path,
    descs: &[&Descriptor],
    platform: &Platform,
    what: &str,
    names: Vec<String>,
) -> Result<Candidate, RuntimeError> {
    let chosen = if descs.len() == 1 {
        descs[0]
    } else {
        let platforms: Vec<_> = descs.iter().map(|d| descriptor_platform(d)).collect();
        let i = select_platform(&platforms, platform).ok_or_else(|| {
            RuntimeError::NoMatchingPlatform {
                what: what.to_string(),
                wanted: platform.to_string(),
                available: available(descs),
            }
        })?;
        descs[i]
    };
    let (manifest_digest, manifest_bytes, manifest) =
        resolve_manifest(dir, chosen, platform, what, 0)?;
    let config_bytes = read_verified(dir, manifest.config(), &format!("{what}: config"))?;
    let config = parse_config(&config_bytes, what)?;
    check_config_platform(&config, platform, what)?;
    let layer_files = manifest
        .layers()
        .iter()
        .map(|l| blob_file(dir, l.digest().as_ref()))
        .collect::<Result<_, _>>()?;
    Ok(Candidate {
        names,
        manifest_bytes,
        manifest_digest,
        manifest,
        config_bytes,
        config,
        layer_files,
    })
}

/// The whole image of a group of index entries, for the mirror: the one
/// entry, or an index made of the several (one per platform), with every
/// blob below verified. Manifests whose blobs the archive lacks are left
/// out (the mirror answers 404 for them and nodes fall back to the
/// registry); a blob that does not match its digest fails the import.
fn served_image(
    dir: &Path,
    descs: &[&Descriptor],
    what: &str,
    names: Vec<String>,
) -> Result<ServedImage, RuntimeError> {
    let mut blobs = Vec::new();
    let top_digest = if let [one] = descs {
        if !served_tree(dir, one, what, 0, &mut blobs)? {
            return Err(RuntimeError::Image(format!(
                "{what}: the archive lacks blobs of manifest {}",
                one.digest()
            )));
        }
        one.digest().to_string()
    } else {
        let mut kept = Vec::new();
        for d in descs {
            if served_tree(dir, d, what, 1, &mut blobs)? {
                kept.push((*d).clone());
            }
        }
        let index = ImageIndexBuilder::default()
            .schema_version(2u32)
            .media_type(MediaType::ImageIndex)
            .manifests(kept)
            .build()
            .map_err(|e| RuntimeError::Image(format!("{what}: building an index: {e}")))?;
        let bytes = index
            .to_string()
            .map_err(|e| RuntimeError::Image(format!("{what}: {e}")))?
            .into_bytes();
        let digest = sha256_digest(&bytes);
        blobs.push((digest.clone(), Staged::Bytes(bytes)));
        digest
    };
    Ok(ServedImage {
        names,
        top_digest,
        blobs,
    })
}

/// Adds `desc`'s blob and everything below it to `out` (bottom first), each
/// verified. `false` when a blob is missing from the archive (nothing of
/// this subtree is added then).
fn served_tree(
    dir: &Path,
    desc: &Descriptor,
    what: &str,
    depth: u32,
    out: &mut Vec<(String, Staged)>,
) -> Result<bool, RuntimeError> {
    if depth > super::MAX_INDEX_DEPTH {
        return Err(RuntimeError::Image(format!(
            "{what}: indexes nested too deep"
        )));
    }
    let digest = desc.digest().to_string();
    if blob_file(dir, &digest).is_err() {
        tracing::debug!(image = %what, %digest, "not in the archive: not kept for the mirror");
        return Ok(false);
    }
    let bytes = read_verified(dir, desc, &format!("{what}: manifest {digest}"))?;
    let mut mine = Vec::new();
    match Served::parse(&bytes) {
        Some(Served::Index(index)) => {
            let mut any = false;
            for d in index.manifests() {
                any |= served_tree(dir, d, what, depth + 1, &mut mine)?;
            }
            if !any {
                return Ok(false);
            }
        }
        Some(Served::Manifest(manifest)) => {
            let config = manifest.config();
            if blob_file(dir, config.digest().as_ref()).is_err() {
                return Ok(false);
            }
            let cbytes =
                read_verified(dir, config, &format!("{what}: config {}", config.digest()))?;
            for l in manifest.layers() {
                let Ok(path) = blob_file(dir, l.digest().as_ref()) else {
                    return Ok(false);
                };
                let f = fs::File::open(&path)
                    .map_err(io_err(format!("{what}: layer {}", l.digest())))?;
                let (actual, size) = HashingReader::new(f)
                    .finish()
                    .map_err(io_err(format!("{what}: hashing layer {}", l.digest())))?;
                if actual != l.digest().as_ref() {
                    return Err(RuntimeError::DigestMismatch {
                        what: format!("{what}: layer"),
                        expected: l.digest().to_string(),
                        actual,
                    });
                }
                if size != l.size() {
                    return Err(RuntimeError::Image(format!(
                        "{what}: layer {}: size {size} does not match the descriptor's {}",
                        l.digest(),
                        l.size()
                    )));
                }
                mine.push((l.digest().to_string(), Staged::File(path)));
            }
            mine.push((config.digest().to_string(), Staged::Bytes(cbytes)));
        }
        None => {
            return Err(RuntimeError::Image(format!(
                "{what}: blob {digest} is neither an image manifest nor an index"
            )));
        }
    }
    out.extend(mine);
    out.push((digest, Staged::Bytes(bytes)));
    Ok(true)
}

/// Follows nested indexes down to the one manifest for `platform`.
fn resolve_manifest(
    dir: &Path,
    desc: &Descriptor,
    platform: &Platform,
    what: &str,
    depth: u32,
) -> Result<(String, Vec<u8>, ImageManifest), RuntimeError> {
    if depth > 4 {
        return Err(RuntimeError::Image(format!(
            "{what}: indexes nested too deep"
        )));
    }
    let bytes = read_verified(dir, desc, &format!("{what}: manifest {}", desc.digest()))?;
    let looks_like_index = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .is_some_and(|v| v.get("manifests").is_some());
    if is_index(desc.media_type()) || looks_like_index {
        let index = ImageIndex::from_reader(&bytes[..])
            .map_err(|e| RuntimeError::Image(format!("{what}: index {}: {e}", desc.digest())))?;
        let descs: Vec<&Descriptor> = index.manifests().iter().collect();
        let platforms: Vec<_> = descs.iter().map(|d| descriptor_platform(d)).collect();
        let i = select_platform(&platforms, platform).ok_or_else(|| {
            RuntimeError::NoMatchingPlatform {
                what: what.to_string(),
                wanted: platform.to_string(),
                available: available(&descs),
            }
        })?;
        return resolve_manifest(dir, descs[i], platform, what, depth + 1);
    }
    let manifest = ImageManifest::from_reader(&bytes[..])
        .map_err(|e| RuntimeError::Image(format!("{what}: manifest {}: {e}", desc.digest())))?;
    Ok((desc.digest().to_string(), bytes, manifest))
}

fn parse_config(bytes: &[u8], what: &str) -> Result<ImageConfiguration, RuntimeError> {
    ImageConfiguration::from_reader(bytes)
        .map_err(|e| RuntimeError::Image(format!("{what}: image config: {e}")))
}

pub(super) fn check_config_platform(
    config: &ImageConfiguration,
    platform: &Platform,
    what: &str,
) -> Result<(), RuntimeError> {
    let image = Platform::new(
        &config.os().to_string(),
        &config.architecture().to_string(),
        config.variant().as_deref(),
    );
    if image.rank_on(platform).is_none() {
        return Err(RuntimeError::NoMatchingPlatform {
            what: what.to_string(),
            wanted: platform.to_string(),
            available: image.to_string(),
        });
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// `docker save`: no OCI manifest in the archive, so one is written the way
/// containerd does, from the config and the layer tars as stored.
fn docker_save(
    dir: &Path,
    platform: &Platform,
    file: &Path,
    keep: bool,
) -> Result<Chosen, RuntimeError> {
    let manifest_path = dir.join("manifest.json");
    let bytes = fs::read(&manifest_path).map_err(io_err("reading manifest.json"))?;
    let entries: Vec<DockerEntry> = serde_json::from_slice(&bytes)
        .map_err(|e| RuntimeError::Image(format!("{}: manifest.json: {e}", file.display())))?;
    let mut out = Chosen::default();
    for entry in entries {
        let tags = entry.repo_tags.unwrap_or_default();
        let what = format!(
            "{} ({})",
            file.display(),
            tags.first().map_or("unnamed", String::as_str)
        );
        let config_bytes = fs::read(staged_file(dir, &entry.config)?)
            .map_err(io_err(format!("{what}: reading config")))?;
        let config = parse_config(&config_bytes, &what)?;
        let runs_here = match check_config_platform(&config, platform, &what) {
            Ok(()) => true,
            Err(RuntimeError::NoMatchingPlatform { .. }) if keep => {
                tracing::info!(image = %what, %platform, "not for this node's platform: kept for the registry mirror only");
                false
            }
            Err(e) => return Err(e),
        };
        let mut layers = Vec::new();
        let mut layer_files = Vec::new();
        for l in &entry.layers {
            let path = staged_file(dir, l)?;
            let mut f = fs::File::open(&path).map_err(io_err(format!("{what}: layer {l}")))?;
            let mut head = [0u8; 4];
            let n =
                io::Read::read(&mut f, &mut head).map_err(io_err(format!("{what}: layer {l}")))?;
            let media_type = match layer::sniff(&head[..n]) {
                layer::Compression::None => MediaType::ImageLayer,
                layer::Compression::Gzip => MediaType::ImageLayerGzip,
                layer::Compression::Zstd => MediaType::ImageLayerZstd,
            };
            let f = fs::File::open(&path).map_err(io_err(format!("{what}: layer {l}")))?;
            let (digest, size) = HashingReader::new(f)
                .finish()
                .map_err(io_err(format!("{what}: hashing layer {l}")))?;
            let digest: oci_spec::image::Digest = digest
                .parse()
                .map_err(|e| RuntimeError::Image(format!("{what}: {e}")))?;
            layers.push(Descriptor::new(media_type, size, digest));
            layer_files.push(path);
        }
        let config_digest: oci_spec::image::Digest = sha256_digest(&config_bytes)
            .parse()
            .map_err(|e| RuntimeError::Image(format!("{what}: {e}")))?;
        let manifest = ImageManifestBuilder::default()
            .schema_version(2u32)
            .media_type(MediaType::ImageManifest)
            .config(Descriptor::new(
                MediaType::ImageConfig,
                config_bytes.len() as u64,
                config_digest,
            ))
            .layers(layers)
            .build()
            .map_err(|e| RuntimeError::Image(format!("{what}: building manifest: {e}")))?;
        let manifest_bytes = manifest
            .to_string()
            .map_err(|e| RuntimeError::Image(format!("{what}: {e}")))?
            .into_bytes();
        let names: Vec<String> = tags
            .iter()
            .map(|t| normalize(t))
            .collect::<Result<_, _>>()?;
        let manifest_digest = sha256_digest(&manifest_bytes);
        if keep {
            // Hashed above, as the manifest now names them.
            let mut blobs: Vec<(String, Staged)> = manifest
                .layers()
                .iter()
                .zip(&layer_files)
                .map(|(l, f)| (l.digest().to_string(), Staged::File(f.clone())))
                .collect();
            blobs.push((
                manifest.config().digest().to_string(),
                Staged::Bytes(config_bytes.clone()),
            ));
            blobs.push((
                manifest_digest.clone(),
                Staged::Bytes(manifest_bytes.clone()),
            ));
            out.served.push(ServedImage {
                names: names.clone(),
                top_digest: manifest_digest.clone(),
                blobs,
            });
        }
        if runs_here {
            out.candidates.push(Candidate {
                names,
                manifest_digest,
                manifest_bytes,
                manifest,
                config_bytes,
                config,
                layer_files,
            });
        }
    }
    Ok(out)
}

/// Stores a served image's blobs (verified when chosen). Layer files are
/// hard-linked out of the staging directory: the node's own unpacking
/// still reads them there.
fn store_served_blobs(store: &ImageStore, served: &ServedImage) -> Result<(), RuntimeError> {
    for (digest, staged) in &served.blobs {
        let dest = store.blob_path(digest)?;
        if dest.is_file() {
            continue;
        }
        match staged {
            Staged::Bytes(bytes) => store.write_atomic(&dest, bytes)?,
            Staged::File(path) => {
                let tmp = store.tmp_path("blob");
                let linked = fs::hard_link(path, &tmp)
                    .or_else(|_| fs::copy(path, &tmp).map(|_| ()))
                    .and_then(|_| fs::rename(&tmp, &dest));
                if let Err(e) = linked {
                    let _ = fs::remove_file(&tmp);
                    return Err(io_err(format!("storing blob {digest}"))(e));
                }
            }
        }
    }
    Ok(())
}

/// Points the served image's names at what the mirror answers for them
/// when that is not the node's own manifest of the name (an index, or an
/// image for other platforms); otherwise the name's ref is what it serves.
fn commit_served(
    store: &ImageStore,
    served: ServedImage,
    runnable: &HashSet<(String, String)>,
) -> Result<Vec<ImageSummary>, RuntimeError> {
    let size = store.served_size(&served.top_digest)?;
    let mut out = Vec::new();
    let names = if served.names.is_empty() {
        // Kept alive under its digest, like an unnamed image's ref.
        vec![served.top_digest.clone()]
    } else {
        served.names
    };
    for name in names {
        if runnable.contains(&(name.clone(), served.top_digest.clone())) {
            store.remove_mirror_ref(&name)?;
            continue;
        }
        store.write_mirror_ref(&name, &served.top_digest)?;
        if !runnable.iter().any(|(r, _)| *r == name) {
            out.push(ImageSummary {
                reference: name,
                digest: served.top_digest.clone(),
                size,
                runs_here: false,
            });
        }
    }
    Ok(out)
}

/// Moves a verified candidate into the store: layers, config, manifest, refs.
fn commit(store: &ImageStore, c: Candidate) -> Result<Vec<ImageSummary>, RuntimeError> {
    let diff_ids = c.config.rootfs().diff_ids();
    if diff_ids.len() != c.manifest.layers().len() {
        return Err(RuntimeError::Image(format!(
            "manifest {} lists {} layers but its config {} diffIDs",
            c.manifest_digest,
            c.manifest.layers().len(),
            diff_ids.len()
        )));
    }
    for ((desc, diff_id), file) in c.manifest.layers().iter().zip(diff_ids).zip(&c.layer_files) {
        let dest = store.layer_dir(diff_id)?;
        if dest.is_dir() {
            continue;
        }
        let tmp = store.tmp_path("layer");
        let unpacked = layer::unpack_blob(file, &tmp, Some(desc.digest().as_ref()), diff_id)?;
        tracing::debug!(
            digest = %unpacked.digest,
            size = unpacked.size,
            diff_id = %unpacked.diff_id,
            "layer verified and unpacked"
        );
        if let Err(e) = fs::rename(&tmp, &dest) {
            let _ = fs::remove_dir_all(&tmp);
            // Another import of the same layer got there first: same content.
            if !dest.is_dir() {
                return Err(io_err(format!("storing layer {}", dest.display()))(e));
            }
        }
    }
    for (digest, bytes) in [
        (c.manifest.config().digest().to_string(), &c.config_bytes),
        (c.manifest_digest.clone(), &c.manifest_bytes),
    ] {
        let path = store.blob_path(&digest)?;
        if !path.is_file() {
            store.write_atomic(&path, bytes)?;
        }
    }
    let size =
        c.manifest.config().size() + c.manifest.layers().iter().map(|l| l.size()).sum::<u64>();
    let summary = |reference: String| ImageSummary {
        reference,
        digest: c.manifest_digest.clone(),
        size,
        runs_here: true,
    };
    if c.names.is_empty() {
        // Keep an unnamed image alive under its digest until it is tagged.
        let refs = store.refs()?;
        if !refs.iter().any(|(_, t)| *t == c.manifest_digest) {
            store.write_ref(&c.manifest_digest, &c.manifest_digest)?;
        }
        return Ok(vec![summary(c.manifest_digest.clone())]);
    }
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for name in &c.names {
        if seen.insert(name.clone()) {
            store.write_ref(name, &c.manifest_digest)?;
            out.push(summary(name.clone()));
        }
    }
    store.remove_placeholder(&c.manifest_digest)?;
    Ok(out)
}
