//! profile: not implemented yet.

use anyhow::{Result, bail};
use clap::Args;

#[derive(Args, Clone, Debug)]
pub struct ProfileArgs {}

pub async fn run(_args: ProfileArgs) -> Result<()> {
    bail!("profile is not implemented yet")
}

#[derive(Args, Clone, Debug)]
pub struct KstacksArgs {}

pub async fn run_kstacks(_args: KstacksArgs) -> Result<()> {
    bail!("kstacks is not implemented yet")
}
