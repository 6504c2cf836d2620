//! Message bodies: what travels inside the envelope on each topic.
//!
//! Commands and replies are one request/response pair per verb, keyed by a
//! correlation id. Assignments and the service table are full states with a
//! generation, never deltas, so a receiver that missed one just takes the next.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::api::routing::{ClusterNetwork, ServiceRoute};
use crate::api::{ConfigMap, Kind, Object, ObjectKey, Pod, Secret};
use k8s_openapi::api::core::v1::PodStatus;

/// Client → master on `cmd/<verb>`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Command {
    /// Correlation id, echoed in the reply.
    pub id: u64,
    /// Topic the reply goes to (`…/reply/<client-id>`).
    pub reply_to: String,
    /// The recipient id to address the reply to (`client:<client-id>`).
    pub reply_as: String,
    pub request: Request,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Request {
    Apply(ApplyRequest),
    Get(GetRequest),
    Delete(DeleteRequest),
    Scale(ScaleRequest),
    Logs(LogsRequest),
    ClusterInfo,
    Exec(ExecRequest),
    PortForward(PortForwardRequest),
    Rollout(RolloutRequest),
    SetImage(SetImageRequest),
    Label(LabelRequest),
    Cordon(CordonRequest),
    Top(TopRequest),
    Token(TokenRequest),
}

impl Request {
    /// The `cmd/<verb>` topic level this request is sent on.
    pub fn verb(&self) -> &'static str {
        match self {
            Request::Apply(_) => "apply",
            Request::Get(_) => "get",
            Request::Delete(_) => "delete",
            Request::Scale(_) => "scale",
            Request::Logs(_) => "logs",
            Request::ClusterInfo => "cluster-info",
            Request::Exec(_) => "exec",
            Request::PortForward(_) => "port-forward",
            Request::Rollout(_) => "rollout",
            Request::SetImage(_) => "set-image",
            Request::Label(_) => "label",
            Request::Cordon(_) => "cordon",
            Request::Top(_) => "top",
            Request::Token(_) => "token",
        }
    }

    /// Whether running it twice could do something once more: everything but
    /// the reads. Only these are recorded on disk against replays across a
    /// restart, so a dashboard that polls `get` costs the SD card nothing.
    pub fn changes_state(&self) -> bool {
        match self {
            Request::Get(_) | Request::Logs(_) | Request::ClusterInfo | Request::Top(_) => false,
            Request::Apply(a) => !a.dry_run,
            _ => true,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ApplyRequest {
    /// The objects as the manifests wrote them (not defaulted): the master
    /// merges each with the live object and the last applied configuration.
    pub objects: Vec<Object>,
    pub dry_run: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GetRequest {
    pub kind: Kind,
    /// `None`: every namespace (`-A`).
    pub namespace: Option<String>,
    pub name: Option<String>,
    /// A `-l` label selector.
    pub selector: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DeleteRequest {
    pub kind: Kind,
    pub namespace: String,
    /// Names to delete; empty with a selector or `all` set.
    pub names: Vec<String>,
    pub selector: Option<String>,
    pub all: bool,
    /// `background` (the default), `foreground` or `orphan` (`--cascade`).
    #[serde(default)]
    pub propagation: Option<String>,
    #[serde(default)]
    pub dry_run: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ScaleRequest {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
    pub replicas: i32,
    /// `--resource-version`: refuse unless the object is at this version.
    #[serde(default)]
    pub resource_version: Option<String>,
    /// `--current-replicas`: refuse unless it has this many now.
    #[serde(default)]
    pub current_replicas: Option<i32>,
    #[serde(default)]
    pub dry_run: bool,
}

/// `rollout undo|pause|resume|restart` of a Deployment, StatefulSet or
/// DaemonSet (`status` and `history` are read-only and done with `get`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RolloutRequest {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
    pub action: RolloutAction,
    #[serde(default)]
    pub dry_run: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum RolloutAction {
    /// Back to `to_revision`, or the revision before the current one.
    Undo {
        to_revision: Option<i64>,
    },
    Pause,
    Resume,
    Restart,
}

/// `set image KIND/NAME container=image…` (`*` for every container).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SetImageRequest {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
    pub images: Vec<(String, String)>,
    #[serde(default)]
    pub dry_run: bool,
}

/// `cordon` and `uncordon` (`drain` is a cordon, then deletes).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CordonRequest {
    pub nodes: Vec<String>,
    /// `true` cordons, `false` uncordons.
    pub unschedulable: bool,
    #[serde(default)]
    pub dry_run: bool,
}

/// `label` and `annotate`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LabelRequest {
    pub kind: Kind,
    pub namespace: String,
    pub names: Vec<String>,
    pub selector: Option<String>,
    pub all: bool,
    /// Annotations instead of labels.
    pub annotations: bool,
    pub set: std::collections::BTreeMap<String, String>,
    /// Keys to remove (`key-`).
    pub remove: Vec<String>,
    /// Replace values already set (`--overwrite`).
    pub overwrite: bool,
    /// `--resource-version`: refuse unless the object is at this version.
    pub resource_version: Option<String>,
    #[serde(default)]
    pub dry_run: bool,
}

/// `top nodes` / `top pods`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TopRequest {
    pub nodes: bool,
    /// `None`: every namespace.
    pub namespace: Option<String>,
    pub selector: Option<String>,
    pub containers: bool,
}

/// `token create | list | revoke` (admin callers only).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum TokenRequest {
    Create(TokenCreate),
    List,
    Revoke { id: String },
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TokenCreate {
    /// An API token (for automation tools) rather than a join token.
    pub api: bool,
    /// Lifetime in seconds; `None` never expires.
    pub ttl_seconds: Option<i64>,
    /// API tokens: the verbs it may use (`get`, `scale`, `restart`, `delete`, `apply`, `*`).
    pub verbs: Vec<String>,
    /// API tokens: the namespaces it may act in (`*` for all).
    pub namespaces: Vec<String>,
    pub description: String,
}

/// Resource use as `top` prints it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TopReport {
    pub rows: Vec<TopRow>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TopRow {
    /// Node name, or pod namespace.
    pub namespace: String,
    pub name: String,
    /// Container name with `--containers`.
    pub container: Option<String>,
    pub cpu_millis: i64,
    pub memory_bytes: i64,
    /// Nodes: allocatable, for the percentages.
    pub cpu_capacity_millis: i64,
    pub memory_capacity_bytes: i64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LogsRequest {
    pub namespace: String,
    pub pod: String,
    pub container: Option<String>,
    pub follow: bool,
    pub tail: Option<u64>,
    /// Chosen by the client, which subscribes to the stream before asking.
    pub stream_id: String,
    /// The previous attempt's log (`--previous`).
    #[serde(default)]
    pub previous: bool,
    #[serde(default)]
    pub since: Option<Since>,
    /// Prefix each line with when it was written (`--timestamps`).
    #[serde(default)]
    pub timestamps: bool,
}

/// `--since` / `--since-time`: which log lines are recent enough.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Since {
    /// Written within this many seconds, by the node's clock.
    Seconds(u64),
    /// Written at or after this Unix time in milliseconds.
    UnixMs(i64),
}

/// `exec POD [-c C] [-i] [-t] -- CMD…`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ExecRequest {
    pub namespace: String,
    pub pod: String,
    pub container: Option<String>,
    pub command: Vec<String>,
    pub stdin: bool,
    pub tty: bool,
    /// The client terminal's size when `tty` is set.
    pub size: Option<TermSize>,
    pub stream_id: String,
}

/// `port-forward`: one stream per forwarded connection.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PortForwardRequest {
    pub namespace: String,
    pub pod: String,
    pub port: u16,
    pub stream_id: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TermSize {
    pub cols: u16,
    pub rows: u16,
}

/// Master → client on `reply/<client-id>`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Reply {
    pub id: u64,
    pub result: Result<Response, ApiError>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Response {
    Applied(Vec<Applied>),
    Objects(Vec<Object>),
    Deleted(Vec<ObjectKey>),
    Scaled(ObjectKey),
    /// The stream is opened on `node`; its frames are signed with `node_key`.
    Stream {
        node: String,
        node_key: String,
        /// The container it is about (chosen by the master when the
        /// request named none).
        container: Option<String>,
    },
    ClusterInfo(ClusterInfo),
    /// What a rollout, set image or label command did: each object and
    /// kubectl's word for it (`rolled back`, `paused`, `image updated`,
    /// `labeled`, `not labeled`…).
    Done(Vec<(ObjectKey, String)>),
    Top(TopReport),
    /// A new token: its text (shown once, never stored) and what it allows.
    TokenCreated {
        token: String,
        info: crate::master::tokens::TokenInfo,
    },
    Tokens(Vec<crate::master::tokens::TokenInfo>),
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Applied {
    pub key: ObjectKey,
    /// `created`, `configured`, `unchanged` as kubectl prints them.
    pub outcome: String,
    pub warnings: Vec<String>,
    /// The object as stored (or, in a dry run, as it would be), for `diff`.
    #[serde(default)]
    pub object: Option<Object>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClusterInfo {
    pub broker: String,
    pub master_key: String,
    pub nodes: Vec<String>,
    pub cluster_cidr: String,
    pub service_cidr: String,
    pub version: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    BadRequest,
    Invalid,
    NotFound,
    AlreadyExists,
    Conflict,
    Forbidden,
    Unavailable,
    Internal,
}

#[derive(Clone, Debug, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            message: message.into(),
        }
    }
}

/// Master → worker on `node/<n>/assign` (retained): every pod the node should run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Assignment {
    pub node: String,
    /// Increases with every change; a worker ignores one older than what it has.
    pub generation: u64,
    /// The node's pod CIDR, as allocated by the master.
    pub pod_cidr: String,
    /// Pods bound to the node. A pod with `deletionTimestamp` set is to be stopped.
    pub pods: Vec<Pod>,
    /// Exactly the ConfigMaps these pods reference (volumes, env, envFrom,
    /// projected sources), so the node runs them without asking the master.
    #[serde(default)]
    pub configmaps: Vec<ConfigMap>,
    /// Exactly the Secrets these pods reference (the same places, plus
    /// `imagePullSecrets`); a node never receives one none of its pods names.
    /// Never serialized: they travel (and are stored by the worker) only as
    /// `sealed_secrets`; the worker fills this in when it opens them.
    #[serde(skip)]
    pub secrets: Vec<Secret>,
    /// `secrets` sealed to the node's own key for this node and generation
    /// (`transport::seal`); `None` when there are none.
    #[serde(default)]
    pub sealed_secrets: Option<crate::transport::seal::Sealed>,
    /// Set when the master answers a report whose timestamp was off its
    /// clock: that report's session and sequence number, so the node knows
    /// this envelope's timestamp is the master's time now and syncs to it.
    #[serde(default)]
    pub clock_echo: Option<ClockEcho>,
}

/// Names one report of one agent run (`NodeReport::session`, the envelope's
/// sequence number).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClockEcho {
    pub session: u64,
    pub seq: u64,
}

/// Master → every worker on `services` (retained).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ServiceTable {
    pub generation: u64,
    pub routes: Vec<ServiceRoute>,
    /// The cluster DNS address and domain, and the cluster CIDR.
    #[serde(default)]
    pub network: ClusterNetwork,
}

/// Worker → master on `node/<n>/status`: heartbeat, facts, pod statuses.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeReport {
    pub node: String,
    /// The last assignment and service table generations the worker holds; the
    /// master republishes when they lag.
    pub assignment_generation: u64,
    pub services_generation: u64,
    pub info: NodeFacts,
    /// Every pod the worker knows, including ones being torn down.
    pub pods: Vec<PodReport>,
    /// What happened to pods since the last report (`describe` shows them).
    #[serde(default)]
    pub events: Vec<PodEvent>,
    /// What went wrong with the node's share of Services and networking
    /// (a port it cannot bind, the cluster DNS, egress) since the last report.
    #[serde(default)]
    pub object_events: Vec<ObjectEvent>,
    /// This run of the agent (random at start): a Last Will names the
    /// session it belongs to, so an old one cannot mark a live node offline.
    #[serde(default)]
    pub session: u64,
}

/// Node → master on `join/<node>`, signed by the node's new key: "register
/// this key under this name". `proof` shows knowledge of the join token's
/// secret without sending it (see `master::tokens::join_proof`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinRequest {
    pub node: String,
    /// The node's ed25519 public key, hex.
    pub key: String,
    pub token_id: String,
    pub nonce: u64,
    pub proof: String,
    /// Labels the node asks for (`--label`, worker.toml).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// Master → node on `join/<node>/reply`, signed by the cluster key (whose
/// fingerprint the token pins).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinReply {
    pub nonce: u64,
    /// The cluster (master) key, hex: the node checks it against the
    /// fingerprint its token pins before believing anything else here.
    pub master_key: String,
    pub result: Result<Joined, String>,
    /// Set when the request's timestamp was this far off the master's clock:
    /// nothing was admitted; the node syncs to this reply's timestamp (the
    /// nonce makes it an answer to its request) and asks again.
    #[serde(default)]
    pub clock_skew_ms: Option<i64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Joined {
    pub pod_cidr: String,
}

/// Node → everyone, retained on `node/<n>/online`: `true` while connected;
/// the Last Will, sealed at connect time, says `false` for the same session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Online {
    pub online: bool,
    pub session: u64,
}

/// Something that happened to a pod on its node, for an Event object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodEvent {
    pub pod_uid: String,
    pub namespace: String,
    pub pod: String,
    /// `Normal` or `Warning`.
    pub type_: String,
    /// `Started`, `BackOff`, `Unhealthy`…
    pub reason: String,
    pub message: String,
    /// Unix milliseconds, by the node's clock.
    pub at: i64,
}

/// What an Event from a node is about, besides its pods.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum EventSubject {
    /// A Service whose port this node's proxy cannot serve.
    Service { namespace: String, name: String },
    /// The reporting node itself (its cluster DNS, its egress).
    Node,
}

/// Something that happened on a node to a Service or to the node, for an
/// Event object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectEvent {
    pub subject: EventSubject,
    /// `Normal` or `Warning`.
    pub type_: String,
    pub reason: String,
    pub message: String,
    /// Unix milliseconds, by the node's clock.
    pub at: i64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeFacts {
    pub addresses: Vec<String>,
    pub hostname: String,
    /// GOARCH names: amd64, arm64, arm.
    pub arch: String,
    pub os: String,
    pub os_image: String,
    pub kernel_version: String,
    pub cpu_millis: i64,
    pub memory_bytes: i64,
    pub max_pods: i64,
    pub agent_version: String,
    /// Size of the filesystem holding the data directory.
    #[serde(default)]
    pub ephemeral_storage_bytes: i64,
    /// Kept back from pods for the system and the agent.
    #[serde(default)]
    pub reserved_cpu_millis: i64,
    #[serde(default)]
    pub reserved_memory_bytes: i64,
    /// The SoC's temperature in millidegrees Celsius
    /// (`/sys/class/thermal/thermal_zone0/temp`), read for every report;
    /// `None` where the machine has no thermal zone. Kept in the master's
    /// memory only (Home Assistant discovery), never stored.
    #[serde(default)]
    pub temperature_millicelsius: Option<i64>,
}

impl NodeFacts {
    /// Capacity minus the reserve: what pods may request.
    pub fn allocatable_cpu_millis(&self) -> i64 {
        (self.cpu_millis - self.reserved_cpu_millis).max(0)
    }

    pub fn allocatable_memory_bytes(&self) -> i64 {
        (self.memory_bytes - self.reserved_memory_bytes).max(0)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PodReport {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub status: PodStatus,
    /// All containers stopped and resources released: a deleted pod may go.
    pub terminated: bool,
    /// What its running containers use, measured in their cgroups; filled in
    /// heartbeats only (it changes all the time and must not make every
    /// report differ).
    #[serde(default)]
    pub usage: Vec<ContainerUsage>,
}

/// One container's resource use, as its node measured it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerUsage {
    pub container: String,
    /// CPU time used since the container started, in nanoseconds (the master
    /// turns two samples into a rate).
    pub cpu_nanos: u64,
    /// Memory working set (usage less inactive file cache), in bytes.
    pub memory_bytes: u64,
    /// When it was read, Unix milliseconds by the node's clock.
    pub at_ms: i64,
}

/// Everything on `node/<n>/stream/<id>/{in,out}` (see ARCHITECTURE.md,
/// "Streams"; the flow control is `transport::stream`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum StreamMsg {
    /// Master → node: serve this stream to the client it names.
    Open(StreamOpen),
    /// Either way: one sequenced frame. Each direction numbers its own
    /// frames from 1.
    Frame(Frame),
    /// Either way: every frame up to `seq` has been consumed (written to the
    /// process, the socket, the terminal). Also the keep-alive; the client's
    /// first one says it is ready, and the node answers it.
    Ack { seq: u64 },
    /// Client → node: stop now (Ctrl-C, a local error).
    Close,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Frame {
    pub seq: u64,
    pub body: FrameBody,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Channel {
    /// Client → node: a process's stdin, the forwarded connection's bytes out.
    Stdin,
    /// Node → client: a process's stdout (or its terminal), a log, the
    /// forwarded connection's bytes back.
    Stdout,
    Stderr,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum FrameBody {
    Data {
        channel: Channel,
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
    },
    /// No more bytes on `channel`: stdin closed, or one side of a forwarded
    /// connection shut its writing half.
    Eof { channel: Channel },
    /// Client → node: the terminal's new size.
    Resize(TermSize),
    /// Node → client, always the last frame: the process's exit code (exec),
    /// or why the stream ended badly.
    End {
        exit_code: Option<i32>,
        error: Option<String>,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StreamOpen {
    pub id: String,
    pub namespace: String,
    pub pod: String,
    pub pod_uid: String,
    pub kind: StreamKind,
    /// The client's public key (hex): only it may ack, feed or close this stream.
    pub client_key: String,
    /// The client's sender id, as it signs its messages.
    pub client_id: String,
}

/// What a stream carries.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum StreamKind {
    Logs {
        container: String,
        follow: bool,
        tail: Option<u64>,
        previous: bool,
        since: Option<Since>,
        timestamps: bool,
    },
    Exec {
        container: String,
        command: Vec<String>,
        stdin: bool,
        tty: bool,
        size: Option<TermSize>,
    },
    /// A TCP connection to `port` on the pod's loopback, inside its network
    /// namespace (as kubelet does).
    PortForward { port: u16 },
}
