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
//! reclaim = false         # tracer_reclaim_* (reclaimtop's object)
//! block = false           # tracer_block_io_* per device (biotop's object)
//! jbd2 = false            # tracer_jbd2_* per journal (biotop --jbd2's object)
//! workqueue = false       # tracer_workqueue_* per work function (wqtop's object)
//! comm_limit = 500        # distinct comm label values per metric; the rest go to "other"
//! device_limit = 64       # distinct device / journal label values; the rest go to "other"
//! function_limit = 200    # distinct work-function label values; the rest go to "other"
//! buckets = "1us..10s"    # histogram buckets of the built-in histograms
//! block_buckets = "10us..10s"    # block IO latency buckets (default: buckets)
//! reclaim_buckets = "10us..10s"  # reclaim stall buckets (default: buckets)
//! cgroup = "/sys/fs/cgroup/app"  # only tasks in this cgroup v2 and below (every collector
//!                                # and probe that filters tasks; cgroup_exact = true: only it)
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
/// Distinct `device` / `journal` label values when a config says nothing.
pub const DEFAULT_DEVICE_LIMIT: usize = 64;
/// Distinct `function` label values when a config says nothing.
pub const DEFAULT_FUNCTION_LIMIT: usize = 200;
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
    reclaim: Option<bool>,
    block: Option<bool>,
    jbd2: Option<bool>,
    workqueue: Option<bool>,
    comm_limit: Option<Spanned<i64>>,
    device_limit: Option<Spanned<i64>>,
    function_limit: Option<Spanned<i64>>,
    buckets: Option<Spanned<String>>,
    block_buckets: Option<Spanned<String>>,
    reclaim_buckets: Option<Spanned<String>>,
    cgroup: Option<Spanned<String>>,
    cgroup_exact: Option<Spanned<bool>>,
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
    /// Off by default: they cost per event on hot paths (every block IO, every work item).
    pub reclaim: bool,
    pub block: bool,
    pub jbd2: bool,
    pub workqueue: bool,
    pub comm_limit: usize,
    pub device_limit: usize,
    pub function_limit: usize,
    pub buckets: Buckets,
    /// None: `buckets`.
    pub block_buckets: Option<Buckets>,
    pub reclaim_buckets: Option<Buckets>,
    /// `cgroup = "PATH"` / `cgroup_exact`: the `--cgroup` filter of every task-filtering
    /// collector and probe (one per process, like the tools' flag), and the config line it
    /// came from for errors.
    pub cgroup: Option<crate::cgroup::CgroupArgs>,
    pub cgroup_place: String,
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
                reclaim: false,
                block: false,
                jbd2: false,
                workqueue: false,
                comm_limit: DEFAULT_COMM_LIMIT,
                device_limit: DEFAULT_DEVICE_LIMIT,
                function_limit: DEFAULT_FUNCTION_LIMIT,
                buckets: parse_buckets(DEFAULT_BUCKETS).expect("valid default"),
                block_buckets: None,
                reclaim_buckets: None,
                cgroup: None,
                cgroup_place: String::new(),
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
        d.reclaim = c.reclaim.unwrap_or(d.reclaim);
        d.block = c.block.unwrap_or(d.block);
        d.jbd2 = c.jbd2.unwrap_or(d.jbd2);
        d.workqueue = c.workqueue.unwrap_or(d.workqueue);
        let limit = |key: &str, value: Option<Spanned<i64>>, default: usize| -> Result<usize> {
            let Some(value) = value else {
                return Ok(default);
            };
            match usize::try_from(*value.get_ref()) {
                Ok(n @ 1..=100_000) => Ok(n),
                _ => bail!(
                    "{}: {key} must be between 1 and 100000, not {}",
                    at(value.span()),
                    value.get_ref()
                ),
            }
        };
        d.comm_limit = limit("comm_limit", c.comm_limit, d.comm_limit)?;
        d.device_limit = limit("device_limit", c.device_limit, d.device_limit)?;
        d.function_limit = limit("function_limit", c.function_limit, d.function_limit)?;
        let buckets = |spec: Option<Spanned<String>>| -> Result<Option<Buckets>> {
            spec.map(|b| parse_buckets(b.get_ref()).map_err(|e| anyhow!("{}: {e}", at(b.span()))))
                .transpose()
        };
        if let Some(b) = buckets(c.buckets)? {
            d.buckets = b;
        }
        d.block_buckets = buckets(c.block_buckets)?;
        d.reclaim_buckets = buckets(c.reclaim_buckets)?;
        match (c.cgroup, c.cgroup_exact) {
            (Some(path), exact) => {
                d.cgroup_place = at(path.span());
                d.cgroup = Some(crate::cgroup::CgroupArgs {
                    cgroup: Some(path.into_inner().into()),
                    cgroup_exact: exact.is_some_and(|e| e.into_inner()),
                });
            }
            (None, Some(exact)) => {
                bail!("{}: cgroup_exact needs cgroup = \"PATH\"", at(exact.span()))
            }
            (None, None) => {}
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
        crate::session::parse_ns(min).ok_or_else(bad)?,
        crate::session::parse_ns(max).ok_or_else(bad)?,
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
        assert!(!c.collectors.reclaim && !c.collectors.block);
        assert!(!c.collectors.jbd2 && !c.collectors.workqueue);
        assert_eq!(c.collectors.comm_limit, 3);
        assert_eq!(
            c.collectors.buckets,
            Buckets::nanoseconds(1_000_000, 1_000_000_000)
        );
    }

    #[test]
    fn kernel_thread_collectors() {
        let c = parse(
            "[collectors]\nreclaim = true\nblock = true\njbd2 = true\nworkqueue = true\n\
             device_limit = 4\nfunction_limit = 7\nblock_buckets = \"10us..1s\"\n",
            "t.toml",
        )
        .unwrap()
        .collectors;
        assert!(c.reclaim && c.block && c.jbd2 && c.workqueue);
        assert_eq!((c.device_limit, c.function_limit), (4, 7));
        assert_eq!(
            c.block_buckets,
            Some(Buckets::nanoseconds(10_000, 1_000_000_000))
        );
        assert_eq!(c.reclaim_buckets, None);
    }

    #[test]
    fn documented_example_parses() {
        let text = include_str!("../../../../docs/tools/serve.example.toml");
        let c = parse(text, "serve.example.toml").unwrap().collectors;
        assert!(c.softirq && c.reclaim && c.block && c.jbd2 && c.workqueue);
        assert_eq!(c.device_limit, 64);
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
                "[collectors]\nblock = true\ndevice_limit = -1\n",
                "t.toml:3: device_limit must be between",
            ),
            (
                "[collectors]\nfunction_limit = 100001\n",
                "t.toml:2: function_limit must be between",
            ),
            (
                "[collectors]\nblock_buckets = \"1s\"\n",
                "t.toml:2: bad bucket spec '1s'",
            ),
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
        assert_eq!(crate::session::parse_ns("1us"), Some(1000));
        assert_eq!(crate::session::parse_ns("2.5ms"), Some(2_500_000));
        assert_eq!(crate::session::parse_ns("10"), None);
        assert_eq!(crate::session::parse_ns("s"), None);
        let b = parse_buckets("1us..10s").unwrap();
        assert_eq!((b.first, b.last), (9, 33));
        assert!(parse_buckets("1us").is_err());
        assert!(parse_buckets("0ns..1s").is_err());
        assert!(parse_buckets("1s..2d").is_err());
        assert!(parse_buckets("1s..100000s").is_err());
    }
}
