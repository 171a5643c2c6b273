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

/// Parses a CPU list ("0", "0,2-3", "0-1,3") against the online CPUs: sorted, no duplicates.
/// Every tool that takes `-C` uses this one parser.
pub fn cpu_list(text: &str, online: &[u32]) -> Result<Vec<u32>> {
    let describe = || describe_cpus(online);
    let mut cpus = Vec::new();
    for part in text.split(',').map(str::trim) {
        let (lo, hi) = match part.split_once('-') {
            Some((a, b)) => (a.trim(), b.trim()),
            None => (part, part),
        };
        let parse = |s: &str| {
            s.parse::<u32>().map_err(|_| {
                usage_err!(
                    "'{text}' is not a CPU list (e.g. 0 or 0,2-3; online CPUs: {})",
                    describe()
                )
            })
        };
        let (lo, hi) = (parse(lo)?, parse(hi)?);
        if lo > hi {
            usage_bail!(
                "'{part}' is an empty CPU range (online CPUs: {})",
                describe()
            );
        }
        for cpu in lo..=hi {
            if !online.contains(&cpu) {
                usage_bail!("CPU {cpu} is not online (online CPUs: {})", describe());
            }
            if !cpus.contains(&cpu) {
                cpus.push(cpu);
            }
        }
    }
    cpus.sort_unstable();
    Ok(cpus)
}

/// "0-1,3,5-6": the inverse of `cpu_list`, for titles and errors.
pub fn describe_cpus(cpus: &[u32]) -> String {
    let mut ranges: Vec<String> = Vec::new();
    let mut i = 0;
    while i < cpus.len() {
        let start = cpus[i];
        let mut end = start;
        while i + 1 < cpus.len() && cpus[i + 1] == end + 1 {
            i += 1;
            end = cpus[i];
        }
        ranges.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
        i += 1;
    }
    ranges.join(",")
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

    #[test]
    fn cpu_lists() {
        let online = [0, 1, 2, 3];
        assert_eq!(cpu_list("0,2-3", &online).unwrap(), vec![0, 2, 3]);
        assert_eq!(cpu_list("1", &online).unwrap(), vec![1]);
        assert_eq!(cpu_list("0-1,3", &online).unwrap(), vec![0, 1, 3]);
        assert_eq!(cpu_list("1,0,1", &online).unwrap(), vec![0, 1]);
        let err = cpu_list("99", &online).unwrap_err().to_string();
        assert!(
            err.contains("CPU 99 is not online (online CPUs: 0-3)"),
            "{err}"
        );
        assert!(cpu_list("x", &online).is_err());
        assert!(cpu_list("3-1", &online).is_err());
        assert_eq!(describe_cpus(&[0, 1, 3, 5, 6]), "0-1,3,5-6");
    }
}
