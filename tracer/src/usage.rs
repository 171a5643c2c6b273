//! Usage errors: the command line cannot work — bad syntax, a value out of range, options
//! that contradict each other, or a name that does not exist here (a PID, CPU, softirq vector,
//! probe, symbol, binary, tracepoint field). `main` exits 2 for them, as for clap's own parse
//! errors; every other error (a kernel feature missing, no permission, a process that exited
//! during the run, an I/O failure) exits 1. Tools raise them with `usage_bail!` and
//! `usage_err!`, which read like anyhow's `bail!` and `anyhow!`.

use std::fmt;

/// A mistake in the command line found after clap's parsing.
#[derive(Debug)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// `anyhow!` for a usage error.
macro_rules! usage_err {
    ($($arg:tt)*) => {
        ::anyhow::Error::new($crate::usage::UsageError(format!($($arg)*)))
    };
}

/// `bail!` for a usage error.
macro_rules! usage_bail {
    ($($arg:tt)*) => {
        return Err(usage_err!($($arg)*))
    };
}

/// Turns any error into a usage error, keeping its message (for a parser whose every
/// failure is the user's input).
pub fn usage(err: impl fmt::Display) -> anyhow::Error {
    anyhow::Error::new(UsageError(err.to_string()))
}

/// Whether `err`, or anything it wraps, is a usage error.
pub fn is_usage_error(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| cause.is::<UsageError>())
}

#[cfg(test)]
mod tests {
    use anyhow::Context as _;

    use super::*;

    fn bad_cpu() -> anyhow::Result<()> {
        usage_bail!("CPU {} is not online", 99);
    }

    #[test]
    fn usage_errors_are_found_through_context() {
        let err = bad_cpu().context("softirq-top -C").unwrap_err();
        assert!(is_usage_error(&err));
        assert_eq!(format!("{err:#}"), "softirq-top -C: CPU 99 is not online");
        assert!(!is_usage_error(&anyhow::anyhow!("no kprobes here")));
        assert!(is_usage_error(&usage("bad")));
    }
}
