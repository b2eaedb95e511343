pub fn run(_c: BenchCmd) -> anyhow::Result<()> {
    Ok(())
}
#[derive(clap::Subcommand)]
pub enum BenchCmd {
    Xdp,
}
