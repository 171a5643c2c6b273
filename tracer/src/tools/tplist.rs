//! tplist: not implemented yet.

use anyhow::{Result, bail};
use clap::Args;

#[derive(Args, Clone, Debug)]
pub struct TplistArgs {}

pub async fn run(_args: TplistArgs) -> Result<()> {
    bail!("tplist is not implemented yet")
}
