//! `tracer serve --config FILE`: which collectors run and which probes become metrics. Read and
//! checked completely (syntax, names, bucket specs, probe specs resolved against the binaries
//! and the kernel) before anything is loaded; every problem is one line naming the file and
//! line.
//!
//! ```toml
//! [collectors]
//! softirq = true          # tracer_softirq_*
//! forks = true            # tracer_forks_total
//! runqueue = true         # tracer_runqueue_latency_seconds
//! kthreads = true         # tracer_kthread_cpu_seconds_total
//! comm_limit = 500        # distinct comm label values per metric; the rest go to "other"
//! buckets = "1us..10s"    # histogram buckets of the built-in histograms
//!
//! [[probe]]
//! name = "nginx_requests"                             # the `probe` label
//! probe = "u:/usr/sbin/nginx:ngx_http_process_request"
//! kind = "counter"                                    # or "latency"
//! buckets = "1us..10s"                                # latency only
//! ```

use std::{collections::HashMap, ops::Range, path::Path};

use anyhow::{Result, anyhow, bail};
use serde::Deserialize;
use toml::Spanned;

use crate::{
    metrics::{Buckets, valid_name},
    probe_spec::{self, Kind, Probe},
};

/// Histogram buckets when a config says nothing.
pub const DEFAULT_BUCKETS: &str = "1us..10s";
/// Distinct `comm` label values per metric when a config says nothing.
pub const DEFAULT_COMM_LIMIT: usize = 500;
/// More probes than this in one config are refused (each loads its own object).
pub const MAX_CONFIG_PROBES: usize = 64;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    collectors: Option<Spanned<CollectorsFile>>,
    #[serde(default, rename = "probe")]
    probes: Vec<ProbeFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CollectorsFile {
    softirq: Option<bool>,
    forks: Option<bool>,
    runqueue: Option<bool>,
    kthreads: Option<bool>,
    comm_limit: Option<Spanned<i64>>,
    buckets: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProbeFile {
    name: Spanned<String>,
    probe: Spanned<String>,
    kind: Spanned<ProbeKind>,
    buckets: Option<Spanned<String>>,
}

/// What a configured probe measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProbeKind {
    /// Hits: `tracer_probe_hits_total{probe}`.
    Counter,
    /// Entry-to-return time: `tracer_probe_latency_seconds{probe}`.
    Latency,
}

/// The built-in collectors.
#[derive(Clone, Debug, PartialEq)]
pub struct Collectors {
    pub softirq: bool,
    pub forks: bool,
    pub runqueue: bool,
    pub kthreads: bool,
    pub comm_limit: usize,
    pub buckets: Buckets,
}

/// One configured probe, resolved to its attach points.
#[derive(Clone, Debug)]
pub struct ProbeConfig {
    pub name: String,
    pub spec: String,
    pub kind: ProbeKind,
    pub buckets: Buckets,
    pub probes: Vec<Probe>,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub collectors: Collectors,
    pub probes: Vec<ProbeConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            collectors: Collectors {
                softirq: true,
                forks: true,
                runqueue: true,
                kthreads: true,
                comm_limit: DEFAULT_COMM_LIMIT,
                buckets: parse_buckets(DEFAULT_BUCKETS).expect("valid default"),
            },
            probes: Vec::new(),
        }
    }
}

/// Reads and checks `path`.
pub fn load(path: &Path) -> Result<Config> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow!("cannot read config {}: {e}", path.display()))?;
    parse(&text, &path.display().to_string())
}

/// Checks a config's text; `origin` names it in errors.
pub fn parse(text: &str, origin: &str) -> Result<Config> {
    let line = |span: Range<usize>| text[..span.start.min(text.len())].matches('\n').count() + 1;
    let at = |span: Range<usize>| format!("{origin}:{}", line(span));
    let file: File = toml::from_str(text).map_err(|e| {
        let place = e.span().map(&at).unwrap_or_else(|| origin.to_string());
        anyhow!("{place}: {}", e.message().trim().replace('\n', " "))
    })?;
    let mut config = Config::default();
    if let Some(collectors) = file.collectors {
        let c = collectors.into_inner();
        let d = &mut config.collectors;
        d.softirq = c.softirq.unwrap_or(d.softirq);
        d.forks = c.forks.unwrap_or(d.forks);
        d.runqueue = c.runqueue.unwrap_or(d.runqueue);
        d.kthreads = c.kthreads.unwrap_or(d.kthreads);
        if let Some(limit) = c.comm_limit {
            d.comm_limit = match usize::try_from(*limit.get_ref()) {
                Ok(n @ 1..=100_000) => n,
                _ => bail!(
                    "{}: comm_limit must be between 1 and 100000, not {}",
                    at(limit.span()),
                    limit.get_ref()
                ),
            };
        }
        if let Some(buckets) = c.buckets {
            d.buckets = parse_buckets(buckets.get_ref())
                .map_err(|e| anyhow!("{}: {e}", at(buckets.span())))?;
        }
    }
    if file.probes.len() > MAX_CONFIG_PROBES {
        bail!(
            "{origin}: {} probes configured; at most {MAX_CONFIG_PROBES}",
            file.probes.len()
        );
    }
    let mut seen: HashMap<String, usize> = HashMap::new();
    for entry in file.probes {
        let name = entry.name.get_ref().clone();
        let place = at(entry.name.span());
        if !valid_name(&name) {
            bail!(
                "{place}: bad probe name '{name}': use letters, digits and '_', not starting with a digit"
            );
        }
        if let Some(first) = seen.insert(name.clone(), line(entry.name.span())) {
            bail!("{place}: duplicate metric name '{name}' (first defined on line {first})");
        }
        let kind = *entry.kind.get_ref();
        let spec_text = entry.probe.get_ref().clone();
        let spec_place = at(entry.probe.span());
        let spec = probe_spec::parse(&spec_text)
            .map_err(|e| anyhow!("{spec_place}: probe '{name}': {e:#}"))?;
        if kind == ProbeKind::Latency {
            match spec.kind() {
                Kind::Uprobe | Kind::Kprobe => {}
                Kind::Uretprobe | Kind::Kretprobe => bail!(
                    "{spec_place}: probe '{name}': a latency probe attaches entry and return \
                     itself: give u: or k:, not ur:/kr:"
                ),
                Kind::Tracepoint => bail!(
                    "{spec_place}: probe '{name}': a tracepoint has no return, so no latency: \
                     use kind = \"counter\""
                ),
            }
        }
        let buckets = match &entry.buckets {
            None => config.collectors.buckets,
            Some(_) if kind == ProbeKind::Counter => bail!(
                "{}: probe '{name}': buckets apply to kind = \"latency\" only",
                at(entry.buckets.as_ref().map(|b| b.span()).unwrap_or(0..0))
            ),
            Some(b) => parse_buckets(b.get_ref()).map_err(|e| anyhow!("{}: {e}", at(b.span())))?,
        };
        let probes = probe_spec::resolve(&spec, None)
            .map_err(|e| anyhow!("{spec_place}: probe '{name}': {e:#}"))?;
        config.probes.push(ProbeConfig {
            name,
            spec: spec_text,
            kind,
            buckets,
            probes,
        });
    }
    Ok(config)
}

/// `MIN..MAX` with units ns, us, ms, s (e.g. `1us..10s`): the log2 buckets whose bounds
/// cover that range. Values below MIN land in the first bucket, above MAX in `+Inf`.
pub fn parse_buckets(text: &str) -> Result<Buckets> {
    let bad = || {
        anyhow!(
            "bad bucket spec '{text}': expected MIN..MAX with units ns, us, ms, s (e.g. \"1us..10s\")"
        )
    };
    let (min, max) = text.split_once("..").ok_or_else(bad)?;
    let (min, max) = (
        parse_ns(min).ok_or_else(bad)?,
        parse_ns(max).ok_or_else(bad)?,
    );
    if min == 0 || min >= max {
        bail!("bad bucket spec '{text}': MIN must be above 0 and below MAX");
    }
    const LIMIT_NS: u64 = 86_400 * 1_000_000_000;
    if max > LIMIT_NS {
        bail!("bad bucket spec '{text}': MAX must be at most a day (86400s)");
    }
    Ok(Buckets::nanoseconds(min, max))
}

fn parse_ns(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let scale = match unit {
        "ns" => 1.0,
        "us" | "µs" => 1e3,
        "ms" => 1e6,
        "s" => 1e9,
        _ => return None,
    };
    let ns = number * scale;
    (ns.is_finite() && ns >= 0.0 && ns < u64::MAX as f64).then_some(ns.round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(text: &str) -> String {
        format!("{:#}", parse(text, "t.toml").expect_err("an error"))
    }

    #[test]
    fn defaults_and_collectors() {
        let c = parse("", "t.toml").unwrap();
        assert!(c.collectors.softirq && c.collectors.forks && c.probes.is_empty());
        let c = parse(
            "[collectors]\nsoftirq = false\ncomm_limit = 3\nbuckets = \"1ms..1s\"\n",
            "t.toml",
        )
        .unwrap();
        assert!(!c.collectors.softirq && c.collectors.kthreads);
        assert_eq!(c.collectors.comm_limit, 3);
        assert_eq!(
            c.collectors.buckets,
            Buckets::nanoseconds(1_000_000, 1_000_000_000)
        );
    }

    #[test]
    fn errors_are_one_line_with_a_place() {
        for (text, want) in [
            (
                "[collectors]\nsoftirqs = true\n",
                "t.toml:2: unknown field `softirqs`",
            ),
            (
                "[collectors]\nbuckets = \"10s..1us\"\n",
                "t.toml:2: bad bucket spec",
            ),
            (
                "[collectors]\nbuckets = \"1 parsec..2s\"\n",
                "bad bucket spec",
            ),
            ("[collectors]\ncomm_limit = 0\n", "t.toml:2: comm_limit"),
            (
                "[[probe]]\nname = \"x\"\nprobe = \"t:sched:sched_switch\"\nkind = \"histo\"\n",
                "t.toml:4: unknown variant `histo`",
            ),
            (
                "[[probe]]\nname = \"bad-name\"\nprobe = \"t:sched:sched_switch\"\nkind = \"counter\"\n",
                "t.toml:2: bad probe name 'bad-name'",
            ),
            (
                "[[probe]]\nname = \"x\"\nprobe = \"nonsense\"\nkind = \"counter\"\n",
                "t.toml:3: probe 'x'",
            ),
            (
                "[[probe]]\nname = \"x\"\nprobe = \"t:sched:sched_switch\"\nkind = \"latency\"\n",
                "a tracepoint has no return",
            ),
            (
                "[[probe]]\nname = \"x\"\nprobe = \"t:sched:sched_switch\"\nkind = \"counter\"\nbuckets = \"1us..1s\"\n",
                "buckets apply to kind",
            ),
            (
                "[[probe]]\nname = \"x\"\nkind = \"counter\"\n",
                "missing field `probe`",
            ),
            ("[collectors\n", "t.toml:1:"),
        ] {
            let e = error(text);
            assert!(e.contains(want), "{text:?}: {e}");
            assert!(!e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn bucket_specs() {
        assert_eq!(parse_ns("1us"), Some(1000));
        assert_eq!(parse_ns("2.5ms"), Some(2_500_000));
        assert_eq!(parse_ns("10"), None);
        assert_eq!(parse_ns("s"), None);
        let b = parse_buckets("1us..10s").unwrap();
        assert_eq!((b.first, b.last), (9, 33));
        assert!(parse_buckets("1us").is_err());
        assert!(parse_buckets("0ns..1s").is_err());
        assert!(parse_buckets("1s..2d").is_err());
        assert!(parse_buckets("1s..100000s").is_err());
    }
}
