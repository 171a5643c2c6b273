//! Integration tests inside qemu on other kernels (not implemented yet).

use anyhow::Result;
use clap::Args;

#[derive(Args, Clone, Debug, Default)]
pub struct VmArgs {
    /// Which kernel(s) to boot.
    #[arg(long, default_value = "all")]
    pub kernel: String,
}

/// Runs the suite in each VM kernel and returns the summed tally.
pub fn vm_test(_args: &VmArgs) -> Result<crate::test::Tally> {
    println!("vm-test: not implemented yet");
    Ok(crate::test::Tally::default())
}
