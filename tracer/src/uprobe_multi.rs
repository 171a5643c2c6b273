//! uprobe_multi links (Linux ≥ 6.6), which aya 0.14 cannot create: one BPF link attaches a
//! program to many offsets of one binary, each with its own BPF cookie, and detaching it waits
//! for one RCU grace period instead of one per offset (50 perf-event uprobes took 0.4–4 s to
//! detach on 6.18; one uprobe_multi link takes a few ms). Used by `probe_attach` for u:/ur:
//! probes; it falls back to aya's perf-event uprobes when anything here fails.
//!
//! The kernel only accepts a program in such a link if it was loaded with
//! `expected_attach_type = BPF_TRACE_UPROBE_MULTI`, which aya 0.14 never sets for uprobes. So
//! [`Program::load`] loads a second copy of a program itself: it parses the same object with
//! aya-obj, relocates it against the maps aya already created (same fds, so both copies share
//! every map, `.rodata` globals included) and calls `BPF_PROG_LOAD`. No BTF is passed: the
//! probes object has no CO-RE relocations and no global functions that would need it.
//!
//! Both kernel objects are `OwnedFd`s: dropping a [`Link`] detaches; a link holds its program
//! in the kernel, so a [`Program`] may be dropped once its links exist.
//!
//! `kprobe_multi` loads its programs the same way ([`Program::load_as`] with
//! [`MultiKind::Kprobe`]) and creates its own link type.

use std::{
    collections::HashSet,
    ffi::{CStr, CString},
    io,
    mem::{offset_of, size_of},
    os::{
        fd::{AsFd, AsRawFd, FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::Path,
};

use aya::{Ebpf, maps::Map};
use aya_obj::generated::{bpf_attr, bpf_insn};

const BPF_PROG_LOAD: libc::c_int = 5;
pub(crate) const BPF_LINK_CREATE: libc::c_int = 28;
const BPF_PROG_TYPE_KPROBE: u32 = 2;
const BPF_TRACE_UPROBE_MULTI: u32 = 48;
pub(crate) const BPF_TRACE_KPROBE_MULTI: u32 = 42;
const BPF_F_UPROBE_MULTI_RETURN: u32 = 1;

/// The `BPF_PROG_LOAD` part of `union bpf_attr` up to `expected_attach_type` (the kernel treats
/// the missing tail as zero).
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// The `BPF_LINK_CREATE` part of `union bpf_attr` with its `uprobe_multi` member.
#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
    path: u64,
    offsets: u64,
    ref_ctr_offsets: u64,
    cookies: u64,
    cnt: u32,
    multi_flags: u32,
    pid: u32,
    /// Explicit, so no byte the kernel reads is uninitialized padding.
    _pad: u32,
}

// The layouts above must match the kernel's; aya-obj's bindings are generated from its headers.
const _: () = {
    use aya_obj::generated::{
        bpf_attr__bindgen_ty_4 as ProgLoad, bpf_attr__bindgen_ty_14 as LinkCreate,
        bpf_attr__bindgen_ty_14__bindgen_ty_3__bindgen_ty_7 as UprobeMulti,
    };
    assert!(offset_of!(ProgLoadAttr, prog_name) == offset_of!(ProgLoad, prog_name));
    assert!(
        offset_of!(ProgLoadAttr, expected_attach_type)
            == offset_of!(ProgLoad, expected_attach_type)
    );
    assert!(offset_of!(LinkCreateAttr, flags) == offset_of!(LinkCreate, flags));
    assert!(offset_of!(LinkCreateAttr, path) == offset_of!(LinkCreate, __bindgen_anon_3));
    let base = offset_of!(LinkCreateAttr, path);
    assert!(offset_of!(LinkCreateAttr, offsets) - base == offset_of!(UprobeMulti, offsets));
    assert!(offset_of!(LinkCreateAttr, cookies) - base == offset_of!(UprobeMulti, cookies));
    assert!(offset_of!(LinkCreateAttr, cnt) - base == offset_of!(UprobeMulti, cnt));
    assert!(offset_of!(LinkCreateAttr, multi_flags) - base == offset_of!(UprobeMulti, flags));
    assert!(offset_of!(LinkCreateAttr, pid) - base == offset_of!(UprobeMulti, pid));
    assert!(size_of::<LinkCreateAttr>() <= size_of::<bpf_attr>());
    assert!(size_of::<ProgLoadAttr>() <= size_of::<bpf_attr>());
};

/// Which multi link a program is loaded for: the kernel checks `expected_attach_type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MultiKind {
    Uprobe,
    Kprobe,
}

impl MultiKind {
    fn attach_type(self) -> u32 {
        match self {
            Self::Uprobe => BPF_TRACE_UPROBE_MULTI,
            Self::Kprobe => BPF_TRACE_KPROBE_MULTI,
        }
    }

    fn missing(self) -> &'static str {
        match self {
            Self::Uprobe => "no uprobe_multi in this kernel (needs Linux 6.6)",
            Self::Kprobe => "no kprobe_multi in this kernel (needs Linux 5.18 with CONFIG_FPROBE)",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Uprobe => "uprobe_multi",
            Self::Kprobe => "kprobe_multi",
        }
    }
}

/// Why a program or link could not be made; `Display` is one line for the attach summary.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot prepare {program} from the object: {reason}")]
    Object { program: String, reason: String },
    #[error("{}", describe("loading", .0, .1.as_deref(), *.2))]
    Load(io::Error, Option<String>, MultiKind),
    #[error("{}", describe("creating the link", .0, None, *.1))]
    Link(io::Error, MultiKind),
}

fn describe(what: &str, err: &io::Error, log: Option<&str>, kind: MultiKind) -> String {
    const ENOTSUPP: i32 = 524;
    match (err.raw_os_error(), log) {
        (_, Some(log)) => format!("{what} failed: verifier: {log}"),
        (Some(libc::EINVAL | libc::E2BIG | libc::EOPNOTSUPP | ENOTSUPP), _) => {
            format!("{what} failed ({err}): {}", kind.missing())
        }
        // kprobe_multi resolves names with ftrace_lookup_symbols: one that is not an ftrace
        // location fails the whole link.
        (Some(libc::ESRCH), _) if kind == MultiKind::Kprobe => format!(
            "{what} failed ({err}): a function is not traceable (not in \
             available_filter_functions): narrow the pattern"
        ),
        _ => format!("{what} failed: {err}"),
    }
}

/// A program loaded for uprobe_multi (or kprobe_multi) links.
pub struct Program {
    fd: OwnedFd,
}

impl Program {
    /// Loads program `name` of `object` (the bytes `ebpf` was loaded from) again, with
    /// `expected_attach_type = BPF_TRACE_UPROBE_MULTI`, using `ebpf`'s maps. Call it before
    /// taking maps out of `ebpf`.
    pub fn load(object: &[u8], name: &str, ebpf: &Ebpf) -> Result<Self, Error> {
        Self::load_as(object, name, ebpf, MultiKind::Uprobe)
    }

    /// [`Program::load`] for the multi link `kind`.
    pub fn load_as(object: &[u8], name: &str, ebpf: &Ebpf, kind: MultiKind) -> Result<Self, Error> {
        let bad = |reason: String| Error::Object {
            program: name.to_string(),
            reason,
        };
        let mut obj = aya_obj::Object::parse(object).map_err(|e| bad(e.to_string()))?;
        // relocate_maps borrows the map definitions while it rewrites the code.
        let maps = std::mem::take(&mut obj.maps);
        let mut fds = Vec::new();
        for (map_name, map) in &maps {
            let aya_map = ebpf
                .map(map_name)
                .ok_or_else(|| bad(format!("map {map_name} was not created")))?;
            fds.push((map_name.as_str(), map_fd(aya_map), map));
        }
        // As aya's own loader does: every section holding functions may be called into.
        let text_sections: HashSet<usize> = obj.functions.keys().map(|(s, _)| *s).collect();
        obj.relocate_maps(fds.into_iter(), &text_sections)
            .map_err(|e| bad(e.to_string()))?;
        obj.relocate_calls(&text_sections)
            .map_err(|e| bad(e.to_string()))?;
        let program = obj
            .programs
            .get(name)
            .ok_or_else(|| bad("no such program".into()))?;
        let function = obj
            .functions
            .get(&program.function_key())
            .ok_or_else(|| bad("no code for the program".into()))?;
        let fd = prog_load(name, &function.instructions, &obj.license, kind)?;
        Ok(Self { fd })
    }

    /// Loads `insns` as it is (no maps, no relocations), e.g. a probe of the kernel's support.
    pub fn load_raw(name: &str, insns: &[bpf_insn], kind: MultiKind) -> Result<Self, Error> {
        let fd = prog_load(name, insns, c"GPL", kind)?;
        Ok(Self { fd })
    }

    pub(crate) fn raw_fd(&self) -> u32 {
        self.fd.as_raw_fd() as u32
    }

    /// Hits the kernel skipped because a BPF program was already running on that CPU
    /// (`bpf_prog_info.recursion_misses`, Linux 5.12+); None where the kernel does not say.
    pub fn recursion_misses(&self) -> Option<u64> {
        const BPF_OBJ_GET_INFO_BY_FD: libc::c_int = 15;
        #[repr(C)]
        struct InfoAttr {
            bpf_fd: u32,
            info_len: u32,
            info: u64,
        }
        // SAFETY: bpf_prog_info is plain integers and arrays; all zeroes is valid.
        let mut info: aya_obj::generated::bpf_prog_info = unsafe { std::mem::zeroed() };
        let attr = InfoAttr {
            bpf_fd: self.raw_fd(),
            info_len: size_of::<aya_obj::generated::bpf_prog_info>() as u32,
            info: (&raw mut info) as u64,
        };
        // SAFETY: attr points to a valid bpf_attr prefix for this command, and info to a
        // buffer of info_len bytes that outlives the call.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_OBJ_GET_INFO_BY_FD,
                &raw const attr,
                size_of::<InfoAttr>() as libc::c_uint,
            )
        };
        (ret == 0).then_some(info.recursion_misses)
    }
}

fn map_fd(map: &Map) -> i32 {
    let data = match map {
        Map::Array(d)
        | Map::ArrayOfMaps(d)
        | Map::BloomFilter(d)
        | Map::CgroupArray(d)
        | Map::CgroupStorage(d)
        | Map::CgrpStorage(d)
        | Map::CpuMap(d)
        | Map::DevMap(d)
        | Map::DevMapHash(d)
        | Map::HashMap(d)
        | Map::HashOfMaps(d)
        | Map::InodeStorage(d)
        | Map::LpmTrie(d)
        | Map::LruHashMap(d)
        | Map::PerCpuArray(d)
        | Map::PerCpuCgroupStorage(d)
        | Map::PerCpuHashMap(d)
        | Map::PerCpuLruHashMap(d)
        | Map::PerfEventArray(d)
        | Map::ProgramArray(d)
        | Map::Queue(d)
        | Map::ReusePortSockArray(d)
        | Map::RingBuf(d)
        | Map::SockHash(d)
        | Map::SockMap(d)
        | Map::SkStorage(d)
        | Map::Stack(d)
        | Map::StackTraceMap(d)
        | Map::Unsupported(d)
        | Map::XskMap(d) => d,
    };
    data.fd().as_fd().as_raw_fd()
}

pub(crate) fn bpf(cmd: libc::c_int, attr: *const u8, size: usize) -> io::Result<OwnedFd> {
    // SAFETY: `attr` points to `size` initialized bytes laid out as the kernel's bpf_attr
    // member for `cmd`; every pointer inside it outlives the call.
    let ret = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr, size as libc::c_uint) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: on success BPF_PROG_LOAD and BPF_LINK_CREATE return a new fd that we own.
    Ok(unsafe { OwnedFd::from_raw_fd(ret as i32) })
}

fn prog_load(
    name: &str,
    insns: &[bpf_insn],
    license: &CStr,
    kind: MultiKind,
) -> Result<OwnedFd, Error> {
    let mut attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_KPROBE,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        expected_attach_type: kind.attach_type(),
        ..Default::default()
    };
    // The kernel wants at most 15 bytes and a NUL.
    for (dst, src) in attr.prog_name.iter_mut().zip(name.bytes().take(15)) {
        *dst = src;
    }
    let size = size_of::<ProgLoadAttr>();
    match bpf(BPF_PROG_LOAD, (&raw const attr).cast(), size) {
        Ok(fd) => Ok(fd),
        Err(err) => {
            // Load again with a log only to say why (like aya, which retries with a log).
            let mut log = vec![0u8; 1 << 20];
            attr.log_level = 1;
            attr.log_size = log.len() as u32;
            attr.log_buf = log.as_mut_ptr() as u64;
            let _ = bpf(BPF_PROG_LOAD, (&raw const attr).cast(), size);
            let text = String::from_utf8_lossy(&log);
            let text = text.trim_end_matches('\0');
            if std::env::var_os("TRACER_VERIFIER_LOG").is_some() {
                errln!("--- verifier log ({} {name}) ---\n{text}", kind.name());
            }
            let reason = text
                .lines()
                .rev()
                .map(str::trim)
                .find(|l| {
                    !l.is_empty()
                        && !l.starts_with("processed ")
                        && !l.starts_with("verification time")
                })
                .map(String::from);
            Err(Error::Load(err, reason, kind))
        }
    }
}

/// Where to attach: offsets into one binary, and the cookie each hit carries.
pub struct Target<'a> {
    pub path: &'a Path,
    /// File offsets, as for perf-event uprobes.
    pub offsets: &'a [u64],
    /// One per offset, for `bpf_get_attach_cookie`.
    pub cookies: &'a [u64],
    /// Fire on return (uretprobe) instead of entry.
    pub on_return: bool,
    /// Only for this process (the kernel compares the mm); None for all processes.
    pub pid: Option<u32>,
}

/// An attached uprobe_multi link. Dropping it detaches all its uprobes.
pub struct Link {
    _fd: OwnedFd,
}

impl Link {
    pub fn attach(program: &Program, target: &Target<'_>) -> Result<Self, Error> {
        assert_eq!(target.offsets.len(), target.cookies.len());
        let path = CString::new(target.path.as_os_str().as_bytes()).map_err(|_| {
            Error::Link(
                io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"),
                MultiKind::Uprobe,
            )
        })?;
        let attr = LinkCreateAttr {
            prog_fd: program.fd.as_raw_fd() as u32,
            attach_type: BPF_TRACE_UPROBE_MULTI,
            path: path.as_ptr() as u64,
            offsets: target.offsets.as_ptr() as u64,
            cookies: target.cookies.as_ptr() as u64,
            cnt: target.offsets.len() as u32,
            multi_flags: if target.on_return {
                BPF_F_UPROBE_MULTI_RETURN
            } else {
                0
            },
            pid: target.pid.unwrap_or(0),
            ..Default::default()
        };
        let fd = bpf(
            BPF_LINK_CREATE,
            (&raw const attr).cast(),
            size_of::<LinkCreateAttr>(),
        )
        .map_err(|e| Error::Link(e, MultiKind::Uprobe))?;
        Ok(Self { _fd: fd })
    }
}
