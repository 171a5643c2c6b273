//! serve: not implemented yet.

use anyhow::{Result, bail};
use clap::Args;

#[derive(Args, Clone, Debug)]
pub struct ServeArgs {}

pub async fn run(_args: ServeArgs) -> Result<()> {
    bail!("serve is not implemented yet")
}
