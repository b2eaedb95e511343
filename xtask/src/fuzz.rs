//! The fuzz targets in `fuzz/` (cargo-fuzz, libFuzzer, nightly): built once, then each
//! run for a bounded time. `cargo xtask test` runs them all briefly after the other
//! tests; `cargo xtask fuzz TARGET --seconds N` runs one longer.
//!
//! Two builds. `Build::Quick` (what the test command uses): unoptimised, debug
//! assertions, no sanitizer: the whole node's dependency tree instrumented for coverage
//! took 5m47s of wall time (423 s CPU) from cold on the 2-core machine, and runs 800 to
//! 3 300 inputs/s. `Build::Thorough` (cargo-fuzz's defaults: optimised, debug
//! assertions, AddressSanitizer): 1 880 s CPU (36 min of wall time while others built)
//! from cold, 1.2 to 2x the inputs/s: for long runs by hand. They share fuzz/target
//! (debug/ and release/), so either is built once.
//!
//! Each run starts from the committed seeds (`fuzz/corpus/TARGET`, never written to)
//! and keeps what libFuzzer finds in `fuzz/target/corpus/TARGET` (scratch, not
//! committed); a crash leaves its input in `fuzz/artifacts/TARGET/` and fails the run.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, Result, bail};

use crate::toolchain;

/// Every target in fuzz/Cargo.toml.
pub const TARGETS: [&str; 6] = [
    "canonical_path",
    "cache_key",
    "cache_control",
    "config",
    "framing",
    "h2guard",
];

/// Memory one run may use: libFuzzer stops (as a failure) a target that grows past it.
const RSS_LIMIT_MB: u32 = 2048;
/// One input taking longer than this is a failure (a hang).
const INPUT_TIMEOUT_S: u32 = 10;

fn fuzz_dir() -> PathBuf {
    toolchain::workspace_root().join("fuzz")
}

/// How the targets are built.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Build {
    /// Unoptimised, no sanitizer: fast to build (the test command's).
    Quick,
    /// Optimised, with AddressSanitizer: slow to build, for long runs.
    Thorough,
}

impl Build {
    fn flags(self) -> &'static [&'static str] {
        match self {
            Build::Quick => &["--dev", "--sanitizer", "none"],
            Build::Thorough => &[],
        }
    }
}

/// `cargo +nightly fuzz ARGS` in fuzz/, with cargo-fuzz from .tools/ and a node built
/// without its XDP program (the BPF build has no place in a fuzz build).
fn cargo_fuzz(args: &[&str]) -> Command {
    let mut cmd = toolchain::nightly("cargo");
    // What `cargo run` set for xtask itself (CARGO_MANIFEST_DIR, CARGO_PKG_*, …): build
    // scripts that watch such variables (ring's) would otherwise rebuild half the tree
    // whenever the targets are built once through xtask and once by hand.
    for (var, _) in std::env::vars_os() {
        let name = var.to_string_lossy();
        if name.starts_with("CARGO_") && name != "CARGO_HOME" {
            cmd.env_remove(&var);
        }
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut paths = vec![toolchain::tools_dir().join("bin")];
    paths.extend(std::env::split_paths(&path));
    cmd.arg("+nightly")
        .arg("fuzz")
        .args(args)
        .current_dir(fuzz_dir())
        .env("PATH", std::env::join_paths(paths).expect("PATH"))
        .env("EDGE_NODE_NO_XDP", "1");
    cmd
}

/// Builds every target.
pub fn build(how: Build) -> Result<()> {
    toolchain::ensure_cargo_fuzz()?;
    let started = Instant::now();
    let mut args = vec!["build"];
    args.extend(how.flags());
    let status = cargo_fuzz(&args)
        .status()
        .context("cannot start cargo +nightly fuzz")?;
    if !status.success() {
        bail!("cargo +nightly fuzz build failed ({status})");
    }
    eprintln!(
        "xtask: fuzz targets built ({how:?}) in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Runs `target` for `seconds` (after `build`), with `extra` libFuzzer arguments.
pub fn run(target: &str, how: Build, seconds: u64, extra: &[String]) -> Result<()> {
    if !TARGETS.contains(&target) {
        bail!(
            "no fuzz target {target:?}; there are {}",
            TARGETS.join(", ")
        );
    }
    let seeds = fuzz_dir().join("corpus").join(target);
    let scratch = fuzz_dir().join("target").join("corpus").join(target);
    std::fs::create_dir_all(&scratch).with_context(|| format!("creating {}", scratch.display()))?;
    // Input files among the arguments (a crash's): run just those, once each.
    let files: Vec<String> = extra
        .iter()
        .filter(|a| !a.starts_with('-'))
        .map(|a| {
            std::fs::canonicalize(a)
                .map(|p| path_arg(&p))
                .with_context(|| format!("no input file {a}"))
        })
        .collect::<Result<_>>()?;
    let flags = extra.iter().filter(|a| a.starts_with('-')).cloned();
    let mut args: Vec<String> = vec!["run".into()];
    args.extend(how.flags().iter().map(|f| f.to_string()));
    args.push(target.into());
    if files.is_empty() {
        // New inputs go to the first directory only: the seeds stay as committed.
        args.extend([path_arg(&scratch), path_arg(&seeds)]);
    } else {
        args.extend(files.iter().cloned());
    }
    args.extend([
        "--".into(),
        format!("-max_total_time={seconds}"),
        format!("-rss_limit_mb={RSS_LIMIT_MB}"),
        format!("-timeout={INPUT_TIMEOUT_S}"),
        "-print_final_stats=1".into(),
    ]);
    args.extend(flags);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    eprintln!("xtask: fuzzing {target} for {seconds} s");
    let status = cargo_fuzz(&args)
        .status()
        .context("cannot start cargo +nightly fuzz")?;
    if !status.success() {
        bail!(
            "fuzz target {target} failed ({status}): the input is in fuzz/artifacts/{target}/; \
             reproduce with `cargo xtask fuzz {target} --build {} -- fuzz/artifacts/{target}/<file>`",
            match how {
                Build::Quick => "quick",
                Build::Thorough => "thorough",
            }
        );
    }
    Ok(())
}

fn path_arg(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// Builds and runs every target for `seconds` each; all run, and any failure fails.
pub fn run_all(how: Build, seconds: u64) -> Result<()> {
    build(how)?;
    let mut failed = Vec::new();
    for target in TARGETS {
        if let Err(e) = run(target, how, seconds, &[]) {
            eprintln!("xtask: {e:#}");
            failed.push(target);
        }
    }
    // The run's last line says what the fuzz step did, in the form CI reads.
    println!(
        "fuzz: {} passed, {} failed",
        TARGETS.len() - failed.len(),
        failed.len()
    );
    if !failed.is_empty() {
        bail!("fuzz targets failed: {}", failed.join(", "));
    }
    Ok(())
}
