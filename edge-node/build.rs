//! Builds edge-node's XDP program (edge-ebpf) for the BPF target and puts the object in
//! OUT_DIR, where `xdp::loader` embeds it.
//!
//! The BPF build needs the nightly toolchain with `rust-src` and `bpf-linker`;
//! `cargo xtask build-ebpf` installs both (bpf-linker into `.tools/`, project-local).
//! `EDGE_NODE_NO_XDP=1` builds a node without the program: it then runs with userspace
//! enforcement only, as on a host where XDP cannot attach.

mod build_ebpf;

use std::{env, fs, path::PathBuf};

const OBJECT: &str = "edge-xdp";

fn main() {
    println!("cargo:rerun-if-env-changed=EDGE_NODE_NO_XDP");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    if env::var_os("EDGE_NODE_NO_XDP").is_some_and(|v| v == "1") {
        println!("cargo:warning=EDGE_NODE_NO_XDP=1: building edge-node without its XDP program");
        fs::write(out_dir.join(OBJECT), b"").expect("write empty object");
        return;
    }
    build_ebpf::build("edge-ebpf", "edge-ebpf");
}
