//! `--pidns`: PIDs as the process's own PID namespace numbers them, beside the host's. A
//! process in a container is PID 1 or 57 to itself and to the logs an operator reads there,
//! and 812345 to tracer; the namespace PID is what matches one against the other.
//!
//! Read from the last field of `NSpid:` in /proc/PID/status (Linux 4.1+) when a row or event
//! is printed: the innermost namespace's number, one small file read per row. A process gone
//! by then shows "?"; one in tracer's own namespace shows "-" in text (the number is the same)
//! and its own PID in JSON.

/// `--pidns` of the tools that print PIDs of traced processes.
#[derive(clap::Args, Clone, Debug, Default, PartialEq, Eq)]
pub struct PidnsArgs {
    /// Also show each PID as its own PID namespace numbers it (an NSPID column; "-": the same
    /// namespace as tracer's, "?": the process is gone).
    #[arg(long)]
    pub pidns: bool,
}

/// A process's PID in its own (innermost) PID namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NsPid {
    /// The namespace tracer sees it in: the PID is the same.
    Same,
    /// A nested namespace, where it has this PID.
    Inner(u32),
    /// Gone (or /proc does not say).
    Unknown,
}

impl NsPid {
    /// The process `pid` (as tracer's /proc numbers it).
    pub fn of(pid: u32) -> Self {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|status| parse_status(pid, &status))
            .unwrap_or(Self::Unknown)
    }

    /// The NSPID column.
    pub fn text(self) -> String {
        match self {
            Self::Same => "-".into(),
            Self::Inner(ns) => ns.to_string(),
            Self::Unknown => "?".into(),
        }
    }

    /// The `nspid` JSON value: the PID inside its namespace (`pid` itself when that is
    /// tracer's), null when unknown.
    pub fn json(self, pid: u32) -> serde_json::Value {
        match self {
            Self::Same => pid.into(),
            Self::Inner(ns) => ns.into(),
            Self::Unknown => serde_json::Value::Null,
        }
    }
}

fn parse_status(pid: u32, status: &str) -> Option<NsPid> {
    let line = status.lines().find_map(|l| l.strip_prefix("NSpid:"))?;
    let ns: u32 = line.split_whitespace().last()?.parse().ok()?;
    Some(if ns == pid {
        NsPid::Same
    } else {
        NsPid::Inner(ns)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn innermost_namespace() {
        let status = "Name:\tsteps\nTgid:\t812\nNSpid:\t812\t40\t1\nPPid:\t1\n";
        assert_eq!(parse_status(812, status), Some(NsPid::Inner(1)));
        assert_eq!(
            parse_status(9, "NSpid:\t9\n"),
            Some(NsPid::Same),
            "one level: tracer's own namespace"
        );
        assert_eq!(parse_status(9, "Name:\tx\n"), None);
        assert_eq!(NsPid::of(std::process::id()), NsPid::Same);
        assert_eq!(NsPid::Inner(1).json(812), serde_json::json!(1));
        assert_eq!(NsPid::Same.json(9), serde_json::json!(9));
    }
}
