//! kprobe_multi links (Linux ≥ 5.18 with CONFIG_FPROBE), which aya 0.14 cannot create: one BPF
//! link attaches a program to any number of kernel functions through one fprobe (ftrace), each
//! function with its own BPF cookie. This is what lets `k:` globs go past the one object per
//! function of single kprobes/fentry. Used by `probe_attach`; `doctor` reports [`supported`].
//!
//! Programs are loaded with `uprobe_multi::Program::load_as(.., MultiKind::Kprobe)`: the kernel
//! only takes a program into such a link if it was loaded with `expected_attach_type =
//! BPF_TRACE_KPROBE_MULTI`.

use std::{
    ffi::CString,
    io,
    mem::{offset_of, size_of},
    os::fd::OwnedFd,
    sync::OnceLock,
};

use aya_obj::generated::{bpf_attr, bpf_insn};

use crate::attach::Mechanism;
use crate::uprobe_multi::{self, BPF_LINK_CREATE, BPF_TRACE_KPROBE_MULTI, Error, MultiKind};

const BPF_F_KPROBE_MULTI_RETURN: u32 = 1;

/// The function [`supported`] attaches to: present and traceable on every kernel tracer runs on.
const PROBE_FUNCTION: &str = "vfs_read";

/// The `BPF_LINK_CREATE` part of `union bpf_attr` with its `kprobe_multi` member.
#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
    multi_flags: u32,
    cnt: u32,
    syms: u64,
    addrs: u64,
    cookies: u64,
}

// The layout above must match the kernel's; aya-obj's bindings are generated from its headers.
const _: () = {
    use aya_obj::generated::{
        bpf_attr__bindgen_ty_14 as LinkCreate,
        bpf_attr__bindgen_ty_14__bindgen_ty_3__bindgen_ty_3 as KprobeMulti,
    };
    assert!(offset_of!(LinkCreateAttr, flags) == offset_of!(LinkCreate, flags));
    assert!(offset_of!(LinkCreateAttr, multi_flags) == offset_of!(LinkCreate, __bindgen_anon_3));
    let base = offset_of!(LinkCreateAttr, multi_flags);
    assert!(offset_of!(LinkCreateAttr, cnt) - base == offset_of!(KprobeMulti, cnt));
    assert!(offset_of!(LinkCreateAttr, syms) - base == offset_of!(KprobeMulti, syms));
    assert!(offset_of!(LinkCreateAttr, addrs) - base == offset_of!(KprobeMulti, addrs));
    assert!(offset_of!(LinkCreateAttr, cookies) - base == offset_of!(KprobeMulti, cookies));
    assert!(size_of::<LinkCreateAttr>() <= size_of::<bpf_attr>());
    assert!(size_of::<bpf_insn>() == 8);
};

/// Where to attach: kernel function names (no duplicates: the kernel resolves each name once
/// and fails the link if any is left over), and the cookie each one's hits carry.
pub struct Target<'a> {
    pub functions: &'a [&'a str],
    /// Instead of `functions` when not empty: the functions' addresses (from /proc/kallsyms),
    /// which also tell apart static functions of the same name.
    pub addresses: &'a [u64],
    /// One per function, for `bpf_get_attach_cookie`.
    pub cookies: &'a [u64],
    /// Fire on return (kretprobe) instead of entry.
    pub on_return: bool,
}

/// An attached kprobe_multi link. Dropping it detaches all its functions.
pub struct Link {
    _fd: OwnedFd,
}

impl Link {
    pub fn attach(program: &uprobe_multi::Program, target: &Target<'_>) -> Result<Self, Error> {
        let count = if target.addresses.is_empty() {
            target.functions.len()
        } else {
            target.addresses.len()
        };
        assert_eq!(count, target.cookies.len());
        let names = target
            .functions
            .iter()
            .map(|f| CString::new(*f))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| {
                Error::Link(
                    io::Error::new(io::ErrorKind::InvalidInput, "name contains a NUL byte"),
                    MultiKind::Kprobe,
                )
            })?;
        let syms: Vec<u64> = names.iter().map(|n| n.as_ptr() as u64).collect();
        let (syms, addrs) = if target.addresses.is_empty() {
            (syms.as_ptr() as u64, 0)
        } else {
            (0, target.addresses.as_ptr() as u64)
        };
        let attr = LinkCreateAttr {
            prog_fd: program.raw_fd(),
            attach_type: BPF_TRACE_KPROBE_MULTI,
            multi_flags: if target.on_return {
                BPF_F_KPROBE_MULTI_RETURN
            } else {
                0
            },
            cnt: count as u32,
            syms,
            addrs,
            cookies: target.cookies.as_ptr() as u64,
            ..Default::default()
        };
        let fd = uprobe_multi::bpf(
            BPF_LINK_CREATE,
            (&raw const attr).cast(),
            size_of::<LinkCreateAttr>(),
        )
        .map_err(|e| Error::Link(e, MultiKind::Kprobe))?;
        Ok(Self { _fd: fd })
    }
}

/// The rung of a function tool (funcgraph, functrace): kprobe_multi where the kernel has it,
/// else `tracefs` (a tracefs tracer, described as `what`, usable when `usable` is Ok);
/// `--attach` (`forced`) insists on one. Neither: one error naming both reasons.
pub fn or_tracefs(
    tool: &str,
    forced: Option<Mechanism>,
    tracefs: Mechanism,
    what: &str,
    usable: Result<(), String>,
) -> anyhow::Result<Mechanism> {
    use anyhow::anyhow;
    match (forced, supported(), usable) {
        (Some(m), _, Err(why)) if m == tracefs => Err(anyhow!("--attach {m}: {why}")),
        (Some(m), _, Ok(())) if m == tracefs => Ok(tracefs),
        (Some(_), Err(why), _) => Err(anyhow!(
            "--attach kprobe_multi: needs Linux 5.18+ with CONFIG_FPROBE: {why}"
        )),
        (_, Ok(_), _) => Ok(Mechanism::KprobeMulti),
        (None, Err(_), Ok(())) => Ok(tracefs),
        (None, Err(multi), Err(why)) => Err(anyhow!(
            "{tool} needs kprobe_multi links (Linux 5.18+ with CONFIG_FPROBE: {multi}) or \
             tracefs's {what} ({why})"
        )),
    }
}

/// Whether this kernel creates kprobe_multi links: a 2-instruction program linked to one
/// function, tried once per process (the probe tools and `doctor` share the answer, so
/// doctor's row says what the tools do). Ok names what was attached; Err says why not.
pub fn supported() -> Result<String, String> {
    static ANSWER: OnceLock<Result<String, String>> = OnceLock::new();
    ANSWER.get_or_init(probe).clone()
}

fn probe() -> Result<String, String> {
    // r0 = 0; exit
    let raw: [u64; 2] = [0x0000_0000_0000_00b7, 0x0000_0000_0000_0095];
    // SAFETY: bpf_insn is 8 plain bytes (asserted above), as each u64 here is.
    let insns: [bpf_insn; 2] = unsafe { std::mem::transmute(raw) };
    let program = uprobe_multi::Program::load_raw("kprobe_multi_ok", &insns, MultiKind::Kprobe)
        .map_err(|e| {
            format!("the kernel refused a kprobe_multi program ({e}): needs Linux 5.18")
        })?;
    let attached = Link::attach(
        &program,
        &Target {
            functions: &[PROBE_FUNCTION],
            addresses: &[],
            cookies: &[0],
            on_return: false,
        },
    );
    const ENOTSUPP: i32 = 524;
    match attached {
        Ok(_link) => Ok(format!("one link attached to {PROBE_FUNCTION}")),
        // 5.18+ without fprobe: the link code is a stub returning EOPNOTSUPP.
        Err(Error::Link(e, _)) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | ENOTSUPP)) => {
            Err("CONFIG_FPROBE unset (EOPNOTSUPP creating the link)".into())
        }
        // Before 5.18 the attach type is unknown.
        Err(Error::Link(e, _)) if e.raw_os_error() == Some(libc::EINVAL) => Err(
            "BPF_TRACE_KPROBE_MULTI unknown (EINVAL creating the link): needs Linux 5.18".into(),
        ),
        Err(e) => Err(e.to_string()),
    }
}
