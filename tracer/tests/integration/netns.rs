//! Two network namespaces joined by a veth pair, for tests that need real network traffic
//! (SYN floods, HTTP load) that never leaves the machine: every address lives only inside the
//! namespaces created here. Dropping the pair deletes both namespaces (and with them the veth
//! ends), also when the test fails or panics. Pairs left behind by a killed test run are
//! removed by the next `NetnsPair::create`.
//!
//! ```ignore
//! let net = NetnsPair::create("sq")?;
//! let nginx = Nginx::start(Some(&net.server), &net.server_addr, 80)?;
//! let status = net.client_cmd("hping3").args([...]).status();
//! ```

#![allow(dead_code, reason = "each test module uses a different subset")]

use std::{
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

use libtest_mimic::Failed;

use crate::common::fail;

const PREFIX: &str = "tracer-";

/// A server and a client namespace, joined by a veth pair with a /24 of their own.
pub struct NetnsPair {
    pub server: String,
    pub client: String,
    /// Interface names inside the namespaces.
    pub server_dev: String,
    pub client_dev: String,
    pub server_addr: String,
    pub client_addr: String,
}

fn ip(args: &[&str]) -> Result<(), Failed> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| fail(format!("cannot run ip: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(fail(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Deletes namespaces of ours whose test process is gone (a run killed before cleanup).
fn remove_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        // tracer-<tag>-<pid>-<n>-{srv,cli}
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('-').nth(1).and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

impl NetnsPair {
    /// Creates `tracer-<tag>-<pid>-<n>-srv` and `...-cli`; `tag` is a few letters naming the
    /// test module.
    pub fn create(tag: &str) -> Result<Self, Failed> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        remove_stale();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let base = format!("{PREFIX}{tag}-{pid}-{n}");
        // Interface names are at most 15 bytes.
        let dev = format!("t{}{}", pid % 100_000, n % 100);
        let subnet = format!("10.{}.{}", 200 + (n / 250) % 50, n % 250 + 1);
        let pair = Self {
            server: format!("{base}-srv"),
            client: format!("{base}-cli"),
            server_dev: format!("{dev}s"),
            client_dev: format!("{dev}c"),
            server_addr: format!("{subnet}.1"),
            client_addr: format!("{subnet}.2"),
        };
        // From here on, Drop cleans up whatever part was made.
        ip(&["netns", "add", &pair.server])?;
        ip(&["netns", "add", &pair.client])?;
        ip(&[
            "link",
            "add",
            &pair.server_dev,
            "netns",
            &pair.server,
            "type",
            "veth",
            "peer",
            "name",
            &pair.client_dev,
            "netns",
            &pair.client,
        ])?;
        for (ns, dev, addr) in [
            (&pair.server, &pair.server_dev, &pair.server_addr),
            (&pair.client, &pair.client_dev, &pair.client_addr),
        ] {
            ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        Ok(pair)
    }

    /// A command that runs `program` inside namespace `ns`.
    pub fn cmd_in(ns: &str, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns, program]);
        cmd
    }

    pub fn server_cmd(&self, program: &str) -> Command {
        Self::cmd_in(&self.server, program)
    }

    pub fn client_cmd(&self, program: &str) -> Command {
        Self::cmd_in(&self.client, program)
    }
}

impl Drop for NetnsPair {
    fn drop(&mut self) {
        // Deleting a namespace destroys its veth end, and a veth pair dies with either end.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.client])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.server])
            .status();
    }
}
