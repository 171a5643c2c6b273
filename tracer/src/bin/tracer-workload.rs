//! tracer-workload: generates known amounts of kernel activity so that tests (and users checking
//! a tool) can compare what a tool reports with what really happened.
//!
//! `tracer-workload [--wait] COMMAND...` where COMMAND is one of
//!   fork N          fork N child processes, one after another (each exits at once)
//!   child-sleeps N  fork one child that sleeps 1 µs N times (clock_nanosleep), then exits
//!                   (functrace's -p fork-following tests)
//!   threads N       start N threads, one after another (each exits at once)
//!   spin SECS [PCT] burn CPU for SECS seconds at PCT % duty cycle (default 100)
//!   hot SECS        spin inside `tracer_workload_hot_function` (for profile tests)
//!   hot2 SECS       the same inside `tracer_workload_other_hot_function`
//!   exec PATH ARG.. replace this process with PATH ARG... (execv; the rest of the line is
//!                   its arguments): a process that execs another binary mid-run
//!   sleep SECS      sleep SECS seconds in nanosleep (for offcputime tests)
//!   pingpong N      N round trips of one byte between two processes over pipes (2N context
//!                   switches); prints "pingpong N NS_PER_ROUND_TRIP" (for sched benchmarks)
//!   open N          N open(2)+close(2) of /dev/null (kernel-function tests)
//!   write N         N calls of libc write(2), one byte each to /dev/null (uprobe tests)
//!   read N BYTES    N read(2) calls of BYTES bytes each from /dev/zero (value-histogram tests)
//!   stat-refresh N  N reads of /proc/sys/vm/stat_refresh: each queues the work function
//!                   refresh_vm_stats on every online CPU from this process (wqtop tests)
//!   faults N        write once to each of N fresh anonymous pages in
//!                   `tracer_workload_fault_pages`: N page faults (memory flame-graph tests)
//!   huge-pages M    write once to every 4 KiB page of M MiB of fresh anonymous memory,
//!                   2 MiB-aligned and madvised MADV_HUGEPAGE, in `tracer_workload_huge_pages`:
//!                   M * 256 pages, allocated as order-9 huge pages where the kernel can
//!                   (stackcount --weight '1<<order' tests)
//!   mallocs K       K libc mallocs of known sizes (1000 + 16 i bytes): the even ones in
//!                   `tracer_workload_malloc_kept`, kept until exit; the odd ones in
//!                   `tracer_workload_malloc_freed`, freed at once (memleak tests)
//!   repeat SECS ... run the commands after it again and again for SECS seconds (soak load)
//! Commands run in order. With --wait, it prints its PID and waits for a line on stdin before
//! starting, so a tracer can attach with `-p PID` first.

use std::{
    io::BufRead as _,
    time::{Duration, Instant},
};

/// Forks a child that runs `child` and exits, and waits for it. `child` must only make
/// async-signal-safe calls (this process may have threads).
fn fork_and_wait(child: impl FnOnce()) {
    // SAFETY: the child runs `child` (async-signal-safe calls only) and _exit.
    match unsafe { libc::fork() } {
        0 => {
            child();
            unsafe { libc::_exit(0) }
        }
        -1 => {
            eprintln!(
                "tracer-workload: fork failed: {}",
                std::io::Error::last_os_error()
            );
            std::process::exit(1);
        }
        pid => {
            let mut status = 0;
            // SAFETY: waiting for our own child.
            unsafe { libc::waitpid(pid, &mut status, 0) };
        }
    }
}

fn fork_children(n: u64) {
    for _ in 0..n {
        fork_and_wait(|| {});
    }
}

/// Forks one child that sleeps 1 µs `n` times (clock_nanosleep) and exits; waits for it.
fn child_sleeps(n: u64) {
    fork_and_wait(|| {
        let ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 1000,
        };
        for _ in 0..n {
            // SAFETY: valid timespec; no remainder wanted.
            unsafe { libc::nanosleep(&ts, std::ptr::null_mut()) };
        }
    });
}

fn start_threads(n: u64) {
    for _ in 0..n {
        std::thread::spawn(|| {}).join().expect("thread");
    }
}

fn spin(secs: f64, duty_pct: f64) {
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let period = Duration::from_millis(10);
    while Instant::now() < end {
        let busy_until = Instant::now() + period.mul_f64(duty_pct / 100.0);
        while Instant::now() < busy_until {
            std::hint::black_box(0u64);
        }
        if duty_pct < 100.0 {
            std::thread::sleep(period.mul_f64(1.0 - duty_pct / 100.0));
        }
    }
}

/// A function with a known name for profile tests to find on top of user stacks.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn tracer_workload_hot_function(deadline: &Instant) -> u64 {
    let mut x = 0u64;
    while Instant::now() < *deadline {
        // Long between clock reads: under TCG a guest whose TSC the watchdog gave up on reads
        // the HPET in a syscall (read_hpet: ~10 % of a 10 000-step loop on 6.1).
        for i in 0..100_000u64 {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(i));
        }
    }
    x
}

/// `tracer_workload_hot_function` under another name: after an exec, the second binary's own
/// hot function.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn tracer_workload_other_hot_function(deadline: &Instant) -> u64 {
    let mut x = 1u64;
    while Instant::now() < *deadline {
        for i in 0..100_000u64 {
            x = std::hint::black_box(x.wrapping_mul(2862933555777941757).wrapping_add(i));
        }
    }
    x
}

/// Replaces this process with `args[0]` run with `args` (execv): the same PID, a new binary.
fn exec(args: &[String]) -> ! {
    use std::os::unix::process::CommandExt as _;
    let Some(path) = args.first() else {
        eprintln!("tracer-workload: exec needs a program");
        std::process::exit(2)
    };
    let err = std::process::Command::new(path).args(&args[1..]).exec();
    eprintln!("tracer-workload: cannot exec {path}: {err}");
    std::process::exit(1)
}

/// Writes once to each of `n` fresh anonymous pages: `n` page faults, all in this function.
/// Huge pages are refused for the mapping, so each 4 KiB page faults on its own.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn tracer_workload_fault_pages(n: u64) {
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
    let len = n as usize * page;
    // SAFETY: a fresh private anonymous mapping, written inside its bounds and unmapped after.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        if p == libc::MAP_FAILED {
            eprintln!(
                "tracer-workload: mmap failed: {}",
                std::io::Error::last_os_error()
            );
            std::process::exit(1);
        }
        libc::madvise(p, len, libc::MADV_NOHUGEPAGE);
        for i in 0..n as usize {
            std::ptr::write_volatile((p as *mut u8).add(i * page), 1);
        }
        libc::munmap(p, len);
    }
}

/// Huge pages are asked for: each 2 MiB faulted in is one order-9 allocation where THP is on
/// and memory not too fragmented, else 512 order-0 ones; either way 256 pages per MiB.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn tracer_workload_huge_pages(mib: u64) {
    const HUGE: usize = 2 << 20;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
    let len = mib as usize * (1 << 20);
    // SAFETY: a fresh private anonymous mapping with room to align, written inside the
    // aligned part only, unmapped after.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            len + HUGE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        if p == libc::MAP_FAILED {
            eprintln!(
                "tracer-workload: mmap failed: {}",
                std::io::Error::last_os_error()
            );
            std::process::exit(1);
        }
        let aligned = (p as usize).next_multiple_of(HUGE) as *mut u8;
        libc::madvise(aligned.cast(), len, libc::MADV_HUGEPAGE);
        for i in 0..len / page {
            std::ptr::write_volatile(aligned.add(i * page), 1);
        }
        libc::munmap(p, len + HUGE);
    }
}

/// One libc malloc whose block the caller keeps (memleak tests find it under this name).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn tracer_workload_malloc_kept(size: usize) -> *mut u8 {
    touched_malloc(size, 1)
}

/// One libc malloc whose block the caller frees at once.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn tracer_workload_malloc_freed(size: usize) -> *mut u8 {
    touched_malloc(size, 2)
}

/// malloc, then a write: the call cannot become a tail call, so the allocating function stays
/// the caller malloc returns to. Each caller writes its own `tag`, so that the two callers'
/// code differs and the linker cannot fold them into one symbol.
#[inline(always)]
fn touched_malloc(size: usize, tag: u8) -> *mut u8 {
    // SAFETY: plain libc malloc; the block is written only when it was allocated.
    unsafe {
        let p = libc::malloc(size) as *mut u8;
        if p.is_null() {
            eprintln!("tracer-workload: malloc({size}) failed");
            std::process::exit(1);
        }
        std::ptr::write_volatile(p, tag);
        p
    }
}

/// `k` mallocs of 1000 + 16 i bytes: even i kept (until exit), odd i freed at once.
fn mallocs(k: u64) {
    let mut kept = Vec::with_capacity(k as usize);
    for i in 0..k as usize {
        let size = 1000 + 16 * i;
        if i % 2 == 0 {
            kept.push(tracer_workload_malloc_kept(size));
        } else {
            // SAFETY: a block from malloc, freed once.
            unsafe { libc::free(tracer_workload_malloc_freed(size) as *mut libc::c_void) };
        }
    }
    // Held until the process exits: an outstanding allocation is what memleak shows.
    std::mem::forget(kept);
}

/// Exactly `n` calls of libc's write(2) (one byte to /dev/null), for uprobe tests on libc.
/// The kernel's vmstat_refresh() runs schedule_on_each_cpu(refresh_vm_stats) in the reading
/// task's syscall: known work, at a known count, queued by a known task.
fn stat_refresh(n: u64) {
    for _ in 0..n {
        if let Err(e) = std::fs::read("/proc/sys/vm/stat_refresh") {
            eprintln!("tracer-workload: cannot read /proc/sys/vm/stat_refresh (root?): {e}");
            std::process::exit(1);
        }
    }
}

fn write_dev_null(n: u64) {
    // SAFETY: open/write/close on a path and buffer we own.
    unsafe {
        let fd = libc::open(c"/dev/null".as_ptr(), libc::O_WRONLY);
        if fd < 0 {
            eprintln!(
                "tracer-workload: cannot open /dev/null: {}",
                std::io::Error::last_os_error()
            );
            std::process::exit(1);
        }
        let byte = [0u8; 1];
        for _ in 0..n {
            libc::write(fd, byte.as_ptr().cast(), 1);
        }
        libc::close(fd);
    }
}

/// Exactly `n` read(2) calls of `bytes` bytes each from /dev/zero: each returns `bytes`, a
/// known value for histograms of sys_exit_read's `ret`.
fn read_dev_zero(n: u64, bytes: usize) {
    let mut buffer = vec![0u8; bytes];
    // SAFETY: open/read/close on a path and a buffer we own.
    unsafe {
        let fd = libc::open(c"/dev/zero".as_ptr(), libc::O_RDONLY);
        if fd < 0 {
            eprintln!(
                "tracer-workload: cannot open /dev/zero: {}",
                std::io::Error::last_os_error()
            );
            std::process::exit(1);
        }
        for _ in 0..n {
            libc::read(fd, buffer.as_mut_ptr().cast(), bytes);
        }
        libc::close(fd);
    }
}

/// Exactly `n` open(2)+close(2) pairs on /dev/null (kernel-function probe tests).
fn open_dev_null(n: u64) {
    for _ in 0..n {
        // SAFETY: open and close a path we own.
        unsafe {
            let fd = libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY);
            if fd >= 0 {
                libc::close(fd);
            }
        }
    }
}

/// Two processes bounce one byte over a pair of pipes: each round trip is two wakeups and
/// (on one CPU, or when both sleep) two context switches.
fn pingpong(n: u64) {
    let mut to_child = [0i32; 2];
    let mut to_parent = [0i32; 2];
    // SAFETY: pipe() fills the two-element arrays.
    if unsafe { libc::pipe(to_child.as_mut_ptr()) } != 0
        || unsafe { libc::pipe(to_parent.as_mut_ptr()) } != 0
    {
        eprintln!(
            "tracer-workload: pipe failed: {}",
            std::io::Error::last_os_error()
        );
        std::process::exit(1);
    }
    let mut byte = [0u8; 1];
    // SAFETY: the child only reads and writes its pipe ends, then _exits.
    match unsafe { libc::fork() } {
        0 => unsafe {
            // Only our own ends stay open, so the parent's death is EOF here.
            libc::close(to_child[1]);
            libc::close(to_parent[0]);
            for _ in 0..n {
                if libc::read(to_child[0], byte.as_mut_ptr().cast(), 1) != 1 {
                    break;
                }
                libc::write(to_parent[1], byte.as_ptr().cast(), 1);
            }
            libc::_exit(0);
        },
        -1 => {
            eprintln!(
                "tracer-workload: fork failed: {}",
                std::io::Error::last_os_error()
            );
            std::process::exit(1);
        }
        child => {
            // SAFETY: closing the child's ends in the parent.
            unsafe {
                libc::close(to_child[0]);
                libc::close(to_parent[1]);
            }
            let start = Instant::now();
            for _ in 0..n {
                // SAFETY: one-byte reads and writes on our pipe ends.
                unsafe {
                    libc::write(to_child[1], byte.as_ptr().cast(), 1);
                    libc::read(to_parent[0], byte.as_mut_ptr().cast(), 1);
                }
            }
            let elapsed = start.elapsed();
            // SAFETY: closing our ends (`repeat` calls this again and again).
            unsafe {
                libc::close(to_child[1]);
                libc::close(to_parent[0]);
            }
            let mut status = 0;
            // SAFETY: waiting for our own child.
            unsafe { libc::waitpid(child, &mut status, 0) };
            println!(
                "pingpong {n} {:.1}",
                elapsed.as_nanos() as f64 / n.max(1) as f64
            );
        }
    }
}

fn number(args: &[String], i: usize, what: &str) -> f64 {
    args.get(i).and_then(|a| a.parse().ok()).unwrap_or_else(|| {
        eprintln!("tracer-workload: {what} needs a number");
        std::process::exit(2)
    })
}

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().is_some_and(|a| a == "--wait") {
        args.remove(0);
        println!("{}", std::process::id());
        let mut line = String::new();
        let _ = std::io::stdin().lock().read_line(&mut line);
    }
    run(&args);
}

/// Runs the commands in `args` in order; `repeat SECS` runs the rest again and again.
fn run(args: &[String]) {
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "repeat" => {
                let end = Instant::now() + Duration::from_secs_f64(number(args, i + 1, "repeat"));
                let rest = &args[i + 2..];
                while Instant::now() < end {
                    run(rest);
                }
                return;
            }
            "fork" => fork_children(number(args, i + 1, "fork") as u64),
            "child-sleeps" => child_sleeps(number(args, i + 1, "child-sleeps") as u64),
            "threads" => start_threads(number(args, i + 1, "threads") as u64),
            "spin" => {
                let pct = args.get(i + 2).and_then(|a| a.parse().ok());
                spin(number(args, i + 1, "spin"), pct.unwrap_or(100.0));
                if pct.is_some() {
                    i += 1;
                }
            }
            "hot" => {
                let deadline = Instant::now() + Duration::from_secs_f64(number(args, i + 1, "hot"));
                std::hint::black_box(tracer_workload_hot_function(&deadline));
            }
            "hot2" => {
                let deadline =
                    Instant::now() + Duration::from_secs_f64(number(args, i + 1, "hot2"));
                std::hint::black_box(tracer_workload_other_hot_function(&deadline));
            }
            "exec" => exec(&args[i + 1..]),
            "sleep" => std::thread::sleep(Duration::from_secs_f64(number(args, i + 1, "sleep"))),
            "faults" => tracer_workload_fault_pages(number(args, i + 1, "faults") as u64),
            "mallocs" => mallocs(number(args, i + 1, "mallocs") as u64),
            "huge-pages" => tracer_workload_huge_pages(number(args, i + 1, "huge-pages") as u64),
            "pingpong" => pingpong(number(args, i + 1, "pingpong") as u64),
            "write" => write_dev_null(number(args, i + 1, "write") as u64),
            "open" => open_dev_null(number(args, i + 1, "open") as u64),
            "stat-refresh" => stat_refresh(number(args, i + 1, "stat-refresh") as u64),
            "read" => {
                read_dev_zero(
                    number(args, i + 1, "read") as u64,
                    number(args, i + 2, "read") as usize,
                );
                i += 1;
            }
            other => {
                eprintln!(
                    "tracer-workload: unknown command '{other}' (fork, child-sleeps, threads, spin, hot, hot2, exec, sleep, \
                     pingpong, open, write, read, stat-refresh, faults, huge-pages, mallocs, repeat)"
                );
                std::process::exit(2);
            }
        }
        i += 2;
    }
}
