//! Interactive streams end to end, on one `bramble up --demo` cluster: `exec`
//! (output, exit codes, stdin through `cat` for flow control and order, a
//! terminal that follows the window size, a missing container, a client
//! killed mid-stream), `port-forward` (two connections at once) and `logs`
//! (`--previous`, `--since`, `--timestamps`, `-f` until the pod is deleted,
//! kubectl's container errors).

mod common;

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{BIN, Cluster, ClusterOptions, free_port};

const DEMO: &str = "app=demo";

/// A child process killed (and reaped) when the test ends, however it ends.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn cli(c: &Cluster, args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args).env("BRAMBLE_CONFIG", &c.config);
    cmd
}

fn wait_child(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// Pids whose command line is exactly `argv`.
fn pids_running(argv: &[&str]) -> Vec<i32> {
    let want: Vec<u8> = argv
        .iter()
        .flat_map(|a| [a.as_bytes(), b"\0"].concat())
        .collect();
    common::entries(std::path::Path::new("/proc"))
        .into_iter()
        .filter_map(|p| {
            let pid: i32 = p.file_name()?.to_str()?.parse().ok()?;
            (std::fs::read(p.join("cmdline")).ok()? == want).then_some(pid)
        })
        .collect()
}

/// `pid state comm` of each child of `pid`, for failure messages.
fn ps_children(pid: i32) -> String {
    common::entries(std::path::Path::new("/proc"))
        .into_iter()
        .filter_map(|p| std::fs::read_to_string(p.join("stat")).ok())
        .filter(|stat| {
            let rest = &stat[stat.rfind(')').map_or(0, |i| i + 1)..];
            rest.split_whitespace().nth(1) == Some(pid.to_string().as_str())
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Zombie children of `pid`.
fn zombies_of(pid: i32) -> usize {
    zombie_stats(pid).len()
}

fn zombie_stats(pid: i32) -> Vec<String> {
    common::entries(std::path::Path::new("/proc"))
        .into_iter()
        .filter_map(|p| std::fs::read_to_string(p.join("stat")).ok())
        .filter(|stat| {
            let rest = &stat[stat.rfind(')').map_or(0, |i| i + 1)..];
            let f: Vec<&str> = rest.split_whitespace().collect();
            f.first() == Some(&"Z") && f.get(1) == Some(&pid.to_string().as_str())
        })
        .collect()
}

fn exec_basics(c: &Cluster, pod: &str) {
    let out = c.bramble(&["exec", pod, "--", "echo", "hi"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hi\n");

    let out = c.bramble(&[
        "exec",
        pod,
        "--",
        "sh",
        "-c",
        "echo out; echo err >&2; exit 3",
    ]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("err\n"), "{err}");
    assert!(err.contains("command terminated with exit code 3"), "{err}");

    let out = c.bramble(&["exec", pod, "-c", "nope", "--", "true"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("container nope is not valid for pod {pod}")),
        "{err}"
    );
    let out = c.bramble(&["exec", "no-such-pod", "--", "true"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("pods \"no-such-pod\" not found"));
    let out = c.bramble(&["exec", pod, "--", "no-such-command"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no-such-command"),
        "{out:?}"
    );
}

/// A few MB through `cat`: every byte back, in order, though the window
/// lets only a few frames travel at a time each way.
fn exec_stdin_through_cat(c: &Cluster, pod: &str) {
    let input: Vec<u8> = (0..2_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let mut child = Reaped(
        cli(c, &["exec", "-i", pod, "--", "cat"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut stdin = child.0.stdin.take().unwrap();
    let feed = input.clone();
    let writer = std::thread::spawn(move || {
        stdin.write_all(&feed).unwrap();
    });
    let mut stdout = child.0.stdout.take().unwrap();
    let mut output = Vec::new();
    stdout.read_to_end(&mut output).unwrap();
    writer.join().unwrap();
    let status = wait_child(&mut child.0, Duration::from_secs(30)).expect("exec -i exits");
    assert!(status.success(), "{status:?}");
    assert_eq!(output.len(), input.len());
    assert!(output == input, "cat gave back the same bytes in order");
}

/// `exec -it`: the CLI on a terminal of its own (a pty the test holds), raw;
/// `stty size` inside follows when the test resizes that terminal.
fn exec_tty(c: &Cluster, pod: &str) {
    let size = |rows, cols| nix::pty::Winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = nix::pty::openpty(Some(&size(40, 100)), None).unwrap();
    let slave = pty.slave;
    let master: OwnedFd = pty.master;
    let mut cmd = cli(c, &["exec", "-it", pod, "--", "sh"]);
    cmd.stdin(slave.try_clone().unwrap())
        .stdout(slave.try_clone().unwrap())
        .stderr(slave.try_clone().unwrap());
    // SAFETY: runs in the forked child before exec: setsid and one ioctl,
    // both async-signal-safe, to make the pty the CLI's controlling
    // terminal (so that it gets SIGWINCH like under a real terminal).
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = Reaped(cmd.spawn().unwrap());
    drop(slave);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut reader = std::fs::File::from(master.try_clone().unwrap());
    let sink = seen.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
    let mut writer = std::fs::File::from(master.try_clone().unwrap());
    let text = || String::from_utf8_lossy(&seen.lock().unwrap()).into_owned();
    let until = |what: &str, writer: &mut std::fs::File, input: &str| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if text().contains(what) {
                return;
            }
            writer.write_all(input.as_bytes()).unwrap();
            std::thread::sleep(Duration::from_millis(500));
        }
        panic!(
            "no {what:?} on the terminal: {:?}\n{}",
            text(),
            c.log_tail()
        );
    };
    until("40 100", &mut writer, "stty size\n");
    // The kernel sends SIGWINCH to the CLI, which sends the new size on.
    let bigger = size(50, 132);
    // SAFETY: TIOCSWINSZ reads one winsize from a live local.
    assert_eq!(
        unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &bigger) },
        0
    );
    until("50 132", &mut writer, "stty size\n");
    // `tty` names the container's own pty; the shell's exit is the CLI's.
    until("/dev/pts/", &mut writer, "tty\n");
    writer.write_all(b"exit 7\n").unwrap();
    let status = wait_child(&mut child.0, Duration::from_secs(30)).expect("exec -it exits");
    assert_eq!(status.code(), Some(7), "{}", text());
}

/// A client that vanishes (SIGKILL: no goodbye) loses its process when its
/// lease runs out; one that says goodbye (SIGTERM) at once. Nothing is left
/// in the process table, no zombie under the agent.
fn exec_client_killed(c: &Cluster, pod: &str) {
    let agent = c.child.as_ref().unwrap().id() as i32;
    for (signal, secs) in [(libc::SIGTERM, "1111"), (libc::SIGKILL, "2222")] {
        let argv = ["sleep", secs];
        let mut child = Reaped(
            cli(c, &["exec", pod, "--", "sleep", secs])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        c.wait_for("the exec'd sleep", Duration::from_secs(30), || {
            !pids_running(&argv).is_empty()
        });
        // SAFETY: kill(2) on our own child, not yet reaped.
        unsafe { libc::kill(child.0.id() as i32, signal) };
        let _ = child.0.wait();
        c.wait_for(
            "the exec'd process gone with its client",
            Duration::from_secs(60),
            || pids_running(&argv).is_empty(),
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while zombies_of(agent) != 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "a zombie under the agent after signal {signal}: {:?}; children: {}\n{}",
                zombie_stats(agent),
                ps_children(agent),
                c.log_tail()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
    let scratch = c.layout().container_state().join(".exec");
    assert!(common::entries(&scratch).is_empty(), "exec scratch left");
}

fn port_forward(c: &Cluster, pod: &str) {
    let (port, closed) = (free_port(), free_port());
    let mut child = Reaped(
        cli(
            c,
            &[
                "port-forward",
                pod,
                &format!("{port}:8080"),
                &format!("{closed}:9"),
                "--address",
                "127.0.0.1",
            ],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap(),
    );
    let collect = |mut r: Box<dyn Read + Send>| {
        let got = Arc::new(Mutex::new(String::new()));
        let sink = got.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 1024];
            while let Ok(n) = r.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        got
    };
    let stdout = collect(Box::new(child.0.stdout.take().unwrap()));
    let stderr = collect(Box::new(child.0.stderr.take().unwrap()));
    c.wait_for("port-forward listening", Duration::from_secs(30), || {
        stdout.lock().unwrap().lines().count() >= 2
    });
    let said = stdout.lock().unwrap().clone();
    assert!(
        said.starts_with(&format!(
            "Forwarding from 127.0.0.1:{port} -> 8080\nForwarding from 127.0.0.1:{closed} -> 9\n"
        )),
        "{said}"
    );
    // Two connections open at once, each answered.
    let addr = format!("127.0.0.1:{port}");
    let mut a = std::net::TcpStream::connect(&addr).unwrap();
    let mut b = std::net::TcpStream::connect(&addr).unwrap();
    for s in [&mut a, &mut b] {
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        write!(s, "GET / HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    }
    for s in [&mut a, &mut b] {
        let mut body = String::new();
        s.read_to_string(&mut body).unwrap();
        assert!(body.starts_with("HTTP/1."), "{body}");
        assert!(body.contains(&format!("Hello from {pod}")), "{body}");
    }
    // A port nobody listens on in the pod: that connection is closed, the
    // CLI says why, and goes on forwarding.
    let mut refused = std::net::TcpStream::connect(("127.0.0.1", closed)).unwrap();
    refused
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut rest = Vec::new();
    assert_eq!(refused.read_to_end(&mut rest).unwrap_or(0), 0);
    c.wait_for("the forwarding error", Duration::from_secs(10), || {
        stderr
            .lock()
            .unwrap()
            .contains(&format!("an error occurred forwarding {closed} -> 9"))
    });
    assert!(common::http_get(&addr).is_some_and(|b| b.contains(pod)));
    // SAFETY: kill(2) on our own child, not yet reaped.
    unsafe { libc::kill(child.0.id() as i32, libc::SIGINT) };
    let status = wait_child(&mut child.0, Duration::from_secs(10)).expect("port-forward stops");
    assert!(status.success(), "{status:?}");
}

const LOG_PODS: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: ticker
spec:
  containers:
    - name: t
      image: bramble.local/demo:v1
      imagePullPolicy: Never
      command: ["sh", "-c", "i=0; while true; do echo line $i; i=$((i+1)); sleep 1; done"]
---
apiVersion: v1
kind: Pod
metadata:
  name: crasher
spec:
  containers:
    - name: a
      image: bramble.local/demo:v1
      imagePullPolicy: Never
      command: ["sh", "-c", "echo run $(cat /proc/uptime); sleep 2; exit 1"]
    - name: b
      image: bramble.local/demo:v1
      imagePullPolicy: Never
      command: ["sleep", "3600"]
"#;

fn logs(c: &Cluster) {
    let path = c.dir.join("log-pods.yaml");
    std::fs::write(&path, LOG_PODS).unwrap();
    c.ok(&["apply", "-f", path.to_str().unwrap()]);

    // kubectl's words for a pod with several containers.
    c.wait_for("crasher scheduled", Duration::from_secs(30), || {
        !c.json(&["get", "pod", "crasher"])["spec"]["nodeName"].is_null()
    });
    let out = c.bramble(&["logs", "crasher"]);
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("a container name must be specified for pod crasher, choose one of: [a b]"),
        "{out:?}"
    );
    let out = c.bramble(&["logs", "crasher", "-c", "b", "--previous"]);
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("previous terminated container \"b\" in pod \"crasher\" not found"),
        "{out:?}"
    );
    // --previous: the attempt before the current one.
    c.wait_for("crasher restarted", Duration::from_secs(90), || {
        c.json(&["get", "pod", "crasher"])["status"]["containerStatuses"]
            .as_array()
            .is_some_and(|s| {
                s.iter()
                    .any(|c| c["name"] == "a" && c["restartCount"].as_i64() >= Some(1))
            })
    });
    let mut current = String::new();
    let mut previous = String::new();
    c.wait_for("both attempts' logs", Duration::from_secs(30), || {
        current = c.ok(&["logs", "crasher", "-c", "a"]);
        previous = c.ok(&["logs", "crasher", "-c", "a", "-p"]);
        current.starts_with("run ") && previous.starts_with("run ")
    });
    assert_ne!(current, previous, "--previous shows the older attempt");

    // --since cuts what was written before; --timestamps stamps each line.
    c.wait_for("six ticks", Duration::from_secs(60), || {
        c.bramble(&["logs", "ticker"])
            .stdout
            .split(|b| *b == b'\n')
            .count()
            > 6
    });
    let all = c.ok(&["logs", "ticker"]);
    let recent = c.ok(&["logs", "ticker", "--since", "2s"]);
    assert!(all.lines().any(|l| l == "line 0"), "{all}");
    assert!(!recent.lines().any(|l| l == "line 0"), "{recent}");
    assert!(recent.lines().count() < all.lines().count(), "{recent}");
    let stamped = c.ok(&["logs", "ticker", "--timestamps", "--tail", "2"]);
    assert_eq!(stamped.lines().count(), 2, "{stamped}");
    for l in stamped.lines() {
        let (at, rest) = l.split_once(' ').unwrap();
        assert!(at.parse::<jiff::Timestamp>().is_ok(), "{l}");
        assert!(rest.starts_with("line "), "{l}");
    }
    let since_time = jiff::Timestamp::now().to_string();
    std::thread::sleep(Duration::from_millis(1500));
    let after = c.ok(&["logs", "ticker", "--since-time", &since_time]);
    assert!(after.lines().count() < all.lines().count(), "{after}");

    // -f follows new lines and ends when the pod is deleted.
    let mut follow = Reaped(
        cli(c, &["logs", "-f", "ticker", "--tail", "1"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut out = follow.0.stdout.take().unwrap();
    let got = Arc::new(Mutex::new(String::new()));
    let sink = got.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 1024];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    c.wait_for("followed lines", Duration::from_secs(30), || {
        got.lock().unwrap().lines().count() >= 3
    });
    c.ok(&["delete", "pod", "ticker"]);
    let status = wait_child(&mut follow.0, Duration::from_secs(90))
        .expect("logs -f ends when its pod is deleted");
    assert!(status.success(), "{status:?}");
    c.ok(&["delete", "pod", "crasher"]);
}

#[test]
fn interactive_streams() {
    let c = Cluster::start(ClusterOptions {
        demo: true,
        broker: None,
    });
    c.wait_for(
        "two demo pods Running and Ready",
        Duration::from_secs(90),
        || c.running_ready(DEMO).len() == 2,
    );
    let pods = c.running_ready(DEMO);
    let pod = pods[0]["metadata"]["name"].as_str().unwrap().to_string();
    exec_basics(&c, &pod);
    exec_stdin_through_cat(&c, &pod);
    exec_tty(&c, &pod);
    port_forward(&c, &pod);
    logs(&c);
    exec_client_killed(&c, &pod);
}
