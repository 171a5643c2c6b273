//! hardirqs: time spent in hardware interrupt handlers and their counts, per IRQ line (and per
//! CPU with `--per-cpu`), every interval; `-D` adds a log2 histogram of handler time per line.
//! The first half of a NIC's story (the IRQ that raises NET_RX; softirq-top has the second).
//!
//! Keyed by IRQ number in the kernel (no string reads on the hot path); the name shown is the
//! line's handlers as /sys/kernel/irq/N/actions (or /proc/interrupts) lists them, so a row is
//! one line of /proc/interrupts and its count can be checked against it. A shared line counts
//! each of its handlers' runs.

use std::collections::BTreeMap;

use anyhow::{Result, anyhow};
use aya::{
    Ebpf,
    maps::{MapData, PerCpuHashMap},
};
use clap::Args;
use serde_json::{Value, json};
use tracer_common::{
    hardirqs::{HardirqsConfig, IRQ_ENTRIES, IrqStats},
    hist::Log2Hist,
};

use super::runqlat;
use crate::{
    attach::{self, Attachment, Mechanism},
    btf::KernelBtf,
    filters,
    hist::Log2,
    loader::{self, Stats, StatsReader, objects},
    output::{Out, end_record, hms_now, with_schema},
    session::{self, IntervalArgs},
    tools::CommonArgs,
};

const TOOL: &str = "hardirqs";

/// Summarize time spent in hardware interrupt handlers, per IRQ line.
#[derive(Args, Clone, Debug)]
#[command(after_help = "Examples:\n  \
    hardirqs                 handler time and counts per IRQ until Ctrl-C\n  \
    hardirqs 1 10            every second, 10 times\n  \
    hardirqs -D 1            with a histogram of handler time per IRQ\n  \
    hardirqs --per-cpu -C 0  one row per IRQ and CPU, CPU 0 only\n  \
    hardirqs -N --json 1 5   nanoseconds, JSON lines")]
pub struct HardirqsArgs {
    /// A log2 histogram of handler time per IRQ line.
    #[arg(short = 'D', long = "dist")]
    pub dist: bool,
    /// Nanoseconds (default: microseconds).
    #[arg(short = 'N', long = "nanoseconds")]
    pub nanoseconds: bool,
    /// Only these CPUs (a CPU list: 0,2-3).
    #[arg(short = 'C', long = "cpu", value_name = "CPUS")]
    pub cpu: Option<String>,
    /// One row per IRQ line and CPU.
    #[arg(long = "per-cpu")]
    pub per_cpu: bool,
    /// Print only the N busiest rows.
    #[arg(short = 'n', long = "top", value_name = "N")]
    pub top: Option<usize>,
    #[command(flatten)]
    pub interval: IntervalArgs,
    #[command(flatten)]
    pub common: CommonArgs,
}

pub async fn run(args: HardirqsArgs) -> Result<()> {
    let online =
        aya::util::online_cpus().map_err(|(_, e)| anyhow!("cannot read the online CPUs: {e}"))?;
    let cpus = match &args.cpu {
        Some(text) => filters::cpu_list(text, &online)?,
        None => online,
    };
    let force = args.common.attach_for(TOOL, LADDER)?;
    let program = HardirqProgram::attach(&KernelBtf::new(), force, args.dist, args.nanoseconds)?;
    if args.common.verbose {
        for a in [&program.entry, &program.exit] {
            errln!("{TOOL}: {}", a.summary());
        }
    }
    Report {
        program,
        args,
        cpus,
    }
    .run()
    .await
}

/// The mechanisms hardirqs' programs have (a tp_btf and a raw_tp twin of each).
pub(crate) const LADDER: &[Mechanism] = &[Mechanism::TpBtf, Mechanism::RawTp];

/// hardirqs' kernel program, loaded and attached: what hardirqs reports, and what softirq-top's
/// hard-IRQ line reads.
pub(crate) struct HardirqProgram {
    pub entry: Attachment,
    pub exit: Attachment,
    irqs: PerCpuHashMap<MapData, u32, IrqStats>,
    hists: Option<PerCpuHashMap<MapData, u32, Log2Hist>>,
    pub stats: StatsReader,
    /// Holds the programs (and so the attachments).
    _ebpf: Ebpf,
}

impl HardirqProgram {
    /// Loads and attaches irq_handler_entry/exit; `dist` keeps a histogram per line (in ns
    /// with `nanoseconds`, else us).
    pub(crate) fn attach(
        btf: &KernelBtf,
        force: Option<Mechanism>,
        dist: bool,
        nanoseconds: bool,
    ) -> Result<Self> {
        let config = HardirqsConfig {
            dist: dist.into(),
            unit_div: if nanoseconds { 1 } else { 1000 },
            ..HardirqsConfig::DEFAULT
        };
        let mut ebpf = loader::load(objects::HARDIRQS, |l| {
            l.override_global("HARDIRQS_CONFIG", &config, true);
            l.map_max_entries("HISTS", if dist { IRQ_ENTRIES } else { 1 });
        })?;
        // Exit first: an entry stamped before its exit program is attached is simply not timed.
        let mut attach_irq = |event, prefix| {
            attach::tracepoint_ladder(&mut ebpf, btf, "irq", event, prefix, LADDER, force)
        };
        let exit = attach_irq("irq_handler_exit", "hardirqs_exit")?;
        let entry = attach_irq("irq_handler_entry", "hardirqs_entry")?;
        let hists = if dist {
            Some(loader::take(&mut ebpf, "HISTS")?)
        } else {
            None
        };
        Ok(Self {
            entry,
            exit,
            irqs: loader::take(&mut ebpf, "IRQS")?,
            hists,
            stats: StatsReader::take(&mut ebpf)?,
            _ebpf: ebpf,
        })
    }

    /// Running totals per IRQ line (per line and CPU with `per_cpu`), over `cpus`.
    pub(crate) fn snapshot(&self, cpus: &[u32], per_cpu: bool) -> BTreeMap<RowKey, Totals> {
        let mut rows: BTreeMap<RowKey, Totals> = BTreeMap::new();
        let row = |irq: u32, cpu: u32| (irq, per_cpu.then_some(cpu));
        for (irq, values) in self.irqs.iter().flatten() {
            for (cpu, s) in values.iter().enumerate() {
                let cpu = cpu as u32;
                if !cpus.contains(&cpu) || s.count == 0 {
                    continue;
                }
                let t = rows.entry(row(irq, cpu)).or_default();
                t.count += s.count;
                t.time_ns += s.time_ns;
                t.max_ns = t.max_ns.max(s.max_ns);
            }
        }
        if let Some(hists) = &self.hists {
            for (irq, values) in hists.iter().flatten() {
                for (cpu, h) in values.iter().enumerate() {
                    if cpus.contains(&(cpu as u32)) {
                        let t = rows.entry(row(irq, cpu as u32)).or_default();
                        t.hist.merge(&Log2::from_per_cpu([h]));
                    }
                }
            }
        }
        rows
    }
}

/// What a row is: an IRQ line, or an IRQ line on one CPU.
pub(crate) type RowKey = (u32, Option<u32>);

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Totals {
    pub count: u64,
    pub time_ns: u64,
    /// Longest run since the tool started (the kernel keeps a running maximum).
    pub max_ns: u64,
    pub hist: Log2,
}

impl Default for Totals {
    fn default() -> Self {
        // Log2's own Default has no slots; merging into it would drop everything.
        Self {
            count: 0,
            time_ns: 0,
            max_ns: 0,
            hist: Log2::new(),
        }
    }
}

struct Report {
    program: HardirqProgram,
    args: HardirqsArgs,
    cpus: Vec<u32>,
}

impl Report {
    fn snapshot(&self) -> BTreeMap<RowKey, Totals> {
        self.program.snapshot(&self.cpus, self.args.per_cpu)
    }

    async fn run(&mut self) -> Result<()> {
        let mechanism = self.program.entry.mechanism;
        errln!("Tracing hard IRQ handlers ({mechanism})... Hit Ctrl-C to end.");
        let mut out = Out::new();
        let stop = session::stop_requested(self.args.common.duration.duration);
        tokio::pin!(stop);
        let mut ticker = runqlat::ticker(self.args.interval.interval);
        let mut before = BTreeMap::new();
        let mut began = std::time::Instant::now();
        let mut printed = 0u64;
        let mut reported = Stats::default();
        loop {
            let stopped = tokio::select! {
                reason = &mut stop => { reason?; true }
                _ = runqlat::tick(&mut ticker) => false,
            };
            let now = self.snapshot();
            let seconds = began.elapsed().as_secs_f64();
            began = std::time::Instant::now();
            let rows = deltas(&now, &before);
            self.print(&rows, seconds, &mut out);
            runqlat::report_drops(TOOL, &self.program.stats.read(), &mut reported);
            printed += 1;
            if stopped || out.closed() || self.args.interval.count.is_some_and(|c| printed >= c) {
                break;
            }
            before = now;
        }
        if self.args.common.output.json {
            let end = self.program.stats.read();
            out.json(&end_record(
                TOOL,
                vec![self.program.entry.json(), self.program.exit.json()],
                end.map_full,
                end.read_errors,
                json!({}),
            ));
        }
        out.flush();
        Ok(())
    }

    fn unit(&self) -> (&'static str, f64) {
        if self.args.nanoseconds {
            ("nsecs", 1.0)
        } else {
            ("usecs", 1000.0)
        }
    }

    fn print(&self, rows: &[(RowKey, Totals)], seconds: f64, out: &mut Out) {
        let (unit, div) = self.unit();
        let names = IrqNames::read();
        let shown = &rows[..self.args.top.unwrap_or(rows.len()).min(rows.len())];
        let total_ns: u64 = rows.iter().map(|(_, t)| t.time_ns).sum();
        let busy_pct = if seconds > 0.0 && !self.cpus.is_empty() {
            total_ns as f64 / 1e9 / (seconds * self.cpus.len() as f64) * 100.0
        } else {
            0.0
        };
        if self.args.common.output.json {
            let rows: Vec<Value> = shown
                .iter()
                .map(|((irq, cpu), t)| {
                    let mut row = json!({
                        "irq": irq, "name": names.name(*irq), "count": t.count,
                        "time_ns": t.time_ns, "max_ns": t.max_ns,
                    });
                    if let Some(cpu) = cpu {
                        row["cpu"] = json!(cpu);
                    }
                    if self.args.dist {
                        row["hist"] = t.hist.to_json(unit);
                    }
                    row
                })
                .collect();
            out.json(&with_schema(
                TOOL,
                json!({"type": "interval", "time": hms_now(), "interval_ns": (seconds * 1e9) as u64,
                       "cpus": self.cpus, "hardirq_pct": busy_pct, "irqs": rows}),
            ));
            out.flush();
            return;
        }
        out.interval_header(self.args.common.output.timestamp);
        out.line(&format!(
            "hard IRQ time {busy_pct:.2}% of {} CPU{} over {seconds:.2}s",
            self.cpus.len(),
            if self.cpus.len() == 1 { "" } else { "s" }
        ));
        let cpu_col = if self.args.per_cpu { "  CPU" } else { "" };
        out.line(&format!(
            "{:>5}{cpu_col} {:<24} {:>10} {:>14} {:>11} {:>11}",
            "IRQ",
            "HANDLERS",
            "COUNT",
            format!("TOTAL_{unit}"),
            format!("AVG_{unit}"),
            format!("MAX_{unit}")
        ));
        for ((irq, cpu), t) in shown {
            let cpu = cpu.map(|c| format!(" {c:>4}")).unwrap_or_default();
            out.line(&format!(
                "{irq:>5}{cpu} {:<24} {:>10} {:>14.1} {:>11.2} {:>11.2}",
                names.name(*irq),
                t.count,
                t.time_ns as f64 / div,
                t.time_ns as f64 / div / t.count.max(1) as f64,
                t.max_ns as f64 / div
            ));
            if self.args.dist {
                for line in t.hist.render(unit).lines() {
                    out.line(line);
                }
            }
        }
        if rows.is_empty() {
            out.line("(no hard IRQs)");
        }
        out.line("");
        out.flush();
    }
}

/// Rows with activity since `before`, busiest (by time) first.
pub(crate) fn deltas(
    now: &BTreeMap<RowKey, Totals>,
    before: &BTreeMap<RowKey, Totals>,
) -> Vec<(RowKey, Totals)> {
    let mut rows: Vec<(RowKey, Totals)> = now
        .iter()
        .filter_map(|(key, t)| {
            let b = before.get(key).cloned().unwrap_or_default();
            let count = t.count.saturating_sub(b.count);
            (count > 0).then(|| {
                (
                    *key,
                    Totals {
                        count,
                        time_ns: t.time_ns.saturating_sub(b.time_ns),
                        max_ns: t.max_ns,
                        hist: t.hist.since(&b.hist),
                    },
                )
            })
        })
        .collect();
    rows.sort_by(|a, b| b.1.time_ns.cmp(&a.1.time_ns).then(a.0.cmp(&b.0)));
    rows
}

/// IRQ number → the names of its handlers, read once per report (lines come and go with
/// devices and drivers).
pub(crate) struct IrqNames(BTreeMap<u32, String>);

impl IrqNames {
    pub(crate) fn read() -> Self {
        let mut names = BTreeMap::new();
        if let Ok(text) = std::fs::read_to_string("/proc/interrupts") {
            for (irq, name) in parse_proc_interrupts(&text) {
                names.insert(irq, name);
            }
        }
        Self(names)
    }

    pub(crate) fn name(&self, irq: u32) -> String {
        // sysfs has the exact action list (CONFIG_SPARSE_IRQ); /proc/interrupts' last
        // column is the fallback.
        std::fs::read_to_string(format!("/sys/kernel/irq/{irq}/actions"))
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .or_else(|| self.0.get(&irq).cloned())
            .unwrap_or_else(|| format!("irq{irq}"))
    }
}

/// (IRQ number, handler names) of each numbered line of /proc/interrupts: the header gives the
/// number of CPU columns; after them come the chip name, the hardware IRQ and trigger
/// ("4-edge", "9-fasteoi") and then the handlers, comma-separated.
fn parse_proc_interrupts(text: &str) -> Vec<(u32, String)> {
    let mut lines = text.lines();
    let ncpus = lines
        .next()
        .map(|h| h.split_whitespace().count())
        .unwrap_or(0);
    lines
        .filter_map(|line| {
            let (irq, rest) = line.split_once(':')?;
            let irq: u32 = irq.trim().parse().ok()?;
            let fields: Vec<&str> = rest.split_whitespace().skip(ncpus).collect();
            // The handlers follow the trigger field, the first field "<hwirq>-<type>".
            let trigger = fields
                .iter()
                .position(|f| {
                    f.split_once('-')
                        .is_some_and(|(n, _)| n.parse::<u64>().is_ok())
                })
                .unwrap_or(fields.len().saturating_sub(2));
            let name = fields.get(trigger + 1..)?.join(" ");
            (!name.is_empty()).then_some((irq, name))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_interrupts_names() {
        let text = "           CPU0       CPU1\n  \
             9:          0          0   IO-APIC   9-fasteoi   acpi\n \
            36:          0     750879 PCI-MSIX-0000:00:02.0   1-edge      virtio1-req.0\n \
            16:          5          1   IO-APIC  16-fasteoi   ehci_hcd:usb1, i801_smbus\n\
            NMI:          0          0   Non-maskable interrupts\n";
        assert_eq!(
            parse_proc_interrupts(text),
            vec![
                (9, "acpi".to_string()),
                (36, "virtio1-req.0".to_string()),
                (16, "ehci_hcd:usb1, i801_smbus".to_string()),
            ]
        );
    }

    #[test]
    fn deltas_drop_idle_lines_and_sort_by_time() {
        let t = |count, time_ns| Totals {
            count,
            time_ns,
            ..Totals::default()
        };
        let before = BTreeMap::from([((1, None), t(5, 50)), ((2, None), t(1, 10))]);
        let now = BTreeMap::from([
            ((1, None), t(5, 50)),
            ((2, None), t(3, 40)),
            ((3, None), t(1, 100)),
        ]);
        let rows = deltas(&now, &before);
        let keys: Vec<(u32, u64, u64)> = rows
            .iter()
            .map(|((irq, _), t)| (*irq, t.count, t.time_ns))
            .collect();
        assert_eq!(keys, vec![(3, 1, 100), (2, 2, 30)]);
    }
}
