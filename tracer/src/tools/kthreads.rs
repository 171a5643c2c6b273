//! kthreads: not implemented yet.

use anyhow::{Result, bail};
use clap::Args;

#[derive(Args, Clone, Debug)]
pub struct KthreadsArgs {}

pub async fn run(_args: KthreadsArgs) -> Result<()> {
    bail!("kthreads is not implemented yet")
}
