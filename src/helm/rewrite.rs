//! helm-s3 URL rewriting: `s3://bucket/prefix/X` → `X` in an index, byte-wise
//! (the rest of the document is kept byte for byte).
//!
//! helm-s3 writes `s3://bucket/prefix/name-1.2.3.tgz` into `index.yaml` unless
//! charts were pushed with `--relative`. Plain Helm over HTTP cannot fetch those, so
//! URLs that point into the configured bucket/prefix are rewritten to be relative to
//! the repository root. Runs on the index processor (see [`super::process`]).
//!
//! With several repositories in one instance ([`Rules`]), a URL into another
//! configured repository's bucket/prefix becomes that repository's absolute path
//! (`s3://charts-b/x.tgz` → `/team-b/x.tgz`, which Helm resolves against the host);
//! a URL pointing nowhere configured is left alone.

/// Rewrites `s3://bucket/prefix/X` to `X` where it is a URL naming an object: the
/// needle starts a token (at the start, after whitespace, a quote, `[`, `{` or `,`),
/// `X` starts with a letter or digit, and the scalar is not a mapping key. Anywhere else (inside another word, before a YAML
/// indicator such as `"`, `:` or `-`) removing it could change what the document means
/// or make it invalid, so it is left alone. Returns `None` when nothing was rewritten
/// (serve the bytes as they are).
pub fn rewrite_s3_urls(index: &[u8], from: &str) -> Option<Vec<u8>> {
    if !from.starts_with("s3://") || from.len() == "s3://".len() {
        return None;
    }
    rewrite_all(index, &[(from.to_owned(), String::new())])
}

/// What an index's `s3://` URLs become: `(from, to)` pairs, the longest `from` first
/// (the most specific bucket/prefix wins). Empty: nothing is rewritten.
#[derive(Debug, Clone, Default)]
pub struct Rules(Vec<(String, String)>);

impl Rules {
    /// `own` (`s3://bucket/prefix/` of the repository itself) becomes relative;
    /// each of `others` (`(s3 base, "/prefix/")`) becomes that path.
    pub fn new(own: Option<String>, others: Vec<(String, String)>) -> Rules {
        let mut rules: Vec<(String, String)> = own
            .map(|from| (from, String::new()))
            .into_iter()
            .chain(others)
            .filter(|(from, _)| !from.is_empty())
            .collect();
        rules.sort_by_key(|r| std::cmp::Reverse(r.0.len()));
        rules.dedup_by(|a, b| a.0 == b.0);
        Rules(rules)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The repository's own base, if it is rewritten.
    pub fn own(&self) -> Option<&str> {
        self.0
            .iter()
            .find(|(_, to)| to.is_empty())
            .map(|(from, _)| from.as_str())
    }

    /// The index with every rule applied ([`rewrite_s3_urls`]'s token rules), or
    /// `None` when nothing was rewritten.
    pub fn apply(&self, index: &[u8]) -> Option<Vec<u8>> {
        match self.0.as_slice() {
            [] => None,
            rules => rewrite_all(index, rules),
        }
    }
}

/// [`rewrite_s3_urls`] for several `(from, to)` rules (longest `from` first) in one
/// pass: at each `s3://`, the first rule whose `from` is there applies.
fn rewrite_all(index: &[u8], rules: &[(String, String)]) -> Option<Vec<u8>> {
    const SCHEME: &[u8] = b"s3://";
    let mut out: Option<Vec<u8>> = None;
    let (mut copied, mut from_pos) = (0, 0);
    while let Some(found) = index[from_pos..]
        .windows(SCHEME.len())
        .position(|w| w == SCHEME)
    {
        let at = from_pos + found;
        let rule = rules
            .iter()
            .find(|(from, _)| index[at..].starts_with(from.as_bytes()));
        let Some((from, to)) = rule else {
            from_pos = at + 1;
            continue;
        };
        let end = at + from.len();
        let starts_token = at == 0
            || matches!(
                index[at - 1],
                b' ' | b'\t' | b'\n' | b'\r' | b'"' | b'\'' | b'[' | b'{' | b','
            );
        let names_object = index.get(end).is_some_and(u8::is_ascii_alphanumeric)
            && !ends_as_mapping_key(&index[end..]);
        if starts_token && names_object {
            let o = out.get_or_insert_with(|| Vec::with_capacity(index.len()));
            o.extend_from_slice(&index[copied..at]);
            o.extend_from_slice(to.as_bytes());
            copied = end;
            from_pos = end;
        } else {
            from_pos = at + 1;
        }
    }
    let mut out = out?;
    out.extend_from_slice(&index[copied..]);
    Some(out)
}

/// Is the token going on at the start of `rest` a mapping key (`X: ` or `X": `)? Only
/// the token is looked at (up to whitespace, a quote or a flow indicator), so the
/// rewrite stays linear in the size of the index; a plain key of several words is not
/// recognised, and is rewritten like a value.
fn ends_as_mapping_key(rest: &[u8]) -> bool {
    let key_colon = |i: usize| {
        rest.get(i) == Some(&b':')
            && matches!(rest.get(i + 1), None | Some(b' ' | b'\t' | b'\r' | b'\n'))
    };
    for (i, &b) in rest.iter().enumerate() {
        match b {
            b':' if key_colon(i) => return true,
            b'"' | b'\'' => return key_colon(i + 1),
            b' ' | b'\t' | b'\r' | b'\n' | b',' | b'[' | b']' | b'{' | b'}' => return false,
            _ => {}
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_into_other_repositories_become_their_paths() {
        let rules = Rules::new(
            Some("s3://charts-a/stable/".into()),
            vec![
                ("s3://charts-b/".into(), "/team-b/".into()),
                ("s3://charts-b/deep/".into(), "/deep/".into()),
            ],
        );
        let index = b"urls:\n- s3://charts-a/stable/a-1.tgz\n- s3://charts-b/b-1.tgz\n- s3://charts-b/deep/c-1.tgz\n- s3://elsewhere/d-1.tgz\n- 's3://charts-b/e-1.tgz'\n";
        let out = String::from_utf8(rules.apply(index).unwrap()).unwrap();
        assert_eq!(
            out,
            "urls:\n- a-1.tgz\n- /team-b/b-1.tgz\n- /deep/c-1.tgz\n- s3://elsewhere/d-1.tgz\n- '/team-b/e-1.tgz'\n"
        );
        assert_eq!(rules.own(), Some("s3://charts-a/stable/"));
        assert!(Rules::new(None, vec![]).apply(index).is_none());
        // One rule of the repository itself: the single-repository rewrite.
        let own = Rules::new(Some("s3://charts-a/stable/".into()), vec![]);
        assert_eq!(
            own.apply(index),
            rewrite_s3_urls(index, "s3://charts-a/stable/")
        );
    }

    const INDEX: &str = r#"apiVersion: v1
entries:
  hello:
  - name: hello
    version: 0.2.0
    digest: 2383be4fa7458ee961f0eb2f7b0c144fe154afa1b0b9711a3131fa56f22724dc
    urls:
    - s3://my-charts/stable/hello-0.2.0.tgz
  - name: hello
    version: 0.1.0
    digest: 5d05c4e8b99649c66251a5d1c7c8fe421ca617eb184b0c3eb0d43783fbb98150
    urls:
    - hello-0.1.0.tgz
  other:
  - name: other
    version: 1.0.0
    urls:
    - s3://someone-else/x/other-1.0.0.tgz
generated: "2024-01-01T00:00:00Z"
"#;

    #[test]
    fn rewrites_only_urls_into_our_bucket_and_prefix() {
        let out = rewrite_s3_urls(INDEX.as_bytes(), "s3://my-charts/stable/").unwrap();
        let out = String::from_utf8(out).unwrap();
        assert!(out.contains("    - hello-0.2.0.tgz\n"));
        assert!(out.contains("s3://someone-else/x/other-1.0.0.tgz"));
        assert!(rewrite_s3_urls(b"urls: [a.tgz]", "s3://my-charts/stable/").is_none());
    }

    /// Found by fuzzing (fuzz/ `helm_index`): removing the needle wherever it occurred
    /// turned valid YAML into invalid YAML (here: a plain scalar into an unterminated
    /// quoted one). Only a URL token naming an object in the bucket is rewritten.
    #[test]
    fn rewrite_keeps_valid_yaml_valid() {
        let yaml = |b: &[u8]| super::super::yaml_parses(b);
        for (index, from) in [
            ("s3://my-charts/\"\u{1f600}5:-|\n\n", "s3://my-charts/"),
            ("--s3://my-charts/stable/-\n", "s3://my-charts/stable/"),
            ("a: s3://my-charts/stable/- b\n", "s3://my-charts/stable/"),
            (
                "[s3://my-charts/stable/, '#s3://my-charts/stable/']\n",
                "s3://my-charts/stable/",
            ),
        ] {
            assert!(yaml(index.as_bytes()), "{index:?}");
            if let Some(out) = rewrite_s3_urls(index.as_bytes(), from) {
                assert!(
                    yaml(&out),
                    "{index:?} -> {:?}",
                    String::from_utf8_lossy(&out)
                );
            }
        }
        // Every form helm-s3 and JSON indexes use is still rewritten.
        let index = "urls:\n- s3://b/p/a.tgz\nu: [s3://b/p/b.tgz,s3://b/p/c.tgz]\nv: {\"w\": 's3://b/p/d/e.tgz'}\n";
        let out = rewrite_s3_urls(index.as_bytes(), "s3://b/p/").unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "urls:\n- a.tgz\nu: [b.tgz,c.tgz]\nv: {\"w\": 'd/e.tgz'}\n"
        );
    }

    /// Found by fuzzing (fuzz/ `helm_index`): a mapping key that starts like a URL
    /// (`s3://my-charts/entries:`) was renamed, here into the index's own `entries`.
    /// Keys are left alone; values are still rewritten.
    #[test]
    fn rewrite_leaves_mapping_keys_alone() {
        for index in [
            "s3://my-charts/entries:\n  x: [1]\n",
            "a:\n  s3://my-charts/x: 1\n",
            "{\"s3://my-charts/x\": 1}\n",
            "- s3://my-charts/x:\n",
        ] {
            assert_eq!(
                rewrite_s3_urls(index.as_bytes(), "s3://my-charts/"),
                None,
                "{index:?}"
            );
        }
        let index = "- s3://my-charts/a:1.tgz\n- s3://my-charts/b.tgz # note: x\n";
        let out = rewrite_s3_urls(index.as_bytes(), "s3://my-charts/").unwrap();
        assert_eq!(out, b"- a:1.tgz\n- b.tgz # note: x\n");
    }
}
