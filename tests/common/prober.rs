//! A client that sends HTTP requests one after another until stopped and
//! counts answers and failures: what "no failed request during a rolling
//! update" is measured with. Each failure is kept with its time and cause.

use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

pub struct Prober {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// One request on a new connection: the response, or why there was none.
fn ask(addr: &str) -> Result<String, String> {
    let sock = addr.parse().map_err(|e| format!("address {addr}: {e}"))?;
    let mut s = std::net::TcpStream::connect_timeout(&sock, Duration::from_secs(3))
        .map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(3)))
        .map_err(|e| format!("set_read_timeout: {e}"))?;
    write!(s, "GET / HTTP/1.0\r\nHost: bramble\r\n\r\n").map_err(|e| format!("write: {e}"))?;
    let mut body = Vec::new();
    s.read_to_end(&mut body)
        .map_err(|e| format!("read after {} bytes: {e}", body.len()))?;
    Ok(String::from_utf8_lossy(&body).into_owned())
}

impl Prober {
    /// Starts asking `addr` (`ip:port`), a new connection per request, with
    /// `pause` between an answer and the next request. An answer counts when
    /// its text contains `expect`.
    pub fn start(addr: String, expect: &'static str, pause: Duration) -> Prober {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let (s, o, f) = (stop.clone(), ok.clone(), failures.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let started = Instant::now();
                match ask(&addr) {
                    Ok(body) if body.contains(expect) => {
                        o.fetch_add(1, Ordering::Relaxed);
                    }
                    other => {
                        let why = match other {
                            Ok(body) => format!("unexpected answer {body:?}"),
                            Err(e) => e,
                        };
                        let at = SystemTime::now()
                            .duration_since(SystemTime::UNIX_EPOCH)
                            .unwrap_or_default();
                        f.lock().unwrap().push(format!(
                            "request sent at unix {:.3} ({} ms): {why}",
                            at.as_secs_f64() - started.elapsed().as_secs_f64(),
                            started.elapsed().as_millis()
                        ));
                    }
                }
                std::thread::sleep(pause);
            }
        });
        Prober {
            stop,
            ok,
            failures,
            thread: Some(thread),
        }
    }

    /// (answered, failed) so far.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.ok.load(Ordering::Relaxed),
            self.failures.lock().unwrap().len() as u64,
        )
    }

    /// Stops the client; (answered, failed).
    pub fn finish(self) -> (u64, u64) {
        let (ok, failures) = self.finish_with_failures();
        (ok, failures.len() as u64)
    }

    /// Stops the client; answered, and each failure with its time and cause.
    pub fn finish_with_failures(mut self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        (
            self.ok.load(Ordering::Relaxed),
            self.failures.lock().unwrap().clone(),
        )
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
