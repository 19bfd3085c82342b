//! Retention of a partition store: the dedup window and `MAX_STORE_CAPACITY`.
//!
//! Stored keys begin with their event timestamp, so "forget everything older than T" is
//! one key range. Eviction drops whole SST files inside the range, writes one range
//! tombstone for the rest, and compacts the range without excluding background
//! compactions. None of this holds a lock that `check_and_insert` waits on, so a
//! background task can run it while the partition keeps consuming.

use rocksdb::{CompactOptions, ReadOptions, WriteBatch};

use super::{PartitionStore, StoreError, CAPACITY_LOW_WATERMARK, KEYS_CF};
use crate::key::StoredKey;

/// What one retention pass did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Eviction {
    /// Keys with a timestamp before this (epoch ms) were evicted; `None` if nothing was.
    pub cutoff_ms: Option<i64>,
    /// Keys removed by this pass.
    pub keys_evicted: u64,
    /// Whether the capacity bound (rather than only the window) set the cutoff.
    pub by_capacity: bool,
    /// Live SST bytes before and after the pass.
    pub size_before: u64,
    pub size_after: u64,
}

impl PartitionStore {
    /// Evicts keys older than the dedup window (measured back from `now_ms`, event time)
    /// and, if the store is above `MAX_STORE_CAPACITY`, the oldest timestamps until it is
    /// back under the low watermark. Blocks the calling thread for the compaction of the
    /// evicted range; call it from a background task, not the consuming one.
    pub fn enforce_retention(&self, now_ms: i64) -> Result<Eviction, StoreError> {
        let size_before = self.size_bytes()?;
        let window = &self.settings.dedup_window;
        let window_cutoff = (!window.is_zero()).then(|| {
            let window_ms = i64::try_from(window.as_millis()).unwrap_or(i64::MAX);
            now_ms.saturating_sub(window_ms)
        });
        let capacity = self.settings.max_capacity_bytes;
        let capacity_cutoff = if capacity > 0 && size_before > capacity {
            self.capacity_cutoff(size_before, capacity)?
        } else {
            None
        };
        let by_capacity = match (capacity_cutoff, window_cutoff) {
            (Some(c), Some(w)) => c > w,
            (Some(_), None) => true,
            _ => false,
        };
        let no_eviction = Eviction {
            size_before,
            size_after: size_before,
            ..Eviction::default()
        };
        let Some(cutoff_ms) = capacity_cutoff.max(window_cutoff) else {
            return Ok(no_eviction);
        };

        let start = StoredKey::lower_bound(i64::MIN);
        let end = StoredKey::lower_bound(cutoff_ms);
        let keys_evicted = self.count_keys_before(&end)?;
        if keys_evicted == 0 {
            return Ok(no_eviction);
        }
        self.evict_range(&start, &end)?;
        Ok(Eviction {
            cutoff_ms: Some(cutoff_ms),
            keys_evicted,
            by_capacity,
            size_before,
            size_after: self.size_bytes()?,
        })
    }

    fn evict_range(&self, start: &StoredKey, end: &StoredKey) -> Result<(), StoreError> {
        let keys_cf = self.cf(KEYS_CF)?;
        // Whole files first: the cheapest way to give space back.
        self.db
            .delete_file_in_range_cf(keys_cf, start, end)
            .map_err(|source| self.rocks_err(source))?;
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(keys_cf, start, end);
        self.db
            .write_opt(batch, &self.write_opts)
            .map_err(|source| self.rocks_err(source))?;
        let mut compact = CompactOptions::default();
        // Do not hold back automatic compactions meanwhile: that could stall writes.
        compact.set_exclusive_manual_compaction(false);
        self.db
            .compact_range_cf_opt(keys_cf, Some(start), Some(end), &compact);
        Ok(())
    }

    /// Keys strictly before `end`, counted without filling the block cache.
    fn count_keys_before(&self, end: &StoredKey) -> Result<u64, StoreError> {
        let mut opts = ReadOptions::default();
        opts.fill_cache(false);
        opts.set_iterate_upper_bound(end.as_ref().to_vec());
        let mut iter = self.db.raw_iterator_cf_opt(self.cf(KEYS_CF)?, opts);
        iter.seek_to_first();
        let mut count = 0;
        while iter.valid() {
            count += 1;
            iter.next();
        }
        iter.status().map_err(|source| self.rocks_err(source))?;
        Ok(count)
    }

    /// The timestamp before which enough of the oldest keys lie to bring the store from
    /// `size` to the low watermark of `capacity`. Whole timestamps are evicted together.
    fn capacity_cutoff(&self, size: u64, capacity: u64) -> Result<Option<i64>, StoreError> {
        let target = (capacity as f64 * CAPACITY_LOW_WATERMARK) as u64;
        let keys = self.estimated_keys()?.max(1);
        let bytes_per_key = size as f64 / keys as f64;
        let to_evict = ((size - target.min(size)) as f64 / bytes_per_key).ceil() as u64;

        let mut opts = ReadOptions::default();
        opts.fill_cache(false);
        let mut iter = self.db.raw_iterator_cf_opt(self.cf(KEYS_CF)?, opts);
        iter.seek_to_first();
        let mut counted = 0u64;
        let mut last_ts = None;
        while iter.valid() {
            let Some(key) = iter.key().and_then(StoredKey::from_slice) else {
                return Err(StoreError::Corrupt {
                    path: self.path.clone(),
                    detail: "a key of the wrong width in the keys family".into(),
                });
            };
            let ts = key.timestamp_ms();
            if counted >= to_evict && last_ts != Some(ts) {
                return Ok(Some(ts));
            }
            counted += 1;
            last_ts = Some(ts);
            iter.next();
        }
        iter.status().map_err(|source| self.rocks_err(source))?;
        Ok(last_ts.map(|ts| ts.saturating_add(1)))
    }
}
