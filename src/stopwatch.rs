//! How long each step of one operation took, for the log line that ends it: `berth run`'s
//! start is a dozen steps across berthd, the helper, systemd and machined, and this is how
//! an admin (and the benchmark's "where the time goes") sees which one is slow.

use std::fmt;
use std::time::{Duration, Instant};

/// Laps of one operation, in order.
#[derive(Debug)]
pub struct Stopwatch {
    started: Instant,
    last: Instant,
    laps: Vec<(&'static str, Duration)>,
}

impl Stopwatch {
    pub fn start() -> Self {
        let now = Instant::now();
        Self {
            started: now,
            last: now,
            laps: Vec::new(),
        }
    }

    /// Ends the lap of `step`, begun at the previous lap (or the start).
    pub fn lap(&mut self, step: &'static str) {
        let now = Instant::now();
        self.laps.push((step, now - self.last));
        self.last = now;
    }

    /// Time since the start.
    pub fn total(&self) -> Duration {
        self.last - self.started
    }
}

impl fmt::Display for Stopwatch {
    /// `12.3 ms: spawn 4.0, ids 1.2, …` (milliseconds).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.1} ms:", ms(self.total()))?;
        for (i, (step, took)) in self.laps.iter().enumerate() {
            let separator = if i == 0 { "" } else { "," };
            write!(f, "{separator} {step} {:.1}", ms(*took))?;
        }
        Ok(())
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn laps_are_listed_in_order_and_add_up_to_the_total() {
        let mut watch = Stopwatch::start();
        watch.lap("first");
        std::thread::sleep(Duration::from_millis(2));
        watch.lap("second");
        let text = watch.to_string();
        assert!(text.contains(": first "), "{text}");
        assert!(text.find("first") < text.find(", second "), "{text}");
        let sum: Duration = watch.laps.iter().map(|(_, d)| *d).sum();
        assert_eq!(sum, watch.total());
        assert!(watch.total() >= Duration::from_millis(2));
    }
}
