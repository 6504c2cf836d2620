//! Test kit for Services: the `nettest` image (Debian's static busybox with
//! every applet, plus `netserve`, a keep-alive HTTP server, UDP echo server and
//! clients built here as a static binary from `netserve.rs`), a tiny upstream
//! DNS resolver, and helpers to run a client inside a pod and read what it
//! printed.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::json;
use sha2::{Digest, Sha256};

use crate::common::Cluster;

pub const IMAGE: &str = "bramble.local/nettest:latest";

/// Compiles `netserve.rs` into a static binary in `dir` (rustc is there
/// wherever cargo is).
pub fn build_netserve(dir: &Path) -> PathBuf {
    let out = dir.join("netserve");
    if out.exists() {
        return out;
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/netkit/netserve.rs");
    let status = Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into()))
        .args([
            "-O",
            "-C",
            "target-feature=+crt-static",
            "-C",
            "strip=symbols",
        ])
        .args(["--edition", "2021", "-o"])
        .arg(&out)
        .arg(&src)
        .status()
        .expect("rustc runs");
    assert!(status.success(), "building netserve failed");
    out
}

fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

fn layer(netserve: &[u8]) -> Vec<u8> {
    let busybox = std::fs::read("/bin/busybox").expect("Debian's busybox-static");
    let list = Command::new("/bin/busybox")
        .arg("--list")
        .output()
        .expect("busybox --list");
    let mut b = tar::Builder::new(Vec::new());
    let header = |kind: tar::EntryType, mode: u32, size: u64| {
        let mut h = tar::Header::new_ustar();
        h.set_mtime(1_700_000_000);
        h.set_uid(0);
        h.set_gid(0);
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h
    };
    for dir in ["bin/", "etc/", "tmp/", "www/"] {
        let mut h = header(tar::EntryType::Directory, 0o755, 0);
        b.append_data(&mut h, dir, &[][..]).unwrap();
    }
    let mut h = header(tar::EntryType::Regular, 0o755, busybox.len() as u64);
    b.append_data(&mut h, "bin/busybox", &busybox[..]).unwrap();
    let mut h = header(tar::EntryType::Regular, 0o755, netserve.len() as u64);
    b.append_data(&mut h, "bin/netserve", netserve).unwrap();
    for applet in String::from_utf8_lossy(&list.stdout).split_whitespace() {
        if applet == "busybox" {
            continue;
        }
        let mut h = header(tar::EntryType::Symlink, 0o777, 0);
        b.append_link(&mut h, format!("bin/{applet}"), "busybox")
            .unwrap();
    }
    b.into_inner().unwrap()
}

/// Writes the OCI image-layout archive of [`IMAGE`] into `dir`.
pub fn build_archive(dir: &Path) -> PathBuf {
    let netserve = std::fs::read(build_netserve(dir)).unwrap();
    let layer = layer(&netserve);
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        other => other,
    };
    let config = serde_json::to_vec(&json!({
        "architecture": arch,
        "os": "linux",
        "config": {"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [digest(&layer)]},
    }))
    .unwrap();
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": digest(&config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": digest(&layer), "size": layer.len()}],
    }))
    .unwrap();
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest(&manifest), "size": manifest.len(),
            "annotations": {"io.containerd.image.name": IMAGE,
                            "org.opencontainers.image.ref.name": "latest"},
        }],
    }))
    .unwrap();
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    files.insert(
        "oci-layout".into(),
        br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
    );
    files.insert("index.json".into(), index);
    for blob in [config, manifest, layer] {
        let d = digest(&blob);
        files.insert(format!("blobs/sha256/{}", &d[7..]), blob);
    }
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in files {
        let mut h = tar::Header::new_ustar();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, path, &data[..]).unwrap();
    }
    let archive = dir.join("nettest.tar");
    std::fs::write(&archive, b.into_inner().unwrap()).unwrap();
    archive
}

/// Builds and imports [`IMAGE`] into the cluster's node.
pub fn import_image(c: &Cluster) {
    let archive = build_archive(&c.dir);
    c.ok(&["image", "import", archive.to_str().unwrap()]);
}

/// Applies YAML through the CLI; returns (success, stdout + stderr).
pub fn apply(c: &Cluster, name: &str, yaml: &str) -> (bool, String) {
    let path = c.dir.join(name);
    std::fs::write(&path, yaml).unwrap();
    let out = c.bramble(&["apply", "-f", path.to_str().unwrap()]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

pub fn must_apply(c: &Cluster, name: &str, yaml: &str) {
    let (ok, text) = apply(c, name, yaml);
    assert!(ok, "apply {name}: {text}\n{}", c.log_tail());
}

/// A pod's JSON by name.
/// The node's InternalIP as it reports it.
pub fn node_ip(c: &Cluster) -> Ipv4Addr {
    let node = c.json(&["get", "node", &c.node]);
    node["status"]["addresses"]
        .as_array()
        .and_then(|a| a.iter().find(|a| a["type"] == "InternalIP"))
        .and_then(|a| a["address"].as_str())
        .and_then(|a| a.parse().ok())
        .expect("the node's InternalIP")
}

pub fn pod(c: &Cluster, name: &str) -> serde_json::Value {
    c.json(&["get", "pod", name])
}

pub fn pod_ip(c: &Cluster, name: &str) -> Option<Ipv4Addr> {
    pod(c, name)["status"]["podIP"].as_str()?.parse().ok()
}

pub fn service(c: &Cluster, name: &str) -> serde_json::Value {
    c.json(&["get", "service", name])
}

pub fn cluster_ip(c: &Cluster, name: &str) -> Ipv4Addr {
    service(c, name)["spec"]["clusterIP"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// The ready addresses of a Service's Endpoints.
pub fn ready_ips(c: &Cluster, name: &str) -> Vec<String> {
    let out = c.bramble(&["get", "endpoints", name, "-o", "json"]);
    if !out.status.success() {
        return Vec::new();
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let mut ips: Vec<String> = v["subsets"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| s["addresses"].as_array().cloned().unwrap_or_default())
        .filter_map(|a| a["ip"].as_str().map(str::to_string))
        .collect();
    ips.sort();
    ips
}

/// What the pod's container printed so far.
pub fn logs(c: &Cluster, pod: &str) -> String {
    let out = c.bramble(&["logs", pod]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits for a line of the pod's log that `done` accepts; returns the log.
pub fn wait_log(c: &Cluster, pod: &str, what: &str, done: impl Fn(&str) -> bool) -> String {
    let mut text = String::new();
    c.wait_for(what, Duration::from_secs(60), || {
        text = logs(c, pod);
        done(&text)
    });
    text
}

/// `curl` from the host: the body, or `None` on any failure.
pub fn curl(url: &str) -> Option<String> {
    let out = Command::new("curl")
        .args(["-sS", "--fail", "--max-time", "5", "--noproxy", "*", url])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// `dig` against a DNS server: the `+short` answer lines, or the status word
/// (`NXDOMAIN`, `SERVFAIL`) when there is no answer.
pub fn dig(server: SocketAddr, args: &[&str]) -> String {
    let out = Command::new("dig")
        .arg(format!("@{}", server.ip()))
        .args(["-p", &server.port().to_string(), "+time=2", "+tries=2"])
        .args(args)
        .output()
        .expect("dig (Debian's dnsutils) runs");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The answer section of a `dig +short` query.
pub fn dig_short(server: SocketAddr, name: &str, rtype: &str) -> Vec<String> {
    let text = dig(server, &["+short", name, rtype]);
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    lines.sort();
    lines
}

/// The `status:` of a full `dig` answer.
pub fn dig_status(server: SocketAddr, name: &str, rtype: &str) -> String {
    let text = dig(server, &[name, rtype]);
    text.split("status: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap_or("NO ANSWER")
        .to_string()
}

/// A tiny upstream resolver on `addr` (UDP and TCP) for one zone: an A query
/// for `example.org` is answered with `answer`, other names are NXDOMAIN.
pub struct Upstream {
    pub addr: SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

fn upstream_reply(query: &[u8], answer: Ipv4Addr) -> Option<Vec<u8>> {
    use hickory_proto::op::{Message, MessageType, ResponseCode};
    use hickory_proto::rr::rdata::A;
    use hickory_proto::rr::{RData, Record, RecordType};
    let q = Message::from_vec(query).ok()?;
    let mut m = Message::response(q.metadata.id, q.metadata.op_code);
    m.metadata.message_type = MessageType::Response;
    m.metadata.recursion_desired = q.metadata.recursion_desired;
    m.metadata.recursion_available = true;
    m.add_queries(q.queries.iter().cloned());
    let question = q.queries.first()?;
    if !question
        .name()
        .to_ascii()
        .eq_ignore_ascii_case("example.org.")
    {
        m.metadata.response_code = ResponseCode::NXDomain;
    } else if question.query_type() == RecordType::A {
        m.add_answer(Record::from_rdata(
            question.name().clone(),
            60,
            RData::A(A(answer)),
        ));
    }
    m.to_vec().ok()
}

impl Upstream {
    pub fn start(ip: Ipv4Addr, answer: Ipv4Addr) -> Upstream {
        use std::io::{Read, Write};
        use std::sync::atomic::Ordering;
        let addr = SocketAddr::from((ip, 53));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let udp = std::net::UdpSocket::bind(addr).expect("bind the test upstream on :53");
        udp.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let tcp = std::net::TcpListener::bind(addr).unwrap();
        tcp.set_nonblocking(true).unwrap();
        let s1 = stop.clone();
        let t1 = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while !s1.load(Ordering::Relaxed) {
                if let Ok((n, from)) = udp.recv_from(&mut buf)
                    && let Some(r) = upstream_reply(&buf[..n], answer)
                {
                    let _ = udp.send_to(&r, from);
                }
            }
        });
        let s2 = stop.clone();
        let t2 = std::thread::spawn(move || {
            while !s2.load(Ordering::Relaxed) {
                match tcp.accept() {
                    Ok((mut s, _)) => {
                        let _ = s.set_nonblocking(false);
                        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                        let mut len = [0u8; 2];
                        if s.read_exact(&mut len).is_err() {
                            continue;
                        }
                        let mut q = vec![0u8; u16::from_be_bytes(len) as usize];
                        if s.read_exact(&mut q).is_err() {
                            continue;
                        }
                        if let Some(r) = upstream_reply(&q, answer) {
                            let _ = s.write_all(&(r.len() as u16).to_be_bytes());
                            let _ = s.write_all(&r);
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        });
        Upstream {
            addr,
            stop,
            threads: vec![t1, t2],
        }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
