//! Turning user filter syntax into the plain structs the kernel programs match against.

use anyhow::Result;
use tracer_common::{
    TASK_COMM_LEN,
    comm::{COMM_MATCH_EXACT, COMM_MATCH_PREFIX, CommFilter},
};

/// `nginx` matches exactly; `kworker/*` matches by prefix. Other wildcards are refused
/// because the kernel-side matcher only does these two (and cheaply).
pub fn comm_filter(pattern: Option<&str>) -> Result<CommFilter> {
    let Some(pattern) = pattern else {
        return Ok(CommFilter::ANY);
    };
    let (text, mode) = match pattern.strip_suffix('*') {
        Some(prefix) => (prefix, COMM_MATCH_PREFIX),
        None => (pattern, COMM_MATCH_EXACT),
    };
    if text.contains(['*', '?', '[']) {
        usage_bail!("--comm '{pattern}': only a trailing '*' is supported (e.g. 'kworker/*')");
    }
    if text.is_empty() && mode == COMM_MATCH_EXACT {
        usage_bail!("--comm needs a name (e.g. --comm nginx or --comm 'ksoftirqd/*')");
    }
    if text.len() >= TASK_COMM_LEN {
        usage_bail!(
            "--comm '{pattern}' is longer than the kernel's {} characters; use its first {} and a '*'",
            TASK_COMM_LEN - 1,
            TASK_COMM_LEN - 2
        );
    }
    let mut filter = CommFilter::ANY;
    filter.pattern[..text.len()].copy_from_slice(text.as_bytes());
    filter.len = text.len() as u8;
    filter.mode = mode;
    Ok(filter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        assert_eq!(
            comm_filter(Some("kworker/*")).unwrap().mode,
            COMM_MATCH_PREFIX
        );
        assert_eq!(comm_filter(Some("nginx")).unwrap().mode, COMM_MATCH_EXACT);
        assert!(comm_filter(Some("a*b")).is_err());
        assert!(comm_filter(Some("")).is_err());
        assert!(comm_filter(Some("0123456789abcdefg")).is_err());
        assert_eq!(comm_filter(None).unwrap(), CommFilter::ANY);
    }
}
