//! serve's `/debug/pprof/profile`: Go's own pprof fetches a profile over HTTP while a hot loop
//! runs and ranks the loop's function first; a second profile while one runs is refused, bad
//! parameters get 400, /metrics keeps answering during the profile, and the sampler is
//! detached once the profile is served.

use std::{
    process::Command,
    thread,
    time::{Duration, Instant},
};

use libtest_mimic::{Failed, Trial};

use crate::{
    common::{GO_PPROF, Need, Workload, emulated, ensure, fail, scaled, trial},
    serve::{TempDir, http_get, serve},
};

const HOT: &str = "tracer_workload_hot_function";

pub fn tests() -> Vec<Trial> {
    vec![
        trial(
            "serve_pprof::go_pprof_fetches_a_profile_with_the_hot_loop_on_top",
            &[Need::Root],
            go_pprof_fetch,
        ),
        trial(
            "serve_pprof::profile_is_behind_basic_auth",
            &[Need::Root],
            behind_basic_auth,
        ),
    ]
}

/// With basic auth in the web config, the profile needs the password as /metrics does: none
/// or a wrong one gets 401 before anything loads; Go's pprof with it in the URL gets the
/// profile.
fn behind_basic_auth() -> Result<(), Failed> {
    let dir = TempDir::new("pprof-auth")?;
    // Cost 4: bcrypt's minimum, so the check is quick under emulation too.
    let hash = bcrypt::hash("s3cret", 4).map_err(|e| fail(e.to_string()))?;
    let web = dir.write(
        "web.yml",
        &format!("basic_auth_users:\n  parca: '{hash}'\n"),
    )?;
    let (tool, addr) = serve(&["--web.config.file", &web])?;
    let held_before = bpf_programs_held(tool.pid())?;
    let (status, _) = http_get(&addr, "/debug/pprof/profile?seconds=1", None)?;
    ensure(status == 401, || {
        format!("the profile without a password: HTTP {status}, expected 401")
    })?;
    ensure(bpf_programs_held(tool.pid())? == held_before, || {
        "an unauthorized request loaded the sampler".to_string()
    })?;
    for (user, wanted) in [("parca:wrong", false), ("parca:s3cret", true)] {
        let fetched = pprof_top(
            &format!("http://{user}@{addr}/debug/pprof/profile?seconds=1"),
            &dir,
        );
        ensure(fetched.is_ok() == wanted, || match &fetched {
            Ok(_) => format!("pprof as {user} got a profile"),
            Err(e) => format!("pprof as {user}: {e:?}"),
        })?;
    }
    Ok(())
}

/// BPF program descriptors `pid` holds: its sampler's perf-event programs come and go with it.
fn bpf_programs_held(pid: u32) -> Result<usize, Failed> {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map_err(|e| fail(format!("/proc/{pid}/fd: {e}")))?;
    Ok(fds
        .flatten()
        .filter(|fd| {
            std::fs::read_link(fd.path())
                .is_ok_and(|target| target.to_string_lossy() == "anon_inode:bpf-prog")
        })
        .count())
}

/// `pprof -top` of `url`, fetched by pprof itself (saved profiles go to `dir`).
fn pprof_top(url: &str, dir: &TempDir) -> Result<String, Failed> {
    let out = Command::new(GO_PPROF)
        .args([
            "-top",
            "-sample_index=samples",
            "-nodecount=5",
            "-timeout=600",
            url,
        ])
        .env("PPROF_TMPDIR", dir.path())
        .output()
        .map_err(|e| fail(format!("{GO_PPROF}: {e} (cargo xtask setup builds it)")))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure(out.status.success(), || {
        format!(
            "pprof -top {url} failed: {}{text}",
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    Ok(text)
}

/// The first row of `pprof -top`: (flat%, function name).
fn top_row(text: &str) -> Result<(f64, String), Failed> {
    let row = text
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("flat"))
        .nth(1)
        .ok_or_else(|| fail(format!("no rows in pprof -top:\n{text}")))?;
    let fields: Vec<&str> = row.split_whitespace().collect();
    let pct = fields
        .get(1)
        .and_then(|p| p.trim_end_matches('%').parse().ok())
        .ok_or_else(|| fail(format!("no flat% in: {row}")))?;
    Ok((pct, fields.get(5..).unwrap_or_default().join(" ")))
}

fn go_pprof_fetch() -> Result<(), Failed> {
    let (tool, addr) = serve(&[])?;
    let serve_pid = tool.pid();
    let held_before = bpf_programs_held(serve_pid)?;
    let dir = TempDir::new("pprof")?;

    // Bad parameters are refused at once, before anything loads.
    for (query, reason) in [
        ("seconds=0", "seconds=0: the profile lasts 1 to 300 seconds"),
        (
            "seconds=301",
            "seconds=301: the profile lasts 1 to 300 seconds",
        ),
        (
            "seconds=abc",
            "seconds=abc: the profile lasts 1 to 300 seconds",
        ),
        (
            "hz=100000",
            "hz=100000: the sampling frequency is 1 to 1000 Hz",
        ),
    ] {
        let (status, body) = http_get(&addr, &format!("/debug/pprof/profile?{query}"), None)?;
        ensure(status == 400 && body.starts_with(reason), || {
            format!("?{query}: HTTP {status} {body:?}, expected 400 {reason:?}")
        })?;
    }

    // The hot loop outlasts both profiles, however slowly the emulator loads the sampler.
    let hot_seconds = if emulated().is_some() { "120" } else { "30" };
    let mut workload = Workload::spawn(&["hot", hot_seconds])?;
    workload.go();
    let url = format!("http://{addr}/debug/pprof/profile?seconds=3");
    let fetch = {
        let (url, dir_path) = (url.clone(), dir.path().to_path_buf());
        thread::spawn(move || {
            let out = Command::new(GO_PPROF)
                .args([
                    "-top",
                    "-sample_index=samples",
                    "-nodecount=5",
                    "-timeout=600",
                    &url,
                ])
                .env("PPROF_TMPDIR", &dir_path)
                .output();
            out.map_err(|e| format!("{GO_PPROF}: {e} (cargo xtask setup builds it)"))
        })
    };

    // Once the sampler is loaded, the profile is running: a second one is refused and
    // /metrics answers as usual.
    let loaded_by = Instant::now() + scaled(Duration::from_secs(20));
    while bpf_programs_held(serve_pid)? <= held_before {
        ensure(Instant::now() < loaded_by, || {
            "the profile's sampler never loaded".to_string()
        })?;
        ensure(!fetch.is_finished(), || {
            "pprof finished before the sampler was seen loaded".to_string()
        })?;
        thread::sleep(Duration::from_millis(20));
    }
    let (status, body) = http_get(&addr, "/debug/pprof/profile?seconds=1", None)?;
    ensure(status == 429 && body.contains("one at a time"), || {
        format!("a second profile while one runs: HTTP {status} {body:?}, expected 429")
    })?;
    let scrape_started = Instant::now();
    let (status, metrics) = http_get(&addr, "/metrics", None)?;
    let took = scrape_started.elapsed();
    ensure(
        status == 200 && metrics.contains("tracer_programs_attached"),
        || format!("/metrics during a profile: HTTP {status}"),
    )?;
    ensure(took <= scaled(Duration::from_secs(1)), || {
        format!("/metrics took {took:?} during a profile")
    })?;

    let out = fetch
        .join()
        .map_err(|_| fail("pprof thread panicked"))?
        .map_err(fail)?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure(out.status.success(), || {
        format!(
            "pprof -top {url} failed: {}{text}",
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    eprintln!("pprof -top {url}:\n{text}");
    let (_, top) = top_row(&text)?;
    ensure(top == HOT, || {
        format!("pprof's top function of the system-wide profile is {top}, not {HOT}")
    })?;
    ensure(bpf_programs_held(serve_pid)? == held_before, || {
        "the profile's sampler is still loaded after the profile was served".to_string()
    })?;

    // ?pid= keeps the workload's samples only: nearly all in its hot function.
    let text = pprof_top(
        &format!(
            "http://{addr}/debug/pprof/profile?seconds=2&hz=199&pid={}",
            workload.pid
        ),
        &dir,
    )?;
    let (pct, top) = top_row(&text)?;
    ensure(top == HOT && pct >= 80.0, || {
        format!(
            "the profile of PID {}: {top} {pct}% first, expected {HOT} >= 80%:\n{text}",
            workload.pid
        )
    })?;
    ensure(!workload.finished(), || {
        "the hot loop ended before the profiles did (raise its length)".to_string()
    })?;
    ensure(bpf_programs_held(serve_pid)? == held_before, || {
        "the profile's sampler is still loaded after the second profile".to_string()
    })?;
    Ok(())
}
