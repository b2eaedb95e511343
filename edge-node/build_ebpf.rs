//! Building a BPF crate of this workspace from a build script (shared by edge-node's
//! and edge-bench's build.rs through `#[path]`): checks the toolchain first, so a missing
//! piece is named with the command that installs it, then runs aya-build.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

/// Builds the binaries of workspace package `package` (in directory `dir`, relative to
/// the workspace root) for the BPF target into OUT_DIR.
pub fn build(package: &str, dir: &str) {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf();
    let tools_bin = workspace.join(".tools").join("bin");
    let missing = missing_tools(&tools_bin);
    if !missing.is_empty() {
        panic!(
            "\n\nBuilding the BPF programs of {package} needs:\n{}\n\
             Run `cargo xtask build-ebpf` once: it installs rust-src for nightly and builds \
             bpf-linker against the toolchain's own LLVM into .tools/ (no system LLVM needed).\n\
             To build without XDP instead (userspace enforcement only): EDGE_NODE_NO_XDP=1.\n\n",
            missing
                .iter()
                .map(|m| format!("  - {m}"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }

    // aya-build runs `rustup run nightly cargo build`, which finds bpf-linker on PATH.
    let path = env::var_os("PATH").unwrap_or_default();
    let mut paths = vec![tools_bin];
    paths.extend(env::split_paths(&path));
    // SAFETY: build scripts are single-threaded; nothing else reads the environment now.
    // Quiet: aya-build turns every line of the nested cargo's stderr into a warning that
    // cargo would replay on every build; errors still come through.
    unsafe {
        env::set_var("PATH", env::join_paths(paths).expect("PATH"));
        env::set_var("CARGO_TERM_QUIET", "true");
    }

    println!(
        "cargo:rerun-if-changed={}",
        workspace.join("edge-common").display()
    );
    let ebpf_dir = workspace.join(dir);
    let ebpf_dir = ebpf_dir.to_str().expect("utf-8 path");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: package,
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::Nightly,
    )
    .unwrap_or_else(|e| panic!("building the XDP program failed: {e:#}"));
}

/// What the BPF build lacks on this machine, each with how to get it.
fn missing_tools(tools_bin: &Path) -> Vec<String> {
    let mut missing = Vec::new();
    let sysroot = Command::new("rustc")
        .args(["+nightly", "--print", "sysroot"])
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTC")
        .output();
    match sysroot {
        Ok(out) if out.status.success() => {
            let sysroot = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            let core_src = sysroot.join("lib/rustlib/src/rust/library/core");
            if !core_src.exists() {
                missing.push(
                    "rust-src for nightly (`rustup component add rust-src --toolchain nightly`)"
                        .to_string(),
                );
            }
        }
        _ => missing.push(
            "the nightly toolchain (`rustup toolchain install nightly --component rust-src`)"
                .to_string(),
        ),
    }
    let on_path = env::var_os("PATH")
        .map(|p| env::split_paths(&p).any(|d| d.join("bpf-linker").is_file()))
        .unwrap_or(false);
    if !tools_bin.join("bpf-linker").is_file() && !on_path {
        missing.push(format!(
            "bpf-linker (in {} or on PATH; `cargo xtask build-ebpf` builds it)",
            tools_bin.display()
        ));
    }
    missing
}
