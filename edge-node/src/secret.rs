//! Secrets a configuration gives inline or in a file (its first line, trimmed: how
//! systemd credentials and mounted secrets come).

use std::path::Path;

use anyhow::{Context as _, Result, bail};

/// The secret of `inline` or `file` (setting both is an error), at least `min_len`
/// bytes; `None` without either. `inline_key` and `file_key` name the settings.
pub fn read(
    inline: Option<&str>,
    file: Option<&Path>,
    (inline_key, file_key): (&str, &str),
    min_len: usize,
) -> Result<Option<String>> {
    let secret = match (inline, file) {
        (Some(_), Some(_)) => bail!("set {inline_key} or {file_key}, not both"),
        (Some(s), None) => s.to_string(),
        (None, Some(f)) => std::fs::read_to_string(f)
            .with_context(|| format!("{file_key} {}", f.display()))?
            .lines()
            .next()
            .unwrap_or("")
            .trim()
            .to_string(),
        (None, None) => return Ok(None),
    };
    if secret.len() < min_len {
        bail!("{inline_key} must be at least {min_len} characters");
    }
    Ok(Some(secret))
}
