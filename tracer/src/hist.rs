//! Histograms read back from the kernel: summing per-CPU copies, interval deltas, BCC-style
//! text, JSON, and percentiles. Every tool that shows a distribution uses this.

use serde_json::{Value, json};
use tracer_common::hist::{LOG2_SLOTS, Log2Hist};

/// A log2 histogram in userspace: slot 0 = [0, 1], slot i = [2^i, 2^(i+1) - 1].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Log2 {
    pub slots: Vec<u64>,
}

impl Log2 {
    pub fn new() -> Self {
        Self {
            slots: vec![0; LOG2_SLOTS],
        }
    }

    /// Sums the per-CPU copies of one map value.
    pub fn from_per_cpu<'a>(values: impl IntoIterator<Item = &'a Log2Hist>) -> Self {
        let mut h = Self::new();
        for v in values {
            for (acc, x) in h.slots.iter_mut().zip(v.slots.iter()) {
                *acc += x;
            }
        }
        h
    }

    #[cfg(test)]
    pub fn record(&mut self, value: u64) {
        self.slots[tracer_common::hist::log2_slot(value) as usize] += 1;
    }

    pub fn merge(&mut self, other: &Self) {
        for (a, b) in self.slots.iter_mut().zip(&other.slots) {
            *a += b;
        }
    }

    /// `self - earlier`, for per-interval views of running totals.
    pub fn since(&self, earlier: &Self) -> Self {
        Self {
            slots: self
                .slots
                .iter()
                .zip(&earlier.slots)
                .map(|(a, b)| a.saturating_sub(*b))
                .collect(),
        }
    }

    pub fn count(&self) -> u64 {
        self.slots.iter().sum()
    }

    pub fn low(slot: usize) -> u64 {
        if slot == 0 { 0 } else { 1u64 << slot }
    }

    pub fn high(slot: usize) -> u64 {
        if slot >= 63 {
            u64::MAX
        } else {
            (1u64 << (slot + 1)) - 1
        }
    }

    /// Upper bound of the bucket holding the p-th percentile (0 < p <= 100).
    pub fn percentile(&self, p: f64) -> Option<u64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = ((p / 100.0) * total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, n) in self.slots.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(Self::high(i));
            }
        }
        None
    }

    /// BCC's layout: "     usecs : count  distribution" with 40-column bars.
    pub fn render(&self, unit: &str) -> String {
        let rows: Vec<(String, u64)> = self
            .used_range()
            .map(|r| {
                r.map(|i| {
                    (
                        format!("{} -> {}", Self::low(i), Self::high(i)),
                        self.slots[i],
                    )
                })
                .collect()
            })
            .unwrap_or_default();
        render_rows(unit, &rows)
    }

    fn used_range(&self) -> Option<std::ops::RangeInclusive<usize>> {
        let last = self.slots.iter().rposition(|&n| n > 0)?;
        Some(0..=last)
    }

    /// `{"unit": "usecs", "count": N, "buckets": [{"low", "high", "count"}...]}`, empty buckets
    /// after the last used one omitted.
    pub fn to_json(&self, unit: &str) -> Value {
        let buckets: Vec<Value> = self
            .used_range()
            .map(|r| {
                r.map(
                    |i| json!({"low": Self::low(i), "high": Self::high(i), "count": self.slots[i]}),
                )
                .collect()
            })
            .unwrap_or_default();
        json!({"unit": unit, "count": self.count(), "buckets": buckets})
    }
}

fn render_rows(unit: &str, rows: &[(String, u64)]) -> String {
    const WIDTH: u64 = 40;
    let max = rows.iter().map(|r| r.1).max().unwrap_or(0);
    let label_width = rows
        .iter()
        .map(|r| r.0.len())
        .max()
        .unwrap_or(0)
        .max(unit.len())
        .max(19);
    let mut text = format!("{unit:>label_width$} : count     distribution\n");
    for (label, n) in rows {
        let stars = if max == 0 {
            0
        } else {
            (n * WIDTH).div_ceil(max).min(WIDTH)
        } as usize;
        let stars = if *n == 0 { 0 } else { stars };
        text.push_str(&format!(
            "{label:>label_width$} : {n:<9} |{}{}|\n",
            "*".repeat(stars),
            " ".repeat(WIDTH as usize - stars)
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_render() {
        let mut h = Log2::new();
        for v in [1, 2, 3, 900, 1000, 1023] {
            h.record(v);
        }
        assert_eq!(h.count(), 6);
        assert_eq!(h.percentile(50.0), Some(3));
        assert_eq!(h.percentile(100.0), Some(1023));
        let text = h.render("usecs");
        assert!(text.contains("512 -> 1023"), "{text}");
        assert!(text.lines().nth(1).unwrap().contains("0 -> 1"));
        let json = h.to_json("usecs");
        assert_eq!(json["count"], 6);
    }

    #[test]
    fn interval_delta() {
        let mut a = Log2::new();
        a.record(5);
        let mut b = a.clone();
        b.record(5);
        b.record(100);
        assert_eq!(b.since(&a).count(), 2);
    }
}
