//! Naming a flashed Pi: one prepared image goes onto many cards, so the node
//! name can be a rule (`pi-{serial}`) the Pi's first boot turns into a name
//! from its own hardware. `bramble install first-boot` does that once: it
//! writes the name into `/etc/bramble/worker.toml` and makes it the hostname.
//!
//! [`expand`] is pure; [`Facts::read`] and [`first_boot`] read and write files
//! under a root directory (`/` on the Pi).

use std::path::{Path, PathBuf};

use super::{InstallError, io_err, under, write_if_changed};
use crate::config::{WorkerFile, load_toml};

/// The placeholders a rule may use.
pub const PLACEHOLDERS: &[&str] = &["serial", "mac", "hostname"];

/// What a rule is expanded from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Facts {
    /// The board's serial number (hex), as the firmware reports it.
    pub serial: Option<String>,
    /// The wired (else first) network interface's MAC address.
    pub mac: Option<String>,
    pub hostname: Option<String>,
}

/// The last `n` hex digits of `s`, lower-cased (serials are zero-padded to 16
/// digits; the unique part is at the end).
fn tail_hex(s: &str, n: usize) -> String {
    let hex: Vec<char> = s
        .chars()
        .filter(char::is_ascii_hexdigit)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    hex[hex.len().saturating_sub(n)..].iter().collect()
}

/// Expands `rule`: `{serial}` is the last 8 hex digits of the board serial,
/// `{mac}` the last 6 of the MAC address, `{hostname}` the hostname; other
/// characters are kept. The result must be a DNS label (a valid node name
/// and hostname).
pub fn expand(rule: &str, facts: &Facts) -> Result<String, InstallError> {
    let bad = |reason: String| InstallError::BadRule {
        rule: rule.to_string(),
        reason,
    };
    let mut out = String::new();
    let mut rest = rule;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let close = rest[open..]
            .find('}')
            .ok_or_else(|| bad("a `{` without its `}`".into()))?;
        let key = &rest[open + 1..open + close];
        let missing = |what: &str| bad(format!("this machine reports no {what}"));
        let value = match key {
            "serial" => tail_hex(
                facts
                    .serial
                    .as_deref()
                    .ok_or_else(|| missing("serial number"))?,
                8,
            ),
            "mac" => tail_hex(
                facts.mac.as_deref().ok_or_else(|| missing("MAC address"))?,
                6,
            ),
            "hostname" => facts.hostname.clone().ok_or_else(|| missing("hostname"))?,
            other => {
                return Err(bad(format!(
                    "unknown placeholder {{{other}}}; known: {}",
                    PLACEHOLDERS
                        .iter()
                        .map(|p| format!("{{{p}}}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        };
        out.push_str(&value);
        rest = &rest[open + close + 1..];
    }
    if rest.contains('}') {
        return Err(bad("a `}` without its `{`".into()));
    }
    out.push_str(rest);
    let name = out.to_ascii_lowercase();
    let errs = crate::api::validate::dns1123_label_errors(&name);
    if !errs.is_empty() {
        return Err(bad(format!("gives {name:?}, which {}", errs.join("; "))));
    }
    Ok(name)
}

/// Checks a rule before it is written onto an image, with made-up facts.
pub fn check_rule(rule: &str) -> Result<(), InstallError> {
    let sample = Facts {
        serial: Some("10000000abcdef12".into()),
        mac: Some("dc:a6:32:01:02:03".into()),
        hostname: Some("raspberrypi".into()),
    };
    expand(rule, &sample).map(drop)
}

impl Facts {
    /// Reads the facts of the machine whose root is `root`: the serial from
    /// the device tree (else `/proc/cpuinfo`), the MAC of `eth0`/`end0` (else
    /// of the first interface that has one), the hostname from `/etc/hostname`.
    pub fn read(root: &Path) -> Facts {
        let read = |p: &str| std::fs::read_to_string(under(root, p)).ok();
        let clean = |s: String| {
            let s = s
                .trim_matches(|c: char| c == '\0' || c.is_whitespace())
                .to_string();
            (!s.is_empty()).then_some(s)
        };
        let serial = read("/sys/firmware/devicetree/base/serial-number")
            .and_then(clean)
            .or_else(|| {
                read("/proc/cpuinfo")?.lines().find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    (k.trim() == "Serial").then(|| v.trim().to_string())
                })
            })
            .filter(|s| s.chars().any(|c| c != '0'));
        let mac_of = |iface: &str| {
            read(&format!("/sys/class/net/{iface}/address"))
                .and_then(clean)
                .filter(|m| m != "00:00:00:00:00:00")
        };
        let mac = mac_of("eth0").or_else(|| mac_of("end0")).or_else(|| {
            let mut names: Vec<String> = std::fs::read_dir(under(root, "/sys/class/net"))
                .ok()?
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n != "lo")
                .collect();
            names.sort();
            names.iter().find_map(|n| mac_of(n))
        });
        let hostname = read("/etc/hostname").and_then(clean);
        Facts {
            serial,
            mac,
            hostname,
        }
    }
}

/// Marks a first boot done, so later boots (cloud-init's `bootcmd` runs on
/// every boot) leave the name and hostname alone.
pub const DONE_MARKER: &str = "/etc/bramble/first-boot.done";

/// What [`first_boot`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FirstBoot {
    AlreadyDone,
    /// The node's name (set as hostname), if it has one.
    Named(Option<String>),
}

/// The first boot's step, under `root`: names the node by `rule` unless the
/// worker's settings already name it, makes the name the hostname
/// (`/etc/hostname`, the `127.0.1.1` line of `/etc/hosts` and, when `root` is
/// `/`, the running hostname), then marks itself done.
pub fn first_boot(root: &Path, rule: Option<&str>) -> Result<FirstBoot, InstallError> {
    let done = under(root, DONE_MARKER);
    if done.exists() {
        return Ok(FirstBoot::AlreadyDone);
    }
    let config_path = under(root, &super::Role::Worker.config_path());
    let mut file: WorkerFile = load_toml(&config_path)?;
    if file.node_name.is_none()
        && let Some(rule) = rule
    {
        let name = expand(rule, &Facts::read(root))?;
        file.node_name = Some(name);
        let text = toml::to_string(&file).map_err(|e| InstallError::BadBootFile {
            path: config_path.clone(),
            reason: e.to_string(),
        })?;
        write_if_changed(&config_path, text.as_bytes(), Some(0o600))?;
    }
    if let Some(name) = &file.node_name {
        set_hostname(root, name)?;
    }
    write_if_changed(&done, b"", Some(0o644))?;
    Ok(FirstBoot::Named(file.node_name))
}

fn set_hostname(root: &Path, name: &str) -> Result<(), InstallError> {
    let old = std::fs::read_to_string(under(root, "/etc/hostname")).unwrap_or_default();
    let old = old.trim();
    write_if_changed(
        &under(root, "/etc/hostname"),
        format!("{name}\n").as_bytes(),
        Some(0o644),
    )?;
    let hosts_path: PathBuf = under(root, "/etc/hosts");
    let hosts = match std::fs::read_to_string(&hosts_path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(io_err(&hosts_path)(e)),
    };
    write_if_changed(
        &hosts_path,
        edit_hosts(&hosts, old, name).as_bytes(),
        Some(0o644),
    )?;
    if root == Path::new("/") {
        nix::unistd::sethostname(name).map_err(|e| io_err(Path::new("sethostname"))(e.into()))?;
    }
    Ok(())
}

/// `/etc/hosts` with `127.0.1.1` naming `name` (Debian's convention for the
/// machine's own name), replacing `old` there.
pub fn edit_hosts(hosts: &str, old: &str, name: &str) -> String {
    let mut found = false;
    let mut lines: Vec<String> = hosts
        .lines()
        .map(|l| {
            let mut words = l.split_whitespace();
            if words.next() == Some("127.0.1.1") {
                found = true;
                let rest: Vec<&str> = words.filter(|w| *w != old && *w != name).collect();
                let mut line = format!("127.0.1.1\t{name}");
                for w in rest {
                    line.push(' ');
                    line.push_str(w);
                }
                line
            } else {
                l.to_string()
            }
        })
        .collect();
    if !found {
        lines.push(format!("127.0.1.1\t{name}"));
    }
    let mut out = lines.join("\n");
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> Facts {
        Facts {
            serial: Some("10000000ABCDEF12".into()),
            mac: Some("dc:a6:32:0a:0b:0c".into()),
            hostname: Some("RaspberryPi".into()),
        }
    }

    #[test]
    fn rules_expand_from_facts() {
        assert_eq!(expand("pi-{serial}", &facts()).unwrap(), "pi-abcdef12");
        assert_eq!(expand("node-{mac}", &facts()).unwrap(), "node-0a0b0c");
        assert_eq!(expand("{hostname}", &facts()).unwrap(), "raspberrypi");
        assert_eq!(expand("attic", &facts()).unwrap(), "attic");
    }

    #[test]
    fn bad_rules_are_named() {
        for (rule, want) in [
            ("pi-{cpu}", "unknown placeholder {cpu}"),
            ("pi-{serial", "without its `}`"),
            ("pi-serial}", "without its `{`"),
            ("pi_{serial}", "pi_abcdef12"),
            ("-{serial}", "-abcdef12"),
        ] {
            let err = expand(rule, &facts()).unwrap_err().to_string();
            assert!(err.contains(want) && err.contains(rule), "{rule}: {err}");
        }
        let err = expand("pi-{serial}", &Facts::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("no serial number"), "{err}");
        assert!(check_rule("pi-{serial}").is_ok());
        assert!(check_rule("{nope}").is_err());
    }

    #[test]
    fn facts_come_from_the_device_tree_cpuinfo_and_sysfs() {
        let root = tempfile::tempdir().unwrap();
        let w = |p: &str, s: &str| {
            let path = under(root.path(), p);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, s).unwrap();
        };
        w(
            "/proc/cpuinfo",
            "processor\t: 0\nHardware\t: BCM2835\nSerial\t\t: 100000001234abcd\nModel\t\t: Raspberry Pi 4\n",
        );
        w("/sys/class/net/wlan0/address", "dc:a6:32:00:00:02\n");
        w("/sys/class/net/lo/address", "00:00:00:00:00:00\n");
        w("/etc/hostname", "raspberrypi\n");
        let f = Facts::read(root.path());
        assert_eq!(f.serial.as_deref(), Some("100000001234abcd"));
        assert_eq!(f.mac.as_deref(), Some("dc:a6:32:00:00:02"));
        assert_eq!(f.hostname.as_deref(), Some("raspberrypi"));
        // The device tree wins over cpuinfo; eth0 over other interfaces.
        w(
            "/sys/firmware/devicetree/base/serial-number",
            "00000000cafe0001\0",
        );
        w("/sys/class/net/eth0/address", "dc:a6:32:00:00:01\n");
        let f = Facts::read(root.path());
        assert_eq!(f.serial.as_deref(), Some("00000000cafe0001"));
        assert_eq!(f.mac.as_deref(), Some("dc:a6:32:00:00:01"));
    }

    #[test]
    fn hosts_name_the_machine_once() {
        let hosts =
            "127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost\n\n127.0.1.1\t\traspberrypi\n";
        let out = edit_hosts(hosts, "raspberrypi", "pi-1");
        assert_eq!(
            out,
            "127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost\n\n127.0.1.1\tpi-1\n"
        );
        assert_eq!(edit_hosts(&out, "pi-1", "pi-1"), out);
        assert_eq!(
            edit_hosts("127.0.0.1 localhost\n", "x", "pi-1"),
            "127.0.0.1 localhost\n127.0.1.1\tpi-1\n"
        );
    }

    #[test]
    fn first_boot_names_once() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        let w = |p: &str, s: &str| {
            let path = under(r, p);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, s).unwrap();
        };
        w(
            "/etc/bramble/worker.toml",
            "broker = \"mqtt://10.0.0.1:1883\"\njoin_token = \"t\"\n[labels]\nroom = \"attic\"\n",
        );
        w("/etc/hostname", "raspberrypi\n");
        w(
            "/etc/hosts",
            "127.0.0.1\tlocalhost\n127.0.1.1\traspberrypi\n",
        );
        w("/proc/cpuinfo", "Serial\t\t: 10000000deadbeef\n");
        let got = first_boot(r, Some("pi-{serial}")).unwrap();
        assert_eq!(got, FirstBoot::Named(Some("pi-deadbeef".into())));
        let file: WorkerFile = load_toml(&under(r, "/etc/bramble/worker.toml")).unwrap();
        assert_eq!(file.node_name.as_deref(), Some("pi-deadbeef"));
        assert_eq!(file.labels["room"], "attic");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(under(r, "/etc/bramble/worker.toml"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(
            std::fs::read_to_string(under(r, "/etc/hostname")).unwrap(),
            "pi-deadbeef\n"
        );
        assert!(
            std::fs::read_to_string(under(r, "/etc/hosts"))
                .unwrap()
                .contains("127.0.1.1\tpi-deadbeef\n")
        );
        // Later boots change nothing, even if the user renamed the machine.
        w("/etc/hostname", "renamed\n");
        assert_eq!(
            first_boot(r, Some("pi-{serial}")).unwrap(),
            FirstBoot::AlreadyDone
        );
        assert_eq!(
            std::fs::read_to_string(under(r, "/etc/hostname")).unwrap(),
            "renamed\n"
        );
    }
}
