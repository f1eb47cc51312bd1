//! Value generators of the DEFAULT functions: `SNOWFLAKE_ID()`, `UUID_V7()`, `ULID()`
//! (sql.md §4). Each is strictly increasing on one node.

use std::sync::Mutex;

/// 2025-01-01T00:00:00Z in Unix milliseconds: the Snowflake epoch.
pub const SNOWFLAKE_EPOCH_MS: i64 = 1_735_689_600_000;
const SEQUENCE_BITS: u32 = 12;
const NODE_BITS: u32 = 10;
const MAX_SEQUENCE: u16 = (1 << SEQUENCE_BITS) - 1;

pub struct IdGenerators {
    node_id: u16,
    /// (last millisecond used, sequence within it).
    snowflake: Mutex<(i64, u16)>,
    ulid: Mutex<ulid::Generator>,
}

impl std::fmt::Debug for IdGenerators {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdGenerators").field("node_id", &self.node_id).finish_non_exhaustive()
    }
}

impl IdGenerators {
    /// `node_id` must be 0–1023 (validated with the configuration).
    pub fn new(node_id: u16) -> Self {
        Self {
            node_id: node_id & ((1 << NODE_BITS) - 1),
            snowflake: Mutex::new((0, 0)),
            ulid: Mutex::new(ulid::Generator::new()),
        }
    }

    /// bit 63 = 0, bits 62–22 = ms since the Snowflake epoch, 21–12 = node, 11–0 = sequence.
    /// A full millisecond waits for the next one; a clock that steps back keeps the last one.
    pub fn snowflake(&self) -> i64 {
        self.snowflake_at(|| chrono::Utc::now().timestamp_millis())
    }

    fn snowflake_at(&self, now_ms: impl Fn() -> i64) -> i64 {
        let mut state = self.snowflake.lock().unwrap_or_else(|p| p.into_inner());
        let (last_ms, seq) = *state;
        let mut ms = now_ms().max(last_ms);
        let mut next_seq = if ms == last_ms { seq + 1 } else { 0 };
        while next_seq > MAX_SEQUENCE {
            std::thread::yield_now();
            ms = now_ms().max(last_ms);
            next_seq = if ms == last_ms { MAX_SEQUENCE + 1 } else { 0 };
        }
        *state = (ms, next_seq);
        ((ms - SNOWFLAKE_EPOCH_MS) << (NODE_BITS + SEQUENCE_BITS))
            | (i64::from(self.node_id) << SEQUENCE_BITS)
            | i64::from(next_seq)
    }

    /// A lowercase RFC 9562 version-7 UUID, ordered within this process.
    pub fn uuid_v7(&self) -> String {
        uuid::Uuid::now_v7().to_string()
    }

    /// A 26-character ULID, monotonic within a millisecond.
    pub fn ulid(&self) -> String {
        let mut generator = self.ulid.lock().unwrap_or_else(|p| p.into_inner());
        match generator.generate() {
            Ok(u) => u.to_string(),
            // The 80 random bits overflowed within one millisecond: start a fresh one.
            Err(_) => ulid::Ulid::new().to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    #[test]
    fn snowflakes_increase_and_carry_the_node() {
        let ids = IdGenerators::new(5);
        let mut prev = ids.snowflake();
        assert_eq!((prev >> 12) & 0x3ff, 5);
        assert!(prev > 0);
        for _ in 0..10_000 {
            let next = ids.snowflake();
            assert!(next > prev);
            prev = next;
        }
    }

    #[test]
    fn a_clock_stepping_back_never_repeats_an_id() {
        let ids = IdGenerators::new(0);
        let clock = Cell::new(SNOWFLAKE_EPOCH_MS + 1_000);
        let a = ids.snowflake_at(|| clock.get());
        clock.set(SNOWFLAKE_EPOCH_MS + 500);
        let b = ids.snowflake_at(|| clock.get());
        assert!(b > a);
        assert_eq!(b >> 22, 1_000, "keeps the last millisecond");
    }

    #[test]
    fn uuids_and_ulids_have_their_shapes_and_order() {
        let ids = IdGenerators::new(0);
        let (u1, u2) = (ids.uuid_v7(), ids.uuid_v7());
        assert_eq!(u1.len(), 36);
        assert_eq!(&u1[14..15], "7");
        assert!(u2 > u1);
        let (a, b) = (ids.ulid(), ids.ulid());
        assert_eq!(a.len(), 26);
        assert!(b > a);
    }
}
