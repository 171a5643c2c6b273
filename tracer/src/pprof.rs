//! `--pprof FILE`: a stack tool's end-of-run totals as a gzipped pprof profile (profile.proto),
//! the format Pyroscope, Parca, Grafana and `go tool pprof` read. Built from the same folded
//! totals the SVG flame graph is drawn from, so both always agree: one pprof function and
//! location per distinct frame name, the process name as a `comm` label rather than a frame
//! (so `pprof -top` ranks functions, not processes).

use std::{
    collections::HashMap,
    fs::File,
    io::Write as _,
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result};
use flate2::{Compression, write::GzEncoder};
use prost::Message;

/// profile.proto's messages (github.com/google/pprof/proto/profile.proto), the fields written.
mod proto {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Profile {
        #[prost(message, repeated, tag = "1")]
        pub sample_type: Vec<ValueType>,
        #[prost(message, repeated, tag = "2")]
        pub sample: Vec<Sample>,
        #[prost(message, repeated, tag = "4")]
        pub location: Vec<Location>,
        #[prost(message, repeated, tag = "5")]
        pub function: Vec<Function>,
        #[prost(string, repeated, tag = "6")]
        pub string_table: Vec<String>,
        #[prost(int64, tag = "9")]
        pub time_nanos: i64,
        #[prost(int64, tag = "10")]
        pub duration_nanos: i64,
        #[prost(message, optional, tag = "11")]
        pub period_type: Option<ValueType>,
        #[prost(int64, tag = "12")]
        pub period: i64,
        #[prost(int64, repeated, tag = "13")]
        pub comment: Vec<i64>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ValueType {
        #[prost(int64, tag = "1")]
        pub r#type: i64,
        #[prost(int64, tag = "2")]
        pub unit: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Sample {
        /// Leaf first.
        #[prost(uint64, repeated, tag = "1")]
        pub location_id: Vec<u64>,
        #[prost(int64, repeated, tag = "2")]
        pub value: Vec<i64>,
        #[prost(message, repeated, tag = "3")]
        pub label: Vec<Label>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Label {
        #[prost(int64, tag = "1")]
        pub key: i64,
        #[prost(int64, tag = "2")]
        pub str: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Location {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(message, repeated, tag = "4")]
        pub line: Vec<Line>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Line {
        #[prost(uint64, tag = "1")]
        pub function_id: u64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Function {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(int64, tag = "2")]
        pub name: i64,
        #[prost(int64, tag = "3")]
        pub system_name: i64,
    }
}

/// What the values of the folded lines count.
#[derive(Clone, Copy, Debug)]
pub enum PprofKind {
    /// Timer samples at this frequency per CPU: written as samples/count and cpu/nanoseconds
    /// (each sample standing for one period), as Go's CPU profiles are.
    Samples { hz: u64 },
    /// Off-CPU time in microseconds (offcputime's folded unit).
    OffCpuMicros,
    /// Events of a probe or sampler, counted (stackcount).
    Count(&'static str),
}

/// The `--pprof FILE` target, opened before any tracing so a bad path fails at once.
pub struct PprofFile {
    path: PathBuf,
    file: File,
    started: SystemTime,
}

impl PprofFile {
    pub fn create(path: &Path) -> Result<Self> {
        let file = File::create(path)
            .with_context(|| format!("cannot write the pprof profile to {}", path.display()))?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
            started: SystemTime::now(),
        })
    }

    /// Writes folded totals (`comm;root;...;leaf value`, a "-" user/kernel delimiter frame
    /// skipped) as a gzipped profile; `title` goes in as a comment.
    pub fn write(self, lines: &[String], kind: PprofKind, title: &str) -> Result<()> {
        self.write_labelled(lines, kind, title, "comm")
    }

    /// `write` where the folded lines' first frame is not a process name: it becomes the
    /// label `label` (softirq-top: the vector).
    pub fn write_labelled(
        self,
        lines: &[String],
        kind: PprofKind,
        title: &str,
        label: &str,
    ) -> Result<()> {
        let profile = build(lines, kind, title, label, self.started);
        let mut gz = GzEncoder::new(self.file, Compression::default());
        gz.write_all(&profile.encode_to_vec())
            .and_then(|()| gz.finish().map(drop))
            .with_context(|| format!("cannot write {}", self.path.display()))
    }
}

/// Interns strings into the profile's string table (index 0 is "", as the format requires).
struct Strings {
    table: Vec<String>,
    index: HashMap<String, i64>,
}

impl Strings {
    fn new() -> Self {
        Self {
            table: vec![String::new()],
            index: HashMap::from([(String::new(), 0)]),
        }
    }

    fn id(&mut self, s: &str) -> i64 {
        if let Some(&id) = self.index.get(s) {
            return id;
        }
        let id = self.table.len() as i64;
        self.table.push(s.to_string());
        self.index.insert(s.to_string(), id);
        id
    }
}

fn build(
    lines: &[String],
    kind: PprofKind,
    title: &str,
    label: &str,
    started: SystemTime,
) -> proto::Profile {
    let mut strings = Strings::new();
    let value_type = |ty: &str, unit: &str, strings: &mut Strings| proto::ValueType {
        r#type: strings.id(ty),
        unit: strings.id(unit),
    };
    let (sample_type, period_type, period) = match kind {
        PprofKind::Samples { hz } => {
            let period = 1_000_000_000 / hz.max(1) as i64;
            (
                vec![
                    value_type("samples", "count", &mut strings),
                    value_type("cpu", "nanoseconds", &mut strings),
                ],
                Some(value_type("cpu", "nanoseconds", &mut strings)),
                period,
            )
        }
        PprofKind::OffCpuMicros => (
            vec![value_type("off_cpu", "microseconds", &mut strings)],
            None,
            0,
        ),
        PprofKind::Count(what) => (vec![value_type(what, "count", &mut strings)], None, 0),
    };
    let comm_key = strings.id(label);
    // One function and one location per distinct frame name, same id for both.
    let mut frame_ids: HashMap<String, u64> = HashMap::new();
    let mut functions = Vec::new();
    let mut samples = Vec::new();
    for line in lines {
        let Some((frames, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<i64>() else {
            continue;
        };
        let mut frames = frames.split(';');
        let comm = frames.next().unwrap_or("");
        let mut location_id: Vec<u64> = frames
            .filter(|f| *f != "-")
            .map(|frame| {
                if let Some(&id) = frame_ids.get(frame) {
                    return id;
                }
                let id = frame_ids.len() as u64 + 1;
                let name = strings.id(frame);
                functions.push(proto::Function {
                    id,
                    name,
                    system_name: name,
                });
                frame_ids.insert(frame.to_string(), id);
                id
            })
            .collect();
        location_id.reverse();
        let values = match kind {
            PprofKind::Samples { .. } => vec![value, value.saturating_mul(period)],
            _ => vec![value],
        };
        samples.push(proto::Sample {
            location_id,
            value: values,
            label: vec![proto::Label {
                key: comm_key,
                str: strings.id(comm),
            }],
        });
    }
    let location = functions
        .iter()
        .map(|f| proto::Location {
            id: f.id,
            line: vec![proto::Line { function_id: f.id }],
        })
        .collect();
    let since = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let duration = SystemTime::now()
        .duration_since(started)
        .unwrap_or(Duration::ZERO);
    let comment = vec![strings.id(&format!("tracer: {title}"))];
    proto::Profile {
        sample_type,
        sample: samples,
        location,
        function: functions,
        string_table: strings.table,
        time_nanos: since(started).as_nanos() as i64,
        duration_nanos: duration.as_nanos() as i64,
        period_type,
        period,
        comment,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folded_lines_become_samples_leaf_first() {
        let lines = vec![
            "app;main;work;hot 3".to_string(),
            "app;main;-;syscall 1".to_string(),
            "junk".to_string(),
        ];
        let p = build(
            &lines,
            PprofKind::Samples { hz: 100 },
            "t",
            "comm",
            SystemTime::now(),
        );
        let name = |id: u64| {
            let f = p.function.iter().find(|f| f.id == id).unwrap();
            p.string_table[f.name as usize].as_str()
        };
        assert_eq!(p.sample.len(), 2);
        let first: Vec<&str> = p.sample[0].location_id.iter().map(|&i| name(i)).collect();
        assert_eq!(first, ["hot", "work", "main"]);
        assert_eq!(p.sample[0].value, [3, 30_000_000]);
        let second: Vec<&str> = p.sample[1].location_id.iter().map(|&i| name(i)).collect();
        assert_eq!(second, ["syscall", "main"]);
        assert_eq!(p.string_table[0], "");
        assert_eq!(p.string_table[p.sample[0].label[0].str as usize], "app");
        assert_eq!(p.period, 10_000_000);
    }
}
