//! The bad-input matrix: unknown tools, probes, symbols, PIDs and CPUs, malformed probe specs,
//! absurd intervals and frequencies, files that are not binaries, huge globs, a machine
//! without tracefs or BTF, dropped capabilities. Each must give exactly one clear stderr line
//! and a non-zero exit within a deadline — never a panic, a verifier dump or a hang — and leave
//! nothing loaded in the kernel. The exit status follows README's rule: 2 when what the user
//! typed is wrong (syntax, ranges, combinations, or a PID, CPU, probe, symbol, file or field
//! that does not exist), 1 when a correct request fails here (no tracefs or BTF, missing
//! privileges, an I/O error, a mechanism the ladder does not offer on this kernel).

use std::{process::Command, time::Duration};

use libtest_mimic::{Failed, Trial};

use crate::common::{
    DEADLINE, Need, TRACER, WORKLOAD, command_line, ensure, fail, orphaned_programs, output_within,
    program_ids, trial,
};

const NEEDS: &[Need] = &[
    Need::Root,
    Need::Command("capsh"),
    Need::Command("setpriv"),
    Need::Command("unshare"),
];

pub fn tests() -> Vec<Trial> {
    vec![
        trial("bad_input::matrix", NEEDS, matrix),
        trial(
            "bad_input::unmounted_tracefs_is_mounted",
            &[Need::Root, Need::Tracefs, Need::Command("unshare")],
            unmounted_tracefs_is_mounted,
        ),
        trial(
            "bad_input::runs_without_btf_on_the_tracepoint_rung",
            &[Need::Root, Need::Tracefs, Need::Command("unshare")],
            runs_without_btf_on_the_tracepoint_rung,
        ),
    ]
}

/// How a case's command runs.
#[derive(Clone, Copy, Debug)]
enum Env {
    /// As root, as is.
    Plain,
    /// Under `capsh --drop=CAPS`: root, but without those capabilities.
    Without(&'static str),
    /// As user nobody with no capabilities at all (setpriv).
    Nobody,
    /// In a private mount namespace where /sys/kernel is an empty read-only tmpfs: no
    /// tracefs (and nowhere to mount it), no BTF.
    NoSysKernel,
    /// In a private mount namespace where /sys/kernel/btf is an empty tmpfs: a kernel built
    /// without CONFIG_DEBUG_INFO_BTF (Debian 10's 4.19 and older), tracefs still there.
    NoBtf,
}

struct Case {
    args: &'static [&'static str],
    /// Must appear in the one stderr line.
    says: &'static str,
    /// 2: usage error (clap's, or tracer's own after parsing); 1: everything else.
    code: i32,
    env: Env,
}

const fn usage(args: &'static [&'static str], says: &'static str) -> Case {
    Case {
        args,
        says,
        code: 2,
        env: Env::Plain,
    }
}

const fn error(args: &'static [&'static str], says: &'static str) -> Case {
    Case {
        args,
        says,
        code: 1,
        env: Env::Plain,
    }
}

const fn error_in(env: Env, args: &'static [&'static str], says: &'static str) -> Case {
    Case {
        args,
        says,
        code: 1,
        env,
    }
}

/// `{workload}`, `{dir}`, `{text}` and `{fifo}` in arguments are replaced by tracer-workload's
/// path, a directory, a text file and a named pipe.
const CASES: &[Case] = &[
    // The command line itself.
    usage(&[], "no tool given"),
    usage(&["nosuchtool"], "unrecognized subcommand 'nosuchtool'"),
    usage(&["forksnoop", "--bogus"], "unexpected argument '--bogus'"),
    usage(&["forksnoop", "--pid"], "a value is required for '--pid"),
    usage(&["forksnoop", "-p", "notapid"], "invalid value 'notapid'"),
    usage(&["forksnoop", "-p", "4294967296"], "invalid value"),
    usage(
        &["forksnoop", "--threads", "--no-threads"],
        "cannot be used with",
    ),
    usage(&["forksnoop", "--attach", "bogus"], "invalid value 'bogus'"),
    usage(&["forksnoop", "-d", "-5"], "unexpected argument '-5'"),
    usage(&["runqlat", "-P", "-L"], "cannot be used with"),
    usage(&["kthreads", "--sort", "bogus"], "invalid value 'bogus'"),
    usage(
        &["funccount"],
        "required arguments were not provided: <PROBE",
    ),
    usage(&["argdist", "t:sched:sched_switch"], "2 values required"),
    // Absurd intervals, counts and durations.
    usage(
        &["forksnoop", "--summary", "abc"],
        "not a number of seconds",
    ),
    usage(&["forksnoop", "--summary", "0"], "out of range"),
    usage(
        &["forksnoop", "--summary", "1", "0"],
        "not a positive count",
    ),
    usage(&["softirq-top", "1e9"], "out of range"),
    usage(&["softirq-top", "0.001"], "out of range"),
    usage(&["softirq-top", "NaN"], "out of range"),
    usage(
        &["runqlat", "1", "99999999999999999999"],
        "not a positive count",
    ),
    usage(&["ktop", "-d", "inf"], "out of range"),
    usage(&["migrations", "0"], "out of range"),
    usage(&["funccount", "u:libc:write", "0.001"], "out of range"),
    usage(&["forksnoop", "1"], "apply to --summary"),
    // Absurd frequencies, unknown CPUs.
    usage(
        &["profile", "-F", "0"],
        "sampling frequency must be 1 to 10000",
    ),
    usage(
        &["profile", "-F", "100000000"],
        "sampling frequency must be 1 to 10000",
    ),
    usage(&["profile", "-C", "abc"], "is not a CPU list"),
    usage(&["profile", "-C", "999"], "is not online"),
    usage(&["profile", "-C", "0,999"], "CPU 999 is not online"),
    usage(&["softirq-top", "-C", "999"], "is not online"),
    usage(&["softirq-top", "-C", "x"], "is not a CPU list"),
    usage(&["softirq-top", "-C", "99"], "CPU 99 is not online"),
    usage(
        &["softirq-top", "--vec", "BOGUS"],
        "unknown softirq vector 'BOGUS'",
    ),
    // Unknown PIDs and TIDs.
    usage(
        &["forksnoop", "-p", "999999999"],
        "no process with PID 999999999",
    ),
    usage(&["ktop", "-p", "0"], "no process with PID 0"),
    usage(
        &["migrations", "-p", "999999999"],
        "no process with PID 999999999",
    ),
    usage(
        &["migrations", "--stoppers", "-F", "0"],
        "sampling frequency must be 1 to 10000",
    ),
    usage(
        &["offcputime", "-t", "999999999"],
        "no thread with TID 999999999",
    ),
    usage(
        &["funccount", "-p", "999999999", "t:sched:sched_switch"],
        "no process with PID",
    ),
    // Other options that cannot work.
    usage(&["forksnoop", "--comm", "a*b"], "only a trailing '*'"),
    usage(
        &["forksnoop", "--comm", "averyveryverylongname"],
        "longer than",
    ),
    usage(
        &["forksnoop", "--attach", "kprobe"],
        "forksnoop cannot attach with kprobe (choose one of tp_btf, raw_tp, tracepoint)",
    ),
    usage(
        &["softirq-top", "--attach", "fentry"],
        "choose one of tp_btf, raw_tp, tracepoint",
    ),
    usage(
        &["profile", "--attach", "kprobe", "-d", "0.1"],
        "profile attaches only perf events, unless --softirq",
    ),
    usage(
        &["profile", "--softirq", "--attach", "kprobe", "-d", "0.1"],
        "choose one of tp_btf, raw_tp",
    ),
    usage(
        &["runqlat", "--attach", "tracepoint", "-d", "0.1"],
        "runqlat cannot attach with tracepoint (choose one of tp_btf, raw_tp)",
    ),
    usage(
        &[
            "offcputime",
            "--min-block-time",
            "10",
            "--max-block-time",
            "5",
        ],
        "below --min-block-time 10",
    ),
    error(
        &["profile", "--svg", "/proc/nope/x.svg", "-d", "0.1"],
        "cannot write the flame graph",
    ),
    // Malformed probe specs.
    usage(&["funccount", "foo"], "'foo' is not a probe"),
    usage(&["funccount", "x:foo"], "unknown probe type 'x:'"),
    usage(&["funccount", "t:sched"], "a tracepoint is CATEGORY:EVENT"),
    usage(&["funccount", "u:{workload}:"], "empty symbol"),
    usage(&["funclatency", "t:sched:sched_switch"], "has no return"),
    usage(
        &[
            "funclatency",
            "u:{workload}:tracer_workload_hot_function",
            "u:{workload}:main",
        ],
        "times one probe",
    ),
    usage(
        &[
            "argdist",
            "--count",
            "t:sched:sched_switch",
            "no_such_field",
        ],
        "has no field 'no_such_field'",
    ),
    usage(
        &["trace", "t:sched:sched_switch", "%d %d", "prev_pid"],
        "2 conversions but 1 arguments",
    ),
    usage(
        &["trace", "t:sched:sched_switch", "%s", "prev_pid"],
        "is not a string",
    ),
    // Unknown probes, symbols, libraries; huge globs.
    usage(
        &["funccount", "t:no_such_category:x"],
        "no tracepoint no_such_category:x",
    ),
    usage(
        &["funccount", "k:no_such_kernel_function_xyz"],
        "no kernel function matches",
    ),
    usage(
        &["funccount", "u:{workload}:no_such_symbol_xyz"],
        "no function 'no_such_symbol_xyz'",
    ),
    usage(
        &["funccount", "u:nosuchlibrary_xyz:main"],
        "cannot find library or binary",
    ),
    usage(&["funccount", "t:*:*"], "at most 64 can be attached"),
    usage(&["funccount", "u:libc:*"], "at most 1000 uprobes"),
    // Offsets that would corrupt code.
    usage(&["funccount", "u:libc:write+1"], "inside an instruction"),
    usage(
        &["funccount", "u:libc:write+99999999999"],
        "past the end of write",
    ),
    // Files that are not binaries.
    usage(&["funccount", "u:/no/such/binary:main"], "no such file"),
    usage(&["funccount", "u:{dir}:main"], "is a directory"),
    usage(&["funccount", "u:{text}:main"], "not an ELF file"),
    usage(&["funccount", "u:{fifo}:main"], "not a regular file"),
    usage(&["tplist", "-l", "{fifo}"], "not a regular file"),
    error(&["funccount", "u:/proc/self/mem:main"], "cannot read"),
    usage(&["tplist", "-l", "/no/such/bin"], "no such file"),
    // No tracefs and no BTF (nowhere to mount tracefs).
    error_in(
        Env::NoSysKernel,
        &["funccount", "t:sched:sched_switch"],
        "tracefs is not mounted",
    ),
    error_in(
        Env::NoSysKernel,
        &["tplist", "sched:*"],
        "tracefs is not mounted",
    ),
    error_in(Env::NoSysKernel, &["runqlat"], "needs kernel BTF"),
    // No BTF (tracefs present): the tools that read task_struct refuse, naming the config
    // and the supported kernels; the others run on the raw_tp/tracepoint rung
    // (runs_without_btf_on_the_tracepoint_rung).
    error_in(
        Env::NoBtf,
        &["runqlat"],
        "CONFIG_DEBUG_INFO_BTF=y); Linux 5.10+ with BTF is supported",
    ),
    error_in(
        Env::NoBtf,
        &["cpudist"],
        "CONFIG_DEBUG_INFO_BTF=y); Linux 5.10+ with BTF is supported",
    ),
    error_in(
        Env::NoBtf,
        &["ktop", "-b"],
        "CONFIG_DEBUG_INFO_BTF=y); Linux 5.10+ with BTF is supported",
    ),
    error_in(
        Env::NoBtf,
        &["profile"],
        "CONFIG_DEBUG_INFO_BTF=y); Linux 5.10+ with BTF is supported",
    ),
    error_in(
        Env::NoBtf,
        &["kstacks"],
        "CONFIG_DEBUG_INFO_BTF=y); Linux 5.10+ with BTF is supported",
    ),
    error_in(
        Env::NoBtf,
        &["offcputime"],
        "CONFIG_DEBUG_INFO_BTF=y); Linux 5.10+ with BTF is supported",
    ),
    error_in(
        Env::NoBtf,
        &["softirq-top", "--attach", "tp_btf"],
        "no kernel BTF",
    ),
    // Missing privileges: the error names the capabilities.
    error_in(
        Env::Without("cap_bpf,cap_perfmon,cap_sys_admin"),
        &["forksnoop"],
        "needs root or CAP_BPF + CAP_PERFMON",
    ),
    error_in(
        Env::Without("cap_perfmon,cap_sys_admin"),
        &["funccount", "t:sched:sched_switch"],
        "needs root or CAP_PERFMON",
    ),
    error_in(
        Env::Without("cap_bpf,cap_sys_admin"),
        &["runqlat"],
        "needs root or CAP_BPF",
    ),
    error_in(
        Env::Nobody,
        &["profile"],
        "needs root or CAP_BPF + CAP_PERFMON",
    ),
    error_in(
        Env::Nobody,
        &["funclatency", "u:libc:write"],
        "needs root or CAP_BPF + CAP_PERFMON",
    ),
];

/// Longest one case may take (they fail fast; a hang is what this catches).
const CASE_DEADLINE: Duration = Duration::from_secs(30);

fn matrix() -> Result<(), Failed> {
    ensure(CASES.len() >= 40, || format!("only {} cases", CASES.len()))?;
    let dir = std::env::temp_dir().join(format!("tracer-bad-input-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("a-directory")).map_err(|e| fail(e.to_string()))?;
    std::fs::write(dir.join("text"), "#!/bin/sh\necho not a binary\n")
        .map_err(|e| fail(e.to_string()))?;
    let fifo = dir.join("fifo");
    let fifo_c = std::ffi::CString::new(fifo.display().to_string()).expect("no NUL");
    // SAFETY: mkfifo with a NUL-terminated path.
    if unsafe { libc::mkfifo(fifo_c.as_ptr(), 0o600) } != 0 {
        return Err(fail(format!("mkfifo: {}", std::io::Error::last_os_error())));
    }
    let fill = |arg: &str| {
        arg.replace("{workload}", WORKLOAD)
            .replace("{dir}", &dir.join("a-directory").display().to_string())
            .replace("{text}", &dir.join("text").display().to_string())
            .replace("{fifo}", &fifo.display().to_string())
    };
    let before = program_ids();
    let mut failures = Vec::new();
    for case in CASES {
        let args: Vec<String> = case.args.iter().map(|a| fill(a)).collect();
        let mut cmd = command(case.env, &args);
        let shown = format!("{:?} {}", case.env, args.join(" "));
        let out = match output_within(&mut cmd, CASE_DEADLINE) {
            Ok(out) => out,
            Err(timeout) => {
                failures.push(format!("{shown}: {}", timeout.message));
                continue;
            }
        };
        let stderr = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        let problem = if out.status.code() != Some(case.code) {
            Some(format!("exit {:?}, expected {}", out.status, case.code))
        } else if stderr.contains("panicked") {
            Some("panicked".into())
        } else if lines.len() != 1 {
            Some(format!("{} stderr lines", lines.len()))
        } else if !lines[0].contains("error") || !lines[0].contains(case.says) {
            Some(format!("expected an error line with '{}'", case.says))
        } else {
            None
        };
        if let Some(problem) = problem {
            failures.push(format!(
                "{shown}: {problem}; stderr: {}",
                stderr.trim().replace('\n', " | ")
            ));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    let orphans = orphaned_programs(&before, Duration::from_secs(3));
    ensure(orphans.is_empty(), || {
        format!("programs left loaded and held by no process: {orphans:?}")
    })?;
    ensure(failures.is_empty(), || {
        format!(
            "{} of {} cases failed:\n{}",
            failures.len(),
            CASES.len(),
            failures.join("\n")
        )
    })
}

fn command(env: Env, args: &[String]) -> Command {
    match env {
        Env::Plain => {
            let mut cmd = Command::new(TRACER);
            cmd.args(args);
            cmd
        }
        Env::Without(caps) => {
            let mut cmd = Command::new("capsh");
            cmd.arg(format!("--drop={caps}"))
                .args(["--", "-c", "exec \"$0\" \"$@\"", TRACER])
                .args(args);
            cmd
        }
        Env::Nobody => {
            let mut cmd = Command::new("setpriv");
            cmd.args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--inh-caps=-all",
                "--bounding-set=-all",
                "--",
                TRACER,
            ])
            .args(args);
            cmd
        }
        Env::NoBtf => no_btf(args),
        Env::NoSysKernel => hidden_under_tmpfs("/sys/kernel", args),
    }
}

/// `tracer args` in a private mount namespace with an empty tmpfs over /sys/kernel/btf.
fn no_btf(args: &[String]) -> Command {
    hidden_under_tmpfs("/sys/kernel/btf", args)
}

/// `tracer args` in a private mount namespace where `dir` is an empty read-only tmpfs.
fn hidden_under_tmpfs(dir: &str, args: &[String]) -> Command {
    let mut cmd = Command::new("unshare");
    cmd.args(["-m", "--propagation", "private", "sh", "-c"])
        .arg(format!(
            "mount -t tmpfs -o ro none {dir} && exec \"$0\" \"$@\""
        ))
        .arg(TRACER)
        .args(args);
    cmd
}

/// Without kernel BTF (as on 4.19 or a kernel built without CONFIG_DEBUG_INFO_BTF) the tools
/// that need no task_struct offsets still work: the ladder drops to raw_tp, doctor says why,
/// and the counts are real.
fn runs_without_btf_on_the_tracepoint_rung() -> Result<(), Failed> {
    let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let doctor = output_within(&mut no_btf(&strings(&["doctor"])), DEADLINE)?;
    let text = String::from_utf8_lossy(&doctor.stdout);
    ensure(
        text.lines()
            .any(|l| l.starts_with("btf ") && l.contains(" no ")),
        || format!("doctor without BTF should say btf no:\n{text}"),
    )?;
    for args in [
        &["softirq-top", "-b", "1", "1"][..],
        &["forksnoop", "-d", "1"][..],
        &["funccount", "-d", "1", "t:sched:sched_switch"][..],
    ] {
        let out = output_within(&mut no_btf(&strings(args)), DEADLINE)?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        ensure(out.status.code() == Some(0), || {
            format!("{args:?} without BTF exited {:?}: {stderr}", out.status)
        })?;
        ensure(!format!("{stderr}{stdout}").contains("tp_btf"), || {
            format!("{args:?} without BTF cannot use tp_btf:\n{stderr}{stdout}")
        })?;
    }
    Ok(())
}

/// tracer mounts tracefs itself when nobody did (as perf does): in a private mount namespace
/// with every tracefs and debugfs mount removed, a classic tracepoint (which needs tracefs for
/// its id) still attaches and runs.
fn unmounted_tracefs_is_mounted() -> Result<(), Failed> {
    let script = "umount /sys/kernel/debug/tracing 2>/dev/null; \
                  umount /sys/kernel/tracing 2>/dev/null; \
                  umount /sys/kernel/debug 2>/dev/null; \
                  if [ -d /sys/kernel/tracing/events ]; then echo still mounted; exit 3; fi; \
                  exec \"$0\" \"$@\"";
    let mut cmd = Command::new("unshare");
    cmd.args(["-m", "--propagation", "private", "sh", "-c", script, TRACER])
        .args([
            "funccount",
            "--attach",
            "tracepoint",
            "-d",
            "0.5",
            "t:sched:sched_process_fork",
        ]);
    let shown = command_line(&cmd);
    let out = output_within(&mut cmd, CASE_DEADLINE)?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure(out.status.success(), || {
        format!("{shown}: {}: {stderr}", out.status)
    })?;
    ensure(stderr.contains("Hit Ctrl-C to end."), || {
        format!("{shown}: did not attach: {stderr}")
    })
}
