//! The running kernel's BTF: struct member offsets for programs that read kernel memory (Rust
//! eBPF has no CO-RE, aya issue 349), and aya's view of it for tp_btf/fentry loads.

use std::{cell::OnceCell, path::PathBuf};

use anyhow::{Context as _, Result, anyhow, bail};
use btf_rs::{Btf, Type};
use tracer_common::task::TaskOffsets;

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Parsed lazily: a tool that never needs BTF never pays for reading it.
pub struct KernelBtf {
    path: PathBuf,
    parsed: OnceCell<Btf>,
    aya: OnceCell<aya::Btf>,
}

impl KernelBtf {
    pub fn new() -> Self {
        Self {
            path: PathBuf::from(VMLINUX_BTF),
            parsed: OnceCell::new(),
            aya: OnceCell::new(),
        }
    }

    pub fn available(&self) -> bool {
        self.path.exists()
    }

    fn parsed(&self) -> Result<&Btf> {
        if let Some(btf) = self.parsed.get() {
            return Ok(btf);
        }
        // Mmap reads only the types we look up (smaller and faster than parsing all of
        // vmlinux's BTF up front); sysfs BTF is mmap-able since Linux 6.x, older kernels get
        // the full parse.
        let btf = Btf::from_file_with_backend(&self.path, btf_rs::Backend::Mmap)
            .or_else(|_| Btf::from_file(&self.path))
            .map_err(|e| {
            anyhow!(
                "cannot read kernel BTF from {} ({e}); this kernel needs CONFIG_DEBUG_INFO_BTF=y",
                self.path.display()
            )
        })?;
        Ok(self.parsed.get_or_init(|| btf))
    }

    /// aya's parse of the same file, for loading tp_btf and fentry/fexit programs.
    pub fn aya(&self) -> Result<&aya::Btf> {
        if let Some(btf) = self.aya.get() {
            return Ok(btf);
        }
        let btf = aya::Btf::from_sys_fs().map_err(|e| {
            anyhow!("cannot read kernel BTF ({e}); the kernel needs CONFIG_DEBUG_INFO_BTF=y")
        })?;
        Ok(self.aya.get_or_init(|| btf))
    }

    /// Byte offset of `member` in `struct strukt`, looking through anonymous structs/unions.
    pub fn member_offset(&self, strukt: &str, member: &str) -> Result<u32> {
        let btf = self.parsed()?;
        let types = btf
            .resolve_types_by_name(strukt)
            .with_context(|| format!("struct {strukt} not found in kernel BTF"))?;
        for ty in types {
            if let Type::Struct(s) = ty
                && let Some(bits) = find_member(btf, &s, member, 0)?
            {
                if bits % 8 != 0 {
                    bail!("{strukt}.{member} is a bitfield; cannot read it by byte offset");
                }
                return Ok(bits / 8);
            }
        }
        bail!("struct {strukt} has no member {member} in this kernel's BTF")
    }

    pub fn task_offsets(&self) -> Result<TaskOffsets> {
        let off = |m| self.member_offset("task_struct", m);
        Ok(TaskOffsets {
            flags: off("flags")?,
            pid: off("pid")?,
            tgid: off("tgid")?,
            real_parent: off("real_parent")?,
            comm: off("comm")?,
            _reserved: 0,
        })
    }
}

/// Depth-first search for `name`, returning its bit offset from the outermost struct.
fn find_member(btf: &Btf, s: &btf_rs::Struct, name: &str, base_bits: u32) -> Result<Option<u32>> {
    for m in &s.members {
        let member_name = btf.resolve_name(m).unwrap_or_default();
        let bits = base_bits + m.bit_offset();
        if member_name == name {
            return Ok(Some(bits));
        }
        if member_name.is_empty() {
            // Anonymous struct or union: its members belong to the enclosing struct.
            if let Ok(Type::Struct(inner) | Type::Union(inner)) = btf.resolve_chained_type(m)
                && let Some(found) = find_member(btf, &inner, name, bits)?
            {
                return Ok(Some(found));
            }
        }
    }
    Ok(None)
}
