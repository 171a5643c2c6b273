//! flamegraph: any profile in, an SVG out — tracer's or anyone's folded stacks, raw `perf
//! script` output (collapsed with inferno's perf folder, so the seed's
//! `perf script | stackcollapse-perf.pl | flamegraph.pl` needs no Perl), bpftrace stack maps
//! (`@[...]: N`) — and `--diff BEFORE AFTER` for a differential graph. No BPF: runs anywhere.

use std::{
    io::{BufReader, Cursor, Read as _},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, anyhow, bail};
use clap::Args;
use inferno::collapse::Collapse as _;

use crate::{
    flame_svg::{self, Style, SvgFile},
    output,
    pprof::{PprofFile, PprofKind},
};

/// Render folded stacks, perf script output or bpftrace stack maps as an SVG flame graph.
#[derive(Args, Clone, Debug)]
#[command(after_help = "Examples:\n  \
    profile -f -d 10 > cpu.folded; flamegraph cpu.folded --svg cpu.svg\n  \
    perf script | flamegraph > perf.svg         raw perf script output, no stackcollapse step\n  \
    bpftrace -e 'profile:hz:99 { @[kstack] = count(); }' | flamegraph --svg k.svg\n  \
    flamegraph --diff before.folded after.folded --svg diff.svg   red grew, blue shrank\n  \
    flamegraph --diff --negate before.folded after.folded --svg gone.svg   BEFORE's shape")]
pub struct FlamegraphArgs {
    /// Input files; none or `-` reads standard input. Several files are merged.
    #[arg(value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Differential graph of exactly two inputs, BEFORE then AFTER: frames that grew are red,
    /// frames that shrank blue, with BEFORE scaled to AFTER's total (so a busier AFTER run does
    /// not paint everything red).
    #[arg(long)]
    pub diff: bool,
    /// With --diff: draw BEFORE's shape instead of AFTER's (AFTER scaled to BEFORE's total),
    /// still red grew, blue shrank — so a stack that vanished is drawn, in blue (FlameGraph's
    /// --negate view).
    #[arg(long, requires = "diff")]
    pub negate: bool,
    /// Write the SVG to FILE instead of standard output.
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,
    /// Also (or, without --svg, only) write the stacks as a gzipped pprof profile to FILE, each
    /// folded line one sample valued in --count-name units (go tool pprof, Pyroscope, Parca).
    #[arg(long, value_name = "FILE", conflicts_with = "diff")]
    pub pprof: Option<PathBuf>,
    /// The graph's title (default: what was rendered or compared).
    #[arg(long)]
    pub title: Option<String>,
    /// The unit of the counts, shown on hover.
    #[arg(long, value_name = "NAME", default_value = "samples")]
    pub count_name: String,
}

pub fn run(args: FlamegraphArgs) -> Result<()> {
    let inputs: Vec<Option<&Path>> = if args.files.is_empty() {
        vec![None]
    } else {
        args.files
            .iter()
            .map(|f| (f.as_os_str() != "-").then_some(f.as_path()))
            .collect()
    };
    if args.diff && inputs.len() != 2 {
        usage_bail!(
            "--diff compares two profiles: give BEFORE and AFTER (got {} input{})",
            inputs.len(),
            if inputs.len() == 1 { "" } else { "s" }
        );
    }
    // Open the outputs first: a bad --svg or --pprof path fails before any input is read.
    let svg = args.svg.as_deref().map(SvgFile::create).transpose()?;
    let pprof = args.pprof.as_deref().map(PprofFile::create).transpose()?;
    let mut texts = Vec::new();
    for input in &inputs {
        texts.push(read_folded(*input)?);
    }
    let (text, default_title) = if args.diff && args.negate {
        // Counts in the other order: the shape is the first count's, BEFORE's.
        let text = flame_svg::diff_text(&texts[1], &texts[0])?;
        let title = format!(
            "Differential in the before shape: {} → {} (red grew, blue shrank; after scaled \
             to before's total)",
            name(inputs[0]),
            name(inputs[1])
        );
        (text, title)
    } else if args.diff {
        let text = flame_svg::diff_text(&texts[0], &texts[1])?;
        let title = format!(
            "Differential: {} → {} (red grew, blue shrank; before scaled to after's total)",
            name(inputs[0]),
            name(inputs[1])
        );
        (text, title)
    } else {
        let names: Vec<String> = inputs.iter().map(|i| name(*i)).collect();
        let title = format!("Flame Graph: {}", names.join(", "));
        match texts.len() {
            1 => (texts.pop().unwrap_or_default(), title),
            _ => (texts.join("\n"), title),
        }
    };
    // Borrowed lines, not copies: a large profile is rendered straight from the text read.
    let lines: Vec<&str> = text.lines().filter(|l| is_content(l)).collect();
    let title = args.title.unwrap_or(default_title);
    if let Some(pprof) = pprof {
        // Any folded file's root frame may or may not be a process name, so every frame stays a
        // location. Leaked: the kind wants a 'static name, and the process ends after this.
        let unit: &'static str = args.count_name.clone().leak();
        pprof.write_frames(&lines, PprofKind::Count(unit), &title)?;
        if svg.is_none() {
            return Ok(());
        }
    }
    let style = Style {
        negate: args.negate,
    };
    match svg {
        Some(file) => file.write_styled(&lines, &title, &args.count_name, style),
        None => {
            let mut bytes = Vec::new();
            flame_svg::render_svg(&lines, &title, &args.count_name, style, &mut bytes)
                .map_err(|e| anyhow!("cannot render the flame graph: {e}"))?;
            output::write_stdout_bytes(&bytes);
            Ok(())
        }
    }
}

fn name(input: Option<&Path>) -> String {
    input.map_or_else(|| "standard input".into(), |p| p.display().to_string())
}

/// An input as folded stack lines (`frame;frame;... count`, root first), whatever it was.
pub fn read_stacks(input: Option<&Path>) -> Result<Vec<String>> {
    Ok(read_folded(input)?
        .lines()
        .filter(|l| is_content(l))
        .map(str::to_string)
        .collect())
}

/// An input as folded text, whatever it was: a folded file as read (comments and blank lines
/// kept), anything else collapsed into folded lines.
fn read_folded(input: Option<&Path>) -> Result<String> {
    let mut text = String::new();
    match input {
        None => {
            std::io::stdin()
                .read_to_string(&mut text)
                .context("cannot read standard input")?;
        }
        Some(path) => {
            let bytes = std::fs::read(path).map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => usage_err!("{}: no such file", path.display()),
                _ => anyhow!("cannot read {}: {e}", path.display()),
            })?;
            // Valid UTF-8 (nearly always) is taken as is, without a copy.
            text = String::from_utf8(bytes)
                .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
        }
    }
    let what = name(input);
    if text.trim().is_empty() {
        bail!("{what}: no stacks in it (the input is empty)");
    }
    let Err(bad_line) = parse_folded(&text) else {
        return Ok(text);
    };
    if let Some(lines) = parse_bpftrace(&text) {
        return Ok(lines.join("\n"));
    }
    // perf script, dtrace, and the other formats inferno's collapsers recognise.
    let mut collapsed = Vec::new();
    inferno::collapse::guess::Folder::default()
        .collapse(BufReader::new(Cursor::new(text.as_bytes())), &mut collapsed)
        .with_context(|| format!("cannot collapse {what}"))?;
    let lines: Vec<String> = String::from_utf8_lossy(&collapsed)
        .lines()
        .filter(|l| is_content(l))
        .map(str::to_string)
        .collect();
    if lines.is_empty()
        && text
            .lines()
            .all(|l| !is_content(l) || l.starts_with("Attaching "))
    {
        bail!("{what}: bpftrace output without any map entries (nothing was counted)");
    }
    if lines.is_empty() {
        let (number, content) = bad_line;
        let snippet: String = content.chars().take(60).collect();
        bail!(
            "{what}:{number}: not a folded stack line (FRAME;FRAME;... COUNT), and the input is \
             not perf script or bpftrace output either: {snippet:?}"
        );
    }
    Ok(lines.join("\n"))
}

fn is_content(line: &str) -> bool {
    let line = line.trim();
    !line.is_empty() && !line.starts_with('#')
}

/// Ok if every line is `STACK COUNT` (or the two-count `STACK BEFORE AFTER` of a diff);
/// otherwise the first line that is not, with its 1-based number.
fn parse_folded(text: &str) -> Result<(), (usize, String)> {
    for (i, line) in text.lines().enumerate() {
        if !is_content(line) {
            continue;
        }
        // No allocation per line: this runs over every line of million-sample files.
        let is_count = |f: &str| f.parse::<f64>().is_ok();
        let ok = match line.trim_end().rsplit_once(' ') {
            Some((rest, last)) if is_count(last) => match rest.rsplit_once(' ') {
                Some((stack, before)) if is_count(before) => !stack.is_empty(),
                _ => !rest.is_empty(),
            },
            _ => false,
        };
        if !ok {
            return Err((i + 1, line.to_string()));
        }
    }
    Ok(())
}

/// bpftrace's map printout: `@name[key, key]: N` on one line, or a key holding a stack over
/// several lines (`@[\n  leaf+off\n  caller+off\n]: N`, leaf first). Scalar keys become the root
/// frames, then the stack root first; `+offset` suffixes are dropped so calls merge.
fn parse_bpftrace(text: &str) -> Option<Vec<String>> {
    let mut out = Vec::new();
    let mut open: Option<(Vec<String>, Vec<String>)> = None;
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with("Attaching") {
            continue;
        }
        if let Some((keys, frames)) = open.as_mut() {
            if let Some(count) = trimmed.strip_prefix("]: ") {
                let count: u64 = count.trim().parse().ok()?;
                let mut stack = std::mem::take(keys);
                stack.extend(frames.drain(..).rev());
                out.push(format!("{} {count}", stack.join(";")));
                open = None;
            } else {
                frames.push(strip_offset(trimmed.trim_end_matches(',')).to_string());
            }
            continue;
        }
        let (_, key) = trimmed.strip_prefix('@')?.split_once('[')?;
        if let Some((key, count)) = key.rsplit_once("]: ") {
            let count: u64 = count.trim().parse().ok()?;
            let keys: Vec<&str> = key.split(", ").filter(|k| !k.is_empty()).collect();
            out.push(format!("{} {count}", keys.join(";")));
        } else {
            let keys = key
                .split(',')
                .map(str::trim)
                .filter(|k| !k.is_empty())
                .map(str::to_string)
                .collect();
            open = Some((keys, Vec::new()));
        }
    }
    (open.is_none() && !out.is_empty()).then_some(out)
}

fn strip_offset(frame: &str) -> &str {
    match frame.rsplit_once('+') {
        Some((name, off))
            if !name.is_empty()
                && (off.chars().all(|c| c.is_ascii_digit())
                    || off
                        .strip_prefix("0x")
                        .is_some_and(|h| h.chars().all(|c| c.is_ascii_hexdigit()))) =>
        {
            name
        }
        _ => frame,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folded_lines_and_the_first_bad_one() {
        assert!(parse_folded("main;a 3\n# comment\n\nmain;b 1 2\n").is_ok());
        assert_eq!(
            parse_folded("main;a 3\nnot folded\nmain 1"),
            Err((2, "not folded".to_string()))
        );
    }

    #[test]
    fn bpftrace_maps_become_root_first_stacks() {
        let text = "Attaching 1 probe...\n\n@[nginx, \n    leaf+5\n    caller+0x1a\n    main+9\n]: 7\n@[\n    x+1\n]: 2\n";
        assert_eq!(
            parse_bpftrace(text).unwrap(),
            vec!["nginx;main;caller;leaf 7".to_string(), "x 2".to_string()]
        );
        assert_eq!(
            parse_bpftrace("@[sshd]: 12\n@[bash]: 3\n").unwrap().len(),
            2
        );
        assert!(parse_bpftrace("main;a 3\n").is_none());
    }
}
