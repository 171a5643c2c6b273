//! offcputime: not implemented yet.

use anyhow::{Result, bail};
use clap::Args;

#[derive(Args, Clone, Debug)]
pub struct OffcputimeArgs {}

pub async fn run(_args: OffcputimeArgs) -> Result<()> {
    bail!("offcputime is not implemented yet")
}
