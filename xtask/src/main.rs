//! Project tasks: `cargo xtask <command>`. Each command installs what a fresh machine
//! lacks before doing its work, so the README's two commands work on a new host.

mod bench;
mod toolchain;

use std::process::Command;

use anyhow::{Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "edge-node project tasks")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install the BPF toolchain if missing (nightly rust-src, bpf-linker in .tools/) and
    /// build edge-node with its embedded XDP program.
    BuildEbpf {
        /// Build in release mode.
        #[arg(long)]
        release: bool,
    },
    /// Build and run the node (release) on the embedded default configuration, or with
    /// the arguments given after `--`.
    Run {
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Install test dependencies if missing and run every test. Privileged tests need root;
    /// with CI=true a skipped privileged test is a failure.
    Test {
        /// Extra arguments for `cargo test` (after `--`).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Install the system packages the tests and benchmarks use (apt, as root).
    Setup,
    /// Benchmarks, run side by side with their peers; results go to bench/RESULTS.md.
    #[command(subcommand)]
    Bench(bench::BenchCmd),
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Cmd::BuildEbpf { release } => {
            toolchain::ensure_bpf_toolchain()?;
            let mut args = vec!["build", "--package", "edge-node"];
            if release {
                args.push("--release");
            }
            cargo(&args)
        }
        Cmd::Run { args } => {
            toolchain::ensure_bpf_toolchain()?;
            let mut cmd = vec!["run", "--release", "--package", "edge-node", "--"];
            cmd.extend(args.iter().map(String::as_str));
            cargo(&cmd)
        }
        Cmd::Test { args } => {
            toolchain::ensure_test_packages()?;
            toolchain::ensure_bpf_toolchain()?;
            // The integration tests in tests/ drive the real edge-node binary.
            cargo(&["build", "--package", "edge-node", "--bins"])?;
            let mut cmd = vec![
                "test",
                "--workspace",
                "--exclude",
                "edge-ebpf",
                "--exclude",
                "edge-bench-ebpf",
            ];
            if !args.is_empty() {
                cmd.push("--");
                cmd.extend(args.iter().map(String::as_str));
            }
            cargo(&cmd)
        }
        Cmd::Setup => {
            toolchain::ensure_test_packages()?;
            toolchain::ensure_bench_packages()?;
            toolchain::ensure_proxy_bench_packages()?;
            toolchain::ensure_cache_bench_packages()
        }
        Cmd::Bench(cmd) => bench::run(cmd),
    }
}

/// Runs cargo (the one that runs us) in the workspace root.
pub fn cargo(args: &[&str]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(args)
        .current_dir(toolchain::workspace_root())
        .status()?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}
