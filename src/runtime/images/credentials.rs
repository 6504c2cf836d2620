//! Registry credentials: the docker `config.json` format a
//! `kubernetes.io/dockerconfigjson` Secret carries under `.dockerconfigjson`
//! (and the legacy `kubernetes.io/dockercfg` under `.dockercfg`), and which
//! of them apply to an image, matched the way the kubelet's keyring does
//! (registry host, then the longest matching path prefix first). Pure.

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// One registry's credential.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RegistryAuth {
    /// What it is for, normalised: `host[:port]`, optionally followed by a
    /// repository path prefix (`reg:5000/team`); Docker Hub is `docker.io`.
    pub registry: String,
    pub credential: Credential,
}

#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Credential {
    /// HTTP basic, or exchanged for a bearer token when the registry asks.
    Basic { username: String, password: String },
    /// A registry token sent as is (`registrytoken`).
    Bearer(String),
}

// Never print secrets, even in debug logs.
impl fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.credential {
            Credential::Basic { username, .. } => format!("basic {username}:***"),
            Credential::Bearer(_) => "bearer ***".to_string(),
        };
        write!(f, "RegistryAuth({} {kind})", self.registry)
    }
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credential::Basic { username, .. } => write!(f, "Basic({username}:***)"),
            Credential::Bearer(_) => f.write_str("Bearer(***)"),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum CredentialError {
    #[error("{what}: not a docker config: {reason}")]
    Malformed { what: String, reason: String },
    #[error("{what}: auths.{registry:?}: {reason}")]
    Entry {
        what: String,
        registry: String,
        reason: String,
    },
}

#[derive(Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: Option<BTreeMap<String, AuthEntry>>,
}

#[derive(Deserialize, Default)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    registrytoken: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
}

/// Parses a docker `config.json` (`{"auths": {"reg:5000": {"auth": "…"}}}`).
/// `what` names the source in errors (`secret default/regcred`).
pub fn parse_docker_config(what: &str, bytes: &[u8]) -> Result<Vec<RegistryAuth>, CredentialError> {
    let config: DockerConfig =
        serde_json::from_slice(bytes).map_err(|e| CredentialError::Malformed {
            what: what.to_string(),
            reason: e.to_string(),
        })?;
    let auths = config.auths.ok_or_else(|| CredentialError::Malformed {
        what: what.to_string(),
        reason: "no \"auths\" object".into(),
    })?;
    entries(what, auths)
}

/// Parses the legacy `.dockercfg` format: the `auths` map at the top level.
pub fn parse_dockercfg(what: &str, bytes: &[u8]) -> Result<Vec<RegistryAuth>, CredentialError> {
    let auths: BTreeMap<String, AuthEntry> =
        serde_json::from_slice(bytes).map_err(|e| CredentialError::Malformed {
            what: what.to_string(),
            reason: e.to_string(),
        })?;
    entries(what, auths)
}

fn entries(
    what: &str,
    auths: BTreeMap<String, AuthEntry>,
) -> Result<Vec<RegistryAuth>, CredentialError> {
    let mut out = Vec::new();
    for (key, entry) in auths {
        let fail = |reason: &str| CredentialError::Entry {
            what: what.to_string(),
            registry: key.clone(),
            reason: reason.to_string(),
        };
        let registry = normalize_registry_key(&key);
        if registry.is_empty() {
            return Err(fail("names no registry"));
        }
        let credential = if let Some(token) = entry.registrytoken.filter(|t| !t.is_empty()) {
            Credential::Bearer(token)
        } else if let Some(auth) = entry.auth.filter(|a| !a.is_empty()) {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(auth.trim())
                .map_err(|e| fail(&format!("\"auth\" is not base64: {e}")))?;
            let text =
                String::from_utf8(decoded).map_err(|_| fail("\"auth\" is not UTF-8 text"))?;
            let (username, password) = text
                .split_once(':')
                .ok_or_else(|| fail("\"auth\" is not base64 of user:password"))?;
            Credential::Basic {
                username: username.to_string(),
                password: password.to_string(),
            }
        } else if let (Some(username), Some(password)) = (entry.username, entry.password) {
            Credential::Basic { username, password }
        } else if entry.identitytoken.is_some() {
            return Err(fail(
                "only an \"identitytoken\" (an OAuth refresh token), which Bramble cannot use: give \"auth\" or username and password",
            ));
        } else {
            return Err(fail("no \"auth\", username/password or registrytoken"));
        };
        out.push(RegistryAuth {
            registry,
            credential,
        });
    }
    Ok(out)
}

/// `https://index.docker.io/v1/` → `docker.io`, `http://reg:5000/v2/` →
/// `reg:5000`, `Reg:5000/Team/` → `reg:5000/Team`.
pub fn normalize_registry_key(key: &str) -> String {
    let key = key.trim();
    let key = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let key = key.trim_end_matches('/');
    let (host, path) = key.split_once('/').unwrap_or((key, ""));
    let host = match host.to_ascii_lowercase().as_str() {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            "docker.io".to_string()
        }
        h => h.to_string(),
    };
    // API version suffixes name no repository.
    let path = match path {
        "v1" | "v2" => "",
        p => p,
    };
    if path.is_empty() {
        host
    } else {
        format!("{host}/{path}")
    }
}

/// The credentials that apply to `name` (`registry/repository`, as
/// [`super::ImageRef`] normalises it), most specific first.
pub fn credentials_for<'a>(auths: &'a [RegistryAuth], name: &str) -> Vec<&'a RegistryAuth> {
    let (registry, repository) = name.split_once('/').unwrap_or((name, ""));
    let mut out: Vec<&RegistryAuth> = auths
        .iter()
        .filter(|a| {
            let (host, prefix) = a.registry.split_once('/').unwrap_or((&a.registry, ""));
            host.eq_ignore_ascii_case(registry)
                && (prefix.is_empty()
                    || repository == prefix
                    || repository
                        .strip_prefix(prefix)
                        .is_some_and(|r| r.starts_with('/')))
        })
        .collect();
    // Stable: equally specific entries keep the order they were given in.
    out.sort_by_key(|a| std::cmp::Reverse(a.registry.len()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn parses_dockerconfigjson() {
        let json = format!(
            r#"{{"auths": {{
                "https://index.docker.io/v1/": {{"auth": "{}"}},
                "127.0.0.1:5000": {{"username": "u", "password": "p:q"}},
                "ghcr.io": {{"registrytoken": "tok"}}
            }}}}"#,
            b64("me:s3cr:et")
        );
        let auths = parse_docker_config("secret default/regcred", json.as_bytes()).unwrap();
        assert_eq!(
            auths,
            vec![
                RegistryAuth {
                    registry: "127.0.0.1:5000".into(),
                    credential: Credential::Basic {
                        username: "u".into(),
                        password: "p:q".into()
                    }
                },
                RegistryAuth {
                    registry: "ghcr.io".into(),
                    credential: Credential::Bearer("tok".into())
                },
                RegistryAuth {
                    registry: "docker.io".into(),
                    credential: Credential::Basic {
                        username: "me".into(),
                        password: "s3cr:et".into()
                    }
                },
            ]
        );
        // Secrets never show in debug output.
        let shown = format!("{auths:?}");
        assert!(
            !shown.contains("s3cr") && !shown.contains("tok\""),
            "{shown}"
        );
    }

    #[test]
    fn parses_legacy_dockercfg() {
        let json = format!(r#"{{"reg:5000": {{"auth": "{}"}}}}"#, b64("a:b"));
        let auths = parse_dockercfg("s", json.as_bytes()).unwrap();
        assert_eq!(auths[0].registry, "reg:5000");
    }

    #[test]
    fn bad_configs_name_the_problem() {
        let err = |j: &str| parse_docker_config("secret ns/x", j.as_bytes()).unwrap_err();
        assert!(matches!(err("nope"), CredentialError::Malformed { .. }));
        assert!(err("{}").to_string().contains("no \"auths\""));
        let e = err(r#"{"auths": {"reg:5000": {"auth": "%%%"}}}"#);
        assert!(e.to_string().contains("reg:5000") && e.to_string().contains("base64"));
        let e = err(&format!(
            r#"{{"auths": {{"reg": {{"auth": "{}"}}}}}}"#,
            b64("nocolon")
        ));
        assert!(e.to_string().contains("user:password"), "{e}");
        let e = err(r#"{"auths": {"reg": {"identitytoken": "x"}}}"#);
        assert!(e.to_string().contains("identitytoken"), "{e}");
        let e = err(r#"{"auths": {"reg": {}}}"#);
        assert!(e.to_string().contains("no \"auth\""), "{e}");
    }

    #[test]
    fn registry_keys_normalise() {
        for (key, want) in [
            ("https://index.docker.io/v1/", "docker.io"),
            ("registry-1.docker.io", "docker.io"),
            ("http://reg:5000/v2/", "reg:5000"),
            ("Reg:5000/team/", "reg:5000/team"),
            ("localhost:5000", "localhost:5000"),
        ] {
            assert_eq!(normalize_registry_key(key), want, "{key}");
        }
    }

    #[test]
    fn matching_prefers_the_longest_prefix() {
        let a = |r: &str, u: &str| RegistryAuth {
            registry: r.into(),
            credential: Credential::Basic {
                username: u.into(),
                password: String::new(),
            },
        };
        let auths = vec![
            a("reg:5000", "any"),
            a("reg:5000/team", "team"),
            a("reg:5000/teamx", "other"),
            a("docker.io", "hub"),
        ];
        let users = |name: &str| -> Vec<String> {
            credentials_for(&auths, name)
                .iter()
                .map(|a| match &a.credential {
                    Credential::Basic { username, .. } => username.clone(),
                    Credential::Bearer(_) => "bearer".into(),
                })
                .collect()
        };
        assert_eq!(users("reg:5000/team/app"), vec!["team", "any"]);
        assert_eq!(users("reg:5000/team"), vec!["team", "any"]);
        assert_eq!(users("reg:5000/teamy/app"), vec!["any"]);
        assert_eq!(users("docker.io/library/busybox"), vec!["hub"]);
        assert!(users("reg:5001/team/app").is_empty());
    }
}
