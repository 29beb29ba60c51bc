//! The target's CPU time and memory, read from `/proc`.
//!
//! Owns: parsing `/proc/PID/stat` and `/proc/PID/status`, finding a process's descendants
//! (nginx and Varnish do their work in child processes), and before/after CPU snapshots.
//!
//! CPU is `utime + stime` of `/proc/PID/stat` for each process of the tree. For a process this
//! equals the sum over `/proc/PID/task/*/stat` plus the threads that already exited (io_uring's
//! `iou-wrk` helpers come and go), so nothing is lost when a thread ends mid-run.
//!
//! Invariants: parsing never panics on odd input (a `comm` with spaces or parentheses, a process
//! that vanished between listing and reading); a vanished process simply drops out.

use std::collections::{BTreeMap, BTreeSet};

/// The fields of `/proc/PID/stat` we use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    pub ppid: u32,
    /// User + system time, in clock ticks.
    pub cpu_ticks: u64,
}

/// Parses one `/proc/PID/stat` line. The command name (field 2) is in parentheses and may
/// contain spaces and `)`, so fields are counted from the last `)`.
pub fn parse_stat(line: &str) -> Option<Stat> {
    let rest = &line[line.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After `)`: f[0] = state (field 3), f[1] = ppid (4), f[11] = utime (14), f[12] = stime (15).
    let ppid = f.get(1)?.parse().ok()?;
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some(Stat {
        ppid,
        cpu_ticks: utime + stime,
    })
}

/// Reads a `kB` field such as `VmHWM` or `VmRSS` from `/proc/PID/status` text.
pub fn parse_status_kb(status: &str, field: &str) -> Option<u64> {
    status.lines().find_map(|l| {
        let rest = l.strip_prefix(field)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

fn read_stat(pid: u32) -> Option<Stat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`, 100 on Linux).
pub fn clock_ticks_per_sec() -> u64 {
    // SAFETY: sysconf has no preconditions and only reads a constant.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

/// `roots` plus, when `children` is set, all their descendants (from a scan of `/proc`).
pub fn process_tree(roots: &[u32], children: bool) -> BTreeSet<u32> {
    let mut set: BTreeSet<u32> = roots.iter().copied().collect();
    if !children {
        return set;
    }
    let mut parent_of: Vec<(u32, u32)> = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some(st) = read_stat(pid) {
                parent_of.push((pid, st.ppid));
            }
        }
    }
    descendants(&mut set, &parent_of);
    set
}

/// Adds to `set` every pid whose ancestor chain (through `parent_of`) reaches `set`.
fn descendants(set: &mut BTreeSet<u32>, parent_of: &[(u32, u32)]) {
    loop {
        let before = set.len();
        for &(pid, ppid) in parent_of {
            if set.contains(&ppid) {
                set.insert(pid);
            }
        }
        if set.len() == before {
            return;
        }
    }
}

/// CPU ticks per process at one instant.
#[derive(Debug, Clone, Default)]
pub struct CpuSnapshot {
    pub ticks: BTreeMap<u32, u64>,
}

impl CpuSnapshot {
    pub fn take(roots: &[u32], children: bool) -> Self {
        let ticks = process_tree(roots, children)
            .into_iter()
            .filter_map(|pid| read_stat(pid).map(|s| (pid, s.cpu_ticks)))
            .collect();
        Self { ticks }
    }

    /// Ticks used between `self` (before) and `after`. A process that appeared in between is
    /// counted whole; one that vanished is not counted.
    pub fn ticks_until(&self, after: &CpuSnapshot) -> u64 {
        after
            .ticks
            .iter()
            .map(|(pid, &t)| t.saturating_sub(self.ticks.get(pid).copied().unwrap_or(0)))
            .sum()
    }
}

/// Memory of the process tree, summed over processes (shared pages count once per process,
/// so for multi-process servers this is an upper bound).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Memory {
    pub rss_kb: u64,
    pub peak_rss_kb: u64,
    pub processes: usize,
}

pub fn memory(roots: &[u32], children: bool) -> Memory {
    let mut m = Memory::default();
    for pid in process_tree(roots, children) {
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
            continue;
        };
        m.processes += 1;
        m.rss_kb += parse_status_kb(&status, "VmRSS").unwrap_or(0);
        m.peak_rss_kb += parse_status_kb(&status, "VmHWM").unwrap_or(0);
    }
    m
}

/// This process's own CPU ticks (for the client-side cost per request).
pub fn self_cpu_ticks() -> u64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| parse_stat(&s))
        .map_or(0, |s| s.cpu_ticks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_odd_comm() {
        let line = "1234 (nginx: worker) S 1200 1200 1200 0 -1 4194624 100 0 0 0 57 31 0 0 20 0 1 0 100 1000 200 18446744073709551615";
        assert_eq!(
            parse_stat(line),
            Some(Stat {
                ppid: 1200,
                cpu_ticks: 88
            })
        );
        let tricky = "77 (a) b) (c) R 5 0 0 0 0 0 0 0 0 0 10 20 0 0";
        assert_eq!(
            parse_stat(tricky),
            Some(Stat {
                ppid: 5,
                cpu_ticks: 30
            })
        );
        assert_eq!(parse_stat("12 (x) S 1"), None);
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn status_fields() {
        let s = "Name:\tnginx\nVmHWM:\t   12345 kB\nVmRSS:\t    9000 kB\n";
        assert_eq!(parse_status_kb(s, "VmHWM"), Some(12345));
        assert_eq!(parse_status_kb(s, "VmRSS"), Some(9000));
        assert_eq!(parse_status_kb(s, "VmSwap"), None);
    }

    #[test]
    fn descendant_walk() {
        let mut set: BTreeSet<u32> = [10].into_iter().collect();
        // 12's parent 11 appears after it: needs a second pass.
        descendants(&mut set, &[(12, 11), (11, 10), (13, 1), (14, 12)]);
        assert_eq!(set.into_iter().collect::<Vec<_>>(), vec![10, 11, 12, 14]);
    }

    #[test]
    fn snapshot_delta() {
        let before = CpuSnapshot {
            ticks: [(1, 100), (2, 50), (3, 7)].into_iter().collect(),
        };
        let after = CpuSnapshot {
            ticks: [(1, 130), (2, 50), (4, 5)].into_iter().collect(),
        };
        assert_eq!(before.ticks_until(&after), 35);
    }

    #[test]
    fn reads_own_process() {
        let me = std::process::id();
        assert!(read_stat(me).is_some());
        let m = memory(&[me], false);
        assert_eq!(m.processes, 1);
        assert!(m.rss_kb > 0 && m.peak_rss_kb >= m.rss_kb);
        assert!(process_tree(&[1], true).len() > 1 || std::process::id() == 1);
    }
}
