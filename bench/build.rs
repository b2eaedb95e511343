//! Builds the reference XDP programs (bench/ebpf) into OUT_DIR.

#[path = "../edge-node/build_ebpf.rs"]
mod build_ebpf;

fn main() {
    build_ebpf::build("edge-bench-ebpf", "bench/ebpf");
}
