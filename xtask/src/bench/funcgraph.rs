//! funcgraph's cost: how much a fork loop slows down under `funcgraph kernel_clone` on each
//! rung, against the kernel's function_graph tracer driven through tracefs directly (as
//! perf-tools' `funcgraph` script does) on the same root and depth. Only Debian's 6.12 guest
//! has every rung (this host has neither kprobe_multi nor a usable function tracer), so the
//! loop runs there, under qemu's TCG: absolute times are emulated, ratios are what to read.

use std::process::Command;

use anyhow::{Context as _, Result, bail};

use super::common::median;
use crate::util::release_bin;

const FORKS: u32 = 500;
const ROUNDS: u32 = 3;
const KERNEL: &str = "debian-6.12";

/// The guest's script: every configuration once per round, interleaved; one
/// `BENCH <config> <µs>` line per timed loop.
fn script() -> String {
    let workload = release_bin("tracer-workload");
    format!(
        r#"W={workload}; N={FORKS}; T=/sys/kernel/tracing
run() {{ s=$(date +%s%N); $W fork $N; e=$(date +%s%N); echo "BENCH $1 $(( (e - s) / 1000 ))"; }}
with() {{ name=$1; shift; tracer funcgraph kernel_clone "$@" > /dev/null 2> /tmp/fg.err & P=$!
  until grep -q Ctrl-C /tmp/fg.err; do sleep 0.2; done; run $name; kill -INT $P; wait $P; }}
for round in $(seq {ROUNDS}); do
  run baseline
  with tracer_kprobe_multi
  with tracer_kprobe_multi_stats --stats
  with tracer_function_graph --attach function_graph
  echo kernel_clone > $T/set_graph_function; echo 8 > $T/max_graph_depth
  echo function_graph > $T/current_tracer; cat $T/trace_pipe > /dev/null & C=$!
  run tracefs_function_graph
  kill $C; wait $C; echo nop > $T/current_tracer; : > $T/set_graph_function; echo 0 > $T/max_graph_depth
  echo "ENABLED $(wc -l < $T/enabled_functions)"
done
"#,
        workload = workload.display()
    )
}

pub fn run() -> Result<()> {
    let xtask = std::env::current_exe().context("cannot find xtask's own binary")?;
    println!(
        "{FORKS} forks (tracer-workload fork {FORKS}) per loop, {ROUNDS} rounds, in the \
         {KERNEL} guest (qemu TCG); all at --max-depth 8 / max_graph_depth 8"
    );
    let out = Command::new(xtask)
        .args(["vm-test", "--kernel", KERNEL, "--exec", &script()])
        .output()
        .context("cannot run xtask vm-test")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut times: Vec<(String, Vec<f64>)> = Vec::new();
    for line in text.lines() {
        if let Some(n) = line.split("ENABLED ").nth(1)
            && n.trim() != "0"
        {
            bail!("a round left {n} functions enabled in ftrace: the next rounds would be skewed");
        }
        let Some(rest) = line.split("BENCH ").nth(1) else {
            continue;
        };
        let mut words = rest.split_whitespace();
        let (Some(name), Some(us)) = (words.next(), words.next()) else {
            continue;
        };
        let Ok(us) = us.parse::<f64>() else { continue };
        match times.iter_mut().find(|(n, _)| n == name) {
            Some((_, v)) => v.push(us),
            None => times.push((name.to_string(), vec![us])),
        }
    }
    let base = times
        .iter()
        .find(|(n, _)| n == "baseline")
        .map(|(_, v)| median(v.clone()));
    let Some(base) = base.filter(|b| *b > 0.0) else {
        bail!("the guest printed no baseline loop:\n{text}");
    };
    println!(
        "{:<28} {:>12} {:>10} {:>10}",
        "configuration", "µs per fork", "× base", "slowdown"
    );
    let slowdown = |name: &str| -> Option<f64> {
        let (_, v) = times.iter().find(|(n, _)| n == name)?;
        Some(median(v.clone()) / base - 1.0)
    };
    for (name, v) in &times {
        let m = median(v.clone());
        println!(
            "{name:<28} {:>12.1} {:>10.2} {:>9.0} %",
            m / f64::from(FORKS),
            m / base,
            (m / base - 1.0) * 100.0
        );
    }
    if let (Some(ours), Some(theirs)) = (
        slowdown("tracer_kprobe_multi"),
        slowdown("tracefs_function_graph"),
    ) {
        println!(
            "target: tracer's kprobe_multi slowdown ≤ 0.5 × tracefs function_graph's: {:.2} × ({})",
            ours / theirs,
            if ours <= 0.5 * theirs {
                "met"
            } else {
                "missed"
            }
        );
    }
    Ok(())
}
