//! Rendering cost: a generated folded file of 1 M samples over 50 k distinct stacks (10-40
//! frames from a vocabulary of function names, shared prefixes as real call trees have, a
//! Zipf-skewed count per stack) turned into an SVG by `tracer flamegraph`, by inferno's own CLI
//! (`inferno-flamegraph`, the version tracer links, installed into target/tools when missing)
//! and into a pprof profile by `tracer flamegraph --pprof`. Wall time, CPU time (user + system)
//! and peak RSS per run, median of several interleaved rounds. FlameGraph's Perl
//! `flamegraph.pl` is a column only where it is installed: Debian does not package it.

use std::{
    collections::HashSet,
    fmt::Write as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, anyhow, bail};

use super::common::{RunTimes, median, release_bin};
use super::startup::quiet_timed;
use crate::{setup::tools_dir, util::repo_root};

const ROUNDS: usize = 5;
const STACKS: usize = 50_000;
const SAMPLES: u64 = 1_000_000;
/// The target: tracer's SVG rendering within this factor of inferno's CLI.
const TARGET: f64 = 1.2;

pub fn run() -> Result<()> {
    let dir = crate::util::target_dir().join("bench-flamegraph");
    std::fs::create_dir_all(&dir)?;
    let folded = dir.join("1m-samples-50k-stacks.folded");
    let text = generate();
    std::fs::write(&folded, &text)?;
    let inferno = ensure_inferno()?;
    let perl = which("flamegraph.pl");
    let tracer = release_bin("tracer");
    println!(
        "input: {} ({} stacks, {} samples, {:.1} MiB); {ROUNDS} rounds, interleaved, medians",
        folded.display(),
        STACKS,
        SAMPLES,
        text.len() as f64 / (1024.0 * 1024.0)
    );
    let svg = |name: &str| dir.join(name);
    let mut jobs: Vec<(String, Command)> = Vec::new();
    let mut cmd = Command::new(&tracer);
    cmd.arg("flamegraph")
        .arg(&folded)
        .arg("--svg")
        .arg(svg("tracer.svg"));
    jobs.push(("tracer flamegraph → SVG".into(), cmd));
    jobs.push((
        format!("inferno-flamegraph {} → SVG", inferno_version()?),
        to_file(&inferno, &folded, &svg("inferno.svg")),
    ));
    if let Some(perl) = &perl {
        jobs.push((
            "FlameGraph flamegraph.pl → SVG".into(),
            to_file(perl, &folded, &svg("flamegraph-pl.svg")),
        ));
    }
    let mut cmd = Command::new(&tracer);
    cmd.arg("flamegraph")
        .arg(&folded)
        .arg("--pprof")
        .arg(dir.join("tracer.pb.gz"));
    jobs.push(("tracer flamegraph --pprof → pprof".into(), cmd));
    let mut runs: Vec<Vec<RunTimes>> = vec![Vec::new(); jobs.len()];
    for _ in 0..ROUNDS {
        for (i, (_, cmd)) in jobs.iter_mut().enumerate() {
            runs[i].push(quiet_timed(cmd)?);
        }
    }
    let stats = |runs: &[RunTimes]| {
        (
            median(runs.iter().map(|r| r.wall).collect()),
            median(runs.iter().map(|r| r.cpu).collect()),
            median(runs.iter().map(|r| r.max_rss_mib).collect()),
        )
    };
    let (_, inferno_cpu, _) = stats(&runs[1]);
    println!(
        "{:<40} {:>8} {:>8} {:>10} {:>10} {:>10}",
        "", "wall s", "CPU s", "× inferno", "RSS MiB", "out KiB"
    );
    let outputs = [
        svg("tracer.svg"),
        svg("inferno.svg"),
        svg("flamegraph-pl.svg"),
        dir.join("tracer.pb.gz"),
    ];
    for (i, (name, _)) in jobs.iter().enumerate() {
        let (wall, cpu, rss) = stats(&runs[i]);
        let out = if perl.is_none() && i >= 2 {
            &outputs[i + 1]
        } else {
            &outputs[i]
        };
        let size = std::fs::metadata(out).map_or(f64::NAN, |m| m.len() as f64 / 1024.0);
        println!(
            "{name:<40} {wall:>8.2} {cpu:>8.2} {:>10.2} {rss:>10.1} {size:>10.0}",
            cpu / inferno_cpu
        );
    }
    if perl.is_none() {
        println!("FlameGraph flamegraph.pl: not run (not installed; Debian has no package for it)");
    }
    let (_, tracer_cpu, _) = stats(&runs[0]);
    let ratio = tracer_cpu / inferno_cpu;
    println!(
        "tracer SVG / inferno SVG CPU: {ratio:.2}× (target ≤ {TARGET}×: {})",
        if ratio <= TARGET { "met" } else { "MISSED" }
    );
    Ok(())
}

/// `sh -c 'exec PROGRAM IN > OUT'`: the peers write the SVG to standard output; exec keeps the
/// measured process the renderer itself.
fn to_file(program: &Path, input: &Path, output: &Path) -> Command {
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "exec \"$0\" \"$1\" > \"$2\""])
        .arg(program)
        .arg(input)
        .arg(output);
    cmd
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(program))
        .find(|p| p.is_file())
}

/// The inferno version in Cargo.lock: the renderer tracer links.
fn inferno_version() -> Result<String> {
    let lock = std::fs::read_to_string(repo_root().join("Cargo.lock"))?;
    lock.split("[[package]]")
        .find(|p| p.contains("name = \"inferno\"\n"))
        .and_then(|p| p.lines().find_map(|l| l.strip_prefix("version = ")))
        .map(|v| v.trim_matches('"').to_string())
        .ok_or_else(|| anyhow!("Cargo.lock has no inferno package"))
}

/// target/tools/bin/inferno-flamegraph at tracer's inferno version, installed from crates.io
/// when missing or of another version.
fn ensure_inferno() -> Result<PathBuf> {
    let version = inferno_version()?;
    let tools = tools_dir();
    let bin = tools.join("bin/inferno-flamegraph");
    // The CLI has no --version: a stamp beside it says which one was installed.
    let stamp = tools.join("inferno.stamp");
    let has = bin.is_file() && std::fs::read_to_string(&stamp).is_ok_and(|s| s == version);
    if !has {
        println!(
            "bench: installing inferno {version} into {}",
            tools.display()
        );
        let status = Command::new("cargo")
            .args(["install", "inferno", "--locked", "--force", "--version"])
            .arg(&version)
            .arg("--root")
            .arg(&tools)
            .status()
            .context("cannot run cargo install")?;
        if !status.success() {
            bail!("cargo install inferno {version} failed (crates.io must be reachable)");
        }
        std::fs::write(&stamp, &version)?;
    }
    Ok(bin)
}

/// A small deterministic generator (splitmix64), so every run renders the same file.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// The folded file: STACKS distinct stacks, each `comm;root;...;leaf COUNT`, counts summing to
/// SAMPLES with a Zipf (s = 1.1) skew over a shuffled order, every stack at least 1.
fn generate() -> String {
    let mut rng = Random(19);
    let modules = [
        "std::rt",
        "tokio::runtime",
        "hyper::proto",
        "serde_json::de",
        "app::handler",
        "app::db",
        "libc",
        "alloc::raw_vec",
        "core::ptr",
        "regex::exec",
        "[k]",
    ];
    let vocabulary: Vec<String> = (0..4000)
        .map(|i| format!("{}::fn_{i}_{}", modules[i % modules.len()], i * 7919 % 1000))
        .collect();
    let comms: Vec<String> = (0..16).map(|i| format!("worker-{i}")).collect();
    let mut seen = HashSet::new();
    let mut stacks: Vec<Vec<usize>> = Vec::with_capacity(STACKS);
    while stacks.len() < STACKS {
        let depth = 10 + rng.below(31);
        // Real call trees share their roots: start from a prefix of an earlier stack.
        let mut stack: Vec<usize> = match stacks.len() {
            0 => vec![rng.below(comms.len())],
            n => {
                let base = &stacks[rng.below(n)];
                base[..1 + rng.below(base.len().min(depth))].to_vec()
            }
        };
        while stack.len() < depth {
            // Frames near the root come from a small set (main loops), deeper ones from all.
            let span = (stack.len() * 100).min(vocabulary.len());
            stack.push(rng.below(span));
        }
        if seen.insert(stack.clone()) {
            stacks.push(stack);
        }
    }
    let weights: Vec<f64> = (0..STACKS)
        .map(|i| 1.0 / ((i + 1) as f64).powf(1.1))
        .collect();
    let total: f64 = weights.iter().sum();
    let spread = SAMPLES - STACKS as u64;
    let mut counts: Vec<u64> = weights
        .iter()
        .map(|w| 1 + (w / total * spread as f64) as u64)
        .collect();
    counts[0] += SAMPLES - counts.iter().sum::<u64>();
    // Shuffle which stack gets which count, so the heavy ones are not all the earliest.
    for i in (1..counts.len()).rev() {
        counts.swap(i, rng.below(i + 1));
    }
    let mut text = String::with_capacity(STACKS * 600);
    for (stack, count) in stacks.iter().zip(&counts) {
        text.push_str(&comms[stack[0]]);
        for &frame in &stack[1..] {
            text.push(';');
            text.push_str(&vocabulary[frame]);
        }
        let _ = writeln!(text, " {count}");
    }
    text
}
