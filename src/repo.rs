//! Repositories: the ones this instance serves, and which one a path belongs to.
//!
//! Owns: routing a request path to its repository ([`Repos::route`], longest
//! configured prefix that is a whole-segment prefix of the path; prefixes never
//! overlap, `config` refuses that), each repository's cache-key namespace and
//! upstream identity, the start-up drop of cache entries no configured repository
//! owns ([`Repos::keeps`]), and the per-repository upstream counters
//! ([`CountedOrigin`]). Not what a repository does with a request (`server`), nor
//! its index processing (`helm`, one [`HelmRepo`] per repository).
//!
//! # Keys and identities
//! Every cache key of a repository starts with its namespace:
//! `"\u{2}" + 16 hex digits + prefix`, the digits being the first 8 bytes of the
//! SHA-256 of the repository's **upstream identity** (kind, S3 endpoint, bucket,
//! key prefix — or host, port and base path; or directory: never credentials or
//! region) and its path prefix. `\u{2}` cannot be in a request path
//! (`http1::path` refuses control characters), so no request can name another
//! repository's key or a key of the old, unnamespaced form. After the namespace
//! comes the object key (`/index.yaml`, `/hello-0.1.0.tgz`) or a derived form's
//! key ([`IndexKeys`]). Two consequences:
//! - two repositories never share an entry, even with equal object names;
//! - an entry written for another upstream (the same cache directory restarted
//!   with another `--upstream`, a DaemonSet's bucket changed on a node's
//!   hostPath) is never looked up, and [`Repos::keeps`] says so at start, when
//!   `runtime` drops every such entry with one log line. The record format is
//!   unchanged: an entry of an older chartcache has an unnamespaced key and is
//!   dropped the same way, never misread.

use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;
use sha2::{Digest, Sha256};

use crate::config::{shown_prefix, RepoConfig};
use crate::helm::{HelmRepo, IndexKeys};
use crate::metrics::{UpstreamKind, WorkerMetrics};
use crate::origin::{
    self, BodyStream, LocalBoxFuture, Origin, OriginRequest, OriginResponse, Upstream,
};

/// The first character of every namespaced cache key.
pub const NS_MARK: char = '\u{2}';
/// Length of a namespace's fixed head: the mark and 16 hex digits.
const NS_HEAD: usize = 17;

/// One served repository, shared by every worker.
pub struct Repo {
    /// Its position in [`Repos`] (and in the per-worker origins and counters).
    pub id: usize,
    pub cfg: RepoConfig,
    /// The prefix as shown in logs, metrics and `/readyz` (`/` for the root).
    pub name: String,
    /// What its entries are tied to (see the module doc).
    pub identity: String,
    /// Its cache keys: the namespace, the index and the index's derived forms.
    pub keys: IndexKeys,
    pub helm: Arc<HelmRepo>,
}

impl Repo {
    /// The cache key of object `key` (`/x.tgz`) of this repository.
    pub fn cache_key(&self, key: &str) -> String {
        let mut k = String::with_capacity(self.keys.ns.len() + key.len());
        k.push_str(&self.keys.ns);
        k.push_str(key);
        k
    }
}

/// Every configured repository.
pub struct Repos {
    list: Vec<Repo>,
}

/// What a purge path or prefix names in one repository.
#[derive(Debug, PartialEq, Eq)]
pub struct PurgeScope {
    pub repo: usize,
    /// A cache key, or a cache-key prefix.
    pub cache_key: String,
}

impl Repos {
    /// The repositories of `cfgs` (validated: non-overlapping prefixes), each with
    /// its index-processing state (which starts its index thread).
    pub fn new(cfgs: &[RepoConfig]) -> std::io::Result<Repos> {
        let mut list = Vec::with_capacity(cfgs.len());
        for (id, cfg) in cfgs.iter().enumerate() {
            let identity = identity(&cfg.origin);
            let ns = namespace(&identity, &cfg.prefix);
            list.push(Repo {
                id,
                name: shown_prefix(&cfg.prefix).to_owned(),
                keys: IndexKeys::new(&ns),
                helm: Arc::new(HelmRepo::for_repo(cfg, cfgs)?),
                identity,
                cfg: cfg.clone(),
            });
        }
        Ok(Repos { list })
    }

    pub fn iter(&self) -> std::slice::Iter<'_, Repo> {
        self.list.iter()
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub fn get(&self, id: usize) -> Option<&Repo> {
        self.list.get(id)
    }

    /// Something of repository `id` was purged: derived index forms an operator
    /// purged are rebuilt on the next revalidation, not after an eviction backoff
    /// (`helm::Rebuilds`).
    pub fn purged(&self, id: usize) {
        if let Some(repo) = self.get(id) {
            *repo.helm.rebuilds.lock().unwrap_or_else(|e| e.into_inner()) = Default::default();
        }
    }

    /// The repository serving `path` (a validated object key such as
    /// `/stable/index.yaml`) and the object key inside it (`/index.yaml`; `/` for the
    /// repository's root). `None`: no configured prefix covers the path.
    pub fn route<'p>(&self, path: &'p str) -> Option<(&Repo, &'p str)> {
        self.list.iter().find_map(|r| {
            let rest = path.strip_prefix(r.cfg.prefix.as_str())?;
            match rest {
                "" => Some((r, "/")),
                _ if rest.starts_with('/') => Some((r, rest)),
                _ => None,
            }
        })
    }

    /// What `DELETE /cache<path>` (or, with `prefix`, `?prefix=<path>`) removes: the
    /// cache key of one object, or per repository the cache-key prefix. A prefix that
    /// ends inside a repository stays in it; one that covers whole repositories (`/`,
    /// or a string prefix of their path) removes all of each.
    pub fn purge_scopes(&self, path: &str, prefix: bool) -> Vec<PurgeScope> {
        if !prefix {
            return self
                .route(path)
                .filter(|(_, key)| *key != "/")
                .map(|(r, key)| PurgeScope {
                    repo: r.id,
                    cache_key: r.cache_key(key),
                })
                .into_iter()
                .collect();
        }
        if let Some((r, key)) = self.route(path) {
            // Inside one repository (its root: all of it).
            let key = if key == "/" && !path.ends_with('/') {
                ""
            } else {
                key
            };
            return vec![PurgeScope {
                repo: r.id,
                cache_key: r.cache_key(key),
            }];
        }
        self.list
            .iter()
            .filter(|r| r.cfg.prefix.starts_with(path))
            .map(|r| PurgeScope {
                repo: r.id,
                cache_key: r.keys.ns.clone(),
            })
            .collect()
    }

    /// Is `key` (a stored cache key) owned by a configured repository? Only those
    /// entries are ever looked up; the rest are dropped at start.
    pub fn keeps(&self, key: &str) -> bool {
        self.list.iter().any(|r| {
            key.strip_prefix(r.keys.ns.as_str())
                .is_some_and(|rest| rest.starts_with('/'))
        })
    }

    /// The prefix that removes `key` (not kept) together with every other entry of
    /// the same origin: its namespace head for a namespaced key, `/` for a key of the
    /// unnamespaced (older) form, else the key itself.
    pub fn stale_group(key: &str) -> &str {
        if key.starts_with(NS_MARK) && key.len() >= NS_HEAD && key.is_char_boundary(NS_HEAD) {
            &key[..NS_HEAD]
        } else if key.starts_with('/') {
            "/"
        } else {
            key
        }
    }
}

/// The upstream identity an entry is tied to: kind, endpoint, bucket and key prefix
/// (S3); scheme, host, port and base path (HTTP); the directory (file). Never
/// credentials, region or timeouts.
pub fn identity(origin: &origin::OriginConfig) -> String {
    match &origin.upstream {
        Upstream::S3 { bucket, prefix } => format!(
            "s3 endpoint={} bucket={bucket} prefix={prefix}",
            origin
                .s3_endpoint
                .as_deref()
                .map_or("aws", |e| e.trim_end_matches('/'))
        ),
        other => other.to_string(),
    }
}

/// `"\u{2}" + hex(sha256(identity, prefix))[..16] + prefix` (see the module doc).
pub fn namespace(identity: &str, prefix: &str) -> String {
    let mut h = Sha256::new();
    h.update(identity.as_bytes());
    h.update([0]);
    h.update(prefix.as_bytes());
    let digest = h.finalize();
    let mut ns = String::with_capacity(NS_HEAD + prefix.len());
    ns.push(NS_MARK);
    ns.push_str(&crate::helm::hex(&digest[..8]));
    ns.push_str(prefix);
    ns
}

/// A repository's origin on one worker, counting its upstream exchanges, failures
/// and body bytes for that repository (`chartcache_repo_upstream_*`, by kind: GET,
/// conditional GET, HEAD; `/readyz`).
pub struct CountedOrigin {
    pub inner: Rc<dyn Origin>,
    pub metrics: Arc<WorkerMetrics>,
    pub repo: usize,
}

impl Origin for CountedOrigin {
    fn fetch(
        &self,
        req: OriginRequest,
    ) -> LocalBoxFuture<'_, Result<OriginResponse, origin::Error>> {
        Box::pin(async move {
            let kind = if req.method == origin::Method::Head {
                UpstreamKind::Head
            } else if req.if_none_match.is_some() || req.if_modified_since.is_some() {
                UpstreamKind::ConditionalGet
            } else {
                UpstreamKind::Get
            };
            let res = self.inner.fetch(req).await;
            let Some(counters) = self.metrics.repos.get(self.repo) else {
                return res;
            };
            match res {
                Ok(r) => {
                    counters.upstream_kind(kind, Some(r.meta.status));
                    Ok(OriginResponse {
                        meta: r.meta,
                        body: Box::new(CountedBody {
                            inner: r.body,
                            metrics: self.metrics.clone(),
                            repo: self.repo,
                        }),
                    })
                }
                Err(e) => {
                    counters.upstream_kind(kind, e.upstream_status());
                    Err(e)
                }
            }
        })
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn connection_stats(&self) -> Option<origin::client::ClientStats> {
        self.inner.connection_stats()
    }
}

struct CountedBody {
    inner: Box<dyn BodyStream>,
    metrics: Arc<WorkerMetrics>,
    repo: usize,
}

impl BodyStream for CountedBody {
    fn next_chunk(&mut self) -> LocalBoxFuture<'_, Result<Option<Bytes>, origin::Error>> {
        Box::pin(async move {
            let chunk = self.inner.next_chunk().await;
            if let (Ok(Some(c)), Some(counters)) = (&chunk, self.metrics.repos.get(self.repo)) {
                counters
                    .upstream_bytes
                    .fetch_add(c.len() as u64, std::sync::atomic::Ordering::Relaxed);
            }
            chunk
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repos(specs: &[(&str, &str)]) -> Repos {
        let mut cli = crate::config::Cli::default();
        cli.repos.repo = Some(specs.iter().map(|(p, u)| format!("{p}={u}")).collect());
        cli.repo.s3_endpoint = Some("http://127.0.0.1:9000".into());
        cli.cache.cache_dir = Some("/nonexistent/chartcache-test".into());
        let cfg = crate::config::load(cli).unwrap();
        Repos::new(&cfg.repos).unwrap()
    }

    #[test]
    fn paths_route_to_the_repository_whose_prefix_covers_them() {
        let r = repos(&[
            ("/stable", "s3://charts-a/stable"),
            ("/team-b/x", "s3://charts-b"),
        ]);
        let (repo, key) = r.route("/stable/index.yaml").unwrap();
        assert_eq!((repo.id, key), (0, "/index.yaml"));
        let (repo, key) = r.route("/team-b/x/-/charts/a/index.yaml").unwrap();
        assert_eq!((repo.id, key), (1, "/-/charts/a/index.yaml"));
        assert_eq!(r.route("/stable").map(|(r, k)| (r.id, k)), Some((0, "/")));
        assert!(r.route("/stable2/index.yaml").is_none());
        assert!(r.route("/team-b/index.yaml").is_none());
        assert!(r.route("/index.yaml").is_none());
    }

    #[test]
    fn keys_carry_the_repository_and_its_upstream() {
        let a = repos(&[("/a", "s3://charts-a"), ("/b", "s3://charts-a")]);
        let (ka, kb) = (a.list[0].cache_key("/x.tgz"), a.list[1].cache_key("/x.tgz"));
        assert_ne!(ka, kb, "same object name, two repositories");
        assert!(ka.starts_with(NS_MARK) && ka.ends_with("/a/x.tgz"));
        assert!(a.keeps(&ka) && a.keeps(&kb));
        assert!(a.keeps(&a.list[0].keys.json[0]));
        // Another upstream behind the same prefix: the old keys are not kept.
        let other = repos(&[("/a", "s3://charts-z"), ("/b", "s3://charts-a")]);
        assert!(!other.keeps(&ka));
        assert!(other.keeps(&kb));
        assert_eq!(Repos::stale_group(&ka), &ka[..NS_HEAD]);
        assert!(!other.list[0].keys.ns.starts_with(Repos::stale_group(&ka)));
        // Keys of the older, unnamespaced form.
        assert!(!a.keeps("/x.tgz"));
        assert_eq!(Repos::stale_group("/index.yaml\u{1}json0"), "/");
    }

    #[test]
    fn identities_leave_out_credentials_and_region() {
        let mut o = crate::origin::test_config(Upstream::S3 {
            bucket: "charts-a".into(),
            prefix: "stable".into(),
        });
        let before = identity(&o);
        o.region = "eu-west-1".into();
        assert_eq!(identity(&o), before);
        o.s3_endpoint = Some("http://127.0.0.1:9000/".into());
        assert_eq!(
            identity(&o),
            "s3 endpoint=http://127.0.0.1:9000 bucket=charts-a prefix=stable"
        );
    }

    #[test]
    fn purges_stay_inside_one_repository() {
        let r = repos(&[
            ("/stable", "s3://charts-a/stable"),
            ("/stable-old", "s3://charts-b"),
        ]);
        let one = r.purge_scopes("/stable/x.tgz", false);
        assert_eq!(
            one,
            vec![PurgeScope {
                repo: 0,
                cache_key: r.list[0].cache_key("/x.tgz")
            }]
        );
        assert!(r.purge_scopes("/elsewhere/x.tgz", false).is_empty());
        assert!(
            r.purge_scopes("/stable", false).is_empty(),
            "a repository root is no object"
        );
        let p = r.purge_scopes("/stable/hello-", true);
        assert_eq!(
            p,
            vec![PurgeScope {
                repo: 0,
                cache_key: r.list[0].cache_key("/hello-")
            }]
        );
        let whole = r.purge_scopes("/stable", true);
        assert_eq!(
            whole,
            vec![PurgeScope {
                repo: 0,
                cache_key: r.list[0].keys.ns.clone()
            }]
        );
        let all: Vec<usize> = r.purge_scopes("/", true).iter().map(|s| s.repo).collect();
        assert_eq!(all, vec![0, 1]);
    }
}
