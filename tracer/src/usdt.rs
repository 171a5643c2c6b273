//! USDT probes (SystemTap SDT notes) of a binary or library, as `tplist` lists them: each
//! probe is an ELF note of owner "stapsdt", type 3, in `.note.stapsdt`, whose descriptor holds
//! the probe's address, the link-time address of `.stapsdt.base`, its semaphore's address (0
//! for none), then "provider\0name\0arguments\0". The arguments are the assembler operands
//! the probe site passes (`8@%rbx -4@%eax`: size, negative when signed, then where).

use std::path::Path;

use anyhow::{Context as _, Result};
use object::{Object as _, ObjectSection as _};

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
