//! The index processor: one dedicated thread per process that does all index
//! work, so no io_uring worker ever parses, rewrites or converts an index.
//!
//! A worker submits a body ([`IndexProcessor::submit`]) and awaits the answer on
//! a `tokio::sync::oneshot` channel (runtime-agnostic: the sending thread wakes
//! the monoio task like any cross-thread waker). The queue is bounded
//! ([`QUEUE`]): a full queue is refused at once ([`SubmitError::Busy`]), never
//! waited on. Index fills are coalesced per key, so at most one full index is in
//! flight per process in practice; the bound is for the unexpected.
//!
//! Memory: the job owns the upstream body; it is dropped as soon as the rewritten
//! copy exists, so at most the served YAML plus its JSON form are held here (about
//! 2× the index) while the answer is prepared. The old digest table is dropped on
//! this thread too.
//!
//! A panic while processing (a bug on some input) is caught: that job's answer is
//! dropped (the worker sees the channel closed) and the thread goes on.

use std::ops::Range;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::oneshot;

use super::index::{Extractor, IndexSummary, NotAnIndex};
use super::json::JsonWriter;
use super::rewrite::Rules;
use super::view::{self, Views};
use super::walk::{walk, WalkError};

/// Jobs waiting for the processor, at most.
pub const QUEUE: usize = 4;

/// Why a body has no summary.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("index is not UTF-8: {0}")]
    NotUtf8(#[from] std::str::Utf8Error),
    #[error("index does not parse: {0}")]
    Walk(#[from] WalkError),
    #[error(transparent)]
    NotAnIndex(#[from] NotAnIndex),
}

/// Why a body could not be submitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    #[error("the index processor is busy ({QUEUE} indexes queued)")]
    Busy,
    #[error("the index processor has stopped")]
    Stopped,
}

/// What to do with a body.
#[derive(Debug, Clone, Copy)]
pub struct Job {
    /// Rewrite helm-s3 URLs (a body from upstream); false for an index that was
    /// stored already rewritten.
    pub rewrite: bool,
    /// Write the JSON form.
    pub json: bool,
}

/// Everything derived from one upstream index version.
#[derive(Debug)]
pub struct ProcessedIndex {
    /// The YAML to store and serve: rewritten, or the input as it was.
    pub yaml: Bytes,
    /// `yaml` differs from the input (its ETag must say so).
    pub rewritten: bool,
    /// CRC-32 of `yaml` when it was rewritten (for its ETag), else 0.
    pub yaml_crc: u32,
    /// The digests (and counts), or why there are none.
    pub summary: Result<IndexSummary, IndexError>,
    /// The JSON form, or why there is none (`Err(None)`: not asked for).
    pub json: Result<Bytes, Option<&'static str>>,
    /// The per-chart views (built with the JSON form).
    pub views: Option<Views>,
    /// Time spent on the processor.
    pub took: Duration,
}

/// gzip level of the index forms: 6 (zlib's default) makes a 14 MB index about
/// 1 MB; it runs after the uncompressed forms are served, so its time delays only
/// the compressed forms.
pub const GZIP_LEVEL: u32 = 6;

/// `body` gzip-compressed.
pub fn gzip(body: &[u8]) -> Bytes {
    gzip_pieces(body, std::slice::from_ref(&(0..body.len()))).0
}

/// Each of `pieces` of `body` gzip-compressed on its own (one gzip member each,
/// concatenated): the compressed bytes and where each piece's member is in them.
/// Deterministic: the same input always gives the same bytes.
pub fn gzip_pieces(body: &[u8], pieces: &[Range<usize>]) -> (Bytes, Vec<Range<usize>>) {
    use std::io::Write;
    let total: usize = pieces.iter().map(|p| p.len()).sum();
    let mut out = Vec::with_capacity(total / 8 + 64 * pieces.len());
    let mut at = Vec::with_capacity(pieces.len());
    for piece in pieces {
        let start = out.len();
        let mut enc = flate2::write::GzEncoder::new(out, flate2::Compression::new(GZIP_LEVEL));
        // Writing to a Vec cannot fail.
        let _ = enc.write_all(body.get(piece.clone()).unwrap_or_default());
        out = enc.finish().unwrap_or_default();
        at.push(start..out.len());
    }
    (Bytes::from(out), at)
}

/// A body to compress, whole or piece by piece (see [`gzip_pieces`]): in memory,
/// or read (and verified) by the processor from the store.
pub struct CompressJob {
    pub body: Input,
    /// `None`: the whole body as one member.
    pub pieces: Option<Vec<Range<usize>>>,
}

/// A compressed body and where its pieces' members are in it; `None` when the
/// body could not be read.
pub type Compressed = Option<(Bytes, Vec<Range<usize>>)>;

/// Runs the whole pipeline on the calling thread: rewrite, then one parse that
/// extracts the digests and writes the JSON form.
pub fn process(raw: Bytes, rewrite: &Rules, job: Job) -> ProcessedIndex {
    let started = Instant::now();
    let out = job.rewrite.then(|| rewrite.apply(&raw)).flatten();
    let (yaml, rewritten) = match out {
        Some(out) => {
            drop(raw); // the upstream copy is not needed once rewritten
            (Bytes::from(out), true)
        }
        None => (raw, false),
    };
    let yaml_crc = if rewritten { crc32fast::hash(&yaml) } else { 0 };
    let (summary, json) = match std::str::from_utf8(&yaml) {
        Err(e) => (
            Err(IndexError::from(e)),
            Err(Some("the index is not UTF-8")),
        ),
        Ok(text) => {
            let mut x = Extractor::default();
            let mut w = job.json.then(|| JsonWriter::new(text.len()));
            let walked = match w.as_mut() {
                Some(w) => walk(text, &mut [&mut x, w]),
                None => walk(text, &mut [&mut x]),
            };
            match walked {
                Err(e) => (
                    Err(IndexError::from(e)),
                    Err(Some("the index does not parse")),
                ),
                Ok(()) => {
                    let json = match w {
                        Some(w) => w.finish().map_err(Some),
                        None => Err(None),
                    };
                    (x.finish().map_err(IndexError::from), json)
                }
            }
        }
    };
    // Views only of a Helm index (a mapping), like the digests.
    let views = match (&json, &summary) {
        (Ok(form), Ok(_)) => Some(view::build(form)),
        _ => None,
    };
    let json = json.map(|form| Bytes::from(form.text));
    ProcessedIndex {
        yaml,
        rewritten,
        yaml_crc,
        summary,
        json,
        views,
        took: started.elapsed(),
    }
}

enum Request {
    Process {
        input: Input,
        job: Job,
        reply: oneshot::Sender<ProcessedIndex>,
    },
    /// gzip each body (see [`gzip_pieces`]).
    Compress {
        jobs: Vec<CompressJob>,
        reply: oneshot::Sender<Vec<Compressed>>,
    },
    /// Something to free here rather than on a worker.
    Drop(#[allow(dead_code)] Box<dyn Send>),
    /// Bulk work with no answer (see [`IndexProcessor::run`]).
    Run(Box<dyn FnOnce() + Send>),
}

/// A body to process: in memory, or read by the processor itself (a stored
/// index: reading 14 MB is not a worker's job either).
pub enum Input {
    Bytes(Bytes),
    Load(Box<dyn FnOnce() -> Option<Bytes> + Send>),
}

/// The processor thread's handle (see the module doc). Dropping it ends the thread
/// once the queued jobs are done.
pub struct IndexProcessor {
    tx: SyncSender<Request>,
}

impl IndexProcessor {
    /// Starts the thread; `rewrite` as in [`super::HelmRepo::rewrite`].
    pub fn start(rewrite: Rules) -> std::io::Result<IndexProcessor> {
        let (tx, rx) = sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("chartcache-index".into())
            .spawn(move || run(rx, rewrite))?;
        Ok(IndexProcessor { tx })
    }

    /// Queues `raw` for processing; the answer arrives on the returned channel
    /// (closed without one if processing panicked).
    pub fn submit(
        &self,
        input: Input,
        job: Job,
    ) -> Result<oneshot::Receiver<ProcessedIndex>, SubmitError> {
        let (reply, answer) = oneshot::channel();
        match self.tx.try_send(Request::Process { input, job, reply }) {
            Ok(()) => Ok(answer),
            Err(TrySendError::Full(_)) => Err(SubmitError::Busy),
            Err(TrySendError::Disconnected(_)) => Err(SubmitError::Stopped),
        }
    }

    /// Queues bodies for gzip compression (the answer: each job's compressed bytes
    /// and where its pieces are in them, in order).
    pub fn submit_compress(
        &self,
        jobs: Vec<CompressJob>,
    ) -> Result<oneshot::Receiver<Vec<Compressed>>, SubmitError> {
        let (reply, answer) = oneshot::channel();
        match self.tx.try_send(Request::Compress { jobs, reply }) {
            Ok(()) => Ok(answer),
            Err(TrySendError::Full(_)) => Err(SubmitError::Busy),
            Err(TrySendError::Disconnected(_)) => Err(SubmitError::Stopped),
        }
    }

    /// Drops a value on the processor thread (a replaced digest table: freeing
    /// 15,000 keys is not a worker's job). Dropped by the caller if the queue is full.
    pub fn dispose<T: Send + 'static>(&self, value: T) {
        let _ = self.tx.try_send(Request::Drop(Box::new(value)));
    }

    /// Runs `work` on the processor thread, after the jobs queued before it (a full
    /// check of a stored index at startup: tens of MB of CRC are not a worker's job).
    /// Not run if the queue is full: the work must be an optimisation only.
    pub fn run(&self, work: impl FnOnce() + Send + 'static) {
        let _ = self.tx.try_send(Request::Run(Box::new(work)));
    }
}

/// One compression job, on the processor.
fn compress(job: CompressJob) -> Compressed {
    let body = match job.body {
        Input::Bytes(b) => b,
        Input::Load(load) => load()?,
    };
    Some(match &job.pieces {
        Some(pieces) => gzip_pieces(&body, pieces),
        None => gzip_pieces(&body, std::slice::from_ref(&(0..body.len()))),
    })
}

fn run(rx: Receiver<Request>, rewrite: Rules) {
    crate::sched::background_priority();
    while let Ok(request) = rx.recv() {
        let (input, job, reply) = match request {
            Request::Process { input, job, reply } => (input, job, reply),
            Request::Compress { jobs, reply } => {
                if !reply.is_closed() {
                    let done = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        jobs.into_iter().map(compress).collect::<Vec<_>>()
                    }));
                    match done {
                        Ok(done) => {
                            let _ = reply.send(done);
                        }
                        Err(_) => tracing::error!("index compression panicked"),
                    }
                }
                continue;
            }
            Request::Drop(_) => continue, // dropped by now
            Request::Run(work) => {
                if std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)).is_err() {
                    tracing::error!("index processor work panicked");
                }
                continue;
            }
        };
        if reply.is_closed() {
            continue; // the worker gave up waiting
        }
        let from = &rewrite;
        let done = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let raw = match input {
                Input::Bytes(b) => Some(b),
                Input::Load(load) => load(),
            };
            raw.map(|raw| process(raw, from, job))
        }));
        match done {
            Ok(Some(p)) => {
                let _ = reply.send(p);
            }
            // Could not be read: the closed channel says so.
            Ok(None) => {}
            Err(_) => tracing::error!(
                "index processing panicked; this index version is served without digests"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D1: &str = "2383be4fa7458ee961f0eb2f7b0c144fe154afa1b0b9711a3131fa56f22724dc";

    fn index() -> String {
        format!("apiVersion: v1\nentries:\n  a:\n  - name: a\n    version: 1.0.0\n    digest: {D1}\n    urls:\n    - s3://b/p/a-1.0.0.tgz\n")
    }

    #[test]
    fn one_pass_gives_the_rewritten_yaml_digests_and_json() {
        let job = Job {
            rewrite: true,
            json: true,
        };
        let p = process(
            Bytes::from(index()),
            &Rules::new(Some("s3://b/p/".into()), vec![]),
            job,
        );
        assert!(p.rewritten);
        assert!(std::str::from_utf8(&p.yaml)
            .unwrap()
            .contains("    - a-1.0.0.tgz\n"));
        let s = p.summary.unwrap();
        assert_eq!((s.charts, s.versions, s.digests.len()), (1, 1, 1));
        let json: serde_json::Value = serde_json::from_slice(&p.json.unwrap()).unwrap();
        assert_eq!(json["entries"]["a"][0]["urls"][0], "a-1.0.0.tgz");
        // Stored already rewritten: nothing to rewrite, no JSON asked for.
        let again = process(
            p.yaml.clone(),
            &Rules::new(Some("s3://b/p/".into()), vec![]),
            Job {
                rewrite: false,
                json: false,
            },
        );
        assert!(!again.rewritten);
        assert!(matches!(again.json, Err(None)));
    }

    #[test]
    fn unusable_bodies_are_answered_not_a_panic() {
        let job = Job {
            rewrite: true,
            json: true,
        };
        for body in [&b"\xff\xfe"[..], b"entries: [", b"- a list\n", b""] {
            let p = process(
                Bytes::copy_from_slice(body),
                &Rules::new(Some("s3://b/p/".into()), vec![]),
                job,
            );
            assert!(p.summary.is_err(), "{body:?}");
            assert!(p.json.is_err(), "{body:?}");
            assert_eq!(&p.yaml[..], body);
        }
    }

    #[test]
    fn run_does_the_work_on_the_processor_thread() {
        let proc = IndexProcessor::start(Rules::default()).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        proc.run(move || {
            let _ = tx.send(std::thread::current().name().map(String::from));
        });
        // A panicking job is contained: the thread keeps serving.
        proc.run(|| panic!("bulk work panicked"));
        let (tx2, rx2) = std::sync::mpsc::channel();
        proc.run(move || {
            let _ = tx2.send(());
        });
        let wait = std::time::Duration::from_secs(10);
        assert_eq!(
            rx.recv_timeout(wait).unwrap().as_deref(),
            Some("chartcache-index")
        );
        rx2.recv_timeout(wait).unwrap();
    }

    #[test]
    fn the_thread_answers_and_loads_stored_bodies() {
        let proc = IndexProcessor::start(Rules::default()).unwrap();
        let job = Job {
            rewrite: false,
            json: true,
        };
        let answer = proc
            .submit(Input::Bytes(Bytes::from(index())), job)
            .unwrap();
        let p = answer.blocking_recv().expect("processed");
        assert_eq!(
            p.summary.unwrap().digests.len(),
            0,
            "URL is absolute without a rewrite"
        );
        assert!(p.json.is_ok());
        let load = Input::Load(Box::new(|| Some(Bytes::from(index()))));
        assert!(proc.submit(load, job).unwrap().blocking_recv().is_ok());
        // A body that cannot be read: the channel closes without an answer.
        let gone = Input::Load(Box::new(|| None));
        assert!(proc.submit(gone, job).unwrap().blocking_recv().is_err());
        proc.dispose(vec![0u8; 1 << 20]);
        let whole = CompressJob {
            body: Input::Load(Box::new(|| Some(Bytes::from(index())))),
            pieces: None,
        };
        let split = CompressJob {
            body: Input::Bytes(Bytes::from(index())),
            pieces: Some(vec![0..10, 10..10, 10..index().len()]),
        };
        let unreadable = CompressJob {
            body: Input::Load(Box::new(|| None)),
            pieces: None,
        };
        let gz = proc
            .submit_compress(vec![whole, split, unreadable])
            .unwrap()
            .blocking_recv()
            .unwrap();
        assert!(gz[2].is_none(), "a body that cannot be read");
        let gz: Vec<_> = gz.into_iter().flatten().collect();
        let gunzip = |b: &[u8]| {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(b), &mut text).unwrap();
            text
        };
        assert_eq!(gunzip(&gz[0].0), index());
        assert_eq!(gz[0].1, std::slice::from_ref(&(0..gz[0].0.len())));
        let (body, at) = &gz[1];
        assert_eq!(at.len(), 3);
        assert_eq!(gunzip(&body[at[0].clone()]), index()[..10]);
        assert_eq!(gunzip(&body[at[1].clone()]), "");
        assert_eq!(gunzip(&body[at[2].clone()]), index()[10..]);
        assert_eq!(at[2].end, body.len());
        assert_eq!(
            gzip_pieces(&index().into_bytes(), std::slice::from_ref(&(0..10))).0,
            gzip(&index().as_bytes()[..10])
        );
    }

    #[test]
    fn a_full_queue_is_refused_not_waited_on() {
        // A processor whose thread is not running: nothing leaves the queue.
        let (tx, _rx) = sync_channel(QUEUE);
        let proc = IndexProcessor { tx };
        let job = Job {
            rewrite: false,
            json: false,
        };
        for _ in 0..QUEUE {
            assert!(proc.submit(Input::Bytes(Bytes::new()), job).is_ok());
        }
        assert_eq!(
            proc.submit(Input::Bytes(Bytes::new()), job).err(),
            Some(SubmitError::Busy)
        );
        drop(_rx);
        assert_eq!(
            proc.submit(Input::Bytes(Bytes::new()), job).err(),
            Some(SubmitError::Stopped)
        );
    }
}

#[cfg(test)]
mod fuzzed {
    use super::*;
    use proptest::prelude::*;

    /// Text made of the characters that matter to YAML (indicators, quotes,
    /// indentation, scalars that type as numbers or booleans).
    fn yamlish() -> impl Strategy<Value = String> {
        let atoms = prop::sample::select(vec![
            "a",
            "b:",
            ": ",
            "- ",
            "\n",
            "  ",
            "[",
            "]",
            "{",
            "}",
            ",",
            "'",
            "\"",
            "#",
            "&x ",
            "*x",
            "!t ",
            "|\n",
            ">-\n",
            "? ",
            "1.10",
            "yes",
            "~",
            "0x1F",
            ".nan",
            "<<: ",
            "entries:\n",
            "  c:\n  - ",
            "digest: ",
            "urls: [",
            "s3://b/p/u.tgz",
            "\t",
            "\\",
            "é",
            "---\n",
            "...\n",
            "%YAML 1.2\n",
        ]);
        prop::collection::vec(atoms, 0..40).prop_map(|v| v.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        /// Any input is answered, never a panic; whatever JSON is written is JSON,
        /// and so is every per-chart view.
        #[test]
        fn any_input_gives_valid_json_or_none(text in yamlish()) {
            // The rewrite keeps YAML that parses parseable (the fuzz target's check).
            if super::super::yaml_parses(text.as_bytes()) {
                if let Some(out) = super::super::rewrite_s3_urls(text.as_bytes(), "s3://b/p/") {
                    prop_assert!(super::super::yaml_parses(&out), "{text:?}");
                }
            }
            let job = Job { rewrite: true, json: true };
            let p = process(Bytes::from(text), &Rules::new(Some("s3://b/p/".into()), vec![]), job);
            if let Ok(json) = &p.json {
                prop_assert!(serde_json::from_slice::<serde_json::Value>(json).is_ok(),
                    "{:?}", String::from_utf8_lossy(json));
            }
            if let Some(v) = &p.views {
                for view in v.table.values() {
                    prop_assert!(serde_json::from_slice::<serde_json::Value>(&v.body[view.range.clone()]).is_ok());
                    // And every `?versions=N` of it.
                    for n in 1..=view.versions() + 1 {
                        let [a, b] = view.newest(n);
                        let mut bytes = v.body[a].to_vec();
                        bytes.extend_from_slice(&v.body[b]);
                        prop_assert!(serde_json::from_slice::<serde_json::Value>(&bytes).is_ok(),
                            "{:?}", String::from_utf8_lossy(&bytes));
                    }
                }
            }
        }
    }
}
