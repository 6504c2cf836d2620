//! Debian's Mosquitto as the external broker: a test CA and a server
//! certificate made with the `openssl` CLI, a password file made with
//! `mosquitto_passwd`, one TLS listener (MQTT 3.1.1 and 5) on an ephemeral
//! port, and the process killed (and its files removed) on drop. `restart`
//! kills it and starts it again on the same port, as a broker crash would.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const USER: &str = "pi";
/// With the characters a URL needs encoded, to check they are decoded.
pub const PASSWORD: &str = "s3cret@pi:x";
/// `PASSWORD` percent-encoded for a URL.
pub const PASSWORD_IN_URL: &str = "s3cret%40pi%3Ax";

fn run(dir: &Path, program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{program} runs (scripts/deps installs it): {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a server certificate it signed for `ips`, and an unrelated CA (the
/// wrong one), all in `dir`.
pub struct Pki {
    pub ca: PathBuf,
    pub other_ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Pki {
    pub fn make(dir: &Path, ips: &[IpAddr]) -> Pki {
        std::fs::create_dir_all(dir).unwrap();
        for name in ["ca", "other-ca"] {
            run(
                dir,
                "openssl",
                &[
                    "req",
                    "-x509",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:prime256v1",
                    "-nodes",
                    "-keyout",
                    &format!("{name}.key"),
                    "-out",
                    &format!("{name}.pem"),
                    "-days",
                    "2",
                    "-subj",
                    &format!("/CN=Bramble test {name}"),
                    "-addext",
                    "basicConstraints=critical,CA:TRUE",
                    "-addext",
                    "keyUsage=critical,keyCertSign,cRLSign",
                ],
            );
        }
        let sans: Vec<String> = ips.iter().map(|ip| format!("IP:{ip}")).collect();
        std::fs::write(
            dir.join("server.ext"),
            format!(
                "subjectAltName={}\nbasicConstraints=critical,CA:FALSE\n\
                 keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
                sans.join(",")
            ),
        )
        .unwrap();
        run(
            dir,
            "openssl",
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                "/CN=broker",
            ],
        );
        run(
            dir,
            "openssl",
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "server.pem",
                "-days",
                "2",
                "-extfile",
                "server.ext",
            ],
        );
        Pki {
            ca: dir.join("ca.pem"),
            other_ca: dir.join("other-ca.pem"),
            cert: dir.join("server.pem"),
            key: dir.join("server.key"),
        }
    }
}

/// A Mosquitto with TLS and password authentication on `ip:port`.
pub struct Mosquitto {
    pub ip: IpAddr,
    pub port: u16,
    pub pki: Pki,
    pub dir: PathBuf,
    conf: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Mosquitto {
    /// Everything under `dir` (made here, removed on drop).
    pub fn start(dir: &Path, ip: IpAddr) -> Mosquitto {
        let port = std::net::TcpListener::bind((ip, 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let pki = Pki::make(dir, &[ip]);
        run(
            dir,
            "mosquitto_passwd",
            &["-b", "-c", "passwd", USER, PASSWORD],
        );
        let conf = dir.join("mosquitto.conf");
        // `user root`: started as root, Mosquitto would otherwise become the
        // `mosquitto` user and could not read the key in the test's dir.
        std::fs::write(
            &conf,
            format!(
                "user root\npersistence false\nallow_anonymous false\n\
                 password_file {}\nlistener {port} {ip}\ncertfile {}\nkeyfile {}\n",
                dir.join("passwd").display(),
                pki.cert.display(),
                pki.key.display(),
            ),
        )
        .unwrap();
        let mut m = Mosquitto {
            ip,
            port,
            pki,
            dir: dir.to_path_buf(),
            conf,
            log: dir.join("mosquitto.log"),
            child: None,
        };
        m.spawn();
        m
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&self.conf)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("mosquitto is installed (scripts/deps)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect((self.ip, self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "mosquitto did not start: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `mqtts://pi:…@ip:port` with the right password.
    pub fn url(&self) -> String {
        self.url_as(USER, PASSWORD_IN_URL)
    }

    pub fn url_as(&self, user: &str, password: &str) -> String {
        let host = match self.ip {
            IpAddr::V6(ip) => format!("[{ip}]"),
            IpAddr::V4(ip) => ip.to_string(),
        };
        format!("mqtts://{user}:{password}@{host}:{}", self.port)
    }

    /// `kill -9`: retained messages, sessions and wills are gone
    /// (persistence is off), as after a crash.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Killed and started again on the same port.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
