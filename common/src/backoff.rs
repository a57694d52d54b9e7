//! The one retry delay of every link Proofline owns (MQTT, Modbus TCP and RTU lines, serial
//! ports, Open Protocol controllers): jittered exponential backoff, so a plant full of stations
//! does not reconnect in lockstep after a broker or network outage.

use std::time::Duration;

/// Jittered exponential backoff: each failure doubles the delay up to the cap; a success resets.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max: max.max(min),
            next: min,
        }
    }

    /// The delay before the next attempt: between half and all of the current step.
    pub fn next_delay(&mut self) -> Duration {
        let step = self.next;
        self.next = (self.next * 2).min(self.max);
        let mut b = [0u8; 8];
        let r = getrandom::getrandom(&mut b).map_or(0, |_| u64::from_le_bytes(b));
        let half = step / 2;
        half + Duration::from_nanos(r % (half.as_nanos() as u64).max(1))
    }

    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_with_jitter_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(800));
        let d: Vec<_> = (0..6).map(|_| b.next_delay()).collect();
        for (i, cap) in [100u64, 200, 400, 800, 800, 800].iter().enumerate() {
            let ms = d[i].as_millis() as u64;
            assert!(ms >= cap / 2 && ms <= *cap, "step {i}: {ms} ms vs {cap}");
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
