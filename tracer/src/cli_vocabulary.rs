//! Tests that keep the command line honest: every tool's flags follow the one vocabulary
//! written down in docs/cli.md, and every example command in README.md, docs/ and the tools'
//! `--help` parses.

#[cfg(test)]
mod tests {
    use std::{
        collections::{BTreeMap, BTreeSet},
        path::{Path, PathBuf},
    };

    use clap::CommandFactory as _;

    use crate::{Cli, TOOL_NAMES};

    const CLI_MD: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/cli.md"));

    /// One row of docs/cli.md's table: a short letter (if any), its long name, the tools that
    /// take it, and its hidden old spellings.
    #[derive(Debug)]
    struct Row {
        line: usize,
        short: Option<char>,
        long: String,
        tools: BTreeSet<String>,
        aliases: BTreeSet<String>,
    }

    fn code_spans(cell: &str) -> Vec<String> {
        cell.split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_string)
            .collect()
    }

    /// The table rows, and the expansion of "tracing tools" from the line that defines it.
    fn vocabulary() -> Vec<Row> {
        let tracing: Vec<String> = CLI_MD
            .lines()
            .skip_while(|l| !l.starts_with("\"tracing tools\" below means:"))
            .take_while(|l| !l.trim().is_empty())
            .collect::<Vec<_>>()
            .join(" ")
            .split_once("means:")
            .expect("docs/cli.md defines \"tracing tools\"")
            .1
            .trim_end_matches('.')
            .split(',')
            .map(|t| t.trim().to_string())
            .collect();
        let mut rows = Vec::new();
        for (i, line) in CLI_MD.lines().enumerate() {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            // "| short | long | meaning | tools | aliases |" splits into 7 cells.
            if cells.len() != 7 || !cells[2].starts_with("`--") {
                continue;
            }
            let short = code_spans(cells[1]).first().map(|s| {
                let letter = s.strip_prefix('-').expect("short flag starts with -");
                assert_eq!(letter.len(), 1, "docs/cli.md:{}: short '{s}'", i + 1);
                letter.chars().next().unwrap()
            });
            let long = code_spans(cells[2])[0]
                .strip_prefix("--")
                .unwrap()
                .to_string();
            let mut tools = BTreeSet::new();
            for tool in cells[4].split(',').map(str::trim) {
                if tool == "tracing tools" {
                    tools.extend(tracing.iter().cloned());
                } else {
                    tools.insert(tool.to_string());
                }
            }
            let aliases = code_spans(cells[5]).into_iter().collect();
            rows.push(Row {
                line: i + 1,
                short,
                long,
                tools,
                aliases,
            });
        }
        assert!(rows.len() > 20, "docs/cli.md's table did not parse");
        rows
    }

    #[test]
    fn every_flag_means_one_thing() {
        let rows = vocabulary();
        let mut problems = Vec::new();
        // The table itself: one row per letter, per long name, per old spelling.
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        for row in &rows {
            let names = row
                .short
                .map(|c| format!("-{c}"))
                .into_iter()
                .chain([format!("--{}", row.long)])
                .chain(row.aliases.iter().cloned());
            for name in names {
                if let Some(first) = seen.insert(name.clone(), row.line) {
                    problems.push(format!(
                        "docs/cli.md:{} and :{first} both define {name}",
                        row.line
                    ));
                }
            }
        }
        let by_long: BTreeMap<&str, &Row> = rows.iter().map(|r| (r.long.as_str(), r)).collect();
        let mut takers: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
        let mut aliases_in_code: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
        let cli = Cli::command();
        for tool in cli.get_subcommands().filter(|t| !t.is_hide_set()) {
            let name = tool.get_name();
            for arg in tool.get_arguments().filter(|a| !a.is_positional()) {
                let Some(long) = arg.get_long() else {
                    problems.push(format!("{name}: -{:?} has no long name", arg.get_short()));
                    continue;
                };
                let Some(row) = by_long.get(long) else {
                    problems.push(format!("{name}: --{long} is not in docs/cli.md"));
                    continue;
                };
                takers
                    .entry(row.long.as_str())
                    .or_default()
                    .insert(name.to_string());
                if arg.get_short() != row.short {
                    problems.push(format!(
                        "{name}: --{long} has short {:?}, docs/cli.md:{} says {:?}",
                        arg.get_short(),
                        row.line,
                        row.short
                    ));
                }
                let aliases: BTreeSet<String> = arg
                    .get_all_aliases()
                    .unwrap_or_default()
                    .into_iter()
                    .map(|a| format!("--{a}"))
                    .chain(
                        arg.get_all_short_aliases()
                            .unwrap_or_default()
                            .into_iter()
                            .map(|c| format!("-{c}")),
                    )
                    .collect();
                for alias in aliases.difference(&row.aliases) {
                    problems.push(format!(
                        "{name}: --{long} has alias {alias}, not in docs/cli.md:{}",
                        row.line
                    ));
                }
                aliases_in_code
                    .entry(row.long.as_str())
                    .or_default()
                    .extend(aliases);
            }
        }
        for row in &rows {
            let actual = takers.remove(row.long.as_str()).unwrap_or_default();
            if actual != row.tools {
                problems.push(format!(
                    "docs/cli.md:{}: --{} is listed for {:?} but taken by {:?}",
                    row.line, row.long, row.tools, actual
                ));
            }
            let in_code = aliases_in_code
                .remove(row.long.as_str())
                .unwrap_or_default();
            for alias in row.aliases.difference(&in_code) {
                problems.push(format!(
                    "docs/cli.md:{}: old spelling {alias} of --{} is accepted by no tool",
                    row.line, row.long
                ));
            }
        }
        assert!(problems.is_empty(), "\n{}", problems.join("\n"));
    }

    /// Shell-splits one command line the way sh would for these examples: '...', "...",
    /// backslash escapes, `#` comments. Stops at a pipe, `;`, `&`, `&&` or a redirect.
    fn shell_words(line: &str) -> Result<Vec<String>, String> {
        let mut words = Vec::new();
        let mut word = String::new();
        let mut in_word = false;
        let mut chars = line.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '\'' => {
                    in_word = true;
                    loop {
                        match chars.next() {
                            Some('\'') => break,
                            Some(c) => word.push(c),
                            None => return Err("unterminated '".into()),
                        }
                    }
                }
                '"' => {
                    in_word = true;
                    loop {
                        match chars.next() {
                            Some('"') => break,
                            Some('\\') => word.extend(chars.next()),
                            Some(c) => word.push(c),
                            None => return Err("unterminated \"".into()),
                        }
                    }
                }
                '\\' => {
                    in_word = true;
                    word.extend(chars.next());
                }
                '#' if !in_word => break,
                '|' | ';' | '&' | '>' | '<' => {
                    // In `2>&1` the 2 belongs to the redirect, not to the command.
                    let fd = matches!(c, '>' | '<') && word.chars().all(|d| d.is_ascii_digit());
                    if in_word && !fd {
                        words.push(word);
                    }
                    return Ok(words);
                }
                c if c.is_whitespace() => {
                    if in_word {
                        words.push(std::mem::take(&mut word));
                        in_word = false;
                    }
                }
                c => {
                    in_word = true;
                    word.push(c);
                }
            }
        }
        if in_word {
            words.push(word);
        }
        Ok(words)
    }

    /// `tracer X ...`, `target/release/tracer X ...`, `cargo xtask run -- X ...` or `X ...`
    /// for a tool name X: the argv `tracer X ...` it stands for.
    fn as_tracer_argv(words: &[String]) -> Option<Vec<String>> {
        let mut rest = words;
        while let Some(first) = rest.first()
            && (first == "sudo" || first == "#" || first == "$")
        {
            rest = &rest[1..];
        }
        if rest.len() >= 3 && rest[0] == "cargo" && rest[1] == "xtask" && rest[2] == "run" {
            rest = rest.get(4..).unwrap_or_default();
        } else if let Some(first) = rest.first()
            && (first == "tracer" || first.ends_with("/tracer"))
        {
            rest = &rest[1..];
        }
        let tool = rest.first()?;
        let known = TOOL_NAMES.contains(&tool.as_str())
            || ["man", "completions", "list-tools"].contains(&tool.as_str());
        known.then(|| {
            std::iter::once("tracer".to_string())
                .chain(rest.iter().cloned())
                .collect()
        })
    }

    /// Command lines in a markdown file: in fenced code blocks, lines with a `#`/`$` prompt (or
    /// `cargo xtask run --`), with trailing-backslash continuations; in prose, inline code
    /// spans that start with `tracer <tool>`. Returns (line number, text).
    fn markdown_commands(text: &str) -> Vec<(usize, String)> {
        let mut found = Vec::new();
        let mut in_code = false;
        let mut pending: Option<(usize, String)> = None;
        for (i, line) in text.lines().enumerate() {
            if line.trim_start().starts_with("```") {
                in_code = !in_code;
                continue;
            }
            if in_code {
                if let Some((start, mut joined)) = pending.take() {
                    joined.push(' ');
                    joined.push_str(line.trim());
                    match joined.strip_suffix('\\') {
                        Some(more) => pending = Some((start, more.to_string())),
                        None => found.push((start, joined)),
                    }
                    continue;
                }
                let trimmed = line.trim_start();
                let command = trimmed
                    .strip_prefix("# ")
                    .or_else(|| trimmed.strip_prefix("$ "))
                    .or_else(|| trimmed.starts_with("cargo xtask run --").then_some(trimmed));
                if let Some(command) = command {
                    match command.strip_suffix('\\') {
                        Some(more) => pending = Some((i + 1, more.to_string())),
                        None => found.push((i + 1, command.to_string())),
                    }
                }
            } else {
                for span in line.split('`').skip(1).step_by(2) {
                    if span.starts_with("tracer ") && !span.contains('<') && !span.contains("...") {
                        found.push((i + 1, span.to_string()));
                    }
                }
            }
        }
        found
    }

    fn markdown_files() -> Vec<PathBuf> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut files = vec![root.join("README.md")];
        let mut dirs = vec![root.join("docs")];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).expect("docs/ is readable") {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    dirs.push(path);
                } else if path.extension().is_some_and(|e| e == "md") {
                    files.push(path);
                }
            }
        }
        files.sort();
        files
    }

    /// Every example line of every tool's `--help` ("    tool ARGS    what it does").
    fn help_commands() -> Vec<(String, String)> {
        let cli = Cli::command();
        let mut found = Vec::new();
        for tool in cli.get_subcommands() {
            let Some(help) = tool.get_after_help() else {
                continue;
            };
            let help = help.to_string();
            let mut lines = help.lines().peekable();
            while let Some(line) = lines.next() {
                let mut line = line.trim().to_string();
                while let Some(more) = line.strip_suffix('\\') {
                    let next = lines.next().unwrap_or_default().trim();
                    line = format!("{} {next}", more.trim_end());
                }
                // The description is set off by two or more spaces.
                let command = line.split("  ").next().unwrap_or_default().to_string();
                if command
                    .split_whitespace()
                    .next()
                    .is_some_and(|w| w == tool.get_name())
                {
                    found.push((format!("{} --help", tool.get_name()), command));
                }
            }
        }
        found
    }

    fn check(place: &str, command: &str, problems: &mut Vec<String>) -> bool {
        let words = match shell_words(command) {
            Ok(words) => words,
            Err(e) => {
                problems.push(format!("{place}: {e}: {command}"));
                return false;
            }
        };
        let Some(argv) = as_tracer_argv(&words) else {
            return false;
        };
        if let Err(e) = <Cli as clap::Parser>::try_parse_from(&argv) {
            let first = e.render().to_string();
            let first = first.lines().next().unwrap_or_default().to_string();
            problems.push(format!("{place}: `{command}` does not parse: {first}"));
        }
        true
    }

    #[test]
    fn documented_examples_parse() {
        let mut problems = Vec::new();
        let mut checked = 0;
        for file in markdown_files() {
            let text = std::fs::read_to_string(&file).unwrap();
            let name = file
                .strip_prefix(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
                .unwrap_or(&file)
                .display()
                .to_string();
            for (line, command) in markdown_commands(&text) {
                checked += check(&format!("{name}:{line}"), &command, &mut problems) as usize;
            }
        }
        for (place, command) in help_commands() {
            checked += check(&place, &command, &mut problems) as usize;
        }
        assert!(problems.is_empty(), "\n{}", problems.join("\n"));
        assert!(checked > 60, "only {checked} example commands found");
    }

    /// `--attach` takes the kernel's spelling and clap's hyphenated one, and every mechanism
    /// prints as the spelling `--attach` lists.
    #[test]
    fn attach_spellings() {
        use clap::ValueEnum as _;

        use crate::{Tool, attach::Mechanism};
        for (spelling, expected) in [
            ("tp_btf", Mechanism::TpBtf),
            ("tp-btf", Mechanism::TpBtf),
            ("raw_tp", Mechanism::RawTp),
            ("raw-tp", Mechanism::RawTp),
            ("uprobe_multi", Mechanism::UprobeMulti),
            ("uprobe-multi", Mechanism::UprobeMulti),
            ("tracepoint", Mechanism::Tracepoint),
        ] {
            let cli = <Cli as clap::Parser>::try_parse_from([
                "tracer",
                "forksnoop",
                "--attach",
                spelling,
            ])
            .unwrap_or_else(|e| panic!("--attach {spelling}: {e}"));
            let Tool::Forksnoop(args) = cli.tool else {
                panic!("not forksnoop");
            };
            assert_eq!(args.common.attach, Some(expected), "--attach {spelling}");
        }
        for mechanism in Mechanism::value_variants() {
            let listed = mechanism.to_possible_value().unwrap();
            assert_eq!(listed.get_name(), mechanism.name());
        }
        let forced = |m| crate::tools::CommonArgs {
            attach: Some(m),
            ..Default::default()
        };
        let tracepoints = [Mechanism::TpBtf, Mechanism::RawTp, Mechanism::Tracepoint];
        let err = forced(Mechanism::Kprobe)
            .attach_for("forksnoop", &tracepoints)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "--attach kprobe: forksnoop cannot attach with kprobe (choose one of tp_btf, raw_tp, tracepoint)"
        );
        assert_eq!(
            forced(Mechanism::RawTp)
                .attach_for("forksnoop", &tracepoints)
                .unwrap(),
            Some(Mechanism::RawTp)
        );
    }

    #[test]
    fn shell_splitting() {
        let w = |s| shell_words(s).unwrap();
        assert_eq!(w("a 'b c' \"d\\\"e\" f\\ g"), ["a", "b c", "d\"e", "f g"]);
        assert_eq!(w("profile -d 2 | head"), ["profile", "-d", "2"]);
        assert_eq!(w("x -f > out.folded"), ["x", "-f"]);
        assert_eq!(w("x 2>&1 | head"), ["x"]);
        assert_eq!(w("x --top 1     # comment"), ["x", "--top", "1"]);
        assert_eq!(w("trace 'a|b' -p 1"), ["trace", "a|b", "-p", "1"]);
    }
}
