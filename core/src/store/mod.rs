//! The per-partition deduplication store: one RocksDB instance per assigned partition,
//! at `{STORE_PATH}/{topic}_{partition}/`.
//!
//! Two column families:
//! - `keys`: [`StoredKey`] → the source offset (8 bytes, big-endian) of the key's first
//!   occurrence. Seeing a key again at that same offset is a redelivery of the original
//!   (after a crash or a rebalance), not a duplicate, so the original is published again
//!   and no unique event is lost whatever order store write, publish and commit happen in.
//! - `meta`: the next offset to consume and the store format. The next offset is written
//!   in the same write batch as the keys of the batch it follows, so the store (and every
//!   checkpoint of it) always knows which offset it is consistent with. Also the
//!   *finished* offset: every message below it had its outcome made final (published and
//!   acknowledged, or a known duplicate). The next offset does not mean that: keys are
//!   written before their messages are published.
//!
//! What this module does not do: talk to Kafka, decide what to publish, or schedule
//! retention. The pipeline calls [`PartitionStore::check_and_insert`] per batch and
//! [`PartitionStore::enforce_retention`] from a background task.

mod options;
mod recent_keys;
mod retention;

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use rocksdb::statistics::Ticker;
use rocksdb::{ColumnFamily, ColumnFamilyDescriptor, FlushOptions, WriteBatch, WriteOptions, DB};

use crate::key::StoredKey;
pub use options::{StoreResources, StoreSettings, CAPACITY_LOW_WATERMARK};
pub use retention::Eviction;

const KEYS_CF: &str = "keys";
const META_CF: &str = "meta";
const NEXT_OFFSET: &[u8] = b"next_offset";
const FINISHED_OFFSET: &[u8] = b"finished_offset";
const FORMAT: &[u8] = b"format";
/// Bumped when the meaning of stored bytes changes; a store of another format is refused.
const FORMAT_VERSION: u32 = 1;

/// What the store says about one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// First time this key is seen: publish it.
    Unique,
    /// The key was first seen at `first_offset`: drop this copy.
    Duplicate { first_offset: i64 },
    /// The key was first seen at this very offset: the original is being consumed again
    /// (after a crash or rebalance). Publish it again.
    Redelivery,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("RocksDB error in store {path}: {source}")]
    RocksDb {
        path: PathBuf,
        #[source]
        source: rocksdb::Error,
    },
    #[error("store {path} is corrupt: {detail}")]
    Corrupt { path: PathBuf, detail: String },
    #[error("store {path} has format {found}, this build reads format {FORMAT_VERSION}")]
    Format { path: PathBuf, found: String },
}

/// The deduplication state of one Kafka partition.
pub struct PartitionStore {
    db: DB,
    /// Held by every write (`check_and_insert`, `record_next_offset`) and by checkpoint
    /// creation, so that a checkpoint is consistent with the offset it records.
    recent: Mutex<recent_keys::RecentKeys>,
    path: PathBuf,
    settings: StoreSettings,
    /// Kept for its statistics object, which the open database shares.
    db_opts: rocksdb::Options,
    write_opts: WriteOptions,
}

impl PartitionStore {
    /// The directory of a partition's store under the store base path.
    pub fn dir_for(base: &Path, topic: &str, partition: i32) -> PathBuf {
        base.join(format!("{topic}_{partition}"))
    }

    /// Opens (creating if missing) the store at `path`.
    pub fn open(
        path: impl Into<PathBuf>,
        settings: &StoreSettings,
        resources: &StoreResources,
    ) -> Result<Self, StoreError> {
        let path = path.into();
        let db_opts = options::db_options(resources);
        let families = [
            ColumnFamilyDescriptor::new(KEYS_CF, options::keys_cf_options(resources)),
            ColumnFamilyDescriptor::new(META_CF, options::meta_cf_options(resources)),
        ];
        let db = DB::open_cf_descriptors(&db_opts, &path, families).map_err(|source| {
            StoreError::RocksDb {
                path: path.clone(),
                source,
            }
        })?;
        let mut write_opts = WriteOptions::default();
        write_opts.disable_wal(!settings.wal);
        let store = Self {
            db,
            recent: Mutex::new(recent_keys::RecentKeys::new(settings.recent_keys)),
            path,
            settings: settings.clone(),
            db_opts,
            write_opts,
        };
        store.check_format()?;
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn settings(&self) -> &StoreSettings {
        &self.settings
    }

    /// Classifies every message of a batch and records the new keys and `next_offset`
    /// in one atomic write. `batch` holds `(key, source offset)` in consumption order;
    /// the outcomes come back in the same order. A key repeated inside the batch is a
    /// duplicate of its first occurrence in the batch.
    pub fn check_and_insert(
        &self,
        batch: &[(StoredKey, i64)],
        next_offset: i64,
    ) -> Result<Vec<Outcome>, StoreError> {
        self.check_and_insert_finishing(batch, next_offset, None)
    }

    /// [`check_and_insert`](Self::check_and_insert), also recording `finished` (see
    /// [`record_finished_offset`](Self::record_finished_offset)) in the same write, so
    /// that a moving finished offset costs no write of its own.
    pub fn check_and_insert_finishing(
        &self,
        batch: &[(StoredKey, i64)],
        next_offset: i64,
        finished: Option<i64>,
    ) -> Result<Vec<Outcome>, StoreError> {
        // Slot of each message's key among the batch's distinct keys, and the position of
        // each distinct key's first occurrence.
        let mut slot_of_key: HashMap<StoredKey, usize, BuildHasherDefault<KeyHasher>> =
            HashMap::with_capacity_and_hasher(batch.len(), Default::default());
        let mut first_positions: Vec<usize> = Vec::with_capacity(batch.len());
        let slots: Vec<usize> = batch
            .iter()
            .enumerate()
            .map(|(position, (key, _))| {
                *slot_of_key.entry(*key).or_insert_with(|| {
                    first_positions.push(position);
                    first_positions.len() - 1
                })
            })
            .collect();

        // Recently seen keys are answered from memory; the rest in one multi-get.
        let mut recent = self.recent();
        let mut stored_offsets: Vec<Option<i64>> = first_positions
            .iter()
            .map(|&p| recent.get(&batch[p].0))
            .collect();
        let misses: Vec<usize> = (0..first_positions.len())
            .filter(|&slot| stored_offsets[slot].is_none())
            .collect();
        let keys_cf = self.cf(KEYS_CF)?;
        let found = self.db.batched_multi_get_cf(
            keys_cf,
            misses.iter().map(|&slot| &batch[first_positions[slot]].0),
            false,
        );
        for (&slot, value) in misses.iter().zip(found) {
            let value = value.map_err(|source| self.rocks_err(source))?;
            if let Some(bytes) = value {
                let offset = self.decode_offset(&bytes)?;
                stored_offsets[slot] = Some(offset);
                recent.insert(batch[first_positions[slot]].0, offset);
            }
        }

        let mut write = WriteBatch::default();
        let mut outcomes = Vec::with_capacity(batch.len());
        for (position, (key, offset)) in batch.iter().enumerate() {
            let slot = slots[position];
            let first_offset = match stored_offsets[slot] {
                Some(stored) => stored,
                None if first_positions[slot] == position => {
                    write.put_cf(keys_cf, key, offset.to_be_bytes());
                    outcomes.push(Outcome::Unique);
                    continue;
                }
                None => batch[first_positions[slot]].1,
            };
            outcomes.push(if first_offset == *offset {
                Outcome::Redelivery
            } else {
                Outcome::Duplicate { first_offset }
            });
        }
        let meta_cf = self.cf(META_CF)?;
        write.put_cf(meta_cf, NEXT_OFFSET, next_offset.to_be_bytes());
        if let Some(finished) = finished {
            write.put_cf(meta_cf, FINISHED_OFFSET, finished.to_be_bytes());
        }
        self.db
            .write_opt(write, &self.write_opts)
            .map_err(|source| self.rocks_err(source))?;
        // Only once the keys are written: the cache never knows more than the store.
        for (slot, &position) in first_positions.iter().enumerate() {
            if stored_offsets[slot].is_none() {
                recent.insert(batch[position].0, batch[position].1);
            }
        }
        Ok(outcomes)
    }

    /// Records the next offset to consume without any key, e.g. after a batch made only
    /// of malformed messages.
    pub fn record_next_offset(&self, next_offset: i64) -> Result<(), StoreError> {
        let _writes = self.recent();
        self.db
            .put_cf_opt(
                self.cf(META_CF)?,
                NEXT_OFFSET,
                next_offset.to_be_bytes(),
                &self.write_opts,
            )
            .map_err(|source| self.rocks_err(source))
    }

    /// Forgets `key` if it was first seen at `offset`: its message could not be
    /// published and went to the dead-letter topic, so the event was never output, and
    /// replaying it from there must find it new. Returns whether it was forgotten.
    pub fn forget(&self, key: &StoredKey, offset: i64) -> Result<bool, StoreError> {
        let mut recent = self.recent();
        if self.first_offset(key)? != Some(offset) {
            return Ok(false);
        }
        self.db
            .delete_cf_opt(self.cf(KEYS_CF)?, key, &self.write_opts)
            .map_err(|source| self.rocks_err(source))?;
        recent.remove(key);
        Ok(true)
    }

    /// Records that every message below `offset` is finished: published and
    /// acknowledged, or a known duplicate. Written with the store's other metadata (and
    /// flushed with it), so a store never claims more than it had when it was flushed.
    pub fn record_finished_offset(&self, offset: i64) -> Result<(), StoreError> {
        let _writes = self.recent();
        self.db
            .put_cf_opt(
                self.cf(META_CF)?,
                FINISHED_OFFSET,
                offset.to_be_bytes(),
                &self.write_opts,
            )
            .map_err(|source| self.rocks_err(source))
    }

    /// The offset below which every message is known to be finished, if one was recorded.
    pub fn finished_offset(&self) -> Result<Option<i64>, StoreError> {
        let value = self
            .db
            .get_pinned_cf(self.cf(META_CF)?, FINISHED_OFFSET)
            .map_err(|source| self.rocks_err(source))?;
        value.map(|bytes| self.decode_offset(&bytes)).transpose()
    }

    /// The next offset to consume that this store is consistent with, if any batch was
    /// ever recorded.
    pub fn next_offset(&self) -> Result<Option<i64>, StoreError> {
        let value = self
            .db
            .get_pinned_cf(self.cf(META_CF)?, NEXT_OFFSET)
            .map_err(|source| self.rocks_err(source))?;
        value.map(|bytes| self.decode_offset(&bytes)).transpose()
    }

    /// The source offset at which `key` was first seen, if it is in the store.
    pub fn first_offset(&self, key: &StoredKey) -> Result<Option<i64>, StoreError> {
        let value = self
            .db
            .get_pinned_cf(self.cf(KEYS_CF)?, key)
            .map_err(|source| self.rocks_err(source))?;
        value.map(|bytes| self.decode_offset(&bytes)).transpose()
    }

    /// Writes every memtable to disk, both families in one atomic flush. A checkpoint or a
    /// clean close calls this first, since the store runs without a WAL by default.
    pub fn flush(&self) -> Result<(), StoreError> {
        let mut opts = FlushOptions::default();
        opts.set_wait(true);
        let families = [self.cf(KEYS_CF)?, self.cf(META_CF)?];
        self.db
            .flush_cfs_opt(&families, &opts)
            .map_err(|source| self.rocks_err(source))
    }

    /// Creates a RocksDB checkpoint (hard links) of the store in `dir`, which must not
    /// exist yet, and returns the next offset it is consistent with. Writes wait for the
    /// duration of the flush and the checkpoint call, nothing longer.
    pub fn create_checkpoint(&self, dir: &Path) -> Result<Option<i64>, StoreError> {
        let _writes = self.recent();
        let next_offset = self.next_offset()?;
        self.flush()?;
        rocksdb::checkpoint::Checkpoint::new(&self.db)
            .and_then(|checkpoint| checkpoint.create_checkpoint(dir))
            .map_err(|source| self.rocks_err(source))?;
        Ok(next_offset)
    }

    /// Flushes and closes the store.
    pub fn close(self) -> Result<(), StoreError> {
        self.flush()
    }

    /// Bytes of live SST files of the keys family: what `MAX_STORE_CAPACITY` bounds.
    pub fn size_bytes(&self) -> Result<u64, StoreError> {
        self.int_property(KEYS_CF, "rocksdb.live-sst-files-size")
    }

    /// RocksDB's estimate of the number of keys in the store.
    pub fn estimated_keys(&self) -> Result<u64, StoreError> {
        self.int_property(KEYS_CF, "rocksdb.estimate-num-keys")
    }

    /// Lookups answered "absent" by a bloom filter without reading a data block.
    pub fn bloom_filter_useful(&self) -> u64 {
        self.db_opts.get_ticker_count(Ticker::BloomFilterUseful)
    }

    /// Data blocks read from disk or the block cache for lookups.
    pub fn block_reads(&self) -> u64 {
        self.db_opts.get_ticker_count(Ticker::BlockCacheDataMiss)
            + self.db_opts.get_ticker_count(Ticker::BlockCacheDataHit)
    }

    fn int_property(&self, cf: &str, name: &str) -> Result<u64, StoreError> {
        Ok(self
            .db
            .property_int_value_cf(self.cf(cf)?, name)
            .map_err(|source| self.rocks_err(source))?
            .unwrap_or(0))
    }

    fn check_format(&self) -> Result<(), StoreError> {
        let meta = self.cf(META_CF)?;
        let found = self
            .db
            .get_cf(meta, FORMAT)
            .map_err(|source| self.rocks_err(source))?;
        match found {
            None => self
                .db
                .put_cf_opt(meta, FORMAT, FORMAT_VERSION.to_be_bytes(), &self.write_opts)
                .map_err(|source| self.rocks_err(source)),
            Some(bytes) if bytes == FORMAT_VERSION.to_be_bytes() => Ok(()),
            Some(bytes) => Err(StoreError::Format {
                path: self.path.clone(),
                found: format!("{bytes:02x?}"),
            }),
        }
    }

    fn recent(&self) -> MutexGuard<'_, recent_keys::RecentKeys> {
        self.recent
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn cf(&self, name: &str) -> Result<&ColumnFamily, StoreError> {
        self.db.cf_handle(name).ok_or_else(|| StoreError::Corrupt {
            path: self.path.clone(),
            detail: format!("column family `{name}` is missing"),
        })
    }

    fn decode_offset(&self, bytes: &[u8]) -> Result<i64, StoreError> {
        let array: [u8; 8] = bytes.try_into().map_err(|_| StoreError::Corrupt {
            path: self.path.clone(),
            detail: format!("offset value of {} bytes, expected 8", bytes.len()),
        })?;
        Ok(i64::from_be_bytes(array))
    }

    fn rocks_err(&self, source: rocksdb::Error) -> StoreError {
        StoreError::RocksDb {
            path: self.path.clone(),
            source,
        }
    }
}

/// Pass-through hasher for [`StoredKey`], whose `Hash` writes one word of its hash.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Not reached for `StoredKey`; fold anything else deterministically.
        for &byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(byte);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

#[cfg(test)]
mod tests;
