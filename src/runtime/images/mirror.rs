//! The registry mirror: an image store served read-only as an OCI
//! distribution endpoint, so that nodes pull what the master holds without
//! an outside registry (as k3s's embedded mirror does).
//!
//! ```text
//! GET      /v2/                               200 {} (the API version check)
//! GET|HEAD /v2/<name>/manifests/<tag|digest>  the manifest or index, with its media type and digest
//! GET|HEAD /v2/<name>/blobs/<digest>          a config or layer blob; `Range: bytes=N-[M]` → 206
//! GET      /bramble/v1/tag/<name>/<tag>       the tag's digest, signed by the master ([`TagAnswer`])
//! ```
//!
//! Digests protect everything but the step from a tag to a digest, and the
//! mirror speaks plain HTTP: someone in the middle on the LAN could answer a
//! tag with an image of their own. So a node does not ask for a tag's
//! manifest: it asks for the tag's digest, which the master signs with the
//! cluster key the node pinned when it joined ([`tag_message`], dated, good
//! for the clock window), then fetches `<name>@<digest>`, every byte of which
//! it verifies. Other clients (containerd, skopeo) may use the tag routes.
//!
//! `<name>` is the image's full normalised name (`docker.io/library/busybox`,
//! `bramble.local/demo`): a node asks for `<mirror>/<reference>`. A port in
//! the registry is written `__` ([`name_on_mirror`]: `reg.local:5000/app`
//! is `reg.local__5000/app`), since a repository path cannot hold a `:`.
//! A containerd-style `?ns=<registry>` query is honoured too
//! (`/v2/library/busybox/manifests/1.36?ns=docker.io`). A tag resolves
//! through the store's mirror refs (a kept multi-platform index) and then
//! its refs (the node's own manifest). Digests name any manifest, index or
//! blob the store holds, whatever the name: the store is content-addressed,
//! and knowing a digest means knowing the content. A manifest is served
//! only when every blob it names is there, so a node never starts a pull
//! that cannot finish (images imported before the store kept layer blobs
//! lack them: import them again).
//!
//! Every request but a malformed one must carry a token ([`Authorize`]
//! decides; the master accepts its nodes' and admins' signed tokens,
//! `transport::mirror_token`), as `Authorization: Bearer <token>` or as the
//! password of Basic credentials. Plain HTTP: whoever reads the LAN sees the
//! bytes, and a node verifies every manifest and blob against its digest,
//! so the mirror is trusted for nothing.
//!
//! Robustness: hyper parses HTTP/1.1 (headers beyond 16 KiB get 431, a
//! client that does not send its headers within 10 s is dropped), at most
//! [`MAX_CONNECTIONS`] connections at once (more are closed at accept),
//! paths and references are checked before any file is named (400 for
//! garbage, 404 for what is not there), and only `blobs/sha256/<64 hex>`
//! under the store is ever opened.
//!
//! Owns: the endpoint. Must not touch: anything but reading the store.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use super::reference::{ImageRef, is_sha256_hex};
use super::{ImageStore, Served};

/// Decides whether a request may read: given the presented token (`None`
/// without one), the caller's id, or why not.
pub type Authorize = Arc<dyn Fn(Option<&str>) -> Result<String, String> + Send + Sync>;

/// Signs with the master's cluster key.
pub type Sign = Arc<dyn Fn(&[u8]) -> [u8; 64] + Send + Sync>;

/// Who may read, and how the mirror signs tag resolutions.
#[derive(Clone)]
pub struct Access {
    pub authorize: Authorize,
    pub sign: Sign,
}

/// The answer to `GET /bramble/v1/tag/<name>/<tag>`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TagAnswer {
    /// The normalised `name:tag`.
    pub reference: String,
    pub digest: String,
    /// Unix seconds when the master signed it.
    pub time: i64,
    /// Hex ed25519 signature of [`tag_message`].
    pub signature: String,
}

/// What the master signs for a tag resolution.
pub fn tag_message(reference: &str, digest: &str, time: i64) -> Vec<u8> {
    format!("bramble-mirror-tag-v1\n{reference}\n{digest}\n{time}").into_bytes()
}

/// The path of a tag resolution for `canonical` (`name:tag`, normalised),
/// the registry's port as `__`; `None` when it has no tag or names a
/// registry a path cannot hold.
pub fn tag_path(canonical: &str) -> Option<String> {
    let ImageRef::Named {
        name,
        tag: Some(tag),
        digest: None,
    } = ImageRef::parse(canonical).ok()?
    else {
        return None;
    };
    let (registry, rest) = name.split_once('/')?;
    if registry.starts_with('[') {
        return None;
    }
    Some(format!(
        "/bramble/v1/tag/{}/{rest}/{tag}",
        registry.replace(':', "__")
    ))
}

/// Connections served at once; more are closed as they arrive.
pub const MAX_CONNECTIONS: usize = 64;

/// Request line and headers beyond this get 431.
const MAX_HEADER_BYTES: usize = 16 * 1024;

const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

const CHUNK: usize = 64 * 1024;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

type Body = UnsyncBoxBody<Bytes, io::Error>;

/// What a request asks for, once its path is understood.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Route {
    /// `/v2/`
    Base,
    /// A manifest of the image `name` (normalised), by tag or digest.
    Manifest { name: String, reference: Reference },
    /// A blob, by digest.
    Blob { digest: String },
    /// The signed digest of a tag.
    Tag { name: String, tag: String },
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Reference {
    Tag(String),
    Digest(String),
}

/// An OCI error response.
#[derive(Debug, PartialEq, Eq)]
struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
}

/// Serves `store` on `listener` until `shutdown` flips.
pub async fn serve(
    listener: TcpListener,
    store: ImageStore,
    access: Access,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let ctx = Arc::new(Ctx { store, access });
    loop {
        tokio::select! {
            // Stop accepting; connections in flight end with the process.
            _ = shutdown.changed() => break,
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // EMFILE and the like: do not spin on it.
                        tracing::warn!(error = %e, "registry mirror: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let Ok(permit) = slots.clone().try_acquire_owned() else {
                    tracing::warn!(%peer, "registry mirror: too many connections; closing this one");
                    continue;
                };
                let ctx = ctx.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let ctx = ctx.clone();
                        async move { Ok::<_, Infallible>(ctx.handle(req, peer).await) }
                    });
                    let served = hyper::server::conn::http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(HEADER_TIMEOUT)
                        .max_header_size(MAX_HEADER_BYTES)
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                    if let Err(e) = served {
                        tracing::debug!(%peer, error = %e, "registry mirror: connection ended");
                    }
                    drop(permit);
                });
            }
        }
    }
}

struct Ctx {
    store: ImageStore,
    access: Access,
}

impl Ctx {
    async fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
        let head = req.method() == Method::HEAD;
        let response = match self.answer(&req).await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(%peer, method = %req.method(), path = %req.uri().path(), status = %e.status, error = %e.message, "registry mirror: refused");
                error_response(&e)
            }
        };
        if head {
            // Same headers (Content-Length included), no body.
            let (parts, _) = response.into_parts();
            return Response::from_parts(parts, empty());
        }
        response
    }

    async fn answer(&self, req: &Request<Incoming>) -> Result<Response<Body>, ApiError> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return Err(ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "UNSUPPORTED",
                "this registry mirror is read-only",
            ));
        }
        let route = route(req.uri().path(), req.uri().query())?;
        let token = bearer_token(req.headers());
        let caller = (self.access.authorize)(token.as_deref())
            .map_err(|reason| ApiError::new(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", reason))?;
        tracing::debug!(%caller, ?route, "registry mirror: request");
        match route {
            Route::Base => Ok(json_response(StatusCode::OK, Bytes::from_static(b"{}"))),
            Route::Manifest { name, reference } => self.manifest(&name, &reference),
            Route::Blob { digest } => self.blob(&digest, req.headers()).await,
            Route::Tag { name, tag } => self.tag(&name, &tag),
        }
    }

    /// `name:tag` (normalised) and the digest the store answers for it.
    fn resolve_tag(&self, name: &str, tag: &str) -> Result<(String, String), ApiError> {
        let full = ImageRef::parse(&format!("{name}:{tag}"))
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "NAME_INVALID", e.to_string()))?
            .to_string();
        let found = match self.store.read_mirror_ref(&full) {
            Ok(Some(d)) => Some(d),
            _ => self.store.read_ref(&full).ok().flatten(),
        };
        let digest = found.ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "MANIFEST_UNKNOWN",
                format!("{full} is not on the master"),
            )
        })?;
        Ok((full, digest))
    }

    fn tag(&self, name: &str, tag: &str) -> Result<Response<Body>, ApiError> {
        let (reference, digest) = self.resolve_tag(name, tag)?;
        if !self.store.servable(&digest) {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "MANIFEST_UNKNOWN",
                format!("the master cannot serve {reference} whole (import it again)"),
            ));
        }
        let time = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let signature = hex::encode((self.access.sign)(&tag_message(&reference, &digest, time)));
        let answer = TagAnswer {
            reference,
            digest,
            time,
            signature,
        };
        let body = serde_json::to_vec(&answer).unwrap_or_default();
        Ok(json_response(StatusCode::OK, Bytes::from(body)))
    }

    fn manifest(&self, name: &str, reference: &Reference) -> Result<Response<Body>, ApiError> {
        let unknown = |what: String| ApiError::new(StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN", what);
        let digest = match reference {
            Reference::Digest(d) => d.clone(),
            Reference::Tag(tag) => self.resolve_tag(name, tag)?.1,
        };
        let path = self
            .store
            .blob_path(&digest)
            .map_err(|_| unknown(format!("{digest} is not on the master")))?;
        let bytes =
            std::fs::read(&path).map_err(|_| unknown(format!("{digest} is not on the master")))?;
        let served =
            Served::parse(&bytes).ok_or_else(|| unknown(format!("{digest} is not a manifest")))?;
        let media_type = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| v.get("mediaType")?.as_str().map(str::to_string));
        let media_type = match (&served, media_type) {
            (_, Some(m)) => m,
            (Served::Index(_), None) => OCI_INDEX.to_string(),
            (Served::Manifest(_), None) => OCI_MANIFEST.to_string(),
        };
        if let Served::Manifest(m) = &served
            && let Some(missing) = self.store.missing_blob(m)
        {
            return Err(unknown(format!(
                "the master holds {digest} without its blob {missing} (stored before it kept layer blobs for the mirror? import it again)"
            )));
        }
        let len = bytes.len();
        let mut response = Response::new(full(Bytes::from(bytes)));
        let h = response.headers_mut();
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        insert(h, header::CONTENT_TYPE, &media_type);
        insert(h, "docker-content-digest", &digest);
        Ok(response)
    }

    async fn blob(
        &self,
        digest: &str,
        headers: &hyper::HeaderMap,
    ) -> Result<Response<Body>, ApiError> {
        let unknown = || {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "BLOB_UNKNOWN",
                format!("{digest} is not on the master"),
            )
        };
        let path = self.store.blob_path(digest).map_err(|_| unknown())?;
        let mut file = tokio::fs::File::open(&path).await.map_err(|_| unknown())?;
        let meta = file.metadata().await.map_err(|_| unknown())?;
        if !meta.is_file() {
            return Err(unknown());
        }
        let total = meta.len();
        let range = match headers.get(header::RANGE) {
            None => None,
            Some(v) => match v.to_str().ok().and_then(|v| parse_range(v, total)) {
                Some(r) => Some(r),
                None => {
                    let mut r = Response::new(empty());
                    *r.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
                    insert(
                        r.headers_mut(),
                        header::CONTENT_RANGE,
                        &format!("bytes */{total}"),
                    );
                    return Ok(r);
                }
            },
        };
        let (start, end) = range.unwrap_or((0, total.saturating_sub(1)));
        let len = if total == 0 { 0 } else { end - start + 1 };
        if start > 0 {
            file.seek(io::SeekFrom::Start(start))
                .await
                .map_err(|_| unknown())?;
        }
        let mut response = Response::new(file_body(file, len));
        if range.is_some() {
            *response.status_mut() = StatusCode::PARTIAL_CONTENT;
            insert(
                response.headers_mut(),
                header::CONTENT_RANGE,
                &format!("bytes {start}-{end}/{total}"),
            );
        }
        let h = response.headers_mut();
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        insert(h, header::CONTENT_TYPE, "application/octet-stream");
        insert(h, header::ACCEPT_RANGES, "bytes");
        insert(h, "docker-content-digest", digest);
        Ok(response)
    }
}

/// The reference a node asks the mirror for: `canonical` (a normalised
/// reference) below the mirror's address, the registry's port as `__`.
/// `None` for a registry a path cannot name (an IPv6 address).
pub fn name_on_mirror(mirror: &str, canonical: &str) -> Option<String> {
    let (registry, rest) = canonical.split_once('/')?;
    if registry.starts_with('[') {
        return None;
    }
    Some(format!("{mirror}/{}/{rest}", registry.replace(':', "__")))
}

/// Where a node reaches the mirror the master advertises (`host:port`):
/// an empty or unspecified host means the host of the node's broker
/// (`broker_host`), which then is the master's machine. `None` for an
/// address that is not `host:port`.
pub fn mirror_address(advertised: &str, broker_host: &str) -> Option<String> {
    let (host, port) = advertised.trim().rsplit_once(':')?;
    let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let unspecified = bare.is_empty()
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_unspecified());
    let host = if unspecified { broker_host } else { bare };
    if host.is_empty() || host.contains(['/', '@', ' ']) {
        return None;
    }
    Some(if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    })
}

/// Understands a request path (and query): pure.
fn route(path: &str, query: Option<&str>) -> Result<Route, ApiError> {
    let bad_name = |m: String| ApiError::new(StatusCode::BAD_REQUEST, "NAME_INVALID", m);
    let not_found = || ApiError::new(StatusCode::NOT_FOUND, "NOT_FOUND", "no such endpoint");
    if path == "/v2" || path == "/v2/" {
        return Ok(Route::Base);
    }
    if let Some(rest) = path.strip_prefix("/bramble/v1/tag/") {
        let mut parts: Vec<&str> = rest.split('/').collect();
        if parts.len() < 2 || rest.len() > 1024 {
            return Err(not_found());
        }
        let tag = parts.pop().unwrap_or_default();
        if !valid_tag(tag) {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "TAG_INVALID",
                format!("{tag:?} is not a tag"),
            ));
        }
        return Ok(Route::Tag {
            name: repository_name(&mut parts, None)?,
            tag: tag.to_string(),
        });
    }
    let rest = path.strip_prefix("/v2/").ok_or_else(not_found)?;
    if rest.len() > 1024 {
        return Err(bad_name("path too long".into()));
    }
    let mut parts: Vec<&str> = rest.split('/').collect();
    if parts.len() < 3 {
        return Err(not_found());
    }
    let reference = parts.pop().unwrap_or_default();
    let kind = parts.pop().unwrap_or_default();
    let name = repository_name(&mut parts, query)?;
    let digest = |r: &str| {
        r.strip_prefix("sha256:")
            .filter(|h| is_sha256_hex(h))
            .map(|_| r.to_string())
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "DIGEST_INVALID",
                    format!("{r:?} is not a sha256 digest"),
                )
            })
    };
    match kind {
        "manifests" => {
            let reference = if reference.contains(':') {
                Reference::Digest(digest(reference)?)
            } else if valid_tag(reference) {
                Reference::Tag(reference.to_string())
            } else {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "TAG_INVALID",
                    format!("{reference:?} is not a tag"),
                ));
            };
            Ok(Route::Manifest { name, reference })
        }
        "blobs" => Ok(Route::Blob {
            digest: digest(reference)?,
        }),
        _ => Err(not_found()),
    }
}

/// The full image name of a path's components (and query): containerd's
/// mirrors name the upstream registry in `ns`; ours lead with it, its port
/// as `__`.
fn repository_name(parts: &mut [&str], query: Option<&str>) -> Result<String, ApiError> {
    let bad_name = |m: String| ApiError::new(StatusCode::BAD_REQUEST, "NAME_INVALID", m);
    let name = parts.join("/");
    if parts.is_empty() || !parts.iter().all(|c| valid_component(c)) {
        return Err(bad_name(format!("invalid repository name {name:?}")));
    }
    if let Some(ns) = query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|kv| kv.strip_prefix("ns="))
    {
        if !valid_component(ns) {
            return Err(bad_name(format!("invalid registry {ns:?}")));
        }
        return Ok(format!("{ns}/{name}"));
    }
    if let Some((registry, port)) = parts[0].rsplit_once("__")
        && !port.is_empty()
        && port.bytes().all(|b| b.is_ascii_digit())
    {
        parts[0] = "";
        return Ok(format!("{registry}:{port}{}", parts.join("/")));
    }
    Ok(name)
}

/// A path component of a repository name, or a registry `host[:port]`.
fn valid_component(c: &str) -> bool {
    !c.is_empty()
        && c.len() <= 255
        && c != "."
        && c != ".."
        && c.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':'))
}

fn valid_tag(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 128
        && !t.starts_with(['.', '-'])
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// `bytes=START-[END]` within `total`: the inclusive range, or `None` when
/// it is not one we serve (suffix ranges, several ranges, out of bounds).
fn parse_range(value: &str, total: u64) -> Option<(u64, u64)> {
    let spec = value.trim().strip_prefix("bytes=")?;
    let (start, end) = spec.split_once('-')?;
    let start: u64 = start.trim().parse().ok()?;
    let end: u64 = match end.trim() {
        "" => total.checked_sub(1)?,
        e => e.parse::<u64>().ok()?.min(total.checked_sub(1)?),
    };
    (start <= end && start < total).then_some((start, end))
}

/// The token of `Authorization: Bearer <t>`, or the password of `Basic`.
fn bearer_token(headers: &hyper::HeaderMap) -> Option<String> {
    use base64::Engine as _;
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, rest) = value.split_once(' ')?;
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(rest.trim().to_string());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest.trim())
            .ok()?;
        let text = String::from_utf8(decoded).ok()?;
        return text.split_once(':').map(|(_, p)| p.to_string());
    }
    None
}

fn insert<K: header::IntoHeaderName>(h: &mut hyper::HeaderMap, name: K, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        h.insert(name, v);
    }
}

fn empty() -> Body {
    Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

fn full(bytes: Bytes) -> Body {
    Full::new(bytes)
        .map_err(|never| match never {})
        .boxed_unsync()
}

fn json_response(status: StatusCode, body: Bytes) -> Response<Body> {
    let len = body.len();
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    insert(h, header::CONTENT_TYPE, "application/json");
    insert(h, "docker-distribution-api-version", "registry/2.0");
    r
}

fn error_response(e: &ApiError) -> Response<Body> {
    let body = serde_json::json!({
        "errors": [{ "code": e.code, "message": e.message, "detail": null }]
    });
    let mut r = json_response(e.status, Bytes::from(body.to_string()));
    if e.status == StatusCode::UNAUTHORIZED {
        insert(
            r.headers_mut(),
            header::WWW_AUTHENTICATE,
            "Basic realm=\"bramble registry mirror\"",
        );
    }
    r
}

/// `len` bytes of `file` from where it stands, in chunks.
fn file_body(file: tokio::fs::File, len: u64) -> Body {
    let stream = futures::stream::unfold((file, len), |(mut file, left)| async move {
        if left == 0 {
            return None;
        }
        let mut buf = vec![0u8; CHUNK.min(left as usize)];
        match file.read(&mut buf).await {
            Ok(0) => Some((
                Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "blob shorter than it was",
                )),
                (file, 0),
            )),
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(Frame::data(Bytes::from(buf))), (file, left - n as u64)))
            }
            Err(e) => Some((Err(e), (file, 0))),
        }
    });
    BodyExt::boxed_unsync(StreamBody::new(stream.boxed()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn routes() {
        assert_eq!(route("/v2/", None), Ok(Route::Base));
        assert_eq!(route("/v2", None), Ok(Route::Base));
        assert_eq!(
            route("/v2/docker.io/library/busybox/manifests/1.36", None),
            Ok(Route::Manifest {
                name: "docker.io/library/busybox".into(),
                reference: Reference::Tag("1.36".into())
            })
        );
        assert_eq!(
            route(&format!("/v2/reg:5000/a/b/manifests/{D}"), None),
            Ok(Route::Manifest {
                name: "reg:5000/a/b".into(),
                reference: Reference::Digest(D.into())
            })
        );
        assert_eq!(
            route("/v2/library/busybox/manifests/1.36", Some("ns=docker.io")),
            Ok(Route::Manifest {
                name: "docker.io/library/busybox".into(),
                reference: Reference::Tag("1.36".into())
            })
        );
        assert_eq!(
            route("/v2/reg.local__5000/a/b/manifests/1", None),
            Ok(Route::Manifest {
                name: "reg.local:5000/a/b".into(),
                reference: Reference::Tag("1".into())
            })
        );
        assert_eq!(
            name_on_mirror("m:5050", "reg.local:5000/a/b:1").as_deref(),
            Some("m:5050/reg.local__5000/a/b:1")
        );
        assert_eq!(
            name_on_mirror("m:5050", "docker.io/library/busybox:1").as_deref(),
            Some("m:5050/docker.io/library/busybox:1")
        );
        assert_eq!(name_on_mirror("m:5050", "[::1]:5000/a:1"), None);
        assert_eq!(
            tag_path("reg.local:5000/a/b:1").as_deref(),
            Some("/bramble/v1/tag/reg.local__5000/a/b/1")
        );
        assert_eq!(tag_path(&format!("x.io/a@{D}")), None);
        assert_eq!(tag_path(&format!("x.io/a:1@{D}")), None);
        assert_eq!(
            route("/bramble/v1/tag/reg.local__5000/a/b/1", None),
            Ok(Route::Tag {
                name: "reg.local:5000/a/b".into(),
                tag: "1".into()
            })
        );
        assert_eq!(
            route("/bramble/v1/tag/x/..", None).unwrap_err().status,
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            route("/bramble/v1/tag/../x/1", None).unwrap_err().status,
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            route("/bramble/v1/tag/1", None).unwrap_err().status,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            route(&format!("/v2/x/blobs/{D}"), None),
            Ok(Route::Blob { digest: D.into() })
        );
        let status = |p: &str| route(p, None).unwrap_err().status;
        assert_eq!(status("/"), StatusCode::NOT_FOUND);
        assert_eq!(status("/v2/x"), StatusCode::NOT_FOUND);
        assert_eq!(status("/v2/x/tags/list"), StatusCode::NOT_FOUND);
        assert_eq!(status("/v2/x/blobs/latest"), StatusCode::BAD_REQUEST);
        assert_eq!(status("/v2/x/blobs/sha256:abc"), StatusCode::BAD_REQUEST);
        assert_eq!(status("/v2/x/blobs/sha512:abc"), StatusCode::BAD_REQUEST);
        assert_eq!(status("/v2/../blobs/x"), StatusCode::BAD_REQUEST);
        assert_eq!(status("/v2/a//b/manifests/x"), StatusCode::BAD_REQUEST);
        assert_eq!(status("/v2/a%2f/manifests/x"), StatusCode::BAD_REQUEST);
        assert_eq!(status("/v2/a/manifests/-x"), StatusCode::BAD_REQUEST);
        assert_eq!(status("/v2/a/manifests/..%2f"), StatusCode::BAD_REQUEST);
        assert_eq!(
            route("/v2/a/manifests/x", Some("ns=../.."))
                .unwrap_err()
                .status,
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            status(&format!("/v2/{}/manifests/x", "a/".repeat(600))),
            StatusCode::BAD_REQUEST
        );
    }

    #[test]
    fn mirror_addresses() {
        let at = |a: &str, b: &str| mirror_address(a, b);
        assert_eq!(at(":5050", "10.0.0.2").as_deref(), Some("10.0.0.2:5050"));
        assert_eq!(
            at("0.0.0.0:5050", "pi.local").as_deref(),
            Some("pi.local:5050")
        );
        assert_eq!(
            at("[::]:5050", "fd00::2").as_deref(),
            Some("[fd00::2]:5050")
        );
        assert_eq!(
            at("10.0.0.9:6000", "10.0.0.2").as_deref(),
            Some("10.0.0.9:6000")
        );
        assert_eq!(at("[fd00::9]:6000", "x").as_deref(), Some("[fd00::9]:6000"));
        assert_eq!(at("10.0.0.9", "x"), None);
        assert_eq!(at("10.0.0.9:0", "x"), None);
        assert_eq!(at("10.0.0.9:http", "x"), None);
        assert_eq!(at("a/b:1", "x"), None);
        assert_eq!(at(":5050", ""), None);
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-", 10), Some((0, 9)));
        assert_eq!(parse_range("bytes=4-", 10), Some((4, 9)));
        assert_eq!(parse_range("bytes=4-6", 10), Some((4, 6)));
        assert_eq!(parse_range("bytes=4-60", 10), Some((4, 9)));
        assert_eq!(parse_range("bytes=10-", 10), None);
        assert_eq!(parse_range("bytes=6-4", 10), None);
        assert_eq!(parse_range("bytes=-4", 10), None);
        assert_eq!(parse_range("bytes=0-1,3-4", 10), None);
        assert_eq!(parse_range("items=0-", 10), None);
        assert_eq!(parse_range("bytes=0-", 0), None);
    }

    #[test]
    fn tokens_from_headers() {
        let mut h = hyper::HeaderMap::new();
        assert_eq!(bearer_token(&h), None);
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer abc.def"),
        );
        assert_eq!(bearer_token(&h).as_deref(), Some("abc.def"));
        // user:tok
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic dXNlcjp0b2s="),
        );
        assert_eq!(bearer_token(&h).as_deref(), Some("tok"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic !!!"));
        assert_eq!(bearer_token(&h), None);
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Digest x"));
        assert_eq!(bearer_token(&h), None);
    }
}
