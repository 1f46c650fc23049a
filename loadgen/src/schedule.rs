//! When requests are due: the open-loop arrival schedule (constant or Poisson) of one
//! worker thread, and the small fast random generator used for it and for picking targets.
//!
//! Each thread offers `rate / threads`; the superposition of the threads' schedules is the
//! offered rate (and stays Poisson when each is Poisson). Due times are computed, never
//! measured, so a stalled server cannot push the schedule back (no coordinated omission).

use crate::config::Arrivals;

/// wyrand: a tiny, fast, statistically decent generator; not cryptographic.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }

    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0xA076_1D64_78BD_642F);
        let t = u128::from(self.0) * u128::from(self.0 ^ 0xE703_7ED1_A0B4_28DB);
        ((t >> 64) as u64) ^ (t as u64)
    }

    /// Uniform in [0, n).
    #[inline]
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in (0, 1].
    #[inline]
    pub fn unit(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }
}

/// The due times of one thread's open-loop requests, in nanoseconds on the run's clock.
#[derive(Debug, Clone)]
pub struct Schedule {
    next: f64,
    gap_ns: f64,
    arrivals: Arrivals,
    rng: Rng,
}

impl Schedule {
    /// Starts at `start_ns` with mean gap `1e9 / rate` (`rate` > 0).
    pub fn new(start_ns: u64, rate: f64, arrivals: Arrivals, seed: u64) -> Schedule {
        let mut s = Schedule {
            next: start_ns as f64,
            gap_ns: 1e9 / rate,
            arrivals,
            rng: Rng::new(seed),
        };
        if arrivals == Arrivals::Poisson {
            s.next += s.gap();
        }
        s
    }

    fn gap(&mut self) -> f64 {
        match self.arrivals {
            Arrivals::Constant => self.gap_ns,
            Arrivals::Poisson => -self.rng.unit().ln() * self.gap_ns,
        }
    }

    /// Due time of the next request.
    #[inline]
    pub fn peek(&self) -> u64 {
        self.next as u64
    }

    /// Takes every request due before `end` off the schedule; returns how many.
    pub fn skip_until(&mut self, end: u64) -> u64 {
        let end = end as f64;
        if self.next >= end {
            return 0;
        }
        match self.arrivals {
            Arrivals::Constant => {
                let n = ((end - self.next) / self.gap_ns).ceil();
                self.next += n * self.gap_ns;
                n as u64
            }
            Arrivals::Poisson => {
                let mut n = 0;
                while self.next < end {
                    self.next += self.gap();
                    n += 1;
                }
                n
            }
        }
    }

    /// Takes the next request off the schedule, returning its due time.
    #[inline]
    pub fn pop(&mut self) -> u64 {
        let due = self.next as u64;
        self.next += self.gap();
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_and_poisson_rates() {
        let mut c = Schedule::new(1000, 1000.0, Arrivals::Constant, 1);
        assert_eq!(c.pop(), 1000);
        assert_eq!(c.pop(), 1_001_000);
        let mut p = Schedule::new(0, 1000.0, Arrivals::Poisson, 7);
        let mut last = 0;
        for _ in 0..100_000 {
            last = p.pop();
        }
        // 100k arrivals at 1000/s take about 100 s.
        let secs = last as f64 / 1e9;
        assert!((98.0..102.0).contains(&secs), "{secs}");
        let mut c = Schedule::new(0, 1000.0, Arrivals::Constant, 1);
        assert_eq!(c.skip_until(10_000_001), 11);
        assert_eq!(c.peek(), 11_000_000);
        let mut r = Rng::new(3);
        assert!((0..1000).all(|_| r.below(6) < 6));
    }
}
