//! `tracer flamegraph`: differential graphs from folded files with known counts, raw `perf
//! script` output of a real hot loop (perf on the same workload, no stackcollapse step),
//! bpftrace's stack maps, and bad input.

use std::{path::Path, process::Command};

use libtest_mimic::{Failed, Trial};

use crate::common::{
    DEADLINE, Need, TRACER, WORKLOAD, ensure, fail, go_pprof, output_within, run, scaled, trial,
};

pub fn tests() -> Vec<Trial> {
    vec![
        trial(
            "flamegraph::diff_colours_what_grew_and_shrank",
            &[],
            diff_colours,
        ),
        trial(
            "flamegraph::diff_negate_draws_what_vanished",
            &[],
            diff_negated,
        ),
        trial(
            "flamegraph::perf_script_output_names_the_hot_function",
            &[Need::Root, Need::Command("perf")],
            perf_script,
        ),
        trial(
            "flamegraph::bpftrace_stack_maps_render",
            &[Need::Root, Need::Command("bpftrace")],
            bpftrace_maps,
        ),
        trial(
            "flamegraph::profile_diff_against_an_earlier_run",
            &[Need::Root],
            profile_diff_against,
        ),
        trial(
            "flamegraph::pprof_of_a_folded_file_agrees_with_go_pprof",
            &[],
            pprof_of_folded,
        ),
        trial("flamegraph::bad_input", &[], bad_input),
    ]
}

fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("tracer-flamegraph-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir.join(name)
}

/// Every `<title>` of the SVG with the `fill` of the rectangle drawn after it.
fn frames(svg: &str) -> Vec<(String, String)> {
    svg.split("<title>")
        .skip(1)
        .filter_map(|part| {
            let (title, rest) = part.split_once("</title>")?;
            let fill = rest
                .split_once("fill=\"")
                .and_then(|(_, f)| f.split_once('"'))
                .map(|(f, _)| f.to_string())
                .unwrap_or_default();
            Some((title.to_string(), fill))
        })
        .collect()
}

fn frame<'a>(frames: &'a [(String, String)], name: &str) -> Option<&'a (String, String)> {
    frames
        .iter()
        .find(|(t, _)| t.starts_with(&format!("{name} (")))
}

/// BEFORE a=100 b=100, AFTER a=300 b=100: normalised to AFTER's 400, BEFORE is a=200 b=200, so
/// a grew by 25 points (red), b shrank by 25 (blue), their parent is unchanged.
fn diff_colours() -> Result<(), Failed> {
    let before = scratch("before.folded");
    let after = scratch("after.folded");
    let svg = scratch("diff.svg");
    std::fs::write(&before, "main;grows 100\nmain;shrinks 100\n")
        .map_err(|e| fail(e.to_string()))?;
    std::fs::write(&after, "main;grows 300\nmain;shrinks 100\n")
        .map_err(|e| fail(e.to_string()))?;
    let out = run(&[
        "flamegraph",
        "--diff",
        &before.display().to_string(),
        &after.display().to_string(),
        "--svg",
        &svg.display().to_string(),
    ]);
    ensure(out.status.success(), || {
        format!(
            "flamegraph --diff failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    let text = std::fs::read_to_string(&svg).map_err(|e| fail(e.to_string()))?;
    let frames = frames(&text);
    let grows = frame(&frames, "grows").ok_or_else(|| fail("no 'grows' frame"))?;
    let shrinks = frame(&frames, "shrinks").ok_or_else(|| fail("no 'shrinks' frame"))?;
    let main = frame(&frames, "main").ok_or_else(|| fail("no 'main' frame"))?;
    ensure(
        grows.0.contains("300 samples") && grows.0.contains("+25.00%"),
        || format!("grows: {grows:?}"),
    )?;
    ensure(
        shrinks.0.contains("100 samples") && shrinks.0.contains("-25.00%"),
        || format!("shrinks: {shrinks:?}"),
    )?;
    let rgb = |fill: &str| -> Option<(u32, u32, u32)> {
        let inner = fill.strip_prefix("rgb(")?.strip_suffix(')')?;
        let v: Vec<u32> = inner
            .split(',')
            .filter_map(|c| c.trim().parse().ok())
            .collect();
        (v.len() == 3).then(|| (v[0], v[1], v[2]))
    };
    let (r, g, b) = rgb(&grows.1).ok_or_else(|| fail(format!("grows fill {:?}", grows.1)))?;
    ensure(r > g && r > b, || {
        format!("grew but not red: {:?}", grows.1)
    })?;
    let (r, g, b) = rgb(&shrinks.1).ok_or_else(|| fail(format!("shrinks fill {:?}", shrinks.1)))?;
    ensure(b > r && b > g, || {
        format!("shrank but not blue: {:?}", shrinks.1)
    })?;
    ensure(main.0.contains("0.00%"), || {
        format!("main changed: {main:?}")
    })?;
    ensure(text.contains("Differential:"), || {
        "title does not say Differential".into()
    })?;
    Ok(())
}

/// BEFORE gone=200 stays=200, AFTER stays=400: the plain diff draws AFTER's shape, where `gone`
/// has no frame at all; `--negate` draws BEFORE's shape (AFTER scaled to its 400), so `gone`
/// is there with its 200 samples, 50 % of the graph, blue at -50 points, and `stays` red at
/// +50 — red still means grew.
fn diff_negated() -> Result<(), Failed> {
    let before = scratch("negate-before.folded");
    let after = scratch("negate-after.folded");
    std::fs::write(&before, "main;gone 200\nmain;stays 200\n").map_err(|e| fail(e.to_string()))?;
    std::fs::write(&after, "main;stays 400\n").map_err(|e| fail(e.to_string()))?;
    let draw = |negate: bool| -> Result<Vec<(String, String)>, Failed> {
        let svg = scratch(if negate { "negated.svg" } else { "plain.svg" });
        let (before, after, svg) = (
            before.display().to_string(),
            after.display().to_string(),
            svg.display().to_string(),
        );
        let mut argv = vec!["flamegraph", "--diff", &before, &after, "--svg", &svg];
        if negate {
            argv.insert(2, "--negate");
        }
        let out = run(&argv);
        ensure(out.status.success(), || {
            format!("{argv:?}: {}", String::from_utf8_lossy(&out.stderr))
        })?;
        let text = std::fs::read_to_string(&svg).map_err(|e| fail(e.to_string()))?;
        Ok(frames(&text))
    };
    let plain = draw(false)?;
    ensure(frame(&plain, "gone").is_none(), || {
        format!("the plain diff drew a frame for what vanished: {plain:?}")
    })?;
    let negated = draw(true)?;
    let gone =
        frame(&negated, "gone").ok_or_else(|| fail(format!("no 'gone' frame: {negated:?}")))?;
    let stays = frame(&negated, "stays").ok_or_else(|| fail("no 'stays' frame"))?;
    ensure(
        gone.0.contains("200 samples, 50.00%") && gone.0.contains("-50.00%"),
        || format!("gone: {gone:?}"),
    )?;
    ensure(stays.0.contains("+50.00%"), || format!("stays: {stays:?}"))?;
    let blue = |fill: &str| {
        let v: Vec<u32> = fill
            .trim_start_matches("rgb(")
            .trim_end_matches(')')
            .split(',')
            .filter_map(|c| c.trim().parse().ok())
            .collect();
        v.len() == 3 && v[2] > v[0] && v[2] > v[1]
    };
    ensure(blue(&gone.1), || {
        format!("vanished but not blue: {:?}", gone.1)
    })?;
    ensure(!blue(&stays.1), || format!("grew but blue: {:?}", stays.1))?;
    let refused = run(&["flamegraph", "--negate", &before.display().to_string()]);
    ensure(refused.status.code() == Some(2), || {
        format!("--negate without --diff: {:?}", refused.status)
    })
}

/// A folded file with known counts (hot 300, cold 100 under main, a comment line) through
/// `flamegraph --pprof` alone: no SVG on stdout, and Go's pprof reads the profile with hot
/// first at 75 % flat and main at 100 % cumulative (the root frame is a function, not a label).
fn pprof_of_folded() -> Result<(), Failed> {
    let folded = scratch("known.folded");
    let profile = scratch("known.pb.gz");
    std::fs::write(
        &folded,
        "# known counts\nmain;work;hot 300\nmain;cold 100\n",
    )
    .map_err(|e| fail(e.to_string()))?;
    let out = run(&[
        "flamegraph",
        &folded.display().to_string(),
        "--pprof",
        &profile.display().to_string(),
        "--count-name",
        "calls",
    ]);
    ensure(out.status.success() && out.stdout.is_empty(), || {
        format!(
            "flamegraph --pprof failed or wrote an SVG too: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    let top = go_pprof(&["-top", &profile.display().to_string()])?;
    // Rows: "flat flat% sum% cum cum% name".
    let rows: Vec<Vec<&str>> = top
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|f| f.len() == 6 && f[1].ends_with('%'))
        .collect();
    let row = |name: &str| rows.iter().find(|f| f[5] == name);
    ensure(rows.first().is_some_and(|f| f[5] == "hot"), || {
        format!("hot is not first in pprof -top:\n{top}")
    })?;
    ensure(
        row("hot").is_some_and(|f| f[0] == "300" && f[1] == "75.00%"),
        || format!("hot is not 300 (75%):\n{top}"),
    )?;
    ensure(
        row("main").is_some_and(|f| f[3] == "400" && f[4] == "100%"),
        || format!("main does not hold all 400:\n{top}"),
    )?;
    ensure(top.contains("calls"), || {
        format!("the sample type is not the --count-name:\n{top}")
    })?;
    Ok(())
}

/// perf records the workload's hot loop with call graphs; `perf script`'s raw text goes
/// straight into flamegraph, whose widest non-root frame must be the hot function.
fn perf_script() -> Result<(), Failed> {
    let data = scratch("perf.data");
    let record = output_within(
        Command::new("perf")
            .args(["record", "-q", "-F", "199", "-g", "-o"])
            .arg(&data)
            .args(["--", WORKLOAD, "hot", "1"]),
        scaled(DEADLINE),
    )?;
    ensure(record.status.success(), || {
        format!(
            "perf record failed: {}",
            String::from_utf8_lossy(&record.stderr)
        )
    })?;
    let script = output_within(
        Command::new("perf").args(["script", "-i"]).arg(&data),
        scaled(DEADLINE),
    )?;
    ensure(script.status.success() && !script.stdout.is_empty(), || {
        format!(
            "perf script failed: {}",
            String::from_utf8_lossy(&script.stderr)
        )
    })?;
    let text_path = scratch("perf.txt");
    std::fs::write(&text_path, &script.stdout).map_err(|e| fail(e.to_string()))?;
    widest_frame_is(&text_path, "tracer_workload_hot_function")
}

/// bpftrace counts the workload's user stacks at 99 Hz (`@[comm, ustack]`); its printout, as
/// bpftrace writes it at exit, renders with the hot function under the comm.
fn bpftrace_maps() -> Result<(), Failed> {
    // Ends after 50 of the workload's samples rather than after a fixed window: in CI's guests
    // a 3 s window once caught none of them (the host busy with the soak stage beside it).
    // The counter is deleted before exit so its map prints empty.
    let program = "profile:hz:99 /comm == \"tracer-workload\"/ { @[comm, ustack] = count(); \
                   @seen[0]++; if (@seen[0] >= 50) { delete(@seen[0]); exit(); } } \
                   interval:s:30 { exit(); }";
    let mut cmd = Command::new("bpftrace");
    cmd.args(["-e", program]);
    // Runs until dropped: under TCG bpftrace takes seconds to attach before it samples.
    let workload = HotLoop::start()?;
    let out = output_within(&mut cmd, scaled(DEADLINE));
    drop(workload);
    let out = out?;
    ensure(out.status.success(), || {
        format!("bpftrace failed: {}", String::from_utf8_lossy(&out.stderr))
    })?;
    let path = scratch("bpftrace.txt");
    std::fs::write(&path, &out.stdout).map_err(|e| fail(e.to_string()))?;
    widest_frame_is(&path, "tracer_workload_hot_function")
}

/// `profile --diff-against`: the earlier run spent its time elsewhere, so the workload's hot
/// function grew from nothing (red) in the differential graph of this run.
fn profile_diff_against() -> Result<(), Failed> {
    let before = scratch("earlier.folded");
    let svg = scratch("profile-diff.svg");
    std::fs::write(&before, "tracer-workload;main;an_old_hot_path 500\n")
        .map_err(|e| fail(e.to_string()))?;
    let workload = HotLoop::start()?;
    let pid = workload.0.id().to_string();
    let out = output_within(
        Command::new(TRACER).args([
            "profile",
            "-p",
            &pid,
            "-F",
            "99",
            "-d",
            "2",
            "--svg",
            &svg.display().to_string(),
            "--diff-against",
            &before.display().to_string(),
        ]),
        scaled(DEADLINE),
    );
    drop(workload);
    let out = out?;
    ensure(out.status.success(), || {
        format!(
            "profile --diff-against: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    let text = std::fs::read_to_string(&svg).map_err(|e| fail(e.to_string()))?;
    ensure(text.contains("differential against"), || {
        "title does not say differential".into()
    })?;
    let frames = frames(&text);
    let hot = frames
        .iter()
        .find(|(t, _)| t.starts_with("tracer_workload_hot_function"))
        .ok_or_else(|| fail("no tracer_workload_hot_function frame"))?;
    ensure(hot.1.starts_with("rgb(255,") && hot.0.contains("+"), || {
        format!("the hot function grew but is not red: {hot:?}")
    })?;
    let no_svg = run(&[
        "profile",
        "-d",
        "1",
        "--diff-against",
        &before.display().to_string(),
    ]);
    ensure(
        no_svg.status.code() == Some(2)
            && String::from_utf8_lossy(&no_svg.stderr).contains("add --svg FILE"),
        || format!("--diff-against without --svg: {:?}", no_svg.status),
    )
}

/// The workload's hot loop, running until dropped (then killed and reaped).
struct HotLoop(std::process::Child);

impl HotLoop {
    fn start() -> Result<Self, Failed> {
        Command::new(WORKLOAD)
            .args(["hot", "600"])
            .spawn()
            .map(Self)
            .map_err(|e| fail(format!("workload: {e}")))
    }
}

impl Drop for HotLoop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn widest_frame_is(input: &Path, function: &str) -> Result<(), Failed> {
    let svg = input.with_extension("svg");
    let out = run(&[
        "flamegraph",
        &input.display().to_string(),
        "--svg",
        &svg.display().to_string(),
    ]);
    ensure(out.status.success(), || {
        format!(
            "flamegraph {}: {}",
            input.display(),
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    let text = std::fs::read_to_string(&svg).map_err(|e| fail(e.to_string()))?;
    let share = |title: &str| -> f64 {
        title
            .rsplit_once(", ")
            .and_then(|(_, p)| p.trim_end_matches(')').trim_end_matches('%').parse().ok())
            .unwrap_or(0.0)
    };
    let hot = frames(&text)
        .into_iter()
        .filter(|(t, _)| t.starts_with(function))
        .map(|(t, _)| share(&t))
        .fold(0.0, f64::max);
    ensure(hot >= 50.0, || {
        format!("{function} has {hot}% of {} (want >= 50%)", input.display())
    })
}

fn bad_input() -> Result<(), Failed> {
    let junk = scratch("junk.folded");
    let empty = scratch("empty.folded");
    std::fs::write(&junk, "main;a 3\nmain;b 4\nthis is not a stack\n")
        .map_err(|e| fail(e.to_string()))?;
    std::fs::write(&empty, "").map_err(|e| fail(e.to_string()))?;
    let junk = junk.display().to_string();
    let empty = empty.display().to_string();
    let cases: [(&[&str], i32, &str); 5] = [
        (&["flamegraph", "/no/such/file.folded"], 2, "no such file"),
        (&["flamegraph", &empty], 1, "no stacks in it"),
        (&["flamegraph", &junk], 1, ":3: not a folded stack line"),
        (&["flamegraph", "--diff", &junk], 2, "give BEFORE and AFTER"),
        (
            &["flamegraph", &junk, "--svg", "/no/such/dir/x.svg"],
            1,
            "cannot write the flame graph",
        ),
    ];
    for (args, code, says) in cases {
        let out = output_within(Command::new(TRACER).args(args), DEADLINE)?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure(
            out.status.code() == Some(code) && stderr.lines().count() == 1 && stderr.contains(says),
            || {
                format!(
                    "{args:?}: exit {:?}, want {code} and one line with {says:?}: {stderr}",
                    out.status.code()
                )
            },
        )?;
    }
    Ok(())
}
