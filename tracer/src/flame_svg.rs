//! Flame graphs as SVG (inferno): rendering folded lines, the `--svg FILE` target, and
//! differential graphs of two profiles — AFTER's shape coloured by the change (inferno's
//! difffolded), or with `negate` BEFORE's shape, so that what vanished is still drawn
//! (FlameGraph's `difffolded.pl` with swapped inputs and `flamegraph.pl --negate`).

use std::{
    fs::File,
    io::{BufWriter, Cursor, Write as _},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, anyhow};

use crate::stacks::OFFCPU_SUFFIX;

/// Two-count folded lines (`stack BEFORE AFTER`) for a differential graph drawn in AFTER's
/// shape, BEFORE scaled to AFTER's total so a busier AFTER run does not paint everything red.
pub fn diff_lines(before: &[String], after: &[String]) -> Result<Vec<String>> {
    Ok(diff_text(&before.join("\n"), &after.join("\n"))?
        .lines()
        .map(str::to_string)
        .collect())
}

/// `diff_lines` of two folded texts, as text.
pub fn diff_text(before: &str, after: &str) -> Result<String> {
    let mut diff = Vec::new();
    let options = inferno::differential::Options {
        normalize: true,
        strip_hex: false,
    };
    inferno::differential::from_readers(
        options,
        Cursor::new(before),
        Cursor::new(after),
        &mut diff,
    )
    .context("cannot compare the two profiles")?;
    Ok(String::from_utf8(diff)
        .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()))
}

/// How a graph is drawn.
#[derive(Clone, Copy, Debug, Default)]
pub struct Style {
    /// Two-count lines whose *first* count is the shape: the change is drawn negated, so red
    /// still means grew (lines from `diff_text(after, before)`).
    pub negate: bool,
}

/// Renders folded lines (one- or two-count) as an inferno flame graph into `writer`.
pub fn render_svg(
    lines: &[impl AsRef<str>],
    title: &str,
    count_name: &str,
    style: Style,
    writer: impl std::io::Write,
) -> std::io::Result<()> {
    let mut options = inferno::flamegraph::Options::default();
    options.title = title.to_string();
    options.count_name = count_name.to_string();
    options.negate_differentials = style.negate;
    let mut cold = cold_palette(lines);
    options.palette_map = cold.as_mut();
    inferno::flamegraph::from_lines(&mut options, lines.iter().map(AsRef::as_ref), writer)
}

/// Blue shades (FlameGraph's "io" palette range) for the `_[o]` frames of `lines`, so that a
/// hot/cold graph draws off-CPU time cold; None when there are none (every other frame keeps
/// the default warm palette either way).
fn cold_palette(lines: &[impl AsRef<str>]) -> Option<inferno::flamegraph::color::PaletteMap> {
    let mut palette = inferno::flamegraph::color::PaletteMap::default();
    // One substring search per line: most graphs have no off-CPU frames at all.
    for line in lines
        .iter()
        .map(AsRef::as_ref)
        .filter(|l| l.contains(OFFCPU_SUFFIX))
    {
        let frames = line.rsplit_once(' ').map_or(line, |(f, _)| f);
        for frame in frames.split(';').filter(|f| f.ends_with(OFFCPU_SUFFIX)) {
            if palette.get(frame).is_none() {
                // A stable shade per name, as FlameGraph's --hash does.
                let hash = frame
                    .bytes()
                    .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(b.into()));
                let v1 = (hash % 61) as u8;
                let v2 = ((hash / 61) % 56) as u8;
                palette.insert(
                    frame,
                    inferno::flamegraph::color::Color {
                        r: 80 + v1,
                        g: 80 + v1,
                        b: 190 + v2,
                    },
                );
            }
        }
    }
    let any = palette.iter().next().is_some();
    any.then_some(palette)
}

/// The `--svg FILE` target, opened before any tracing so a bad path fails at once.
pub struct SvgFile {
    path: PathBuf,
    file: File,
}

impl SvgFile {
    pub fn create(path: &Path) -> Result<Self> {
        let file = File::create(path)
            .with_context(|| format!("cannot write the flame graph to {}", path.display()))?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
        })
    }

    /// Renders folded lines with inferno. `title` should say what was sampled; `count_name`
    /// is the unit shown on hover ("samples", "us").
    pub fn write(self, lines: &[impl AsRef<str>], title: &str, count_name: &str) -> Result<()> {
        self.write_styled(lines, title, count_name, Style::default())
    }

    pub fn write_styled(
        self,
        lines: &[impl AsRef<str>],
        title: &str,
        count_name: &str,
        style: Style,
    ) -> Result<()> {
        let mut writer = BufWriter::new(self.file);
        let result = render_svg(lines, title, count_name, style, &mut writer);
        writer
            .flush()
            .with_context(|| format!("cannot write {}", self.path.display()))?;
        match result {
            Ok(()) => Ok(()),
            // inferno still wrote a valid SVG saying so.
            Err(_) if lines.is_empty() => {
                errln!(
                    "{}: no stacks were collected; the flame graph is empty",
                    self.path.display()
                );
                Ok(())
            }
            Err(e) => Err(anyhow!(
                "cannot write the flame graph to {}: {e}",
                self.path.display()
            )),
        }
    }
}
