//! Where each symbolized frame name came from — the binary (its path and GNU build id), the
//! symbol's address in that file and, where the binary carries DWARF, the source file and
//! line — for `--pprof`, whose readers (go tool pprof, Parca, Pyroscope) group by mapping and
//! fetch symbols and sources by build id.
//!
//! Recorded by `stacks::Symbols` only when a tool writes a pprof profile: stacks are folded by
//! frame name, so the origin is kept per name (the first address that resolved to it), which
//! is what the profile's one-location-per-function layout needs.

use std::{collections::HashMap, ffi::OsStr, fs, rc::Rc};

/// The pseudo-path of kernel frames (perf's name for the kernel image).
pub const KERNEL_MODULE: &str = "[kernel.kallsyms]";

/// One frame name's origin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrameOrigin {
    /// Index into `FrameOrigins::modules`.
    pub module: usize,
    /// The symbol's start address as the file numbers it (the kernel: its runtime address).
    pub address: u64,
    /// Source file and line of the first address seen in this function, from DWARF.
    pub file: Option<Rc<str>>,
    pub line: Option<u32>,
}

/// A binary frames came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Module {
    pub path: Rc<str>,
    /// Lower-case hex, as `go tool pprof` and debuginfod spell build ids.
    pub build_id: Option<String>,
}

/// Origins of the frame names of a run.
#[derive(Debug, Default)]
pub struct FrameOrigins {
    pub modules: Vec<Module>,
    module_index: HashMap<Rc<str>, usize>,
    frames: HashMap<Rc<str>, FrameOrigin>,
}

impl FrameOrigins {
    /// The origin noted for this frame name, if any.
    pub fn get(&self, name: &str) -> Option<&FrameOrigin> {
        self.frames.get(name)
    }

    /// Notes where `name` came from, unless a first address already did.
    pub fn note(
        &mut self,
        name: &Rc<str>,
        module: Option<&OsStr>,
        address: u64,
        code: Option<(Rc<str>, u32)>,
    ) {
        if self.frames.contains_key(name) {
            return;
        }
        let path: Rc<str> = match module {
            Some(path) => Rc::from(path.to_string_lossy().as_ref()),
            None => Rc::from(KERNEL_MODULE),
        };
        let module = self.module(path);
        let (file, line) = match code {
            Some((file, line)) => (Some(file), Some(line)),
            None => (None, None),
        };
        self.frames.insert(
            name.clone(),
            FrameOrigin {
                module,
                address,
                file,
                line,
            },
        );
    }

    fn module(&mut self, path: Rc<str>) -> usize {
        if let Some(&index) = self.module_index.get(&path) {
            return index;
        }
        let build_id = if path.as_ref() == KERNEL_MODULE {
            kernel_build_id()
        } else {
            // Unreadable or not ELF (a JIT's perf map, [vdso]): no build id, still a mapping.
            blazesym::helper::read_elf_build_id(path.as_ref())
                .ok()
                .flatten()
                .map(|id| hex(&id))
        };
        let index = self.modules.len();
        self.modules.push(Module {
            path: path.clone(),
            build_id,
        });
        self.module_index.insert(path, index);
        index
    }
}

/// The running kernel's GNU build id, from the ELF notes it exports in /sys/kernel/notes.
fn kernel_build_id() -> Option<String> {
    gnu_build_id(&fs::read("/sys/kernel/notes").ok()?)
}

/// The NT_GNU_BUILD_ID descriptor of a sequence of ELF notes (namesz, descsz, type, then name
/// and descriptor each padded to 4 bytes), in lower-case hex.
fn gnu_build_id(notes: &[u8]) -> Option<String> {
    const NT_GNU_BUILD_ID: u32 = 3;
    let word = |at: usize| -> Option<u32> {
        Some(u32::from_ne_bytes(notes.get(at..at + 4)?.try_into().ok()?))
    };
    let padded = |n: u32| (n as usize).div_ceil(4) * 4;
    let mut at = 0;
    while at + 12 <= notes.len() {
        let (name_size, desc_size, kind) = (word(at)?, word(at + 4)?, word(at + 8)?);
        let name = notes.get(at + 12..at + 12 + name_size as usize)?;
        let desc_at = at + 12 + padded(name_size);
        if kind == NT_GNU_BUILD_ID && name == b"GNU\0" {
            return Some(hex(notes.get(desc_at..desc_at + desc_size as usize)?));
        }
        at = desc_at + padded(desc_size);
    }
    None
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn note(name: &[u8], kind: u32, desc: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend((name.len() as u32).to_ne_bytes());
        out.extend((desc.len() as u32).to_ne_bytes());
        out.extend(kind.to_ne_bytes());
        out.extend(name);
        out.resize(out.len().div_ceil(4) * 4, 0);
        out.extend(desc);
        out.resize(out.len().div_ceil(4) * 4, 0);
        out
    }

    #[test]
    fn build_id_is_found_after_other_notes() {
        let mut notes = note(b"Xen\0", 1, &[1, 2, 3]);
        notes.extend(note(b"GNU\0", 3, &[0xde, 0xad, 0xbe, 0xef, 0x01]));
        assert_eq!(gnu_build_id(&notes).as_deref(), Some("deadbeef01"));
        assert_eq!(gnu_build_id(&note(b"GNU\0", 1, &[1])), None);
        assert_eq!(gnu_build_id(&[1, 2]), None);
    }

    #[test]
    fn first_address_of_a_name_wins() {
        let mut origins = FrameOrigins::default();
        let name: Rc<str> = Rc::from("hot");
        origins.note(&name, Some(OsStr::new("/bin/true")), 0x10, None);
        origins.note(&name, None, 0x20, None);
        let origin = origins.get("hot").unwrap();
        assert_eq!(origin.address, 0x10);
        assert_eq!(origins.modules[origin.module].path.as_ref(), "/bin/true");
    }
}
