//! Negative caching: a short memory of keys upstream answered 404 for, so a
//! CI fleet asking for a chart that does not exist (yet) does not turn into a
//! stream of S3 requests. Never used for revalidated paths (`index.yaml`).
//!
//! Shared by all workers behind one mutex, touched only on misses — never on
//! the hit path. Bounded: at most [`MAX_ENTRIES`] keys.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Upper bound on remembered keys.
pub const MAX_ENTRIES: usize = 10_000;

/// Keys recently answered 404, with when that answer expires.
pub struct NegativeCache {
    ttl: Duration,
    map: Mutex<HashMap<String, Instant>>,
}

impl NegativeCache {
    /// `ttl` zero disables it.
    pub fn new(ttl: Duration) -> NegativeCache {
        NegativeCache {
            ttl,
            map: Mutex::new(HashMap::new()),
        }
    }

    /// True while a 404 for `key` is remembered.
    pub fn contains(&self, key: &str) -> bool {
        if self.ttl.is_zero() {
            return false;
        }
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(key) {
            Some(exp) if *exp > Instant::now() => true,
            Some(_) => {
                map.remove(key);
                false
            }
            None => false,
        }
    }

    /// Remembers a 404 for `key`.
    pub fn insert(&self, key: &str) {
        if self.ttl.is_zero() {
            return;
        }
        let now = Instant::now();
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_ENTRIES {
            map.retain(|_, exp| *exp > now);
            if map.len() >= MAX_ENTRIES {
                map.clear();
            }
        }
        map.insert(key.to_string(), now + self.ttl);
    }

    /// Forgets `key` (`prefix = false`) or every key under it. Returns how many.
    pub fn remove(&self, key: &str, prefix: bool) -> usize {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let before = map.len();
        if prefix {
            map.retain(|k, _| !k.starts_with(key));
        } else {
            map.remove(key);
        }
        before - map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_until_ttl_and_forgets_on_purge() {
        let n = NegativeCache::new(Duration::from_secs(60));
        assert!(!n.contains("/a.tgz"));
        n.insert("/a.tgz");
        n.insert("/b/c.tgz");
        assert!(n.contains("/a.tgz"));
        assert_eq!(n.remove("/b/", true), 1);
        assert!(!n.contains("/b/c.tgz"));
        let off = NegativeCache::new(Duration::ZERO);
        off.insert("/a.tgz");
        assert!(!off.contains("/a.tgz"));
        let short = NegativeCache::new(Duration::from_millis(1));
        short.insert("/x");
        std::thread::sleep(Duration::from_millis(5));
        assert!(!short.contains("/x"));
    }

    #[test]
    fn bounded() {
        let n = NegativeCache::new(Duration::from_secs(60));
        for i in 0..(MAX_ENTRIES + 10) {
            n.insert(&format!("/k{i}"));
        }
        assert!(n.map.lock().unwrap().len() <= MAX_ENTRIES);
    }
}
