//! Clock readings shared by modules that must agree on them (below every module that
//! reads a clock, so none depends on another for the time).

/// Seconds since the Unix epoch (token and cookie expiries).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
