//! A forward HTTP proxy for egress-proxy tests: `CONNECT host:port` tunnels and
//! absolute-form requests (`GET http://host:port/path HTTP/1.1`), the two ways
//! curl, the AWS CLI and chartcache use an `HTTPS_PROXY` / `HTTP_PROXY`.
//!
//! Owns: [`spawn_egress_proxy`] / [`EgressProxy`], which records every request
//! line it is sent (`CONNECT 127.0.0.1:443`, `GET http://…`) and the
//! `Proxy-Authorization` it carried, so a test can tell what went through it.
//! A forwarded request is answered on a connection of its own (the proxy adds
//! `Connection: close` upstream and closes after relaying the answer), so each
//! one is seen and recorded. A proxy with `require_auth` answers 407 to any
//! request without that exact `Proxy-Authorization` value.
//!
//! Invariants: binds 127.0.0.1:0; one thread per client connection, bounded by
//! 5 s read timeouts; stops accepting when dropped.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One request the proxy was sent.
#[derive(Debug, Clone)]
pub struct Seen {
    /// The request line, e.g. `CONNECT 127.0.0.1:8443 HTTP/1.1`.
    pub line: String,
    pub authorization: Option<String>,
}

pub struct EgressProxy {
    pub addr: SocketAddr,
    /// `http://127.0.0.1:PORT`, for `HTTPS_PROXY` / `HTTP_PROXY`.
    pub url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
}

impl EgressProxy {
    /// Every request line seen so far, in order.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for EgressProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
    }
}

/// Starts the proxy; with `require_auth`, only requests carrying exactly that
/// `Proxy-Authorization` value are served.
pub fn spawn_egress_proxy(require_auth: Option<&str>) -> EgressProxy {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let (seen2, stop2) = (seen.clone(), stop.clone());
    let require = require_auth.map(str::to_owned);
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            if stop2.load(Ordering::SeqCst) {
                break;
            }
            let Ok(conn) = conn else { continue };
            let (seen, require) = (seen2.clone(), require.clone());
            std::thread::spawn(move || serve(conn, &seen, require.as_deref()));
        }
    });
    EgressProxy {
        addr,
        url: format!("http://{addr}"),
        seen,
        stop,
    }
}

/// Reads one request head (up to the blank line); `None` on EOF or timeout.
fn read_head(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return None,
        }
        if head.len() > 64 * 1024 {
            return None;
        }
    }
    Some(head)
}

fn serve(mut client: TcpStream, seen: &Mutex<Vec<Seen>>, require: Option<&str>) {
    let _ = client.set_read_timeout(Some(Duration::from_secs(5)));
    let Some(head) = read_head(&mut client) else {
        return;
    };
    let text = String::from_utf8_lossy(&head).into_owned();
    let mut lines = text.split("\r\n");
    let line = lines.next().unwrap_or("").to_owned();
    let authorization = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("proxy-authorization"))
        .map(|(_, v)| v.trim().to_owned());
    seen.lock().unwrap().push(Seen {
        line: line.clone(),
        authorization: authorization.clone(),
    });
    if require.is_some() && authorization.as_deref() != require {
        let _ = client.write_all(
            b"HTTP/1.1 407 Proxy Authentication Required\r\n\
              Proxy-Authenticate: Basic realm=\"test\"\r\ncontent-length: 0\r\n\r\n",
        );
        return;
    }
    let mut parts = line.split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if method == "CONNECT" {
        let Ok(upstream) = TcpStream::connect(target) else {
            let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n");
            return;
        };
        let _ = client.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n");
        let _ = client.set_read_timeout(None);
        pipe_both(client, upstream);
        return;
    }
    // Absolute form: http://host:port/path.
    let Some(rest) = target.strip_prefix("http://") else {
        let _ = client.write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n");
        return;
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let Ok(mut upstream) = TcpStream::connect(authority) else {
        let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n");
        return;
    };
    let mut out = format!(
        "{method} {} HTTP/1.1\r\n",
        if path.is_empty() { "/" } else { path }
    );
    for l in text.split("\r\n").skip(1).filter(|l| !l.is_empty()) {
        let name = l
            .split(':')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if name != "proxy-authorization" && name != "connection" {
            out.push_str(l);
            out.push_str("\r\n");
        }
    }
    out.push_str("connection: close\r\n\r\n");
    if upstream.write_all(out.as_bytes()).is_err() {
        return;
    }
    let _ = upstream.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = std::io::copy(&mut upstream, &mut client);
}

/// Copies both ways until either side closes.
fn pipe_both(a: TcpStream, b: TcpStream) {
    let (mut a2, mut b2) = (a.try_clone().unwrap(), b.try_clone().unwrap());
    let (mut a, mut b) = (a, b);
    let t = std::thread::spawn(move || {
        let _ = std::io::copy(&mut a2, &mut b2);
        let _ = b2.shutdown(std::net::Shutdown::Write);
    });
    let _ = std::io::copy(&mut b, &mut a);
    let _ = a.shutdown(std::net::Shutdown::Write);
    let _ = t.join();
}
