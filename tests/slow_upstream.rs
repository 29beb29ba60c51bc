//! A slow but healthy upstream (issue 11, item 8): a fill that keeps receiving
//! bytes is never cut, and every coalesced waiter — digest-checked charts
//! included — gets the whole body, although the body takes longer than any
//! single timeout. Timeouts mean "no progress for N seconds", not total time.
//!
//! The upstream here trickles a chart at ~53 KB/s (8 KiB every 150 ms), under
//! timeouts of 1 s: each read is well inside the upstream timeout, while the
//! whole body (and the first 256 KiB the cache writes at once) takes several
//! times the waiters' patience (3 s).

mod common;

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};

use common::proxy::{test_cli, Proxy};

const CHART: &str = "/slow-1.0.0.tgz";
const PIECE: usize = 8 * 1024;
const EVERY: Duration = Duration::from_millis(150);

/// Deterministic chart bytes (400 KiB: more than one 256 KiB write run).
fn chart() -> Vec<u8> {
    (0..400 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

fn index(chart: &[u8]) -> String {
    let digest: String = Sha256::digest(chart)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!(
        "apiVersion: v1\nentries:\n  slow:\n  - name: slow\n    version: 1.0.0\n    digest: {digest}\n    urls:\n    - slow-1.0.0.tgz\n"
    )
}

/// Serves `/index.yaml` at once and the chart in trickles; counts chart GETs.
struct TrickleUpstream {
    url: String,
    chart_gets: Arc<AtomicU64>,
}

fn spawn_trickle(chart: Vec<u8>) -> TrickleUpstream {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let chart_gets = Arc::new(AtomicU64::new(0));
    let gets = chart_gets.clone();
    let chart = Arc::new(chart);
    let index = Arc::new(index(&chart));
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let (chart, index, gets) = (chart.clone(), index.clone(), gets.clone());
            std::thread::spawn(move || serve(stream, &chart, &index, &gets));
        }
    });
    TrickleUpstream { url, chart_gets }
}

fn serve(mut s: TcpStream, chart: &[u8], index: &str, gets: &AtomicU64) {
    let Some(path) = common::read_request_target(&mut s, Duration::from_secs(20)) else {
        return;
    };
    let send_head = |s: &mut TcpStream, len: usize, ct: &str| {
        let h = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nContent-Type: {ct}\r\nETag: \"v1\"\r\nConnection: close\r\n\r\n"
        );
        s.write_all(h.as_bytes())
    };
    if path == "/index.yaml" {
        let _ = send_head(&mut s, index.len(), "text/yaml");
        let _ = s.write_all(index.as_bytes());
    } else if path == CHART {
        gets.fetch_add(1, Ordering::SeqCst);
        if send_head(&mut s, chart.len(), "application/gzip").is_err() {
            return;
        }
        for piece in chart.chunks(PIECE) {
            std::thread::sleep(EVERY);
            if s.write_all(piece).is_err() {
                return;
            }
        }
    } else {
        let _ = s
            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    }
}

/// chartcache in front of `upstream` with 1 s timeouts (so waiters' patience
/// is 3 s), digest checks as configured.
fn proxy(upstream: &str, verify_digests: bool) -> Proxy {
    let tmp = tempfile::tempdir().unwrap();
    let mut cli = test_cli(upstream, &tmp.path().join("cache"));
    cli.repo.upstream_timeout = Some("1s".into());
    cli.repo.connect_timeout = Some("1s".into());
    cli.repo.retry_deadline = Some("1s".into());
    cli.repo.no_verify_digests = !verify_digests;
    Proxy::start_in(cli, Some(tmp))
}

/// Three concurrent clients of the slow chart: each gets all of it, from one
/// upstream GET.
fn three_clients_get_the_whole_slow_chart(verify_digests: bool) {
    let chart = chart();
    let up = spawn_trickle(chart.clone());
    let p = proxy(&up.url, verify_digests);
    // The index first: its digests are what a digest-checked fill verifies.
    assert_eq!(p.get("/index.yaml").status, 200);
    let addr = p.addr;
    let clients: Vec<_> = (0..3)
        .map(|_| std::thread::spawn(move || common::proxy::get(addr, CHART, &[])))
        .collect();
    for c in clients {
        let r = c.join().unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.body.len(), chart.len(), "a complete body");
        assert!(r.body == chart, "the right bytes");
    }
    assert_eq!(up.chart_gets.load(Ordering::SeqCst), 1, "one upstream GET");
    let again = p.get(CHART);
    assert_eq!(again.x_cache(), "HIT");
    assert!(again.body == chart);
}

#[test]
fn a_slow_streaming_fill_reaches_every_waiter() {
    three_clients_get_the_whole_slow_chart(false);
}

#[test]
fn a_slow_digest_checked_fill_reaches_every_waiter() {
    three_clients_get_the_whole_slow_chart(true);
}
