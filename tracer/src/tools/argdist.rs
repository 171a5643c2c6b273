//! argdist: not implemented yet.

use anyhow::{Result, bail};
use clap::Args;

#[derive(Args, Clone, Debug)]
pub struct ArgdistArgs {}

pub async fn run(_args: ArgdistArgs) -> Result<()> {
    bail!("argdist is not implemented yet")
}
