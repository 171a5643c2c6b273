//! profile benchmark (not implemented yet).

pub fn run() -> anyhow::Result<()> {
    println!("not implemented yet");
    Ok(())
}
