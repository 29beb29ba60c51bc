//! Which way a cached body of `sendfile_threshold` or more goes out: `sendfile(2)`
//! or a copy (one `writev` from the segment mmap) — one process-wide choice, made by
//! measuring which of the two serves the clients more responses per second.
//!
//! # Why a measurement and not a rule
//! `sendfile` costs the server a third less CPU per response than the copy (`send`'s
//! doc), and on a real network it also spares the copy to the NIC. But the bytes a
//! client on the same host then reads are page-cache pages nobody has touched lately,
//! while a copied body reaches it from the server's cache-hot socket buffer. A client
//! bound by its own CPU pays for that: wrk (one thread, 8 KiB reads) spends 24 % of
//! its time in `_copy_to_iter` on `sendfile` bodies against 14 % on copied ones
//! (`perf`, 200 charts, 21 MB in all), and gets 27.2k responses/s against 31.0k while
//! the server idles 13 %. With two wrk threads (the box bound by the server) `sendfile`
//! serves 27.7k against 24.7k, a client reading 256 KiB at a time 46.6k against 35.3k,
//! and with a working set that fits the CPU cache (10 charts, 2.7 MB) the copy never
//! wins. Read size, idle CPU, `EAGAIN`s, window, ACK pattern and the server's CPU per
//! response do not tell these cases apart (tried; README, Performance); the clients'
//! throughput does.
//!
//! # How ([`Controller`], fed every [`EPOCH`] by worker 0's [`run`] task)
//! - The choice starts as `sendfile`. Workers read it once per response
//!   ([`SendPath::sendfile`], one relaxed load); a response never changes path midway.
//! - While the server is busy (at least [`BUSY_RATE`] responses/s), a probe starts
//!   after every [`PERIOD`] of busy time, and when load comes back after
//!   [`RESUME_AFTER`] of quiet at a rate more than [`CHANGED`] away from the one the
//!   path in use served in the last probe (other clients; the same clients are not
//!   probed again, which would cost them the other path's epochs). It runs blocks of 4 epochs — current,
//!   other, other, current, every other block mirrored, so a steady drift of the load
//!   cancels — and decides after 2 blocks (2 s) when the rates differ by more than
//!   [`CLEAR_GAIN`], after 4 blocks otherwise. An epoch that is not busy ends it with
//!   the current path kept.
//! - `sendfile` → copy when the copy served more by over [`SWITCH_GAIN`]; copy →
//!   `sendfile` when `sendfile` served at least as much. Without a gain the server
//!   keeps the path that costs it less CPU. A probe spends half its epochs on the other
//!   path: with the periods above, at most ~3 % of busy time.
//! - Nothing is learnt per client: it is one operating point for the process. A server
//!   that is never busy never probes and stays on `sendfile`. On this 2-core box the
//!   copy's advantage with wrk also depends on where the scheduler puts wrk (sharing a
//!   core with a worker, the copy serves ~21k, not 31k), so a probe can miss it; the
//!   next one, a [`PERIOD`] later, measures again.
//! - `--no-adaptive-sendfile` turns it off (always `sendfile` from the threshold);
//!   `--sendfile-threshold off` copies every body.
//!
//! Exposed as `chartcache_send_path{path}` (1 on the path in use) and
//! `chartcache_send_path_probes_total{outcome}` (kept, switched, aborted); a switch is
//! logged at info with the two rates, every probe at debug (with CPU µs per response).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;

use crate::metrics::{Metrics, SEND_PATH, SEND_PATH_PROBES};

/// One measurement interval.
pub const EPOCH: Duration = Duration::from_millis(250);
/// Responses per second (all workers) from which the server counts as busy.
pub const BUSY_RATE: f64 = 1000.0;
/// Quiet time after which the next busy epoch starts a probe.
pub const RESUME_AFTER: Duration = Duration::from_secs(2);
/// Busy time between two probes.
pub const PERIOD: Duration = Duration::from_secs(60);
/// A probe runs blocks of 4 epochs: current, other, other, current; every other block
/// mirrored (other, current, current, other), so a steady drift of the load cancels.
const BLOCK: usize = 4;
/// A probe decides after at least this many blocks…
const MIN_BLOCKS: usize = 2;
/// …if the two paths' rates differ by more than this…
pub const CLEAR_GAIN: f64 = 0.08;
/// …and after this many blocks in any case.
const MAX_BLOCKS: usize = 4;
/// After a quiet spell, a rate this far from the one last measured on the path in use
/// means other clients: probe.
pub const CHANGED: f64 = 0.2;
/// How much more the copy must serve at the end of a probe to be chosen.
pub const SWITCH_GAIN: f64 = 0.03;

/// One of the two ways a large cached body goes out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    Sendfile,
    Copy,
}

impl Path {
    fn other(self) -> Path {
        match self {
            Path::Sendfile => Path::Copy,
            Path::Copy => Path::Sendfile,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Path::Sendfile => "sendfile",
            Path::Copy => "copy",
        }
    }
}

/// How a probe ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Kept,
    Switched,
    /// The load dropped below busy during the probe.
    Aborted,
}

impl Outcome {
    const ALL: [Outcome; 3] = [Outcome::Kept, Outcome::Switched, Outcome::Aborted];

    fn name(self) -> &'static str {
        match self {
            Outcome::Kept => "kept",
            Outcome::Switched => "switched",
            Outcome::Aborted => "aborted",
        }
    }
}

/// The shared choice: written by the controller, read by every worker per response.
#[derive(Debug, Default)]
pub struct SendPath {
    copy: AtomicBool,
    probes: [AtomicU64; 3],
}

impl SendPath {
    pub fn new() -> Arc<SendPath> {
        Arc::new(SendPath::default())
    }

    /// Whether a body at or above the threshold goes by `sendfile` now.
    #[inline]
    pub fn sendfile(&self) -> bool {
        !self.copy.load(Relaxed)
    }

    pub fn current(&self) -> Path {
        if self.sendfile() {
            Path::Sendfile
        } else {
            Path::Copy
        }
    }

    /// Sets the path (the controller; tests).
    pub fn set(&self, path: Path) {
        self.copy.store(path == Path::Copy, Relaxed);
    }

    fn count(&self, outcome: Outcome) {
        self.probes[outcome as usize].fetch_add(1, Relaxed);
    }

    pub fn probes(&self, outcome: Outcome) -> u64 {
        self.probes[outcome as usize].load(Relaxed)
    }
}

/// `chartcache_send_path` and `chartcache_send_path_probes_total`.
#[derive(Debug)]
pub struct SendPathMetrics(pub Arc<SendPath>);

impl Collector for SendPathMetrics {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        {
            let mut m = enc.encode_descriptor(
                SEND_PATH,
                "1 on the path cached bodies of sendfile_threshold or more go out by now (sendfile or copy), chosen by measured throughput",
                None,
                MetricType::Gauge,
            )?;
            let now = self.0.current();
            for path in [Path::Sendfile, Path::Copy] {
                m.encode_family(&vec![("path", path.name())])?
                    .encode_gauge(&i64::from(path == now))?;
            }
        }
        let mut m = enc.encode_descriptor(
            SEND_PATH_PROBES,
            "Throughput probes between sendfile and copy, by outcome (kept, switched, aborted: the load dropped)",
            None,
            MetricType::Counter,
        )?;
        for outcome in Outcome::ALL {
            m.encode_family(&vec![("outcome", outcome.name())])?
                .encode_counter::<NoLabelSet, _, u64>(&self.0.probes(outcome), None)?;
        }
        Ok(())
    }
}

/// What one epoch's measurement leads to.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Step {
    /// The path the next epoch runs.
    pub path: Path,
    /// Set when a probe ended with this epoch.
    pub ended: Option<Ended>,
}

/// A finished (or aborted) probe.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Ended {
    pub outcome: Outcome,
    /// Responses/s on the path in use before the probe, and on the other one.
    pub current_rate: f64,
    pub other_rate: f64,
    /// Epochs the probe ran.
    pub epochs: usize,
    /// µs of process CPU per response, current and other path.
    pub cost: [f64; 2],
}

/// A probe under way: which epoch is next and what each arm served so far.
#[derive(Clone, Copy, Debug, Default)]
struct Probing {
    step: usize,
    /// Per arm (0: the current path), responses and seconds.
    sums: [(f64, f64); 2],
    /// Per arm, the process's CPU seconds.
    cpu: [f64; 2],
}

impl Probing {
    /// Whether epoch `step` of a probe runs the current path.
    fn on_current(step: usize) -> bool {
        let mirrored = (step / BLOCK) % 2 == 1;
        let inner = matches!(step % BLOCK, 0 | 3);
        inner != mirrored
    }

    fn rate(&self, arm: usize) -> f64 {
        let (n, s) = self.sums[arm];
        if s > 0.0 {
            n / s
        } else {
            0.0
        }
    }

    /// The other path's rate over the current one's.
    fn gain(&self) -> f64 {
        match self.rate(0) {
            r if r > 0.0 => self.rate(1) / r,
            _ => 1.0,
        }
    }
}

/// The decision logic, free of clocks and threads: fed one epoch at a time.
#[derive(Debug)]
pub struct Controller {
    current: Path,
    probing: Option<Probing>,
    /// Busy time since the last probe ended.
    busy: Duration,
    /// Quiet time since the last busy epoch (starts "long ago": the first busy
    /// epochs are a resume).
    quiet: Duration,
    /// After a resume: busy epochs seen (the first one, clients connecting, is not
    /// compared).
    resumed: Option<u32>,
    /// The rate the path in use served in the last probe that decided.
    reference: Option<f64>,
}

impl Default for Controller {
    fn default() -> Controller {
        Controller {
            current: Path::Sendfile,
            probing: None,
            busy: Duration::ZERO,
            quiet: RESUME_AFTER,
            resumed: None,
            reference: None,
        }
    }
}

impl Controller {
    pub fn current(&self) -> Path {
        self.current
    }

    /// One epoch ran for `elapsed` and completed `responses`: the path of the next one.
    pub fn epoch(&mut self, responses: u64, elapsed: Duration, cpu: Duration) -> Step {
        let secs = elapsed.as_secs_f64().max(1e-3);
        let busy = responses as f64 / secs >= BUSY_RATE;
        if let Some(mut p) = self.probing.take() {
            if !busy {
                self.quiet = elapsed;
                return self.end(Outcome::Aborted, &p);
            }
            let arm = usize::from(!Probing::on_current(p.step));
            p.sums[arm].0 += responses as f64;
            p.sums[arm].1 += secs;
            p.cpu[arm] += cpu.as_secs_f64();
            p.step += 1;
            if p.step % BLOCK == 0 {
                let blocks = p.step / BLOCK;
                let clear = (p.gain() - 1.0).abs() > CLEAR_GAIN;
                if blocks >= MAX_BLOCKS || (blocks >= MIN_BLOCKS && clear) {
                    return self.decide(&p);
                }
            }
            self.probing = Some(p);
            return self.step_of(Probing::on_current(p.step), None);
        }
        if !busy {
            self.quiet += elapsed;
            return self.step_of(true, None);
        }
        if self.quiet >= RESUME_AFTER {
            self.resumed = Some(0);
        }
        self.quiet = Duration::ZERO;
        self.busy += elapsed;
        let mut probe = self.busy >= PERIOD;
        match self.resumed {
            Some(0) => self.resumed = Some(1),
            Some(_) => {
                self.resumed = None;
                // The same clients as before serve about the rate measured last time;
                // other clients (or none measured yet) get a probe.
                let rate = responses as f64 / secs;
                probe |= self
                    .reference
                    .is_none_or(|r| (rate / r - 1.0).abs() > CHANGED);
            }
            None => {}
        }
        if probe {
            self.resumed = None;
            self.probing = Some(Probing::default());
            return self.step_of(Probing::on_current(0), None);
        }
        self.step_of(true, None)
    }

    fn step_of(&self, current: bool, ended: Option<Ended>) -> Step {
        let path = if current {
            self.current
        } else {
            self.current.other()
        };
        Step { path, ended }
    }

    fn decide(&mut self, p: &Probing) -> Step {
        let switch = match self.current {
            // Copying costs the server more CPU: only for a gain.
            Path::Sendfile => p.gain() > 1.0 + SWITCH_GAIN,
            Path::Copy => p.gain() >= 1.0,
        };
        if switch {
            let ended = self.end(Outcome::Switched, p).ended;
            self.current = self.current.other();
            self.reference = Some(p.rate(1));
            return self.step_of(true, ended);
        }
        self.reference = Some(p.rate(0));
        self.end(Outcome::Kept, p)
    }

    fn end(&mut self, outcome: Outcome, p: &Probing) -> Step {
        self.probing = None;
        self.busy = Duration::ZERO;
        let ended = Ended {
            outcome,
            current_rate: p.rate(0),
            other_rate: p.rate(1),
            epochs: p.step,
            cost: [0, 1].map(|a| p.cpu[a] / p.sums[a].0.max(1.0) * 1e6),
        };
        self.step_of(true, Some(ended))
    }
}

/// Worker 0's task: every [`EPOCH`], the responses all workers completed go to the
/// [`Controller`], and its path to `shared`. Ends with the worker's runtime.
pub async fn run(shared: Arc<SendPath>, metrics: Metrics) {
    let mut controller = Controller::default();
    let mut last = (std::time::Instant::now(), metrics.responses(), process_cpu());
    let mut applied = controller.current();
    loop {
        monoio::time::sleep(EPOCH).await;
        let now = (std::time::Instant::now(), metrics.responses(), process_cpu());
        let step = controller.epoch(
            now.1.saturating_sub(last.1),
            now.0 - last.0,
            now.2.saturating_sub(last.2),
        );
        last = now;
        // Written only on a change, so a path set from outside (tests) holds
        // until the controller changes its mind.
        if step.path != applied {
            shared.set(step.path);
            applied = step.path;
        }
        if let Some(ended) = step.ended {
            shared.count(ended.outcome);
            tracing::debug!(
                outcome = ended.outcome.name(),
                path = step.path.name(),
                rate = ended.current_rate.round(),
                other_rate = ended.other_rate.round(),
                epochs = ended.epochs,
                cost = ended.cost[0],
                other_cost = ended.cost[1],
                "send path probe"
            );
            if ended.outcome == Outcome::Switched {
                tracing::info!(
                    path = step.path.name(),
                    rate = ended.other_rate.round(),
                    previous_rate = ended.current_rate.round(),
                    "cached bodies now go out by {}: it served more responses per second in a probe",
                    step.path.name()
                );
            }
        }
    }
}

/// This process's CPU time (user + system, all threads).
fn process_cpu() -> Duration {
    // SAFETY: getrusage writes one rusage into the zeroed struct we own.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; RUSAGE_SELF needs no other argument.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

#[cfg(test)]
mod tests {
    use super::*;
    use Path::{Copy as C, Sendfile as S};

    const E: Duration = EPOCH;

    /// Feeds epochs whose rate (responses/s) depends on the path in use and the
    /// epoch's number.
    fn drive(c: &mut Controller, epochs: usize, rate: impl Fn(Path, usize) -> f64) -> Vec<Step> {
        let mut path = c.current();
        (0..epochs)
            .map(|i| {
                let n = (rate(path, i) * E.as_secs_f64()) as u64;
                let step = c.epoch(n, E, Duration::ZERO);
                path = step.path;
                step
            })
            .collect()
    }

    fn ended(steps: &[Step]) -> Vec<Ended> {
        steps.iter().filter_map(|s| s.ended).collect()
    }

    fn outcomes(steps: &[Step]) -> Vec<Outcome> {
        ended(steps).iter().map(|e| e.outcome).collect()
    }

    /// Copying serves `gain` times what sendfile does.
    fn copy_gain(gain: f64) -> impl Fn(Path, usize) -> f64 {
        move |p, _| if p == C { 20_000.0 * gain } else { 20_000.0 }
    }

    #[test]
    fn the_first_busy_epoch_starts_a_probe_in_the_documented_order() {
        let mut c = Controller::default();
        let steps = drive(&mut c, 17, |_, _| 20_000.0);
        let paths: Vec<Path> = steps.iter().map(|s| s.path).collect();
        // The first busy epoch (clients connecting) is not compared; the second
        // starts the probe: blocks of current, other, other, current, every other
        // one mirrored.
        let want = [S, S, C, C, S, C, S, S, C, S, C, C, S, C, S, S, C];
        assert_eq!(paths, want);
        assert!(ended(&steps).is_empty(), "no clear difference: all 4 blocks");
        let last = drive(&mut c, 1, |_, _| 20_000.0);
        assert_eq!(outcomes(&last), [Outcome::Kept], "equal rates keep sendfile");
        assert_eq!(ended(&last)[0].epochs, 16);
        assert_eq!(c.current(), S);
    }

    #[test]
    fn a_clear_gain_is_decided_after_two_blocks() {
        let mut c = Controller::default();
        // wrk -t1 here: 31.0k copied, 27.2k by sendfile.
        let rate = |p: Path, _| if p == C { 31_000.0 } else { 27_200.0 };
        let steps = drive(&mut c, 10, rate);
        assert_eq!(outcomes(&steps), [Outcome::Switched]);
        let e = ended(&steps)[0];
        assert_eq!((e.epochs, steps[9].path, c.current()), (8, C, C));
        assert!((e.other_rate - 31_000.0).abs() < 10.0, "{e:?}");
        assert!((e.current_rate - 27_200.0).abs() < 10.0, "{e:?}");
        // And a clear loss too: the load generator's 256 KiB reads.
        let mut c = Controller::default();
        let steps = drive(&mut c, 10, |p, _| if p == C { 35_300.0 } else { 46_600.0 });
        assert_eq!(outcomes(&steps), [Outcome::Kept]);
        assert_eq!(c.current(), S);
    }

    #[test]
    fn a_small_gain_takes_four_blocks_and_must_pass_the_margin() {
        let mut c = Controller::default();
        let steps = drive(&mut c, 18, copy_gain(1.05));
        assert_eq!(outcomes(&steps), [Outcome::Switched]);
        assert_eq!(ended(&steps)[0].epochs, 16);
        let mut c = Controller::default();
        let steps = drive(&mut c, 18, copy_gain(1.02));
        assert_eq!(outcomes(&steps), [Outcome::Kept], "2 % does not pay for the CPU");
        assert_eq!(c.current(), S);
    }

    #[test]
    fn a_steady_rise_of_the_load_does_not_pass_for_a_gain() {
        let mut c = Controller::default();
        // +1.5 % per epoch whatever the path (+27 % over the probe): the mirrored
        // blocks cancel it.
        let steps = drive(&mut c, 18, |_, i| 20_000.0 * 1.015f64.powi(i as i32));
        assert_eq!(outcomes(&steps), [Outcome::Kept]);
        let e = ended(&steps)[0];
        assert!((e.other_rate / e.current_rate - 1.0).abs() < 0.01, "{e:?}");
    }

    #[test]
    fn the_next_probe_comes_after_a_period_of_busy_time() {
        let mut c = Controller::default();
        drive(&mut c, 10, copy_gain(1.15));
        assert_eq!(c.current(), C);
        let per_period = (PERIOD.as_millis() / E.as_millis()) as usize;
        let steps = drive(&mut c, per_period - 1, copy_gain(1.15));
        assert!(steps.iter().all(|s| s.path == C), "no probe before PERIOD");
        let steps = drive(&mut c, 10, copy_gain(1.15));
        assert_eq!(outcomes(&steps), [Outcome::Kept]);
        let on_other = steps.iter().filter(|s| s.path == S).count();
        assert_eq!(on_other, 4, "two blocks, half of their epochs on the other path");
    }

    #[test]
    fn copy_goes_back_to_sendfile_when_sendfile_serves_as_much() {
        let mut c = Controller::default();
        drive(&mut c, 10, copy_gain(1.2));
        assert_eq!(c.current(), C);
        // The clients changed: a quiet spell, then clients that read big pieces
        // (30k responses/s against the copy's 24k measured last).
        let quiet = (RESUME_AFTER.as_millis() / E.as_millis()) as usize;
        let steps = drive(&mut c, quiet, |_, _| 0.0);
        assert!(ended(&steps).is_empty());
        let steps = drive(&mut c, 18, |_, _| 30_000.0);
        assert_eq!(outcomes(&steps), [Outcome::Switched], "equal: the cheaper path");
        assert_eq!(c.current(), S);
    }

    #[test]
    fn a_quiet_epoch_aborts_the_probe_and_keeps_the_path() {
        let mut c = Controller::default();
        drive(&mut c, 4, |_, _| 20_000.0);
        let steps = drive(&mut c, 1, |_, _| 10.0);
        assert_eq!(outcomes(&steps), [Outcome::Aborted]);
        assert_eq!(steps[0].path, S);
        // Busy again at once: no new probe until PERIOD or a real quiet spell.
        let steps = drive(&mut c, 20, copy_gain(1.5));
        assert!(steps.iter().all(|s| s.path == S), "{steps:?}");
    }

    #[test]
    fn the_same_clients_after_a_quiet_spell_are_not_probed_again() {
        let mut c = Controller::default();
        let wrk = |p: Path, _| if p == C { 31_000.0 } else { 27_200.0 };
        drive(&mut c, 10, wrk);
        assert_eq!(c.current(), C);
        let quiet = (RESUME_AFTER.as_millis() / E.as_millis()) as usize;
        for _ in 0..3 {
            drive(&mut c, quiet, |_, _| 0.0);
            // 10 % off the copy's measured rate: the same clients.
            let steps = drive(&mut c, 24, |p, _| if p == C { 28_000.0 } else { 25_000.0 });
            assert!(steps.iter().all(|s| s.path == C && s.ended.is_none()), "{steps:?}");
        }
        // A quiet spell shorter than RESUME_AFTER is no resume either way.
        drive(&mut c, 1, |_, _| 0.0);
        let steps = drive(&mut c, 3, |_, _| 60_000.0);
        assert!(steps.iter().all(|s| s.path == C), "{steps:?}");
        // Clients at another rate after a quiet spell (the copy 23 % off) are probed.
        drive(&mut c, quiet, |_, _| 0.0);
        let steps = drive(&mut c, 10, |p, _| if p == C { 24_000.0 } else { 40_000.0 });
        assert_eq!(outcomes(&steps), [Outcome::Switched]);
        assert_eq!(c.current(), S);
    }

    #[test]
    fn a_server_that_is_never_busy_never_probes() {
        let mut c = Controller::default();
        let steps = drive(&mut c, 400, |_, _| BUSY_RATE * 0.9);
        assert!(steps.iter().all(|s| s.path == S && s.ended.is_none()));
    }

    #[test]
    fn the_shared_choice_and_its_metrics() {
        let shared = SendPath::new();
        assert!(shared.sendfile());
        shared.set(C);
        shared.count(Outcome::Switched);
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(SendPathMetrics(shared.clone())));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        assert!(out.contains("chartcache_send_path{path=\"copy\"} 1"), "{out}");
        assert!(out.contains("chartcache_send_path{path=\"sendfile\"} 0"), "{out}");
        assert!(out.contains("chartcache_send_path_probes_total{outcome=\"switched\"} 1"), "{out}");
        assert!(process_cpu() > Duration::ZERO);
    }
}
