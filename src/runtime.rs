//! Thread per core: one monoio runtime per worker thread.
//!
//! # Architecture
//! 1. `start` checks credentials, locks and recovers the cache (one shard per
//!    worker), and binds every listener up front, so bad config, a busy port
//!    or an unusable cache directory fail before anything is served.
//! 2. The proxy address is bound once per worker with `SO_REUSEPORT` (the
//!    kernel spreads connections); port 0 is resolved by the first bind.
//!    Linux lets any socket of the same user join such a group, so a second
//!    chartcache on the same port would silently split the clients with the
//!    first. Before the cache is opened, [`claim_listen`] makes sure the
//!    address is this process's alone: an abstract UNIX socket named after it
//!    (unique per network namespace, released by the kernel when the process
//!    dies) excludes another chartcache, even one starting at the same
//!    moment, and a bind *without* `SO_REUSEPORT` fails on any other listener
//!    on that port (an overlapping wildcard address included). Either is
//!    [`Error::PortTaken`], and the process exits.
//! 3. Each worker builds its runtime on io_uring, or on epoll where io_uring is
//!    unavailable (Docker's default seccomp profile) — said once in the log —
//!    then builds its own origin (its own upstream connection pool), takes
//!    ownership of its cache shard (whose job loop the cache runs), and runs
//!    the accept loop and periodic housekeeping (access-log flush, stats,
//!    checkpoints, resuming a shard paused by a full disk once it has room).
//! 4. The admin listener runs on its own plain thread (`admin`).
//! 5. Descriptors: `start` raises the soft `RLIMIT_NOFILE` to the hard limit
//!    and lowers each worker's `max_connections` so that client connections
//!    cannot take the descriptors upstream connections, cache files and the
//!    admin listener need ([`fd_reserve`]): a cold miss still works at the
//!    client limit. The figure is logged at start. Over the limit a new
//!    connection gets a 503 and is closed (counted, logged at most once per
//!    [`LOG_EVERY`]); a failed accept (EMFILE) backs off [`ACCEPT_BACKOFF`]
//!    and is likewise counted and logged at most once per interval.
//! 6. Shutdown fans out through a watch channel: workers stop accepting, idle
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
use crate::cache::{self, Cache, FillContext, RepoFill, ShardParts};
use crate::config::{Config, Driver};
use crate::metrics::{LogEvery, Metrics};
use crate::origin::credentials::CredentialsCell;
use crate::origin::{self, Upstream};
use crate::repo::{CountedOrigin, Repos};
use crate::server::send::SocketMode;
use crate::server::{conn, Worker, WorkerRef};

/// How long in-flight responses may take to finish at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// How often each shard writes its index checkpoint while running.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(30);
/// Pause after a failed accept (EMFILE and friends) instead of spinning.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// At most one log line per recurring condition per this interval.
pub const LOG_EVERY: Duration = Duration::from_secs(10);
/// What a connection over the limit is told before it is closed.
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 25\r\nRetry-After: 1\r\nX-Cache: NONE\r\nCache-Status: chartcache; detail=local\r\nConnection: close\r\n\r\nconnection limit reached\n";

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
    #[error("cannot listen on {addr}: {holder} already listens there, and the workers' SO_REUSEPORT group would split the clients between both. Fix: stop the other server, or give this one its own port with --listen")]
    PortTaken {
        addr: SocketAddr,
        /// "another chartcache" or "another process".
        holder: &'static str,
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
    /// The driver its workers run (`auto` resolved).
    pub driver: Driver,
    pub metrics: Metrics,
    pub cache: Arc<Cache>,
    shutdown: watch::Sender<bool>,
    draining: Arc<AtomicBool>,
    workers: Vec<JoinHandle<()>>,
    log_writer: access_log::Writer,
    _lock: cache::DirLock,
    /// This process's claim on the proxy address (held while serving).
    _listen: Option<ListenClaim>,
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

/// Credentials for the s3:// repositories: the AWS default chain (env, profile,
/// web identity/IRSA, ECS/EKS Pod Identity, IMDSv2; refreshed in the background)
/// for those without a `profile`, and one chain per named profile.
#[derive(Default, Clone)]
pub struct Credentials {
    /// The default chain's (also what a profile without its own cell falls back to).
    pub default: Option<Arc<CredentialsCell>>,
    pub profiles: std::collections::HashMap<String, Arc<CredentialsCell>>,
}

impl From<Option<Arc<CredentialsCell>>> for Credentials {
    fn from(default: Option<Arc<CredentialsCell>>) -> Self {
        Credentials {
            default,
            profiles: Default::default(),
        }
    }
}

impl Credentials {
    /// The cell that signs for `repo` (`None` for an upstream that is not S3).
    pub fn for_repo(&self, repo: &crate::config::RepoConfig) -> Option<Arc<CredentialsCell>> {
        if !matches!(repo.origin.upstream, Upstream::S3 { .. }) {
            return None;
        }
        repo.profile
            .as_ref()
            .and_then(|p| self.profiles.get(p))
            .or(self.default.as_ref())
            .cloned()
    }
}

/// Starts the credential chains the configured s3:// repositories need (none for
/// other upstreams).
pub fn credentials_for(cfg: &Config) -> Result<Credentials, Error> {
    let mut creds = Credentials::default();
    for repo in &cfg.repos {
        if !matches!(repo.origin.upstream, Upstream::S3 { .. }) {
            continue;
        }
        let region = &repo.origin.region;
        match &repo.profile {
            None if creds.default.is_none() => {
                creds.default = Some(
                    crate::origin::credentials::start_chain(region).map_err(Error::Credentials)?,
                );
            }
            Some(p) if !creds.profiles.contains_key(p) => {
                let cell = crate::origin::credentials::start_chain_for_profile(region, p)
                    .map_err(Error::Credentials)?;
                creds.profiles.insert(p.clone(), cell);
            }
            _ => {}
        }
    }
    Ok(creds)
}

/// Starts every worker and the admin listener; returns once all serve.
pub fn start(mut cfg: Config, creds: impl Into<Credentials>) -> Result<Server, Error> {
    let started = std::time::Instant::now();
    let creds: Credentials = creds.into();
    let fd_limit = raise_nofile_limit();
    cfg.server.max_connections = max_connections_within(&cfg, fd_limit);
    let cfg = Arc::new(cfg);
    let n = cfg.workers;
    // Fail fast on an origin that cannot be built (e.g. S3 without credentials).
    let repo_creds: Vec<Option<Arc<CredentialsCell>>> =
        cfg.repos.iter().map(|r| creds.for_repo(r)).collect();
    for (repo, cell) in cfg.repos.iter().zip(&repo_creds) {
        if matches!(repo.origin.upstream, Upstream::S3 { .. }) && cell.is_none() {
            return Err(Error::NoCredentials);
        }
    }

    let driver = resolve_driver(cfg.driver);
    let listen_claim = claim_listen(cfg.server.listen)?;
    let patience = cfg
        .repos
        .iter()
        .map(|r| cache::fill_patience(&r.origin))
        .max()
        .unwrap_or_default();
    let (cache, mut shard_parts, lock) = cache::open(&cfg.cache, n, patience)?;
    let repos = Arc::new(Repos::new(&cfg.repos).map_err(|source| Error::Worker {
        worker: 0,
        what: "cannot start the index-processing thread",
        source,
    })?);
    // Entries tied to no configured repository (another upstream behind a prefix,
    // a removed repository, an older chartcache's keys) are never served: drop them.
    let dropped = cache::drop_unkept(&mut shard_parts, |k| repos.keeps(k), Repos::stale_group);
    if dropped > 0 {
        tracing::warn!(
            dropped,
            "cached objects dropped at start: written for an upstream or repository that is not \
             configured any more (another --upstream or bucket behind the same prefix, a removed \
             repository, or an older chartcache's cache format)"
        );
    }
    // Each repository's stored index is checked in full (its body's CRC) on its index
    // thread now, not by the worker that serves it first (~5 ms for 49 MB; a success
    // is cached in the index entry the workers share, a failure left to them).
    for repo in repos.iter() {
        if let Some(hit) = cache.lookup_unverified(&repo.keys.index) {
            repo.helm.processor.run(move || {
                hit.verify();
            });
        }
    }
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

    let metrics = Metrics::with_repos(n, repos.iter().map(|r| r.name.clone()).collect())
        .with_get_price(cfg.admin.s3_get_price);
    let log_writer =
        access_log::Writer::start(std::io::stdout()).map_err(|source| Error::Worker {
            worker: 0,
            what: "cannot start the access-log thread",
            source,
        })?;
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
            repos: repos.clone(),
            creds: repo_creds.clone(),
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
            repos: repos.clone(),
            credentials: repo_creds,
            started,
            cache_size: cfg.cache.size,
        },
    );
    tracing::info!(
        listen = %addr,
        admin = %admin_addr,
        workers = n,
        driver = driver.name(),
        repos = %repos
            .iter()
            .map(|r| format!("{}={}", r.name, r.cfg.origin.upstream))
            .collect::<Vec<_>>()
            .join(" "),
        cache_dir = %cfg.cache.dir.display(),
        cache_size = cfg.cache.size,
        fd_limit,
        max_connections = cfg.server.max_connections,
        "chartcache listening"
    );
    Ok(Server {
        addr,
        admin_addr,
        driver,
        metrics,
        cache,
        shutdown: shutdown_tx,
        draining,
        workers,
        log_writer,
        _lock: lock,
        _listen: listen_claim,
    })
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (capped by the kernel's
/// `fs.nr_open`); returns the soft limit in force (`u64::MAX` if unknown).
pub fn raise_nofile_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return u64::MAX;
    }
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(1 << 20);
    let target = lim.rlim_max.min(nr_open);
    if lim.rlim_cur < target {
        let raised = libc::rlimit {
            rlim_cur: target,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit reads one rlimit from a struct we own.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            return target;
        }
        tracing::warn!(
            soft = lim.rlim_cur,
            hard = lim.rlim_max,
            error = %std::io::Error::last_os_error(),
            "cannot raise the open-file limit to its hard limit"
        );
    }
    lim.rlim_cur
}

/// Descriptors client connections must leave free: per worker its upstream
/// connections (in flight and idle, plus a file per fill for a file://
/// upstream) and the ring, timer and event descriptors; every shard's segment
/// files (segments are at most 64 MiB and at least an eighth of a shard:
/// `cache::store`) and checkpoints; the admin connections (two descriptors
/// each); and a margin (listeners, logs, credentials refresh, the lock).
pub fn fd_reserve(cfg: &Config) -> u64 {
    let workers = cfg.workers.max(1) as u64;
    // Each repository has its own upstream pool and concurrency cap per worker.
    let per_worker = cfg
        .repos
        .iter()
        .map(|r| {
            2 * r.origin.max_upstream_concurrency as u64 + r.origin.max_idle_connections as u64
        })
        .sum::<u64>()
        + 16;
    let shard = cfg.cache.size / workers;
    let segments = 8 + shard / (64 << 20) + 4;
    workers * (per_worker + segments) + 2 * admin::MAX_ADMIN_CONNECTIONS as u64 + 64
}

/// Client connections per worker: the configured figure, lowered to what
/// the open-file limit leaves after [`fd_reserve`] (at least 1). Logged.
fn max_connections_within(cfg: &Config, fd_limit: u64) -> usize {
    let configured = cfg.server.max_connections;
    let reserve = fd_reserve(cfg);
    let per_worker = fd_limit.saturating_sub(reserve) / cfg.workers.max(1) as u64;
    let allowed = usize::try_from(per_worker).unwrap_or(usize::MAX).max(1);
    if allowed < configured && !cfg.server.max_connections_set {
        tracing::info!(
            fd_limit,
            reserve,
            max_connections = allowed,
            "client connections per worker derived from the open-file limit (raise it with \
             ulimit -n / LimitNOFILE for more)"
        );
        allowed
    } else if allowed < configured {
        tracing::warn!(
            fd_limit,
            reserve,
            configured,
            max_connections = allowed,
            "the open-file limit allows fewer client connections per worker than configured \
             (descriptors are kept for upstream connections and cache files); raise it \
             (ulimit -n, LimitNOFILE) for more"
        );
        allowed
    } else {
        configured
    }
}

/// Tells a connection over the limit so, without waiting: one non-blocking
/// send into the fresh socket's empty buffer (best effort; then it is closed).
fn refuse(stream: &monoio::net::TcpStream) {
    use std::os::fd::AsRawFd;
    // SAFETY: the descriptor is open for this borrow; the kernel reads at most
    // `BUSY.len()` bytes from the static slice and keeps no pointer.
    unsafe {
        libc::send(
            stream.as_raw_fd(),
            BUSY.as_ptr().cast(),
            BUSY.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
}

/// `Auto` becomes io_uring when the kernel and seccomp allow it.
fn resolve_driver(d: Driver) -> Driver {
    let choice = crate::driver::choose(d);
    if let Some(why) = &choice.fallback {
        tracing::warn!(driver = "epoll", reason = %why, "io_uring is unavailable: using epoll");
    }
    choice.driver
}

/// Proof that this process alone serves a listen address: an abstract UNIX
/// socket named after it, held while serving.
pub struct ListenClaim {
    _name: std::os::unix::net::UnixListener,
}

/// Claims `addr` for this process before its workers bind it with
/// `SO_REUSEPORT` (module doc, step 2). Port 0 needs no claim: the kernel hands
/// out a port nobody listens on.
pub fn claim_listen(addr: SocketAddr) -> Result<Option<ListenClaim>, Error> {
    use std::os::linux::net::SocketAddrExt;
    if addr.port() == 0 {
        return Ok(None);
    }
    let err = |source| Error::Bind {
        addr,
        what: "proxy",
        flag: "listen",
        source,
    };
    // Among chartcaches: the name is unique within the network namespace, and
    // a process that dies (even by SIGKILL) releases it.
    let name = format!("chartcache/listen/{addr}");
    let unix = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).map_err(err)?;
    let claim = match std::os::unix::net::UnixListener::bind_addr(&unix) {
        Ok(l) => ListenClaim { _name: l },
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            return Err(Error::PortTaken {
                addr,
                holder: "another chartcache",
            })
        }
        Err(e) => return Err(err(e)),
    };
    // Anything else: without SO_REUSEPORT the bind fails on any listener on
    // this port (SO_REUSEADDR only tolerates connections in TIME_WAIT).
    let probe = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )
    .map_err(err)?;
    probe.set_reuse_address(true).map_err(err)?;
    match probe.bind(&addr.into()) {
        Ok(()) => Ok(Some(claim)),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(Error::PortTaken {
            addr,
            holder: "another process",
        }),
        Err(e) => Err(err(e)),
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
    repos: Arc<Repos>,
    /// Per repository, in order.
    creds: Vec<Option<Arc<CredentialsCell>>>,
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
    let metrics = ctx.metrics.worker(ctx.id);
    let mut origins: Vec<Rc<dyn origin::Origin>> = Vec::with_capacity(ctx.repos.len());
    for (repo, creds) in ctx.repos.iter().zip(&ctx.creds) {
        match origin::build(&repo.cfg.origin, creds.clone()) {
            Ok(inner) => origins.push(Rc::new(CountedOrigin {
                inner,
                metrics: metrics.clone(),
                repo: repo.id,
            })),
            Err(e) => {
                let _ = ctx.startup.send(Err(Error::Origin(e)));
                return;
            }
        }
    }
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
            metrics: metrics.clone(),
            repos: ctx
                .repos
                .iter()
                .zip(&origins)
                .map(|(repo, origin)| RepoFill {
                    keys: repo.keys.clone(),
                    origin: origin.clone(),
                    helm: repo.helm.clone(),
                    verify_digests: repo.cfg.verify_digests,
                })
                .collect(),
        },
    );
    owner.spawn();
    let w: WorkerRef = Rc::new(Worker {
        id: ctx.id,
        cfg: ctx.cfg.clone(),
        origins,
        cache: ctx.cache,
        owner,
        metrics: ctx.metrics.worker(ctx.id),
        repos: ctx.repos,
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
    if let Err(e) = w.owner.checkpoint().await {
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
                        .fetch_add(1, Ordering::Relaxed);
                    refuse(&stream);
                    drop(stream);
                    static OVER: LogEvery = LogEvery::new(LOG_EVERY);
                    if let Some(held_back) = OVER.allow() {
                        tracing::warn!(
                            worker = w.id,
                            max_connections = w.cfg.server.max_connections,
                            more_since_last_line = held_back,
                            "client connection limit reached: new connections get 503 and are closed"
                        );
                    }
                    continue;
                }
                let slot = conn::Slot::take(w);
                monoio::spawn(conn::serve(w.clone(), stream, peer, slot));
            }
            Some(Err(e)) => {
                // EMFILE and friends: back off instead of spinning (the
                // connection waits in the backlog), and say so once a while.
                w.metrics.accept_errors.fetch_add(1, Ordering::Relaxed);
                static FAILED: LogEvery = LogEvery::new(LOG_EVERY);
                if let Some(held_back) = FAILED.allow() {
                    tracing::warn!(
                        worker = w.id,
                        error = %e,
                        more_since_last_line = held_back,
                        "accept failed; backing off"
                    );
                }
                monoio::time::sleep(ACCEPT_BACKOFF).await;
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
            .cache_object_bytes
            .store(stats.object_bytes, Ordering::Relaxed);
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
        m.cache_spooled.store(stats.spooled, Ordering::Relaxed);
        m.cache_spool_bytes
            .store(stats.spool_bytes, Ordering::Relaxed);
        let unsolicited = w
            .origins
            .iter()
            .filter_map(|o| o.connection_stats())
            .map(|s| s.unsolicited)
            .sum();
        w.metrics
            .upstream_unsolicited
            .store(unsolicited, Ordering::Relaxed);
        if last_checkpoint.elapsed() >= CHECKPOINT_EVERY {
            last_checkpoint = Instant::now();
            match w.owner.checkpoint().await {
                Ok(()) => {}
                // A full device: the store logs that once a minute.
                Err(crate::cache::error::Error::NoSpace) => {}
                Err(e) => tracing::warn!(worker = w.id, error = %e, "index checkpoint failed"),
            }
        }
        monoio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A loopback address nothing listens on.
    fn free_addr() -> SocketAddr {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    }

    fn holder(r: Result<Option<ListenClaim>, Error>) -> &'static str {
        match r {
            Err(Error::PortTaken { holder, .. }) => holder,
            Err(e) => panic!("unexpected error: {e}"),
            Ok(_) => panic!("claimed twice"),
        }
    }

    /// A second claim fails while the first is held (even before anything
    /// listens: two instances starting at once), and any listener on the
    /// port, even one that would share it with SO_REUSEPORT, is seen.
    #[test]
    fn an_address_is_claimed_once() {
        let addr = free_addr();
        let first = claim_listen(addr)
            .unwrap()
            .expect("a fixed port is claimed");
        assert_eq!(holder(claim_listen(addr)), "another chartcache");
        drop(first);
        let again = claim_listen(addr).unwrap();
        assert!(again.is_some());
        drop(again);

        let listeners = bind_reuseport(addr, 2, Driver::Epoll).unwrap();
        assert_eq!(holder(claim_listen(addr)), "another process");
        drop(listeners);
        assert!(claim_listen("127.0.0.1:0".parse().unwrap())
            .unwrap()
            .is_none());
    }

    #[test]
    fn each_s3_repository_signs_with_its_profile_or_the_default_chain() {
        let mut cli = crate::config::Cli::default();
        cli.repos.repo = Some(vec![
            "/a=s3://charts-a /b=s3://charts-b /c=https://charts.example.org".into(),
        ]);
        cli.cache.cache_dir = Some("/nonexistent/chartcache-test".into());
        let mut cfg = crate::config::load(cli).unwrap();
        cfg.repos[1].profile = Some("team-b".into());
        let cell = |id: &str| {
            Arc::new(CredentialsCell::new(
                aws_credential_types::Credentials::new(id, "secret", None, None, "test"),
            ))
        };
        let mut creds = Credentials::from(Some(cell("default")));
        let key = |c: Option<Arc<CredentialsCell>>| {
            c.and_then(|c| c.get())
                .map(|k| k.access_key_id().to_string())
        };
        assert_eq!(
            key(creds.for_repo(&cfg.repos[0])).as_deref(),
            Some("default")
        );
        // A profile without its own chain (tests) falls back to the default one.
        assert_eq!(
            key(creds.for_repo(&cfg.repos[1])).as_deref(),
            Some("default")
        );
        creds.profiles.insert("team-b".into(), cell("team-b"));
        assert_eq!(
            key(creds.for_repo(&cfg.repos[1])).as_deref(),
            Some("team-b")
        );
        assert!(creds.for_repo(&cfg.repos[2]).is_none(), "not S3: unsigned");
    }

    #[test]
    fn client_connections_leave_room_for_upstream_and_cache_files() {
        let mut cli = crate::config::Cli::default();
        cli.repo.upstream =
            Some(concat!("file://", env!("CARGO_MANIFEST_DIR"), "/examples/repo").into());
        cli.runtime.workers = Some(2);
        cli.cache.cache_size = Some("2GiB".into());
        cli.cache.cache_dir = Some("/nonexistent/chartcache-test".into());
        let cfg = crate::config::load(cli).unwrap();
        let reserve = fd_reserve(&cfg);
        // 2 × (2·64 + 32 + 16 + 8 + 16 + 4) + 64 + 64
        assert_eq!(reserve, 536);
        assert_eq!(max_connections_within(&cfg, 1 << 20), 10_000);
        assert_eq!(max_connections_within(&cfg, 1024), (1024 - 536) / 2);
        assert_eq!(max_connections_within(&cfg, 100), 1);
    }
}
