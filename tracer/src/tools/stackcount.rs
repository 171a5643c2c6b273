//! stackcount: not implemented yet.

use anyhow::{Result, bail};
use clap::Args;

#[derive(Args, Clone, Debug)]
pub struct StackcountArgs {}

pub async fn run(_args: StackcountArgs) -> Result<()> {
    bail!("stackcount is not implemented yet")
}
