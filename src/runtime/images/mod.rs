//! The node's image store: pulled from registries or imported from OCI /
//! docker archives, content-addressed.
//!
//! ```text
//! <root>/blobs/sha256/<hex>   manifests and configs, verified by digest before stored
//! <root>/layers/<hex>/        one unpacked layer per diffID, shared by every image using it
//! <root>/refs/<reference>     "sha256:<manifest hex>" (reference percent-encoded)
//! <root>/leases/<holder>      the image and layers a container still uses (kept by GC)
//! <root>/used/<hex>           when a manifest was last pulled or run (for disk-pressure GC)
//! <root>/downloads/<hex>.partial  a layer blob being fetched; resumed after a dropped connection
//! <root>/tmp/                 staging; renamed into place only once complete and verified
//! <root>/lock                 flock: shared while importing or pulling, exclusive while collecting
//! <root>/keep-layer-blobs     marker: this store also keeps compressed layer blobs (the master's, for its mirror)
//! <root>/mirror/<reference>   "sha256:<hex>": what the mirror serves for a reference when that is
//!                             not the node's own manifest (a multi-platform index, another platform)
//! ```
//!
//! The CLI (`bramble image import|pull`, its own process) and the agent use
//! one store at once, so there is no in-memory index: every write is a
//! complete file or directory renamed into place, and garbage collection
//! excludes imports and pulls through the lock file. Compressed layer blobs
//! are not kept once verified and unpacked: on a Pi's SD card the unpacked
//! layer is the copy that matters. The exception is a store that serves
//! other nodes ([`mirror`], the master's): with the `keep-layer-blobs`
//! marker, imports and pulls also keep every layer blob exactly as its
//! manifest names it (what a registry hands out), and imports keep the
//! whole multi-platform index with every platform's manifests, configs and
//! layers, unpacking only the node's own.
//!
//! - [`pull`]: registries (`oci-client`), platform selection, resumable downloads,
//!   the master's mirror first.
//! - [`mirror`]: the read-only OCI distribution endpoint over this store.
//! - [`credentials`]: docker `config.json` credentials and which apply to an image.
//! - [`gc`]: collection of unused images when the disk fills up.
//!
//! Must not touch: containers (the runtime holds leases on the layers it mounts).

pub mod credentials;
pub mod gc;
mod import;
pub(crate) mod layer;
pub mod mirror;
pub mod platform;
pub mod pull;
pub mod reference;

use std::collections::HashSet;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use oci_spec::image::{ImageConfiguration, ImageIndex, ImageManifest};
use serde::{Deserialize, Serialize};

pub use self::credentials::{Credential, RegistryAuth};
pub use self::gc::GcPolicy;
pub use self::platform::{Platform, select_platform};
pub use self::pull::{
    ImageAction, MirrorSlot, PullEvent, PullOptions, PullPolicy, RegistryCa, RegistryMirror,
};
pub use self::reference::{ImageRef, normalize};
use crate::runtime::RuntimeError;

#[derive(Clone, Debug)]
pub struct ImageStore {
    root: PathBuf,
}

/// An image ready to run: its config and its unpacked layers.
#[derive(Clone, Debug)]
pub struct ResolvedImage {
    /// The normalised reference it was resolved from.
    pub reference: String,
    pub manifest_digest: String,
    pub config: ImageConfiguration,
    /// Unpacked layer directories, bottom first.
    pub layer_dirs: Vec<PathBuf>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageSummary {
    /// Normalised reference, or the bare manifest digest for an unnamed image.
    pub reference: String,
    /// Manifest digest.
    pub digest: String,
    /// Compressed size: config plus layers, as the manifest records it.
    pub size: u64,
    /// This node can run it; `false` for an image kept only for the
    /// registry mirror (no manifest for this node's platform).
    pub runs_here: bool,
}

/// What [`Runtime::ensure_image`](crate::runtime::Runtime::ensure_image) found or fetched.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageInfo {
    /// The normalised reference.
    pub reference: String,
    pub manifest_digest: String,
    /// Compressed size: config plus layers, as the manifest records it.
    pub size: u64,
    /// Set when this call pulled the image from its registry.
    pub pulled: Option<PullStats>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullStats {
    pub layers: usize,
    /// Layers downloaded (the others were already in the store).
    pub layers_fetched: usize,
    pub bytes_fetched: u64,
    pub duration: std::time::Duration,
}

/// How a node pulls and collects images (`bramble up` flags).
#[derive(Clone, Debug, Default)]
pub struct ImageSettings {
    pub pull: PullOptions,
    pub gc: GcPolicy,
}

#[derive(Serialize, Deserialize)]
struct Lease {
    layers: Vec<String>,
    /// The image's manifest digest (absent in leases written before pulls existed).
    #[serde(default)]
    manifest: Option<String>,
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> RuntimeError {
    let context = context.into();
    move |source| RuntimeError::Io { context, source }
}

impl ImageStore {
    pub fn open(root: &Path) -> Result<ImageStore, RuntimeError> {
        for sub in [
            "blobs/sha256",
            "layers",
            "refs",
            "leases",
            "tmp",
            "downloads",
            "used",
            "mirror",
        ] {
            let dir = root.join(sub);
            fs::create_dir_all(&dir).map_err(io_err(format!("creating {}", dir.display())))?;
        }
        let lock = root.join("lock");
        fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&lock)
            .map_err(io_err(format!("creating {}", lock.display())))?;
        Ok(ImageStore {
            root: root.to_path_buf(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Imports an OCI image-layout tar or a `docker save` tar (either may be
    /// gzip-compressed), keeping only the manifests for this node's platform.
    pub fn import_archive(&self, file: &Path) -> Result<Vec<ImageSummary>, RuntimeError> {
        self.import_archive_for(file, &Platform::host())
    }

    /// [`import_archive`](Self::import_archive) for another node platform.
    pub fn import_archive_for(
        &self,
        file: &Path,
        platform: &Platform,
    ) -> Result<Vec<ImageSummary>, RuntimeError> {
        let _lock = self.lock(FlockArg::LockShared)?;
        import::import(self, file, platform)
    }

    pub fn resolve(&self, reference: &str) -> Result<ResolvedImage, RuntimeError> {
        let parsed = ImageRef::parse(reference)?;
        let canonical = parsed.to_string();
        let not_present = || RuntimeError::ImageNotPresent(canonical.clone());
        // A pulled `name@sha256:<index>` has a ref of its own pointing at the
        // platform's manifest; otherwise a digest names a stored manifest.
        let digest = match (self.read_ref(&canonical)?, parsed.digest()) {
            (Some(d), _) => d,
            (None, Some(d)) if self.refs()?.iter().any(|(_, target)| target == d) => d.to_string(),
            (None, _) => return Err(not_present()),
        };
        let manifest = self.manifest(&digest).map_err(|e| match e {
            RuntimeError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound => {
                not_present()
            }
            other => other,
        })?;
        let config = self.config_of(&manifest)?;
        let mut layer_dirs = Vec::new();
        for diff_id in config.rootfs().diff_ids() {
            let dir = self.layer_dir(diff_id)?;
            if !dir.is_dir() {
                return Err(RuntimeError::Image(format!(
                    "{canonical}: layer {diff_id} is missing from {}; import the image again",
                    self.root.display()
                )));
            }
            layer_dirs.push(dir);
        }
        Ok(ResolvedImage {
            reference: canonical,
            manifest_digest: digest,
            config,
            layer_dirs,
        })
    }

    /// What [`resolve`](Self::resolve) found, as the runtime seam reports it.
    pub fn info(&self, image: &ResolvedImage) -> ImageInfo {
        let size = self.manifest(&image.manifest_digest).map_or(0, |m| {
            m.config().size() + m.layers().iter().map(|l| l.size()).sum::<u64>()
        });
        ImageInfo {
            reference: image.reference.clone(),
            manifest_digest: image.manifest_digest.clone(),
            size,
            pulled: None,
        }
    }

    /// Every reference in the store, sorted.
    pub fn list(&self) -> Result<Vec<ImageSummary>, RuntimeError> {
        let mut out = Vec::new();
        for (reference, digest) in self.refs()? {
            let size = match self.manifest(&digest) {
                Ok(m) => m.config().size() + m.layers().iter().map(|l| l.size()).sum::<u64>(),
                // Collected by a concurrent remove between the two reads.
                Err(_) => continue,
            };
            out.push(ImageSummary {
                reference,
                digest,
                size,
                runs_here: true,
            });
        }
        // Images kept only for the mirror (other platforms than this node's).
        for (reference, digest) in self.mirror_refs()? {
            if out.iter().any(|s| s.reference == reference) {
                continue;
            }
            let Ok(size) = self.served_size(&digest) else {
                continue;
            };
            out.push(ImageSummary {
                reference,
                digest,
                size,
                runs_here: false,
            });
        }
        out.sort_by(|a, b| a.reference.cmp(&b.reference));
        Ok(out)
    }

    /// Removes a reference (a bare digest removes every reference to it),
    /// then collects what no reference nor lease still uses.
    pub fn remove(&self, reference: &str) -> Result<(), RuntimeError> {
        let parsed = ImageRef::parse(reference)?;
        let _lock = self.lock(FlockArg::LockExclusive)?;
        let doomed: Vec<String> = match &parsed {
            ImageRef::Digest(d) => self
                .refs()?
                .into_iter()
                .filter(|(_, t)| t == d)
                .map(|(r, _)| r)
                .collect(),
            // A pulled `name@sha256:<index>` is a ref of its own.
            ImageRef::Named {
                name,
                tag: None,
                digest: Some(d),
            } => {
                let canonical = parsed.to_string();
                self.refs()?
                    .into_iter()
                    .filter(|(r, t)| (t == d && ref_name(r) == name) || *r == canonical)
                    .map(|(r, _)| r)
                    .collect()
            }
            named => {
                let canonical = named.to_string();
                if self.read_ref(&canonical)?.is_some() {
                    vec![canonical]
                } else {
                    vec![]
                }
            }
        };
        let canonical = parsed.to_string();
        let doomed_mirror: Vec<String> = self
            .mirror_refs()?
            .into_iter()
            .filter(|(r, t)| match &parsed {
                ImageRef::Digest(d) => t == d,
                ImageRef::Named {
                    name,
                    tag: None,
                    digest: Some(d),
                } => (t == d && ref_name(r) == name) || *r == canonical,
                _ => *r == canonical,
            })
            .map(|(r, _)| r)
            .collect();
        if doomed.is_empty() && doomed_mirror.is_empty() {
            return Err(RuntimeError::ImageNotPresent(canonical));
        }
        for r in doomed {
            let path = self.ref_path(&r)?;
            fs::remove_file(&path).map_err(io_err(format!("removing {}", path.display())))?;
        }
        for r in doomed_mirror {
            self.remove_mirror_ref(&r)?;
        }
        self.collect_locked()
    }

    /// Points `reference` (a name with a tag) at an image already in the store.
    pub fn tag(&self, reference: &str, manifest_digest: &str) -> Result<(), RuntimeError> {
        let parsed = ImageRef::parse(reference)?;
        if parsed.digest().is_some() {
            return Err(RuntimeError::InvalidImageReference {
                reference: reference.into(),
                reason: "a tag cannot carry a digest".into(),
            });
        }
        let digest = ImageRef::parse(manifest_digest)?;
        let ImageRef::Digest(digest) = digest else {
            return Err(RuntimeError::InvalidImageReference {
                reference: manifest_digest.into(),
                reason: "expected a manifest digest sha256:<hex>".into(),
            });
        };
        let _lock = self.lock(FlockArg::LockShared)?;
        if !self.refs()?.iter().any(|(_, t)| *t == digest) {
            return Err(RuntimeError::ImageNotPresent(digest));
        }
        self.write_ref(&parsed.to_string(), &digest)?;
        // The name now means this node's manifest, for the mirror too.
        self.remove_mirror_ref(&parsed.to_string())?;
        self.remove_placeholder(&digest)
    }

    /// Whether this store keeps compressed layer blobs (and whole
    /// multi-platform images) for other nodes: the master's, which
    /// [`mirror`] serves.
    pub fn keeps_layer_blobs(&self) -> bool {
        self.root.join(KEEP_BLOBS_MARKER).exists()
    }

    /// Turns [`keeps_layer_blobs`](Self::keeps_layer_blobs) on or off; the
    /// setting is a file in the store, so the CLI's imports follow it.
    /// Turned off, the kept blobs go at the next collection.
    pub fn set_keep_layer_blobs(&self, keep: bool) -> Result<(), RuntimeError> {
        let path = self.root.join(KEEP_BLOBS_MARKER);
        if keep {
            if !path.exists() {
                self.write_atomic(&path, b"layer blobs are kept for the registry mirror\n")?;
            }
            return Ok(());
        }
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(io_err(format!("removing {}", path.display()))(e))
            }
            _ => Ok(()),
        }
    }

    /// What the mirror serves for `reference` (normalised) when it is not
    /// the reference's own manifest: an index, or another platform's image.
    pub(crate) fn read_mirror_ref(&self, reference: &str) -> Result<Option<String>, RuntimeError> {
        read_trimmed(&self.mirror_ref_path(reference)?)
    }

    pub(crate) fn write_mirror_ref(
        &self,
        reference: &str,
        digest: &str,
    ) -> Result<(), RuntimeError> {
        self.write_atomic(
            &self.mirror_ref_path(reference)?,
            format!("{digest}\n").as_bytes(),
        )
    }

    pub(crate) fn remove_mirror_ref(&self, reference: &str) -> Result<(), RuntimeError> {
        let path = self.mirror_ref_path(reference)?;
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(io_err(format!("removing {}", path.display()))(e))
            }
            _ => Ok(()),
        }
    }

    /// `(reference, digest)` for every mirror ref.
    pub(crate) fn mirror_refs(&self) -> Result<Vec<(String, String)>, RuntimeError> {
        list_refs(&self.root.join("mirror"))
    }

    fn mirror_ref_path(&self, reference: &str) -> Result<PathBuf, RuntimeError> {
        Ok(self
            .root
            .join("mirror")
            .join(self.ref_path(reference)?.file_name().unwrap_or_default()))
    }

    /// A stored manifest or index, parsed.
    pub(crate) fn served(&self, digest: &str) -> Result<Served, RuntimeError> {
        let path = self.blob_path(digest)?;
        let bytes = fs::read(&path).map_err(io_err(format!("reading manifest {digest}")))?;
        Served::parse(&bytes).ok_or_else(|| {
            RuntimeError::Image(format!("blob {digest} is not an image manifest or index"))
        })
    }

    /// Whether the mirror can hand out the manifest or index `digest`
    /// whole: it is stored, and so is every blob a manifest names (an
    /// index's manifests may be missing: those platforms come from their
    /// registry).
    pub fn servable(&self, digest: &str) -> bool {
        match self.served(digest) {
            Ok(Served::Index(_)) => true,
            Ok(Served::Manifest(m)) => self.missing_blob(&m).is_none(),
            Err(_) => false,
        }
    }

    /// The first blob `manifest` names that is not stored.
    pub(crate) fn missing_blob(&self, manifest: &ImageManifest) -> Option<String> {
        std::iter::once(manifest.config())
            .chain(manifest.layers())
            .map(|d| d.digest().to_string())
            .find(|d| !self.blob_path(d).is_ok_and(|p| p.is_file()))
    }

    /// Compressed size of what a manifest or an index (its stored
    /// manifests) names.
    fn served_size(&self, digest: &str) -> Result<u64, RuntimeError> {
        Ok(match self.served(digest)? {
            Served::Manifest(m) => manifest_size(&m),
            Served::Index(i) => i
                .manifests()
                .iter()
                .filter_map(|d| self.manifest(d.digest().as_ref()).ok())
                .map(|m| manifest_size(&m))
                .sum(),
        })
    }

    /// The digest-named ref only keeps an unnamed image alive; a name replaces it.
    pub(crate) fn remove_placeholder(&self, digest: &str) -> Result<(), RuntimeError> {
        let placeholder = self.ref_path(digest)?;
        match fs::remove_file(&placeholder) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(io_err(format!("removing {}", placeholder.display()))(e))
            }
            _ => Ok(()),
        }
    }

    /// Records that `holder` (a container) uses `image`'s layers, so garbage
    /// collection keeps them even once the image is removed. Fails if the
    /// layers were collected in the meantime.
    pub fn acquire_lease(&self, holder: &str, image: &ResolvedImage) -> Result<(), RuntimeError> {
        let _lock = self.lock(FlockArg::LockShared)?;
        let layers = image
            .layer_dirs
            .iter()
            .filter_map(|d| d.file_name()?.to_str().map(|h| format!("sha256:{h}")))
            .collect();
        let lease = Lease {
            layers,
            manifest: Some(image.manifest_digest.clone()),
        };
        let bytes = serde_json::to_vec(&lease).expect("lease serializes");
        self.write_atomic(&self.lease_path(holder)?, &bytes)?;
        self.touch_used(&image.manifest_digest);
        if let Some(missing) = image.layer_dirs.iter().find(|d| !d.is_dir()) {
            let _ = fs::remove_file(self.lease_path(holder)?);
            return Err(RuntimeError::ImageNotPresent(format!(
                "{} (layer {} was removed)",
                image.reference,
                missing.display()
            )));
        }
        Ok(())
    }

    pub fn release_lease(&self, holder: &str) -> Result<(), RuntimeError> {
        let path = self.lease_path(holder)?;
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(io_err(format!("removing {}", path.display()))(e))
            }
            _ => Ok(()),
        }
    }

    /// Deletes manifests, configs and layers that no reference nor lease
    /// uses, and leftovers of interrupted imports.
    pub fn garbage_collect(&self) -> Result<(), RuntimeError> {
        let _lock = self.lock(FlockArg::LockExclusive)?;
        self.collect_locked()
    }

    fn collect_locked(&self) -> Result<(), RuntimeError> {
        let mut live_blobs = HashSet::new();
        let mut live_layers = HashSet::new();
        for (_, digest) in self.refs()? {
            let Ok(manifest) = self.manifest(&digest) else {
                continue;
            };
            live_blobs.insert(hex_of(&digest).to_string());
            live_blobs.insert(hex_of(manifest.config().digest().as_ref()).to_string());
            // Kept only by a store that serves the mirror; absent elsewhere.
            for l in manifest.layers() {
                live_blobs.insert(hex_of(l.digest().as_ref()).to_string());
            }
            if let Ok(config) = self.config_of(&manifest) {
                for d in config.rootfs().diff_ids() {
                    live_layers.insert(hex_of(d).to_string());
                }
            }
        }
        for (_, digest) in self.mirror_refs()? {
            self.mark_served(&digest, &mut live_blobs, 0);
        }
        for entry in read_dir(&self.root.join("leases"))? {
            if let Ok(bytes) = fs::read(&entry)
                && let Ok(lease) = serde_json::from_slice::<Lease>(&bytes)
            {
                live_layers.extend(lease.layers.iter().map(|d| hex_of(d).to_string()));
            }
        }
        for blob in read_dir(&self.root.join("blobs/sha256"))? {
            if !file_name_in(&blob, &live_blobs) {
                fs::remove_file(&blob).map_err(io_err(format!("removing {}", blob.display())))?;
            }
        }
        for layer in read_dir(&self.root.join("layers"))? {
            if !file_name_in(&layer, &live_layers) {
                // Renamed first so that the layer vanishes at once, not file by file.
                let doomed = self.tmp_path("gc");
                fs::rename(&layer, &doomed)
                    .map_err(io_err(format!("moving {} away", layer.display())))?;
                fs::remove_dir_all(&doomed)
                    .map_err(io_err(format!("removing {}", doomed.display())))?;
            }
        }
        // No import runs while we hold the exclusive lock: all of tmp is debris.
        for entry in read_dir(&self.root.join("tmp"))? {
            let _ = fs::remove_dir_all(&entry).or_else(|_| fs::remove_file(&entry));
        }
        for used in read_dir(&self.root.join("used"))? {
            if !file_name_in(&used, &live_blobs) {
                let _ = fs::remove_file(&used);
            }
        }
        // A partial download is kept for a retry to resume, not for ever.
        for partial in read_dir(&self.root.join("downloads"))? {
            let stale = fs::metadata(&partial)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_none_or(|age| age > STALE_DOWNLOAD);
            if stale {
                let _ = fs::remove_file(&partial);
            }
        }
        Ok(())
    }

    /// Adds the blobs a mirror ref's tree holds (an index, its manifests,
    /// their configs and layers) to `live`.
    fn mark_served(&self, digest: &str, live: &mut HashSet<String>, depth: u32) {
        if depth > MAX_INDEX_DEPTH || !live.insert(hex_of(digest).to_string()) {
            return;
        }
        match self.served(digest) {
            Ok(Served::Manifest(m)) => {
                live.insert(hex_of(m.config().digest().as_ref()).to_string());
                for l in m.layers() {
                    live.insert(hex_of(l.digest().as_ref()).to_string());
                }
            }
            Ok(Served::Index(i)) => {
                for d in i.manifests() {
                    self.mark_served(d.digest().as_ref(), live, depth + 1);
                }
            }
            Err(_) => {}
        }
    }

    /// Records that the image `manifest_digest` was just pulled or run.
    /// Best effort: a failure only makes the image look older to GC.
    pub(crate) fn touch_used(&self, manifest_digest: &str) {
        let Ok(hex) = checked_hex(manifest_digest) else {
            return;
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let path = self.root.join("used").join(hex);
        if let Err(e) = self.write_atomic(&path, now.to_string().as_bytes()) {
            tracing::debug!(error = %e, "cannot record image use");
        }
    }

    /// When the image was last pulled or run (Unix ms), else when its
    /// reference was written; 0 if neither is known.
    pub(crate) fn last_used(&self, manifest_digest: &str) -> i64 {
        let Ok(hex) = checked_hex(manifest_digest) else {
            return 0;
        };
        if let Some(ms) = fs::read_to_string(self.root.join("used").join(hex))
            .ok()
            .and_then(|s| s.trim().parse::<i64>().ok())
        {
            return ms;
        }
        self.refs()
            .unwrap_or_default()
            .iter()
            .filter(|(_, t)| t == manifest_digest)
            .filter_map(|(r, _)| {
                let modified = fs::metadata(self.ref_path(r).ok()?).ok()?.modified().ok()?;
                Some(
                    modified
                        .duration_since(std::time::UNIX_EPOCH)
                        .ok()?
                        .as_millis() as i64,
                )
            })
            .max()
            .unwrap_or(0)
    }

    /// Manifest digests some container's lease holds.
    fn leased(&self) -> Result<(HashSet<String>, Vec<HashSet<String>>), RuntimeError> {
        let mut manifests = HashSet::new();
        let mut legacy = Vec::new();
        for entry in read_dir(&self.root.join("leases"))? {
            if let Ok(bytes) = fs::read(&entry)
                && let Ok(lease) = serde_json::from_slice::<Lease>(&bytes)
            {
                match lease.manifest {
                    Some(m) => {
                        manifests.insert(m);
                    }
                    None => legacy.push(lease.layers.into_iter().collect()),
                }
            }
        }
        Ok((manifests, legacy))
    }

    // ---- paths and small files -------------------------------------------------

    /// A shared hold on the store: garbage collection waits until it is dropped.
    pub(crate) fn lock_shared(&self) -> Result<Flock<fs::File>, RuntimeError> {
        self.lock(FlockArg::LockShared)
    }

    fn lock(&self, arg: FlockArg) -> Result<Flock<fs::File>, RuntimeError> {
        let path = self.root.join("lock");
        let file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io_err(format!("opening {}", path.display())))?;
        Flock::lock(file, arg)
            .map_err(|(_, e)| io_err(format!("locking {}", path.display()))(e.into()))
    }

    pub(crate) fn blob_path(&self, digest: &str) -> Result<PathBuf, RuntimeError> {
        Ok(self.root.join("blobs/sha256").join(checked_hex(digest)?))
    }

    pub(crate) fn layer_dir(&self, diff_id: &str) -> Result<PathBuf, RuntimeError> {
        Ok(self.root.join("layers").join(checked_hex(diff_id)?))
    }

    fn ref_path(&self, reference: &str) -> Result<PathBuf, RuntimeError> {
        let encoded = encode_ref(reference);
        if encoded.len() > 255 {
            return Err(RuntimeError::InvalidImageReference {
                reference: reference.into(),
                reason: "too long to store".into(),
            });
        }
        Ok(self.root.join("refs").join(encoded))
    }

    fn lease_path(&self, holder: &str) -> Result<PathBuf, RuntimeError> {
        if holder.is_empty()
            || holder.len() > 200
            || !holder
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
            || holder.starts_with('.')
        {
            return Err(RuntimeError::Image(format!(
                "invalid lease holder name {holder:?}"
            )));
        }
        Ok(self.root.join("leases").join(holder))
    }

    pub(crate) fn tmp_path(&self, what: &str) -> PathBuf {
        let n: u64 = rand::random();
        self.root
            .join("tmp")
            .join(format!("{what}-{}-{n:016x}", std::process::id()))
    }

    pub(crate) fn read_ref(&self, reference: &str) -> Result<Option<String>, RuntimeError> {
        read_trimmed(&self.ref_path(reference)?)
    }

    pub(crate) fn write_ref(&self, reference: &str, digest: &str) -> Result<(), RuntimeError> {
        self.write_atomic(&self.ref_path(reference)?, format!("{digest}\n").as_bytes())
    }

    /// `(reference, manifest digest)` for every ref file.
    pub(crate) fn refs(&self) -> Result<Vec<(String, String)>, RuntimeError> {
        list_refs(&self.root.join("refs"))
    }

    pub(crate) fn manifest(&self, digest: &str) -> Result<ImageManifest, RuntimeError> {
        let path = self.blob_path(digest)?;
        let bytes = fs::read(&path).map_err(io_err(format!("reading manifest {digest}")))?;
        ImageManifest::from_reader(&bytes[..])
            .map_err(|e| RuntimeError::Image(format!("manifest {digest}: {e}")))
    }

    fn config_of(&self, manifest: &ImageManifest) -> Result<ImageConfiguration, RuntimeError> {
        let digest = manifest.config().digest().to_string();
        let bytes = fs::read(self.blob_path(&digest)?)
            .map_err(io_err(format!("reading image config {digest}")))?;
        ImageConfiguration::from_reader(&bytes[..])
            .map_err(|e| RuntimeError::Image(format!("image config {digest}: {e}")))
    }

    /// Writes `bytes` to `path` all at once: a reader sees the old file or
    /// the complete new one, even across a power cut.
    pub(crate) fn write_atomic(&self, path: &Path, bytes: &[u8]) -> Result<(), RuntimeError> {
        let tmp = self.tmp_path("file");
        let mut f =
            fs::File::create(&tmp).map_err(io_err(format!("creating {}", tmp.display())))?;
        let written = f.write_all(bytes).and_then(|_| f.sync_all());
        drop(f);
        let renamed = written.and_then(|_| fs::rename(&tmp, path));
        if let Err(e) = renamed {
            let _ = fs::remove_file(&tmp);
            return Err(io_err(format!("writing {}", path.display()))(e));
        }
        Ok(())
    }
}

/// The name part of a stored reference (`docker.io/library/busybox:1` → `docker.io/library/busybox`).
fn ref_name(reference: &str) -> &str {
    let last_slash = reference.rfind('/').map_or(0, |i| i + 1);
    match reference[last_slash..].find([':', '@']) {
        Some(i) => &reference[..last_slash + i],
        None => reference,
    }
}

/// A stored manifest or index: what the mirror hands out by digest.
pub(crate) enum Served {
    Manifest(Box<ImageManifest>),
    Index(Box<ImageIndex>),
}

impl Served {
    /// `bytes` as an image manifest or an index (schema 2), else `None`.
    pub(crate) fn parse(bytes: &[u8]) -> Option<Served> {
        let value: serde_json::Value = serde_json::from_slice(bytes).ok()?;
        if value.get("schemaVersion").and_then(|v| v.as_u64()) != Some(2) {
            return None;
        }
        if value.get("manifests").is_some() {
            ImageIndex::from_reader(bytes)
                .ok()
                .map(|i| Served::Index(Box::new(i)))
        } else {
            ImageManifest::from_reader(bytes)
                .ok()
                .map(|m| Served::Manifest(Box::new(m)))
        }
    }
}

fn manifest_size(m: &ImageManifest) -> u64 {
    m.config().size() + m.layers().iter().map(|l| l.size()).sum::<u64>()
}

/// Indexes nest at most this deep (as pulls and imports follow them).
pub(crate) const MAX_INDEX_DEPTH: u32 = 4;

const KEEP_BLOBS_MARKER: &str = "keep-layer-blobs";

fn read_trimmed(path: &Path) -> Result<Option<String>, RuntimeError> {
    match fs::read_to_string(path) {
        Ok(s) => Ok(Some(s.trim().to_string())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(format!("reading {}", path.display()))(e)),
    }
}

/// `(reference, digest)` for every ref file in `dir`.
fn list_refs(dir: &Path) -> Result<Vec<(String, String)>, RuntimeError> {
    let mut out = Vec::new();
    for path in read_dir(dir)? {
        let Some(reference) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(decode_ref)
        else {
            continue;
        };
        if let Some(digest) = read_trimmed(&path)? {
            out.push((reference, digest));
        }
    }
    Ok(out)
}

/// How long a partial layer download is kept for a later pull to resume.
const STALE_DOWNLOAD: std::time::Duration = std::time::Duration::from_secs(3600);

fn hex_of(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap_or(digest)
}

fn checked_hex(digest: &str) -> Result<&str, RuntimeError> {
    digest
        .strip_prefix("sha256:")
        .filter(|h| reference::is_sha256_hex(h))
        .ok_or_else(|| RuntimeError::Image(format!("unsupported digest {digest:?} (only sha256)")))
}

fn file_name_in(path: &Path, set: &HashSet<String>) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| set.contains(n))
}

fn read_dir(dir: &Path) -> Result<Vec<PathBuf>, RuntimeError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(format!("listing {}", dir.display())))? {
        out.push(
            entry
                .map_err(io_err(format!("listing {}", dir.display())))?
                .path(),
        );
    }
    Ok(out)
}

/// Percent-encodes everything but `[A-Za-z0-9._-]` so a reference is one file name.
fn encode_ref(reference: &str) -> String {
    let mut out = String::with_capacity(reference.len() + 8);
    for b in reference.bytes() {
        if b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn decode_ref(name: &str) -> Option<String> {
    let bytes = name.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = name.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ref_encoding_round_trips() {
        for r in [
            "docker.io/library/busybox:latest",
            "reg:5000/a/b:1",
            "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "x.y/%z",
        ] {
            let e = encode_ref(r);
            assert!(!e.contains('/'), "{e}");
            assert_eq!(decode_ref(&e).as_deref(), Some(r));
        }
    }

    #[test]
    fn names_of_refs() {
        assert_eq!(
            ref_name("docker.io/library/busybox:1"),
            "docker.io/library/busybox"
        );
        assert_eq!(ref_name("reg:5000/a/b:1"), "reg:5000/a/b");
        assert_eq!(ref_name("reg:5000/a/b"), "reg:5000/a/b");
    }
}
