//! cpudist: not implemented yet.

use anyhow::{Result, bail};
use clap::Args;

#[derive(Args, Clone, Debug)]
pub struct CpudistArgs {}

pub async fn run(_args: CpudistArgs) -> Result<()> {
    bail!("cpudist is not implemented yet")
}
