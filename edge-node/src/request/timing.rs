//! Server-Timing (W3C): where the edge spent a request's time, per step, for the
//! browser's Performance API and the access log.

use std::{fmt::Write, time::Duration};

/// One step's time: `name;desc=…;dur=…` (milliseconds).
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub name: &'static str,
    pub desc: Option<&'static str>,
    pub dur: Duration,
}

/// The steps of one request, in the order they ran.
#[derive(Debug, Default)]
pub struct Timings(Vec<Timing>);

/// Steps that are not the edge's own work: the origin's and a function's time.
const AWAY: [&str; 2] = ["origin", "fn"];

impl Timings {
    pub fn record(&mut self, name: &'static str, desc: Option<&'static str>, dur: Duration) {
        self.0.push(Timing { name, desc, dur });
    }

    /// The header value: `edge` (the node's own time: `total` less the origin's and
    /// functions') first, then each step.
    pub fn header_value(&self, total: Duration) -> String {
        let away: Duration = self
            .0
            .iter()
            .filter(|t| AWAY.contains(&t.name))
            .map(|t| t.dur)
            .sum();
        let mut out = String::with_capacity(24 + 32 * self.0.len());
        push(&mut out, "edge", None, total.saturating_sub(away));
        for t in &self.0 {
            out.push_str(", ");
            push(&mut out, t.name, t.desc, t.dur);
        }
        out
    }
}

fn push(out: &mut String, name: &str, desc: Option<&str>, dur: Duration) {
    out.push_str(name);
    if let Some(d) = desc {
        // Descriptions are the node's own tokens (HIT, MISS, ...): no quoting needed.
        let _ = write!(out, ";desc={d}");
    }
    let _ = write!(out, ";dur={:.2}", dur.as_secs_f64() * 1000.0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edge_time_leaves_out_the_origin_and_functions() {
        let mut t = Timings::default();
        t.record("cache", Some("MISS"), Duration::from_micros(20));
        t.record("origin", None, Duration::from_micros(12_300));
        t.record("fn", None, Duration::from_micros(800));
        assert_eq!(
            t.header_value(Duration::from_micros(13_510)),
            "edge;dur=0.41, cache;desc=MISS;dur=0.02, origin;dur=12.30, fn;dur=0.80"
        );
    }

    #[test]
    fn no_steps_is_the_edge_alone() {
        assert_eq!(
            Timings::default().header_value(Duration::from_micros(1500)),
            "edge;dur=1.50"
        );
    }
}
