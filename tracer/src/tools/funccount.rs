//! funccount: not implemented yet.

use anyhow::{Result, bail};
use clap::Args;

#[derive(Args, Clone, Debug)]
pub struct FunccountArgs {}

pub async fn run(_args: FunccountArgs) -> Result<()> {
    bail!("funccount is not implemented yet")
}
