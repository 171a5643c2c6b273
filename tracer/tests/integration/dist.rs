//! The release binary (`cargo xtask dist`: static musl) runs from an empty root — a directory
//! holding nothing but the binary, with /proc and /sys mounted — on this kernel and on every VM
//! kernel: what a user gets when they copy the one file onto a machine.

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::Duration,
};

use libtest_mimic::{Failed, Trial};

use crate::common::{DEADLINE, Need, TRACER, ensure, fail, output_within, trial};

pub fn tests() -> Vec<Trial> {
    vec![
        trial(
            "dist::static_binary_is_static",
            &[],
            static_binary_is_static,
        ),
        trial(
            "dist::empty_root_doctor",
            &[Need::Root, Need::Command("unshare")],
            empty_root_doctor,
        ),
        trial(
            "dist::empty_root_forksnoop",
            &[Need::Root, Need::Tracefs, Need::Command("unshare")],
            empty_root_forksnoop,
        ),
        trial(
            "dist::empty_root_uprobe_on_itself",
            &[Need::Root, Need::Command("unshare")],
            empty_root_uprobe_on_itself,
        ),
    ]
}

/// The static binary: the tracer these tests run when they were built for the musl target
/// (`cargo xtask test` builds them so, testing the binary it ships), else the one
/// `cargo xtask dist` leaves beside the release build's target dir,
/// target/x86_64-unknown-linux-musl/release/tracer.
fn static_binary() -> Result<PathBuf, Failed> {
    let path = if TRACER.contains("/x86_64-unknown-linux-musl/") {
        PathBuf::from(TRACER)
    } else {
        Path::new(TRACER)
            .parent()
            .and_then(Path::parent)
            .map(|target| target.join("x86_64-unknown-linux-musl/release/tracer"))
            .ok_or_else(|| fail(format!("cannot find the target dir above {TRACER}")))?
    };
    ensure(path.is_file(), || {
        format!(
            "no static binary at {}: run `cargo xtask dist` (cargo xtask test builds it)",
            path.display()
        )
    })?;
    Ok(path)
}

fn static_binary_is_static() -> Result<(), Failed> {
    let elf = std::fs::read(static_binary()?).map_err(|e| fail(e.to_string()))?;
    ensure(elf.starts_with(b"\x7fELF"), || "not an ELF file".into())?;
    // No PT_INTERP program header: nothing (no ld.so, no libc) is needed to start it.
    let read = |off: usize, len: usize| -> usize {
        elf.get(off..off + len)
            .map(|b| {
                b.iter()
                    .rev()
                    .fold(0, |acc, b| (acc << 8) | usize::from(*b))
            })
            .unwrap_or(0)
    };
    let (phoff, phentsize, phnum) = (read(0x20, 8), read(0x36, 2), read(0x38, 2));
    const PT_INTERP: usize = 3;
    ensure(
        phnum > 0 && (0..phnum).all(|i| read(phoff + i * phentsize, 4) != PT_INTERP),
        || "the static binary has a PT_INTERP header (dynamically linked)".into(),
    )
}

/// A directory holding only the static binary as /tracer; removed on drop.
struct EmptyRoot {
    dir: PathBuf,
}

impl EmptyRoot {
    fn new(test: &str) -> Result<Self, Failed> {
        let dir = std::env::temp_dir().join(format!("tracer-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for sub in ["proc", "sys"] {
            std::fs::create_dir_all(dir.join(sub)).map_err(|e| fail(e.to_string()))?;
        }
        std::fs::copy(static_binary()?, dir.join("tracer"))
            .map_err(|e| fail(format!("cannot copy the static binary: {e}")))?;
        Ok(Self { dir })
    }

    /// `/tracer ARGS` chrooted into the root, in a private mount namespace that sees /proc and
    /// /sys (with tracefs, bpffs and BTF under it) and nothing else.
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("unshare");
        cmd.args(["--mount", "--propagation", "private", "--", "sh", "-c"])
            .arg(
                "mount -t proc proc \"$0/proc\" && mount --rbind /sys \"$0/sys\" \
                 && exec chroot \"$0\" /tracer \"$@\"",
            )
            .arg(&self.dir)
            .args(args);
        cmd
    }

    /// Starts `/tracer ARGS` and returns once it says it is attached ("Hit Ctrl-C").
    fn start(&self, args: &[&str]) -> Result<Started, Failed> {
        let mut child = self
            .command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| fail(format!("cannot start {args:?}: {e}")))?;
        let stderr = child.stderr.take().expect("piped");
        let (tx, rx) = mpsc::channel();
        let reader = thread::spawn(move || {
            let mut seen = Vec::new();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("Hit Ctrl-C") {
                    let _ = tx.send(());
                }
                seen.push(line);
            }
            seen
        });
        if rx.recv_timeout(Duration::from_secs(30)).is_err() {
            let _ = child.kill();
            let _ = child.wait();
            let seen = reader.join().unwrap_or_default();
            return Err(fail(format!(
                "{args:?} in the empty root did not attach within 30 s: {}",
                seen.join(" | ")
            )));
        }
        Ok(Started { child, reader })
    }
}

impl Drop for EmptyRoot {
    fn drop(&mut self) {
        // Only the binary and two empty mount points (the mounts died with their namespace).
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

struct Started {
    child: Child,
    reader: thread::JoinHandle<Vec<String>>,
}

impl Started {
    /// Ctrl-C: unshare, sh and chroot each exec the next, so the child's PID is tracer's.
    fn interrupt(&self) {
        // SAFETY: kill(2) on our own child's PID.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGINT);
        }
    }

    /// Waits for the run's end (its -d, or after `interrupt`), then returns (exit ok, stdout, stderr lines).
    fn finish(mut self) -> Result<(bool, String, String), Failed> {
        let mut stdout = self.child.stdout.take().expect("piped");
        let out = thread::spawn(move || {
            let mut text = String::new();
            let _ = std::io::Read::read_to_string(&mut stdout, &mut text);
            text
        });
        let deadline = std::time::Instant::now() + DEADLINE;
        let status = loop {
            if let Some(status) = self.child.try_wait().map_err(|e| fail(e.to_string()))? {
                break status;
            }
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return Err(fail("the empty-root run did not end within its deadline"));
            }
            thread::sleep(Duration::from_millis(50));
        };
        let stdout = out.join().unwrap_or_default();
        let stderr = self.reader.join().unwrap_or_default().join("\n");
        Ok((status.success(), stdout, stderr))
    }
}

fn empty_root_doctor() -> Result<(), Failed> {
    let root = EmptyRoot::new("doctor")?;
    let out = output_within(&mut root.command(&["doctor", "--json"]), DEADLINE)
        .map_err(|e| fail(format!("{e:?}")))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure(out.status.success(), || {
        format!("doctor in the empty root failed: {stderr}")
    })?;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| fail(format!("doctor --json in the empty root: {e}")))?;
    let available = |feature: &str| {
        json["checks"].as_array().is_some_and(|checks| {
            checks
                .iter()
                .any(|c| c["feature"] == feature && c["available"] == true)
        })
    };
    ensure(available("tracepoint") && available("uprobe"), || {
        format!("doctor in the empty root does not find tracepoints and uprobes: {json}")
    })
}

fn empty_root_forksnoop() -> Result<(), Failed> {
    const FORKS: usize = 20;
    let root = EmptyRoot::new("forksnoop")?;
    let me = std::process::id();
    // Stopped by SIGINT once the forks are done: a fixed -d 3 ended first in a loaded 6.12
    // guest (20 spawns under TCG), and forksnoop prints what is in its ring when it stops.
    let run = root.start(&["forksnoop", "--json", "-p", &me.to_string()])?;
    for _ in 0..FORKS {
        Command::new("true")
            .status()
            .map_err(|e| fail(format!("cannot run true: {e}")))?;
    }
    run.interrupt();
    let (ok, stdout, stderr) = run.finish()?;
    ensure(ok, || {
        format!("forksnoop in the empty root failed: {stderr}")
    })?;
    let children = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|j| j["type"] == "fork" && j["kind"] == "process")
        .count();
    // Our own process is the parent; its other threads may add thread forks, not processes.
    ensure(children == FORKS, || {
        format!("forksnoop in the empty root saw {children} of {FORKS} forks: {stdout}")
    })
}

fn empty_root_uprobe_on_itself() -> Result<(), Failed> {
    const RUNS: u64 = 5;
    let root = EmptyRoot::new("uprobe")?;
    // `main` of the binary at /tracer inside the root: only the other runs below hit it (this
    // run is past its own main when it attaches, and they all share the one inode).
    // Stopped by SIGINT once the runs are done (a fixed -d can end first under TCG).
    let run = root.start(&["funccount", "--json", "u:/tracer:main"])?;
    for _ in 0..RUNS {
        let out = output_within(&mut root.command(&["list-tools"]), DEADLINE)
            .map_err(|e| fail(format!("{e:?}")))?;
        ensure(out.status.success(), || {
            format!(
                "list-tools in the empty root failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
    }
    run.interrupt();
    let (ok, stdout, stderr) = run.finish()?;
    ensure(ok, || {
        format!("funccount in the empty root failed: {stderr}")
    })?;
    let count = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|j| j["type"] == "counts")
        .flat_map(|j| j["probes"].as_array().cloned().unwrap_or_default())
        .filter_map(|p| p["count"].as_u64())
        .sum::<u64>();
    ensure(count == RUNS, || {
        format!("u:/tracer:main counted {count} calls for {RUNS} runs: {stdout} {stderr}")
    })
}
