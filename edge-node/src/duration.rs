//! Durations in the config are human strings: "10s", "500ms", "2m", at most `MAX`.

use std::time::{Duration, Instant};

use serde::{Deserialize, Deserializer};

/// The longest duration any key takes (a year). Every consumer can add it to a clock
/// reading, multiply it by the small factors the code uses, and hand it to tokio,
/// moka and quinn (whose idle timeout must fit a 62-bit count of milliseconds).
pub const MAX: Duration = Duration::from_secs(365 * 24 * 3600);

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    let v = humantime::parse_duration(&s).map_err(|e| {
        serde::de::Error::custom(format!(
            "{s:?} is not a duration ({e}); write e.g. \"10s\" or \"500ms\""
        ))
    })?;
    if v > MAX {
        return Err(serde::de::Error::custom(format!(
            "{s:?} is longer than the longest duration accepted (365d)"
        )));
    }
    Ok(v)
}

/// `now + d`, saturating at `now + MAX` instead of panicking on an instant the clock
/// cannot represent (durations from elsewhere than this file are not bounded).
pub fn instant_after(now: Instant, d: Duration) -> Instant {
    now.checked_add(d)
        .or_else(|| now.checked_add(MAX))
        .unwrap_or(now)
}

/// An optional duration (`with = "crate::duration::option"`): absent is `None`.
pub mod option {
    use std::time::Duration;

    use serde::Deserializer;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        super::deserialize(d).map(Some)
    }
}
