//! Project tasks: `cargo xtask <command>`. Each command installs what a fresh machine
//! lacks before doing its work, so the README's two commands work on a new host.

mod bench;
mod components;
mod fuzz;
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
    /// Install test dependencies if missing and run every test, then every fuzz target
    /// for a few seconds. Privileged tests need root; with CI=true a skipped privileged
    /// test is a failure.
    Test {
        /// Seconds each fuzz target runs after the tests (0: no fuzzing).
        #[arg(long, default_value_t = 5)]
        fuzz_seconds: u64,
        /// Extra arguments for `cargo test` (after `--`).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Build the fuzz targets (cargo-fuzz, nightly; installed if missing) and run one,
    /// or all, for a bounded time.
    Fuzz {
        /// canonical_path, cache_key, cache_control, config or framing (all without).
        target: Option<String>,
        /// How long each target runs.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// quick: unoptimised, no sanitizer (about 6 min to build from cold, the test
        /// command's); thorough: optimised with AddressSanitizer (about 30 CPU-minutes).
        #[arg(long, value_enum, default_value_t = fuzz::Build::Quick)]
        build: fuzz::Build,
        /// Extra libFuzzer arguments (after `--`), e.g. `-jobs=2` or `-max_len=65536`;
        /// input files (a crash's) are run once each instead of fuzzing.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Build the WebAssembly components (wasm32-wasip2, installed if missing): the
    /// functions runtime's test components and the examples, into target/components/.
    BuildComponents,
    /// Build the release binary and its Debian package (deploy/debian/build-deb.sh)
    /// into target/package/.
    Package,
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
        Cmd::Test { fuzz_seconds, args } => {
            toolchain::ensure_test_packages()?;
            toolchain::ensure_bpf_toolchain()?;
            // The integration tests in tests/ drive the real edge-node binary.
            cargo(&["build", "--package", "edge-node", "--bins"])?;
            // edge-node's functions tests run real components from target/components/.
            components::build_all()?;
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
            // In CI a failing test's output ends with its panic message (what a log's
            // tail shows), not with a backtrace of the test harness.
            let backtrace = match std::env::var_os("CI") {
                Some(_) => "0",
                None => "",
            };
            cargo_with(&cmd, &[("RUST_BACKTRACE", backtrace)])?;
            if fuzz_seconds > 0 {
                fuzz::run_all(fuzz::Build::Quick, fuzz_seconds)?;
            }
            Ok(())
        }
        Cmd::Fuzz {
            target,
            seconds,
            build,
            args,
        } => match target {
            Some(t) => {
                fuzz::build(build)?;
                fuzz::run(&t, build, seconds, &args)
            }
            None if args.is_empty() => fuzz::run_all(build, seconds),
            None => bail!("libFuzzer arguments need a target"),
        },
        Cmd::BuildComponents => components::build_all(),
        Cmd::Package => {
            toolchain::ensure_bpf_toolchain()?;
            cargo(&["build", "--release", "--package", "edge-node", "--bins"])?;
            let root = toolchain::workspace_root();
            let status = Command::new(root.join("deploy/debian/build-deb.sh"))
                .arg(
                    std::env::var_os("CARGO_TARGET_DIR")
                        .map_or_else(|| root.join("target"), Into::into)
                        .join("release/edge-node"),
                )
                .arg(root.join("target/package"))
                .status()?;
            if !status.success() {
                bail!("deploy/debian/build-deb.sh failed ({status})");
            }
            Ok(())
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
    cargo_with(args, &[])
}

/// `cargo` with `env` set (an empty value leaves the variable as it is).
pub fn cargo_with(args: &[&str], env: &[(&str, &str)]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(args)
        .envs(env.iter().filter(|(_, v)| !v.is_empty()).copied())
        .current_dir(toolchain::workspace_root())
        .status()?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}
