//! A standalone S3-compatible server for benchmarks and demos: s3s + s3s-fs over a directory.
//!
//! ```text
//! cargo run --release --example s3_server -- --root DIR --listen 127.0.0.1:9000 \
//!     [--access-key K --secret-key S]
//! ```
//!
//! A bucket is a directory under `--root`, a key a file in it (bucket names need ≥ 3 chars).
//! With keys, every request must carry a valid SigV4 signature (s3s `SimpleAuth`); without,
//! requests are anonymous — what nginx and Varnish need, since they cannot sign.
//!
//! It counts requests per method and serves them as Prometheus text at `GET /__stats`
//! (`s3_requests_total{method="GET"}` …, plus `s3_get_requests_total`), so a load test can
//! read "upstream requests" with `chartcache-loadtest --metrics-url http://…/__stats
//! --upstream-metric s3_get_requests_total`. Totals are also printed on SIGINT/SIGTERM.
//!
//! Runs on one tokio current-thread runtime: it only ever sees cache misses.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Parser;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;

#[derive(Parser, Debug)]
#[command(about = "S3-compatible server (s3s-fs) for chartcache benchmarks")]
struct Args {
    /// Directory holding the buckets (one sub-directory per bucket).
    #[arg(long)]
    root: PathBuf,
    /// Address to listen on (port 0 picks one; the chosen address is printed).
    #[arg(long, default_value = "127.0.0.1:9000")]
    listen: SocketAddr,
    /// Access key; with --secret-key, SigV4 is enforced.
    #[arg(long, requires = "secret_key")]
    access_key: Option<String>,
    /// Secret key.
    #[arg(long, requires = "access_key")]
    secret_key: Option<String>,
}

/// Request counts by method.
#[derive(Default)]
struct Counters {
    get: AtomicU64,
    head: AtomicU64,
    other: AtomicU64,
}

impl Counters {
    fn count(&self, method: &http::Method) {
        let c = match *method {
            http::Method::GET => &self.get,
            http::Method::HEAD => &self.head,
            _ => &self.other,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    fn prometheus(&self) -> String {
        let (g, h, o) = (
            self.get.load(Ordering::Relaxed),
            self.head.load(Ordering::Relaxed),
            self.other.load(Ordering::Relaxed),
        );
        format!(
            "# TYPE s3_requests_total counter\n\
             s3_requests_total{{method=\"GET\"}} {g}\n\
             s3_requests_total{{method=\"HEAD\"}} {h}\n\
             s3_requests_total{{method=\"other\"}} {o}\n\
             # TYPE s3_get_requests_total counter\n\
             s3_get_requests_total {g}\n"
        )
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    std::fs::create_dir_all(&args.root)
        .with_context(|| format!("creating {}", args.root.display()))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(serve(args))
}

async fn serve(args: Args) -> Result<()> {
    let fs = s3s_fs::FileSystem::new(&args.root)
        .map_err(|e| anyhow::anyhow!("opening {}: {e:?}", args.root.display()))?;
    let mut builder = S3ServiceBuilder::new(fs);
    let signed = match (args.access_key, args.secret_key) {
        (Some(ak), Some(sk)) => {
            builder.set_auth(SimpleAuth::from_single(ak, sk));
            true
        }
        _ => false,
    };
    let s3 = builder.build();
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr()?;
    println!(
        "listening on http://{addr} (root {}, {})",
        args.root.display(),
        if signed {
            "SigV4 required"
        } else {
            "anonymous"
        }
    );
    let counters = Arc::new(Counters::default());

    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        let (socket, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("accept: {e}");
                    continue;
                }
            },
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        };
        let _ = socket.set_nodelay(true);
        let (s3, counters) = (s3.clone(), counters.clone());
        tokio::spawn(async move {
            let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let (s3, counters) = (s3.clone(), counters.clone());
                async move {
                    if req.uri().path() == "/__stats" {
                        let body = s3s::Body::from(counters.prometheus());
                        return Ok(http::Response::builder()
                            .header("content-type", "text/plain; version=0.0.4")
                            .body(body)
                            .unwrap_or_default());
                    }
                    counters.count(req.method());
                    let if_none_match = req
                        .headers()
                        .get(http::header::IF_NONE_MATCH)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned);
                    let resp = hyper::service::Service::call(&s3, req).await?;
                    Ok::<_, s3s::HttpError>(not_modified_if_matching(resp, if_none_match))
                }
            });
            let conn = ConnBuilder::new(TokioExecutor::new());
            if let Err(e) = conn.serve_connection(TokioIo::new(socket), svc).await {
                // Peers closing keep-alive connections mid-read are normal at shutdown.
                let msg = e.to_string();
                if !msg.contains("connection closed") && !msg.contains("reset") {
                    eprintln!("connection: {msg}");
                }
            }
        });
    }
    eprint!("s3_server totals:\n{}", counters.prometheus());
    Ok(())
}

#[path = "support/s3_conditional.rs"]
mod s3_conditional;
use s3_conditional::not_modified_if_matching;
