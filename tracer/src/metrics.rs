//! Metrics in the Prometheus text exposition format (version 0.0.4) or OpenMetrics 1.0 text:
//! families with HELP and TYPE, escaped label values, and histograms with cumulative `le`
//! buckets made from the kernel's log2 slots. `tracer serve` renders every scrape with it.

use std::fmt::Write as _;

use crate::hist::Log2;

/// The two text formats a scraper can ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Prometheus,
    OpenMetrics,
}

impl Format {
    /// OpenMetrics when the `Accept` header lists `application/openmetrics-text` (as
    /// Prometheus does by default), the classic text format otherwise.
    pub fn from_accept(accept: &str) -> Self {
        let wants = accept.split(',').any(|part| {
            let media = part.split(';').next().unwrap_or("").trim();
            media.eq_ignore_ascii_case("application/openmetrics-text")
        });
        if wants {
            Self::OpenMetrics
        } else {
            Self::Prometheus
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Self::Prometheus => "text/plain; version=0.0.4; charset=utf-8",
            Self::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// A metric family's type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
    /// `_sum` and `_count` only (no quantiles): for a kernel that keeps totals, not slots.
    Summary,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Self::Counter => "counter",
            Self::Gauge => "gauge",
            Self::Histogram => "histogram",
            Self::Summary => "summary",
        }
    }
}

/// A sample value: counts stay exact integers, everything else is a float.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Num {
    Int(u64),
    Float(f64),
}

impl From<u64> for Num {
    fn from(v: u64) -> Self {
        Self::Int(v)
    }
}

impl From<f64> for Num {
    fn from(v: f64) -> Self {
        Self::Float(v)
    }
}

fn push_float(out: &mut String, v: f64) {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v.is_infinite() {
        out.push_str(if v > 0.0 { "+Inf" } else { "-Inf" });
    } else {
        let _ = write!(out, "{v}");
    }
}

/// Which log2 slots become buckets, and how a slot's value converts to the metric's unit.
/// Slots below `first` are folded into the first bucket, slots above `last` into `+Inf`, so
/// the bucket set stays the same from scrape to scrape.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Buckets {
    pub first: usize,
    pub last: usize,
    /// Kernel units per metric unit (1e9: nanoseconds to seconds). A division, so that bounds
    /// print as the decimals they are (4095 ns is 0.000004095 s).
    pub per_unit: f64,
    /// The range asked for, so that slots of another unit can cover it too.
    pub min_ns: u64,
    pub max_ns: u64,
}

impl Buckets {
    /// The log2 slots whose upper bounds (in nanoseconds) cover `min_ns..=max_ns`.
    pub fn nanoseconds(min_ns: u64, max_ns: u64) -> Self {
        Self {
            first: tracer_common::hist::log2_slot(min_ns) as usize,
            last: tracer_common::hist::log2_slot(max_ns) as usize,
            per_unit: 1e9,
            min_ns,
            max_ns,
        }
    }

    /// The same range over slots of microseconds (histograms the kernel keeps in µs).
    pub fn microseconds(self) -> Self {
        Self {
            first: tracer_common::hist::log2_slot(self.min_ns / 1000) as usize,
            last: tracer_common::hist::log2_slot(self.max_ns / 1000) as usize,
            per_unit: 1e6,
            ..self
        }
    }
}

/// One histogram's data: the kernel's slots and, when the kernel keeps it, the sum of the
/// observed values (in the kernel's unit).
struct HistSample<'a> {
    slots: &'a Log2,
    sum: Option<u64>,
}

/// Writes one exposition, family by family.
struct Writer {
    format: Format,
    out: String,
}

impl Writer {
    fn new(format: Format) -> Self {
        Self {
            format,
            out: String::with_capacity(16 * 1024),
        }
    }

    /// Starts a family. `name` is the sample name for gauges and histograms, and ends in
    /// `_total` for counters (OpenMetrics names the family without it).
    fn family(&mut self, name: &str, kind: Kind, help: &str) {
        let family = match (self.format, kind) {
            (Format::OpenMetrics, Kind::Counter) => name.strip_suffix("_total").unwrap_or(name),
            _ => name,
        };
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.out, "# HELP {family} {help}");
        let _ = writeln!(self.out, "# TYPE {family} {}", kind.name());
    }

    /// One sample line.
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Into<Num>) {
        self.out.push_str(name);
        self.labels(labels, None);
        self.out.push(' ');
        match value.into() {
            Num::Int(v) => {
                let _ = write!(self.out, "{v}");
            }
            Num::Float(v) => push_float(&mut self.out, v),
        }
        self.out.push('\n');
    }

    fn labels(&mut self, labels: &[(&str, &str)], le: Option<f64>) {
        if labels.is_empty() && le.is_none() {
            return;
        }
        self.out.push('{');
        for (i, (key, value)) in labels.iter().enumerate() {
            if i > 0 {
                self.out.push(',');
            }
            self.out.push_str(key);
            self.out.push_str("=\"");
            for c in value.chars() {
                match c {
                    '\\' => self.out.push_str("\\\\"),
                    '"' => self.out.push_str("\\\""),
                    '\n' => self.out.push_str("\\n"),
                    c => self.out.push(c),
                }
            }
            self.out.push('"');
        }
        if let Some(le) = le {
            if !labels.is_empty() {
                self.out.push(',');
            }
            self.out.push_str("le=\"");
            push_float(&mut self.out, le);
            self.out.push('"');
        }
        self.out.push('}');
    }

    /// `name_bucket{le=...}` lines (cumulative), then `name_sum` and `name_count`. OpenMetrics
    /// allows `_count` only together with `_sum`.
    fn histogram(
        &mut self,
        name: &str,
        labels: &[(&str, &str)],
        hist: &HistSample<'_>,
        buckets: Buckets,
    ) {
        let bucket = format!("{name}_bucket");
        let mut cumulative = 0u64;
        for (slot, n) in hist.slots.slots.iter().enumerate() {
            cumulative += n;
            if slot < buckets.first || slot > buckets.last {
                continue;
            }
            let le = Log2::high(slot) as f64 / buckets.per_unit;
            self.out.push_str(&bucket);
            self.labels(labels, Some(le));
            let _ = writeln!(self.out, " {cumulative}");
        }
        self.out.push_str(&bucket);
        self.labels(labels, Some(f64::INFINITY));
        let _ = writeln!(self.out, " {cumulative}");
        if let Some(sum) = hist.sum {
            self.sample(
                &format!("{name}_sum"),
                labels,
                sum as f64 / buckets.per_unit,
            );
        }
        if hist.sum.is_some() || self.format == Format::Prometheus {
            self.sample(&format!("{name}_count"), labels, cumulative);
        }
    }

    /// The finished exposition (OpenMetrics ends with `# EOF`).
    fn finish(mut self) -> String {
        if self.format == Format::OpenMetrics {
            self.out.push_str("# EOF\n");
        }
        self.out
    }
}

/// One sample of a family: a value, or a histogram.
enum Sample {
    Value(Num),
    Hist {
        slots: Log2,
        sum: Option<u64>,
        buckets: Buckets,
    },
    Summary {
        sum: f64,
        count: u64,
    },
}

struct Family {
    name: &'static str,
    kind: Kind,
    help: &'static str,
    samples: Vec<(Vec<(&'static str, String)>, Sample)>,
}

/// Everything one scrape exposes, gathered family by family (samples of a family may come
/// from several collectors but are rendered together, as both formats require).
#[derive(Default)]
pub struct Scrape {
    families: Vec<Family>,
}

impl Scrape {
    pub fn new() -> Self {
        Self::default()
    }

    fn family(&mut self, name: &'static str, kind: Kind, help: &'static str) -> &mut Family {
        let index = match self.families.iter().position(|f| f.name == name) {
            Some(i) => i,
            None => {
                self.families.push(Family {
                    name,
                    kind,
                    help,
                    samples: Vec::new(),
                });
                self.families.len() - 1
            }
        };
        &mut self.families[index]
    }

    /// Declares a family even when it has no samples yet (so it shows with HELP and TYPE).
    pub fn declare(&mut self, name: &'static str, kind: Kind, help: &'static str) {
        self.family(name, kind, help);
    }

    /// A counter sample; `name` ends in `_total`.
    pub fn counter(
        &mut self,
        name: &'static str,
        help: &'static str,
        labels: Vec<(&'static str, String)>,
        value: impl Into<Num>,
    ) {
        self.value(Kind::Counter, name, help, labels, value.into());
    }

    pub fn gauge(
        &mut self,
        name: &'static str,
        help: &'static str,
        labels: Vec<(&'static str, String)>,
        value: impl Into<Num>,
    ) {
        self.value(Kind::Gauge, name, help, labels, value.into());
    }

    fn value(
        &mut self,
        kind: Kind,
        name: &'static str,
        help: &'static str,
        labels: Vec<(&'static str, String)>,
        value: Num,
    ) {
        self.family(name, kind, help)
            .samples
            .push((labels, Sample::Value(value)));
    }

    /// A histogram from log2 slots; `sum` is in the slots' unit (as `buckets.per_unit` converts).
    pub fn histogram(
        &mut self,
        name: &'static str,
        help: &'static str,
        labels: Vec<(&'static str, String)>,
        slots: Log2,
        sum: Option<u64>,
        buckets: Buckets,
    ) {
        let sample = Sample::Hist {
            slots,
            sum,
            buckets,
        };
        self.family(name, Kind::Histogram, help)
            .samples
            .push((labels, sample));
    }

    /// A summary without quantiles: `name_sum` (in the metric's unit) and `name_count`.
    pub fn summary(
        &mut self,
        name: &'static str,
        help: &'static str,
        labels: Vec<(&'static str, String)>,
        sum: f64,
        count: u64,
    ) {
        self.family(name, Kind::Summary, help)
            .samples
            .push((labels, Sample::Summary { sum, count }));
    }

    pub fn render(&self, format: Format) -> String {
        let mut w = Writer::new(format);
        for family in &self.families {
            w.family(family.name, family.kind, family.help);
            for (labels, sample) in &family.samples {
                let labels: Vec<(&str, &str)> =
                    labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
                match sample {
                    Sample::Value(v) => w.sample(family.name, &labels, *v),
                    Sample::Hist {
                        slots,
                        sum,
                        buckets,
                    } => w.histogram(
                        family.name,
                        &labels,
                        &HistSample { slots, sum: *sum },
                        *buckets,
                    ),
                    Sample::Summary { sum, count } => {
                        w.sample(&format!("{}_sum", family.name), &labels, *sum);
                        w.sample(&format!("{}_count", family.name), &labels, *count);
                    }
                }
            }
        }
        w.finish()
    }
}

/// A valid metric or label name part: `[a-zA-Z_][a-zA-Z0-9_]*`.
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_and_labels() {
        let mut w = Writer::new(Format::Prometheus);
        w.family("x_total", Kind::Counter, "Things.");
        w.sample("x_total", &[("comm", "a\"b\\c\nd")], 3u64);
        let text = w.finish();
        assert_eq!(
            text,
            "# HELP x_total Things.\n# TYPE x_total counter\nx_total{comm=\"a\\\"b\\\\c\\nd\"} 3\n"
        );
        let mut w = Writer::new(Format::OpenMetrics);
        w.family("x_total", Kind::Counter, "Things.");
        w.sample("x_total", &[], 0.5);
        assert_eq!(
            w.finish(),
            "# HELP x Things.\n# TYPE x counter\nx_total 0.5\n# EOF\n"
        );
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let mut h = Log2::new();
        for v in [1, 5, 1000, 1u64 << 40] {
            h.record(v);
        }
        let mut w = Writer::new(Format::Prometheus);
        w.family("h_seconds", Kind::Histogram, "H.");
        w.histogram(
            "h_seconds",
            &[("probe", "p")],
            &HistSample {
                slots: &h,
                sum: Some(1006 + (1 << 40)),
            },
            Buckets::nanoseconds(4, 1023),
        );
        let text = w.finish();
        let lines: Vec<&str> = text.lines().collect();
        // Slot 2 ([4, 7]) holds 1 and 5; slot 9 ([512, 1023]) adds 1000; +Inf has all four.
        assert_eq!(
            lines[2],
            "h_seconds_bucket{probe=\"p\",le=\"0.000000007\"} 2"
        );
        assert!(lines.contains(&"h_seconds_bucket{probe=\"p\",le=\"0.000001023\"} 3"));
        assert!(lines.contains(&"h_seconds_bucket{probe=\"p\",le=\"+Inf\"} 4"));
        assert!(lines.contains(&"h_seconds_count{probe=\"p\"} 4"));
        assert_eq!(lines.len(), 2 + 8 + 1 + 2);
    }

    #[test]
    fn summary_has_sum_and_count() {
        let mut s = Scrape::new();
        s.summary(
            "c_seconds",
            "C.",
            vec![("journal", "loop0-8".into())],
            0.5,
            3,
        );
        assert_eq!(
            s.render(Format::Prometheus),
            "# HELP c_seconds C.\n# TYPE c_seconds summary\n\
             c_seconds_sum{journal=\"loop0-8\"} 0.5\nc_seconds_count{journal=\"loop0-8\"} 3\n"
        );
        let b = Buckets::nanoseconds(1000, 10_000_000_000).microseconds();
        assert_eq!((b.first, b.last, b.per_unit), (0, 23, 1e6));
    }

    #[test]
    fn accept_header() {
        assert_eq!(
            Format::from_accept(
                "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
            ),
            Format::OpenMetrics
        );
        assert_eq!(Format::from_accept("text/plain"), Format::Prometheus);
        assert_eq!(Format::from_accept(""), Format::Prometheus);
        assert!(valid_name("nginx_requests") && !valid_name("9x") && !valid_name("a-b"));
    }
}
