//! Exponential back-off with jitter, the one helper every retry in the gateway uses: a job step that
//! failed, a store call that failed, a delivery that failed, the change listener that lost its
//! connection. Each names its own [`Backoff`]; the shape is the same.

use std::time::Duration;

/// The back-off of a failed background step: from 1 s, doubling to about 4 min, within 10% either side.
/// Job steps, the change listener and the reads of a store's history wait this long.
pub const STEP: Backoff = Backoff {
    first: Duration::from_secs(1),
    doublings: 8,
    cap: Duration::from_secs(300),
    jitter: Jitter::Around,
};

/// Delays that double from `first` after each failure, at most `doublings` times and never beyond
/// `cap`, then spread by `jitter` so that what failed together does not retry together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub first: Duration,
    pub doublings: u32,
    pub cap: Duration,
    pub jitter: Jitter,
}

/// How a delay is spread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Jitter {
    /// Within 10% either side.
    Around,
    /// Up to 20% longer.
    Above,
    /// Anywhere from half the delay to the whole of it.
    Half,
}

impl Backoff {
    /// The delay after the `failures`-th failure in a row (the first failure is 1).
    pub fn delay(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(self.doublings).min(31);
        let base = (self.first.as_millis() as u64)
            .saturating_mul(1u64 << doublings)
            .min(self.cap.as_millis() as u64);
        let ms = match self.jitter {
            Jitter::Around => base - base / 10 + rand::random_range(0..=base / 5),
            Jitter::Above => {
                (base + rand::random_range(0..=base / 5)).min(self.cap.as_millis() as u64)
            }
            Jitter::Half => rand::random_range(base / 2..=base),
        };
        Duration::from_millis(ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_within_their_jitter() {
        let b = Backoff {
            first: Duration::from_secs(1),
            doublings: 16,
            cap: Duration::from_secs(60),
            jitter: Jitter::Around,
        };
        for _ in 0..100 {
            let one = b.delay(1).as_millis();
            assert!((900..=1100).contains(&one), "{one}");
            let three = b.delay(3).as_millis();
            assert!((3600..=4400).contains(&three), "{three}");
            let late = b.delay(40).as_millis();
            assert!((54_000..=66_000).contains(&late), "{late}");
            let above = Backoff {
                jitter: Jitter::Above,
                ..b
            };
            assert!((1000..=1200).contains(&above.delay(1).as_millis()));
            assert_eq!(
                above.delay(40),
                Duration::from_secs(60),
                "capped after jitter"
            );
            let half = Backoff {
                jitter: Jitter::Half,
                ..b
            };
            assert!((500..=1000).contains(&half.delay(1).as_millis()));
        }
        let few = Backoff { doublings: 2, ..b };
        assert!(
            few.delay(10) <= Duration::from_millis(4400),
            "at most two doublings"
        );
    }
}
