//! `GET /debug/pprof/profile?seconds=N`: the pull convention Parca and Pyroscope scrape and
//! `go tool pprof http://HOST:PORT/debug/pprof/profile` reads. A system-wide on-CPU profile
//! with kernel and user stacks (profile's sampler, the idle tasks left out as Go's CPU
//! profiles leave out idle time), answered as a gzipped profile.proto.
//!
//! The sampler is loaded for the request only and detached when it ends, so nothing stays
//! loaded between profiles, and it runs on a blocking thread of its own: the serve loop keeps
//! answering /metrics while a profile is taken. One profile at a time: each loads a perf
//! event per CPU, and two would only halve each other's budget.

use std::{
    collections::HashSet,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Result, anyhow};
use clap::{Args as _, FromArgMatches as _};
use tracer_common::profile::{IDLE_EXCLUDE, ProfileConfig};

use super::http::Response;
use crate::{
    pprof::{self, PprofKind},
    stacks::{self, RawStack, Symbols, Unit},
    tools::profile::{SampleArgs, Sampler},
};

pub const PATH: &str = "/debug/pprof/profile";
/// Go's net/http/pprof default.
const DEFAULT_SECONDS: u64 = 30;
const MAX_SECONDS: u64 = 300;
/// Near Go's 100 Hz, off the round number so sampling does not run in lockstep with timers.
const DEFAULT_HZ: u64 = 99;
/// Every CPU is sampled: above this the sampling costs more than it tells.
const MAX_HZ: u64 = 1000;

/// Set while a profile is being taken (until its sampler is detached).
static RUNNING: AtomicBool = AtomicBool::new(false);

/// What the query string asks for.
#[derive(Debug, PartialEq)]
struct Params {
    seconds: u64,
    pid: Option<u32>,
    kthreads: bool,
    hz: u64,
}

/// Reads `seconds`, `pid`, `kthreads` and `hz`; other parameters are ignored (as Go's handler
/// ignores them). Err is the one-line reason for a 400.
fn parse(query: &str) -> Result<Params, String> {
    let mut params = Params {
        seconds: DEFAULT_SECONDS,
        pid: None,
        kthreads: false,
        hz: DEFAULT_HZ,
    };
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let number = |max: u64| value.parse::<u64>().ok().filter(|n| (1..=max).contains(n));
        match key {
            "seconds" => {
                params.seconds = number(MAX_SECONDS).ok_or_else(|| {
                    format!("seconds={value}: the profile lasts 1 to {MAX_SECONDS} seconds")
                })?
            }
            "hz" => {
                params.hz = number(MAX_HZ).ok_or_else(|| {
                    format!("hz={value}: the sampling frequency is 1 to {MAX_HZ} Hz per CPU")
                })?
            }
            "pid" => {
                let pid = number(u64::from(u32::MAX))
                    .ok_or_else(|| format!("pid={value}: not a process id"))?
                    as u32;
                if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                    return Err(format!("pid={pid}: no such process"));
                }
                params.pid = Some(pid);
            }
            "kthreads" => {
                params.kthreads = match value {
                    "1" | "true" => true,
                    "0" | "false" => false,
                    _ => return Err(format!("kthreads={value}: 1 for kernel threads only, or 0")),
                }
            }
            _ => {}
        }
    }
    if params.pid.is_some() && params.kthreads {
        return Err(
            "pid and kthreads=1 exclude each other (a process is not a kernel thread)".into(),
        );
    }
    Ok(params)
}

/// Releases the one-at-a-time slot when the profile's thread is done with the sampler.
struct Claim;

impl Claim {
    fn take() -> Option<Self> {
        RUNNING
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
            .then_some(Claim)
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        RUNNING.store(false, Ordering::Release);
    }
}

/// Tells the profile's thread to stop when the request's task is dropped (serve shutting
/// down), so that the sampler is detached at once and the exit is not held up. A client that
/// disconnects is not seen until the answer is written: its profile runs to the end.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// The answer to a request for `PATH` (authentication already passed).
pub async fn answer(method: &str, query: &str) -> Response {
    if method != "GET" {
        return Response::text(405, "only GET: the profile is sampled for seconds=N\n");
    }
    let params = match parse(query) {
        Ok(params) => params,
        Err(why) => return Response::text(400, format!("{why}\n")),
    };
    let Some(claim) = Claim::take() else {
        return Response::text(
            429,
            "a profile is already being taken (one at a time): retry when it ends\n",
        );
    };
    let cancel = Arc::new(AtomicBool::new(false));
    let _cancel_on_drop = CancelOnDrop(cancel.clone());
    let job = tokio::task::spawn_blocking(move || {
        let result = take_profile(&params, &cancel);
        drop(claim);
        result
    });
    match job.await {
        Ok(Ok(body)) => Response {
            status: 200,
            content_type: "application/octet-stream",
            body: body.into(),
        },
        Ok(Err(e)) => Response::text(500, format!("cannot take the profile: {e:#}\n")),
        Err(_) => Response::text(500, "the profile's thread failed\n"),
    }
}

/// profile's sampler options at `hz`, everything else at its default.
fn sample_args(hz: u64) -> Result<SampleArgs> {
    let command = SampleArgs::augment_args(clap::Command::new("serve"));
    let matches = command
        .try_get_matches_from(["serve", "-F", &hz.to_string()])
        .map_err(|e| anyhow!("sampler options (build bug): {e}"))?;
    SampleArgs::from_arg_matches(&matches).map_err(|e| anyhow!("sampler options (build bug): {e}"))
}

/// Samples for `params.seconds` on this (blocking) thread, then detaches and encodes.
fn take_profile(params: &Params, cancel: &AtomicBool) -> Result<Vec<u8>> {
    let sample = sample_args(params.hz)?;
    let config = ProfileConfig {
        tgid: params.pid.unwrap_or(0),
        kthreads_only: params.kthreads.into(),
        idle: IDLE_EXCLUDE,
        // Complete user stacks without frame pointers, as `profile --call-graph dwarf`.
        copy_user_stacks: 1,
        ..ProfileConfig::DEFAULT
    };
    let wall_started = SystemTime::now();
    let mut sampler = Sampler::start("serve", &sample, config, false)?;
    let mut symbols = Symbols::new().recording_origins(true);
    let deadline = sampler.started + Duration::from_secs(params.seconds);
    // User symbols are read every second while sampling, as profile does: a process that
    // exits before the end still has its frames named.
    let mut warmed: HashSet<(u32, i32)> = HashSet::new();
    let mut next_warm = Instant::now() + Duration::from_secs(1);
    loop {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        if cancel.load(Ordering::Acquire) {
            return Err(anyhow!("the request went away"));
        }
        std::thread::sleep((deadline - now).min(Duration::from_millis(100)));
        sampler.drain_user_stacks();
        if Instant::now() >= next_warm {
            next_warm += Duration::from_secs(1);
            sampler.prefetch_new_user_stacks(&mut symbols, &mut warmed);
        }
    }
    sampler.stop_sampling()?;
    let raws: Vec<RawStack> = sampler
        .snapshot()
        .iter()
        .map(|(key, &value)| sampler.stack_map.raw(key, value))
        .collect();
    let resolved = symbols.resolve_all(&raws);
    let lines = stacks::folded(&resolved, Unit::Samples);
    let mut what = vec!["all CPUs".to_string()];
    what.extend(params.pid.map(|pid| format!("PID {pid}")));
    if params.kthreads {
        what.push("kernel threads".into());
    }
    let title = format!(
        "serve {PATH}: {}, not idle, {} at {} Hz for {} s",
        what.join(", "),
        sampler.event,
        params.hz,
        params.seconds
    );
    Ok(pprof::gzipped(
        &lines,
        PprofKind::Samples { hz: params.hz },
        &title,
        symbols.origins(),
        wall_started,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_defaults_bounds_and_reasons() {
        assert_eq!(
            parse(""),
            Ok(Params {
                seconds: 30,
                pid: None,
                kthreads: false,
                hz: 99
            })
        );
        let p = parse("seconds=3&hz=49&kthreads=1&debug=1").unwrap();
        assert_eq!((p.seconds, p.hz, p.kthreads), (3, 49, true));
        assert_eq!(
            parse(&format!("pid={}", std::process::id())).unwrap().pid,
            Some(std::process::id())
        );
        for bad in [
            "seconds=0",
            "seconds=301",
            "seconds=abc",
            "seconds=",
            "hz=0",
            "hz=5000",
            "kthreads=yes",
            "pid=0",
            "pid=x",
        ] {
            let why = parse(bad).unwrap_err();
            assert!(why.starts_with(bad), "{bad}: {why}");
        }
        assert!(
            parse("pid=4294967295")
                .unwrap_err()
                .contains("no such process")
        );
        assert!(parse(&format!("pid={}&kthreads=1", std::process::id())).is_err());
    }
}
