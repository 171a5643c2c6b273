//! USDT probes (SystemTap SDT notes) of a binary or library, as `tplist` lists them: each
//! probe is an ELF note of owner "stapsdt", type 3, in `.note.stapsdt`, whose descriptor holds
//! the probe's address, the link-time address of `.stapsdt.base`, its semaphore's address (0
//! for none), then "provider\0name\0arguments\0". The arguments are the assembler operands
//! the probe site passes (`8@%rbx -4@%eax`: size, negative when signed, then where).

use std::{
    os::fd::{AsFd, AsRawFd as _, FromRawFd as _, OwnedFd},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, anyhow};
use object::{Object as _, ObjectSection as _};
use tracer_common::probes::{
    STR_NONE, STR_PTR, USDT_CONST, USDT_DEREF, USDT_MAX_ARGS, USDT_REG, UsdtArg, UsdtArgs,
    VAL_USDT_ARG, ValueSpec,
};

use crate::probe_spec::{self, ElfSymbols, Kind, Point, Probe, glob_match, is_glob};

/// One probe site (a probe used in several places has one note per place).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SdtProbe {
    pub provider: String,
    pub name: String,
    /// Virtual address of the probe site, adjusted for prelinking as the notes' base says.
    pub address: u64,
    /// Virtual address of the semaphore (a u16 the probe's users increment), 0 for none.
    pub semaphore: u64,
    /// The argument operands, as written in the note (`8@%rbx`, `-4@-20(%rbp)`).
    pub args: Vec<String>,
}

const NT_STAPSDT: u32 = 3;

/// The SDT probes of the ELF file at `path`, in note order; an empty list when it has none.
pub fn probes(path: &Path) -> Result<Vec<SdtProbe>> {
    let shown = path.display();
    let data = std::fs::read(path).with_context(|| format!("{shown}: cannot read"))?;
    if !data.starts_with(b"\x7fELF") {
        usage_bail!("{shown} is not an ELF file (USDT probes live in a binary or library)");
    }
    let file = object::File::parse(&*data).map_err(|e| usage_err!("{shown}: bad ELF file: {e}"))?;
    let Some(notes) = file.section_by_name(".note.stapsdt") else {
        return Ok(Vec::new());
    };
    let notes = notes
        .data()
        .map_err(|e| usage_err!("{shown}: unreadable .note.stapsdt: {e}"))?;
    let base = file.section_by_name(".stapsdt.base").map(|s| s.address());
    Ok(parse_notes(
        notes,
        file.is_little_endian(),
        if file.is_64() { 8 } else { 4 },
        base,
    ))
}

/// Parses the notes of a `.note.stapsdt` section; malformed notes end the list (what is
/// before them is kept).
fn parse_notes(data: &[u8], little: bool, word: usize, base: Option<u64>) -> Vec<SdtProbe> {
    let u32_at = |at: usize| -> Option<u32> {
        let b: [u8; 4] = data.get(at..at + 4)?.try_into().ok()?;
        Some(if little {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        })
    };
    let align4 = |n: usize| n.div_ceil(4) * 4;
    let mut probes = Vec::new();
    let mut at = 0;
    while let (Some(namesz), Some(descsz), Some(kind)) =
        (u32_at(at), u32_at(at + 4), u32_at(at + 8))
    {
        let (namesz, descsz) = (namesz as usize, descsz as usize);
        let name_at = at + 12;
        let desc_at = name_at + align4(namesz);
        let Some(desc) = data.get(desc_at..desc_at + descsz) else {
            break;
        };
        let owner = data.get(name_at..name_at + namesz).unwrap_or_default();
        at = desc_at + align4(descsz);
        if kind != NT_STAPSDT || owner != b"stapsdt\0" {
            continue;
        }
        if let Some(probe) = parse_desc(desc, little, word, base) {
            probes.push(probe);
        }
    }
    probes
}

fn parse_desc(desc: &[u8], little: bool, word: usize, base: Option<u64>) -> Option<SdtProbe> {
    let addr = |i: usize| -> Option<u64> {
        let b = desc.get(i * word..(i + 1) * word)?;
        let mut v = [0u8; 8];
        if little {
            v[..word].copy_from_slice(b);
            Some(u64::from_le_bytes(v))
        } else {
            v[8 - word..].copy_from_slice(b);
            Some(u64::from_be_bytes(v))
        }
    };
    let (pc, link_base, semaphore) = (addr(0)?, addr(1)?, addr(2)?);
    let mut strings = desc.get(3 * word..)?.split(|b| *b == 0);
    let mut text = || {
        strings
            .next()
            .map(|s| String::from_utf8_lossy(s).into_owned())
    };
    let (provider, name, args) = (text()?, text()?, text().unwrap_or_default());
    // A prelinked file moved its sections: the probe moved with .stapsdt.base.
    let address = match base {
        Some(actual) if link_base != 0 => pc.wrapping_add(actual).wrapping_sub(link_base),
        _ => pc,
    };
    Some(SdtProbe {
        provider,
        name,
        address,
        semaphore,
        args: args.split_whitespace().map(str::to_string).collect(),
    })
}

/// What a USDT probe site adds to a uprobe: its semaphore and its arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Site {
    /// File offset of the semaphore (the uprobe's `ref_ctr_offset`), 0 for none.
    pub semaphore_offset: u64,
    /// Virtual address of the semaphore as the note gives it (0 for none).
    pub semaphore_address: u64,
    /// The operands as written in the note.
    pub arg_specs: Vec<String>,
    /// The decoded operands, one per argument.
    pub args: Vec<UsdtArg>,
}

impl Site {
    /// The map value the kernel program reads arguments from.
    pub fn map_value(&self) -> UsdtArgs {
        let mut value = UsdtArgs::default();
        for (slot, arg) in value.args.iter_mut().zip(&self.args) {
            *slot = *arg;
        }
        value
    }
}

/// Byte offset of an x86-64 register (any width: `%rax`, `%eax`, `%ax`, `%al`, `%r8d`) in
/// `struct pt_regs`.
fn register_offset(name: &str) -> Option<u16> {
    const SLOTS: [(&str, &[&str]); 17] = [
        ("r15", &["r15", "r15d", "r15w", "r15b"]),
        ("r14", &["r14", "r14d", "r14w", "r14b"]),
        ("r13", &["r13", "r13d", "r13w", "r13b"]),
        ("r12", &["r12", "r12d", "r12w", "r12b"]),
        ("rbp", &["rbp", "ebp", "bp", "bpl"]),
        ("rbx", &["rbx", "ebx", "bx", "bl"]),
        ("r11", &["r11", "r11d", "r11w", "r11b"]),
        ("r10", &["r10", "r10d", "r10w", "r10b"]),
        ("r9", &["r9", "r9d", "r9w", "r9b"]),
        ("r8", &["r8", "r8d", "r8w", "r8b"]),
        ("rax", &["rax", "eax", "ax", "al"]),
        ("rcx", &["rcx", "ecx", "cx", "cl"]),
        ("rdx", &["rdx", "edx", "dx", "dl"]),
        ("rsi", &["rsi", "esi", "si", "sil"]),
        ("rdi", &["rdi", "edi", "di", "dil"]),
        ("orig_ax", &[]),
        ("rip", &["rip", "eip"]),
    ];
    // pt_regs: r15 r14 r13 r12 rbp rbx r11 r10 r9 r8 rax rcx rdx rsi rdi orig_ax rip cs
    // flags rsp ss, 8 bytes each.
    if matches!(name, "rsp" | "esp" | "sp" | "spl") {
        return Some(19 * 8);
    }
    SLOTS
        .iter()
        .position(|(_, names)| names.contains(&name))
        .map(|i| (i * 8) as u16)
}

/// Decodes one SDT operand (`-4@%eax`, `8@-24(%rbp)`, `8@%rdi`, `-4@$5`, and the size-less
/// forms old compilers wrote); `None` for what a probe program cannot read (index registers,
/// symbols, other architectures' syntax).
pub fn parse_arg(text: &str) -> Option<UsdtArg> {
    let (size, operand) = match text.split_once('@') {
        Some((size, operand)) => (size.parse::<i8>().ok()?, operand),
        None => (8, text),
    };
    let signed = size < 0;
    let size = size.unsigned_abs();
    if !matches!(size, 1 | 2 | 4 | 8) {
        return None;
    }
    let mut arg = UsdtArg {
        size,
        signed: signed.into(),
        ..UsdtArg::default()
    };
    if let Some(constant) = operand.strip_prefix('$') {
        arg.kind = USDT_CONST;
        arg.value = parse_int(constant)?;
    } else if let Some(reg) = operand.strip_prefix('%') {
        arg.kind = USDT_REG;
        arg.reg_offset = register_offset(reg)?;
    } else if let Some(open) = operand.find('(') {
        let inner = operand[open + 1..].strip_suffix(')')?;
        let reg = inner.strip_prefix('%')?;
        arg.kind = USDT_DEREF;
        arg.reg_offset = register_offset(reg)?;
        let disp = &operand[..open];
        arg.value = if disp.is_empty() { 0 } else { parse_int(disp)? };
    } else {
        return None;
    }
    Some(arg)
}

fn parse_int(text: &str) -> Option<i64> {
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let magnitude = match digits.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok()?,
        None => digits.parse::<u64>().ok()?,
    } as i64;
    Some(if negative {
        magnitude.wrapping_neg()
    } else {
        magnitude
    })
}

/// `usdt:TARGET:PROVIDER:NAME` → one uprobe per matching probe site, each carrying its site.
pub fn resolve(target: &str, provider: &str, name: &str, pid: Option<u32>) -> Result<Vec<Probe>> {
    let path: PathBuf = probe_spec::resolve_binary(target, pid)?;
    let shown = path.display();
    let notes = probes(&path)?;
    if notes.is_empty() {
        usage_bail!(
            "{shown} has no USDT probes (no .note.stapsdt section): 'tplist -l BINARY --usdt' \
             lists a binary's probes"
        );
    }
    let elf = ElfSymbols::read(&path)?;
    let mut found = Vec::new();
    for note in notes
        .iter()
        .filter(|n| glob_match(provider, &n.provider) && glob_match(name, &n.name))
    {
        let label = format!("{}:{}", note.provider, note.name);
        let offset = elf.file_offset(note.address).ok_or_else(|| {
            usage_err!(
                "{shown}: USDT probe {label} at {:#x} is outside every loaded segment",
                note.address
            )
        })?;
        let semaphore_offset = match note.semaphore {
            0 => 0,
            address => elf.file_offset(address).ok_or_else(|| {
                usage_err!(
                    "{shown}: the semaphore of USDT probe {label} ({address:#x}) is outside \
                     every loaded segment"
                )
            })?,
        };
        let mut args = Vec::new();
        for spec in note.args.iter().take(USDT_MAX_ARGS) {
            // An operand tracer cannot read makes that argument unusable, not the probe.
            args.push(parse_arg(spec).unwrap_or_default());
        }
        found.push(Probe {
            kind: Kind::Uprobe,
            name: label.clone(),
            point: Point::User {
                path: path.clone(),
                symbol: label,
                offset,
            },
            usdt: Some(Site {
                semaphore_offset,
                semaphore_address: note.semaphore,
                arg_specs: note.args.clone(),
                args,
            }),
        });
    }
    if found.is_empty() {
        let mut names: Vec<String> = notes
            .iter()
            .map(|n| format!("{}:{}", n.provider, n.name))
            .collect();
        names.sort();
        names.dedup();
        let wanted = format!("{provider}:{name}");
        if !is_glob(&wanted) {
            names.sort_by_key(|n| edit_distance(n, &wanted));
        }
        names.truncate(5);
        usage_bail!(
            "{shown} has no USDT probe '{wanted}'; nearest: {}",
            names.join(", ")
        );
    }
    Ok(found)
}

/// Levenshtein distance, for suggesting the nearest probe names.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let here = row[j + 1];
            row[j + 1] = if ca == *cb {
                prev
            } else {
                1 + prev.min(here).min(row[j])
            };
            prev = here;
        }
    }
    row[b.len()]
}

/// `argN` of USDT probes: checked against every site's argument count.
pub fn arg_expr(
    text: &str,
    number: &str,
    probes: &[Probe],
    string: bool,
) -> Result<crate::probe_attach::Expr> {
    let index: usize = number
        .parse()
        .map_err(|_| usage_err!("'{text}' is not an argument: use arg0, arg1, ..."))?;
    let mut signed = false;
    for probe in probes {
        let Some(site) = &probe.usdt else { continue };
        let Some(arg) = site.args.get(index) else {
            let count = site.arg_specs.len();
            let range = match count {
                0 => "no arguments".to_string(),
                1 => "1 argument (arg0)".to_string(),
                n => format!("{n} arguments (arg0..arg{})", n - 1),
            };
            usage_bail!(
                "{text} is out of range: USDT probe {} has {range}",
                probe.name
            );
        };
        if arg.kind == 0 {
            usage_bail!(
                "{text} of USDT probe {} is '{}', an operand tracer cannot read",
                probe.name,
                site.arg_specs[index]
            );
        }
        signed |= arg.signed != 0;
    }
    Ok(crate::probe_attach::Expr {
        text: text.to_string(),
        spec: ValueSpec {
            kind: VAL_USDT_ARG,
            index: index as u8,
            string: if string { STR_PTR } else { STR_NONE },
            ..ValueSpec::NONE
        },
        signed: signed && !string,
        needs_record: false,
    })
}

// ---- attaching a uprobe with a semaphore ----------------------------------------------------

/// A uprobe perf event opened with `ref_ctr_offset`, the BPF program on it. While it is
/// open the kernel keeps the semaphore raised in every process mapping the file (also ones
/// started later); closing it (also at SIGKILL) lowers it again.
pub struct SemaphoreProbe {
    _link: Option<OwnedFd>,
    _event: OwnedFd,
}

fn sysfs_number(path: &str) -> Result<u64> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {path}"))?;
    text.trim()
        .parse()
        .map_err(|_| anyhow!("{path}: '{}' is not a number", text.trim()))
}

/// The bit where `ref_ctr_offset` starts in the uprobe PMU's `config`, from its format file
/// (`config:32-63` on the kernels seen).
fn ref_ctr_shift() -> Result<u32> {
    const FORMAT: &str = "/sys/bus/event_source/devices/uprobe/format/ref_ctr_offset";
    let text = std::fs::read_to_string(FORMAT).map_err(|_| {
        anyhow!(
            "USDT semaphores need the uprobe PMU's ref_ctr_offset (Linux 4.20+): {FORMAT} is \
             missing"
        )
    })?;
    text.trim()
        .strip_prefix("config:")
        .and_then(|bits| bits.split('-').next())
        .and_then(|first| first.parse().ok())
        .ok_or_else(|| anyhow!("{FORMAT}: unexpected format '{}'", text.trim()))
}

/// Opens a uprobe at `offset` of `path` whose semaphore is at file offset `semaphore`, and
/// runs `program` on it, with `cookie` where the kernel has attach cookies (a BPF link), else
/// through PERF_EVENT_IOC_SET_BPF.
pub fn attach_with_semaphore(
    program: impl AsFd,
    path: &Path,
    offset: u64,
    semaphore: u64,
    pid: Option<u32>,
    cookie: Option<u64>,
) -> Result<SemaphoreProbe> {
    const PMU: &str = "/sys/bus/event_source/devices/uprobe/type";
    let pmu_type = sysfs_number(PMU)? as u32;
    let shift = ref_ctr_shift()?;
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| anyhow!("{}: NUL in path", path.display()))?;
    // struct perf_event_attr as PERF_ATTR_SIZE_VER5 (112 bytes; libc does not define it):
    // type @0, size @4, config @8, sample_period @16, flags @40 (bit 0: disabled),
    // wakeup_events @48, config1 (uprobe_path) @56, config2 (probe_offset) @64.
    let mut attr = [0u8; 112];
    attr[0..4].copy_from_slice(&pmu_type.to_ne_bytes());
    attr[4..8].copy_from_slice(&112u32.to_ne_bytes());
    attr[8..16].copy_from_slice(&(semaphore << shift).to_ne_bytes());
    attr[16..24].copy_from_slice(&1u64.to_ne_bytes());
    attr[40..48].copy_from_slice(&1u64.to_ne_bytes());
    attr[48..52].copy_from_slice(&1u32.to_ne_bytes());
    attr[56..64].copy_from_slice(&(c_path.as_ptr() as u64).to_ne_bytes());
    attr[64..72].copy_from_slice(&offset.to_ne_bytes());
    let (target_pid, cpu) = match pid {
        Some(pid) => (pid as i32, -1),
        None => (-1, 0),
    };
    // SAFETY: perf_event_open with a valid attr; the path outlives the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            attr.as_ptr(),
            target_pid,
            cpu,
            -1,
            8u64, // PERF_FLAG_FD_CLOEXEC
        )
    };
    if fd < 0 {
        let err = std::io::Error::last_os_error();
        return Err(anyhow!(
            "perf_event_open(uprobe at {offset:#x} of {}, semaphore at {semaphore:#x}): {err}",
            path.display()
        ));
    }
    // SAFETY: a new descriptor owned by nobody else.
    let event = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let prog_fd = program.as_fd().as_raw_fd();
    let link = match cookie {
        Some(cookie) => {
            // bpf_attr.link_create: prog_fd, target_fd, attach_type (BPF_PERF_EVENT = 41),
            // flags, then perf_event.bpf_cookie at byte 16.
            let mut attr = [0u8; 64];
            attr[0..4].copy_from_slice(&(prog_fd as u32).to_ne_bytes());
            attr[4..8].copy_from_slice(&(event.as_raw_fd() as u32).to_ne_bytes());
            attr[8..12].copy_from_slice(&41u32.to_ne_bytes());
            attr[16..24].copy_from_slice(&cookie.to_ne_bytes());
            const BPF_LINK_CREATE: libc::c_int = 28;
            Some(
                crate::uprobe_multi::bpf(BPF_LINK_CREATE, attr.as_ptr(), attr.len()).map_err(
                    |e| anyhow!("cannot link the program to the uprobe perf event: {e}"),
                )?,
            )
        }
        None => {
            // SAFETY: ioctl on our own perf event fd with a program fd.
            if unsafe { libc::ioctl(event.as_raw_fd(), PERF_EVENT_IOC_SET_BPF, prog_fd) } < 0 {
                let err = std::io::Error::last_os_error();
                return Err(anyhow!("PERF_EVENT_IOC_SET_BPF: {err}"));
            }
            None
        }
    };
    // SAFETY: ioctl on our own perf event fd.
    if unsafe { libc::ioctl(event.as_raw_fd(), PERF_EVENT_IOC_ENABLE, 0) } < 0 {
        let err = std::io::Error::last_os_error();
        return Err(anyhow!("PERF_EVENT_IOC_ENABLE: {err}"));
    }
    Ok(SemaphoreProbe {
        _link: link,
        _event: event,
    })
}

// _IOW('$', 8, u32) and _IO('$', 0).
// `libc::Ioctl`: the request is c_ulong in glibc and c_int in musl (the release build).
const PERF_EVENT_IOC_SET_BPF: libc::Ioctl = 0x4004_2408;
const PERF_EVENT_IOC_ENABLE: libc::Ioctl = 0x2400;

#[cfg(test)]
mod tests {
    use super::*;

    fn note(desc: &[u8]) -> Vec<u8> {
        let mut n = Vec::new();
        n.extend(8u32.to_le_bytes());
        n.extend((desc.len() as u32).to_le_bytes());
        n.extend(NT_STAPSDT.to_le_bytes());
        n.extend(b"stapsdt\0");
        n.extend(desc);
        n.resize(n.len().div_ceil(4) * 4, 0);
        n
    }

    #[test]
    fn argument_operands_decode() {
        let arg = |text| parse_arg(text).unwrap();
        let a = arg("-4@%eax");
        assert_eq!(
            (a.kind, a.size, a.signed, a.reg_offset),
            (USDT_REG, 4, 1, 80)
        );
        let a = arg("8@%rdi");
        assert_eq!(
            (a.kind, a.size, a.signed, a.reg_offset),
            (USDT_REG, 8, 0, 112)
        );
        let a = arg("8@-24(%rbp)");
        assert_eq!((a.kind, a.reg_offset, a.value), (USDT_DEREF, 32, -24));
        let a = arg("-4@112(%rsp)");
        assert_eq!(
            (a.kind, a.reg_offset, a.value, a.signed),
            (USDT_DEREF, 152, 112, 1)
        );
        let a = arg("-4@$5");
        assert_eq!((a.kind, a.value, a.size), (USDT_CONST, 5, 4));
        let a = arg("2@(%r12)");
        assert_eq!((a.kind, a.reg_offset, a.value), (USDT_DEREF, 24, 0));
        assert_eq!(arg("8@%r12").reg_offset, 24);
        assert_eq!(arg("-8@%r12").signed, 1);
        assert!(parse_arg("8@(%rax,%rbx,8)").is_none());
        assert!(parse_arg("3@%rax").is_none());
        assert!(parse_arg("8@%xmm0").is_none());
        assert_eq!(
            edit_distance("python:function__entry", "python:function_entry"),
            1
        );
    }

    #[test]
    fn notes_parse_with_base_adjustment_and_args() {
        let mut desc = Vec::new();
        desc.extend(0x1000u64.to_le_bytes());
        desc.extend(0x2000u64.to_le_bytes());
        desc.extend(0x3000u64.to_le_bytes());
        desc.extend(b"python\0function__entry\08@%rbx 8@%r12 -4@%eax\0");
        let mut data = note(&desc);
        // A note of another owner is skipped.
        data.extend(4u32.to_le_bytes());
        data.extend(0u32.to_le_bytes());
        data.extend(1u32.to_le_bytes());
        data.extend(b"GNU\0");
        let mut plain = Vec::new();
        plain.extend(0x1100u64.to_le_bytes());
        plain.extend(0u64.to_le_bytes());
        plain.extend(0u64.to_le_bytes());
        plain.extend(b"libstdcxx\0throw\0\0");
        data.extend(note(&plain));
        let probes = parse_notes(&data, true, 8, Some(0x2010));
        assert_eq!(
            probes,
            vec![
                SdtProbe {
                    provider: "python".into(),
                    name: "function__entry".into(),
                    address: 0x1010,
                    semaphore: 0x3000,
                    args: vec!["8@%rbx".into(), "8@%r12".into(), "-4@%eax".into()],
                },
                SdtProbe {
                    provider: "libstdcxx".into(),
                    name: "throw".into(),
                    address: 0x1100,
                    semaphore: 0,
                    args: vec![],
                },
            ]
        );
        // Truncated data keeps what came before.
        assert_eq!(
            parse_notes(&data[..data.len() - 12], true, 8, None).len(),
            1
        );
    }
}
