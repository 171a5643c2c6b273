//! The end-of-run files a stack tool was asked for — `--svg FILE` (an inferno flame graph)
//! and `--pprof FILE` (a gzipped pprof profile) — opened together before tracing, so a path
//! that cannot be written fails at once, and written together from the same folded totals,
//! so both always show the same stacks.

use std::path::Path;

use anyhow::Result;

use crate::{
    flame_svg::SvgFile,
    frame_origins::FrameOrigins,
    pprof::{PprofFile, PprofKind},
};

pub struct StackFiles {
    pub svg: Option<SvgFile>,
    pub pprof: Option<PprofFile>,
}

impl StackFiles {
    pub fn open(svg: Option<&Path>, pprof: Option<&Path>) -> Result<Self> {
        Ok(Self {
            svg: svg.map(SvgFile::create).transpose()?,
            pprof: pprof.map(PprofFile::create).transpose()?,
        })
    }

    /// Whether the run must keep totals for either file.
    pub fn wanted(&self) -> bool {
        self.svg.is_some() || self.pprof.is_some()
    }

    /// Whether a pprof profile is asked for (symbols then record frame origins).
    pub fn pprof(&self) -> bool {
        self.pprof.is_some()
    }

    /// Writes both from folded lines: the SVG counts `count_name` per frame, the profile's
    /// values are `kind`; `origins` places the profile's frames in their binaries.
    pub fn write(
        self,
        lines: &[String],
        title: &str,
        count_name: &str,
        kind: PprofKind,
        origins: Option<&FrameOrigins>,
    ) -> Result<()> {
        if let Some(pprof) = self.pprof {
            pprof.write(lines, kind, title, origins)?;
        }
        if let Some(svg) = self.svg {
            svg.write(lines, title, count_name)?;
        }
        Ok(())
    }
}
