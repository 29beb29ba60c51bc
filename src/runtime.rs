//! Thread per core: one monoio runtime per worker thread.
//!
//! # Architecture
//! 1. `start` checks credentials, locks and recovers the cache (one shard per
//!    worker), and binds every listener up front, so bad config, a busy port
//!    or an unusable cache directory fail before anything is served.
//! 2. The proxy address is bound once per worker with `SO_REUSEPORT` (the
//!    kernel spreads connections); port 0 is resolved by the first bind.
//! 3. Each worker builds its runtime on io_uring, or on epoll where io_uring is
//!    unavailable (Docker's default seccomp profile) — said once in the log —
//!    then builds its own origin (its own upstream connection pool), takes
//!    ownership of its cache shard (whose job loop the cache runs), and runs
//!    the accept loop and periodic housekeeping (access-log flush, stats,
//!    checkpoints, resuming a shard paused by a full disk once it has room).
//! 4. The admin listener runs on its own plain thread (`admin`).
//! 5. Shutdown fans out through a watch channel: workers stop accepting, idle
//!    connections close, in-flight responses finish (bounded by a grace
//!    period), each shard writes its index checkpoint, the log is flushed.

use std::future::Future;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::access_log::{self, AccessLog};
use crate::admin::{self, AdminState};
use crate::cache::{self, Cache, FillContext, ShardParts};
use crate::config::{Config, Driver};
use crate::metrics::Metrics;
use crate::origin::credentials::CredentialsCell;
use crate::origin::{self, Upstream};
use crate::server::send::SocketMode;
use crate::server::{conn, Worker, WorkerRef};

/// How long in-flight responses may take to finish at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// How often each shard writes its index checkpoint while running.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(30);

/// Startup and runtime errors; each says what to fix. A variant with a source
/// does not repeat it in its own text: the binary prints the whole chain.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Cache(#[from] cache::OpenError),
    #[error("cannot listen on {addr} ({what}): {source}. Fix: pick a free port with --{flag}, or stop the process using it")]
    Bind {
        addr: SocketAddr,
        what: &'static str,
        flag: &'static str,
        source: std::io::Error,
    },
    #[error("AWS credentials")]
    Credentials(#[source] origin::Error),
    #[error("AWS credentials: none found. Fix: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN for temporary credentials)")]
    NoCredentials,
    #[error("upstream")]
    Origin(#[source] origin::Error),
    #[error("worker {worker} failed to start: {what}")]
    Worker {
        worker: usize,
        what: &'static str,
        source: std::io::Error,
    },
    #[error("worker {worker} failed to start: a worker exited during startup")]
    WorkerExited { worker: usize },
}

/// A running server.
pub struct Server {
    pub addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub metrics: Metrics,
    pub cache: Arc<Cache>,
    shutdown: watch::Sender<bool>,
    draining: Arc<AtomicBool>,
    workers: Vec<JoinHandle<()>>,
    log_writer: access_log::Writer,
    _lock: cache::DirLock,
}

impl Server {
    /// Graceful shutdown: stop accepting, finish responses, checkpoint.
    pub fn shutdown(self) {
        self.draining.store(true, Ordering::SeqCst);
        let _ = self.shutdown.send(true);
        for w in self.workers {
            let _ = w.join();
        }
        self.log_writer.finish();
    }

    /// Blocks until SIGTERM or SIGINT, then shuts down gracefully.
    pub fn run_until_signal(self) -> std::io::Result<()> {
        use signal_hook::consts::{SIGINT, SIGTERM};
        let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])?;
        if let Some(sig) = signals.forever().next() {
            tracing::info!(signal = sig, "shutting down: finishing in-flight responses");
        }
        let started = Instant::now();
        self.shutdown();
        tracing::info!(took_ms = started.elapsed().as_millis() as u64, "stopped");
        Ok(())
    }
}

/// Credentials for the configured upstream: required for S3 (the AWS default
/// chain — env, profile, web identity/IRSA, ECS/EKS Pod Identity, IMDSv2 —
/// refreshed in the background), unused otherwise.
pub fn credentials_for(cfg: &Config) -> Result<Option<Arc<CredentialsCell>>, Error> {
    match cfg.repo.origin.upstream {
        Upstream::S3 { .. } => crate::origin::credentials::start_chain(&cfg.repo.origin.region)
            .map(Some)
            .map_err(Error::Credentials),
        _ => Ok(None),
    }
}

/// Starts every worker and the admin listener; returns once all serve.
pub fn start(cfg: Config, creds: Option<Arc<CredentialsCell>>) -> Result<Server, Error> {
    let cfg = Arc::new(cfg);
    let n = cfg.workers;
    // Fail fast on an origin that cannot be built (e.g. S3 without credentials).
    if let Upstream::S3 { .. } = cfg.repo.origin.upstream {
        if creds.is_none() {
            return Err(Error::NoCredentials);
        }
    }

    let driver = resolve_driver(cfg.driver);
    let (cache, shard_parts, lock) =
        cache::open(&cfg.cache, n, cache::fill_patience(&cfg.repo.origin))?;
    let listeners = bind_reuseport(cfg.server.listen, n, driver)?;
    let addr = listeners[0].local_addr().map_err(|source| Error::Bind {
        addr: cfg.server.listen,
        what: "proxy",
        flag: "listen",
        source,
    })?;
    let admin_listener =
        std::net::TcpListener::bind(cfg.admin.listen).map_err(|source| Error::Bind {
            addr: cfg.admin.listen,
            what: "admin",
            flag: "admin",
            source,
        })?;
    let admin_addr = admin_listener.local_addr().unwrap_or(cfg.admin.listen);

    let metrics = Metrics::new(n);
    let log_writer =
        access_log::Writer::start(std::io::stdout()).map_err(|source| Error::Worker {
            worker: 0,
            what: "cannot start the access-log thread",
            source,
        })?;
    let helm = Arc::new(crate::helm::HelmRepo::for_repo(&cfg.repo));
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let draining = Arc::new(AtomicBool::new(false));
    let ready = Arc::new(AtomicUsize::new(0));

    let (startup_tx, startup_rx) = std::sync::mpsc::channel::<Result<(), Error>>();
    let mut workers = Vec::with_capacity(n);
    for (id, (listener, shard)) in listeners.into_iter().zip(shard_parts).enumerate() {
        let ctx = WorkerStart {
            id,
            cfg: cfg.clone(),
            driver,
            listener,
            shard,
            cache: cache.clone(),
            metrics: metrics.clone(),
            log_sink: cfg.access_log.then(|| log_writer.sink()),
            helm: helm.clone(),
            creds: creds.clone(),
            shutdown: shutdown_rx.clone(),
            ready: ready.clone(),
            startup: startup_tx.clone(),
        };
        let handle = std::thread::Builder::new()
            .name(format!("chartcache-w{id}"))
            .spawn(move || worker_thread(ctx))
            .map_err(|source| Error::Worker {
                worker: id,
                what: "cannot spawn its thread",
                source,
            })?;
        workers.push(handle);
    }
    drop(startup_tx);
    for _ in 0..n {
        match startup_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let _ = shutdown_tx.send(true);
                return Err(e);
            }
            Err(_) => {
                let _ = shutdown_tx.send(true);
                return Err(Error::WorkerExited { worker: 0 });
            }
        }
    }

    admin::spawn(
        admin_listener,
        AdminState {
            metrics: metrics.clone(),
            cache: cache.clone(),
            ready: ready.clone(),
            workers: n,
            draining: draining.clone(),
            token: cfg.admin.token.clone(),
            credentials: creds.clone(),
        },
    );
    tracing::info!(
        listen = %addr,
        admin = %admin_addr,
        workers = n,
        driver = ?driver,
        upstream = %cfg.repo.origin.upstream,
        cache_dir = %cfg.cache.dir.display(),
        cache_size = cfg.cache.size,
        "chartcache listening"
    );
    Ok(Server {
        addr,
        admin_addr,
        metrics,
        cache,
        shutdown: shutdown_tx,
        draining,
        workers,
        log_writer,
        _lock: lock,
    })
}

/// `Auto` becomes io_uring when the kernel and seccomp allow it.
fn resolve_driver(d: Driver) -> Driver {
    match d {
        Driver::Auto if monoio::utils::detect_uring() => Driver::IoUring,
        Driver::Auto => {
            tracing::warn!(
                "io_uring is unavailable (old kernel, or blocked by a seccomp profile such as Docker's default): using epoll"
            );
            Driver::Epoll
        }
        other => other,
    }
}

/// Binds `n` listeners on one address with SO_REUSEPORT.
fn bind_reuseport(
    addr: SocketAddr,
    n: usize,
    driver: Driver,
) -> Result<Vec<std::net::TcpListener>, Error> {
    let err = |source| Error::Bind {
        addr,
        what: "proxy",
        flag: "listen",
        source,
    };
    let mut out = Vec::with_capacity(n);
    let mut bound = addr;
    for _ in 0..n {
        let sock = socket2::Socket::new(
            socket2::Domain::for_address(bound),
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )
        .map_err(err)?;
        sock.set_reuse_address(true).map_err(err)?;
        sock.set_reuse_port(true).map_err(err)?;
        sock.bind(&bound.into()).map_err(err)?;
        sock.listen(4096).map_err(err)?;
        if driver == Driver::Epoll {
            sock.set_nonblocking(true).map_err(err)?;
        }
        let l: std::net::TcpListener = sock.into();
        if bound.port() == 0 {
            bound = l.local_addr().map_err(err)?;
        }
        out.push(l);
    }
    Ok(out)
}

struct WorkerStart {
    id: usize,
    cfg: Arc<Config>,
    driver: Driver,
    listener: std::net::TcpListener,
    /// This worker's cache shard, to own.
    shard: ShardParts,
    cache: Arc<Cache>,
    metrics: Metrics,
    log_sink: Option<access_log::Sink>,
    helm: Arc<crate::helm::HelmRepo>,
    creds: Option<Arc<CredentialsCell>>,
    shutdown: watch::Receiver<bool>,
    ready: Arc<AtomicUsize>,
    startup: std::sync::mpsc::Sender<Result<(), Error>>,
}

fn worker_thread(ctx: WorkerStart) {
    let startup = ctx.startup.clone();
    let id = ctx.id;
    let driver = ctx.driver;
    if let Err(e) = block_on(driver, |mode| worker_main(ctx, mode)) {
        let _ = startup.send(Err(Error::Worker {
            worker: id,
            what: "cannot build the runtime",
            source: e,
        }));
    }
}

fn block_on<F: Future>(
    driver: Driver,
    f: impl FnOnce(SocketMode) -> F,
) -> std::io::Result<F::Output> {
    match driver {
        Driver::IoUring | Driver::Auto => {
            let (mut rt, mode) = uring_runtime()?;
            Ok(rt.block_on(f(mode)))
        }
        Driver::Epoll => Ok(monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()?
            .block_on(f(SocketMode::Epoll))),
    }
}

/// A monoio runtime on io_uring with timers.
pub(crate) type UringRuntime = monoio::Runtime<monoio::time::TimeDriver<monoio::IoUringDriver>>;

/// The io_uring runtime a worker runs on, and how its client sockets become
/// non-blocking. The ring asks for COOP_TASKRUN + TASKRUN_FLAG (completions
/// are processed when the worker next enters the kernel instead of
/// interrupting it; Linux 5.19+): when the kernel accepts that, it also
/// retries io_uring ops on `O_NONBLOCK` sockets (5.12+), so sockets are made
/// non-blocking once ([`SocketMode::UringNonBlocking`]); otherwise a plain
/// ring, and `O_NONBLOCK` only around each `sendfile`.
pub(crate) fn uring_runtime() -> std::io::Result<(UringRuntime, SocketMode)> {
    let build = |urb: io_uring::Builder| {
        monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .with_entries(1024)
            .uring_builder(urb)
            .enable_timer()
            .build()
    };
    let mut coop = io_uring::IoUring::builder();
    coop.setup_coop_taskrun().setup_taskrun_flag();
    match build(coop) {
        Ok(rt) => Ok((rt, SocketMode::UringNonBlocking)),
        Err(_) => Ok((
            build(io_uring::IoUring::builder())?,
            SocketMode::UringToggle,
        )),
    }
}

async fn worker_main(ctx: WorkerStart, socket_mode: SocketMode) {
    let origin = match origin::build(&ctx.cfg.repo.origin, ctx.creds.clone()) {
        Ok(o) => o,
        Err(e) => {
            let _ = ctx.startup.send(Err(Error::Origin(e)));
            return;
        }
    };
    let listener = match monoio::net::TcpListener::from_std(ctx.listener) {
        Ok(l) => l,
        Err(e) => {
            let _ = ctx.startup.send(Err(Error::Worker {
                worker: ctx.id,
                what: "cannot register the listener",
                source: e,
            }));
            return;
        }
    };
    let owner = ctx.cache.owner(
        ctx.shard,
        FillContext {
            origin: origin.clone(),
            metrics: ctx.metrics.worker(ctx.id),
            helm: ctx.helm,
            verify_digests: ctx.cfg.repo.verify_digests,
        },
    );
    owner.spawn();
    let w: WorkerRef = Rc::new(Worker {
        id: ctx.id,
        cfg: ctx.cfg.clone(),
        origin,
        cache: ctx.cache,
        owner,
        metrics: ctx.metrics.worker(ctx.id),
        access_log: AccessLog::new(
            ctx.log_sink,
            ctx.cfg.log_format,
            ctx.id,
            ctx.metrics.worker(ctx.id),
        ),
        draining: std::cell::Cell::new(false),
        connections: std::cell::Cell::new(0),
        stop: Default::default(),
        socket_mode,
    });
    monoio::spawn(housekeeping(w.clone()));
    ctx.ready.fetch_add(1, Ordering::SeqCst);
    let _ = ctx.startup.send(Ok(()));
    drop(ctx.startup);

    accept_loop(&w, &listener, ctx.shutdown).await;
    drop(listener);
    w.draining.set(true);
    w.stop.fire();
    let deadline = Instant::now() + SHUTDOWN_GRACE;
    while w.connections.get() > 0 && Instant::now() < deadline {
        monoio::time::sleep(Duration::from_millis(20)).await;
    }
    if let Err(e) = w.owner.checkpoint() {
        tracing::error!(worker = w.id, error = %e, "index checkpoint failed at shutdown");
    }
    w.access_log.flush();
}

async fn accept_loop(
    w: &WorkerRef,
    listener: &monoio::net::TcpListener,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        if *shutdown.borrow_and_update() {
            return;
        }
        let accepted = monoio::select! {
            a = listener.accept() => Some(a),
            _ = shutdown.changed() => None,
        };
        match accepted {
            None => return,
            Some(Ok((stream, peer))) => {
                if w.connections.get() >= w.cfg.server.max_connections {
                    w.metrics
                        .connections_rejected
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    drop(stream);
                    continue;
                }
                monoio::spawn(conn::serve(w.clone(), stream, peer));
            }
            Some(Err(e)) => {
                // EMFILE and friends: back off briefly instead of spinning.
                tracing::warn!(worker = w.id, error = %e, "accept failed");
                monoio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Periodic per-worker chores.
async fn housekeeping(w: WorkerRef) {
    let mut last_checkpoint = Instant::now();
    loop {
        w.access_log.flush();
        w.owner.recheck_space();
        let stats = w.owner.stats();
        w.metrics
            .cache_bytes
            .store(stats.bytes_on_disk, Ordering::Relaxed);
        w.metrics
            .cache_objects
            .store(stats.objects, Ordering::Relaxed);
        w.metrics
            .cache_evictions
            .store(stats.evictions, Ordering::Relaxed);
        let m = &w.metrics;
        m.cache_truncated_segments
            .store(stats.truncated_segments, Ordering::Relaxed);
        m.cache_truncated_dropped
            .store(stats.truncated_dropped, Ordering::Relaxed);
        m.cache_no_space_errors
            .store(stats.no_space_errors, Ordering::Relaxed);
        m.cache_disk_full
            .store(u64::from(stats.disk_full), Ordering::Relaxed);
        if let Some(upstream) = w.origin.connection_stats() {
            w.metrics
                .upstream_unsolicited
                .store(upstream.unsolicited, Ordering::Relaxed);
        }
        if last_checkpoint.elapsed() >= CHECKPOINT_EVERY {
            last_checkpoint = Instant::now();
            match w.owner.checkpoint() {
                Ok(()) => {}
                // A full device: the store logs that once a minute.
                Err(crate::cache::error::Error::NoSpace) => {}
                Err(e) => tracing::warn!(worker = w.id, error = %e, "index checkpoint failed"),
            }
        }
        monoio::time::sleep(Duration::from_millis(200)).await;
    }
}
