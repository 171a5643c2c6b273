//! What each kernel thread is for, from its name: a built-in table shared by `kthreads`, `ktop`
//! (and anything else that shows kernel threads), plus the group name that strips the
//! per-instance part (`ksoftirqd/3` → `ksoftirqd/*`, `kswapd0` → `kswapd*`).
//!
//! Kernel threads are named by the code that creates them (`kthread_create(fn, data,
//! "ksoftirqd/%u", cpu)`), so the name before the instance suffix identifies the code.
//!
//! Where a tracer tool answers "what is this thread doing, and for whom", the row also names
//! it (`see`): kthreads and ktop print it next to the role, so a busy kswapd0 points at
//! reclaimtop and a busy migration/1 at migrations.

/// One table row: a name pattern, the role of threads matching it, and the tracer tool that
/// explains their work (the command to run, options included).
struct Role {
    /// Exact name, or a prefix when it ends in '*'.
    pattern: &'static str,
    role: &'static str,
    see: Option<&'static str>,
}

const fn r(pattern: &'static str, role: &'static str) -> Role {
    Role {
        pattern,
        role,
        see: None,
    }
}

/// A row whose threads' work a tracer tool breaks down.
const fn rs(pattern: &'static str, role: &'static str, see: &'static str) -> Role {
    Role {
        pattern,
        role,
        see: Some(see),
    }
}

/// First match wins: specific patterns before general ones.
const ROLES: &[Role] = &[
    r(
        "kthreadd",
        "parent of all kernel threads: creates them on request (kthread_create)",
    ),
    r(
        "swapper/*",
        "idle task of this CPU (pid 0): runs when nothing else is runnable",
    ),
    rs(
        "ksoftirqd/*",
        "runs softirqs (NET_RX, TIMER, RCU, BLOCK...) on its CPU when they pile up",
        "softirq-top",
    ),
    rs(
        "kworker/R-*",
        "workqueue rescuer: runs that workqueue's items when no worker can be created",
        "wqtop",
    ),
    rs(
        "kworker/u*",
        "unbound workqueue worker (pool in the name): deferred work on any allowed CPU",
        "wqtop",
    ),
    rs(
        "kworker/*H*",
        "high-priority per-CPU workqueue worker (CPU:ID H): deferred work",
        "wqtop",
    ),
    rs(
        "kworker/*",
        "per-CPU workqueue worker (CPU:ID): runs deferred work items on that CPU",
        "wqtop",
    ),
    rs(
        "migration/*",
        "CPU stopper: moves tasks off its CPU (load balancing, hotplug, stop_machine)",
        "migrations",
    ),
    r("cpuhp/*", "CPU hotplug state machine for its CPU"),
    r(
        "idle_inject/*",
        "forced idle injection on its CPU (thermal / power capping)",
    ),
    r(
        "watchdog/*",
        "soft-lockup watchdog for its CPU (older kernels)",
    ),
    r("watchdogd", "pets the hardware watchdog device"),
    r(
        "rcu_preempt",
        "RCU grace-period kthread: ends grace periods so deferred frees can run",
    ),
    r(
        "rcu_sched",
        "RCU grace-period kthread: ends grace periods so deferred frees can run",
    ),
    r("rcu_bh", "RCU-bh grace-period kthread (older kernels)"),
    r(
        "rcuog/*",
        "RCU callback offload: grace-period waits for a group of no-CB CPUs",
    ),
    r(
        "rcuop/*",
        "RCU callback offload: invokes callbacks of a no-CB CPU",
    ),
    r(
        "rcuos/*",
        "RCU callback offload: invokes callbacks of a no-CB CPU (sched flavour)",
    ),
    r(
        "rcuc/*",
        "RCU callback invocation for its CPU (RCU_BOOST / PREEMPT_RT)",
    ),
    r("rcub/*", "RCU priority boosting of preempted readers"),
    r(
        "rcu_tasks_rude_*",
        "RCU-tasks-rude grace periods (forces a schedule on every CPU)",
    ),
    r(
        "rcu_tasks_trace*",
        "RCU-tasks-trace grace periods (sleepable BPF, tracing)",
    ),
    r(
        "rcu_tasks*",
        "RCU-tasks grace periods (freeing tracing trampolines, BPF)",
    ),
    r(
        "rcu_exp_*",
        "RCU expedited grace periods (synchronize_rcu_expedited)",
    ),
    r("rcu_*", "RCU machinery"),
    rs(
        "kswapd*",
        "page reclaim when free memory < low watermark (one per NUMA node)",
        "reclaimtop",
    ),
    r(
        "kcompactd*",
        "memory compaction: defragments free memory for huge/high-order pages",
    ),
    r(
        "khugepaged",
        "collapses small pages into transparent huge pages",
    ),
    r(
        "ksmd",
        "kernel samepage merging: deduplicates identical anonymous pages",
    ),
    r(
        "kdamond.*",
        "DAMON data-access monitoring (and DAMOS reclaim/LRU sorting) for a context",
    ),
    r(
        "oom_reaper",
        "frees the memory of OOM-killed processes early",
    ),
    rs(
        "kswapd",
        "page reclaim when free memory < low watermark",
        "reclaimtop",
    ),
    rs(
        "jbd2/*",
        "ext4 journal commits for that device",
        "biotop --jbd2",
    ),
    r(
        "xfsaild/*",
        "XFS: pushes logged metadata to disk for that device",
    ),
    r(
        "btrfs-*",
        "btrfs background work (cleaner, transaction commit)",
    ),
    r(
        "kauditd",
        "sends audit records to the userspace audit daemon",
    ),
    r(
        "khungtaskd",
        "hung-task detector: warns about tasks stuck in D state",
    ),
    r("kdevtmpfs", "creates and removes /dev nodes in devtmpfs"),
    r(
        "irq/*",
        "threaded interrupt handler for that IRQ (number-name)",
    ),
    r(
        "napi/*",
        "threaded NAPI polling for a network device's queue",
    ),
    r("scsi_eh_*", "SCSI error handler for that host"),
    r("scsi_tmf_*", "SCSI task management for that host"),
    r("nvme-*", "NVMe driver work"),
    r("loop*", "loop block device worker"),
    r("md*_raid*", "software RAID (md) array management"),
    r("kthrotld", "block I/O throttling dispatch"),
    r(
        "kblockd",
        "block layer: runs queued requests (kblockd workqueue)",
    ),
    r("kintegrityd", "block integrity verification"),
    r("writeback", "page cache writeback (flusher)"),
    r(
        "hwrng",
        "feeds the hardware random number generator into the entropy pool",
    ),
    r("psimon", "pressure stall information (PSI) trigger monitor"),
    r("kvm-*", "KVM background work for a VM"),
    r(
        "vhost-*",
        "vhost worker for a VM process (virtio back end in the kernel)",
    ),
    r("card*-crtc*", "DRM display commit for a CRTC"),
    r("pool_workqueue_*", "workqueue pool management"),
    r("kstrp", "stream parser (KCM, TLS) workqueue"),
    r("ipv6_addrconf", "IPv6 address autoconfiguration"),
    r("zswap*", "zswap compressed swap cache"),
    r(
        "ext4-rsv-conver",
        "ext4: converts unwritten extents after I/O",
    ),
    r("kpsmoused", "PS/2 mouse protocol handling"),
    r("krfcommd", "Bluetooth RFCOMM"),
    r("ecryptfs-kthrea", "eCryptfs lower-file opener"),
    r("khvcd", "hypervisor console polling"),
];

/// The role of a kernel thread named `comm`, if the table knows it.
pub fn role(comm: &str) -> Option<&'static str> {
    ROLES
        .iter()
        .find(|r| matches(r.pattern, comm))
        .map(|r| r.role)
}

/// The tracer command that breaks down the work of a kernel thread named `comm`
/// (`reclaimtop` for kswapd0, `biotop --jbd2` for jbd2/sda1-8), if there is one.
pub fn see(comm: &str) -> Option<&'static str> {
    ROLES
        .iter()
        .find(|r| matches(r.pattern, comm))
        .and_then(|r| r.see)
}

/// `role` with the tool pointer appended, as kthreads and ktop print it: "page reclaim when
/// free memory < low watermark (one per NUMA node); see reclaimtop".
pub fn role_and_see(role: &str, see: Option<&str>) -> String {
    match see {
        Some(tool) if role.is_empty() => format!("see {tool}"),
        Some(tool) => format!("{role}; see {tool}"),
        None => role.to_string(),
    }
}

/// The role of a group (see `group`), given the name of one of its members: the member's role,
/// except for groups whose members differ (kworkers: per-CPU, unbound and rescuers).
pub fn group_role(group: &str, member: &str) -> Option<&'static str> {
    match group {
        "kworker/*" => {
            Some("workqueue workers (per-CPU, unbound, rescuers): run deferred work items")
        }
        _ => role(member),
    }
}

/// Glob with '*' wildcards (any run of characters), enough for kernel-thread names.
fn matches(pattern: &str, name: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = name.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    if parts.is_empty() {
        return rest.is_empty();
    }
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        if last {
            return part.is_empty() || rest.ends_with(part);
        }
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    true
}

/// The group of a kernel thread: its name without the per-instance part.
/// `ksoftirqd/3` → `ksoftirqd/*`, `kworker/0:1H-kblockd` → `kworker/*`, `jbd2/vda-8` →
/// `jbd2/*`, `kswapd0` → `kswapd*`, `rcu_preempt` → `rcu_preempt`.
pub fn group(comm: &str) -> String {
    if let Some((head, _)) = comm.split_once('/') {
        return format!("{head}/*");
    }
    let trimmed = comm.trim_end_matches(|c: char| c.is_ascii_digit());
    if trimmed.len() < comm.len() && !trimmed.is_empty() {
        format!("{trimmed}*")
    } else {
        comm.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles() {
        assert!(role("jbd2/vda-8").unwrap().contains("ext4 journal"));
        assert!(role("kswapd0").unwrap().contains("low watermark"));
        assert!(role("ksoftirqd/1").unwrap().contains("softirq"));
        assert!(
            role("kworker/u4:2-events_unbound")
                .unwrap()
                .starts_with("unbound")
        );
        assert!(
            role("kworker/0:1H-kblockd")
                .unwrap()
                .starts_with("high-priority")
        );
        assert!(role("kworker/1:0-events").unwrap().starts_with("per-CPU"));
        assert!(role("kworker/R-rcu_gp").unwrap().contains("rescuer"));
        assert!(role("rcu_preempt").unwrap().contains("grace"));
        assert!(role("rcu_tasks_rude_kthread").unwrap().contains("rude"));
        assert!(role("migration/0").is_some());
        assert!(role("kthreadd").is_some());
        assert!(role("kdamond.0").unwrap().contains("DAMON"));
        assert_eq!(role("nginx"), None);
    }

    #[test]
    fn see_points_at_the_tool_for_the_thread() {
        assert_eq!(see("kswapd0"), Some("reclaimtop"));
        assert_eq!(see("jbd2/vda-8"), Some("biotop --jbd2"));
        assert_eq!(see("kworker/u4:2-events_unbound"), Some("wqtop"));
        assert_eq!(see("kworker/0:1H-kblockd"), Some("wqtop"));
        assert_eq!(see("kworker/R-rcu_gp"), Some("wqtop"));
        assert_eq!(see("kworker/1:0-events"), Some("wqtop"));
        assert_eq!(see("ksoftirqd/1"), Some("softirq-top"));
        assert_eq!(see("migration/0"), Some("migrations"));
        assert_eq!(see("rcu_preempt"), None);
        assert_eq!(see("nginx"), None);
        assert_eq!(
            role_and_see("ext4 journal commits for that device", see("jbd2/sda1-8")),
            "ext4 journal commits for that device; see biotop --jbd2"
        );
        assert_eq!(role_and_see("", Some("wqtop")), "see wqtop");
        assert_eq!(role_and_see("RCU machinery", None), "RCU machinery");
    }

    #[test]
    fn groups() {
        assert_eq!(group("ksoftirqd/3"), "ksoftirqd/*");
        assert_eq!(group("kworker/0:1H-kblockd"), "kworker/*");
        assert_eq!(group("jbd2/vda-8"), "jbd2/*");
        assert_eq!(group("kswapd0"), "kswapd*");
        assert_eq!(group("rcu_preempt"), "rcu_preempt");
        assert_eq!(group("kthreadd"), "kthreadd");
    }
}
