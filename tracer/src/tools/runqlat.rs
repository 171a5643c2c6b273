//! runqlat: not implemented yet.

use anyhow::{Result, bail};
use clap::Args;

#[derive(Args, Clone, Debug)]
pub struct RunqlatArgs {}

pub async fn run(_args: RunqlatArgs) -> Result<()> {
    bail!("runqlat is not implemented yet")
}
