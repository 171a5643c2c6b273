//! Unwinding user stacks copied by the kernel programs (`tracer_common::ustack`), for code
//! built without frame pointers: framehop walks the copy with each binary's `.eh_frame`
//! (through `.eh_frame_hdr`) or `.debug_frame` call-frame information, and falls back to the
//! frame pointer in code that has none (JIT code, the vDSO).
//!
//! Per process, the unwinder knows the executable file mappings (read from /proc/PID/maps,
//! files opened through /proc/PID/map_files so containers and deleted files work) with the
//! load bias of each; the unwind sections of a file are read once per file (device, inode),
//! however many processes map it. A process whose sample lands outside every known mapping
//! (a library loaded since, an exec) is re-read, at most once a second.

use std::{
    collections::HashMap,
    mem::offset_of,
    ops::Range,
    os::unix::fs::MetadataExt as _,
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Result, anyhow};
use aya::{
    Ebpf,
    maps::{MapData, RingBuf},
};
use framehop::{
    ExplicitModuleSectionInfo, Module, Unwinder as _,
    x86_64::{CacheX86_64, UnwindRegsX86_64, UnwinderX86_64},
};
use object::{
    Object as _, ObjectSection as _, ObjectSegment as _, ReadCache, ReadRef, SegmentFlags,
};

use tracer_common::{
    stacks::TaskStackKey,
    ustack::{USER_STACK_BYTES, USER_STACK_HEADER, UserStackRecord},
};

use crate::{proc_maps, stacks::StackMap};

/// Frames kept per unwound stack (as many as a kernel stack map keeps).
pub const MAX_FRAMES: usize = tracer_common::stacks::STACK_DEPTH as usize;

/// How often a process's mappings may be re-read when a sample falls outside them.
const REFRESH_EVERY: Duration = Duration::from_secs(1);

type Data = Arc<[u8]>;

/// The unwind sections of one ELF file, and its loadable executable segments.
struct FileUnwindInfo {
    sections: ExplicitModuleSectionInfo<Data>,
    /// (file offset, file size, virtual address) of each PT_LOAD segment.
    segments: Vec<(u64, u64, u64)>,
}

/// One process: its modules, and when they were read.
struct Process {
    unwinder: UnwinderX86_64<Data>,
    ranges: Vec<Range<u64>>,
    read_at: Instant,
}

impl Process {
    fn covers(&self, ip: u64) -> bool {
        self.ranges.iter().any(|r| r.contains(&ip))
    }
}

/// User-stack unwinding for every process a tool samples.
#[derive(Default)]
pub struct UserUnwinder {
    procs: HashMap<u32, Process>,
    /// Parsed files by (device, inode); None: not an ELF file, or no unwind information.
    files: HashMap<(u64, u64), Option<Arc<FileUnwindInfo>>>,
    cache: CacheX86_64,
}

impl UserUnwinder {
    pub fn new() -> Self {
        Self::default()
    }

    /// The frames (leaf first: the instruction pointer, then return addresses) of process
    /// `pid`'s stack, from registers `ip`, `sp`, `bp` and `stack`, the bytes from `sp` up.
    /// The walk ends where the copy ends or the tables say the outermost frame is reached.
    pub fn unwind(&mut self, pid: u32, ip: u64, sp: u64, bp: u64, stack: &[u8]) -> Vec<u64> {
        let stale = match self.procs.get(&pid) {
            None => true,
            Some(p) => !p.covers(ip) && p.read_at.elapsed() >= REFRESH_EVERY,
        };
        if stale {
            let process = self.read_process(pid);
            self.procs.insert(pid, process);
        }
        let process = &self.procs[&pid];
        let mut read_stack = |addr: u64| -> Result<u64, ()> {
            let off = addr.checked_sub(sp).ok_or(())? as usize;
            let bytes = stack.get(off..off.checked_add(8).ok_or(())?).ok_or(())?;
            Ok(u64::from_le_bytes(bytes.try_into().map_err(|_| ())?))
        };
        let mut frames = Vec::with_capacity(32);
        let mut iter = process.unwinder.iter_frames(
            ip,
            UnwindRegsX86_64::new(ip, sp, bp),
            &mut self.cache,
            &mut read_stack,
        );
        while frames.len() < MAX_FRAMES {
            match iter.next() {
                Ok(Some(frame)) => frames.push(frame.address()),
                Ok(None) | Err(_) => break,
            }
        }
        frames
    }

    /// Forgets the processes that are gone (their mappings; the files stay cached while
    /// another process maps them).
    pub fn forget_exited(&mut self) {
        self.procs
            .retain(|pid, _| Path::new(&format!("/proc/{pid}")).exists());
        self.files.retain(|_, info| match info {
            Some(info) => Arc::strong_count(info) > 1,
            None => true,
        });
    }

    fn read_process(&mut self, pid: u32) -> Process {
        let mut unwinder = UnwinderX86_64::new();
        let mut ranges = Vec::new();
        for entry in proc_maps::executable_mappings(pid) {
            let Some(info) = self.file_info(pid, &entry) else {
                continue;
            };
            // The segment this mapping starts in gives the load bias: the mapping's start is
            // that segment's address plus the bias.
            let Some(&(seg_off, _, seg_vaddr)) = info
                .segments
                .iter()
                .find(|&&(off, size, _)| (off..off + size.max(1)).contains(&entry.offset))
            else {
                continue;
            };
            let svma = seg_vaddr + (entry.offset - seg_off);
            let bias = entry.start.wrapping_sub(svma);
            unwinder.add_module(Module::new(
                entry.path.clone(),
                entry.start..entry.end,
                bias,
                info.sections.clone(),
            ));
            ranges.push(entry.start..entry.end);
        }
        Process {
            unwinder,
            ranges,
            read_at: Instant::now(),
        }
    }

    fn file_info(&mut self, pid: u32, entry: &proc_maps::Entry) -> Option<Arc<FileUnwindInfo>> {
        let file = proc_maps::open_mapped(pid, entry)?;
        let meta = file.metadata().ok()?;
        let key = (meta.dev(), meta.ino());
        if let Some(info) = self.files.get(&key) {
            return info.clone();
        }
        // Read through a cache of the parts parsed (headers, the unwind sections), not the
        // whole file: a 100 MB binary costs its unwind tables only.
        let cache = ReadCache::new(file);
        let info = parse_unwind_info(&cache).map(Arc::new);
        self.files.insert(key, info.clone());
        info
    }
}

/// The unwind sections and loadable segments of an ELF image.
fn parse_unwind_info<'a, R: ReadRef<'a>>(data: R) -> Option<FileUnwindInfo> {
    let elf = object::File::parse(data).ok()?;
    let section = |name: &str| {
        let s = elf.section_by_name(name)?;
        let bytes = s.data().ok()?;
        Some((s.address()..s.address() + s.size(), Data::from(bytes)))
    };
    let eh_frame = section(".eh_frame");
    let eh_frame_hdr = section(".eh_frame_hdr");
    let debug_frame = section(".debug_frame");
    if eh_frame.is_none() && debug_frame.is_none() {
        return None;
    }
    let text = section(".text");
    let got = elf
        .section_by_name(".got")
        .map(|s| s.address()..s.address() + s.size());
    let segments = elf
        .segments()
        .filter(|s| match s.flags() {
            SegmentFlags::Elf { p_flags } => p_flags & object::elf::PF_X != 0,
            _ => true,
        })
        .map(|s| {
            let (off, size) = s.file_range();
            (off, size, s.address())
        })
        .collect();
    let (eh_frame_svma, eh_frame) = eh_frame.unzip();
    let (eh_frame_hdr_svma, eh_frame_hdr) = eh_frame_hdr.unzip();
    let (text_svma, text) = text.unzip();
    Some(FileUnwindInfo {
        sections: ExplicitModuleSectionInfo {
            base_svma: 0,
            text_svma,
            text,
            got_svma: got,
            eh_frame_svma,
            eh_frame,
            eh_frame_hdr_svma,
            eh_frame_hdr,
            debug_frame: debug_frame.map(|(_, d)| d),
            ..Default::default()
        },
        segments,
    })
}

/// How often the unwinding thread looks at the ring when it found it empty.
const POLL_EVERY: Duration = Duration::from_millis(20);

/// What the unwinding thread found since the last `UserStacks::drain`: values per (key,
/// frames), and counts of records.
#[derive(Default)]
struct Pending {
    stacks: HashMap<(TaskStackKey, Vec<u64>), u64>,
    unwound: u64,
    empty: u64,
}

/// A tool's `USER_STACKS` ring buffer (records of `tracer_common::ustack`), read and unwound
/// on a thread of its own — so a main loop busy symbolizing or printing (seconds, under
/// emulation) never leaves the ring to fill, which would send samples to the frame-pointer
/// fallback — and what its samples added up to: counts per key, the key's `ustack` an
/// unwound stack of the tool's `StackMap` (`StackMap::intern`).
pub struct UserStacks {
    pending: Arc<Mutex<Pending>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// Values per key of the samples unwound so far (deleted with `take_key` on eviction).
    pub counts: HashMap<TaskStackKey, u64>,
    /// Records unwound, and those that gave no frame at all.
    pub unwound: u64,
    pub empty: u64,
}

impl UserStacks {
    /// Takes the ring buffer called `name` out of the loaded object and starts unwinding.
    pub fn take(ebpf: &mut Ebpf, name: &str) -> Result<Self> {
        let map = ebpf
            .take_map(name)
            .ok_or_else(|| anyhow!("{name} map missing (build bug)"))?;
        let mut ring = RingBuf::try_from(map)?;
        let pending = Arc::new(Mutex::new(Pending::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (pending, stop) = (pending.clone(), stop.clone());
            std::thread::Builder::new()
                .name("unwind".into())
                .spawn(move || unwind_loop(&mut ring, &pending, &stop))
                .map_err(|e| anyhow!("cannot start the unwinding thread: {e}"))?
        };
        Ok(Self {
            pending,
            stop,
            thread: Some(thread),
            counts: HashMap::new(),
            unwound: 0,
            empty: 0,
        })
    }

    /// Counts what was unwound since the last call, each stack interned in `stack_map`.
    pub fn drain(&mut self, stack_map: &mut StackMap) {
        let pending = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
        self.unwound += pending.unwound;
        self.empty += pending.empty;
        for ((mut key, frames), value) in pending.stacks {
            key.ustack = if frames.is_empty() {
                -libc::EFAULT
            } else {
                stack_map.intern(frames)
            };
            *self.counts.entry(key).or_default() += value;
        }
    }

    /// After the sampling stopped: lets the thread unwind what is left in the ring, waits for
    /// it, and counts everything (every sample taken is then in `counts`).
    pub fn finish(&mut self, stack_map: &mut StackMap) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        self.drain(stack_map);
    }

    /// Deletes `key`, returning what it held.
    pub fn take_key(&mut self, key: &TaskStackKey) -> Option<u64> {
        self.counts.remove(key)
    }
}

impl Drop for UserStacks {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The unwinding thread: every record in the ring, unwound and added to `pending`, until
/// `stop` (then what is left, once).
fn unwind_loop(ring: &mut RingBuf<MapData>, pending: &Mutex<Pending>, stop: &AtomicBool) {
    let mut unwinder = UserUnwinder::new();
    let mut forgot_at = Instant::now();
    loop {
        // Read before draining: a stop seen here still drains the ring once more.
        let stopping = stop.load(Ordering::Acquire);
        let mut batch = Pending::default();
        while let Some(item) = ring.next() {
            if let Some((key, value, frames)) = unwind_record(&mut unwinder, &item) {
                batch.unwound += 1;
                batch.empty += u64::from(frames.is_empty());
                *batch.stacks.entry((key, frames)).or_default() += value;
            }
            if batch.unwound >= 256 {
                break;
            }
        }
        let got = batch.unwound;
        if got > 0 {
            let mut shared = pending.lock().unwrap_or_else(|e| e.into_inner());
            shared.unwound += batch.unwound;
            shared.empty += batch.empty;
            for (stack, value) in batch.stacks {
                *shared.stacks.entry(stack).or_default() += value;
            }
        }
        if forgot_at.elapsed() >= Duration::from_secs(10) {
            unwinder.forget_exited();
            forgot_at = Instant::now();
        }
        if got == 0 {
            if stopping {
                return;
            }
            std::thread::sleep(POLL_EVERY);
        }
    }
}

/// A record's key, value and unwound frames (None: a record too short to be one).
fn unwind_record(
    unwinder: &mut UserUnwinder,
    bytes: &[u8],
) -> Option<(TaskStackKey, u64, Vec<u64>)> {
    if bytes.len() < USER_STACK_HEADER {
        return None;
    }
    let field = |offset: usize| -> u64 {
        u64::from_ne_bytes(bytes[offset..offset + 8].try_into().expect("8 bytes"))
    };
    // SAFETY: the record starts with a TaskStackKey (plain integers and bytes), which
    // read_unaligned copies out of the byte buffer.
    let key: TaskStackKey = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    let value = field(offset_of!(UserStackRecord, value));
    let ip = field(offset_of!(UserStackRecord, ip));
    let sp = field(offset_of!(UserStackRecord, sp));
    let bp = field(offset_of!(UserStackRecord, bp));
    let len_at = offset_of!(UserStackRecord, len);
    let len = u32::from_ne_bytes(bytes[len_at..len_at + 4].try_into().expect("4 bytes")) as usize;
    let stack = bytes.get(USER_STACK_HEADER..USER_STACK_HEADER + len.min(USER_STACK_BYTES))?;
    Some((key, value, unwinder.unwind(key.tgid, ip, sp, bp, stack)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This test process unwinds its own stack from a copy: the frames found include this
    /// function's caller chain up to the test harness.
    #[test]
    #[inline(never)]
    fn unwinds_its_own_stack_from_a_copy() {
        let (ip, sp, bp): (u64, u64, u64);
        // SAFETY: reads three registers, touches nothing else.
        unsafe {
            std::arch::asm!("lea {ip}, [rip]", "mov {sp}, rsp", "mov {bp}, rbp",
                ip = out(reg) ip, sp = out(reg) sp, bp = out(reg) bp);
        }
        // Up to 16 KiB from the stack pointer, within the mapping that holds it (a test
        // thread's stack has little above a shallow frame).
        let maps = std::fs::read_to_string("/proc/self/maps").expect("/proc/self/maps");
        let end = maps
            .lines()
            .filter_map(|l| l.split_whitespace().next()?.split_once('-'))
            .filter_map(|(a, b)| {
                Some((
                    u64::from_str_radix(a, 16).ok()?,
                    u64::from_str_radix(b, 16).ok()?,
                ))
            })
            .find(|&(a, b)| (a..b).contains(&sp))
            .map(|(_, b)| b)
            .expect("the stack pointer is mapped");
        let mut copy = vec![0u8; (end - sp).min(16384) as usize];
        // SAFETY: [sp, sp + len) lies in our own stack's mapping.
        unsafe { std::ptr::copy_nonoverlapping(sp as *const u8, copy.as_mut_ptr(), copy.len()) };
        let mut unwinder = UserUnwinder::new();
        let frames = unwinder.unwind(std::process::id(), ip, sp, bp, &copy);
        assert!(
            frames.len() >= 4,
            "only {} frames: {frames:x?}",
            frames.len()
        );
        assert_eq!(frames[0], ip);
    }
}
