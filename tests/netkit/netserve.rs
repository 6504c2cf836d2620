//! `netserve`: the servers and clients the Service tests and benchmarks run
//! inside pods. Built by the tests as a static binary (std only) and put in a
//! test image next to busybox.
//!
//! - `netserve http PORT [SIZE]`: HTTP/1.1 with keep-alive; every response is
//!   `<hostname>\n`, or SIZE bytes (busybox httpd closes each connection,
//!   which measures connection setup rather than a proxy's throughput).
//! - `netserve udp-echo PORT`: echoes each datagram, prefixed by
//!   `<hostname>:`.
//! - `netserve udp-ask ADDR:PORT MESSAGE`: sends one datagram, prints the
//!   reply (retrying a few times: UDP may lose one).
//! - `netserve http-get ADDR:PORT`: one GET, prints the body.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

fn http(port: u16, size: Option<usize>) {
    let listener = TcpListener::bind(("0.0.0.0", port)).expect("bind");
    let body = match size {
        Some(n) => "x".repeat(n),
        None => format!("{}\n", hostname()),
    };
    println!("netserve: http on :{port}, {} byte responses", body.len());
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let body = body.clone();
        std::thread::spawn(move || serve_http(stream, &body));
    }
}

fn serve_http(stream: TcpStream, body: &str) {
    let _ = stream.set_nodelay(true);
    let mut reader = BufReader::new(match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    });
    let mut writer = stream;
    loop {
        let mut close = false;
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let http10 = line.contains("HTTP/1.0");
        loop {
            let mut header = String::new();
            match reader.read_line(&mut header) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let h = header.to_ascii_lowercase();
            if h.starts_with("connection:") && h.contains("close") {
                close = true;
            }
            if header == "\r\n" || header == "\n" {
                break;
            }
        }
        let close = close || http10;
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n{}\r\n{body}",
            body.len(),
            if close { "Connection: close\r\n" } else { "" }
        );
        if writer.write_all(response.as_bytes()).is_err() || close {
            return;
        }
    }
}

fn udp_echo(port: u16) {
    let socket = UdpSocket::bind(("0.0.0.0", port)).expect("bind");
    let prefix = format!("{}:", hostname());
    println!("netserve: udp echo on :{port}");
    let mut buf = vec![0u8; 65536];
    let mut out = Vec::with_capacity(65536);
    loop {
        let Ok((n, from)) = socket.recv_from(&mut buf) else {
            continue;
        };
        out.clear();
        out.extend_from_slice(prefix.as_bytes());
        out.extend_from_slice(&buf[..n]);
        let _ = socket.send_to(&out, from);
    }
}

fn udp_ask(addr: &str, message: &str) {
    let socket = UdpSocket::bind("0.0.0.0:0").expect("bind");
    socket
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    let mut buf = vec![0u8; 65536];
    for _ in 0..5 {
        socket.send_to(message.as_bytes(), addr).expect("send");
        if let Ok((n, _)) = socket.recv_from(&mut buf) {
            println!("{}", String::from_utf8_lossy(&buf[..n]));
            return;
        }
    }
    println!("no reply from {addr}");
    std::process::exit(1);
}

fn http_get(addr: &str) {
    let mut s = TcpStream::connect(addr).expect("connect");
    write!(s, "GET / HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    print!("{}", text.split("\r\n\r\n").nth(1).unwrap_or_default());
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize| args.get(i).cloned().unwrap_or_default();
    match arg(1).as_str() {
        "http" => http(arg(2).parse().expect("port"), arg(3).parse().ok()),
        "udp-echo" => udp_echo(arg(2).parse().expect("port")),
        "udp-ask" => udp_ask(&arg(2), &arg(3)),
        "http-get" => http_get(&arg(2)),
        _ => {
            eprintln!(
                "usage: netserve http PORT | udp-echo PORT | udp-ask ADDR MSG | http-get ADDR"
            );
            std::process::exit(2);
        }
    }
}
