//! Tracepoint formats from tracefs: field offsets differ between kernels (sched_process_fork's
//! comm became a `__data_loc` string in 6.x), so classic tracepoint programs get them at runtime.

use std::path::{Path, PathBuf};

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

/// Reads and parses `events/<category>/<event>/format`.
pub fn fields(category: &str, event: &str) -> Result<Vec<Field>> {
    let path = root()?
        .join("events")
        .join(category)
        .join(event)
        .join("format");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "tracepoint {category}:{event} not found ({})",
            path.display()
        )
    })?;
    Ok(parse_format(&text))
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
}
