//! ktop: not implemented yet.

use anyhow::{Result, bail};
use clap::Args;

#[derive(Args, Clone, Debug)]
pub struct KtopArgs {}

pub async fn run(_args: KtopArgs) -> Result<()> {
    bail!("ktop is not implemented yet")
}
