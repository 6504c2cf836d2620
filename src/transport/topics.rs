//! Topic names under the configurable prefix (default `bramble/v1`).

/// Topic builder for one cluster's prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topics {
    prefix: String,
}

pub const DEFAULT_PREFIX: &str = "bramble/v1";

impl Default for Topics {
    fn default() -> Self {
        Topics::new(DEFAULT_PREFIX)
    }
}

impl Topics {
    pub fn new(prefix: &str) -> Topics {
        Topics {
            prefix: prefix.trim_end_matches('/').to_string(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Client → master: a signed command.
    pub fn cmd(&self, verb: &str) -> String {
        format!("{}/cmd/{verb}", self.prefix)
    }

    pub fn cmd_filter(&self) -> String {
        format!("{}/cmd/+", self.prefix)
    }

    /// Master → client: the signed reply.
    pub fn reply(&self, client_id: &str) -> String {
        format!("{}/reply/{client_id}", self.prefix)
    }

    /// Master → worker: the node's full desired pod set (retained).
    pub fn assign(&self, node: &str) -> String {
        format!("{}/node/{node}/assign", self.prefix)
    }

    /// Worker → master: heartbeat and pod statuses.
    pub fn status(&self, node: &str) -> String {
        format!("{}/node/{node}/status", self.prefix)
    }

    pub fn status_filter(&self) -> String {
        format!("{}/node/+/status", self.prefix)
    }

    /// Retained `true` while the worker is connected; its Last Will sets `false`.
    pub fn online(&self, node: &str) -> String {
        format!("{}/node/{node}/online", self.prefix)
    }

    pub fn online_filter(&self) -> String {
        format!("{}/node/+/online", self.prefix)
    }

    /// To the worker: stream control (open from the master; acks and close from
    /// the client that asked for the stream).
    pub fn stream_in(&self, node: &str, id: &str) -> String {
        format!("{}/node/{node}/stream/{id}/in", self.prefix)
    }

    pub fn stream_in_filter(&self, node: &str) -> String {
        format!("{}/node/{node}/stream/+/in", self.prefix)
    }

    /// From the worker: stream data.
    pub fn stream_out(&self, node: &str, id: &str) -> String {
        format!("{}/node/{node}/stream/{id}/out", self.prefix)
    }

    /// What a client subscribes to before it knows which node will answer.
    pub fn stream_out_any_node(&self, id: &str) -> String {
        format!("{}/node/+/stream/{id}/out", self.prefix)
    }

    /// Node → master: a join request (the node is not trusted yet).
    pub fn join(&self, node: &str) -> String {
        format!("{}/join/{node}", self.prefix)
    }

    pub fn join_filter(&self) -> String {
        format!("{}/join/+", self.prefix)
    }

    /// Master → joining node: the answer.
    pub fn join_reply(&self, node: &str) -> String {
        format!("{}/join/{node}/reply", self.prefix)
    }

    /// The node name in `…/join/<node>`.
    pub fn joining_node<'a>(&self, topic: &'a str) -> Option<&'a str> {
        let rest = topic.strip_prefix(&self.prefix)?.strip_prefix("/join/")?;
        (!rest.is_empty() && !rest.contains('/')).then_some(rest)
    }

    /// Master → every worker: the Service routing table (retained).
    pub fn services(&self) -> String {
        format!("{}/services", self.prefix)
    }

    /// Automation tool → master: a JSON command carrying an API token.
    pub fn api(&self, verb: &str) -> String {
        format!("{}/api/{verb}", self.prefix)
    }

    pub fn api_filter(&self) -> String {
        format!("{}/api/+", self.prefix)
    }

    /// The verb in `…/api/<verb>`.
    pub fn api_verb_of<'a>(&self, topic: &'a str) -> Option<&'a str> {
        topic.strip_prefix(&self.prefix)?.strip_prefix("/api/")
    }

    /// Whether `topic` is under `…/reply/` with no wildcards: the only
    /// topics the master answers JSON commands on.
    pub fn is_reply_topic(&self, topic: &str) -> bool {
        topic
            .strip_prefix(&self.prefix)
            .and_then(|r| r.strip_prefix("/reply/"))
            .is_some_and(|rest| rest.split('/').all(valid_level))
    }

    /// Retained `true` while the master is connected; its Last Will sets
    /// `false` (Home Assistant's availability for what the master reports).
    pub fn master_online(&self) -> String {
        format!("{}/master/online", self.prefix)
    }

    /// Master → anyone (retained JSON): a node's state for dashboards.
    pub fn state_node(&self, node: &str) -> String {
        format!("{}/state/node/{node}", self.prefix)
    }

    /// Master → anyone (retained JSON): a Deployment's replicas.
    pub fn state_deployment(&self, namespace: &str, name: &str) -> String {
        format!("{}/state/deployment/{namespace}/{name}", self.prefix)
    }

    /// Master → anyone (retained JSON): another workload's state; `kind` is
    /// the lower-case kind (`statefulset`, `daemonset`, `job`, `cronjob`).
    pub fn state_workload(&self, kind: &str, namespace: &str, name: &str) -> String {
        format!("{}/state/{kind}/{namespace}/{name}", self.prefix)
    }

    /// Master → anyone (retained JSON): the cluster in one message.
    pub fn state_cluster(&self) -> String {
        format!("{}/state/cluster", self.prefix)
    }

    /// Master → anyone (retained JSON): the most recent Events.
    pub fn state_events(&self) -> String {
        format!("{}/state/events", self.prefix)
    }

    /// Every state topic starts with this.
    pub fn state_prefix(&self) -> String {
        format!("{}/state/", self.prefix)
    }

    /// The node name in `…/node/<node>/…`, if `topic` is one of ours.
    pub fn node_of<'a>(&self, topic: &'a str) -> Option<&'a str> {
        let rest = topic.strip_prefix(&self.prefix)?.strip_prefix("/node/")?;
        rest.split('/').next().filter(|n| !n.is_empty())
    }

    /// The verb in `…/cmd/<verb>`.
    pub fn verb_of<'a>(&self, topic: &'a str) -> Option<&'a str> {
        topic.strip_prefix(&self.prefix)?.strip_prefix("/cmd/")
    }

    /// The stream id in `…/node/<node>/stream/<id>/{in,out}`.
    pub fn stream_id_of<'a>(&self, topic: &'a str) -> Option<&'a str> {
        let rest = topic.strip_prefix(&self.prefix)?.strip_prefix("/node/")?;
        let mut parts = rest.split('/');
        let (_node, stream, id) = (parts.next()?, parts.next()?, parts.next()?);
        (stream == "stream").then_some(id)
    }
}

/// Whether a name can be one topic level: no wildcards, separators or NUL.
pub fn valid_level(name: &str) -> bool {
    !name.is_empty() && !name.contains(['/', '+', '#', '\0'])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_parts() {
        let t = Topics::new("bramble/v1/");
        assert_eq!(t.status("pi1"), "bramble/v1/node/pi1/status");
        assert_eq!(t.node_of("bramble/v1/node/pi1/status"), Some("pi1"));
        assert_eq!(t.node_of("other/node/pi1/status"), None);
        assert_eq!(t.verb_of("bramble/v1/cmd/apply"), Some("apply"));
        assert_eq!(t.stream_id_of(&t.stream_out("pi1", "abc")), Some("abc"));
        assert!(valid_level("pi-1"));
        assert!(!valid_level("a/b"));
        assert!(!valid_level("#"));
        assert_eq!(t.api_verb_of(&t.api("scale")), Some("scale"));
        assert!(t.is_reply_topic("bramble/v1/reply/x"));
        assert!(t.is_reply_topic("bramble/v1/reply/ha/1"));
        assert!(!t.is_reply_topic("bramble/v1/reply/"));
        assert!(!t.is_reply_topic("bramble/v1/reply/+"));
        assert!(!t.is_reply_topic("bramble/v1/node/x/assign"));
    }
}
