//! Random world ids and numbers (1..=10000), without a syscall per draw.
//!
//! Each thread runs its own xorshift64* generator, seeded once from std's per-process
//! random keys. Benchmark ids need to be spread evenly, not to be unpredictable.

use std::cell::Cell;
use std::hash::{BuildHasher, Hasher};

thread_local! {
    static STATE: Cell<u64> = Cell::new(seed());
}

fn seed() -> u64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_usize(&STATE as *const _ as usize);
    hasher.finish() | 1
}

fn next_u64() -> u64 {
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        s.set(x);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    })
}

/// A uniformly drawn integer in 1..=10000: a world id or a new `randomNumber`.
pub fn world_number() -> i32 {
    // Multiply-shift maps the 32 high bits onto 0..10000 without modulo bias worth noting.
    (((next_u64() >> 32) * 10_000) >> 32) as i32 + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_cover_the_range_and_stay_inside_it() {
        let mut seen_low = false;
        let mut seen_high = false;
        for _ in 0..200_000 {
            let n = world_number();
            assert!((1..=10_000).contains(&n), "{n} outside 1..=10000");
            seen_low |= n <= 10;
            seen_high |= n >= 9_990;
        }
        assert!(
            seen_low && seen_high,
            "draws do not reach both ends of the range"
        );
    }
}
