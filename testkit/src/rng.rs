//! Pseudo-random numbers that repeat for a seed (event streams, fault timings): xorshift,
//! cheap and deterministic. Not for anything that must be unpredictable.

/// One xorshift64 step of `state` (which must not be 0), returning the new state.
pub fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// One xorshift step: pseudo-random but repeatable timings for fault tests.
pub fn next_random(state: &mut u64) -> u64 {
    xorshift(state)
}

/// xorshift64* over a seed: a stream of well-mixed numbers (the benchmarks' key streams).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A stream for `seed` (0 is replaced, xorshift's state must not be 0).
    pub fn new(seed: u64) -> Self {
        Self(if seed == 0 {
            0x9E37_79B9_7F4A_7C15
        } else {
            seed
        })
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}
