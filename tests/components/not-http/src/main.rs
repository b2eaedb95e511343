//! A command component (`wasi:cli/run`): valid, but it exports no HTTP handler.

fn main() {
    println!("not an HTTP handler");
}
