//! softirq-top against ground truth: /proc/softirqs (entry counts, exact per vector), /proc/stat
//! (softirq ticks), /proc/<pid>/schedstat (ksoftirqd run time), under a real SYN flood between
//! two network namespaces (hping3 → nginx on a veth pair) and at idle.

use std::time::Duration;

use libtest_mimic::{Failed, Trial};
use serde_json::Value;

use crate::common::{
    Need, Running, STAT_SOFTIRQ, agrees_with_schedstat, assert_nothing_loaded, emulated, ensure,
    expect_one_line_errors, fail, go_pprof, irq_steal_us, proc_stat_ticks, run, start, trial,
};
use testbed::{netns::NetnsPair, nginx::Nginx};

const ROOT: &[Need] = &[Need::Root];
const FLOOD: &[Need] = &[
    Need::Root,
    Need::Command("ip"),
    Need::Command("hping3"),
    Need::Command("nginx"),
];

const FLOOD_KPROBES: &[Need] = &[
    Need::Root,
    Need::Kprobes,
    Need::Command("ip"),
    Need::Command("hping3"),
    Need::Command("nginx"),
];

const VECS: [&str; 10] = [
    "HI", "TIMER", "NET_TX", "NET_RX", "BLOCK", "IRQ_POLL", "TASKLET", "SCHED", "HRTIMER", "RCU",
];

pub fn tests() -> Vec<Trial> {
    vec![
        trial("softirq_top::bad_input", &[], bad_input),
        trial(
            "softirq_top::counts_match_proc_softirqs",
            ROOT,
            counts_match_proc_softirqs,
        ),
        trial(
            "softirq_top::each_attach_mechanism",
            ROOT,
            each_attach_mechanism,
        ),
        trial(
            "softirq_top::histograms_count_every_entry",
            ROOT,
            histograms_count_every_entry,
        ),
        trial("softirq_top::text_and_filters", ROOT, text_and_filters),
        trial(
            "softirq_top::idle_net_rx_near_zero",
            ROOT,
            idle_net_rx_near_zero,
        ),
        trial(
            "softirq_top::syn_flood_net_rx_dominant",
            FLOOD,
            syn_flood_net_rx_dominant,
        ),
        trial(
            "softirq_top::sampled_times_match_exact",
            FLOOD,
            sampled_times_match_exact,
        ),
        trial("softirq_top::syn_flood_stacks", FLOOD, syn_flood_stacks),
        trial(
            "softirq_top::net_rx_action_timed_where_allowed",
            FLOOD_KPROBES,
            net_rx_action_timed_where_allowed,
        ),
    ]
}

/// /proc/softirqs: per vector, per CPU.
fn proc_softirqs() -> Vec<Vec<u64>> {
    let text = std::fs::read_to_string("/proc/softirqs").unwrap_or_default();
    let mut rows = vec![Vec::new(); VECS.len()];
    for line in text.lines().skip(1) {
        let mut parts = line.split_whitespace();
        let Some(name) = parts.next().map(|n| n.trim_end_matches(':')) else {
            continue;
        };
        if let Some(i) = VECS.iter().position(|v| *v == name) {
            rows[i] = parts.filter_map(|p| p.parse().ok()).collect();
        }
    }
    rows
}

fn proc_total(rows: &[Vec<u64>], vec: usize) -> u64 {
    rows[vec].iter().sum()
}

/// sum_exec_runtime (ns) of a task, from /proc/PID/schedstat.
fn schedstat_ns(pid: u64) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/schedstat"))
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

fn intervals(records: &[Value]) -> Vec<&Value> {
    records.iter().filter(|r| r["type"] == "interval").collect()
}

fn vector<'a>(interval: &'a Value, name: &str) -> Option<&'a Value> {
    interval["vectors"]
        .as_array()?
        .iter()
        .find(|v| v["vec"] == name)
}

/// Sum of a vector's field over every interval.
fn summed(records: &[Value], name: &str, field: &str) -> u64 {
    intervals(records)
        .iter()
        .filter_map(|i| vector(i, name))
        .map(|v| v[field].as_u64().unwrap_or(0))
        .sum()
}

fn within(ours: u64, truth: u64, pct: f64, slack: u64) -> bool {
    ours.abs_diff(truth) as f64 <= truth as f64 * pct / 100.0 + slack as f64
}

/// JSON records, /proc/softirqs before and after, and what `during` returned.
type Around<T> = (Vec<Value>, Vec<Vec<u64>>, Vec<Vec<u64>>, T);

/// Runs softirq-top with `args` around `during`, reading /proc/softirqs right after it attached
/// and right before it is stopped, so both cover the same window (give or take a few ms).
fn around<T>(
    args: &[&str],
    during: impl FnOnce() -> Result<T, Failed>,
) -> Result<Around<T>, Failed> {
    let mut full = vec!["softirq-top", "--json"];
    full.extend_from_slice(args);
    let tool = start(&full)?;
    let before = proc_softirqs();
    let result = during();
    let after = proc_softirqs();
    let done = tool.stop(libc::SIGINT)?.ok()?;
    let value = result?;
    let records = done.json()?;
    ensure(records.iter().any(|r| r["type"] == "end"), || {
        "no end record".into()
    })?;
    Ok((records, before, after, value))
}

fn bad_input() -> Result<(), Failed> {
    expect_one_line_errors(&[
        (vec!["softirq-top", "-C", "99"], "CPU 99 is not online"),
        (
            vec!["softirq-top", "--vec", "BOGUS"],
            "unknown softirq vector 'BOGUS'",
        ),
        (vec!["softirq-top", "0"], "out of range"),
        (vec!["softirq-top", "1", "0"], "not a positive count"),
        (vec!["softirq-top", "-C", "1-x"], "not a CPU list"),
        (vec!["softirq-top", "--folded"], "--stacks"),
        (
            vec!["softirq-top", "--attach", "kprobe"],
            "choose one of tp_btf, raw_tp, tracepoint",
        ),
    ])
}

/// Entry counts of every vector equal /proc/softirqs deltas over the same window.
fn counts_match_proc_softirqs() -> Result<(), Failed> {
    let (records, before, after, ()) = around(&["0.5"], || {
        std::thread::sleep(Duration::from_secs(3));
        Ok(())
    })?;
    ensure(intervals(&records).len() >= 5, || {
        format!("only {} intervals", intervals(&records).len())
    })?;
    let mut checked = 0;
    for (i, name) in VECS.iter().enumerate() {
        let truth = proc_total(&after, i) - proc_total(&before, i);
        let ours = summed(&records, name, "count");
        // Our window is a few ms wider on both ends (attach → first read, last read → stop).
        ensure(
            ours >= truth.saturating_sub(truth / 100 + 5) && within(ours, truth, 3.0, 30),
            || format!("{name}: softirq-top counted {ours}, /proc/softirqs says {truth}"),
        )?;
        if truth >= 10 {
            checked += 1;
        }
    }
    ensure(checked >= 1, || "no vector had 10 entries in 3 s".into())?;
    assert_nothing_loaded("softirq_")
}

fn each_attach_mechanism() -> Result<(), Failed> {
    for (flag, mechanism) in [
        ("tp-btf", "tp_btf"),
        ("raw-tp", "raw_tp"),
        ("tracepoint", "tracepoint"),
    ] {
        let (records, before, after, ()) = around(&["--attach", flag, "0.5"], || {
            std::thread::sleep(Duration::from_millis(1500));
            Ok(())
        })?;
        let end = records
            .iter()
            .find(|r| r["type"] == "end")
            .ok_or_else(|| fail("no end record"))?;
        let used: Vec<&str> = end["attach"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| a["mechanism"].as_str())
            .collect();
        ensure(
            !used.is_empty() && used.iter().all(|m| *m == mechanism),
            || format!("{mechanism}: attached via {used:?}"),
        )?;
        for (i, name) in VECS.iter().enumerate() {
            let truth = proc_total(&after, i) - proc_total(&before, i);
            let ours = summed(&records, name, "count");
            ensure(within(ours, truth, 3.0, 30), || {
                format!("{mechanism} {name}: ours {ours}, /proc/softirqs {truth}")
            })?;
        }
    }
    Ok(())
}

/// -D and -L: every exit lands in the run-time histogram, and latencies are recorded.
fn histograms_count_every_entry() -> Result<(), Failed> {
    // --exact: a busy CPU would otherwise time (and histogram) a weighted sample.
    let (records, ..) = around(&["--exact", "-D", "--latency", "0.5"], || {
        std::thread::sleep(Duration::from_secs(2));
        Ok(())
    })?;
    let mut latencies = 0;
    // Per vector, over the whole run: (entries, entries in the run-time histogram).
    let mut totals: std::collections::BTreeMap<String, (u64, u64)> = Default::default();
    for interval in intervals(&records) {
        for v in interval["vectors"].as_array().into_iter().flatten() {
            let name = v["vec"].as_str().unwrap_or("");
            let count = v["count"].as_u64().unwrap_or(0);
            let hist = interval["runtime_hist"][name]["count"]
                .as_u64()
                .unwrap_or(0);
            let total = totals.entry(name.to_string()).or_default();
            total.0 += count;
            total.1 += hist;
            // Exact but for events landing between the reads of the two maps. Under TCG
            // those reads are far apart; the sums over the run below still hold there.
            ensure(
                emulated().is_some() || hist.abs_diff(count) <= 2 + count / 100,
                || format!("{name}: {count} entries but {hist} in the run-time histogram"),
            )?;
            latencies += interval["latency_hist"][name]["count"]
                .as_u64()
                .unwrap_or(0);
        }
        // Every vector's histogram (an interval without TIMER softirqs has none for it).
        for (name, hist) in interval["runtime_hist"].as_object().into_iter().flatten() {
            ensure(hist["unit"] == "usecs", || {
                format!("{name} histogram unit: {}", hist["unit"])
            })?;
        }
    }
    // Each interval is the growth of both maps since the last read, so what one interval
    // missed between the two reads the next one has: over the run they differ only by the
    // last interval's skew.
    // Under TCG the last read pair can be tens of ms apart (a 5.10 guest running beside another
    // guest failed the 5 that holds natively), a few hundred timer softirqs a second landing
    // between them.
    let skew = if emulated().is_some() { 25 } else { 5 };
    for (name, (count, hist)) in &totals {
        ensure(hist.abs_diff(*count) <= skew + count / 100, || {
            format!("{name}: {count} entries over the run but {hist} in the run-time histograms")
        })?;
    }
    ensure(
        totals.values().map(|(count, _)| count).sum::<u64>() > 0,
        || "no softirq entered in 2 s".into(),
    )?;
    ensure(latencies > 0, || "no raise->entry latency recorded".into())?;
    Ok(())
}

/// Piped text output: interval blocks with the matrix; -C and --vec narrow it.
fn text_and_filters() -> Result<(), Failed> {
    let out = run(&[
        "softirq-top",
        "0.3",
        "2",
        "-C",
        "0",
        "--vec",
        "TIMER,rcu",
        "-s",
        "vec",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure(out.status.success(), || {
        format!("failed: {}", String::from_utf8_lossy(&out.stderr))
    })?;
    ensure(!stdout.contains('\x1b'), || {
        "escape codes in piped output".into()
    })?;
    let headers = stdout.lines().filter(|l| l.starts_with("VECTOR")).count();
    ensure(headers == 2, || {
        format!("{headers} matrix headers in:\n{stdout}")
    })?;
    let header = stdout
        .lines()
        .find(|l| l.starts_with("VECTOR"))
        .unwrap_or("");
    ensure(
        header.contains("CPU0%") && !header.contains("CPU1%"),
        || format!("-C 0 header: {header}"),
    )?;
    let rows: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| VECS.contains(w))
        .collect();
    ensure(rows == ["TIMER", "RCU", "TIMER", "RCU"], || {
        format!("rows {rows:?} in:\n{stdout}")
    })?;
    ensure(
        stdout.contains("ksoftirqd/0") && !stdout.contains("ksoftirqd/1 "),
        || format!("ksoftirqd rows:\n{stdout}"),
    )?;
    Ok(())
}

fn idle_net_rx_near_zero() -> Result<(), Failed> {
    let (records, before, after, ()) = around(&["1"], || {
        std::thread::sleep(Duration::from_millis(2500));
        Ok(())
    })?;
    let net_rx = 3;
    let truth = proc_total(&after, net_rx) - proc_total(&before, net_rx);
    let ours = summed(&records, "NET_RX", "count");
    ensure(within(ours, truth, 3.0, 30), || {
        format!("NET_RX idle: ours {ours}, /proc/softirqs {truth}")
    })?;
    for interval in intervals(&records) {
        let pct = vector(interval, "NET_RX")
            .and_then(|v| v["pct"].as_f64())
            .unwrap_or(0.0);
        // Idle: no traffic of ours. Other machine activity may add a few packets.
        ensure(pct < 1.0, || {
            format!("NET_RX {pct}% of CPU at idle: {interval}")
        })?;
    }
    Ok(())
}

/// A bounded SYN flood to the namespace's nginx; the packets hping3 says it sent.
fn flood(net: &NetnsPair, seconds: u32) -> Result<u64, Failed> {
    Ok(net.syn_flood(80, seconds)?.sent)
}

fn syn_flood_net_rx_dominant() -> Result<(), Failed> {
    let net = NetnsPair::create("sq")?;
    let _nginx = Nginx::start(Some(&net.server), &net.server_addr, 80)?;
    let ksoftirqd = ksoftirqd_pids();
    let ksoftirqd_ns = || -> Vec<u64> { ksoftirqd.iter().map(|p| schedstat_ns(*p)).collect() };
    let sum_since = |before: &[u64]| -> u64 {
        ksoftirqd_ns()
            .iter()
            .zip(before)
            .map(|(now, b)| now.saturating_sub(*b))
            .sum()
    };
    // /proc/stat and schedstat are read inside the tool's window, as /proc/softirqs is, and
    // schedstat once more around it: ksoftirqd may run at either edge, in the few ms between
    // an attach or detach and the reads.
    let outer_sched_before = ksoftirqd_ns();
    let unseen_before = irq_steal_us();
    let (records, before, after, (sent, ticks, sched_ns)) = around(&["--net", "1"], || {
        let sched_before = ksoftirqd_ns();
        let ticks_before = proc_stat_ticks(STAT_SOFTIRQ);
        let sent = flood(&net, 6)?;
        // Let the backlog drain before the window closes; under TCG ksoftirqd works through
        // it for seconds after the flood.
        std::thread::sleep(if emulated().is_some() {
            Duration::from_secs(2)
        } else {
            Duration::from_millis(500)
        });
        let ticks = proc_stat_ticks(STAT_SOFTIRQ) - ticks_before;
        Ok((sent, ticks, sum_since(&sched_before)))
    })?;
    let outer_sched_us = sum_since(&outer_sched_before) / 1000;
    let unseen_us = irq_steal_us().saturating_sub(unseen_before);
    // Thousands of packets per second on this host; under qemu's TCG a few thousand in all.
    ensure(sent > 2000, || format!("hping3 sent only {sent} packets"))?;

    // NET_RX entries track /proc/softirqs over the same window.
    let truth = proc_total(&after, 3) - proc_total(&before, 3);
    let ours = summed(&records, "NET_RX", "count");
    ensure(truth > 500, || {
        format!("the flood raised only {truth} NET_RX softirqs")
    })?;
    ensure(within(ours, truth, 3.0, 30), || {
        format!("NET_RX: ours {ours}, /proc/softirqs {truth}")
    })?;

    // NET_RX dominates, over the run and in the busiest interval.
    let time = |name: &str| summed(&records, name, "time_us");
    let total: u64 = VECS.iter().map(|v| time(v)).sum();
    let net_rx = time("NET_RX");
    ensure(VECS.iter().all(|v| time(v) <= net_rx), || {
        format!(
            "NET_RX {net_rx} us is not the largest: {:?}",
            VECS.map(|v| (v, time(v)))
        )
    })?;
    ensure(net_rx * 2 > total, || {
        format!("NET_RX {net_rx} us of {total} us softirq time")
    })?;
    let busiest = intervals(&records)
        .into_iter()
        .max_by_key(|i| i["total"]["time_us"].as_u64().unwrap_or(0))
        .ok_or_else(|| fail("no intervals"))?;
    ensure(busiest["vectors"][0]["vec"] == "NET_RX", || {
        format!("busiest interval not led by NET_RX: {busiest}")
    })?;

    // Total softirq time vs /proc/stat: the kernel samples softirq time once per tick (no
    // IRQ_TIME_ACCOUNTING here), in USER_HZ (10 ms) units, so only loose agreement is expected.
    // Under TCG the guest's ticks come late (a tick accounts one tick's time however long it
    // was), so /proc/stat undercounts: 287 ticks measured vs 173 sampled was seen on 5.10.
    let ticks_ours = total as f64 / 10_000.0;
    let (ticks, ours_ticks) = (ticks as f64, ticks_ours);
    let agree = if emulated().is_some() {
        ours_ticks <= ticks * 2.5 + 25.0 && ours_ticks * 2.5 + 25.0 >= ticks
    } else {
        (ours_ticks - ticks).abs() <= (ticks * 0.5).max(25.0)
    };
    ensure(agree, || {
        format!("softirq time {ticks_ours:.0} ticks (ours) vs {ticks} ticks in /proc/stat")
    })?;

    // ksoftirqd's own CPU time (sched_switch accounting) vs the scheduler's own sum.
    let ours_ksoftirqd: u64 = intervals(&records)
        .iter()
        .flat_map(|i| i["ksoftirqd"].as_array().cloned().unwrap_or_default())
        .map(|k| k["cpu_time_us"].as_u64().unwrap_or(0))
        .sum();
    let truth_us = sched_ns / 1000;
    println!(
        "    ({sent} packets sent, {truth} NET_RX softirqs, NET_RX {}% of {total} us softirq \
         time ({ticks} ticks in /proc/stat), ksoftirqd {ours_ksoftirqd} us vs schedstat \
         {truth_us} us, {unseen_us} us hard-IRQ and steal in /proc/stat)",
        net_rx * 100 / total.max(1)
    );
    // Natively within 1-2 %; under TCG ours came out 10-23 % under schedstat's sum in every
    // run on 5.10, 6.1 and 6.12 (ksoftirqd's time around our sched_switch programs).
    // Above it, ours may also hold what schedstat leaves out: hard-IRQ and stolen time, and
    // the window's edges. CI's cloud VM once gave ours 138 ms against schedstat's 99 ms.
    let pct = if emulated().is_some() { 30.0 } else { 15.0 };
    let agree = agrees_with_schedstat(
        ours_ksoftirqd,
        truth_us,
        outer_sched_us,
        unseen_us,
        pct,
        20_000,
    );
    ensure(agree, || {
        format!(
            "ksoftirqd CPU time: ours {ours_ksoftirqd} us, schedstat {truth_us} us in the \
             window, {outer_sched_us} us around it, + {unseen_us} us hard-IRQ and steal"
        )
    })?;

    // --net: the packets went through NAPI polls (veth without XDP uses the per-CPU backlog).
    let packets: u64 = intervals(&records)
        .iter()
        .flat_map(|i| i["net"]["devices"].as_array().cloned().unwrap_or_default())
        .map(|d| d["packets"].as_u64().unwrap_or(0))
        .sum();
    ensure(packets as f64 >= sent as f64 * 0.5, || {
        format!("NAPI polls saw {packets} packets, hping3 sent {sent}")
    })?;
    let first = intervals(&records)
        .first()
        .copied()
        .cloned()
        .unwrap_or_default();
    ensure(first["net"]["net_rx_action"]["source"].is_string(), || {
        format!("net_rx_action source missing: {first}")
    })?;
    Ok(())
}

/// The default (sampled) timing against --exact, both attached through the same flood: the
/// counts are exact in both, the estimated NET_RX time is within a few % of the measured one,
/// and where a CPU served more softirqs a second than the timing budget, sampling did engage.
fn sampled_times_match_exact() -> Result<(), Failed> {
    let net = NetnsPair::create("sx")?;
    let _nginx = Nginx::start(Some(&net.server), &net.server_addr, 80)?;
    let exact = start(&["softirq-top", "--json", "--exact", "1"])?;
    let sampled = start(&["softirq-top", "--json", "1"])?;
    let sent = flood(&net, 5)?;
    std::thread::sleep(Duration::from_millis(500));
    let sampled = sampled.stop(libc::SIGINT)?.ok()?.json()?;
    let exact = exact.stop(libc::SIGINT)?.ok()?.json()?;
    ensure(sent > 2000, || format!("hping3 sent only {sent} packets"))?;
    let (count_s, count_e) = (
        summed(&sampled, "NET_RX", "count"),
        summed(&exact, "NET_RX", "count"),
    );
    // Both windows hold the whole flood; they differ by the softirqs of the moments between
    // the two tools' starts and stops.
    ensure(within(count_s, count_e, 2.0, 50), || {
        format!("NET_RX count: sampled run {count_s}, exact run {count_e}")
    })?;
    let (time_s, time_e) = (
        summed(&sampled, "NET_RX", "time_us"),
        summed(&exact, "NET_RX", "time_us"),
    );
    // Each tool's measured softirqs also hold the other's programs (~0.1 us of ~4 us).
    ensure(within(time_s, time_e, 8.0, 2_000), || {
        format!("NET_RX time: estimated {time_s} us, measured (--exact) {time_e} us")
    })?;
    let exact_pcts: Vec<String> = intervals(&exact)
        .iter()
        .map(|i| i["timed_pct"].to_string())
        .collect();
    ensure(exact_pcts.iter().all(|p| p == "100.0"), || {
        format!(
            "--exact left softirqs untimed: timed_pct per interval {}",
            exact_pcts.join(", ")
        )
    })?;
    // The busiest CPU's softirqs per second in the busiest interval.
    let busiest = intervals(&sampled)
        .iter()
        .flat_map(|i| {
            let seconds = (i["interval_ns"].as_f64().unwrap_or(1e9) / 1e9).max(0.01);
            i["total"]["per_cpu"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(move |c| c["count"].as_f64().unwrap_or(0.0) / seconds)
        })
        .fold(0.0, f64::max);
    let least_timed = intervals(&sampled)
        .iter()
        .filter_map(|i| i["timed_pct"].as_f64())
        .fold(100.0, f64::min);
    // Budget 8192 timed a second per CPU; twice that leaves no doubt sampling engaged.
    if busiest > 16_384.0 {
        ensure(least_timed < 75.0, || {
            format!("{busiest:.0} softirqs/s on one CPU, yet {least_timed}% were timed")
        })?;
    } else {
        println!(
            "    (at most {busiest:.0} softirqs/s per CPU here: below the timing budget, every \
             softirq timed in both runs)"
        );
    }
    Ok(())
}

fn ksoftirqd_pids() -> Vec<u64> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u64>().ok())
        else {
            continue;
        };
        if std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .is_ok_and(|c| c.starts_with("ksoftirqd/"))
        {
            pids.push(pid);
        }
    }
    pids
}

fn syn_flood_stacks() -> Result<(), Failed> {
    let net = NetnsPair::create("sk")?;
    let _nginx = Nginx::start(Some(&net.server), &net.server_addr, 80)?;
    let svg = std::env::temp_dir().join(format!("tracer-softirq-{}.svg", std::process::id()));
    let svg_arg = svg.display().to_string();
    let pprof = svg.with_extension("pb.gz");
    let pprof_arg = pprof.display().to_string();
    let tool: Running = start(&[
        "softirq-top",
        "--json",
        "--stacks",
        "--svg",
        &svg_arg,
        "--pprof",
        &pprof_arg,
        "--top",
        "20",
        "5",
    ])?;
    let sent = flood(&net, 4)?;
    let done = tool.stop(libc::SIGINT)?.ok()?;
    let records = done.json()?;
    let stacks = records
        .iter()
        .find(|r| r["type"] == "stacks")
        .ok_or_else(|| fail("no stacks record"))?;
    let list = stacks["stacks"].as_array().cloned().unwrap_or_default();
    ensure(!list.is_empty(), || {
        format!("no stacks sampled during a flood of {sent} packets")
    })?;
    let with_net_rx: Vec<&Value> = list
        .iter()
        .filter(|s| {
            s["kernel"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|f| f == "net_rx_action")
        })
        .collect();
    ensure(!with_net_rx.is_empty(), || {
        format!("no stack contains net_rx_action: {stacks}")
    })?;
    ensure(
        with_net_rx
            .iter()
            .all(|s| s["vec"] == "NET_RX" || s["vec"] == "ksoftirqd"),
        || format!("net_rx_action outside NET_RX: {with_net_rx:?}"),
    )?;
    let svg_text = std::fs::read_to_string(&svg).unwrap_or_default();
    let _ = std::fs::remove_file(&svg);
    ensure(
        svg_text.contains("<svg") && svg_text.contains("net_rx_action"),
        || "SVG lacks net_rx_action".into(),
    )?;
    // The same stacks in Go's pprof: every sample, and net_rx_action among the NET_RX ones.
    let top = go_pprof(&[
        "-top",
        "-cum",
        "-nodecount=200",
        "-tagfocus=vec=NET_RX",
        &pprof_arg,
    ]);
    let total = go_pprof(&["-top", "-sample_index=samples", "-nodecount=1", &pprof_arg]);
    let _ = std::fs::remove_file(&pprof);
    let (top, total) = (top?, total?);
    ensure(top.contains("net_rx_action"), || {
        format!("pprof -top -cum -tagfocus=vec=NET_RX lacks net_rx_action:\n{top}")
    })?;
    let samples = stacks["samples"].as_u64().unwrap_or(0);
    ensure(total.contains(&format!("of {samples} total")), || {
        format!("our stacks record has {samples} samples; pprof says:\n{total}")
    })?;
    Ok(())
}

/// Where fexit or kretprobe attach (qemu kernels under `cargo xtask vm-test`), --net times
/// net_rx_action() itself: as many calls as NET_RX softirqs, and no more time than they took.
fn net_rx_action_timed_where_allowed() -> Result<(), Failed> {
    let net = NetnsPair::create("na")?;
    let _nginx = Nginx::start(Some(&net.server), &net.server_addr, 80)?;
    let (records, ..) = around(&["--net", "1"], || flood(&net, 2))?;
    let mut calls = 0;
    let mut time = 0;
    for interval in intervals(&records) {
        let action = &interval["net"]["net_rx_action"];
        ensure(
            action["source"] == "fexit" || action["source"] == "kretprobe",
            || format!("net_rx_action not timed by a function probe: {action}"),
        )?;
        calls += action["count"].as_u64().unwrap_or(0);
        time += action["time_us"].as_u64().unwrap_or(0);
    }
    let softirqs = summed(&records, "NET_RX", "count");
    let softirq_time = summed(&records, "NET_RX", "time_us");
    ensure(within(calls, softirqs, 3.0, 30), || {
        format!("net_rx_action {calls} calls, NET_RX {softirqs} softirqs")
    })?;
    ensure(time <= softirq_time + softirq_time / 10 + 1000, || {
        format!("net_rx_action {time} us > NET_RX softirq time {softirq_time} us")
    })?;
    Ok(())
}
