//! WebAssembly components (wasm32-wasip2), each set its own cargo workspace outside the
//! node's: the functions runtime's test components (`tests/components`, loaded by
//! edge-node's tests from `target/components/`) and the examples users start from
//! (`examples/functions`, built so they keep compiling; copied to
//! `target/components/examples/`).

use std::{fs, path::Path, process::Command};

use anyhow::{Context as _, Result, bail};

use crate::toolchain::{self, workspace_root};

const TARGET: &str = "wasm32-wasip2";

/// Builds both sets (release) and copies every `.wasm` where the tests look.
pub fn build_all() -> Result<()> {
    toolchain::ensure_wasm_target(TARGET)?;
    let root = workspace_root();
    let out = root.join("target/components");
    build(&root.join("tests/components"), "test", &out)?;
    build(
        &root.join("examples/functions"),
        "example",
        &out.join("examples"),
    )
}

/// `cargo build --release --target wasm32-wasip2` in `workspace`, with a target
/// directory of its own under target/wasm/ (whatever CARGO_TARGET_DIR says: these are
/// not host artifacts), then every component into `out`.
fn build(workspace: &Path, name: &str, out: &Path) -> Result<()> {
    let target_dir = workspace_root().join("target/wasm").join(name);
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!(
        "xtask: building the {name} components ({})",
        workspace.display()
    );
    let status = Command::new(cargo)
        .args(["build", "--release", "--target", TARGET, "--target-dir"])
        .arg(&target_dir)
        .current_dir(workspace)
        .status()
        .with_context(|| format!("cannot run cargo in {}", workspace.display()))?;
    if !status.success() {
        bail!("building the {name} components failed ({status})");
    }
    fs::create_dir_all(out)?;
    let built = target_dir.join(TARGET).join("release");
    let mut copied = 0;
    for entry in fs::read_dir(&built).with_context(|| format!("reading {}", built.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "wasm") {
            let to = out.join(path.file_name().expect("a file name"));
            fs::copy(&path, &to).with_context(|| format!("copying to {}", to.display()))?;
            copied += 1;
        }
    }
    eprintln!("xtask: {copied} {name} components in {}", out.display());
    Ok(())
}
