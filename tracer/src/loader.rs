//! Loading a tool's eBPF object (embedded in the binary at build time) with its globals, and
//! reading the shared `STATS` counters back.

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Ebpf, EbpfError, EbpfLoader,
    maps::{MapData, PerCpuArray},
};
use tracer_common::stats::{STAT_EVENTS, STAT_LOST, STAT_MAP_FULL, STAT_READ_ERRORS};

/// The eBPF objects built from `tracer-ebpf`, one per tool.
pub mod objects {
    pub static FORKSNOOP: &[u8] =
        aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/forksnoop"));
    pub static PROBE: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/probe"));
    pub static SOFTIRQ_TOP: &[u8] =
        aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/softirq_top"));
    pub static PROFILE: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/profile"));
    pub static OFFCPUTIME: &[u8] =
        aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/offcputime"));
    pub static PROBES: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/probes"));
    pub static SCHED: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sched"));
}

/// Loads `object` after `configure` set its globals; turns failures into one line.
pub fn load<'a>(object: &[u8], configure: impl FnOnce(&mut EbpfLoader<'a>)) -> Result<Ebpf> {
    crate::privileges::require_bpf()?;
    crate::privileges::raise_memlock();
    let mut loader = EbpfLoader::new();
    configure(&mut loader);
    loader.load(object).map_err(load_error)
}

fn load_error(err: EbpfError) -> anyhow::Error {
    match crate::attach::errno(&err) {
        Some(libc::EPERM) | Some(libc::EACCES) => anyhow!(
            "permission denied creating BPF maps or programs: run as root (or with CAP_BPF + CAP_PERFMON)"
        ),
        _ => anyhow!("cannot load the BPF object: {err}"),
    }
}

/// Takes map `name` out of `ebpf` as a typed map.
pub fn take<T: TryFrom<aya::maps::Map>>(ebpf: &mut Ebpf, name: &str) -> Result<T>
where
    T::Error: std::error::Error + Send + Sync + 'static,
{
    let map = ebpf
        .take_map(name)
        .ok_or_else(|| anyhow!("{name} map missing (build bug)"))?;
    T::try_from(map).with_context(|| format!("map {name}"))
}

/// The shared per-CPU counters, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    pub events: u64,
    pub lost: u64,
    pub map_full: u64,
    pub read_errors: u64,
}

/// Reads a tool's `STATS` map.
pub struct StatsReader {
    map: PerCpuArray<MapData, u64>,
}

impl StatsReader {
    pub fn take(ebpf: &mut Ebpf) -> Result<Self> {
        let map = ebpf
            .take_map("STATS")
            .ok_or_else(|| anyhow!("STATS map missing (build bug)"))?;
        Ok(Self {
            map: PerCpuArray::try_from(map)?,
        })
    }

    /// One `tracer_common::stats` slot summed over CPUs (for slots `Stats` does not name).
    pub fn slot(&self, slot: u32) -> u64 {
        self.map
            .get(&slot, 0)
            .map(|values| values.iter().sum())
            .unwrap_or(0)
    }

    pub fn read(&self) -> Stats {
        let slot = |i: u32| -> u64 {
            self.map
                .get(&i, 0)
                .map(|values| values.iter().sum())
                .unwrap_or(0)
        };
        Stats {
            events: slot(STAT_EVENTS),
            lost: slot(STAT_LOST),
            map_full: slot(STAT_MAP_FULL),
            read_errors: slot(STAT_READ_ERRORS),
        }
    }
}

/// What grew between two snapshots of a counter map (per-key sums since load): the keys whose
/// count went up, with the increase. Interval output of every counting tool is built on this,
/// so the kernel's maps are never cleared while programs write to them.
pub fn increases<K: Copy + Eq + std::hash::Hash>(
    now: &std::collections::HashMap<K, u64>,
    before: &std::collections::HashMap<K, u64>,
) -> Vec<(K, u64)> {
    now.iter()
        .filter_map(|(key, &n)| {
            let grown = n.saturating_sub(before.get(key).copied().unwrap_or(0));
            (grown > 0).then_some((*key, grown))
        })
        .collect()
}
