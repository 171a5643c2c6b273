//! Call trees as ftrace's function_graph shows them, from calls that arrive callees first
//! (funcgraph's BPF programs send each call when it returns; the tracefs rung's lines are
//! turned into the same records): rebuilt per thread, printed with ftrace's duration markers,
//! as JSON, as Chrome trace events for Perfetto, and summed per function (the profiler).

use std::collections::{HashMap, HashSet};

use anyhow::{Context as _, Result};
use serde_json::{Value, json};
use tracer_common::funcgraph::{CALL_INCOMPLETE, CallRecord};

use crate::output::{Clock, Out, comm_str};

/// ftrace's duration markers: the first whose threshold a call reaches.
const MARKERS: &[(u64, char)] = &[
    (1_000_000_000, '$'),
    (100_000_000, '@'),
    (10_000_000, '*'),
    (1_000_000, '#'),
    (100_000, '!'),
    (10_000, '+'),
];

/// Function names by id (the id a record carries).
#[derive(Default)]
pub struct Names {
    names: Vec<String>,
    ids: HashMap<String, u32>,
}

impl Names {
    pub fn name(&self, id: u32) -> &str {
        self.names.get(id as usize).map_or("?", String::as_str)
    }

    /// The id of `name`, given one the first time it is seen.
    pub fn intern(&mut self, name: &str) -> u32 {
        if let Some(&id) = self.ids.get(name) {
            return id;
        }
        let id = self.names.len() as u32;
        self.names.push(name.to_string());
        self.ids.insert(name.to_string(), id);
        id
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }
}

/// A call and the calls it made, in order.
pub struct Node {
    pub record: CallRecord,
    pub children: Vec<Node>,
}

/// Rebuilds trees from calls arriving callees first: per thread, the finished calls of each
/// depth wait for their caller.
#[derive(Default)]
pub struct Builder {
    pending: HashMap<u32, Vec<Vec<Node>>>,
}

impl Builder {
    /// The finished tree when `record` is a root's return.
    pub fn add(&mut self, record: CallRecord) -> Option<Node> {
        let depth = record.depth as usize;
        let levels = self.pending.entry(record.tid).or_default();
        if levels.len() < depth + 2 {
            levels.resize_with(depth + 2, Vec::new);
        }
        let children = std::mem::take(&mut levels[depth + 1]);
        let node = Node { record, children };
        if depth == 0 {
            self.pending.remove(&record.tid);
            return Some(node);
        }
        levels[depth].push(node);
        None
    }
}

impl Builder {
    /// Threads inside a root whose tree has not finished.
    pub fn unfinished(&self) -> usize {
        self.pending.len()
    }
}

fn marker(duration_ns: u64) -> char {
    MARKERS
        .iter()
        .find(|(at, _)| duration_ns >= *at)
        .map_or(' ', |(_, m)| *m)
}

/// ftrace's duration column: `+ 12.345 us` (blank when the line has no duration), written
/// into `line` with integer arithmetic (a tree can have thousands of lines: no float
/// formatting, no allocation per line).
fn duration_column(line: &mut String, duration_ns: Option<u64>) {
    use std::fmt::Write as _;
    match duration_ns {
        Some(ns) => {
            let _ = write!(line, "{} {:>5}.{:03} us", marker(ns), ns / 1000, ns % 1000);
        }
        None => line.push_str("              "),
    }
}

pub fn print_tree(tree: &Node, names: &Names, clock: &Clock, retval: bool, out: &mut Out) {
    let r = &tree.record;
    let mut title = format!(
        "{}() in {} PID {} TID {} on CPU {} at {}: {:.3} us",
        names.name(r.func),
        comm_str(&r.comm),
        r.tgid,
        r.tid,
        r.cpu,
        crate::output::hms(clock.unix_ns(r.start_ns)),
        r.duration_ns as f64 / 1e3
    );
    if r.flags & CALL_INCOMPLETE != 0 {
        title.push_str(" (calls lost to recursion protection)");
    }
    out.line(&title);
    out.line(" CPU  DURATION          FUNCTION CALLS");
    print_node(tree, names, 0, retval, out);
    out.line("");
}

fn print_node(node: &Node, names: &Names, level: usize, retval: bool, out: &mut Out) {
    let mut line = String::with_capacity(96);
    print_into(node, names, level, retval, out, &mut line);
}

fn print_into(
    node: &Node,
    names: &Names,
    level: usize,
    retval: bool,
    out: &mut Out,
    line: &mut String,
) {
    use std::fmt::Write as _;
    let r = &node.record;
    let name = names.name(r.func);
    let indent = level * 2;
    line.clear();
    let _ = write!(line, "{:>3}) ", r.cpu);
    if node.children.is_empty() {
        duration_column(line, Some(r.duration_ns));
        let _ = write!(line, " |  {:indent$}{name}();", "");
        if retval {
            let _ = write!(line, " /* = {:#x} */", r.retval);
        }
        out.line(line);
        return;
    }
    duration_column(line, None);
    let _ = write!(line, " |  {:indent$}{name}() {{", "");
    out.line(line);
    for child in &node.children {
        print_into(child, names, level + 1, retval, out, line);
    }
    line.clear();
    let _ = write!(line, "{:>3}) ", r.cpu);
    duration_column(line, Some(r.duration_ns));
    let _ = write!(line, " |  {:indent$}}} /* {name} */", "");
    if retval {
        let _ = write!(line, " /* = {:#x} */", r.retval);
    }
    out.line(line);
}

fn node_json(node: &Node, names: &Names, clock: &Clock, retval: bool) -> Value {
    let r = &node.record;
    let mut value = json!({
        "function": names.name(r.func),
        "start_ns": clock.unix_ns(r.start_ns) as i64,
        "duration_ns": r.duration_ns,
        "calls": node.children.iter().map(|c| node_json(c, names, clock, retval)).collect::<Vec<_>>(),
    });
    if retval {
        value["retval"] = json!(r.retval);
    }
    value
}

pub fn tree_json(tree: &Node, names: &Names, clock: &Clock, retval: bool) -> Value {
    let r = &tree.record;
    json!({
        "type": "tree",
        "pid": r.tgid,
        "tid": r.tid,
        "comm": comm_str(&r.comm),
        "cpu": r.cpu,
        "incomplete": r.flags & CALL_INCOMPLETE != 0,
        "root": node_json(tree, names, clock, retval),
    })
}

/// Chrome trace-event "X" slices (microseconds), one track per thread.
pub fn trace_events(node: &Node, names: &Names, events: &mut Vec<Value>) {
    let r = &node.record;
    events.push(json!({
        "name": names.name(r.func),
        "cat": "funcgraph",
        "ph": "X",
        "ts": r.start_ns as f64 / 1e3,
        "dur": r.duration_ns as f64 / 1e3,
        "pid": r.tgid,
        "tid": r.tid,
        "args": {"cpu": r.cpu},
    }));
    if r.depth == 0 {
        events.push(
            json!({"name": "thread_name", "ph": "M", "pid": r.tgid, "tid": r.tid,
                           "args": {"name": comm_str(&r.comm)}}),
        );
    }
    for child in &node.children {
        trace_events(child, names, events);
    }
}

pub fn write_perfetto(path: &std::path::Path, mut events: Vec<Value>) -> Result<()> {
    // One thread_name per thread.
    let mut named = HashSet::new();
    events.retain(|e| e["ph"] != "M" || named.insert(e["tid"].as_u64()));
    let document = json!({"traceEvents": events, "displayTimeUnit": "ns"});
    std::fs::write(path, serde_json::to_vec(&document)?)
        .with_context(|| format!("cannot write {}", path.display()))?;
    errln!(
        "funcgraph: wrote {} (open it in ui.perfetto.dev)",
        path.display()
    );
    Ok(())
}

/// One function's sums over CPUs.
#[derive(Clone, Copy, Default)]
pub struct Sums {
    pub hits: u64,
    pub total_ns: u64,
    pub self_ns: u64,
    pub squares: u128,
}

impl Sums {
    /// Sample variance of the call durations, in µs² (ftrace's s^2).
    pub fn variance_us2(&self) -> f64 {
        if self.hits < 2 {
            return 0.0;
        }
        let n = self.hits as f64;
        let sum = self.total_ns as f64;
        let var_ns2 = (self.squares as f64 - sum * sum / n) / (n - 1.0);
        var_ns2.max(0.0) / 1e6
    }
}

impl Sums {
    /// Adds one call of `duration_ns`, `self_ns` of it outside its callees.
    pub fn add(&mut self, duration_ns: u64, self_ns: u64) {
        self.hits += 1;
        self.total_ns += duration_ns;
        self.self_ns += self_ns;
        self.squares += u128::from(duration_ns) * u128::from(duration_ns);
    }

    /// `self` minus an earlier reading.
    pub fn since(&self, before: &Sums) -> Sums {
        Sums {
            hits: self.hits - before.hits,
            total_ns: self.total_ns - before.total_ns,
            self_ns: self.self_ns - before.self_ns,
            squares: self.squares - before.squares,
        }
    }
}

/// Adds every call of `tree` to `sums` (indexed by function id).
pub fn sum_tree(tree: &Node, sums: &mut Vec<Sums>) {
    let id = tree.record.func as usize;
    if sums.len() <= id {
        sums.resize(id + 1, Sums::default());
    }
    let children: u64 = tree.children.iter().map(|c| c.record.duration_ns).sum();
    sums[id].add(
        tree.record.duration_ns,
        tree.record.duration_ns.saturating_sub(children),
    );
    for child in &tree.children {
        sum_tree(child, sums);
    }
}

/// The function profiler's table (or JSON record) of one interval.
pub fn print_profile(
    root: &str,
    names: &Names,
    sums: &[Sums],
    interval_ns: u64,
    (json, timestamp): (bool, bool),
    out: &mut Out,
) {
    // Root copies share cookie 0: their sums are in slot 0.
    let mut rows: Vec<(&str, &Sums)> = sums
        .iter()
        .enumerate()
        .filter(|(_, s)| s.hits > 0)
        .map(|(i, s)| (names.name(i as u32), s))
        .collect();
    rows.sort_by(|a, b| b.1.total_ns.cmp(&a.1.total_ns).then(a.0.cmp(b.0)));
    if json {
        let functions: Vec<Value> = rows
            .iter()
            .map(|(name, s)| {
                json!({"function": name, "hits": s.hits, "total_ns": s.total_ns,
                       "avg_ns": s.total_ns / s.hits, "self_ns": s.self_ns,
                       "variance_us2": s.variance_us2()})
            })
            .collect();
        out.json(&crate::output::interval_record(
            "funcgraph",
            "profile",
            interval_ns,
            json!({"root": root, "functions": functions}),
        ));
        return;
    }
    if timestamp {
        out.line(&crate::output::hms_now());
    }
    out.line(&format!(
        "  {:<36} {:>10} {:>16} {:>14} {:>16} {:>16}",
        "Function", "Hit", "Time", "Avg", "s^2", "Self"
    ));
    for (name, s) in rows {
        out.line(&format!(
            "  {:<36} {:>10} {:>13.3} us {:>11.3} us {:>13.3} us {:>13.3} us",
            name,
            s.hits,
            s.total_ns as f64 / 1e3,
            s.total_ns as f64 / s.hits as f64 / 1e3,
            s.variance_us2(),
            s.self_ns as f64 / 1e3
        ));
    }
    out.line("");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(tid: u32, func: u32, depth: u16, start: u64, duration: u64) -> CallRecord {
        CallRecord {
            start_ns: start,
            duration_ns: duration,
            retval: 0,
            tid,
            tgid: tid,
            func,
            depth,
            cpu: 0,
            flags: 0,
            _pad: 0,
            comm: [0; 16],
        }
    }

    #[test]
    fn trees_rebuild_from_calls_that_arrive_callees_first() {
        let mut b = Builder::default();
        // root(0) { a(1) { b(2); } c(3); } on thread 7, interleaved with thread 8's root.
        assert!(b.add(record(7, 2, 2, 20, 5)).is_none());
        assert!(b.add(record(7, 1, 1, 10, 20)).is_none());
        assert!(b.add(record(8, 0, 0, 15, 3)).is_some());
        assert!(b.add(record(7, 3, 1, 40, 5)).is_none());
        let tree = b.add(record(7, 0, 0, 0, 50)).expect("root closes the tree");
        let funcs: Vec<u32> = tree.children.iter().map(|c| c.record.func).collect();
        assert_eq!(funcs, [1, 3]);
        assert_eq!(tree.children[0].children[0].record.func, 2);
        assert!(b.pending.is_empty());
    }

    #[test]
    fn markers_follow_ftrace() {
        assert_eq!(marker(9_999), ' ');
        assert_eq!(marker(10_000), '+');
        assert_eq!(marker(150_000), '!');
        assert_eq!(marker(2_000_000), '#');
        assert_eq!(marker(20_000_000), '*');
        assert_eq!(marker(200_000_000), '@');
        assert_eq!(marker(2_000_000_000), '$');
    }

    #[test]
    fn variance_is_the_sample_variance_in_us2() {
        // Durations 1, 2, 3 µs: mean 2, sample variance 1 µs².
        let d = [1_000u64, 2_000, 3_000];
        let s = Sums {
            hits: 3,
            total_ns: d.iter().sum(),
            self_ns: 0,
            squares: d.iter().map(|x| u128::from(x * x)).sum(),
        };
        assert!((s.variance_us2() - 1.0).abs() < 1e-9);
    }
}
