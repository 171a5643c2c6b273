//! What it takes to symbolize a process after it exited or exec'd: its executable mappings
//! as they were (from /proc/PID/maps) and the mapped files themselves, held open. blazesym's
//! `Source::Process` reads /proc/PID/maps when it symbolizes, which is at report time for
//! tools that aggregate in the kernel; a build step, a test run or a crash-looping service is
//! gone by then, and its frames would print as `[unknown]` (perf gets these right because it
//! records mappings as they appear; BCC's profile and bpftrace do not).
//!
//! `Symbols` (stacks.rs) notes a process here when it first sees it (the tools' warm-up
//! rounds, and `-p` targets at start) and notes it again when its executable changed (an
//! exec); an address that the live process no longer resolves is then looked up in the
//! snapshots, newest first, and symbolized from the held file by its file offset.

use std::{
    collections::HashMap,
    fs::File,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    rc::Rc,
};

/// An executable file mapping of a process: `[start, end)` maps `file` from `offset`.
struct Mapping {
    start: u64,
    end: u64,
    offset: u64,
    file: Rc<HeldFile>,
}

/// A mapped file, open, so it can be read after the process (or the file's name) is gone.
pub struct HeldFile {
    /// The path the process mapped it by (for messages and pprof mappings).
    pub shown: PathBuf,
    /// Keeps the file readable through `/proc/self/fd/N`.
    fd: File,
}

impl HeldFile {
    /// A path that opens this very file for as long as tracer runs.
    pub fn path(&self) -> PathBuf {
        use std::os::fd::AsRawFd as _;
        PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd()))
    }
}

/// One process image: its executable and its executable mappings, at one moment.
struct Snapshot {
    exe: Option<PathBuf>,
    mappings: Vec<Mapping>,
}

/// Snapshots of the processes noted so far, the newest last for each.
#[derive(Default)]
pub struct ProcMaps {
    procs: HashMap<u32, Vec<Snapshot>>,
    /// Open files by (device, inode): one descriptor for libc however many processes map it.
    files: HashMap<(u64, u64), Rc<HeldFile>>,
}

impl ProcMaps {
    /// Snapshots `pid` if it was not noted yet or its executable changed since (an exec).
    /// A process that is gone or unreadable is left as it was.
    pub fn note(&mut self, pid: u32) {
        if pid == 0 {
            return;
        }
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
        if let Some(last) = self.procs.get(&pid).and_then(|s| s.last())
            && last.exe == exe
        {
            return;
        }
        let mut mappings = Vec::new();
        for entry in executable_mappings(pid) {
            if let Some(file) = self.hold(pid, &entry) {
                mappings.push(Mapping {
                    start: entry.start,
                    end: entry.end,
                    offset: entry.offset,
                    file,
                });
            }
        }
        if mappings.is_empty() {
            return;
        }
        self.procs
            .entry(pid)
            .or_default()
            .push(Snapshot { exe, mappings });
    }

    /// Where `addr` was in `pid`'s images, newest first: the held file and the offset in it.
    pub fn lookup(&self, pid: u32, addr: u64) -> Option<(Rc<HeldFile>, u64)> {
        self.procs.get(&pid)?.iter().rev().find_map(|snapshot| {
            snapshot
                .mappings
                .iter()
                .find(|m| (m.start..m.end).contains(&addr))
                .map(|m| (m.file.clone(), addr - m.start + m.offset))
        })
    }

    /// Drops what was kept for these processes (their stacks will not be printed again).
    pub fn forget(&mut self, pids: &std::collections::HashSet<u32>) {
        self.procs.retain(|pid, _| !pids.contains(pid));
        self.files.retain(|_, file| Rc::strong_count(file) > 1);
    }

    /// Whether `pid` has a snapshot.
    pub fn knows(&self, pid: u32) -> bool {
        self.procs.contains_key(&pid)
    }

    pub fn is_empty(&self) -> bool {
        self.procs.is_empty()
    }

    /// Opens the file of an executable mapping, once per file (see `open_mapped`).
    fn hold(&mut self, pid: u32, entry: &Entry) -> Option<Rc<HeldFile>> {
        let fd = open_mapped(pid, entry)?;
        let meta = fd.metadata().ok()?;
        let key = (meta.dev(), meta.ino());
        Some(
            self.files
                .entry(key)
                .or_insert_with(|| {
                    Rc::new(HeldFile {
                        shown: PathBuf::from(&entry.path),
                        fd,
                    })
                })
                .clone(),
        )
    }
}

/// The executable file mappings of `pid` now (none when it is gone or unreadable).
pub fn executable_mappings(pid: u32) -> Vec<Entry> {
    std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .map(|maps| maps.lines().filter_map(parse_line).collect())
        .unwrap_or_default()
}

/// Opens the file of an executable mapping: through /proc/PID/map_files (the very file, even
/// deleted or in another mount namespace), else through the process's root.
pub fn open_mapped(pid: u32, entry: &Entry) -> Option<File> {
    let by_range = format!("/proc/{pid}/map_files/{:x}-{:x}", entry.start, entry.end);
    let via_root = Path::new(&format!("/proc/{pid}/root")).join(entry.path.trim_start_matches('/'));
    File::open(&by_range)
        .or_else(|_| File::open(&via_root))
        .ok()
}

/// The fields of one /proc/PID/maps line that an executable file mapping needs.
pub struct Entry {
    pub start: u64,
    pub end: u64,
    pub offset: u64,
    pub path: String,
}

/// `start-end perms offset dev inode path`, for executable mappings of files only.
fn parse_line(line: &str) -> Option<Entry> {
    let mut fields = line.splitn(6, ' ');
    let range = fields.next()?;
    let perms = fields.next()?;
    let offset = fields.next()?;
    let _dev = fields.next()?;
    let _inode = fields.next()?;
    let path = fields.next()?.trim_start();
    if !perms.contains('x') || !path.starts_with('/') {
        return None;
    }
    let (start, end) = range.split_once('-')?;
    Some(Entry {
        start: u64::from_str_radix(start, 16).ok()?,
        end: u64::from_str_radix(end, 16).ok()?,
        offset: u64::from_str_radix(offset, 16).ok()?,
        // A file deleted since it was mapped: the kernel appends " (deleted)".
        path: path.trim_end_matches(" (deleted)").to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn executable_file_mappings_only() {
        let e =
            parse_line("55d0c2a00000-55d0c2a5f000 r-xp 00002000 08:01 1234    /usr/bin/some prog")
                .expect("an executable mapping");
        assert_eq!(
            (e.start, e.end, e.offset, e.path.as_str()),
            (0x55d0c2a00000, 0x55d0c2a5f000, 0x2000, "/usr/bin/some prog")
        );
        assert!(parse_line("7ffd1000-7ffd2000 r-xp 00000000 00:00 0   [vdso]").is_none());
        assert!(parse_line("55d0-55d1 r--p 00000000 08:01 1234  /usr/bin/x").is_none());
        let deleted = parse_line("1000-2000 r-xp 00000000 08:01 9  /tmp/a.out (deleted)")
            .expect("a deleted file's mapping");
        assert_eq!(deleted.path, "/tmp/a.out");
    }

    /// This test process's own code resolves through its snapshot.
    #[test]
    fn own_code_is_found_in_the_snapshot() {
        let mut maps = ProcMaps::default();
        maps.note(std::process::id());
        let here = own_code_is_found_in_the_snapshot as *const () as usize as u64;
        let (file, offset) = maps
            .lookup(std::process::id(), here)
            .expect("our own code is mapped");
        assert!(offset > 0);
        assert!(file.path().exists());
    }
}
