//! trace: not implemented yet.

use anyhow::{Result, bail};
use clap::Args;

#[derive(Args, Clone, Debug)]
pub struct TraceArgs {}

pub async fn run(_args: TraceArgs) -> Result<()> {
    bail!("trace is not implemented yet")
}
