//! Durations in the config are human strings: "10s", "500ms", "2m".

use std::time::{Duration, Instant};

use serde::{Deserialize, Deserializer};

/// A year: what an expiry that cannot be represented saturates to.
pub const MAX: Duration = Duration::from_secs(365 * 24 * 3600);

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s).map_err(|e| {
        serde::de::Error::custom(format!(
            "{s:?} is not a duration ({e}); write e.g. \"10s\" or \"500ms\""
        ))
    })
}

/// `now + d`, saturating at `now + MAX` instead of panicking on an instant the clock
/// cannot represent (durations from elsewhere than this file are not bounded).
pub fn instant_after(now: Instant, d: Duration) -> Instant {
    now.checked_add(d)
        .or_else(|| now.checked_add(MAX))
        .unwrap_or(now)
}
