//! For test targets on their own harness (`harness = false`, libtest-mimic: the
//! same flags and `test result:` line as libtest) whose tests need an external
//! tool. A test that cannot run is reported *ignored*, with the reason on
//! stderr, never passed; under CI it runs and fails, because `.ci/run`
//! provides every tool.
#![allow(dead_code)]

use libtest_mimic::{Arguments, Failed, Trial};

/// `CI` set to anything but empty, `0` or `false` (CI runners set `CI=true`;
/// `.ci/run` sets it when the runner did not).
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !matches!(v.as_str(), "" | "0" | "false"))
}

/// A named test of such a target.
pub type Test = (&'static str, fn() -> Result<(), Failed>);

/// Runs `tests`, which need `tool`, and exits. `missing` says why `tool`
/// cannot be used here (`None`: it can); it is asked once, not for `--list`.
/// Missing: the tests are ignored (so `--include-ignored` runs them, and they
/// fail at once with the reason), or, under CI, fail at once.
pub fn run_needing(tool: &str, missing: impl FnOnce() -> Option<String>, tests: Vec<Test>) -> ! {
    let args = Arguments::from_args();
    let missing = if args.list { None } else { missing() };
    let ci = in_ci();
    if let Some(reason) = &missing {
        if ci {
            eprintln!("{tool} is missing under CI, so these tests fail: {reason}");
        } else {
            eprintln!("SKIPPED (reported as ignored): {tool} is missing: {reason}");
        }
    }
    let ignore = missing.is_some() && !ci;
    let trials = tests
        .into_iter()
        .map(|(name, test)| {
            let missing = missing
                .as_ref()
                .map(|reason| format!("{tool} is missing: {reason}"));
            Trial::test(name, move || match missing {
                Some(message) => Err(message.into()),
                None => test(),
            })
            .with_ignored_flag(ignore)
        })
        .collect();
    libtest_mimic::run(&args, trials).exit()
}
