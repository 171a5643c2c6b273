//! Tracepoint formats from tracefs: field offsets differ between kernels (sched_process_fork's
//! comm became a `__data_loc` string in 6.x), so classic tracepoint programs get them at runtime.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, anyhow};

const TRACEFS: &str = "/sys/kernel/tracing";

/// The tracefs mount. Mounts it at /sys/kernel/tracing when the kernel has tracefs but nobody
/// mounted it (as on minimal VMs), as perf does; otherwise an error that says how.
pub fn root() -> Result<PathBuf> {
    let find = || {
        [TRACEFS, "/sys/kernel/debug/tracing"]
            .into_iter()
            .map(Path::new)
            .find(|p| p.join("events").is_dir())
            .map(Path::to_path_buf)
    };
    if let Some(path) = find() {
        return Ok(path);
    }
    if Path::new(TRACEFS).is_dir() {
        // SAFETY: static NUL-terminated strings; failure is reported below.
        unsafe {
            libc::mount(
                c"nodev".as_ptr(),
                c"/sys/kernel/tracing".as_ptr(),
                c"tracefs".as_ptr(),
                0,
                std::ptr::null(),
            )
        };
    }
    find().ok_or_else(|| {
        anyhow!("tracefs is not mounted: run 'mount -t tracefs nodev /sys/kernel/tracing' as root")
    })
}

/// One field of a tracepoint record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    pub declaration: String,
    pub name: String,
    pub offset: u32,
    pub size: u32,
    pub signed: bool,
}

/// The text of `events/<category>/<event>/format`.
fn format_file(category: &str, event: &str) -> Result<String> {
    let path = root()?
        .join("events")
        .join(category)
        .join(event)
        .join("format");
    std::fs::read_to_string(&path).with_context(|| {
        format!(
            "tracepoint {category}:{event} not found ({})",
            path.display()
        )
    })
}

/// Reads and parses `events/<category>/<event>/format`.
pub fn fields(category: &str, event: &str) -> Result<Vec<Field>> {
    Ok(parse_format(&format_file(category, event)?))
}

/// Offset of one field, with an error naming the tracepoint.
pub fn field_offset(category: &str, event: &str, name: &str) -> Result<u32> {
    fields(category, event)?
        .into_iter()
        .find(|f| f.name == name)
        .map(|f| f.offset)
        .ok_or_else(|| anyhow!("tracepoint {category}:{event} has no field {name} on this kernel"))
}

pub fn parse_format(text: &str) -> Vec<Field> {
    text.lines().filter_map(parse_field_line).collect()
}

fn parse_field_line(line: &str) -> Option<Field> {
    // "\tfield:pid_t child_pid;\toffset:20;\tsize:4;\tsigned:1;"
    let line = line.trim();
    let rest = line.strip_prefix("field:")?;
    let mut parts = rest.split(';').map(str::trim);
    let declaration = parts.next()?.to_string();
    let mut offset = None;
    let mut size = None;
    let mut signed = false;
    for part in parts {
        if let Some(v) = part.strip_prefix("offset:") {
            offset = v.parse().ok();
        } else if let Some(v) = part.strip_prefix("size:") {
            size = v.parse().ok();
        } else if let Some(v) = part.strip_prefix("signed:") {
            signed = v == "1";
        }
    }
    // The name is the last identifier of the declaration, before any array suffix.
    let name = declaration
        .split(|c: char| c.is_whitespace() || c == '*')
        .next_back()?
        .split('[')
        .next()?
        .to_string();
    Some(Field {
        declaration,
        name,
        offset: offset?,
        size: size?,
        signed,
    })
}

/// How the kernel prints a field by name rather than by number, read from the `print fmt:` line
/// of its format file: `__print_symbolic(REC->f, { 1, "TIMER" }, ...)`,
/// `__print_flags(REC->f & MASK, "|", { 0x01, "S" }, ...)` (with the `cond ? ... : "R"` default
/// sched_switch gives it), and `REC->f & BIT ? "+" : ""` suffixes. The tables differ between
/// kernels (sched_switch's task states did), so tools decode with the running kernel's own.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Symbolic {
    /// Printed one after another, as the kernel's `%s%s` does.
    parts: Vec<SymbolPart>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum SymbolPart {
    /// `__print_symbolic`: the name of exactly this value.
    Symbols(Vec<(u64, String)>),
    /// `__print_flags`: the names of the set bits (of `value & mask`), joined by `delimiter`;
    /// `zero` when no bit is set.
    Flags {
        mask: u64,
        delimiter: String,
        flags: Vec<(u64, String)>,
        zero: String,
    },
    /// `REC->f & mask ? "on" : "off"`.
    Bit { mask: u64, on: String, off: String },
}

impl Symbolic {
    /// The kernel's name for `value`, e.g. "S" or "R+"; None when it has none.
    pub fn name(&self, value: u64) -> Option<String> {
        let mut text = String::new();
        for part in &self.parts {
            match part {
                SymbolPart::Symbols(symbols) => {
                    text.push_str(&symbols.iter().find(|(v, _)| *v == value)?.1);
                }
                SymbolPart::Flags {
                    mask,
                    delimiter,
                    flags,
                    zero,
                } => {
                    let mut left = value & mask;
                    if left == 0 {
                        text.push_str(zero);
                        continue;
                    }
                    let mut names = Vec::new();
                    for (bits, name) in flags {
                        if *bits != 0 && left & bits == *bits {
                            names.push(name.clone());
                            left &= !bits;
                        }
                    }
                    if left != 0 {
                        names.push(format!("{left:#x}"));
                    }
                    text.push_str(&names.join(delimiter));
                }
                SymbolPart::Bit { mask, on, off } => {
                    text.push_str(if value & mask != 0 { on } else { off });
                }
            }
        }
        (!text.is_empty()).then_some(text)
    }
}

/// The symbolic fields of `events/<category>/<event>/format`, by field name.
pub fn symbolic_fields(category: &str, event: &str) -> Result<HashMap<String, Symbolic>> {
    Ok(parse_symbolic(&format_file(category, event)?))
}

/// Parses the `print fmt:` line of a format file; arguments it cannot read are skipped.
pub fn parse_symbolic(text: &str) -> HashMap<String, Symbolic> {
    let mut fields: HashMap<String, Symbolic> = HashMap::new();
    let Some(line) = text
        .lines()
        .find_map(|l| l.trim_start().strip_prefix("print fmt:"))
    else {
        return fields;
    };
    // Skip the format string itself; the arguments follow it.
    let line = line.trim_start();
    let Some((_, args)) = string_literal(line) else {
        return fields;
    };
    for arg in split_top_level(args).into_iter().skip(1) {
        if let Some((field, part)) = symbol_part(arg.trim()) {
            fields.entry(field).or_default().parts.push(part);
        }
    }
    fields
}

/// One print fmt argument as a symbolic part of a field, if it is one.
fn symbol_part(arg: &str) -> Option<(String, SymbolPart)> {
    for (call, flags) in [("__print_flags(", true), ("__print_symbolic(", false)] {
        let Some(start) = arg.find(call) else {
            continue;
        };
        let inner_start = start + call.len();
        let inner_len = closing_paren(&arg[inner_start..])?;
        let inner = &arg[inner_start..inner_start + inner_len];
        let after = arg[inner_start + inner_len + 1..].trim();
        let mut items = split_top_level(inner).into_iter();
        let (field, mask) = field_and_mask(items.next()?)?;
        let delimiter = if flags {
            string_literal(items.next()?.trim())?.0
        } else {
            String::new()
        };
        let mut table = Vec::new();
        for item in items {
            let pair = item.trim().strip_prefix('{')?.strip_suffix('}')?;
            let (value, name) = pair.split_once(',')?;
            table.push((const_value(value)?, string_literal(name.trim())?.0));
        }
        let part = if flags {
            // `cond ? __print_flags(...) : "R"`: what a value without those bits prints.
            let zero = match after.strip_prefix(':') {
                Some(rest) => string_literal(rest.trim())?.0,
                None => String::new(),
            };
            SymbolPart::Flags {
                mask: mask.unwrap_or(u64::MAX),
                delimiter,
                flags: table,
                zero,
            }
        } else {
            if mask.is_some() {
                return None;
            }
            SymbolPart::Symbols(table)
        };
        return Some((field, part));
    }
    // `REC->f & BIT ? "on" : "off"`
    let (condition, branches) = arg.split_once('?')?;
    let (field, mask) = field_and_mask(condition)?;
    let (on, rest) = string_literal(branches.trim())?;
    let (off, _) = string_literal(rest.trim().strip_prefix(':')?.trim())?;
    Some((
        field,
        SymbolPart::Bit {
            mask: mask?,
            on,
            off,
        },
    ))
}

/// `REC->name` or `REC->name & CONSTANT`, in any parentheses.
fn field_and_mask(text: &str) -> Option<(String, Option<u64>)> {
    let text = strip_parens(text.trim());
    let rest = text.strip_prefix("REC->")?;
    let end = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(rest.len());
    let field = rest[..end].to_string();
    let tail = rest[end..].trim();
    if tail.is_empty() {
        return Some((field, None));
    }
    let mask = const_value(tail.strip_prefix('&')?)?;
    Some((field, Some(mask)))
}

fn strip_parens(mut text: &str) -> &str {
    while let Some(inner) = text.strip_prefix('(').and_then(|t| t.strip_suffix(')')) {
        // Only when these two parentheses enclose everything: "(a) & (b)" stays.
        if closing_paren(&text[1..]) != Some(text.len() - 2) {
            break;
        }
        text = inner.trim();
    }
    text
}

/// The characters of `text` outside C string literals, each with its byte index and the
/// bracket depth before it (`(` and `{` open, `)` and `}` close): what the print fmt parsers
/// below split and match on.
fn outside_strings(text: &str) -> impl Iterator<Item = (usize, char, usize)> + '_ {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    text.char_indices().filter_map(move |(i, c)| {
        if in_string {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => in_string = false,
                _ => {}
            }
            return None;
        }
        let before = depth;
        match c {
            '"' => in_string = true,
            '(' | '{' => depth += 1,
            ')' | '}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        (c != '"').then_some((i, c, before))
    })
}

/// Byte length of `text` up to the `)` that closes an already opened `(`.
fn closing_paren(text: &str) -> Option<usize> {
    outside_strings(text)
        .find(|&(_, c, depth)| c == ')' && depth == 0)
        .map(|(i, ..)| i)
}

/// Splits at commas outside parentheses, braces and strings.
fn split_top_level(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut start = 0;
    for (i, _, _) in outside_strings(text).filter(|&(_, c, depth)| c == ',' && depth == 0) {
        parts.push(&text[start..i]);
        start = i + 1;
    }
    parts.push(&text[start..]);
    parts
}

/// A leading C string literal and what follows it.
fn string_literal(text: &str) -> Option<(String, &str)> {
    let rest = text.strip_prefix('"')?;
    let mut value = String::new();
    let mut escaped = false;
    for (i, c) in rest.char_indices() {
        match c {
            _ if escaped => {
                value.push(c);
                escaped = false;
            }
            '\\' => escaped = true,
            '"' => return Some((value, &rest[i + 1..])),
            _ => value.push(c),
        }
    }
    None
}

/// Evaluates a constant C integer expression as format files write them (macros expanded):
/// numbers, parentheses, `~ | ^ & << >> + - *`. None for anything else (casts, names).
fn const_value(text: &str) -> Option<u64> {
    let tokens = const_tokens(text)?;
    let mut pos = 0;
    let value = const_binary(&tokens, &mut pos, 0)?;
    (pos == tokens.len()).then_some(value)
}

#[derive(Clone, Debug, PartialEq)]
enum ConstToken {
    Number(u64),
    Op(&'static str),
}

fn const_tokens(text: &str) -> Option<Vec<ConstToken>> {
    let mut tokens = Vec::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if c.is_ascii_whitespace() {
            i += 1;
        } else if c.is_ascii_digit() {
            let start = i;
            while i < bytes.len() && bytes[i].is_ascii_alphanumeric() {
                i += 1;
            }
            let literal = text[start..i].trim_end_matches(['u', 'U', 'l', 'L']);
            let value = match literal.strip_prefix("0x").or(literal.strip_prefix("0X")) {
                Some(hex) => u64::from_str_radix(hex, 16).ok()?,
                None => literal.parse().ok()?,
            };
            tokens.push(ConstToken::Number(value));
        } else {
            let op = ["<<", ">>", "(", ")", "~", "|", "^", "&", "+", "-", "*"]
                .into_iter()
                .find(|op| text[i..].starts_with(op))?;
            tokens.push(ConstToken::Op(op));
            i += op.len();
        }
    }
    Some(tokens)
}

/// Binding strength of a binary operator (C's order).
fn const_precedence(op: &str) -> Option<u8> {
    Some(match op {
        "|" => 1,
        "^" => 2,
        "&" => 3,
        "<<" | ">>" => 4,
        "+" | "-" => 5,
        "*" => 6,
        _ => return None,
    })
}

fn const_binary(tokens: &[ConstToken], pos: &mut usize, min: u8) -> Option<u64> {
    let mut left = const_unary(tokens, pos)?;
    while let Some(ConstToken::Op(op)) = tokens.get(*pos) {
        let Some(precedence) = const_precedence(op).filter(|p| *p > min) else {
            break;
        };
        *pos += 1;
        let right = const_binary(tokens, pos, precedence)?;
        left = match *op {
            "|" => left | right,
            "^" => left ^ right,
            "&" => left & right,
            "<<" => left.checked_shl(u32::try_from(right).ok()?)?,
            ">>" => left.checked_shr(u32::try_from(right).ok()?)?,
            "+" => left.wrapping_add(right),
            "-" => left.wrapping_sub(right),
            _ => left.wrapping_mul(right),
        };
    }
    Some(left)
}

fn const_unary(tokens: &[ConstToken], pos: &mut usize) -> Option<u64> {
    let token = tokens.get(*pos)?.clone();
    *pos += 1;
    match token {
        ConstToken::Number(n) => Some(n),
        ConstToken::Op("~") => Some(!const_unary(tokens, pos)?),
        ConstToken::Op("-") => Some(const_unary(tokens, pos)?.wrapping_neg()),
        ConstToken::Op("(") => {
            let value = const_binary(tokens, pos, 0)?;
            (tokens.get(*pos) == Some(&ConstToken::Op(")"))).then(|| {
                *pos += 1;
                value
            })
        }
        ConstToken::Op(_) => None,
    }
}

/// A `trace_pipe` opened without blocking (the function tracers' rungs): what is available
/// now, whole lines only — a line split across reads waits in `partial` for its end.
pub fn drain_pipe(pipe: &mut std::fs::File, partial: &mut String) -> Result<String> {
    use std::io::{ErrorKind, Read as _};
    let mut bytes = Vec::new();
    let mut chunk = vec![0u8; 1 << 16];
    loop {
        match pipe.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => bytes.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(anyhow!("cannot read trace_pipe: {e}")),
        }
    }
    partial.push_str(&String::from_utf8_lossy(&bytes));
    Ok(match partial.rfind('\n') {
        Some(end) => partial.drain(..=end).collect(),
        None => String::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_6_18_sched_process_fork() {
        let text = "name: sched_process_fork\nID: 316\nformat:\n\
            \tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
            \tfield:__data_loc char[] parent_comm;\toffset:8;\tsize:4;\tsigned:0;\n\
            \tfield:pid_t parent_pid;\toffset:12;\tsize:4;\tsigned:1;\n\
            \tfield:char child_comm[16];\toffset:16;\tsize:16;\tsigned:0;\n\
            \tfield:pid_t child_pid;\toffset:32;\tsize:4;\tsigned:1;\n";
        let fields = parse_format(text);
        let names: Vec<_> = fields.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "common_type",
                "parent_comm",
                "parent_pid",
                "child_comm",
                "child_pid"
            ]
        );
        assert_eq!(fields[4].offset, 32);
        assert!(fields[2].signed);
    }

    /// sched_switch's print fmt as 6.18 writes it (macros expanded).
    const SCHED_SWITCH_6_18: &str = r#"print fmt: "prev_comm=%s prev_pid=%d prev_prio=%d prev_state=%s%s ==> next_comm=%s next_pid=%d next_prio=%d", REC->prev_comm, REC->prev_pid, REC->prev_prio, (REC->prev_state & ((((0x00000000 | 0x00000001 | 0x00000002 | 0x00000004 | 0x00000008 | 0x00000010 | 0x00000020 | 0x00000040) + 1) << 1) - 1)) ? __print_flags(REC->prev_state & ((((0x00000000 | 0x00000001 | 0x00000002 | 0x00000004 | 0x00000008 | 0x00000010 | 0x00000020 | 0x00000040) + 1) << 1) - 1), "|", { 0x00000001, "S" }, { 0x00000002, "D" }, { 0x00000004, "T" }, { 0x00000008, "t" }, { 0x00000010, "X" }, { 0x00000020, "Z" }, { 0x00000040, "P" }, { 0x00000080, "I" }) : "R", REC->prev_state & (((0x00000000 | 0x00000001 | 0x00000002 | 0x00000004 | 0x00000008 | 0x00000010 | 0x00000020 | 0x00000040) + 1) << 1) ? "+" : "", REC->next_comm, REC->next_pid, REC->next_prio"#;

    #[test]
    fn decodes_sched_switch_task_states() {
        let fields = parse_symbolic(SCHED_SWITCH_6_18);
        let state = &fields["prev_state"];
        let name = |v| state.name(v);
        assert_eq!(name(0).as_deref(), Some("R"));
        assert_eq!(name(1).as_deref(), Some("S"));
        assert_eq!(name(2).as_deref(), Some("D"));
        assert_eq!(name(0x80).as_deref(), Some("I"));
        assert_eq!(name(0x100).as_deref(), Some("R+"));
        assert_eq!(name(0x3).as_deref(), Some("S|D"));
        assert!(!fields.contains_key("prev_pid"));
    }

    #[test]
    fn decodes_symbolic_values() {
        let text = r#"print fmt: "vec=%u [action=%s]", REC->vec, __print_symbolic(REC->vec, { 0, "HI" }, { 1, "TIMER" }, { 3, "NET_RX" })"#;
        let vec = &parse_symbolic(text)["vec"];
        assert_eq!(vec.name(1).as_deref(), Some("TIMER"));
        assert_eq!(vec.name(3).as_deref(), Some("NET_RX"));
        assert_eq!(vec.name(2), None);
    }

    #[test]
    fn constant_expressions() {
        assert_eq!(
            const_value("((((0x0 | 0x1 | 0x40) + 1) << 1) - 1)"),
            Some(0x83)
        );
        assert_eq!(const_value("1UL << 3"), Some(8));
        assert_eq!(const_value("2 + 3 * 4"), Some(14));
        assert_eq!(const_value("(unsigned long)1"), None);
    }
}
