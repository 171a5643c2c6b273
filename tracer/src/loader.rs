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

/// Removes every key of a per-CPU hash map, returning what each held, one lookup-and-delete
/// per key (see `lookup_and_delete_per_cpu`): an increment made before the call is returned,
/// one made after it starts a fresh key for the next drain. Interval modes drain instead of
/// diffing snapshots, so keys of exited tasks or one-off values do not pile up until the map
/// is full.
pub fn drain_per_cpu<K: aya::Pod, V: aya::Pod>(map: &MapData) -> Result<Vec<(K, Vec<V>)>> {
    // Walk the keys first: deleting while walking would restart the walk.
    let mut keys: Vec<K> = Vec::new();
    let mut next = std::mem::MaybeUninit::<K>::uninit();
    let mut current: Option<K> = None;
    loop {
        let key_ptr = current.as_ref().map_or(std::ptr::null(), |k| k as *const K);
        match map_elem_call(map, BPF_MAP_GET_NEXT_KEY, key_ptr, next.as_mut_ptr().cast()) {
            // SAFETY: the kernel wrote a whole key.
            Ok(()) => {
                let key = unsafe { next.assume_init_read() };
                keys.push(key);
                current = Some(key);
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => break,
            Err(e) => return Err(anyhow!("cannot walk a map's keys: {e}")),
        }
    }
    let mut drained = Vec::with_capacity(keys.len());
    for key in keys {
        // None: gone meanwhile (another reader), nothing to report for it.
        if let Some(values) = lookup_and_delete_per_cpu(map, &key)? {
            drained.push((key, values));
        }
    }
    Ok(drained)
}

/// Removes `key` from a per-CPU hash map and returns what it held on each possible CPU (None
/// when it is not there), with BPF_MAP_LOOKUP_AND_DELETE_ELEM (Linux 5.14+, atomic per key:
/// the values are copied and the key unlinked under the bucket lock). An increment made before
/// the call is in the values; one made after it creates the key afresh. Only a program that
/// looked the key up just before the delete and increments just after it (a window of
/// nanoseconds) can lose its increment, as with BCC's read-and-clear. aya 0.14 offers this
/// operation only for queues and stacks.
pub fn lookup_and_delete_per_cpu<K: aya::Pod, V: aya::Pod>(
    map: &MapData,
    key: &K,
) -> Result<Option<Vec<V>>> {
    let cpus = possible_cpus()?;
    // Per-CPU values come back 8-byte aligned, one slot per possible CPU.
    let stride = size_of::<V>().next_multiple_of(8);
    let mut buffer = vec![0u8; stride * cpus];
    match map_elem_call(
        map,
        BPF_MAP_LOOKUP_AND_DELETE_ELEM,
        key,
        buffer.as_mut_ptr(),
    ) {
        Ok(()) => Ok(Some(
            (0..cpus)
                // SAFETY: each slot holds a V written by the kernel; read unaligned.
                .map(|cpu| unsafe {
                    std::ptr::read_unaligned(buffer[cpu * stride..].as_ptr().cast::<V>())
                })
                .collect(),
        )),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(anyhow!(
            "cannot delete a map key (lookup-and-delete needs Linux 5.14+): {e}"
        )),
    }
}

const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
const BPF_MAP_LOOKUP_AND_DELETE_ELEM: libc::c_long = 21;

/// bpf(2) with `cmd`, one of the map element commands, on `map`: `key` is null or points to a
/// K, `out` to a buffer of the size the kernel writes for `cmd` (a K for GET_NEXT_KEY, the
/// per-CPU values for LOOKUP_AND_DELETE_ELEM).
fn map_elem_call<K>(
    map: &MapData,
    cmd: libc::c_long,
    key: *const K,
    out: *mut u8,
) -> std::io::Result<()> {
    use std::os::fd::{AsFd as _, AsRawFd as _};

    /// `bpf_attr` for the map element commands.
    #[repr(C)]
    struct ElemAttr {
        map_fd: u32,
        _pad: u32,
        key: u64,
        value_or_next_key: u64,
        flags: u64,
    }
    let attr = ElemAttr {
        map_fd: map.fd().as_fd().as_raw_fd() as u32,
        _pad: 0,
        key: key as u64,
        value_or_next_key: out as u64,
        flags: 0,
    };
    // SAFETY: `attr` is the kernel's layout for these commands; the caller passes pointers to
    // buffers of the sizes the kernel reads and writes.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            &raw const attr,
            size_of::<ElemAttr>() as libc::c_uint,
        )
    };
    if ret < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Possible CPUs (the slots of a per-CPU map value), read once.
fn possible_cpus() -> Result<usize> {
    static CPUS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    if let Some(&cpus) = CPUS.get() {
        return Ok(cpus);
    }
    let cpus =
        aya::util::nr_cpus().map_err(|(what, e)| anyhow!("cannot count CPUs ({what}): {e}"))?;
    Ok(*CPUS.get_or_init(|| cpus))
}

/// Hands freed heap memory back to the kernel. After a burst (thousands of threads in one
/// snapshot) glibc keeps the freed pages in its arenas, and a long interval-mode run would
/// carry the burst's peak RSS to its end. Costs a walk of the free lists: call it when a lot
/// was just freed, not every interval.
pub fn trim_heap() {
    // musl's allocator returns freed pages on its own and has no malloc_trim.
    #[cfg(target_env = "gnu")]
    // SAFETY: plain libc call (0 = keep no extra padding); glibc locks its arenas itself.
    unsafe {
        libc::malloc_trim(0);
    }
}
