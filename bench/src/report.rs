//! bench/RESULTS.md: each benchmark owns one section between markers, so benchmarks can
//! be rerun one at a time without losing the others' results.

use std::path::PathBuf;

use anyhow::Result;

pub fn results_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("RESULTS.md")
}

/// Replaces (or appends) the section `name` of RESULTS.md with `body`.
pub fn write_section(name: &str, body: &str) -> Result<()> {
    let path = results_path();
    let text = std::fs::read_to_string(&path).unwrap_or_else(|_| {
        "# Benchmark results\n\nWritten by `cargo xtask bench …`; every number here comes \
         from the command shown with it, run on the machine described with it. Peers run in \
         the same run, interleaved; figures are medians of the rounds.\n"
            .to_string()
    });
    let begin = format!("<!-- bench:{name}:begin -->");
    let end = format!("<!-- bench:{name}:end -->");
    let section = format!("{begin}\n{body}\n{end}");
    let new = match (text.find(&begin), text.find(&end)) {
        (Some(b), Some(e)) if e > b => {
            format!("{}{}{}", &text[..b], section, &text[e + end.len()..])
        }
        _ => format!("{}\n{}\n", text.trim_end(), section),
    };
    std::fs::write(&path, new)?;
    eprintln!("wrote section {name} of {}", path.display());
    Ok(())
}
