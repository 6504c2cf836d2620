//! Configuration on disk shared by the roles and the CLI: the client config
//! file, the layout of a data directory, and the per-data-dir run directory.
//!
//! Must not touch: the store or MQTT; this is paths and small files.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::transport::{BrokerConfig, MqttVersion};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Parse { path: PathBuf, reason: String },
    #[error(
        "no client config at {0} (start a cluster with `bramble up`, or pass --config / set BRAMBLE_CONFIG)"
    )]
    Missing(PathBuf),
    #[error("cannot tell where the home directory is: set HOME or BRAMBLE_CONFIG")]
    NoHome,
}

/// What the CLI needs to talk to a cluster: `~/.config/bramble/config.toml`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientConfig {
    /// `mqtt[s]://[user:pass@]host:port` of the cluster's broker.
    pub broker: String,
    /// The CA file a TLS broker's certificate must chain to (default: the
    /// system's roots).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker_ca: Option<PathBuf>,
    /// `"3.1.1"` (default) or `"5"`.
    #[serde(default, skip_serializing_if = "is_default_version")]
    pub mqtt_version: MqttVersion,
    #[serde(default = "default_prefix")]
    pub topic_prefix: String,
    /// The admin key the CLI signs with.
    pub admin_key: PathBuf,
    /// The master's public key (hex): replies signed by anything else are dropped.
    pub master_key: String,
    /// The local data directory of a one-machine cluster (`bramble up`), where
    /// `bramble image import` puts images. Absent for remote clusters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
}

fn is_default_version(v: &MqttVersion) -> bool {
    *v == MqttVersion::default()
}

fn default_prefix() -> String {
    crate::transport::topics::DEFAULT_PREFIX.to_string()
}

/// `--config`, else `$BRAMBLE_CONFIG`, else `~/.config/bramble/config.toml`.
pub fn client_config_path(explicit: Option<&Path>) -> Result<PathBuf, ConfigError> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os("BRAMBLE_CONFIG").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    let base = match std::env::var_os("XDG_CONFIG_HOME").filter(|p| !p.is_empty()) {
        Some(x) => PathBuf::from(x),
        None => PathBuf::from(std::env::var_os("HOME").ok_or(ConfigError::NoHome)?).join(".config"),
    };
    Ok(base.join("bramble").join("config.toml"))
}

impl ClientConfig {
    pub fn load(path: &Path) -> Result<ClientConfig, ConfigError> {
        let text = match fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ConfigError::Missing(path.to_path_buf()));
            }
            Err(source) => {
                return Err(ConfigError::Io {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
    }

    /// Written 0600: the broker URL may carry a password.
    pub fn save(&self, path: &Path) -> Result<(), ConfigError> {
        use std::os::unix::fs::PermissionsExt;
        let text = toml::to_string(self).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        write_atomic(path, text.as_bytes())?;
        fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(|source| {
            ConfigError::Io {
                path: path.to_path_buf(),
                source,
            }
        })
    }

    /// The broker as the MQTT client wants it.
    pub fn broker_config(&self) -> BrokerConfig {
        BrokerConfig {
            url: self.broker.clone(),
            ca_file: self.broker_ca.clone(),
            version: self.mqtt_version,
        }
    }
}

/// Writes a small file through a temp file and a rename, so readers never see
/// half of it.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ConfigError> {
    let io = |source| ConfigError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(io)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = fs::File::create(&tmp).map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)?;
    fs::rename(&tmp, path).map_err(io)
}

/// A worker's settings file: `/etc/bramble/worker.toml` on an installed
/// node (`bramble install worker`), or the file a flashed Pi's first boot
/// finds (`images/`). `bramble worker --config FILE` reads it; flags given on
/// the command line win over it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerFile {
    /// `mqtt[s]://[user:pass@]host[:port]` of the cluster's broker.
    pub broker: String,
    /// CA file for an `mqtts://` broker (default: the system's roots).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker_ca: Option<PathBuf>,
    /// `"3.1.1"` (default) or `"5"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mqtt_version: Option<MqttVersion>,
    /// `BRAMBLE1.<master-key-fingerprint>.<secret>`: needed to join the first
    /// time; once the node is registered it is not used again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join_token: Option<String>,
    /// The node's name (default: the hostname, lower-cased).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// Labels the node registers with (`kubernetes.io/arch` and friends are
    /// added by the node itself).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Default `/var/lib/bramble`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// The address the node reports (default: the default route's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_ip: Option<std::net::Ipv4Addr>,
    /// Registries (`HOST[:PORT]`) pulled from over plain HTTP.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub insecure_registries: Vec<String>,
    /// A PEM file of CAs trusted for HTTPS registries besides the system's
    /// (a home-lab registry's own CA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry_ca: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic_prefix: Option<String>,
}

/// A master's settings file: `/etc/bramble/master.toml` (`bramble install
/// master`). `bramble master --config FILE` reads it; flags win over it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MasterFile {
    /// Where the embedded broker listens (default `0.0.0.0:1883`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<std::net::SocketAddr>,
    /// An external broker instead of the embedded one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker: Option<String>,
    /// CA file for an `mqtts://` broker (default: the system's roots).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker_ca: Option<PathBuf>,
    /// The master's own MQTT version, `"3.1.1"` (default) or `"5"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mqtt_version: Option<MqttVersion>,
    /// Default `/var/lib/bramble`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_cidr: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_cidr: Option<String>,
    /// Also run a worker on the master's own machine.
    #[serde(default)]
    pub with_worker: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic_prefix: Option<String>,
    /// The registry mirror's listen address (`ADDR:PORT` or `off`;
    /// default `0.0.0.0:5050`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry_mirror_listen: Option<String>,
    /// The registry mirror's address as workers reach it (`HOST:PORT`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry_mirror_advertise: Option<String>,
}

/// Reads a TOML settings file, naming the file (and the line) on error.
pub fn load_toml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = fs::read_to_string(path).map_err(|source| ConfigError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Where one node's files live. The data directory persists (SD card); the run
/// directory is on tmpfs and goes away at reboot, which is where runtime state
/// that is meaningless after a reboot belongs.
#[derive(Clone, Debug)]
pub struct Layout {
    pub data_dir: PathBuf,
    pub run_dir: PathBuf,
    /// Short id derived from the data dir, naming this node's cgroups and run
    /// directory so that several data dirs (tests) never collide.
    pub id: String,
}

impl Layout {
    pub fn new(data_dir: &Path) -> Result<Layout, ConfigError> {
        fs::create_dir_all(data_dir).map_err(|source| ConfigError::Io {
            path: data_dir.to_path_buf(),
            source,
        })?;
        let data_dir = fs::canonicalize(data_dir).map_err(|source| ConfigError::Io {
            path: data_dir.to_path_buf(),
            source,
        })?;
        let id = hex::encode(&Sha256::digest(data_dir.as_os_str().as_encoded_bytes())[..4]);
        let run_dir = PathBuf::from("/run/bramble").join(&id);
        Ok(Layout {
            data_dir,
            run_dir,
            id,
        })
    }

    pub fn master_db(&self) -> PathBuf {
        self.data_dir.join("master.redb")
    }
    pub fn worker_db(&self) -> PathBuf {
        self.data_dir.join("worker.redb")
    }
    pub fn cluster_key(&self) -> PathBuf {
        self.data_dir.join("keys/cluster.key")
    }
    pub fn admin_key(&self) -> PathBuf {
        self.data_dir.join("keys/admin.key")
    }
    pub fn node_key(&self) -> PathBuf {
        self.data_dir.join("keys/node.key")
    }
    pub fn images(&self) -> PathBuf {
        self.data_dir.join("images")
    }
    pub fn containers(&self) -> PathBuf {
        self.data_dir.join("containers")
    }
    pub fn logs(&self) -> PathBuf {
        self.data_dir.join("logs")
    }
    pub fn container_state(&self) -> PathBuf {
        self.run_dir.join("containers")
    }
    pub fn netns_dir(&self) -> PathBuf {
        self.run_dir.join("netns")
    }
    pub fn pid_file(&self) -> PathBuf {
        self.run_dir.join("agent.pid")
    }
    /// The cgroup parent of every container of this node.
    pub fn cgroup_prefix(&self) -> String {
        format!("bramble/{}", self.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_config_round_trip() {
        let dir = std::env::temp_dir().join(format!("bramble-cfg-{}", std::process::id()));
        let path = dir.join("config.toml");
        assert!(matches!(
            ClientConfig::load(&path),
            Err(ConfigError::Missing(_))
        ));
        let c = ClientConfig {
            broker: "mqtts://pi:secret@127.0.0.1:8883".into(),
            broker_ca: Some(dir.join("ca.pem")),
            mqtt_version: MqttVersion::V5,
            topic_prefix: "bramble/v1".into(),
            admin_key: dir.join("admin.key"),
            master_key: "ab".repeat(32),
            data_dir: Some(dir.clone()),
        };
        c.save(&path).unwrap();
        assert_eq!(ClientConfig::load(&path).unwrap(), c);
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the URL may hold a password");
        // Files written before TLS and MQTT 5 read as 3.1.1 without a CA.
        fs::write(
            &path,
            "broker = \"mqtt://h:1883\"\nadmin_key = \"/k\"\nmaster_key = \"ab\"\n",
        )
        .unwrap();
        let old = ClientConfig::load(&path).unwrap();
        assert_eq!(old.broker_config(), BrokerConfig::new("mqtt://h:1883"));
        fs::write(&path, "broker = 3").unwrap();
        let err = ClientConfig::load(&path).unwrap_err().to_string();
        assert!(err.contains("config.toml"), "{err}");
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn settings_files_parse_and_name_unknown_fields() {
        let dir = std::env::temp_dir().join(format!("bramble-cfgfiles-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("worker.toml");
        fs::write(
            &path,
            "broker = \"mqtts://192.168.1.10\"\nbroker_ca = \"/etc/bramble/ca.pem\"\nmqtt_version = 5\njoin_token = \"BRAMBLE1.x.y\"\nregistry_ca = \"/etc/bramble/registry-ca.pem\"\n[labels]\nroom = \"attic\"\n",
        )
        .unwrap();
        let w: WorkerFile = load_toml(&path).unwrap();
        assert_eq!(w.broker, "mqtts://192.168.1.10");
        assert_eq!(
            w.broker_ca.as_deref(),
            Some(Path::new("/etc/bramble/ca.pem"))
        );
        assert_eq!(w.mqtt_version, Some(MqttVersion::V5));
        assert_eq!(
            w.registry_ca.as_deref(),
            Some(Path::new("/etc/bramble/registry-ca.pem"))
        );
        assert_eq!(w.labels["room"], "attic");
        fs::write(&path, "broker = \"x\"\nbrokr = \"y\"\n").unwrap();
        let err = load_toml::<WorkerFile>(&path).unwrap_err().to_string();
        assert!(
            err.contains("worker.toml") && err.contains("brokr"),
            "{err}"
        );
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn layout_ids_differ_per_data_dir() {
        let base = std::env::temp_dir().join(format!("bramble-layout-{}", std::process::id()));
        let a = Layout::new(&base.join("a")).unwrap();
        let b = Layout::new(&base.join("b")).unwrap();
        assert_ne!(a.id, b.id);
        assert_eq!(a.id, Layout::new(&base.join("a")).unwrap().id);
        fs::remove_dir_all(base).unwrap();
    }
}
