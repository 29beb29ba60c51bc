//! AWS credentials shared by every worker, swapped in place when refreshed.
//!
//! Owns: [`CredentialsCell`], the one place signing reads credentials from;
//! [`from_env`], the static `AWS_*` environment source (tests, simple setups);
//! and [`start_chain`], the full aws-config default chain (environment, shared
//! profile incl. SSO and `credential_process`, web identity / IRSA, ECS and EKS
//! Pod Identity container credentials, EC2 IMDSv2) run by a refresher thread.
//!
//! # Architecture
//! 1. [`start_chain`] spawns one std thread (`chartcache-creds`) with a tokio
//!    current-thread runtime (aws-config is tokio-based; workers are monoio).
//! 2. The thread resolves credentials once; `start_chain` waits for that first
//!    result at most [`RefreshSchedule::startup_timeout`] and fails with an
//!    [`Error::Credentials`] listing every source tried and how to fix it.
//! 3. Afterwards the thread re-resolves shortly before expiry
//!    ([`next_refresh_delay`]) and [`CredentialsCell::set`]s the result. A
//!    failed refresh keeps the old credentials (warn), with growing retry
//!    delays; once they have expired it logs an error on every failure.
//! 4. The thread holds only a `Weak` reference: when the cell is dropped it
//!    stops at its next wake-up.
//!
//! Invariants: reads on the hot path are lock-free (`arc-swap` load, no
//! allocation); a refresh replaces the whole `Credentials` atomically, so a
//! signer never sees an access key paired with another key's secret; secrets
//! are never logged (`Credentials`' `Debug` redacts them).

use std::future::Future;
use std::pin::Pin;
use std::sync::{mpsc, Arc, Weak};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_credential_types::Credentials;

use super::Error;

/// Name recorded as the provider of credentials read from the environment.
const ENV_PROVIDER: &str = "Environment";

/// A lock-free, swappable slot holding the current credentials (or none yet).
#[derive(Debug, Default)]
pub struct CredentialsCell {
    inner: ArcSwapOption<Credentials>,
    /// Failed refreshes since start (`chartcache_credentials_refresh_failures_total`).
    refresh_failures: std::sync::atomic::AtomicU64,
}

impl CredentialsCell {
    /// An empty cell (signing fails with [`Error::Credentials`] until [`set`](Self::set)).
    pub fn empty() -> Self {
        Self::default()
    }

    /// A cell holding `creds`.
    pub fn new(creds: Credentials) -> Self {
        Self {
            inner: ArcSwapOption::from_pointee(creds),
            ..Self::default()
        }
    }

    /// Failed refreshes since start.
    pub fn refresh_failures(&self) -> u64 {
        self.refresh_failures
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Counts one failed refresh.
    pub fn refresh_failed(&self) {
        self.refresh_failures
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Seconds from `now` until the held credentials expire (negative: expired);
    /// `None` when none are held or they do not expire (static keys).
    pub fn expires_in_at(&self, now: SystemTime) -> Option<f64> {
        let expiry = self.inner.load().as_deref()?.expiry()?;
        Some(match expiry.duration_since(now) {
            Ok(d) => d.as_secs_f64(),
            Err(e) => -e.duration().as_secs_f64(),
        })
    }

    /// The current credentials (lock-free).
    pub fn get(&self) -> Option<Arc<Credentials>> {
        self.inner.load_full()
    }

    /// Replace the credentials (called by a refresher thread).
    pub fn set(&self, creds: Credentials) {
        self.inner.store(Some(Arc::new(creds)));
    }

    /// Drop the credentials (e.g. expired and the refresh failed).
    pub fn clear(&self) {
        self.inner.store(None);
    }

    /// Credentials are held and have not passed their expiry (non-expiring
    /// ones are always fresh). The `/readyz` hook for S3 upstreams.
    pub fn is_fresh(&self) -> bool {
        self.is_fresh_at(SystemTime::now())
    }

    /// [`is_fresh`](Self::is_fresh) at a given time.
    pub fn is_fresh_at(&self, now: SystemTime) -> bool {
        match self.inner.load().as_deref() {
            None => false,
            Some(c) => c.expiry().is_none_or(|e| e > now),
        }
    }
}

/// Read static credentials from `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and
/// optional `AWS_SESSION_TOKEN`.
pub fn from_env() -> Result<Arc<CredentialsCell>, Error> {
    from_lookup(|name| std::env::var(name).ok()).map(|c| Arc::new(CredentialsCell::new(c)))
}

/// [`from_env`] over any variable lookup (testable without touching the process env).
pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Credentials, Error> {
    let get = |name: &str| {
        lookup(name)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    };
    let access_key = get("AWS_ACCESS_KEY_ID");
    let secret_key = get("AWS_SECRET_ACCESS_KEY");
    let (access_key, secret_key) = match (access_key, secret_key) {
        (Some(a), Some(s)) => (a, s),
        (a, s) => {
            let mut missing = Vec::new();
            if a.is_none() {
                missing.push("AWS_ACCESS_KEY_ID");
            }
            if s.is_none() {
                missing.push("AWS_SECRET_ACCESS_KEY");
            }
            return Err(Error::Credentials(format!(
                "{} not set; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY \
                 (and AWS_SESSION_TOKEN for temporary credentials)",
                missing.join(" and ")
            )));
        }
    };
    let token = get("AWS_SESSION_TOKEN");
    Ok(Credentials::new(
        access_key,
        secret_key,
        token,
        None,
        ENV_PROVIDER,
    ))
}

/// When the refresher re-resolves, and how long the first resolution may take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshSchedule {
    /// How long [`start_chain`] waits for the first credentials (IMDS probing
    /// must not stall startup for long).
    pub startup_timeout: Duration,
    /// Refresh this long before expiry (at most half the remaining lifetime).
    pub refresh_before_expiry: Duration,
    /// Longest wait between resolutions; also the period for non-expiring
    /// credentials (a rotated profile file or env is picked up this late).
    pub max_interval: Duration,
    /// Shortest wait between successful resolutions (no busy loop on
    /// credentials that are about to expire).
    pub min_interval: Duration,
    /// First retry delay after a failed refresh; doubles per failure...
    pub retry_min: Duration,
    /// ...up to this.
    pub retry_max: Duration,
    /// Time budget of one resolution after startup.
    pub attempt_timeout: Duration,
}

impl Default for RefreshSchedule {
    fn default() -> Self {
        Self {
            startup_timeout: Duration::from_secs(10),
            refresh_before_expiry: Duration::from_secs(5 * 60),
            max_interval: Duration::from_secs(15 * 60),
            min_interval: Duration::from_secs(5),
            retry_min: Duration::from_secs(5),
            retry_max: Duration::from_secs(60),
            attempt_timeout: Duration::from_secs(30),
        }
    }
}

/// How long to wait before re-resolving credentials that expire at `expiry`.
pub fn next_refresh_delay(
    expiry: Option<SystemTime>,
    now: SystemTime,
    schedule: &RefreshSchedule,
) -> Duration {
    let delay = match expiry {
        None => schedule.max_interval,
        Some(expiry) => {
            let remaining = expiry.duration_since(now).unwrap_or(Duration::ZERO);
            remaining.saturating_sub(schedule.refresh_before_expiry.min(remaining / 2))
        }
    };
    delay.clamp(
        schedule.min_interval,
        schedule.max_interval.max(schedule.min_interval),
    )
}

/// Retry delay after `failures` consecutive failed refreshes (≥ 1).
fn retry_delay(failures: u32, schedule: &RefreshSchedule) -> Duration {
    let factor = 1u32
        .checked_shl(failures.saturating_sub(1))
        .unwrap_or(u32::MAX);
    schedule
        .retry_min
        .saturating_mul(factor)
        .min(schedule.retry_max.max(schedule.retry_min))
}

/// Resolve credentials with the AWS default chain (see the module doc) and keep
/// them fresh on a side thread, with [`RefreshSchedule::default`].
///
/// Returns once the first credentials are in the cell, or an
/// [`Error::Credentials`] after at most the startup timeout (10 s).
pub fn start_chain(region: &str) -> Result<Arc<CredentialsCell>, Error> {
    start_chain_with(region, RefreshSchedule::default())
}

/// [`start_chain`] reading the shared-config profile `profile` (a repository's
/// `profile = "..."`) instead of `$AWS_PROFILE`.
pub fn start_chain_for_profile(region: &str, profile: &str) -> Result<Arc<CredentialsCell>, Error> {
    let (region, profile) = (region.to_owned(), profile.to_owned());
    let help_region = region.clone();
    let help_profile = profile.clone();
    start_refresher(
        Box::new(move || Box::pin(load_chain(region, Some(profile)))),
        RefreshSchedule::default(),
        Box::new(move |detail| {
            format!(
                "profile {help_profile:?}: {}",
                chain_help(&help_region, detail)
            )
        }),
    )
}

/// [`start_chain`] with an explicit schedule.
pub fn start_chain_with(
    region: &str,
    schedule: RefreshSchedule,
) -> Result<Arc<CredentialsCell>, Error> {
    let region = region.to_owned();
    let help_region = region.clone();
    start_refresher(
        Box::new(move || Box::pin(load_default_chain(region))),
        schedule,
        Box::new(move |detail| chain_help(&help_region, detail)),
    )
}

/// Keep credentials from any provider fresh on a side thread (custom sources,
/// tests). Same contract as [`start_chain`].
pub fn start_with_provider(
    provider: impl ProvideCredentials + 'static,
    schedule: RefreshSchedule,
) -> Result<Arc<CredentialsCell>, Error> {
    let provider = SharedCredentialsProvider::new(provider);
    start_refresher(
        Box::new(move || Box::pin(async move { provider })),
        schedule,
        Box::new(|detail| detail.to_owned()),
    )
}

/// Builds the provider inside the refresher's runtime.
type MakeProvider =
    Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = SharedCredentialsProvider>>> + Send>;
/// Turns a failure detail into the startup error message.
type Explain = Box<dyn Fn(&str) -> String + Send>;

/// The aws-config default chain, with an explicit rustls (ring) HTTP client
/// for IMDS, ECS/EKS and STS (aws-config's default client is compiled out).
async fn load_default_chain(region: String) -> SharedCredentialsProvider {
    load_chain(region, None).await
}

/// The default chain, reading shared-config `profile` when given.
async fn load_chain(region: String, profile: Option<String>) -> SharedCredentialsProvider {
    use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
    // The same egress proxy variables as the upstream client (origin::proxy):
    // aws-smithy-http-client 1.5 offers proxies on its connector builder only,
    // so the client is built from a connector function (what `build_https`
    // does, plus `proxy_config`).
    let http =
        aws_smithy_http_client::Builder::new().build_with_connector_fn(|settings, components| {
            let mut builder = aws_smithy_http_client::Connector::builder()
                .proxy_config(aws_smithy_http_client::proxy::ProxyConfig::from_env());
            builder.set_connector_settings(settings.cloned());
            if let Some(components) = components {
                builder.set_sleep_impl(components.sleep_impl());
            }
            builder
                .tls_provider(Provider::Rustls(CryptoMode::Ring))
                .build()
        });
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(region))
        .http_client(http);
    if let Some(profile) = profile {
        loader = loader.profile_name(profile);
    }
    let config = loader.load().await;
    match config.credentials_provider() {
        Some(p) => p,
        // Not reachable (the loader always builds the default chain unless told
        // otherwise); fail resolution cleanly rather than panic.
        None => SharedCredentialsProvider::new(NoProvider),
    }
}

#[derive(Debug)]
struct NoProvider;

impl ProvideCredentials for NoProvider {
    fn provide_credentials<'a>(
        &'a self,
    ) -> aws_credential_types::provider::future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        aws_credential_types::provider::future::ProvideCredentials::ready(Err(
            aws_credential_types::provider::error::CredentialsError::not_loaded_no_source(),
        ))
    }
}

fn start_refresher(
    make: MakeProvider,
    schedule: RefreshSchedule,
    explain: Explain,
) -> Result<Arc<CredentialsCell>, Error> {
    let cell = Arc::new(CredentialsCell::empty());
    let weak = Arc::downgrade(&cell);
    let (first_tx, first_rx) = mpsc::channel();
    let startup_timeout = schedule.startup_timeout;
    std::thread::Builder::new()
        .name("chartcache-creds".into())
        .spawn(move || run_refresher(make, weak, schedule, first_tx))
        .map_err(|e| Error::Credentials(format!("cannot start the credentials thread: {e}")))?;
    match first_rx.recv_timeout(startup_timeout) {
        Ok(Ok(())) => Ok(cell),
        Ok(Err(detail)) => Err(Error::Credentials(explain(&detail))),
        Err(mpsc::RecvTimeoutError::Timeout) => Err(Error::Credentials(explain(&format!(
            "no answer within {}s (an unreachable instance metadata service or STS endpoint \
             can cause this)",
            startup_timeout.as_secs_f32()
        )))),
        Err(mpsc::RecvTimeoutError::Disconnected) => Err(Error::Credentials(explain(
            "the credentials thread stopped unexpectedly",
        ))),
    }
    // On error the cell is dropped here; the thread sees its `Weak` die and exits.
}

/// The refresher thread's body.
fn run_refresher(
    make: MakeProvider,
    cell: Weak<CredentialsCell>,
    schedule: RefreshSchedule,
    first_tx: mpsc::Sender<Result<(), String>>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = first_tx.send(Err(format!("cannot start the credentials runtime: {e}")));
            return;
        }
    };
    rt.block_on(async move {
        let provider = make().await;
        // `start_refresher`'s wait is what bounds startup (and says so); this just
        // stops a hung first attempt from outliving its caller by much. A second
        // longer, so that the caller's own timeout always speaks first.
        let first = resolve(&provider, schedule.startup_timeout + Duration::from_secs(1)).await;
        let mut delay = match (first, cell.upgrade()) {
            (Ok(creds), Some(cell)) => {
                let delay = next_refresh_delay(creds.expiry(), SystemTime::now(), &schedule);
                tracing::info!(
                    expires_in_s = expires_in(&creds).map(|d| d.as_secs()),
                    next_refresh_s = delay.as_secs(),
                    "AWS credentials loaded"
                );
                tracing::debug!(credentials = ?creds, "AWS credentials (secret redacted)");
                cell.set(creds);
                let _ = first_tx.send(Ok(()));
                delay
            }
            (Err(detail), _) => {
                let _ = first_tx.send(Err(detail));
                return;
            }
            (Ok(_), None) => return,
        };
        drop(first_tx);
        let mut failures = 0u32;
        loop {
            tokio::time::sleep(delay).await;
            let Some(cell) = cell.upgrade() else {
                tracing::debug!("credentials cell dropped; refresher stops");
                return;
            };
            match resolve(&provider, schedule.attempt_timeout).await {
                Ok(creds) => {
                    if failures > 0 {
                        tracing::info!(failures, "AWS credentials refresh recovered");
                    }
                    failures = 0;
                    delay = next_refresh_delay(creds.expiry(), SystemTime::now(), &schedule);
                    tracing::debug!(
                        expires_in_s = expires_in(&creds).map(|d| d.as_secs()),
                        next_refresh_s = delay.as_secs(),
                        "AWS credentials refreshed"
                    );
                    cell.set(creds);
                }
                Err(detail) => {
                    failures = failures.saturating_add(1);
                    cell.refresh_failed();
                    delay = retry_delay(failures, &schedule);
                    if cell.is_fresh() {
                        tracing::warn!(error = %detail, failures, retry_in_s = delay.as_secs(),
                            "AWS credentials refresh failed; keeping the current credentials");
                    } else {
                        tracing::error!(error = %detail, failures, retry_in_s = delay.as_secs(),
                            "AWS credentials have expired and refreshing them keeps failing; \
                             S3 requests will be rejected");
                    }
                }
            }
        }
    });
}

/// One resolution, bounded in time; errors flattened to text (with sources).
async fn resolve(
    provider: &SharedCredentialsProvider,
    limit: Duration,
) -> Result<Credentials, String> {
    match tokio::time::timeout(limit, provider.provide_credentials()).await {
        Err(_) => Err(format!("timed out after {}s", limit.as_secs_f32())),
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(error_chain(&e)),
    }
}

fn expires_in(creds: &Credentials) -> Option<Duration> {
    creds.expiry().map(|e| {
        e.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO)
    })
}

/// `error: source: source…` on one line (aws-config's chain error lists each
/// provider on its own line), skipping repeats.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = vec![e.to_string()];
    let mut next = e.source();
    while let Some(s) = next {
        let text = s.to_string();
        if !parts.contains(&text) {
            parts.push(text);
        }
        next = s.source();
    }
    one_line(&parts.join(": "))
}

/// Join lines with `; ` (just a space after a line ending in `:`).
fn one_line(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if !out.is_empty() {
            out.push_str(if out.ends_with(':') { " " } else { "; " });
        }
        out.push_str(line);
    }
    out
}

/// The startup error for the default chain: what failed, what was tried (with
/// the relevant environment as seen), and how to fix it.
fn chain_help(region: &str, detail: &str) -> String {
    chain_help_with(region, detail, |name| {
        std::env::var(name).ok().filter(|v| !v.trim().is_empty())
    })
}

fn chain_help_with(region: &str, detail: &str, env: impl Fn(&str) -> Option<String>) -> String {
    let detail = detail.trim_end_matches('.');
    let set = |name: &str| {
        if env(name).is_some() {
            "set"
        } else {
            "not set"
        }
    };
    let profile = env("AWS_PROFILE").unwrap_or_else(|| "default".to_owned());
    let config_file = env("AWS_CONFIG_FILE").unwrap_or_else(|| "~/.aws/config".to_owned());
    let credentials_file =
        env("AWS_SHARED_CREDENTIALS_FILE").unwrap_or_else(|| "~/.aws/credentials".to_owned());
    let imds = if env("AWS_EC2_METADATA_DISABLED")
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
    {
        " (disabled by AWS_EC2_METADATA_DISABLED)"
    } else {
        ""
    };
    let container = if env("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI").is_some()
        || env("AWS_CONTAINER_CREDENTIALS_FULL_URI").is_some()
    {
        "set"
    } else {
        "not set"
    };
    format!(
        "the AWS default credential chain found none (region {region}): {detail}. \
         Tried, in order: 1) environment: AWS_ACCESS_KEY_ID {ak}, AWS_SECRET_ACCESS_KEY {sk}; \
         2) shared profile {profile:?} in {config_file} and {credentials_file} (static keys, \
         SSO, credential_process, assume-role); 3) web identity token (IRSA): \
         AWS_WEB_IDENTITY_TOKEN_FILE {wi}, AWS_ROLE_ARN {role}; 4) container credentials (ECS \
         task role, EKS Pod Identity): AWS_CONTAINER_CREDENTIALS_RELATIVE_URI/FULL_URI \
         {container}; 5) EC2 instance metadata (IMDSv2){imds}. To fix, do one of: set \
         AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (plus AWS_SESSION_TOKEN for temporary \
         keys); set AWS_PROFILE to a profile with credentials; on EKS, annotate the service \
         account with eks.amazonaws.com/role-arn (IRSA) or add a Pod Identity association; on \
         EC2, attach an instance profile (in containers allow an IMDSv2 hop limit of 2)",
        ak = set("AWS_ACCESS_KEY_ID"),
        sk = set("AWS_SECRET_ACCESS_KEY"),
        wi = set("AWS_WEB_IDENTITY_TOKEN_FILE"),
        role = set("AWS_ROLE_ARN"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn lookup(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn reads_keys_and_optional_token() {
        let c = from_lookup(lookup(&[
            ("AWS_ACCESS_KEY_ID", "AKID"),
            ("AWS_SECRET_ACCESS_KEY", "SECRET"),
        ]))
        .unwrap();
        assert_eq!(c.access_key_id(), "AKID");
        assert_eq!(c.secret_access_key(), "SECRET");
        assert_eq!(c.session_token(), None);

        let c = from_lookup(lookup(&[
            ("AWS_ACCESS_KEY_ID", "AKID"),
            ("AWS_SECRET_ACCESS_KEY", "SECRET"),
            ("AWS_SESSION_TOKEN", "TOKEN"),
        ]))
        .unwrap();
        assert_eq!(c.session_token(), Some("TOKEN"));
    }

    #[test]
    fn missing_variables_are_named() {
        let err = from_lookup(lookup(&[("AWS_ACCESS_KEY_ID", "AKID")])).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, Error::Credentials(_)));
        assert!(
            msg.starts_with("no AWS credentials: AWS_SECRET_ACCESS_KEY not set"),
            "{msg}"
        );

        let err = from_lookup(lookup(&[("AWS_SECRET_ACCESS_KEY", "  ")])).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY not set"),
            "{msg}"
        );
    }

    #[test]
    fn cell_set_replaces_atomically() {
        let cell = CredentialsCell::empty();
        assert!(cell.get().is_none());
        cell.set(Credentials::new("A1", "S1", None, None, "test"));
        let first = cell.get().unwrap();
        cell.set(Credentials::new("A2", "S2", Some("T".into()), None, "test"));
        let second = cell.get().unwrap();
        // An old reader keeps its consistent snapshot.
        assert_eq!(
            (first.access_key_id(), first.secret_access_key()),
            ("A1", "S1")
        );
        assert_eq!(
            (second.access_key_id(), second.secret_access_key()),
            ("A2", "S2")
        );
        cell.clear();
        assert!(cell.get().is_none());
    }

    #[test]
    fn multi_line_errors_become_one_line() {
        assert_eq!(
            one_line("not found. Attempted:\n  Environment: unset\n  Profile: none\n"),
            "not found. Attempted: Environment: unset; Profile: none"
        );
    }

    #[test]
    fn expiry_is_reported_in_seconds_and_absent_for_static_keys() {
        let now = SystemTime::now();
        let cell = CredentialsCell::new(Credentials::new("A", "S", None, None, "t"));
        assert_eq!(cell.expires_in_at(now), None);
        assert_eq!(CredentialsCell::empty().expires_in_at(now), None);
        cell.set(Credentials::new(
            "A",
            "S",
            None,
            Some(now + Duration::from_secs(90)),
            "t",
        ));
        assert_eq!(cell.expires_in_at(now), Some(90.0));
        assert_eq!(
            cell.expires_in_at(now + Duration::from_secs(100)),
            Some(-10.0)
        );
        assert_eq!(cell.refresh_failures(), 0);
        cell.refresh_failed();
        assert_eq!(cell.refresh_failures(), 1);
    }

    #[test]
    fn freshness_follows_expiry() {
        let now = SystemTime::now();
        let cell = CredentialsCell::empty();
        assert!(!cell.is_fresh(), "no credentials is not fresh");
        cell.set(Credentials::new("A", "S", None, None, "t"));
        assert!(cell.is_fresh(), "non-expiring credentials are fresh");
        let expiry = now + Duration::from_secs(60);
        cell.set(Credentials::new("A", "S", None, Some(expiry), "t"));
        assert!(cell.is_fresh_at(now));
        assert!(!cell.is_fresh_at(expiry));
        assert!(!cell.is_fresh_at(expiry + Duration::from_secs(1)));
    }

    #[test]
    fn refresh_delay_schedule() {
        let s = RefreshSchedule::default();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let mins = |m: u64| Duration::from_secs(m * 60);
        // Non-expiring: the periodic re-read.
        assert_eq!(next_refresh_delay(None, now, &s), mins(15));
        // One hour left: 55 minutes, capped at the periodic 15.
        assert_eq!(next_refresh_delay(Some(now + mins(60)), now, &s), mins(15));
        // 12 minutes left: 5 minutes before expiry.
        assert_eq!(next_refresh_delay(Some(now + mins(12)), now, &s), mins(7));
        // 4 minutes left: at half the remaining lifetime.
        assert_eq!(next_refresh_delay(Some(now + mins(4)), now, &s), mins(2));
        // Expired or nearly: never a busy loop.
        assert_eq!(next_refresh_delay(Some(now), now, &s), s.min_interval);
        assert_eq!(
            next_refresh_delay(Some(now - mins(1)), now, &s),
            s.min_interval
        );
        // Failure backoff doubles up to the cap.
        let secs = Duration::from_secs;
        assert_eq!(retry_delay(1, &s), secs(5));
        assert_eq!(retry_delay(2, &s), secs(10));
        assert_eq!(retry_delay(4, &s), secs(40));
        assert_eq!(retry_delay(5, &s), secs(60));
        assert_eq!(retry_delay(u32::MAX, &s), secs(60));
    }

    #[test]
    fn chain_help_lists_sources_and_fixes() {
        let env = lookup(&[
            ("AWS_PROFILE", "charts"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
            ("AWS_ROLE_ARN", "arn:aws:iam::1:role/r"),
        ]);
        let msg = chain_help_with(
            "eu-west-1",
            "no providers in chain provided credentials",
            env,
        );
        for want in [
            "region eu-west-1",
            "no providers in chain provided credentials",
            "AWS_ACCESS_KEY_ID not set",
            "profile \"charts\" in ~/.aws/config and ~/.aws/credentials",
            "AWS_WEB_IDENTITY_TOKEN_FILE not set, AWS_ROLE_ARN set",
            "EKS Pod Identity",
            "(disabled by AWS_EC2_METADATA_DISABLED)",
            "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
            "eks.amazonaws.com/role-arn",
        ] {
            assert!(msg.contains(want), "missing {want:?} in {msg}");
        }
    }

    use aws_credential_types::provider::error::CredentialsError;
    use aws_credential_types::provider::future;
    use std::collections::VecDeque;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Mutex;

    /// A provider answering from a script (the last entry repeats); `None`
    /// never answers.
    /// One scripted answer: `None` never resolves.
    type Answer = Option<Result<Credentials, String>>;

    #[derive(Debug, Clone)]
    struct Scripted {
        script: Arc<Mutex<VecDeque<Answer>>>,
        calls: Arc<AtomicU32>,
    }

    impl Scripted {
        fn new(script: Vec<Answer>) -> Self {
            Self {
                script: Arc::new(Mutex::new(script.into())),
                calls: Arc::default(),
            }
        }
    }

    impl ProvideCredentials for Scripted {
        fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
        where
            Self: 'a,
        {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let mut script = self.script.lock().unwrap();
            let next = if script.len() > 1 {
                script.pop_front().unwrap()
            } else {
                script.front().cloned().unwrap()
            };
            match next {
                None => future::ProvideCredentials::new(std::future::pending()),
                Some(Ok(c)) => future::ProvideCredentials::ready(Ok(c)),
                Some(Err(e)) => {
                    future::ProvideCredentials::ready(Err(CredentialsError::provider_error(e)))
                }
            }
        }
    }

    fn quick() -> RefreshSchedule {
        RefreshSchedule {
            startup_timeout: Duration::from_secs(5),
            refresh_before_expiry: Duration::from_millis(100),
            max_interval: Duration::from_millis(50),
            min_interval: Duration::from_millis(10),
            retry_min: Duration::from_millis(10),
            retry_max: Duration::from_millis(20),
            attempt_timeout: Duration::from_secs(1),
        }
    }

    /// Poll `cond` for up to 10 s.
    fn eventually(mut cond: impl FnMut() -> bool) -> bool {
        for _ in 0..1000 {
            if cond() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    #[test]
    fn refresher_replaces_credentials() {
        let provider = Scripted::new(vec![
            Some(Ok(Credentials::new("A1", "S1", None, None, "t"))),
            Some(Ok(Credentials::new("A2", "S2", None, None, "t"))),
        ]);
        let calls = provider.calls.clone();
        let cell = start_with_provider(provider, quick()).unwrap();
        let first = cell.get().unwrap();
        assert!(matches!(first.access_key_id(), "A1" | "A2"));
        assert!(eventually(|| cell.get().unwrap().access_key_id() == "A2"));
        assert!(eventually(|| calls.load(Ordering::SeqCst) >= 3));
        assert!(cell.is_fresh());
    }

    #[test]
    fn failed_refresh_keeps_old_credentials_until_they_expire() {
        let expiry = SystemTime::now() + Duration::from_millis(300);
        let provider = Scripted::new(vec![
            Some(Ok(Credentials::new("A1", "S1", None, Some(expiry), "t"))),
            Some(Err("sts unreachable".into())),
        ]);
        let calls = provider.calls.clone();
        let cell = start_with_provider(provider, quick()).unwrap();
        assert!(eventually(|| calls.load(Ordering::SeqCst) >= 3));
        assert_eq!(cell.get().unwrap().access_key_id(), "A1");
        assert!(eventually(|| cell.refresh_failures() >= 1));
        assert!(eventually(|| !cell.is_fresh()));
        assert_eq!(cell.get().unwrap().access_key_id(), "A1");
    }

    #[test]
    fn startup_failure_and_timeout_are_credentials_errors() {
        let provider = Scripted::new(vec![Some(Err("nothing configured".into()))]);
        let err = start_with_provider(provider, quick()).unwrap_err();
        assert!(matches!(err, Error::Credentials(_)));
        assert!(err.to_string().contains("nothing configured"), "{err}");

        let provider = Scripted::new(vec![None]);
        let schedule = RefreshSchedule {
            startup_timeout: Duration::from_millis(100),
            ..quick()
        };
        let err = start_with_provider(provider, schedule).unwrap_err();
        assert!(err.to_string().contains("no answer within"), "{err}");
    }
}
