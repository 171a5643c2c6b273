//! softirq_top: not implemented yet.

use anyhow::{Result, bail};
use clap::Args;

#[derive(Args, Clone, Debug)]
pub struct SoftirqTopArgs {}

pub async fn run(_args: SoftirqTopArgs) -> Result<()> {
    bail!("softirq_top is not implemented yet")
}
