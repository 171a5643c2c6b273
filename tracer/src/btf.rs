//! The running kernel's BTF: struct member offsets for programs that read kernel memory (Rust
//! eBPF has no CO-RE, aya issue 349), and the type ids tp_btf/fentry/fexit programs attach by.

use std::{cell::OnceCell, path::PathBuf};

use anyhow::{Context as _, Result, anyhow, bail};
use btf_rs::{Btf, Type};
use tracer_common::task::TaskOffsets;

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// The support statement every "this kernel lacks X" refusal ends with.
pub const SUPPORTED: &str = "Linux 5.10+ with BTF is supported";

/// Parsed lazily: a tool that never needs BTF never pays for reading it.
pub struct KernelBtf {
    path: PathBuf,
    parsed: OnceCell<Btf>,
}

impl KernelBtf {
    pub fn new() -> Self {
        Self {
            path: PathBuf::from(VMLINUX_BTF),
            parsed: OnceCell::new(),
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
                if self.path.exists() {
                    anyhow!(
                        "cannot read kernel BTF from {} ({e}); {SUPPORTED}",
                        self.path.display()
                    )
                } else {
                    anyhow!(
                        "needs kernel BTF ({} is missing: CONFIG_DEBUG_INFO_BTF=y); {SUPPORTED}",
                        self.path.display()
                    )
                }
            })?;
        Ok(self.parsed.get_or_init(|| btf))
    }

    /// The BTF type id a tp_btf program attaches by: the kernel's `btf_trace_<event>` typedef.
    pub fn tp_btf_id(&self, event: &str) -> Result<u32> {
        let name = format!("btf_trace_{event}");
        self.type_id(&name, |t| matches!(t, Type::Typedef(_)))
            .with_context(|| format!("tracepoint {event} has no {name} type in kernel BTF"))
    }

    /// The BTF type id an fentry/fexit program attaches by: the function's own `FUNC` type.
    pub fn function_id(&self, function: &str) -> Result<u32> {
        self.type_id(function, |t| matches!(t, Type::Func(_)))
            .with_context(|| format!("{function} is not a function in kernel BTF"))
    }

    /// Resolved with the lazy mmap'ed reader instead of a full parse of vmlinux's BTF (aya's
    /// own parse was ~40 % of a one-second tool run's CPU; vendor/aya/README.tracer.md).
    fn type_id(&self, name: &str, kind: impl Fn(&Type) -> bool) -> Result<u32> {
        let btf = self.parsed()?;
        for id in btf.resolve_ids_by_name(name).unwrap_or_default() {
            if btf.resolve_type_by_id(id).is_ok_and(|t| kind(&t)) {
                return Ok(id);
            }
        }
        bail!("not found")
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

    /// Offset of the per-CPU variable `name` in the kernel's `.data..percpu` section (its
    /// BTF DATASEC), for locating one per-CPU variable from another's address.
    pub fn percpu_var_offset(&self, name: &str) -> Result<u32> {
        let btf = self.parsed()?;
        let var_ids: Vec<u32> = btf
            .resolve_ids_by_name(name)
            .unwrap_or_default()
            .into_iter()
            .filter(|&id| matches!(btf.resolve_type_by_id(id), Ok(Type::Var(_))))
            .collect();
        if var_ids.is_empty() {
            bail!("kernel BTF has no variable {name}");
        }
        for ty in btf
            .resolve_types_by_name(".data..percpu")
            .unwrap_or_default()
        {
            if let Type::Datasec(section) = ty
                && let Some(var) = section.variables.iter().find(|v| {
                    btf_rs::BtfType::get_type_id(*v).is_some_and(|id| var_ids.contains(&id))
                })
            {
                return Ok(var.offset());
            }
        }
        bail!("{name} is not a per-CPU variable in kernel BTF")
    }

    /// Byte size of `struct strukt`.
    pub fn struct_size(&self, strukt: &str) -> Result<u32> {
        let btf = self.parsed()?;
        for ty in btf.resolve_types_by_name(strukt).unwrap_or_default() {
            if let Type::Struct(s) = ty {
                return Ok(s.size() as u32);
            }
        }
        bail!("struct {strukt} not found in kernel BTF")
    }

    /// Where a task's user registers are saved on kernel entry (`tracer_common::ustack`).
    pub fn user_regs_offsets(&self) -> Result<tracer_common::ustack::UserRegsOffsets> {
        let off = |m| self.member_offset("pt_regs", m);
        Ok(tracer_common::ustack::UserRegsOffsets {
            task_stack: self.member_offset("task_struct", "stack")?,
            regs_size: self.struct_size("pt_regs")?,
            ip: off("ip")?,
            sp: off("sp")?,
            bp: off("bp")?,
            cs: off("cs")?,
            ss: off("ss")?,
            valid: 1,
        })
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
