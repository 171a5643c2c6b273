//! The cgroup a process belongs to, for the tools that charge work to its cause (`-G` /
//! `--cgroup`: reclaimtop's memcg reclaim, biotop's and wqtop's issuers and queuers).
//!
//! Read from `/proc/PID/cgroup` in userspace rather than from the task in BPF: one file read
//! per process per report is cheap, it works the same on cgroup v1 (where memory and blkio
//! live in their own hierarchies and have no id BPF helpers return) and v2, and the kernel
//! prints the path relative to the reader's cgroup namespace, which is what an operator in a
//! container expects to see.

use std::collections::HashMap;

/// The controller whose hierarchy names a process's cgroup. On a v2-only (unified) machine
/// every controller gives the same path; on v1 or hybrid machines the controller's own
/// hierarchy is used and the v2 path is the fallback.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Controller {
    Memory,
    Blkio,
    Cpu,
}

impl Controller {
    /// The v1 controller names that select this hierarchy (`io` is blkio's v2 name).
    fn v1_names(self) -> &'static [&'static str] {
        match self {
            Controller::Memory => &["memory"],
            Controller::Blkio => &["blkio", "io"],
            Controller::Cpu => &["cpu", "cpuacct"],
        }
    }
}

/// The cgroup path of `pid` in `controller`'s hierarchy (`/` for the root), or None when the
/// process is gone or the file is unreadable.
pub fn path_of(pid: u32, controller: Controller) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    path_in(&text, controller)
}

/// The path for `controller` in the text of a `/proc/PID/cgroup` file: the v1 line naming the
/// controller when there is one, else the v2 line (`0::/path`).
pub fn path_in(text: &str, controller: Controller) -> Option<String> {
    let mut unified = None;
    for line in text.lines() {
        let mut fields = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        if id == "0" && controllers.is_empty() {
            unified = Some(path.to_string());
        } else if controllers
            .split(',')
            .any(|c| controller.v1_names().contains(&c))
        {
            return Some(path.to_string());
        }
    }
    unified
}

/// Per-report cache: each process's file is read once however many rows name it.
#[derive(Default)]
pub struct Resolver {
    paths: HashMap<(u32, Controller), Option<String>>,
}

impl Resolver {
    /// The cgroup path of `pid`, or `-` when the process has exited (its cgroup cannot be
    /// read after that) or `pid` is 0 (interrupt context, the idle task).
    pub fn label(&mut self, pid: u32, controller: Controller) -> String {
        if pid == 0 {
            return "-".to_string();
        }
        self.paths
            .entry((pid, controller))
            .or_insert_with(|| path_of(pid, controller))
            .clone()
            .unwrap_or_else(|| "-".to_string())
    }

    /// Forget every cached path (call once per interval: processes move between cgroups).
    pub fn clear(&mut self) {
        self.paths.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str =
        "9:name=systemd:/\n7:blkio:/slow\n4:memory:/box/a\n2:cpu,cpuacct:/\n0::/\n";
    const UNIFIED: &str = "0::/system.slice/nginx.service\n";

    #[test]
    fn v1_controller_line_wins_over_unified() {
        assert_eq!(
            path_in(HYBRID, Controller::Memory).as_deref(),
            Some("/box/a")
        );
        assert_eq!(path_in(HYBRID, Controller::Blkio).as_deref(), Some("/slow"));
        assert_eq!(path_in(HYBRID, Controller::Cpu).as_deref(), Some("/"));
    }

    #[test]
    fn unified_only_machines_use_the_v2_path() {
        for c in [Controller::Memory, Controller::Blkio, Controller::Cpu] {
            assert_eq!(
                path_in(UNIFIED, c).as_deref(),
                Some("/system.slice/nginx.service")
            );
        }
    }

    #[test]
    fn own_process_resolves_and_pid_zero_is_a_dash() {
        let mut r = Resolver::default();
        assert!(
            r.label(std::process::id(), Controller::Memory)
                .starts_with('/')
        );
        assert_eq!(r.label(0, Controller::Memory), "-");
    }
}
