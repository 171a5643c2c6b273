//! Matching a task's `comm` against a user's pattern, the same code in the kernel and in tests.
//!
//! Patterns are either an exact name (`nginx`) or a prefix ending in `*` (`ksoftirqd/*`,
//! `kworker/*`), which covers how kernel threads are named. The matcher is a bounded loop so the
//! verifier accepts it.

use crate::TASK_COMM_LEN;

/// No filter: every comm matches.
pub const COMM_MATCH_ANY: u8 = 0;
/// The comm must equal the pattern.
pub const COMM_MATCH_EXACT: u8 = 1;
/// The comm must start with the pattern.
pub const COMM_MATCH_PREFIX: u8 = 2;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommFilter {
    pub pattern: [u8; TASK_COMM_LEN],
    /// Number of meaningful bytes in `pattern`.
    pub len: u8,
    /// One of the `COMM_MATCH_*` values.
    pub mode: u8,
    pub _reserved: [u8; 6],
}

crate::user_pod!(CommFilter);

impl CommFilter {
    pub const ANY: Self = Self {
        pattern: [0; TASK_COMM_LEN],
        len: 0,
        mode: COMM_MATCH_ANY,
        _reserved: [0; 6],
    };

    /// Whether `comm` (NUL-padded, as the kernel stores it) matches.
    #[inline(always)]
    pub fn matches(&self, comm: &[u8; TASK_COMM_LEN]) -> bool {
        if self.mode == COMM_MATCH_ANY {
            return true;
        }
        let len = self.len as usize;
        // Iterators and get() instead of indexing: no bounds-check panic paths for the verifier.
        for (i, (c, p)) in comm.iter().zip(self.pattern.iter()).enumerate() {
            if i >= len {
                break;
            }
            if c != p {
                return false;
            }
        }
        if self.mode == COMM_MATCH_EXACT {
            return comm.get(len).is_none_or(|&b| b == 0);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(pattern: &str, mode: u8) -> CommFilter {
        let mut f = CommFilter::ANY;
        f.pattern[..pattern.len()].copy_from_slice(pattern.as_bytes());
        f.len = pattern.len() as u8;
        f.mode = mode;
        f
    }

    fn comm(name: &str) -> [u8; TASK_COMM_LEN] {
        let mut c = [0; TASK_COMM_LEN];
        c[..name.len()].copy_from_slice(name.as_bytes());
        c
    }

    #[test]
    fn exact_and_prefix() {
        assert!(filter("nginx", COMM_MATCH_EXACT).matches(&comm("nginx")));
        assert!(!filter("nginx", COMM_MATCH_EXACT).matches(&comm("nginx2")));
        assert!(!filter("nginx", COMM_MATCH_EXACT).matches(&comm("ngin")));
        assert!(filter("ksoftirqd/", COMM_MATCH_PREFIX).matches(&comm("ksoftirqd/1")));
        assert!(!filter("ksoftirqd/", COMM_MATCH_PREFIX).matches(&comm("kworker/0:1")));
        assert!(CommFilter::ANY.matches(&comm("anything")));
        // A full 15-character name followed by NUL.
        assert!(filter("abcdefghijklmno", COMM_MATCH_EXACT).matches(&comm("abcdefghijklmno")));
    }
}
