//! Pulling from OCI / Docker registries into the store, over `oci-client`.
//!
//! The manifest (or index, then the manifest for the node's platform, picked
//! by [`select_platform`]) and the config are fetched into memory and
//! checked against their digests; each layer not already unpacked is
//! streamed to `<root>/downloads/<hex>.partial`, hashed on the way, and only
//! once its digest matches is it unpacked into `tmp/` (which checks the
//! diffID) and renamed into `layers/`. The config, the manifest and finally
//! the reference are written last, so a pull that fails at any point leaves
//! no image behind and no layer that was not verified. A partial download
//! survives a dropped connection and the next pull resumes it with an HTTP
//! range request; it is deleted when its content turns out wrong or the disk
//! is full.
//!
//! `oci-client` does the HTTP, the token / basic auth dance and the scheme
//! choice; we keep control of platform selection, verification, resumption
//! and storage, which is why we use its raw-manifest and blob-stream calls
//! rather than its all-in-one `pull` (which buffers layers in memory).
//!
//! When the master advertises its registry mirror ([`RegistryMirror`], in
//! the options' [`MirrorSlot`]), a pull asks it first, for any reference,
//! over plain HTTP with the node's token: a tag's digest, signed by the
//! master's cluster key (checked, so that no one in the middle on the LAN
//! can swap the image), then `<mirror>/<name>@<digest>`
//! (`docker.io/library/busybox:1.36` → `<mirror>/docker.io/library/busybox@sha256:…`),
//! verified exactly as a registry's answer is (a blob that does not match
//! its digest is refused). Whatever goes wrong there,
//! the pull falls back to the image's own registry, as containerd does
//! with its mirrors; the stored reference is the image's own either way.
//!
//! A store that keeps layer blobs (the master's) keeps each fetched layer
//! blob instead of deleting it once unpacked, and the indexes it went
//! through, so that its mirror can hand the image on.

use std::fs;
use std::io::{self, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use futures::StreamExt;
use nix::fcntl::{Flock, FlockArg};
use oci_client::client::{
    BlobResponse, Certificate, CertificateEncoding, ClientConfig, ClientProtocol,
};
use oci_client::errors::{DigestError, OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth as OciAuth;
use oci_client::{Client, Reference};
use oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex, ImageManifest};
use sha2::{Digest as _, Sha256};

use super::credentials::{Credential, RegistryAuth, credentials_for};
use super::import::{check_config_platform, descriptor_platform};
use super::layer::{self, sha256_digest};
use super::mirror::TagAnswer;
use super::platform::{Platform, select_platform};
use super::reference::ImageRef;
use super::{ImageInfo, ImageStore, PullStats, io_err};
use crate::runtime::RuntimeError;

/// `imagePullPolicy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum PullPolicy {
    Always,
    IfNotPresent,
    Never,
}

impl PullPolicy {
    /// The container's `imagePullPolicy`, or Kubernetes' default for
    /// `image` when unset (`Always` for `:latest` or no tag, else `IfNotPresent`).
    /// An unknown value (validation refuses them) is taken as `IfNotPresent`.
    pub fn of(policy: Option<&str>, image: &str) -> PullPolicy {
        match policy.unwrap_or_else(|| crate::api::defaults::image_pull_policy(image)) {
            "Always" => PullPolicy::Always,
            "Never" => PullPolicy::Never,
            _ => PullPolicy::IfNotPresent,
        }
    }

    /// What to do given whether the image is in the store.
    pub fn decide(self, present: bool) -> ImageAction {
        match (self, present) {
            (PullPolicy::Always, _) | (PullPolicy::IfNotPresent, false) => ImageAction::Pull,
            (_, true) => ImageAction::UsePresent,
            (PullPolicy::Never, false) => ImageAction::NotPresent,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageAction {
    UsePresent,
    Pull,
    /// Absent and the policy forbids pulling (`ErrImageNeverPull`).
    NotPresent,
}

/// The master's registry mirror, as a node pulls from it.
#[derive(Clone)]
pub struct RegistryMirror {
    /// `host:port`, spoken to over plain HTTP (everything it sends is
    /// checked against digests the node asked for or got from it).
    pub registry: String,
    /// Makes the credential for one pull (the node's signed token).
    pub credential: Arc<dyn Fn() -> Option<Credential> + Send + Sync>,
    /// Checks the master's signature (its cluster key) on a tag's digest.
    pub verify: Verify,
}

/// Checks a signature (`message`, `signature`) with a key the node trusts.
pub type Verify = Arc<dyn Fn(&[u8], &[u8; 64]) -> bool + Send + Sync>;

impl std::fmt::Debug for RegistryMirror {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryMirror")
            .field("registry", &self.registry)
            .finish_non_exhaustive()
    }
}

/// Where a node's pulls find the master's mirror. The master advertises it
/// at run time (in the Service table), so the slot is shared: every clone
/// of the options sees what [`set`](MirrorSlot::set) put there last.
#[derive(Clone, Debug, Default)]
pub struct MirrorSlot(Arc<RwLock<Option<RegistryMirror>>>);

impl MirrorSlot {
    /// Replaces the mirror; `true` when its address changed.
    pub fn set(&self, mirror: Option<RegistryMirror>) -> bool {
        let mut slot = self.0.write().unwrap_or_else(|e| e.into_inner());
        let changed = slot.as_ref().map(|m| &m.registry) != mirror.as_ref().map(|m| &m.registry);
        *slot = mirror;
        changed
    }

    pub fn get(&self) -> Option<RegistryMirror> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// How this node reaches registries.
#[derive(Clone, Debug)]
pub struct PullOptions {
    /// The node's platform: the manifest picked from a multi-arch index.
    pub platform: Platform,
    /// Registries (`host:port`, or `host` for any port) spoken to over plain
    /// HTTP. Loopback registries (`localhost`, `127.0.0.0/8`, `::1`) always
    /// are, as containerd does.
    pub insecure_registries: Vec<String>,
    pub connect_timeout: Duration,
    /// A registry silent this long mid-transfer counts as a dropped connection.
    pub read_timeout: Duration,
    /// The master's mirror, asked first when set.
    pub mirror: MirrorSlot,
    /// CAs trusted for HTTPS registries besides the system's roots (a
    /// home-lab registry's own CA).
    pub registry_ca: Option<RegistryCa>,
}

/// Certificates from a `--registry-ca` file, each checked to parse.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistryCa {
    pub path: PathBuf,
    /// DER, in the file's order.
    pub certificates: Vec<Vec<u8>>,
}

impl RegistryCa {
    /// Every certificate in a PEM file (or one DER certificate).
    pub fn load(path: &Path) -> Result<RegistryCa, RuntimeError> {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let bad = |reason: String| RuntimeError::RegistryCa {
            path: path.to_path_buf(),
            reason,
        };
        let bytes = fs::read(path).map_err(|e| bad(e.to_string()))?;
        let mut certificates: Vec<Vec<u8>> = CertificateDer::pem_slice_iter(&bytes)
            .map(|c| c.map(|c| c.to_vec()))
            .collect::<Result<_, _>>()
            .map_err(|e| bad(format!("not a PEM file: {e}")))?;
        if certificates.is_empty() && bytes.first() == Some(&0x30) {
            certificates.push(bytes);
        }
        if certificates.is_empty() {
            return Err(bad(
                "no certificate in it (expected PEM: -----BEGIN CERTIFICATE-----)".into(),
            ));
        }
        // Parsed as rustls will, so that a bad one is refused here, naming
        // the file, rather than at the first pull.
        let mut roots = rustls::RootCertStore::empty();
        for (i, c) in certificates.iter().enumerate() {
            roots
                .add(CertificateDer::from(c.as_slice()))
                .map_err(|e| bad(format!("certificate {}: {e}", i + 1)))?;
        }
        Ok(RegistryCa {
            path: path.to_path_buf(),
            certificates,
        })
    }
}

impl Default for PullOptions {
    fn default() -> Self {
        PullOptions {
            platform: Platform::host(),
            insecure_registries: Vec::new(),
            connect_timeout: Duration::from_secs(15),
            read_timeout: Duration::from_secs(60),
            mirror: MirrorSlot::default(),
            registry_ca: None,
        }
    }
}

/// What a pull reports as it goes (for progress bars).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PullEvent {
    /// The manifest for the platform is known: the layers to come, as
    /// `(digest, compressed size)`, bottom first.
    Resolved {
        reference: String,
        manifest_digest: String,
        platform: String,
        layers: Vec<(String, u64)>,
    },
    /// Layer `index` is already in the store: not fetched.
    LayerPresent { index: usize },
    /// Bytes of layer `index` fetched so far (a resumed part included).
    LayerProgress { index: usize, done: u64, total: u64 },
    /// Layer `index` is verified and unpacked.
    LayerDone { index: usize },
}

/// Whether `registry` (`host[:port]`) is spoken to over plain HTTP.
pub fn is_insecure(registry: &str, insecure: &[String]) -> bool {
    let host = match registry.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(rest),
        None => registry.rsplit_once(':').map_or(registry, |(h, _)| h),
    };
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    loopback
        || insecure
            .iter()
            .any(|i| i.eq_ignore_ascii_case(registry) || i.eq_ignore_ascii_case(host))
}

const ACCEPTED_MANIFESTS: &[&str] = &[
    oci_client::manifest::OCI_IMAGE_MEDIA_TYPE,
    oci_client::manifest::OCI_IMAGE_INDEX_MEDIA_TYPE,
    oci_client::manifest::IMAGE_MANIFEST_MEDIA_TYPE,
    oci_client::manifest::IMAGE_MANIFEST_LIST_MEDIA_TYPE,
];

/// How long a pull waits for the master's mirror to accept a connection.
const MIRROR_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// How far a signed tag answer's date may be from the node's clock (Pis
/// have no RTC), as for every signed message.
const TAG_CLOCK_WINDOW: Duration = Duration::from_secs(600);

/// A tag answer is a small JSON object.
const MAX_TAG_ANSWER: usize = 64 * 1024;

/// Configs are small JSON; anything bigger is not one.
const MAX_CONFIG_BYTES: u64 = 8 << 20;

/// Names of what a pull is about, for errors.
struct Target {
    registry: String,
    image: String,
}

impl Target {
    fn unauthorized(&self, detail: String) -> RuntimeError {
        RuntimeError::RegistryUnauthorized {
            registry: self.registry.clone(),
            image: self.image.clone(),
            detail,
        }
    }

    fn protocol(&self, reason: String) -> RuntimeError {
        RuntimeError::RegistryProtocol {
            registry: self.registry.clone(),
            image: self.image.clone(),
            reason,
        }
    }

    fn connection(&self, cause: String) -> RuntimeError {
        RuntimeError::RegistryConnection {
            registry: self.registry.clone(),
            image: self.image.clone(),
            cause,
        }
    }

    fn mismatch(&self, what: &str, expected: &str, actual: &str) -> RuntimeError {
        RuntimeError::DigestMismatch {
            what: format!("{what} of {} from {}", self.image, self.registry),
            expected: expected.to_string(),
            actual: actual.to_string(),
        }
    }

    fn oci_error(&self, e: OciDistributionError, what: &str) -> RuntimeError {
        use OciDistributionError as E;
        match e {
            E::UnauthorizedError { url } => {
                self.unauthorized(format!("HTTP 401 for {url} ({what})"))
            }
            E::AuthenticationFailure(m) => {
                self.unauthorized(format!("the token service refused the credentials: {m}"))
            }
            E::RegistryError { envelope, url } => {
                let codes: Vec<String> = envelope
                    .errors
                    .iter()
                    .map(|e| format!("{:?}: {}", e.code, e.message))
                    .collect();
                let detail = format!("{} for {url} ({what})", codes.join("; "));
                let has = |c: &[OciErrorCode]| envelope.errors.iter().any(|e| c.contains(&e.code));
                if has(&[
                    OciErrorCode::ManifestUnknown,
                    OciErrorCode::BlobUnknown,
                    OciErrorCode::NameUnknown,
                    OciErrorCode::NotFound,
                ]) {
                    RuntimeError::RegistryNotFound {
                        registry: self.registry.clone(),
                        image: self.image.clone(),
                        detail: format!("HTTP 404, {detail}"),
                    }
                } else if has(&[OciErrorCode::Unauthorized, OciErrorCode::Denied]) {
                    self.unauthorized(detail)
                } else if has(&[OciErrorCode::Toomanyrequests]) {
                    RuntimeError::RegistryStatus {
                        registry: self.registry.clone(),
                        image: self.image.clone(),
                        status: 429,
                        detail,
                    }
                } else {
                    self.protocol(format!("registry error {detail}"))
                }
            }
            E::ServerError { code, url, message } => {
                let message = message.trim();
                let detail = if message.is_empty() {
                    format!("{url} ({what})")
                } else {
                    format!("{url} ({what}): {}", truncate(message, 200))
                };
                match code {
                    401 | 403 => self.unauthorized(format!("HTTP {code} for {detail}")),
                    404 => RuntimeError::RegistryNotFound {
                        registry: self.registry.clone(),
                        image: self.image.clone(),
                        detail: format!("HTTP 404 for {detail}"),
                    },
                    status => RuntimeError::RegistryStatus {
                        registry: self.registry.clone(),
                        image: self.image.clone(),
                        status,
                        detail,
                    },
                }
            }
            E::DigestError(DigestError::VerificationError { expected, actual }) => {
                self.mismatch(what, &expected, &actual)
            }
            E::RequestError(e) => {
                let cause = chain(&e);
                let hint = tls_hint(&cause);
                self.connection(format!("{what}: {cause}{hint}"))
            }
            E::IoError(e) => self.stream_error(e, what),
            other => self.protocol(format!("{what}: {other}")),
        }
    }

    /// An error reading a blob stream: the connection, or a digest check.
    fn stream_error(&self, e: io::Error, what: &str) -> RuntimeError {
        if let Some(DigestError::VerificationError { expected, actual }) =
            e.get_ref().and_then(|i| i.downcast_ref::<DigestError>())
        {
            return self.mismatch(what, expected, actual);
        }
        if let Some(inner) = e
            .get_ref()
            .and_then(|i| i.downcast_ref::<OciDistributionError>())
        {
            return self.connection(format!("{what}: {}", chain(inner)));
        }
        self.connection(format!("{what}: {}", chain(&e)))
    }
}

/// `e: cause: cause…`, each distinct message once (reqwest's own is terse).
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        let m = s.to_string();
        if !parts.iter().any(|p| p.contains(&m)) {
            parts.push(m);
        }
        source = s.source();
    }
    parts.join(": ")
}

/// What to do about a TLS failure, from its message: the registry's
/// certificate is not trusted, or it speaks plain HTTP.
fn tls_hint(cause: &str) -> &'static str {
    let lower = cause.to_lowercase();
    if lower.contains("certificate") {
        " (TLS: the registry's certificate is not trusted; give its CA with --registry-ca)"
    } else if lower.contains("corrupt message")
        || lower.contains("invalidcontenttype")
        || lower.contains("wrong version number")
        || lower.contains("http request to an https server")
    {
        " (TLS: the registry does not speak HTTPS; a plain-HTTP registry needs --insecure-registry)"
    } else {
        ""
    }
}

fn truncate(s: &str, n: usize) -> String {
    match s.char_indices().nth(n) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// Whether an I/O error means the disk is full.
pub(crate) fn is_disk_full(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
        || matches!(
            e.kind(),
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
        )
}

/// Turns a store write failure into [`RuntimeError::DiskFull`] when that is what it was.
pub(crate) fn disk_full_or(e: RuntimeError) -> RuntimeError {
    match e {
        RuntimeError::Io { context, source } if is_disk_full(&source) => {
            RuntimeError::DiskFull { context }
        }
        other => other,
    }
}

fn oci_auth(cred: Option<&RegistryAuth>) -> OciAuth {
    match cred.map(|c| &c.credential) {
        None => OciAuth::Anonymous,
        Some(Credential::Basic { username, password }) => {
            OciAuth::Basic(username.clone(), password.clone())
        }
        Some(Credential::Bearer(t)) => OciAuth::Bearer(t.clone()),
    }
}

impl ImageStore {
    /// Pulls `reference` for `options.platform` into the store and points the
    /// reference at it. `auth`: credentials to choose from by registry (none
    /// matching: anonymous). `progress` is called as the pull goes.
    ///
    /// Holds the store's shared lock throughout, so garbage collection never
    /// removes a layer between the check that it is present and the
    /// reference that keeps it.
    pub async fn pull(
        &self,
        reference: &str,
        auth: &[RegistryAuth],
        options: &PullOptions,
        progress: &(dyn Fn(&PullEvent) + Send + Sync),
    ) -> Result<ImageInfo, RuntimeError> {
        let started = Instant::now();
        let parsed = ImageRef::parse(reference)?;
        let ImageRef::Named { name, .. } = &parsed else {
            return Err(RuntimeError::InvalidImageReference {
                reference: reference.to_string(),
                reason: "a bare digest names an image in the local store; pulling needs a repository (name@sha256:…)".into(),
            });
        };
        let canonical = parsed.to_string();
        let target = Target {
            registry: name.split('/').next().unwrap_or_default().to_string(),
            image: canonical.clone(),
        };
        let oci_ref: Reference = canonical.parse().map_err(|e: oci_client::ParseError| {
            RuntimeError::InvalidImageReference {
                reference: reference.to_string(),
                reason: e.to_string(),
            }
        })?;
        let _lock = self.lock_shared()?;
        let mut mirror_failure: Option<(String, RuntimeError)> = None;
        if let Some(mirror) = options.mirror.get() {
            match self
                .pull_from_mirror(&mirror, &canonical, options, progress)
                .await
            {
                Ok((mut info, mut stats)) => {
                    stats.duration = started.elapsed();
                    info.pulled = Some(stats);
                    tracing::debug!(image = %canonical, mirror = %mirror.registry, "pulled from the master's mirror");
                    return Ok(info);
                }
                Err(e @ RuntimeError::DiskFull { .. }) => return Err(e),
                Err(e) => {
                    tracing::warn!(image = %canonical, mirror = %mirror.registry, error = %e, "the master's registry mirror did not provide the image; trying its registry");
                    mirror_failure = Some((mirror.registry, e));
                }
            }
        }
        let mut candidates: Vec<Option<&RegistryAuth>> =
            credentials_for(auth, name).into_iter().map(Some).collect();
        if candidates.is_empty() {
            candidates.push(None);
        }
        let last = candidates.len() - 1;
        for (i, cred) in candidates.into_iter().enumerate() {
            let client = self.client(&target, options)?;
            let result = self
                .pull_with(
                    &client,
                    &oci_ref,
                    &oci_auth(cred),
                    &target,
                    options,
                    progress,
                )
                .await;
            match result {
                // The next matching credential may be the right one.
                Err(RuntimeError::RegistryUnauthorized { .. }) if i < last => continue,
                Err(e) => {
                    return Err(match disk_full_or(e) {
                        RuntimeError::DiskFull { context } => RuntimeError::DiskFull {
                            context: format!(
                                "pulling {} from {}: {context}",
                                target.image, target.registry
                            ),
                        },
                        other => match mirror_failure.take() {
                            Some((mirror, m)) => RuntimeError::PullFailed {
                                mirror,
                                mirror_error: Box::new(m),
                                registry: Box::new(other),
                            },
                            None => other,
                        },
                    });
                }
                Ok((mut info, mut stats)) => {
                    stats.duration = started.elapsed();
                    info.pulled = Some(stats);
                    return Ok(info);
                }
            }
        }
        unreachable!("there is always at least one candidate")
    }

    /// One attempt at the master's mirror: the image under its canonical
    /// name below the mirror's address, with the node's token.
    async fn pull_from_mirror(
        &self,
        mirror: &RegistryMirror,
        canonical: &str,
        options: &PullOptions,
        progress: &(dyn Fn(&PullEvent) + Send + Sync),
    ) -> Result<(ImageInfo, PullStats), RuntimeError> {
        let target = Target {
            registry: mirror.registry.clone(),
            image: canonical.to_string(),
        };
        // On the LAN: a master that is down should not hold every pull for
        // the registry's connect timeout.
        let lan = PullOptions {
            connect_timeout: options.connect_timeout.min(MIRROR_CONNECT_TIMEOUT),
            ..options.clone()
        };
        let credential = (mirror.credential)().map(|credential| RegistryAuth {
            registry: mirror.registry.clone(),
            credential,
        });
        let token = match credential.as_ref().map(|c| &c.credential) {
            Some(Credential::Bearer(t)) => Some(t.as_str()),
            _ => None,
        };
        // A tag is asked for by the digest the master signs for it.
        let by_digest = match super::mirror::tag_path(canonical) {
            Some(path) => {
                let answer = fetch_tag(&target, &path, token, &lan).await?;
                check_tag_answer(&target, mirror, &answer)?;
                let ImageRef::Named { name, .. } = ImageRef::parse(canonical)? else {
                    return Err(target.protocol("not a named reference".into()));
                };
                format!("{name}@{}", answer.digest)
            }
            None => canonical.to_string(),
        };
        let on_mirror = super::mirror::name_on_mirror(&mirror.registry, &by_digest)
            .ok_or_else(|| target.protocol("the mirror cannot name this registry".into()))?;
        let oci_ref: Reference = on_mirror.parse().map_err(|e: oci_client::ParseError| {
            target.protocol(format!("cannot name the image on the mirror: {e}"))
        })?;
        let client = self.client_with(&target, true, &lan)?;
        self.pull_with(
            &client,
            &oci_ref,
            &oci_auth(credential.as_ref()),
            &target,
            options,
            progress,
        )
        .await
        .map_err(disk_full_or)
    }

    fn client(&self, target: &Target, options: &PullOptions) -> Result<Client, RuntimeError> {
        let insecure = is_insecure(&target.registry, &options.insecure_registries);
        self.client_with(target, insecure, options)
    }

    fn client_with(
        &self,
        target: &Target,
        plain_http: bool,
        options: &PullOptions,
    ) -> Result<Client, RuntimeError> {
        let mut insecure = Vec::new();
        if plain_http {
            insecure.push(target.registry.clone());
        }
        let extra_root_certificates = options
            .registry_ca
            .iter()
            .flat_map(|ca| &ca.certificates)
            .map(|der| Certificate {
                encoding: CertificateEncoding::Der,
                data: der.clone(),
            })
            .collect();
        let config = ClientConfig {
            protocol: ClientProtocol::HttpsExcept(insecure),
            // We pick the platform ourselves, with containerd's variant rules.
            platform_resolver: None,
            connect_timeout: Some(options.connect_timeout),
            read_timeout: Some(options.read_timeout),
            user_agent: concat!("bramble/", env!("CARGO_PKG_VERSION")),
            extra_root_certificates,
            ..ClientConfig::default()
        };
        // Not `Client::new`, which falls back to a default client (without
        // the CA) on an error.
        Client::try_from(config).map_err(|e| match &options.registry_ca {
            Some(ca) => RuntimeError::RegistryCa {
                path: ca.path.clone(),
                reason: e.to_string(),
            },
            None => target.protocol(format!("cannot make an HTTP client: {e}")),
        })
    }

    async fn pull_with(
        &self,
        client: &Client,
        oci_ref: &Reference,
        auth: &OciAuth,
        target: &Target,
        options: &PullOptions,
        progress: &(dyn Fn(&PullEvent) + Send + Sync),
    ) -> Result<(ImageInfo, PullStats), RuntimeError> {
        let keep = self.keeps_layer_blobs();
        let (manifest_digest, manifest_bytes, manifest, indexes) =
            resolve_manifest(client, oci_ref, auth, target, &options.platform).await?;

        // The config: small, fetched into memory, verified.
        let cdesc = manifest.config();
        let cdigest = cdesc.digest().to_string();
        if cdesc.size() > MAX_CONFIG_BYTES {
            return Err(target.protocol(format!(
                "image config {cdigest} claims {} bytes; configs are small JSON",
                cdesc.size()
            )));
        }
        let mut config_bytes = Vec::new();
        client
            .pull_blob(oci_ref, cdigest.as_str(), &mut config_bytes)
            .await
            .map_err(|e| target.oci_error(e, &format!("image config {cdigest}")))?;
        let actual = sha256_digest(&config_bytes);
        if actual != cdigest {
            return Err(target.mismatch(&format!("image config {cdigest}"), &cdigest, &actual));
        }
        let config = ImageConfiguration::from_reader(&config_bytes[..])
            .map_err(|e| target.protocol(format!("image config {cdigest}: {e}")))?;
        check_config_platform(&config, &options.platform, &target.image)?;
        let diff_ids = config.rootfs().diff_ids().clone();
        if diff_ids.len() != manifest.layers().len() {
            return Err(target.protocol(format!(
                "manifest {manifest_digest} lists {} layers but its config {} diffIDs",
                manifest.layers().len(),
                diff_ids.len()
            )));
        }

        progress(&PullEvent::Resolved {
            reference: target.image.clone(),
            manifest_digest: manifest_digest.clone(),
            platform: options.platform.to_string(),
            layers: manifest
                .layers()
                .iter()
                .map(|l| (l.digest().to_string(), l.size()))
                .collect(),
        });

        let mut stats = PullStats {
            layers: diff_ids.len(),
            ..PullStats::default()
        };
        for (index, (desc, diff_id)) in manifest.layers().iter().zip(&diff_ids).enumerate() {
            let dest = self.layer_dir(diff_id)?;
            if self.layer_complete(desc, diff_id, keep)? {
                progress(&PullEvent::LayerPresent { index });
                continue;
            }
            let Some((blob, fetched)) = self
                .download_layer(
                    Remote {
                        client,
                        oci_ref,
                        target,
                    },
                    desc,
                    diff_id,
                    index,
                    keep,
                    progress,
                )
                .await?
            else {
                // Another pull unpacked it while we waited for its download.
                progress(&PullEvent::LayerPresent { index });
                continue;
            };
            stats.layers_fetched += 1;
            stats.bytes_fetched += fetched;
            if dest.is_dir() {
                // Only the blob was missing (a store that keeps them).
                self.keep_blob(&blob, desc)?;
                progress(&PullEvent::LayerDone { index });
                continue;
            }
            let tmp = self.tmp_path("layer");
            let unpacked = layer::unpack_blob(&blob.0, &tmp, Some(desc.digest().as_ref()), diff_id)
                .map_err(|e| match e {
                    RuntimeError::DigestMismatch {
                        expected, actual, ..
                    } => target.mismatch(&format!("layer {}", desc.digest()), &expected, &actual),
                    other => other,
                });
            let unpacked = match unpacked {
                Ok(u) => u,
                Err(e) => {
                    // Complete but wrong (or unusable): never resume it.
                    blob.discard();
                    return Err(e);
                }
            };
            tracing::debug!(digest = %unpacked.digest, diff_id = %unpacked.diff_id, "layer pulled and unpacked");
            if let Err(e) = fs::rename(&tmp, &dest) {
                let _ = fs::remove_dir_all(&tmp);
                // Another pull or import of the same layer got there first.
                if !dest.is_dir() {
                    return Err(io_err(format!("storing layer {}", dest.display()))(e));
                }
            }
            if keep {
                self.keep_blob(&blob, desc)?;
            } else {
                blob.discard();
            }
            progress(&PullEvent::LayerDone { index });
        }

        let mut blobs = vec![
            (cdigest.clone(), config_bytes),
            (manifest_digest.clone(), manifest_bytes),
        ];
        if keep {
            // Bottom-up, so a stored index never names a missing manifest.
            blobs.extend(indexes.iter().rev().cloned());
        }
        for (digest, bytes) in &blobs {
            let path = self.blob_path(digest)?;
            if !path.is_file() {
                self.write_atomic(&path, bytes)?;
            }
        }
        self.write_ref(&target.image, &manifest_digest)?;
        if keep {
            // The mirror answers with the index for this reference, if any.
            match indexes.first() {
                Some((top, _)) => self.write_mirror_ref(&target.image, top)?,
                None => self.remove_mirror_ref(&target.image)?,
            }
        }
        self.remove_placeholder(&manifest_digest)?;
        self.touch_used(&manifest_digest);
        let size = cdesc.size() + manifest.layers().iter().map(|l| l.size()).sum::<u64>();
        Ok((
            ImageInfo {
                reference: target.image.clone(),
                manifest_digest,
                size,
                pulled: None,
            },
            stats,
        ))
    }

    /// Whether a layer needs no fetching: unpacked, and its blob kept when
    /// this store keeps them.
    fn layer_complete(
        &self,
        desc: &Descriptor,
        diff_id: &str,
        keep: bool,
    ) -> Result<bool, RuntimeError> {
        Ok(self.layer_dir(diff_id)?.is_dir()
            && (!keep || self.blob_path(desc.digest().as_ref())?.is_file()))
    }

    /// Moves a verified download into `blobs/` (a store that keeps them).
    fn keep_blob(&self, blob: &Download, desc: &Descriptor) -> Result<(), RuntimeError> {
        let dest = self.blob_path(desc.digest().as_ref())?;
        if dest.is_file() {
            blob.discard();
            return Ok(());
        }
        fs::rename(&blob.0, &dest).map_err(io_err(format!("storing layer blob {}", desc.digest())))
    }

    /// Streams one layer blob to its download file, resuming what an
    /// earlier attempt left, and checks its digest. Returns the complete,
    /// verified file and the bytes fetched now, or `None` when another pull
    /// stored the layer while we waited for its download.
    #[allow(clippy::too_many_arguments)]
    async fn download_layer(
        &self,
        remote: Remote<'_>,
        desc: &Descriptor,
        diff_id: &str,
        index: usize,
        keep: bool,
        progress: &(dyn Fn(&PullEvent) + Send + Sync),
    ) -> Result<Option<(Download, u64)>, RuntimeError> {
        let Remote {
            client,
            oci_ref,
            target,
        } = remote;
        let digest = desc.digest().to_string();
        let what = format!("layer {digest}");
        let hex = digest
            .strip_prefix("sha256:")
            .filter(|h| super::reference::is_sha256_hex(h))
            .ok_or_else(|| target.protocol(format!("{what}: only sha256 digests are supported")))?;
        let path = self.root().join("downloads").join(format!("{hex}.partial"));
        let total = desc.size();
        // One downloader per blob, across processes (the CLI and the agent).
        let mut file = loop {
            let f = fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .read(true)
                .write(true)
                .open(&path)
                .map_err(io_err(format!("opening {}", path.display())))
                .map_err(disk_full_or)?;
            match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
                Ok(locked) => {
                    // The previous holder may have finished the layer.
                    if self.layer_complete(desc, diff_id, keep)? {
                        if locked.metadata().is_ok_and(|m| m.len() == 0) {
                            let _ = fs::remove_file(&path);
                        }
                        return Ok(None);
                    }
                    break locked;
                }
                Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err((_, e)) => {
                    return Err(io_err(format!("locking {}", path.display()))(e.into()));
                }
            }
        };
        let download = Download(path.clone());
        let mut fetched = 0u64;
        // A resumed download whose result is wrong is retried once from scratch.
        for attempt in 0..2 {
            let mut have = file
                .metadata()
                .map_err(io_err(format!("reading {}", path.display())))?
                .len();
            if have > total || attempt > 0 {
                have = 0;
            }
            let mut hasher = Sha256::new();
            if have > 0 {
                hash_prefix(&mut file, have, &mut hasher)
                    .map_err(io_err(format!("reading {}", path.display())))?;
                tracing::info!(%digest, have, total, "resuming a partial layer download");
            }
            let resumed = have > 0;
            if have < total {
                let response = client
                    .pull_blob_stream_partial(oci_ref, digest.as_str(), have, None)
                    .await
                    .map_err(|e| target.oci_error(e, &what))?;
                let mut stream = match response {
                    BlobResponse::Partial(s) => s,
                    // The registry ignored the range: start over.
                    BlobResponse::Full(s) => {
                        have = 0;
                        hasher = Sha256::new();
                        s
                    }
                };
                file.set_len(have)
                    .and_then(|_| file.seek(io::SeekFrom::Start(have)).map(|_| ()))
                    .map_err(io_err(format!("writing {}", path.display())))?;
                progress(&PullEvent::LayerProgress {
                    index,
                    done: have,
                    total,
                });
                while let Some(chunk) = stream.next().await {
                    let chunk = chunk.map_err(|e| target.stream_error(e, &what))?;
                    if have + chunk.len() as u64 > total {
                        download.discard();
                        return Err(target.protocol(format!(
                            "{what}: the registry sent more than the {total} bytes the manifest gives"
                        )));
                    }
                    if let Err(e) = file.write_all(&chunk) {
                        if is_disk_full(&e) {
                            download.discard();
                            return Err(RuntimeError::DiskFull {
                                context: format!("writing {what} to {}", path.display()),
                            });
                        }
                        return Err(io_err(format!("writing {}", path.display()))(e));
                    }
                    hasher.update(&chunk);
                    have += chunk.len() as u64;
                    fetched += chunk.len() as u64;
                    progress(&PullEvent::LayerProgress {
                        index,
                        done: have,
                        total,
                    });
                }
                if have < total {
                    return Err(target.connection(format!(
                        "{what}: the transfer ended after {have} of {total} bytes"
                    )));
                }
            }
            let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
            if actual == digest {
                return Ok(Some((download, fetched)));
            }
            if !resumed {
                download.discard();
                return Err(target.mismatch(&what, &digest, &actual));
            }
            tracing::warn!(%digest, "a resumed layer download does not verify; fetching it again");
        }
        download.discard();
        Err(target.mismatch(&what, &digest, "(content changed on retry)"))
    }
}

/// Asks the mirror for the signed digest of a tag (`path`: its
/// [`tag_path`](super::mirror::tag_path)).
async fn fetch_tag(
    target: &Target,
    path: &str,
    token: Option<&str>,
    options: &PullOptions,
) -> Result<TagAnswer, RuntimeError> {
    use http_body_util::BodyExt as _;
    let what = "the tag's signed digest";
    let stream = tokio::time::timeout(
        options.connect_timeout,
        tokio::net::TcpStream::connect(target.registry.as_str()),
    )
    .await
    .map_err(|_| target.connection(format!("{what}: connecting timed out")))?
    .map_err(|e| target.connection(format!("{what}: {e}")))?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| target.connection(format!("{what}: {e}")))?;
    // Drives the connection; it ends when the sender and response are gone.
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut request = hyper::Request::get(path).header(hyper::header::HOST, &target.registry);
    if let Some(t) = token {
        request = request.header(hyper::header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let request = request
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .map_err(|e| target.protocol(format!("{what}: {e}")))?;
    let read = async {
        let response = sender.send_request(request).await?;
        let status = response.status().as_u16();
        let body = http_body_util::Limited::new(response.into_body(), MAX_TAG_ANSWER)
            .collect()
            .await
            .map(|b| b.to_bytes());
        Ok::<_, hyper::Error>((status, body))
    };
    let (status, body) = tokio::time::timeout(options.read_timeout, read)
        .await
        .map_err(|_| target.connection(format!("{what}: no answer in time")))?
        .map_err(|e| target.connection(format!("{what}: {e}")))?;
    let body = body.map_err(|e| target.protocol(format!("{what}: {e}")))?;
    let detail = || truncate(&String::from_utf8_lossy(&body), 200);
    match status {
        200 => serde_json::from_slice(&body)
            .map_err(|e| target.protocol(format!("{what} is not one: {e}"))),
        401 | 403 => Err(target.unauthorized(format!("HTTP {status} for {what}: {}", detail()))),
        404 => Err(RuntimeError::RegistryNotFound {
            registry: target.registry.clone(),
            image: target.image.clone(),
            detail: format!("HTTP 404 for {what}: {}", detail()),
        }),
        status => Err(RuntimeError::RegistryStatus {
            registry: target.registry.clone(),
            image: target.image.clone(),
            status,
            detail: format!("{what}: {}", detail()),
        }),
    }
}

/// The mirror's answer names the tag asked for, is signed by the master
/// and dated within the clock window.
fn check_tag_answer(
    target: &Target,
    mirror: &RegistryMirror,
    answer: &TagAnswer,
) -> Result<(), RuntimeError> {
    let refuse = |why: String| target.protocol(format!("the tag's digest from the mirror: {why}"));
    if answer.reference != target.image {
        return Err(refuse(format!("it answers for {}", answer.reference)));
    }
    if !answer
        .digest
        .strip_prefix("sha256:")
        .is_some_and(super::reference::is_sha256_hex)
    {
        return Err(refuse(format!(
            "{:?} is not a sha256 digest",
            answer.digest
        )));
    }
    let signature: [u8; 64] = hex::decode(&answer.signature)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| refuse("a malformed signature".into()))?;
    let message = super::mirror::tag_message(&answer.reference, &answer.digest, answer.time);
    if !(mirror.verify)(&message, &signature) {
        return Err(refuse("not signed by the master's cluster key".into()));
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let off = (now - answer.time).abs();
    if off > TAG_CLOCK_WINDOW.as_secs() as i64 {
        return Err(refuse(format!("dated {off}s away from this node's clock")));
    }
    Ok(())
}

/// Where blobs come from.
struct Remote<'a> {
    client: &'a Client,
    oci_ref: &'a Reference,
    target: &'a Target,
}

/// A download file: removed by [`discard`](Download::discard) once unpacked
/// or found wrong; kept otherwise, to be resumed.
struct Download(PathBuf);

impl Download {
    fn discard(&self) {
        let _ = fs::remove_file(&self.0);
    }
}

fn hash_prefix(file: &mut fs::File, len: u64, hasher: &mut Sha256) -> io::Result<()> {
    file.seek(io::SeekFrom::Start(0))?;
    let mut limited = (&*file).take(len);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = limited.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(())
}

/// What [`resolve_manifest`] found: the platform's manifest (digest, bytes,
/// parsed) and the indexes it went through, `(digest, bytes)`, top first.
type Resolved = (String, Vec<u8>, ImageManifest, Vec<(String, Vec<u8>)>);

/// Fetches the manifest for `platform`, following an index (or a nested
/// one) through [`select_platform`]; each step is checked against its digest.
async fn resolve_manifest(
    client: &Client,
    oci_ref: &Reference,
    auth: &OciAuth,
    target: &Target,
    platform: &Platform,
) -> Result<Resolved, RuntimeError> {
    let mut current = oci_ref.clone();
    let mut expected: Option<String> = None;
    let mut indexes = Vec::new();
    for _depth in 0..super::MAX_INDEX_DEPTH {
        let what = match &expected {
            Some(d) => format!("manifest {d}"),
            None => "manifest".to_string(),
        };
        let (bytes, digest) = client
            .pull_manifest_raw(&current, auth, ACCEPTED_MANIFESTS)
            .await
            .map_err(|e| target.oci_error(e, &what))?;
        let actual = sha256_digest(&bytes);
        if let Some(want) = expected.as_deref().or(oci_ref.digest())
            && actual != want
        {
            return Err(target.mismatch(&what, want, &actual));
        }
        let value: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| target.protocol(format!("{what} is not JSON: {e}")))?;
        match value.get("schemaVersion").and_then(|v| v.as_u64()) {
            Some(2) => {}
            v => {
                return Err(target.protocol(format!(
                    "{what}: schema version {} is not supported (only 2)",
                    v.map_or("(none)".to_string(), |v| v.to_string())
                )));
            }
        }
        if value.get("manifests").is_none() {
            let manifest = ImageManifest::from_reader(&bytes[..])
                .map_err(|e| target.protocol(format!("{what} {digest}: {e}")))?;
            return Ok((actual, bytes.to_vec(), manifest, indexes));
        }
        let index = ImageIndex::from_reader(&bytes[..])
            .map_err(|e| target.protocol(format!("index {digest}: {e}")))?;
        let descs: Vec<&Descriptor> = index.manifests().iter().collect();
        let platforms: Vec<Option<Platform>> =
            descs.iter().map(|d| descriptor_platform(d)).collect();
        let chosen = select_platform(&platforms, platform).ok_or_else(|| {
            let available: Vec<String> = platforms
                .iter()
                .map(|p| p.as_ref().map_or("(none)".to_string(), |p| p.to_string()))
                .collect();
            RuntimeError::NoMatchingPlatform {
                what: format!("{} from {}", target.image, target.registry),
                wanted: platform.to_string(),
                available: available.join(", "),
            }
        })?;
        let d = descs[chosen].digest().to_string();
        indexes.push((actual, bytes.to_vec()));
        current = oci_ref.clone_with_digest(d.clone());
        expected = Some(d);
    }
    Err(target.protocol("indexes nested too deep".into()))
}

/// Runs a pull from blocking code (the [`Runtime`](crate::runtime::Runtime)
/// seam), on a thread of its own with a small runtime, so it works whether
/// or not the caller is inside tokio.
pub(crate) fn pull_blocking(
    store: &ImageStore,
    reference: &str,
    auth: &[RegistryAuth],
    options: &PullOptions,
) -> Result<ImageInfo, RuntimeError> {
    std::thread::scope(|s| {
        s.spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(io_err("starting the pull's I/O runtime"))?;
            rt.block_on(store.pull(reference, auth, options, &|_| {}))
        })
        .join()
        .unwrap_or_else(|_| {
            Err(RuntimeError::Image(format!(
                "pulling {reference}: the pull thread panicked"
            )))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies() {
        use ImageAction::*;
        use PullPolicy::*;
        assert_eq!(Always.decide(true), Pull);
        assert_eq!(Always.decide(false), Pull);
        assert_eq!(IfNotPresent.decide(true), UsePresent);
        assert_eq!(IfNotPresent.decide(false), Pull);
        assert_eq!(Never.decide(true), UsePresent);
        assert_eq!(Never.decide(false), NotPresent);
        assert_eq!(PullPolicy::of(None, "busybox"), Always);
        assert_eq!(PullPolicy::of(None, "busybox:latest"), Always);
        assert_eq!(PullPolicy::of(None, "reg:5000/busybox:1.36"), IfNotPresent);
        assert_eq!(PullPolicy::of(None, "reg:5000/app"), Always);
        assert_eq!(PullPolicy::of(Some("Never"), "busybox"), Never);
        assert_eq!(
            PullPolicy::of(Some("IfNotPresent"), "busybox"),
            IfNotPresent
        );
    }

    #[test]
    fn insecure_registries() {
        let list = vec!["pi.local:5000".to_string(), "nas".to_string()];
        for (reg, want) in [
            ("localhost:5000", true),
            ("localhost", true),
            ("127.0.0.1:5000", true),
            ("127.1.2.3:80", true),
            ("[::1]:5000", true),
            ("pi.local:5000", true),
            ("pi.local:5001", false),
            ("nas:443", true),
            ("docker.io", false),
            ("ghcr.io", false),
            ("10.0.0.1:5000", false),
        ] {
            assert_eq!(is_insecure(reg, &list), want, "{reg}");
        }
    }

    #[test]
    fn error_chains_are_readable() {
        let inner = io::Error::new(io::ErrorKind::ConnectionReset, "connection reset by peer");
        let outer = io::Error::other(inner);
        assert_eq!(chain(&outer), "connection reset by peer");
        assert_eq!(truncate("abcdef", 3), "abc…");
        assert_eq!(truncate("ab", 3), "ab");
        assert!(is_disk_full(&io::Error::from_raw_os_error(libc::ENOSPC)));
        assert!(!is_disk_full(&io::Error::from_raw_os_error(libc::EIO)));
    }
}
