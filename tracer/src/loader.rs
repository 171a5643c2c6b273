//! Loading a tool's eBPF object (embedded in the binary at build time) with its globals, and
//! reading the shared `STATS` counters back.

use std::sync::atomic::{AtomicU8, Ordering};

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
    pub static MIGRATIONS: &[u8] =
        aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/migrations"));
    pub static WQTOP: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/wqtop"));
    pub static BIOTOP: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/biotop"));
    pub static RECLAIMTOP: &[u8] =
        aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/reclaimtop"));
    pub static HARDIRQS: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/hardirqs"));
    pub static FUNCGRAPH: &[u8] =
        aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/funcgraph"));
    pub static FUNCTRACE: &[u8] =
        aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/functrace"));
    pub static MEMLEAK: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/memleak"));
}

/// Loads `object` after `configure` set its globals; turns failures into one line.
pub fn load<'a>(object: &[u8], configure: impl FnOnce(&mut EbpfLoader<'a>)) -> Result<Ebpf> {
    crate::privileges::require_bpf()?;
    crate::privileges::raise_memlock();
    let mut loader = EbpfLoader::new();
    crate::cgroup::apply(&mut loader);
    configure(&mut loader);
    for (name, entries) in map_size_overrides()? {
        loader.map_max_entries(name, *entries);
    }
    loader.load(object).map_err(load_error)
}

/// `TRACER_MAP_MAX_ENTRIES=NAME=N[,NAME=N...]`: the size of the named maps in every object
/// loaded (a ring buffer's in bytes), over the tool's own. The overload tests use it to
/// overflow a ring buffer or a hash map with a few hundred forks where the real sizes need
/// tens of thousands (minutes under qemu's TCG emulation); it also lets a user try another
/// size without a rebuild. Names a map does not have are ignored (objects differ).
fn map_size_overrides() -> Result<&'static [(String, u32)]> {
    static PARSED: std::sync::OnceLock<Result<Vec<(String, u32)>, String>> =
        std::sync::OnceLock::new();
    let parsed = PARSED.get_or_init(|| {
        std::env::var_os("TRACER_MAP_MAX_ENTRIES").map_or(Ok(Vec::new()), |spec| {
            parse_map_sizes(&spec.to_string_lossy())
        })
    });
    parsed.as_deref().map_err(|e| anyhow!("{e}"))
}

/// `NAME=N[,NAME=N...]` as (name, entries) pairs, or the one-line error naming the bad item.
fn parse_map_sizes(spec: &str) -> Result<Vec<(String, u32)>, String> {
    spec.split(',')
        .filter(|item| !item.trim().is_empty())
        .map(|item| {
            item.split_once('=')
                .and_then(|(name, n)| Some((name.trim().to_string(), n.trim().parse().ok()?)))
                .filter(|(name, n)| !name.is_empty() && *n > 0)
                .ok_or_else(|| {
                    format!(
                        "TRACER_MAP_MAX_ENTRIES: '{item}' is not MAP=ENTRIES (e.g. \
                         EVENTS=4096,PID_COUNTS=64)"
                    )
                })
        })
        .collect()
}

fn load_error(err: EbpfError) -> anyhow::Error {
    // Every tool's events travel through a ring buffer map: on a kernel without one (before
    // 5.8, e.g. Debian 10's 4.19) creating it fails, and that is the line to print.
    if let EbpfError::MapError(aya::maps::MapError::CreateError { .. }) = &err
        && matches!(
            aya::sys::is_map_supported(aya::maps::MapType::RingBuf),
            Ok(false)
        )
    {
        return anyhow!(
            "needs the BPF ring buffer (BPF_MAP_TYPE_RINGBUF, Linux 5.8+); {}",
            crate::btf::SUPPORTED
        );
    }
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

/// Removes every key of a per-CPU hash map, returning what each held: an increment made
/// before the call is returned, one made after it starts a fresh key for the next drain.
/// Interval modes drain instead of diffing snapshots, so keys of exited tasks or one-off values
/// do not pile up until the map is full.
///
/// How, by what the kernel has (tried once, remembered; see `HashDelete`): one
/// lookup-and-delete per key (Linux 5.14+, atomic per key); else
/// BPF_MAP_LOOKUP_AND_DELETE_BATCH (5.6+, atomic per hash bucket: the same guarantee); else a
/// lookup then a delete per key, which loses an increment made between the two (see
/// docs/architecture.md, "Draining maps").
pub fn drain_per_cpu<K: aya::Pod, V: aya::Pod>(map: &MapData) -> Result<Vec<(K, Vec<V>)>> {
    drain_fd::<K, V>(map_fd(map), hash_delete())
}

/// `drain_per_cpu` on a raw map fd with a chosen method (the unit tests try each one).
fn drain_fd<K: aya::Pod, V: aya::Pod>(fd: u32, method: HashDelete) -> Result<Vec<(K, Vec<V>)>> {
    if method == HashDelete::Batch {
        match drain_batch::<K, V>(fd) {
            Ok(drained) => return Ok(drained),
            Err(e) if is_unsupported(&e) => {
                HASH_DELETE.store(HashDelete::LookupThenDelete as u8, Ordering::Relaxed);
            }
            Err(e) => return Err(anyhow!("cannot drain a map: {e}")),
        }
    }
    // Walk the keys first: deleting while walking would restart the walk.
    let mut keys: Vec<K> = Vec::new();
    let mut next = std::mem::MaybeUninit::<K>::uninit();
    let mut current: Option<K> = None;
    loop {
        let key_ptr = current.as_ref().map_or(std::ptr::null(), |k| k as *const K);
        match map_elem_call(fd, BPF_MAP_GET_NEXT_KEY, key_ptr, next.as_mut_ptr().cast()) {
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
        // The first key may find out that the kernel lacks the per-key operation.
        let per_key = if method == HashDelete::Elem && hash_delete() == HashDelete::Elem {
            HashDelete::Elem
        } else {
            HashDelete::LookupThenDelete
        };
        // None: gone meanwhile (another reader), nothing to report for it.
        if let Some(values) = take_key_fd(fd, &key, per_key)? {
            drained.push((key, values));
        }
    }
    Ok(drained)
}

/// Removes `key` from a per-CPU hash map and returns what it held on each possible CPU (None
/// when it is not there). With BPF_MAP_LOOKUP_AND_DELETE_ELEM (Linux 5.14+) it is atomic per
/// key: the values are copied and the key unlinked under the bucket lock, so an increment made
/// before the call is in the values and one made after it creates the key afresh; only a
/// program that looked the key up just before the delete and increments just after it (a
/// window of nanoseconds) can lose its increment, as with BCC's read-and-clear. Older kernels
/// get a lookup then a delete, which also loses what is added between the two calls. aya 0.14
/// offers lookup-and-delete only for queues and stacks.
pub fn lookup_and_delete_per_cpu<K: aya::Pod, V: aya::Pod>(
    map: &MapData,
    key: &K,
) -> Result<Option<Vec<V>>> {
    let method = match hash_delete() {
        HashDelete::Elem => HashDelete::Elem,
        HashDelete::Batch | HashDelete::LookupThenDelete => HashDelete::LookupThenDelete,
    };
    take_key_fd(map_fd(map), key, method)
}

fn take_key_fd<K: aya::Pod, V: aya::Pod>(
    fd: u32,
    key: &K,
    method: HashDelete,
) -> Result<Option<Vec<V>>> {
    let cpus = possible_cpus()?;
    // Per-CPU values come back 8-byte aligned, one slot per possible CPU.
    let stride = size_of::<V>().next_multiple_of(8);
    let mut buffer = vec![0u8; stride * cpus];
    let values = |buffer: &[u8]| -> Vec<V> {
        (0..cpus)
            // SAFETY: each slot holds a V written by the kernel; read unaligned.
            .map(|cpu| unsafe {
                std::ptr::read_unaligned(buffer[cpu * stride..].as_ptr().cast::<V>())
            })
            .collect()
    };
    if method == HashDelete::Elem {
        match map_elem_call(fd, BPF_MAP_LOOKUP_AND_DELETE_ELEM, key, buffer.as_mut_ptr()) {
            Ok(()) => return Ok(Some(values(&buffer))),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
            Err(e) if is_unsupported(&e) => {
                // Before Linux 5.14 hash maps answer ENOTSUPP: use the next method from now on.
                let next = if hash_map_ops().batch {
                    HashDelete::Batch
                } else {
                    HashDelete::LookupThenDelete
                };
                HASH_DELETE.store(next as u8, Ordering::Relaxed);
            }
            Err(e) => return Err(anyhow!("cannot delete a map key: {e}")),
        }
    }
    match map_elem_call(fd, BPF_MAP_LOOKUP_ELEM, key, buffer.as_mut_ptr()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
        Err(e) => return Err(anyhow!("cannot read a map key: {e}")),
    }
    match map_elem_call(fd, BPF_MAP_DELETE_ELEM, key, std::ptr::null_mut()) {
        Ok(()) => Ok(Some(values(&buffer))),
        // Deleted by another reader between the two calls: it reported the values.
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(anyhow!("cannot delete a map key: {e}")),
    }
}

/// BPF_MAP_LOOKUP_AND_DELETE_BATCH over the whole map: each call empties whole hash buckets
/// under their locks. The kernel needs room for the biggest bucket (ENOSPC otherwise): the
/// batch grows until it fits.
fn drain_batch<K: aya::Pod, V: aya::Pod>(fd: u32) -> std::io::Result<Vec<(K, Vec<V>)>> {
    let cpus = possible_cpus().map_err(std::io::Error::other)?;
    batch_call(fd, BPF_MAP_LOOKUP_AND_DELETE_BATCH, PerKey::PerCpu(cpus))
}

/// Every entry of a (not per-CPU) hash map, read with BPF_MAP_LOOKUP_BATCH (Linux 5.6+): a few
/// syscalls for the whole map instead of two per key, so the copy spans microseconds rather
/// than milliseconds (ktop pairs it with per-CPU state read just before and after). None when
/// the kernel lacks the command: the caller walks the map instead.
pub fn read_all_batch<K: aya::Pod, V: aya::Pod>(map: &MapData) -> Result<Option<Vec<(K, V)>>> {
    match batch_call::<K, V>(map_fd(map), BPF_MAP_LOOKUP_BATCH, PerKey::One) {
        Ok(entries) => Ok(Some(
            entries
                .into_iter()
                .filter_map(|(k, mut v)| v.pop().map(|v| (k, v)))
                .collect(),
        )),
        Err(e) if is_unsupported(&e) => Ok(None),
        Err(e) => Err(anyhow!("cannot read a map: {e}")),
    }
}

/// How many values the kernel copies per key in a batch command.
#[derive(Clone, Copy)]
enum PerKey {
    /// A plain map: one value of exactly the value size.
    One,
    /// A per-CPU map: one 8-byte-aligned slot per possible CPU.
    PerCpu(usize),
}

/// A batch command (`cmd`: BPF_MAP_LOOKUP_BATCH or BPF_MAP_LOOKUP_AND_DELETE_BATCH) over the
/// whole map, each key with its values.
fn batch_call<K: aya::Pod, V: aya::Pod>(
    fd: u32,
    cmd: libc::c_long,
    per_key: PerKey,
) -> std::io::Result<Vec<(K, Vec<V>)>> {
    let (stride, cpus) = match per_key {
        PerKey::One => (size_of::<V>(), 1),
        PerKey::PerCpu(cpus) => (size_of::<V>().next_multiple_of(8), cpus),
    };
    let mut drained = Vec::new();
    let mut batch_size: u32 = 256;
    // The hash map's batch token is a bucket index (u32); 8 bytes leave room.
    let (mut in_batch, mut out_batch) = (0u64, 0u64);
    let mut first = true;
    loop {
        let mut keys = vec![0u8; size_of::<K>() * batch_size as usize];
        let mut values = vec![0u8; stride * cpus * batch_size as usize];
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { &raw mut in_batch as u64 },
            out_batch: &raw mut out_batch as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: batch_size,
            map_fd: fd,
            elem_flags: 0,
            flags: 0,
        };
        // SAFETY: `attr` is the kernel's layout for the batch commands; the buffers hold
        // `count` keys and values.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                cmd,
                &raw mut attr,
                size_of::<BatchAttr>() as libc::c_uint,
            )
        };
        let err = (ret < 0).then(std::io::Error::last_os_error);
        match &err {
            Some(e) if e.raw_os_error() == Some(libc::ENOSPC) && attr.count == 0 => {
                batch_size = batch_size.saturating_mul(2);
                continue;
            }
            Some(e) if e.raw_os_error() != Some(libc::ENOENT) => return Err(err.expect("set")),
            _ => {}
        }
        for i in 0..attr.count as usize {
            // SAFETY: the kernel wrote `count` whole keys and per-CPU values; read unaligned.
            let key =
                unsafe { std::ptr::read_unaligned(keys[i * size_of::<K>()..].as_ptr().cast()) };
            let base = i * stride * cpus;
            let per_cpu = (0..cpus)
                .map(|cpu| unsafe {
                    std::ptr::read_unaligned(values[base + cpu * stride..].as_ptr().cast::<V>())
                })
                .collect();
            drained.push((key, per_cpu));
        }
        if err.is_some() {
            // ENOENT: no bucket left.
            return Ok(drained);
        }
        in_batch = out_batch;
        first = false;
    }
}

/// `bpf_attr` for the batch map commands.
#[repr(C)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// How a per-CPU hash map's keys are taken out, best first. The first use finds out what the
/// kernel has and stores it in `HASH_DELETE`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum HashDelete {
    /// BPF_MAP_LOOKUP_AND_DELETE_ELEM on hash maps (Linux 5.14+).
    Elem = 0,
    /// BPF_MAP_LOOKUP_AND_DELETE_BATCH (5.6+): whole maps only, not one key.
    Batch = 1,
    /// BPF_MAP_LOOKUP_ELEM then BPF_MAP_DELETE_ELEM.
    LookupThenDelete = 2,
}

static HASH_DELETE: AtomicU8 = AtomicU8::new(HashDelete::Elem as u8);

fn hash_delete() -> HashDelete {
    match HASH_DELETE.load(Ordering::Relaxed) {
        0 => HashDelete::Elem,
        1 => HashDelete::Batch,
        _ => HashDelete::LookupThenDelete,
    }
}

/// ENOTSUPP (524, what the kernel returns to user space for an operation a map lacks),
/// EOPNOTSUPP or EINVAL (an unknown command on kernels older than it).
fn is_unsupported(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(524 | libc::EOPNOTSUPP | libc::EINVAL)
    )
}

/// Which hash map operations this kernel has, each proven on a scratch per-CPU hash map with
/// one key in it (for doctor and for `drain_per_cpu`'s choice).
#[derive(Clone, Copy, Debug)]
pub struct HashMapOps {
    /// BPF_MAP_LOOKUP_AND_DELETE_ELEM (Linux 5.14+).
    pub lookup_and_delete: bool,
    /// BPF_MAP_LOOKUP_AND_DELETE_BATCH (Linux 5.6+).
    pub batch: bool,
}

/// Tries each operation on a real map (errors from creating the map count as "no").
pub fn hash_map_ops() -> HashMapOps {
    let try_op = |op: fn(u32) -> std::io::Result<bool>| -> bool {
        let Ok(map) = ScratchMap::new() else {
            return false;
        };
        op(map.0).unwrap_or(false)
    };
    HashMapOps {
        lookup_and_delete: try_op(|fd| {
            let mut out = vec![0u8; 8 * possible_cpus().map_err(std::io::Error::other)?];
            map_elem_call(
                fd,
                BPF_MAP_LOOKUP_AND_DELETE_ELEM,
                &SCRATCH_KEY,
                out.as_mut_ptr(),
            )?;
            Ok(true)
        }),
        batch: try_op(|fd| Ok(drain_batch::<u32, u64>(fd)?.len() == 1)),
    }
}

const SCRATCH_KEY: u32 = 7;

/// A one-entry per-CPU hash map (u32 → u64) holding `SCRATCH_KEY`, closed on drop.
struct ScratchMap(u32);

impl ScratchMap {
    fn new() -> std::io::Result<Self> {
        const BPF_MAP_CREATE: libc::c_long = 0;
        const BPF_MAP_TYPE_PERCPU_HASH: u32 = 5;
        #[repr(C)]
        struct CreateAttr {
            map_type: u32,
            key_size: u32,
            value_size: u32,
            max_entries: u32,
            map_flags: u32,
        }
        let attr = CreateAttr {
            map_type: BPF_MAP_TYPE_PERCPU_HASH,
            key_size: 4,
            value_size: 8,
            max_entries: 4,
            map_flags: 0,
        };
        // SAFETY: a valid prefix of bpf_attr for BPF_MAP_CREATE (the kernel zero-fills the rest).
        let fd = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_CREATE,
                &raw const attr,
                size_of::<CreateAttr>() as libc::c_uint,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let map = Self(fd as u32);
        let values = vec![1u64; possible_cpus().map_err(std::io::Error::other)?];
        map_elem_call(
            map.0,
            BPF_MAP_UPDATE_ELEM,
            &SCRATCH_KEY,
            values.as_ptr().cast_mut().cast(),
        )?;
        Ok(map)
    }
}

impl Drop for ScratchMap {
    fn drop(&mut self) {
        // SAFETY: closing the fd this value owns.
        unsafe { libc::close(self.0 as i32) };
    }
}

fn map_fd(map: &MapData) -> u32 {
    use std::os::fd::{AsFd as _, AsRawFd as _};
    map.fd().as_fd().as_raw_fd() as u32
}

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
const BPF_MAP_LOOKUP_AND_DELETE_ELEM: libc::c_long = 21;
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_LOOKUP_AND_DELETE_BATCH: libc::c_long = 25;

/// bpf(2) with `cmd`, one of the map element commands, on map `fd`: `key` is null or points
/// to a K, `out` to a buffer of the size the kernel reads or writes for `cmd` (a K for
/// GET_NEXT_KEY, the per-CPU values for LOOKUP/UPDATE/LOOKUP_AND_DELETE_ELEM, nothing for
/// DELETE_ELEM).
fn map_elem_call<K>(
    fd: u32,
    cmd: libc::c_long,
    key: *const K,
    out: *mut u8,
) -> std::io::Result<()> {
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
        map_fd: fd,
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

/// One ring-buffer record as the kernel wrote it: a `T` (plain data, `aya::Pod`), read
/// unaligned; a record shorter than `T` is an error (a build whose two sides disagree).
pub fn ring_record<T: aya::Pod>(bytes: &[u8]) -> Result<T> {
    if bytes.len() < size_of::<T>() {
        return Err(anyhow!("short ring buffer record ({} bytes)", bytes.len()));
    }
    // SAFETY: length checked; T is plain data (Pod), read unaligned.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_sizes_parse() {
        assert_eq!(
            parse_map_sizes("EVENTS=4096, PID_COUNTS=64,"),
            Ok(vec![("EVENTS".into(), 4096), ("PID_COUNTS".into(), 64)])
        );
        assert_eq!(parse_map_sizes(""), Ok(vec![]));
        for bad in ["EVENTS", "EVENTS=x", "=4", "EVENTS=0", "EVENTS=-1"] {
            let err = parse_map_sizes(bad).unwrap_err();
            assert!(err.contains(&format!("'{bad}'")), "{bad}: {err}");
        }
    }

    /// A scratch map with keys 0..n, key k holding k+1 on every CPU.
    fn filled(n: u32) -> Option<ScratchMap> {
        let map = ScratchMap::new().ok()?;
        map_elem_call(
            map.0,
            BPF_MAP_DELETE_ELEM,
            &SCRATCH_KEY,
            std::ptr::null_mut(),
        )
        .ok()?;
        let cpus = possible_cpus().ok()?;
        for k in 0..n {
            let values = vec![u64::from(k) + 1; cpus];
            map_elem_call(
                map.0,
                BPF_MAP_UPDATE_ELEM,
                &k,
                values.as_ptr().cast_mut().cast(),
            )
            .ok()?;
        }
        Some(map)
    }

    /// Every way of draining returns each key once with its values and leaves the map empty,
    /// on this kernel (the fallbacks work wherever their command exists).
    #[test]
    fn every_drain_method_takes_each_key_once() {
        let ops = hash_map_ops();
        for method in [
            HashDelete::Elem,
            HashDelete::Batch,
            HashDelete::LookupThenDelete,
        ] {
            if (method == HashDelete::Elem && !ops.lookup_and_delete)
                || (method == HashDelete::Batch && !ops.batch)
            {
                continue;
            }
            // Not root (or no bpf()): nothing to test here.
            let Some(map) = filled(4) else { return };
            let mut drained = drain_fd::<u32, u64>(map.0, method).expect("drain");
            drained.sort_by_key(|(k, _)| *k);
            let keys: Vec<u32> = drained.iter().map(|(k, _)| *k).collect();
            assert_eq!(keys, [0, 1, 2, 3], "{method:?}");
            for (k, values) in &drained {
                assert!(values.iter().all(|v| *v == u64::from(*k) + 1), "{method:?}");
            }
            assert!(
                drain_fd::<u32, u64>(map.0, method)
                    .expect("drain")
                    .is_empty(),
                "{method:?} left keys behind"
            );
            let cpus = possible_cpus().expect("cpus");
            let taken = take_key_fd::<u32, u64>(map.0, &0, method).expect("take");
            assert!(taken.is_none(), "{method:?}");
            let values = vec![9u64; cpus];
            map_elem_call(
                map.0,
                BPF_MAP_UPDATE_ELEM,
                &0u32,
                values.as_ptr().cast_mut().cast(),
            )
            .expect("update");
            let taken = take_key_fd::<u32, u64>(map.0, &0, method).expect("take");
            assert_eq!(taken, Some(values), "{method:?}");
        }
    }
}
