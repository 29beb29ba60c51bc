//! The file origin: objects from a local directory (the bundled examples, tests,
//! air-gapped mirrors). No AWS, no network.
//!
//! Owns: mapping a key to `dir + key`, validators (ETag from mtime and length,
//! Last-Modified from mtime), conditional GET, content type by extension, and
//! streaming the file in [`FILE_CHUNK`] pieces.
//!
//! Invariants: keys with empty, `.` or `..` segments, backslashes or NUL are
//! answered 404 (defence in depth; keys are validated upstream already);
//! directories and missing files are 404; the body is exactly the length seen
//! at open time, and a file that shrinks while being read is
//! [`Error::Truncated`]. Reads use blocking `std::fs` (local disk, 64 KiB at a
//! time), so a slow disk stalls the worker: this origin is not for hot paths.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};

use super::{
    BodyStream, EmptyBody, Error, LocalBoxFuture, Method, Origin, OriginRequest, OriginResponse,
    ResponseMeta,
};

/// Size of one read from disk.
pub const FILE_CHUNK: usize = 64 * 1024;

/// A directory served as an origin.
pub struct FileOrigin {
    dir: PathBuf,
}

impl FileOrigin {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The file for a key, or `None` when the key is not a plain relative path.
    fn resolve(&self, key: &str) -> Option<PathBuf> {
        let rel = key.strip_prefix('/').unwrap_or(key);
        if rel.is_empty() || rel.contains('\0') || rel.contains('\\') {
            return None;
        }
        if rel
            .split('/')
            .any(|s| s.is_empty() || s == "." || s == "..")
        {
            return None;
        }
        Some(self.dir.join(rel))
    }

    fn fetch_sync(&self, req: &OriginRequest) -> Result<OriginResponse, Error> {
        let Some(path) = self.resolve(&req.key) else {
            return Ok(not_found());
        };
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if is_missing(&e) => return Ok(not_found()),
            Err(e) => return Err(Error::Io(e)),
        };
        let md = file.metadata()?;
        if !md.is_file() {
            return Ok(not_found());
        }
        let len = md.len();
        let mtime = md.modified().unwrap_or(UNIX_EPOCH);
        let etag = etag_for(mtime, len);
        let last_modified = httpdate::fmt_http_date(mtime);
        let not_modified = match (&req.if_none_match, &req.if_modified_since) {
            (Some(inm), _) => etag_matches(inm, &etag),
            (None, Some(ims)) => httpdate::parse_http_date(ims)
                .map(|since| truncate_to_secs(mtime) <= since)
                .unwrap_or(false),
            (None, None) => false,
        };
        let mut meta = ResponseMeta {
            status: 200,
            etag: Some(etag),
            last_modified: Some(last_modified),
            content_type: content_type_for(&path).map(str::to_owned),
            content_length: Some(len),
            ..ResponseMeta::default()
        };
        if not_modified {
            meta.status = 304;
            meta.content_length = None;
            return Ok(OriginResponse {
                meta,
                body: Box::new(EmptyBody),
            });
        }
        let body: Box<dyn BodyStream> = if req.method == Method::Head {
            Box::new(EmptyBody)
        } else {
            Box::new(FileBody {
                file: Some(file),
                remaining: len,
                received: 0,
            })
        };
        Ok(OriginResponse { meta, body })
    }
}

impl Origin for FileOrigin {
    fn fetch(&self, req: OriginRequest) -> LocalBoxFuture<'_, Result<OriginResponse, Error>> {
        Box::pin(async move { self.fetch_sync(&req) })
    }

    fn describe(&self) -> String {
        format!("file://{}", self.dir.display())
    }
}

fn not_found() -> OriginResponse {
    OriginResponse {
        meta: ResponseMeta {
            status: 404,
            ..ResponseMeta::default()
        },
        body: Box::new(EmptyBody),
    }
}

fn is_missing(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
    )
}

/// `"<hex mtime ns>-<hex len>"`: changes whenever the file is rewritten.
fn etag_for(mtime: SystemTime, len: u64) -> String {
    let nanos = mtime
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("\"{nanos:x}-{len:x}\"")
}

fn truncate_to_secs(t: SystemTime) -> SystemTime {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => UNIX_EPOCH + std::time::Duration::from_secs(d.as_secs()),
        Err(_) => t,
    }
}

/// `If-None-Match` weak comparison over a list, or `*`.
fn etag_matches(header: &str, etag: &str) -> bool {
    let bare = |t: &str| t.trim().trim_start_matches("W/").to_owned();
    let want = bare(etag);
    header
        .split(',')
        .any(|t| t.trim() == "*" || bare(t) == want)
}

/// Content type for the chart-repository file kinds; `None` for anything else.
pub fn content_type_for(path: &Path) -> Option<&'static str> {
    let ext = path.extension()?.to_str()?.to_ascii_lowercase();
    Some(match ext.as_str() {
        "tgz" | "gz" => "application/gzip",
        "yaml" | "yml" => "text/yaml",
        "json" => "application/json",
        "prov" => "application/octet-stream",
        "txt" => "text/plain",
        _ => return None,
    })
}

/// Streams an open file; ends after exactly the length seen at open time.
struct FileBody {
    file: Option<File>,
    remaining: u64,
    received: u64,
}

impl FileBody {
    fn read_chunk(&mut self) -> Result<Option<Bytes>, Error> {
        if self.remaining == 0 {
            self.file = None;
            return Ok(None);
        }
        let Some(file) = self.file.as_mut() else {
            return Err(Error::Truncated {
                received: self.received,
            });
        };
        let want = self.remaining.min(FILE_CHUNK as u64) as usize;
        let mut buf = BytesMut::zeroed(want);
        let n = loop {
            match file.read(&mut buf) {
                Ok(n) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.file = None;
                    return Err(Error::Io(e));
                }
            }
        };
        if n == 0 {
            self.file = None;
            return Err(Error::Truncated {
                received: self.received,
            });
        }
        buf.truncate(n);
        self.remaining -= n as u64;
        self.received += n as u64;
        Ok(Some(buf.freeze()))
    }
}

impl BodyStream for FileBody {
    fn next_chunk(&mut self) -> LocalBoxFuture<'_, Result<Option<Bytes>, Error>> {
        Box::pin(async move { self.read_chunk() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types() {
        assert_eq!(
            content_type_for(Path::new("a/x-1.0.tgz")),
            Some("application/gzip")
        );
        assert_eq!(content_type_for(Path::new("index.yaml")), Some("text/yaml"));
        assert_eq!(
            content_type_for(Path::new("index.JSON")),
            Some("application/json")
        );
        assert_eq!(
            content_type_for(Path::new("x-1.0.tgz.prov")),
            Some("application/octet-stream")
        );
        assert_eq!(content_type_for(Path::new("README")), None);
    }

    #[test]
    fn etag_format_and_matching() {
        let t = UNIX_EPOCH + std::time::Duration::from_nanos(0x1234);
        assert_eq!(etag_for(t, 255), "\"1234-ff\"");
        assert!(etag_matches("\"1234-ff\"", "\"1234-ff\""));
        assert!(etag_matches("W/\"1234-ff\"", "\"1234-ff\""));
        assert!(etag_matches("\"a\", \"1234-ff\"", "\"1234-ff\""));
        assert!(etag_matches("*", "\"1234-ff\""));
        assert!(!etag_matches("\"1234-fe\"", "\"1234-ff\""));
    }

    #[test]
    fn unsafe_keys_do_not_resolve() {
        let o = FileOrigin::new("/srv/charts");
        assert_eq!(
            o.resolve("/a/b.tgz"),
            Some(PathBuf::from("/srv/charts/a/b.tgz"))
        );
        for bad in [
            "/../etc/passwd",
            "/a/./b",
            "/a//b",
            "/",
            "",
            "/a\0b",
            "/a\\..\\b",
            "/a/",
        ] {
            assert_eq!(o.resolve(bad), None, "{bad:?}");
        }
    }
}
