//! What a fresh machine lacks, installed on demand: the nightly `rust-src` component,
//! bpf-linker built against the Rust toolchain's own LLVM (no system LLVM needed), and
//! the Debian packages the tests and benchmarks drive.

use std::{
    env, fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

const BPF_LINKER_VERSION: &str = "0.13.0";
const CARGO_FUZZ_VERSION: &str = "0.13.2";
/// The wasmtime the functions benchmark compares against (`wasmtime serve`): the
/// release of the wasmtime crate edge-node embeds.
const WASMTIME_CLI_VERSION: &str = "48.0.8";

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

pub fn tools_dir() -> PathBuf {
    workspace_root().join(".tools")
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// A rustup/cargo command for the nightly toolchain, free of the variables cargo sets
/// for the stable toolchain that runs xtask.
pub fn nightly(program: &str) -> Command {
    let mut cmd = Command::new(program);
    for var in ["RUSTUP_TOOLCHAIN", "RUSTC", "CARGO", "RUSTC_WRAPPER"] {
        cmd.env_remove(var);
    }
    cmd
}

fn nightly_sysroot() -> Result<PathBuf> {
    let sysroot = output(nightly("rustc").args(["+nightly", "--print", "sysroot"]));
    match sysroot {
        Ok(s) => Ok(PathBuf::from(s)),
        Err(_) => {
            eprintln!("xtask: installing the nightly toolchain (the BPF target needs it)");
            run(nightly("rustup").args([
                "toolchain",
                "install",
                "nightly",
                "--profile",
                "minimal",
                "--component",
                "rust-src",
            ]))?;
            Ok(PathBuf::from(output(
                nightly("rustc").args(["+nightly", "--print", "sysroot"]),
            )?))
        }
    }
}

/// nightly + rust-src + bpf-linker in `.tools/bin`.
pub fn ensure_bpf_toolchain() -> Result<()> {
    let sysroot = nightly_sysroot()?;
    if !sysroot.join("lib/rustlib/src/rust/library/core").exists() {
        eprintln!("xtask: installing rust-src for nightly (-Z build-std=core needs it)");
        run(nightly("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))?;
    }
    let linker = tools_dir().join("bin").join("bpf-linker");
    if linker.is_file()
        && Command::new(&linker)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    {
        return Ok(());
    }
    // bpf-linker links LLVM dynamically; rustup's nightly ships a shared LLVM 22. Give the
    // build a prefix whose lib/ has the two names it needs: libLLVM.so for linking and
    // the soname for run time (found through the rpath bpf-linker's build sets).
    let llvm = find_rust_llvm(&sysroot)?;
    let prefix = tools_dir().join("llvm");
    let lib = prefix.join("lib");
    fs::create_dir_all(&lib)?;
    let soname = llvm.file_name().expect("file name").to_owned();
    for name in [std::ffi::OsStr::new("libLLVM.so"), soname.as_os_str()] {
        let link = lib.join(name);
        let _ = fs::remove_file(&link);
        symlink(&llvm, &link).with_context(|| format!("symlink {}", link.display()))?;
    }
    let major = llvm_major(&soname.to_string_lossy())?;
    eprintln!(
        "xtask: building bpf-linker {BPF_LINKER_VERSION} against {} into {} (about 90 s)",
        llvm.display(),
        tools_dir().display()
    );
    run(
        Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args([
                "install",
                &format!("bpf-linker@{BPF_LINKER_VERSION}"),
                "--locked",
                "--no-default-features",
                "--features",
                &format!("llvm-{major}"),
                "--root",
            ])
            .arg(tools_dir())
            .env("LLVM_PREFIX", &prefix),
    )
    .context(
        "building bpf-linker failed; it needs the nightly toolchain's shared LLVM \
         (lib/libLLVM.so.*-rust-* in its sysroot) and a C compiler",
    )?;
    Ok(())
}

/// The nightly toolchain and cargo-fuzz (in `.tools/bin`, project-local) for the fuzz
/// targets in fuzz/.
pub fn ensure_cargo_fuzz() -> Result<()> {
    nightly_sysroot()?;
    let bin = tools_dir().join("bin").join("cargo-fuzz");
    if bin.is_file()
        && Command::new(&bin)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    {
        return Ok(());
    }
    eprintln!(
        "xtask: installing cargo-fuzz {CARGO_FUZZ_VERSION} into {} (about 2 min)",
        tools_dir().display()
    );
    run(
        Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args([
                "install",
                &format!("cargo-fuzz@{CARGO_FUZZ_VERSION}"),
                "--locked",
                "--root",
            ])
            .arg(tools_dir()),
    )
    .context("installing cargo-fuzz failed")
}

/// wasmtime-cli (in `.tools/bin`, project-local) for the functions benchmark's `wasmtime
/// serve`.
pub fn ensure_wasmtime() -> Result<()> {
    let bin = tools_dir().join("bin").join("wasmtime");
    let wanted = format!("wasmtime {WASMTIME_CLI_VERSION}");
    if bin.is_file()
        && Command::new(&bin).arg("--version").output().is_ok_and(|o| {
            o.status.success() && String::from_utf8_lossy(&o.stdout).starts_with(&wanted)
        })
    {
        return Ok(());
    }
    eprintln!(
        "xtask: installing wasmtime-cli {WASMTIME_CLI_VERSION} into {} (about 20 min)",
        tools_dir().display()
    );
    run(
        Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args([
                "install",
                &format!("wasmtime-cli@{WASMTIME_CLI_VERSION}"),
                "--locked",
                "--root",
            ])
            .arg(tools_dir()),
    )
    .context("installing wasmtime-cli failed")
}

/// The Rust standard library for `target` (e.g. wasm32-wasip2, for the functions'
/// components) in the toolchain that runs us.
pub fn ensure_wasm_target(target: &str) -> Result<()> {
    let installed = output(Command::new("rustup").args(["target", "list", "--installed"]))?;
    if installed.lines().any(|l| l.trim() == target) {
        return Ok(());
    }
    eprintln!("xtask: rustup target add {target}");
    run(Command::new("rustup").args(["target", "add", target]))
}

/// The toolchain's own `libLLVM.so.<ver>-rust-<ver>` in `<sysroot>/lib`.
fn find_rust_llvm(sysroot: &Path) -> Result<PathBuf> {
    let lib = sysroot.join("lib");
    for entry in fs::read_dir(&lib).with_context(|| format!("reading {}", lib.display()))? {
        let path = entry?.path();
        let name = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .to_string();
        if name.starts_with("libLLVM.so.") && name.contains("-rust-") {
            return Ok(path);
        }
    }
    bail!(
        "no shared LLVM (libLLVM.so.*-rust-*) in {}: this nightly cannot host bpf-linker",
        lib.display()
    )
}

/// `libLLVM.so.22.1-rust-1.97.0-nightly` → 22.
fn llvm_major(soname: &str) -> Result<u32> {
    soname
        .trim_start_matches("libLLVM.so.")
        .split(['.', '-'])
        .next()
        .and_then(|m| m.parse().ok())
        .with_context(|| format!("cannot read the LLVM version from {soname}"))
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc_geteuid() == 0 }
}

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

fn have(binary: &str) -> bool {
    env::var_os("PATH")
        .map(|p| env::split_paths(&p).any(|d| d.join(binary).is_file()))
        .unwrap_or(false)
        || ["/usr/sbin", "/sbin"]
            .iter()
            .any(|d| Path::new(d).join(binary).is_file())
}

/// apt-installs the packages providing `wanted` binaries that are missing.
fn ensure_packages(wanted: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> = wanted
        .iter()
        .filter(|(bin, _)| !have(bin))
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        eprintln!(
            "xtask: missing packages {missing:?}; run as root (or `sudo apt-get install {}`) to install them",
            missing.join(" ")
        );
        return Ok(());
    }
    eprintln!("xtask: apt-get install {}", missing.join(" "));
    run(Command::new("apt-get")
        .args(["update", "-qq"])
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

/// What the test suite drives: ip (netns, veth), curl, nghttp (a second HTTP/2 client),
/// redis-server (the regional cache tier), chromium, pebble (the ACME test CA).
pub fn ensure_test_packages() -> Result<()> {
    ensure_packages(&[
        ("ip", "iproute2"),
        ("sysctl", "procps"),
        ("curl", "curl"),
        ("nghttp", "nghttp2-client"),
        ("systemd-analyze", "systemd"),
        ("openssl", "openssl"),
        // The package test builds and reads a .deb.
        ("dpkg-deb", "dpkg"),
        ("strip", "binutils"),
        ("python3", "python3"),
        // The challenge test: a real browser runs the proof-of-work page.
        ("chromium", "chromium"),
        // The regional cache tier: the tests start their own redis-server.
        ("redis-server", "redis-server"),
        // Automatic certificates: Pebble, the ACME test CA, and its DNS
        // (pebble-challtestsrv, from the same package).
        ("pebble", "pebble"),
    ])?;
    // The geo test writes its MaxMind database with an independent writer; the HTTP/3
    // tests speak through an independent client (aioquic); an intent test writes a
    // deliberately slow ONNX model (onnx).
    ensure_python_module("mmdb_writer", "mmdb-writer")?;
    ensure_python_module("aioquic", "aioquic")?;
    ensure_python_module("onnx", "onnx")?;
    // The trace tests' OTLP receiver decodes with the OpenTelemetry protobuf definitions.
    ensure_python_module(
        "opentelemetry.proto.collector.trace.v1.trace_service_pb2",
        "opentelemetry-proto",
    )
}

/// pip-installs `package` when `import module` fails.
fn ensure_python_module(module: &str, package: &str) -> Result<()> {
    let present = Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if present {
        return Ok(());
    }
    eprintln!("xtask: pip install {package}");
    run(Command::new("python3").args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "--root-user-action=ignore",
        package,
    ]))
}

/// What the benchmarks compare against and load with.
pub fn ensure_bench_packages() -> Result<()> {
    ensure_packages(&[
        ("ip", "iproute2"),
        ("xdp-filter", "xdp-tools"),
        ("iptables", "iptables"),
        ("nft", "nftables"),
        ("bpftool", "bpftool"),
        ("ethtool", "ethtool"),
    ])
}

/// What the proxy benchmark compares against (nginx, haproxy; nginx is also the origin)
/// and loads with (wrk for HTTP/1.1, h2load for HTTP/2).
pub fn ensure_proxy_bench_packages() -> Result<()> {
    ensure_packages(&[
        ("nginx", "nginx"),
        ("haproxy", "haproxy"),
        ("wrk", "wrk"),
        ("h2load", "nghttp2-client"),
    ])
}

/// What the cache benchmark adds to the proxy benchmark's packages: varnish (varnishd,
/// varnishstat), the second caching peer next to nginx proxy_cache.
pub fn ensure_cache_bench_packages() -> Result<()> {
    ensure_packages(&[("varnishd", "varnish")])
}

/// What the GraphQL benchmark loads the node with (wrk) and samples its answers with
/// (curl).
/// The compression benchmark's peer module: nginx's brotli filter (Debian's
/// libnginx-mod-http-brotli-filter; a module file, no binary to look for).
pub fn ensure_compression_bench_packages() -> Result<()> {
    let module = Path::new("/usr/lib/nginx/modules/ngx_http_brotli_filter_module.so");
    if module.is_file() {
        return Ok(());
    }
    if !is_root() {
        eprintln!(
            "xtask: {} missing; install libnginx-mod-http-brotli-filter",
            module.display()
        );
        return Ok(());
    }
    eprintln!("xtask: apt-get install libnginx-mod-http-brotli-filter");
    run(Command::new("apt-get")
        .args(["update", "-qq"])
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .arg("libnginx-mod-http-brotli-filter")
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

pub fn ensure_graphql_bench_packages() -> Result<()> {
    ensure_packages(&[("wrk", "wrk"), ("curl", "curl")])
}

/// What the KV benchmark compares against (redis-server, with redis-benchmark and
/// redis-cli from redis-tools) and loads edge-node with (wrk).
pub fn ensure_kv_bench_packages() -> Result<()> {
    ensure_packages(&[
        ("wrk", "wrk"),
        ("redis-server", "redis-server"),
        ("redis-benchmark", "redis-tools"),
        ("redis-cli", "redis-tools"),
    ])
}
