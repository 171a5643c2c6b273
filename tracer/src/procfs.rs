//! One-shot views of tasks from /proc, for what the kernel programs do not give: the list of
//! kernel threads (`kthreads`), which pid is ksoftirqd/N (`softirq-top`).

/// The fields of /proc/PID/stat (proc_pid_stat(5)) the tools use.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskStat {
    pub pid: u32,
    pub comm: String,
    pub state: char,
    pub ppid: u32,
    /// `task_struct::flags` (PF_KTHREAD, ...).
    pub flags: u32,
    /// utime + stime, in clock ticks.
    pub cpu_ticks: i64,
    pub nice: i64,
    /// CPU it last ran on (-1 if unknown).
    pub last_cpu: i64,
    pub rt_priority: u64,
}

/// Parses one /proc/PID/stat line. The comm may hold spaces and parentheses, so fields are
/// counted from the last ')'.
pub fn parse_stat(pid: u32, stat: &str) -> Option<TaskStat> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_string();
    let fields: Vec<&str> = stat.get(close + 1..)?.split_whitespace().collect();
    // fields[0] is field 3 of proc_pid_stat(5).
    let field = |n: usize| fields.get(n - 3).copied();
    let num = |n: usize| field(n).and_then(|v| v.parse::<i64>().ok());
    Some(TaskStat {
        pid,
        comm,
        state: field(3)?.chars().next()?,
        ppid: num(4)? as u32,
        flags: field(9)?.parse::<u64>().ok()? as u32,
        cpu_ticks: num(14)? + num(15)?,
        nice: num(19).unwrap_or(0),
        last_cpu: num(39).unwrap_or(-1),
        rt_priority: num(40).unwrap_or(0) as u64,
    })
}

/// Every process in /proc (thread-group leaders), skipping those that exit while we read.
pub fn tasks() -> impl Iterator<Item = TaskStat> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let pid = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            parse_stat(pid, &stat)
        })
}

/// The process (thread group) a thread belongs to, from /proc/TID/status; None once gone.
pub fn tgid_of(tid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Every thread of process `pid` now (set_ftrace_pid takes threads).
pub fn threads_of(pid: u32) -> Vec<u32> {
    let mut tids: Vec<u32> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|dir| {
            dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    if tids.is_empty() {
        tids.push(pid);
    }
    tids
}
