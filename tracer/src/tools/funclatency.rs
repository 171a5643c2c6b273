//! funclatency: not implemented yet.

use anyhow::{Result, bail};
use clap::Args;

#[derive(Args, Clone, Debug)]
pub struct FunclatencyArgs {}

pub async fn run(_args: FunclatencyArgs) -> Result<()> {
    bail!("funclatency is not implemented yet")
}
