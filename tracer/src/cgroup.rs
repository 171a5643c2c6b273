//! Cgroups: the `--cgroup PATH` filter every task-filtering tool takes (resolved here once:
//! the directory checked to be cgroup v2, its id, and the BTF offsets the kernel-side check in
//! tracer-ebpf/src/task.rs reads), and the cgroup a process belongs to, for the tools that
//! charge work to its cause (`-G` / `--show-cgroup`: reclaimtop's memcg reclaim, biotop's and
//! wqtop's issuers and queuers).
//!
//! The column is read from `/proc/PID/cgroup` in userspace rather than from the task in BPF:
//! one file read per process per report is cheap, it works the same on cgroup v1 (where
//! memory and blkio live in their own hierarchies and have no id BPF helpers return) and v2,
//! and the kernel prints the path relative to the reader's cgroup namespace, which is what an
//! operator in a container expects to see.

use std::{
    collections::HashMap,
    os::unix::{ffi::OsStrExt as _, fs::MetadataExt as _},
    path::{Path, PathBuf},
};

use anyhow::Result;
use aya::EbpfLoader;
use tracer_common::task::{CGROUP_EXACT, CGROUP_SUBTREE, CgroupFilter};

use crate::btf::KernelBtf;

/// statfs f_type of a cgroup v2 mount (linux/magic.h).
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
/// statfs f_type of a cgroup v1 hierarchy.
const CGROUP_SUPER_MAGIC: i64 = 0x0027_e0eb;

/// `--cgroup PATH` / `--cgroup-exact` of the tools that filter tasks in the kernel.
#[derive(clap::Args, Clone, Debug, Default, PartialEq, Eq)]
pub struct CgroupArgs {
    /// Only tasks in this cgroup v2 directory or any cgroup below it.
    #[arg(short = 'c', long = "cgroup", value_name = "PATH")]
    pub cgroup: Option<PathBuf>,
    /// With --cgroup: only tasks in that cgroup itself, not in the cgroups below it.
    #[arg(long = "cgroup-exact", requires = "cgroup")]
    pub cgroup_exact: bool,
}

impl CgroupArgs {
    /// The filter for the programs' `CGROUP_FILTER` global (ANY without `--cgroup`); fails in
    /// one line for a path that is not a cgroup v2 directory, before anything loads.
    pub fn filter(&self, btf: &KernelBtf) -> Result<CgroupFilter> {
        let Some(path) = &self.cgroup else {
            return Ok(CgroupFilter::ANY);
        };
        let id = v2_id(path)?;
        let off = |strukt, member| btf.member_offset(strukt, member);
        Ok(CgroupFilter {
            id,
            mode: if self.cgroup_exact {
                CGROUP_EXACT
            } else {
                CGROUP_SUBTREE
            },
            task_cgroups: off("task_struct", "cgroups")?,
            css_set_dfl_cgrp: off("css_set", "dfl_cgrp")?,
            cgroup_kn: off("cgroup", "kn")?,
            kernfs_id: off("kernfs_node", "id")?,
            // Renamed when it became RCU-protected (Linux 6.15).
            kernfs_parent: off("kernfs_node", "parent")
                .or_else(|_| off("kernfs_node", "__parent"))?,
        })
    }

    /// Resolves the filter and makes it the one `loader::load` sets in every object.
    pub fn install(&self, btf: &KernelBtf) -> Result<()> {
        install(self.filter(btf)?);
        Ok(())
    }

    /// Refuses `--cgroup` for a tool whose data has no task to filter on.
    pub fn refuse(&self, why: &str) -> Result<()> {
        if self.cgroup.is_some() {
            usage_bail!("--cgroup: {why}");
        }
        Ok(())
    }
}

/// The process's `--cgroup` filter. One per process, not per object: a tool's (or serve's)
/// filter is the user's choice for everything it loads, and the probe tools load several
/// copies of their object (and uprobe_multi reloads of its programs, which share its .rodata),
/// so `loader::load` applies it to every object instead of each call site passing it down.
static FILTER: std::sync::OnceLock<CgroupFilter> = std::sync::OnceLock::new();

/// Sets the process's filter (the first call wins; a tool installs it once, before loading).
pub fn install(filter: CgroupFilter) {
    let _ = FILTER.set(filter);
}

/// Whether a `--cgroup` filter is installed (for attach rungs that cannot apply it).
pub fn filtering() -> bool {
    FILTER.get().is_some_and(|f| *f != CgroupFilter::ANY)
}

/// Sets `CGROUP_FILTER` in an object about to load, when a filter was installed. Objects whose
/// programs never call the check have no such global; that is not an error.
pub fn apply(loader: &mut EbpfLoader<'_>) {
    if let Some(filter) = FILTER.get()
        && *filter != CgroupFilter::ANY
    {
        loader.override_global("CGROUP_FILTER", filter, false);
    }
}

/// The cgroup v2 id of the directory `path`: its kernfs node id, which is the directory's
/// inode number where ino_t is 64 bits (kernfs_id_ino) — what bpf_get_current_cgroup_id
/// returns for a task in it.
pub fn v2_id(path: &Path) -> Result<u64> {
    let shown = path.display();
    let example = v2_mount().map_or_else(
        || "a cgroup v2 directory".to_string(),
        |m| format!("a cgroup v2 directory, e.g. {}/...", m.display()),
    );
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            usage_bail!("--cgroup {shown}: no such directory; --cgroup needs {example}")
        }
        Err(e) => usage_bail!("--cgroup {shown}: {e}"),
    };
    if !meta.is_dir() {
        usage_bail!("--cgroup {shown}: not a directory; --cgroup needs {example}");
    }
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| usage_err!("--cgroup {shown}: the path holds a NUL byte"))?;
    // SAFETY: a NUL-terminated path and a zeroed statfs the call fills.
    let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c_path.as_ptr(), &mut fs) } != 0 {
        usage_bail!("--cgroup {shown}: {}", std::io::Error::last_os_error());
    }
    match fs.f_type as i64 {
        CGROUP2_SUPER_MAGIC => Ok(meta.ino()),
        CGROUP_SUPER_MAGIC => {
            let hierarchy = v1_hierarchy(path).unwrap_or_else(|| "a v1 hierarchy".to_string());
            usage_bail!("{shown} is cgroup v1 ({hierarchy}): --cgroup needs {example}")
        }
        _ => usage_bail!("--cgroup {shown}: not in a cgroup filesystem; --cgroup needs {example}"),
    }
}

/// Mounts from /proc/self/mountinfo: (mount point, filesystem type, super options).
fn mounts() -> Vec<(PathBuf, String, String)> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mount_point = left.split(' ').nth(4)?;
            let mut right = right.split(' ');
            let fstype = right.next()?;
            let options = right.nth(1).unwrap_or_default();
            Some((
                PathBuf::from(mount_point.replace("\\040", " ")),
                fstype.to_string(),
                options.to_string(),
            ))
        })
        .collect()
}

/// Where the cgroup v2 hierarchy is mounted (/sys/fs/cgroup, or /sys/fs/cgroup/unified on
/// hybrid machines), for the examples errors give.
fn v2_mount() -> Option<PathBuf> {
    mounts()
        .into_iter()
        .find(|(_, fstype, _)| fstype == "cgroup2")
        .map(|(point, _, _)| point)
}

/// "memory controller hierarchy" for a path in a v1 mount: its controllers, from the super
/// options of the deepest cgroup mount holding the path.
fn v1_hierarchy(path: &Path) -> Option<String> {
    let path = std::fs::canonicalize(path).ok()?;
    let (_, _, options) = mounts()
        .into_iter()
        .filter(|(point, fstype, _)| fstype == "cgroup" && path.starts_with(point))
        .max_by_key(|(point, _, _)| point.as_os_str().len())?;
    const CONTROLLERS: &[&str] = &[
        "cpuset",
        "cpu",
        "cpuacct",
        "blkio",
        "io",
        "memory",
        "devices",
        "freezer",
        "net_cls",
        "perf_event",
        "net_prio",
        "hugetlb",
        "pids",
        "rdma",
        "misc",
    ];
    let controllers: Vec<&str> = options
        .split(',')
        .filter(|o| CONTROLLERS.contains(o))
        .collect();
    if !controllers.is_empty() {
        return Some(format!("{} controller hierarchy", controllers.join(",")));
    }
    options
        .split(',')
        .find_map(|o| o.strip_prefix("name="))
        .map(|name| format!("named hierarchy {name}"))
}

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

/// The cgroup v2 root's id (kernfs numbers its root node 1).
const V2_ROOT_ID: u64 = 1;

/// cgroup v2 ids (what `bpf_get_current_cgroup_id` returned when an event happened) to their
/// paths (`/` for the root), for tasks that exited before the report: a directory's inode
/// number is its id (see `v2_id`), so one walk of the v2 mount maps them all. Walked at the
/// first lookup and again, at most once a second, when an id is not known yet; a path once
/// seen is kept, so a cgroup removed since is still named.
#[derive(Default)]
pub struct IdPaths {
    paths: HashMap<u64, String>,
    walked: Option<std::time::Instant>,
}

impl IdPaths {
    pub fn path(&mut self, id: u64) -> Option<String> {
        if id == 0 {
            return None;
        }
        if !self.paths.contains_key(&id)
            && self
                .walked
                .is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(1))
        {
            self.walk();
        }
        self.paths.get(&id).cloned()
    }

    fn walk(&mut self) {
        self.walked = Some(std::time::Instant::now());
        let Some(root) = v2_mount() else {
            // Not mounted (a v1-only or hybrid machine): every task is in the v2 root, id 1.
            self.paths.insert(V2_ROOT_ID, "/".to_string());
            return;
        };
        let mut dirs = vec![root.clone()];
        while let Some(dir) = dirs.pop() {
            let Ok(meta) = std::fs::metadata(&dir) else {
                continue;
            };
            let relative = dir.strip_prefix(&root).unwrap_or(&dir);
            self.paths
                .insert(meta.ino(), format!("/{}", relative.display()));
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    dirs.push(entry.path());
                }
            }
        }
    }
}

/// Per-report cache: each process's file is read once however many rows name it.
#[derive(Default)]
pub struct Resolver {
    paths: HashMap<(u32, Controller), Option<String>>,
    ids: IdPaths,
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

    /// `label` of a process that was in cgroup v2 `id` (0: unknown) when its event happened:
    /// its current cgroup while it lives, else the one it was in (`IdPaths`), else `-`.
    pub fn label_at(&mut self, pid: u32, id: u64, controller: Controller) -> String {
        let live = self.label(pid, controller);
        if live != "-" {
            return live;
        }
        self.ids.path(id).unwrap_or(live)
    }

    /// Forget the cached paths of processes (call once per interval: processes move between
    /// cgroups); the id paths stay.
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
    fn cgroup_ids_resolve_to_paths() {
        let mut ids = IdPaths::default();
        let Some(root) = v2_mount() else {
            // No cgroup v2 mount: everyone is in its root.
            assert_eq!(ids.path(V2_ROOT_ID).as_deref(), Some("/"));
            return;
        };
        let root_id = std::fs::metadata(&root).map(|m| m.ino()).unwrap_or(0);
        assert_eq!(ids.path(root_id).as_deref(), Some("/"));
        assert_eq!(ids.path(0), None);
        // Our own cgroup, by the id of its directory.
        let text = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        if let Some(own) = text
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .filter(|p| *p != "/")
        {
            let dir = root.join(own.trim_start_matches('/'));
            if let Ok(meta) = std::fs::metadata(&dir) {
                assert_eq!(ids.path(meta.ino()).as_deref(), Some(own));
            }
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
