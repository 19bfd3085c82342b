//! How a partition store is tuned, and the memory all stores of a process share.
//!
//! The dedup workload is "most keys are new": nearly every lookup is for an absent key,
//! so the read path must be answered by a filter, never by a data block. Hence:
//! whole-key bloom filters on every level (not `optimize_filters_for_hits`, which drops
//! the filter on the last level, where most absent keys would then cost a block read),
//! a bloom filter in the memtable too, and filters pinned in the shared block cache at
//! high priority so they are not evicted by data blocks.
//!
//! Options are given to each column family explicitly (`open_cf_descriptors`); a family
//! opened with default options would silently run without filters.

use std::time::Duration;

use rocksdb::{BlockBasedOptions, Cache, DBCompressionType, LogLevel, Options, WriteBufferManager};

/// Bits per key of the bloom filters: about 1 % false positives.
const BLOOM_BITS_PER_KEY: f64 = 10.0;
/// Size of one memtable. Keys are 24 bytes and values 8, so one holds about 250k keys.
const MEMTABLE_BYTES: usize = 16 << 20;
/// Fraction of the memtable given to its bloom filter.
const MEMTABLE_BLOOM_RATIO: f64 = 0.05;

/// Tuning of the partition stores that a user may change.
#[derive(Debug, Clone, PartialEq)]
pub struct StoreSettings {
    /// Keys older than this by event time are evicted (`DEDUP_WINDOW`, default 24h).
    /// Zero disables the window.
    pub dedup_window: Duration,
    /// Upper bound of a partition store's live SST bytes (`MAX_STORE_CAPACITY`);
    /// 0 means unlimited. When exceeded, the oldest timestamps are evicted until the
    /// store is back under [`CAPACITY_LOW_WATERMARK`] of it.
    pub max_capacity_bytes: u64,
    /// Write RocksDB's write-ahead log (`STORE_WAL`, default off). Off is safe: the store
    /// records keys and next offset in one batch and flushes them atomically, so after a
    /// crash it reopens at an earlier consistent point and catch-up replay fills the gap.
    pub wal: bool,
    /// Keys kept in memory per store to answer duplicates of recent events without a
    /// RocksDB lookup (`STORE_RECENT_KEYS`, default 65536, about 4 MiB; 0 disables).
    pub recent_keys: usize,
}

/// After a capacity eviction the store aims at this fraction of `MAX_STORE_CAPACITY`,
/// so that evictions come in chunks rather than on every batch.
pub const CAPACITY_LOW_WATERMARK: f64 = 0.9;

impl StoreSettings {
    pub const DEFAULT_RECENT_KEYS: usize = 65_536;
}

impl Default for StoreSettings {
    fn default() -> Self {
        Self {
            dedup_window: Duration::from_secs(24 * 3600),
            max_capacity_bytes: 0,
            wal: false,
            recent_keys: Self::DEFAULT_RECENT_KEYS,
        }
    }
}

/// Memory shared by every partition store of a process: one block cache (data, index and
/// filter blocks) and one budget for memtables, so that memory use does not grow with the
/// number of assigned partitions.
#[derive(Clone)]
pub struct StoreResources {
    pub(crate) block_cache: Cache,
    pub(crate) write_buffers: WriteBufferManager,
}

impl StoreResources {
    /// Default block cache: 128 MiB (`STORE_BLOCK_CACHE_BYTES`).
    pub const DEFAULT_BLOCK_CACHE_BYTES: u64 = 128 << 20;
    /// Default memtable budget for all stores together: 64 MiB (`STORE_WRITE_BUFFER_BYTES`).
    pub const DEFAULT_WRITE_BUFFER_BYTES: u64 = 64 << 20;

    pub fn new(block_cache_bytes: u64, write_buffer_bytes: u64) -> Self {
        let block_cache = Cache::new_lru_cache(saturating_usize(block_cache_bytes));
        // No stall: when the budget is reached the largest memtable is flushed instead.
        let write_buffers = WriteBufferManager::new_write_buffer_manager(
            saturating_usize(write_buffer_bytes),
            false,
        );
        Self {
            block_cache,
            write_buffers,
        }
    }

    /// Bytes currently held by the shared block cache.
    pub fn block_cache_usage(&self) -> usize {
        self.block_cache.get_usage()
    }
}

impl Default for StoreResources {
    fn default() -> Self {
        Self::new(
            Self::DEFAULT_BLOCK_CACHE_BYTES,
            Self::DEFAULT_WRITE_BUFFER_BYTES,
        )
    }
}

fn saturating_usize(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// Options of the database as a whole.
pub(crate) fn db_options(resources: &StoreResources) -> Options {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    // Keys and next offset live in two families; without a WAL they must reach disk in
    // the same flush or a crash could leave keys without the offset they belong to.
    opts.set_atomic_flush(true);
    opts.set_write_buffer_manager(&resources.write_buffers);
    opts.set_max_background_jobs(2);
    opts.set_max_open_files(512);
    opts.set_keep_log_file_num(3);
    opts.set_max_log_file_size(4 << 20);
    opts.set_log_level(LogLevel::Warn);
    opts.enable_statistics();
    opts.set_statistics_level(rocksdb::statistics::StatsLevel::ExceptDetailedTimers);
    opts
}

/// Options of the family holding the deduplication keys.
pub(crate) fn keys_cf_options(resources: &StoreResources) -> Options {
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(&resources.block_cache);
    table.set_bloom_filter(BLOOM_BITS_PER_KEY, false);
    table.set_whole_key_filtering(true);
    table.set_cache_index_and_filter_blocks(true);
    table.set_cache_index_and_filter_blocks_with_high_priority(true);
    table.set_pin_l0_filter_and_index_blocks_in_cache(true);
    table.set_pin_top_level_index_and_filter(true);

    let mut opts = Options::default();
    opts.set_block_based_table_factory(&table);
    opts.set_optimize_filters_for_hits(false);
    opts.set_memtable_whole_key_filtering(true);
    opts.set_memtable_prefix_bloom_ratio(MEMTABLE_BLOOM_RATIO);
    opts.set_write_buffer_size(MEMTABLE_BYTES);
    opts.set_max_write_buffer_number(3);
    opts.set_level_compaction_dynamic_level_bytes(true);
    // Keys are hashes behind a timestamp: compression would cost CPU and save little.
    opts.set_compression_type(DBCompressionType::None);
    opts
}

/// Options of the small family holding the store's metadata (next offset, format).
pub(crate) fn meta_cf_options(resources: &StoreResources) -> Options {
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(&resources.block_cache);
    let mut opts = Options::default();
    opts.set_block_based_table_factory(&table);
    opts.set_write_buffer_size(1 << 20);
    opts
}
