//! What a test run says about itself: libtest's tallies summed over stages, each test's wall
//! time (from when its result line arrived), each stage's time, and the closing report —
//! a stage table, the slowest tests, the time against the budget — printed and written as
//! target/test-summary.json so a later run or a script can compare.

use std::{
    collections::HashMap,
    fmt::Write as _,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::Result;
use serde_json::json;

use crate::util::{repo_root, target_dir};

#[derive(Clone, Default)]
pub struct Tally {
    pub passed: u64,
    pub failed: u64,
    pub skipped: u64,
    /// "STAGE: TEST" for each failed test, for the closing summary (a stage's own output
    /// may be long past by then).
    pub failures: Vec<String>,
    /// (stage, test, seconds) of every test whose run could be timed.
    pub times: Vec<(String, String, f64)>,
}

/// How much of a failed test's message its summary line keeps.
const MESSAGE_CHARS: usize = 400;

impl Tally {
    /// Adds up libtest's "test result: ok. 3 passed; 0 failed; 1 ignored; ..." lines, and
    /// notes the names in the "failures:" list before each, labelled with `stage` and followed
    /// by the first line of the test's "---- NAME ----" message (CI shows only the tail of a
    /// run's output, so the summary line must say why).
    pub fn add_libtest(&mut self, stage: &str, output: &str) {
        let mut listed: Vec<&str> = Vec::new();
        let mut messages: HashMap<&str, String> = HashMap::new();
        let mut reading: Option<&str> = None;
        for line in output.lines().map(|l| l.trim_end_matches('\r')) {
            if let Some(name) = line
                .strip_prefix("---- ")
                .and_then(|l| l.strip_suffix(" ----"))
            {
                reading = Some(name.strip_suffix(" stdout").unwrap_or(name));
                continue;
            }
            if let Some(name) = reading.filter(|_| !line.trim().is_empty()) {
                messages
                    .entry(name)
                    .or_insert_with(|| line.trim().chars().take(MESSAGE_CHARS).collect());
            }
            if line == "failures:" {
                listed.clear();
                reading = None;
            } else if let Some(name) = line.strip_prefix("    ") {
                if !name.contains(' ') && !name.is_empty() {
                    listed.push(name);
                }
            } else if line.starts_with("test result:") {
                self.failures
                    .extend(listed.drain(..).map(|name| match messages.get(name) {
                        Some(why) => format!("{stage}: {name} — {why}"),
                        None => format!("{stage}: {name}"),
                    }));
            } else if !line.is_empty() {
                listed.clear();
            }
        }
        for line in output
            .lines()
            .map(|l| l.trim_end_matches('\r'))
            .filter(|l| l.starts_with("test result:"))
        {
            let count = |word: &str| -> u64 {
                line.split(';')
                    .find_map(|part| {
                        let part = part
                            .trim()
                            .trim_start_matches("test result: ok.")
                            .trim_start_matches("test result: FAILED.");
                        part.trim()
                            .strip_suffix(word)
                            .and_then(|n| n.trim().parse().ok())
                    })
                    .unwrap_or(0)
            };
            self.passed += count("passed");
            self.failed += count("failed");
            self.skipped += count("ignored");
        }
    }

    /// Adds another tally (a guest's, a stage's) to this one.
    pub fn absorb(&mut self, other: Tally) {
        self.passed += other.passed;
        self.failed += other.failed;
        self.skipped += other.skipped;
        self.failures.extend(other.failures);
        self.times.extend(other.times);
    }

    /// One failure that is not a test's (a guest that never reported, a stage that broke).
    pub fn broken(stage: &str, why: String) -> Tally {
        Tally {
            failed: 1,
            failures: vec![format!("{stage}: {why}")],
            ..Default::default()
        }
    }
}

/// What a `--test-threads 1` run's output says of its tests, read as it arrives: each test's
/// wall time and result, the messages failed tests announced, and the test still running.
/// libtest prints "test NAME ... " when a test starts and its result when it ends, so a test
/// ran from the previous result to its own. A test's output or a kernel message can come
/// between the two, and the result then stands on a later line of its own.
#[derive(Default)]
pub struct TestTimer {
    last_end: f64,
    /// The test that was announced but has not finished.
    pub pending: Option<String>,
    /// Every test that finished, in order, with its run time in seconds.
    pub times: Vec<(String, f64)>,
    /// Passed, failed and skipped counts of the finished tests (no failure names).
    pub tally: Tally,
    pub failed: Vec<String>,
    /// (test, first 400 characters of its message) from `FAILED_MARK` lines.
    pub messages: Vec<(String, String)>,
}

/// The marker a test prints when it fails, with its message (tracer/tests/integration
/// common.rs), so the reason is in the output even if the run never gets to libtest's closing
/// list (a guest that dies or is stopped).
pub const FAILED_MARK: &str = "==test-failed== ";

impl TestTimer {
    /// Feeds one line of output that arrived `at` seconds after the run started.
    pub fn line(&mut self, at: f64, line: &str) {
        let line = line.trim_end_matches('\r');
        if let Some((name, why)) = line
            .strip_prefix(FAILED_MARK)
            .and_then(|l| l.split_once(": "))
        {
            self.messages
                .push((name.to_string(), why.chars().take(400).collect()));
        } else if let Some((name, result)) = line
            .strip_prefix("test ")
            .and_then(|l| l.split_once(" ..."))
        {
            let name = name.trim().to_string();
            if !self.end(&name, result.trim(), at) {
                self.pending = Some(name);
            }
        } else if let Some(name) = self.pending.clone() {
            self.end(&name, line.trim(), at);
        } else if line.starts_with("running ") && line.ends_with(" tests") {
            // libtest's "running N tests": the first test starts here, after the binary's
            // own start (a guest's doctor check comes before it).
            self.last_end = at;
        }
    }

    /// Ends `name` if `result` is a result word; false if it is not.
    fn end(&mut self, name: &str, result: &str, at: f64) -> bool {
        let counter = match result.split([' ', ',']).next().unwrap_or("") {
            "ok" => &mut self.tally.passed,
            "FAILED" => &mut self.tally.failed,
            "ignored" => &mut self.tally.skipped,
            _ => return false,
        };
        *counter += 1;
        if result.starts_with("FAILED") {
            self.failed.push(name.to_string());
        }
        self.times
            .push((name.to_string(), (at - self.last_end).max(0.0)));
        self.last_end = at;
        self.pending = None;
        true
    }

    /// The message `test` announced when it failed, if it did.
    pub fn message(&self, test: &str) -> Option<&str> {
        self.messages
            .iter()
            .find(|(n, _)| n == test)
            .map(|(_, why)| why.as_str())
    }
}

/// Wall time and tally of each stage, for the closing table.
pub struct Stages {
    start: Instant,
    started: SystemTime,
    last: Instant,
    /// The tally's counts when the previous stage ended.
    seen: (u64, u64, u64),
    rows: Vec<StageRow>,
}

struct StageRow {
    name: String,
    secs: f64,
    passed: u64,
    failed: u64,
    skipped: u64,
}

/// How many of the slowest tests the report names.
const SLOWEST: usize = 10;

impl Stages {
    pub fn new() -> Self {
        let now = Instant::now();
        Self {
            start: now,
            started: SystemTime::now(),
            last: now,
            seen: (0, 0, 0),
            rows: Vec::new(),
        }
    }

    /// Closes a stage: its time since the previous one ended, and what it added to `tally`.
    pub fn end(&mut self, name: &str, tally: &Tally) {
        let now = Instant::now();
        self.rows.push(StageRow {
            name: name.to_string(),
            secs: (now - self.last).as_secs_f64(),
            passed: tally.passed - self.seen.0,
            failed: tally.failed - self.seen.1,
            skipped: tally.skipped - self.seen.2,
        });
        self.seen = (tally.passed, tally.failed, tally.skipped);
        self.last = now;
    }

    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// The closing report (stage table, slowest tests, the budget line), printed before
    /// the failures and the tally line, and written as target/test-summary.json.
    pub fn report(&self, tally: &Tally, budget: Duration) -> Result<String> {
        let total = self.elapsed().as_secs_f64();
        let mut out = String::new();
        writeln!(
            out,
            "{:<14} {:>8} {:>7} {:>7} {:>8}",
            "stage", "seconds", "passed", "failed", "skipped"
        )?;
        for row in &self.rows {
            writeln!(
                out,
                "{:<14} {:>8.0} {:>7} {:>7} {:>8}",
                row.name, row.secs, row.passed, row.failed, row.skipped
            )?;
        }
        writeln!(
            out,
            "{:<14} {:>8.0} {:>7} {:>7} {:>8}",
            "total", total, tally.passed, tally.failed, tally.skipped
        )?;
        let slowest = slowest(&tally.times);
        if !slowest.is_empty() {
            writeln!(out, "slowest tests:")?;
            for (stage, test, secs) in &slowest {
                writeln!(out, "  {secs:>6.1} s  {stage:<12} {test}")?;
            }
        }
        let over = total - budget.as_secs_f64();
        if over > 0.0 {
            writeln!(
                out,
                "OVER BUDGET: took {} against a budget of {}: {} too long",
                minutes(total),
                minutes(budget.as_secs_f64()),
                minutes(over)
            )?;
        } else {
            writeln!(
                out,
                "took {} of a {} budget",
                minutes(total),
                minutes(budget.as_secs_f64())
            )?;
        }

        let summary = json!({
            "commit": commit(),
            "started": rfc3339(self.started),
            "total_seconds": round1(total),
            "budget_seconds": budget.as_secs(),
            "passed": tally.passed,
            "failed": tally.failed,
            "skipped": tally.skipped,
            "failures": tally.failures,
            "stages": self.rows.iter().map(|r| json!({
                "name": r.name,
                "seconds": round1(r.secs),
                "passed": r.passed,
                "failed": r.failed,
                "skipped": r.skipped,
            })).collect::<Vec<_>>(),
            "slowest": slowest.iter().map(|(stage, test, secs)| json!({
                "stage": stage,
                "test": test,
                "seconds": round1(*secs),
            })).collect::<Vec<_>>(),
        });
        let path = target_dir().join("test-summary.json");
        std::fs::create_dir_all(target_dir())?;
        std::fs::write(&path, serde_json::to_string_pretty(&summary)? + "\n")?;
        writeln!(out, "summary: {}", path.display())?;
        Ok(out)
    }
}

fn slowest(times: &[(String, String, f64)]) -> Vec<(String, String, f64)> {
    let mut sorted = times.to_vec();
    sorted.sort_by(|a, b| b.2.total_cmp(&a.2));
    sorted.truncate(SLOWEST);
    sorted
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn minutes(secs: f64) -> String {
    let secs = secs.round() as u64;
    format!("{} min {:02} s", secs / 60, secs % 60)
}

/// The checked-out commit's full hash ("unknown" outside a git checkout).
fn commit() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(repo_root())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// `2026-12-07T12:09:48Z`.
fn rfc3339(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// Year, month, day of a day count since 1970-01-01 (proleptic Gregorian; H. Hinnant's
/// days-to-civil algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_tests_are_named_with_their_stage() {
        let console = "test a ... ok\r\ntest b ... FAILED\n\nfailures:\n\n---- b stdout ----\n\
                       boom\n    indented output\n\nfailures:\n    b\r\n    c\n\n\
                       test result: FAILED. 1 passed; 2 failed; 0 ignored\n";
        let mut tally = Tally::default();
        tally.add_libtest("debian-6.1", console);
        assert_eq!((tally.passed, tally.failed), (1, 2));
        assert_eq!(tally.failures, ["debian-6.1: b — boom", "debian-6.1: c"]);
    }

    #[test]
    fn tests_are_timed_from_result_to_result() {
        let mut timer = TestTimer::default();
        for (at, line) in [
            (1.0, "running 3 tests"),
            (3.5, "test a ... ok"),
            (4.0, "test b ... some chatter"),
            (9.0, "ok"),
            (9.5, "test c ... ignored, no kprobes"),
        ] {
            timer.line(at, line);
        }
        assert_eq!(
            timer.times,
            [("a".into(), 2.5), ("b".into(), 5.5), ("c".into(), 0.5)]
        );
    }

    #[test]
    fn dates_are_rfc3339() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_796_645_388);
        assert_eq!(rfc3339(t), "2026-12-07T12:09:48Z");
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }
}
