//! Clock readings shared by modules that must agree on them (below every module that
//! reads a clock, so none depends on another for the time).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Time since the Unix epoch (zero on a clock set before it).
pub fn unix_time() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// Seconds since the Unix epoch (token and cookie expiries).
pub fn unix_now() -> u64 {
    unix_time().as_secs()
}

/// Milliseconds since the Unix epoch (stored expiries and write times).
pub fn unix_ms() -> u64 {
    unix_time().as_millis() as u64
}

/// Nanoseconds of CLOCK_MONOTONIC: the clock of `bpf_ktime_get_coarse_ns`.
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec; CLOCK_MONOTONIC always exists on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_MONOTONIC)");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readings_agree_with_std_and_do_not_go_back() {
        let before = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        let secs = unix_now();
        let after = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        assert!((before.as_secs()..=after.as_secs()).contains(&secs));
        let (a, b) = (now_ns(), now_ns());
        assert!(a > 0 && b >= a, "CLOCK_MONOTONIC never goes back");
    }
}
