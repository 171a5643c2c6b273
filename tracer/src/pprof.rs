//! `--pprof FILE`: a stack tool's end-of-run totals as a gzipped pprof profile (profile.proto),
//! the format Pyroscope, Parca, Grafana and `go tool pprof` read. Built from the same folded
//! totals the SVG flame graph is drawn from, so both always agree: one pprof function and
//! location per distinct frame name, the process name as a `comm` label rather than a frame
//! (so `pprof -top` ranks functions, not processes). Each location names its binary as a
//! mapping with the binary's GNU build id (the kernel's from /sys/kernel/notes), the symbol's
//! address in it, and the source file and line where the binary has DWARF
//! (`frame_origins`), so symbol servers and `pprof -raw` can place it.

use std::{
    collections::HashMap,
    fs::File,
    io::Write as _,
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result};

use crate::frame_origins::FrameOrigins;
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
        #[prost(message, repeated, tag = "3")]
        pub mapping: Vec<Mapping>,
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
    pub struct Mapping {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(uint64, tag = "2")]
        pub memory_start: u64,
        #[prost(uint64, tag = "3")]
        pub memory_limit: u64,
        #[prost(uint64, tag = "4")]
        pub file_offset: u64,
        #[prost(int64, tag = "5")]
        pub filename: i64,
        #[prost(int64, tag = "6")]
        pub build_id: i64,
        #[prost(bool, tag = "7")]
        pub has_functions: bool,
        #[prost(bool, tag = "8")]
        pub has_filenames: bool,
        #[prost(bool, tag = "9")]
        pub has_line_numbers: bool,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Location {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(uint64, tag = "2")]
        pub mapping_id: u64,
        #[prost(uint64, tag = "3")]
        pub address: u64,
        #[prost(message, repeated, tag = "4")]
        pub line: Vec<Line>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Line {
        #[prost(uint64, tag = "1")]
        pub function_id: u64,
        #[prost(int64, tag = "2")]
        pub line: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Function {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(int64, tag = "2")]
        pub name: i64,
        #[prost(int64, tag = "3")]
        pub system_name: i64,
        #[prost(int64, tag = "4")]
        pub filename: i64,
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
    /// skipped) as a gzipped profile; `title` goes in as a comment. `origins` (from
    /// `Symbols::recording_origins`) places the frames in their binaries.
    pub fn write(
        self,
        lines: &[String],
        kind: PprofKind,
        title: &str,
        origins: Option<&FrameOrigins>,
    ) -> Result<()> {
        self.write_labelled(lines, kind, title, "comm", origins)
    }

    /// `write` where the folded lines' first frame is not a process name: it becomes the
    /// label `label` (softirq-top: the vector).
    pub fn write_labelled(
        self,
        lines: &[String],
        kind: PprofKind,
        title: &str,
        label: &str,
        origins: Option<&FrameOrigins>,
    ) -> Result<()> {
        let profile = build(lines, kind, title, Some(label), origins, self.started);
        self.write_profile(&profile)
    }

    /// `write` for folded lines from anywhere (`flamegraph --pprof`): every frame, the first
    /// too, is a location, since nothing says the root is a process name.
    pub fn write_frames(
        self,
        lines: &[impl AsRef<str>],
        kind: PprofKind,
        title: &str,
    ) -> Result<()> {
        let profile = build(lines, kind, title, None, None, self.started);
        self.write_profile(&profile)
    }

    fn write_profile(self, profile: &proto::Profile) -> Result<()> {
        let mut gz = GzEncoder::new(self.file, Compression::default());
        gz.write_all(&profile.encode_to_vec())
            .and_then(|()| gz.finish().map(drop))
            .with_context(|| format!("cannot write {}", self.path.display()))
    }
}

/// The gzipped profile `PprofFile::write` would write, as bytes (serve's
/// `/debug/pprof/profile` answers with it); `started` is when the profiled time began.
pub fn gzipped(
    lines: &[String],
    kind: PprofKind,
    title: &str,
    origins: Option<&FrameOrigins>,
    started: SystemTime,
) -> Vec<u8> {
    let profile = build(lines, kind, title, Some("comm"), origins, started);
    let mut gz = GzEncoder::new(Vec::new(), Compression::default());
    // Writing to a Vec cannot fail.
    let _ = gz.write_all(&profile.encode_to_vec());
    gz.finish().unwrap_or_default()
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
    lines: &[impl AsRef<str>],
    kind: PprofKind,
    title: &str,
    label: Option<&str>,
    origins: Option<&FrameOrigins>,
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
    let label_key = label.map(|label| strings.id(label));
    // One function and one location per distinct frame name, same id for both.
    let mut frame_ids: HashMap<String, u64> = HashMap::new();
    let mut functions = Vec::new();
    let mut samples = Vec::new();
    for line in lines.iter().map(AsRef::as_ref) {
        let Some((frames, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<i64>() else {
            continue;
        };
        let mut frames = frames.split(';');
        let label = label_key.map(|key| proto::Label {
            key,
            str: strings.id(frames.next().unwrap_or("")),
        });
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
                    filename: 0,
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
            label: label.into_iter().collect(),
        });
    }
    let empty = FrameOrigins::default();
    let origins = origins.unwrap_or(&empty);
    // pprof mapping ids are 1-based: module i is mapping i + 1. Each mapping spans the
    // addresses of its locations (file addresses: memory_start is not a load address).
    let mut spans: HashMap<usize, (u64, u64)> = HashMap::new();
    let mut with_lines: HashMap<usize, bool> = HashMap::new();
    let mut location = Vec::with_capacity(functions.len());
    for function in &mut functions {
        let name = &strings.table[function.name as usize];
        let origin = origins.get(name).cloned();
        let (mapping_id, address, line) = match &origin {
            Some(o) => {
                let span = spans.entry(o.module).or_insert((o.address, o.address + 1));
                span.0 = span.0.min(o.address);
                span.1 = span.1.max(o.address + 1);
                *with_lines.entry(o.module).or_default() |= o.line.is_some();
                (o.module as u64 + 1, o.address, o.line.unwrap_or(0))
            }
            None => (0, 0, 0),
        };
        if let Some(file) = origin.as_ref().and_then(|o| o.file.as_deref()) {
            function.filename = strings.id(file);
        }
        location.push(proto::Location {
            id: function.id,
            mapping_id,
            address,
            line: vec![proto::Line {
                function_id: function.id,
                line: i64::from(line),
            }],
        });
    }
    let mut mapping: Vec<proto::Mapping> = origins
        .modules
        .iter()
        .enumerate()
        .filter_map(|(i, module)| {
            let &(start, limit) = spans.get(&i)?;
            let lines = with_lines.get(&i).copied().unwrap_or(false);
            Some(proto::Mapping {
                id: i as u64 + 1,
                memory_start: start,
                memory_limit: limit,
                file_offset: 0,
                filename: strings.id(&module.path),
                build_id: module.build_id.as_deref().map_or(0, |b| strings.id(b)),
                has_functions: true,
                has_filenames: lines,
                has_line_numbers: lines,
            })
        })
        .collect();
    mapping.sort_by_key(|m| m.id);
    let since = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let duration = SystemTime::now()
        .duration_since(started)
        .unwrap_or(Duration::ZERO);
    let comment = vec![strings.id(&format!("tracer: {title}"))];
    proto::Profile {
        sample_type,
        sample: samples,
        mapping,
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
            Some("comm"),
            None,
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

    #[test]
    fn frames_are_placed_in_their_binaries() {
        use std::{ffi::OsStr, rc::Rc};
        let mut origins = FrameOrigins::default();
        origins.note(
            &Rc::from("hot"),
            Some(OsStr::new("/no/such/app")),
            0x1200,
            Some((Rc::from("src/main.rs"), 42)),
        );
        origins.note(
            &Rc::from("main"),
            Some(OsStr::new("/no/such/app")),
            0x1000,
            None,
        );
        origins.note(
            &Rc::from("do_syscall_64"),
            None,
            0xffff_ffff_8100_0000,
            None,
        );
        let lines = vec![
            "app;main;hot 3".to_string(),
            "app;main;-;do_syscall_64 1".to_string(),
        ];
        let p = build(
            &lines,
            PprofKind::Count("hits"),
            "t",
            Some("comm"),
            Some(&origins),
            SystemTime::now(),
        );
        let string = |i: i64| p.string_table[i as usize].as_str();
        assert_eq!(p.mapping.len(), 2);
        let app = &p.mapping[0];
        assert_eq!(string(app.filename), "/no/such/app");
        assert_eq!((app.memory_start, app.memory_limit), (0x1000, 0x1201));
        assert!(app.has_line_numbers);
        assert_eq!(string(p.mapping[1].filename), "[kernel.kallsyms]");
        let hot = p.function.iter().find(|f| string(f.name) == "hot").unwrap();
        assert_eq!(string(hot.filename), "src/main.rs");
        let location = p.location.iter().find(|l| l.id == hot.id).unwrap();
        assert_eq!((location.mapping_id, location.address), (1, 0x1200));
        assert_eq!(location.line[0].line, 42);
    }
}
