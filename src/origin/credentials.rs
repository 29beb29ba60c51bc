//! AWS credentials shared by every worker, swapped in place when refreshed.
//!
//! Owns: [`CredentialsCell`], the one place signing reads credentials from, and
//! [`from_env`], the static `AWS_*` environment source.
//! Does not own: the full aws-config provider chain (profiles, SSO, IMDS, STS);
//! that runs later on a side thread and calls [`CredentialsCell::set`].
//!
//! Invariants: reads on the hot path are lock-free (`arc-swap` load, no
//! allocation); a refresh replaces the whole `Credentials` atomically, so a
//! signer never sees an access key paired with another key's secret.

use std::sync::Arc;

use arc_swap::ArcSwapOption;
use aws_credential_types::Credentials;

use super::Error;

/// Name recorded as the provider of credentials read from the environment.
const ENV_PROVIDER: &str = "Environment";

/// A lock-free, swappable slot holding the current credentials (or none yet).
#[derive(Debug, Default)]
pub struct CredentialsCell {
    inner: ArcSwapOption<Credentials>,
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
        }
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
}
