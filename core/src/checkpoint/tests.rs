use std::time::Duration;

use super::*;
use crate::key::EventKey;
use crate::store::{Outcome, StoreResources, StoreSettings};

fn key(i: i64) -> crate::StoredKey {
    EventKey {
        timestamp_ms: i,
        distinct_id: "d",
        token: "t",
        event: "e",
    }
    .stored()
}

fn settings() -> StoreSettings {
    StoreSettings {
        dedup_window: Duration::ZERO,
        ..StoreSettings::default()
    }
}

fn open_store(path: &Path) -> PartitionStore {
    PartitionStore::open(path, &settings(), &StoreResources::default()).unwrap()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

#[test]
fn a_checkpoint_answers_like_the_store_and_knows_its_offset() {
    let dir = tempfile::tempdir().unwrap();
    let resources = StoreResources::default();
    let store =
        PartitionStore::open(dir.path().join("store/events_0"), &settings(), &resources).unwrap();
    let batch: Vec<_> = (0..5_000).map(|i| (key(i), i)).collect();
    store.check_and_insert(&batch, 5_000).unwrap();

    let checkpoints = partition_dir(&dir.path().join("checkpoints"), "events", 0);
    let checkpoint = create_local(&store, &checkpoints, 1_700_000_000_000).unwrap();
    assert_eq!(checkpoint.next_offset, Some(5_000));
    assert!(checkpoint.dir.starts_with(&checkpoints));
    // Later writes do not reach the checkpoint.
    store
        .check_and_insert(&[(key(99_999), 5_000)], 5_001)
        .unwrap();

    let restored_dir = dir.path().join("restored/events_0");
    copy_dir(&checkpoint.dir, &restored_dir);
    let restored = PartitionStore::open(&restored_dir, &settings(), &resources).unwrap();
    assert_eq!(restored.next_offset().unwrap(), Some(5_000));
    for (k, offset) in batch.iter().step_by(97) {
        assert_eq!(restored.first_offset(k).unwrap(), Some(*offset));
    }
    assert_eq!(restored.first_offset(&key(99_999)).unwrap(), None);
    assert_eq!(
        restored.check_and_insert(&[(key(7), 123)], 124).unwrap(),
        [Outcome::Duplicate { first_offset: 7 }]
    );
}

#[test]
fn local_retention_keeps_the_newest() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(&dir.path().join("store"));
    let checkpoints = dir.path().join("checkpoints/events_1");
    let mut ids = Vec::new();
    for i in 0..5 {
        store.check_and_insert(&[(key(i), i)], i + 1).unwrap();
        ids.push(create_local(&store, &checkpoints, 1_000 + i).unwrap().id);
    }
    std::fs::create_dir_all(checkpoints.join("tmp-download")).unwrap(); // not a checkpoint
    let removed = prune_local(&checkpoints, 2).unwrap();
    assert_eq!(removed, ids[..3]);
    let left: Vec<String> = list_local(&checkpoints)
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(left, ids[3..]);
    assert!(checkpoints.join("tmp-download").exists());
    assert_eq!(list_local(&dir.path().join("nowhere")).unwrap(), Vec::new());
}

#[test]
fn the_manifest_lists_every_file_with_its_checksum() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(&dir.path().join("store"));
    store.check_and_insert(&[(key(1), 0)], 1).unwrap();
    let checkpoint = create_local(&store, &dir.path().join("cp"), 5).unwrap();
    let manifest =
        build_manifest(&checkpoint, "events", 0, "dedup-0", 5, UploadKind::Full).unwrap();
    assert_eq!(manifest.next_offset, Some(1));
    assert_eq!(manifest.checkpoint_id, checkpoint.id);
    let on_disk = std::fs::read_dir(&checkpoint.dir).unwrap().count();
    assert_eq!(manifest.files.len(), on_disk);
    assert!(manifest
        .files
        .iter()
        .any(|f| f.local_name.ends_with(".sst")));
    assert!(manifest
        .files
        .iter()
        .any(|f| f.local_name.starts_with("MANIFEST-")));
    for file in &manifest.files {
        let (checksum, size) = file_checksum(&checkpoint.dir.join(&file.local_name)).unwrap();
        assert_eq!((&file.checksum, file.size), (&checksum, size));
        assert!(file
            .remote_key
            .starts_with(&format!("files/{checksum}-{size}")));
    }
}

#[test]
fn known_checksums_are_reused_for_sst_files_only() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(&dir.path().join("store"));
    store.check_and_insert(&[(key(1), 0)], 1).unwrap();
    let checkpoint = create_local(&store, &dir.path().join("cp"), 5).unwrap();
    let full = build_manifest(&checkpoint, "events", 0, "w", 5, UploadKind::Full).unwrap();
    // Claim a checksum for every file: only the SSTs may take it (they are immutable).
    let known: KnownChecksums = full
        .files
        .iter()
        .map(|f| ((f.local_name.clone(), f.size), "0".repeat(32)))
        .collect();
    let reused =
        build_manifest_reusing(&checkpoint, "events", 0, "w", 5, UploadKind::Full, &known).unwrap();
    for (a, b) in full.files.iter().zip(&reused.files) {
        if a.local_name.ends_with(".sst") {
            assert_eq!(b.checksum, "0".repeat(32), "{}", a.local_name);
        } else {
            assert_eq!(a.checksum, b.checksum, "{}", a.local_name);
        }
    }
}

mod transfer_tests {
    use super::*;
    use crate::checkpoint::manifest::{content_key, CheckpointManifest, ManifestFile};
    use crate::checkpoint::remote::{CheckpointRemote, LocalDirRemote};
    use crate::checkpoint::transfer::{self, RestoreOptions, RestoreOutcome};

    const PREFIX: &str = "deduplication-checkpoints";

    struct Fixture {
        dir: tempfile::TempDir,
        remote: LocalDirRemote,
        store: PartitionStore,
        next: i64,
        now: i64,
    }

    impl Fixture {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let remote = LocalDirRemote::new(dir.path().join("bucket"));
            let store = open_store(&dir.path().join("store/events_0"));
            Self {
                dir,
                remote,
                store,
                next: 0,
                now: 1_000,
            }
        }

        fn write(&mut self, count: i64) {
            let batch: Vec<_> = (self.next..self.next + count)
                .map(|i| (key(i), i))
                .collect();
            self.next += count;
            self.store.check_and_insert(&batch, self.next).unwrap();
        }

        async fn checkpoint_and_upload(
            &mut self,
            kind: UploadKind,
        ) -> (CheckpointManifest, transfer::UploadStats) {
            self.now += 1;
            let local = create_local(
                &self.store,
                &self.dir.path().join("checkpoints/events_0"),
                self.now,
            )
            .unwrap();
            let manifest = build_manifest(&local, "events", 0, "dedup-0", self.now, kind).unwrap();
            let already = transfer::referenced_files(&self.remote, PREFIX, "events", 0)
                .await
                .unwrap();
            let stats = transfer::upload(&self.remote, PREFIX, &manifest, &local.dir, &already, 4)
                .await
                .unwrap();
            (manifest, stats)
        }

        async fn restore(&self, into: &str) -> (RestoreOutcome, PathBuf) {
            self.restore_reusing(into, Vec::new()).await
        }

        async fn restore_reusing(
            &self,
            into: &str,
            reuse_from: Vec<PathBuf>,
        ) -> (RestoreOutcome, PathBuf) {
            let target = self.dir.path().join(into).join("events_0");
            std::fs::create_dir_all(target.parent().unwrap()).unwrap();
            let outcome = transfer::restore(
                &self.remote,
                PREFIX,
                "events",
                0,
                &target,
                &RestoreOptions {
                    concurrency: 4,
                    reuse_from,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
            (outcome, target)
        }

        fn remote_path(&self, manifest: &CheckpointManifest, local_suffix: &str) -> PathBuf {
            let file = manifest
                .files
                .iter()
                .find(|f| f.local_name.ends_with(local_suffix))
                .unwrap();
            self.dir
                .path()
                .join("bucket")
                .join(format!("{PREFIX}/events/0/{}", file.remote_key))
        }
    }

    #[tokio::test]
    async fn round_trip_restores_every_key_and_the_offset() {
        let mut f = Fixture::new();
        f.write(3_000);
        let (manifest, stats) = f.checkpoint_and_upload(UploadKind::Full).await;
        assert_eq!(stats.files_uploaded, manifest.files.len());
        let (outcome, target) = f.restore("restored").await;
        match outcome {
            RestoreOutcome::Restored {
                checkpoint_id,
                next_offset,
                ..
            } => {
                assert_eq!(checkpoint_id, manifest.checkpoint_id);
                assert_eq!(next_offset, Some(3_000));
            }
            other => panic!("{other:?}"),
        }
        let restored = open_store(&target);
        assert_eq!(restored.next_offset().unwrap(), Some(3_000));
        for i in (0..3_000).step_by(7) {
            assert_eq!(restored.first_offset(&key(i)).unwrap(), Some(i));
        }
    }

    #[tokio::test]
    async fn incremental_uploads_send_only_new_files_and_full_ones_everything() {
        let mut f = Fixture::new();
        f.write(20_000);
        let (first, full) = f.checkpoint_and_upload(UploadKind::Full).await;
        f.write(100);
        let (second, incremental) = f.checkpoint_and_upload(UploadKind::Incremental).await;
        // The first checkpoint's SST is reused; only files that are new are sent.
        let new_bytes: u64 = second
            .files
            .iter()
            .filter(|f| !first.files.iter().any(|g| g.remote_key == f.remote_key))
            .map(|f| f.size)
            .sum();
        assert_eq!(incremental.bytes_uploaded, new_bytes);
        assert!(incremental.files_reused >= 1);
        assert!(
            incremental.bytes_uploaded < full.bytes_uploaded / 2,
            "{incremental:?} vs {full:?}"
        );
        let (third, again_full) = f.checkpoint_and_upload(UploadKind::Full).await;
        assert_eq!(again_full.bytes_uploaded, third.size());
        assert_eq!(again_full.files_reused, 0);
    }

    #[tokio::test]
    async fn two_lineages_never_share_a_different_file_of_the_same_name() {
        let mut a = Fixture::new();
        a.write(500);
        let (ma, _) = a.checkpoint_and_upload(UploadKind::Full).await;
        // Another store of the same partition (started empty), different data.
        let store_b = PartitionStore::open(
            a.dir.path().join("other/events_0"),
            &settings(),
            &StoreResources::default(),
        )
        .unwrap();
        store_b.check_and_insert(&[(key(1_000_000), 0)], 1).unwrap();
        let local_b = create_local(&store_b, &a.dir.path().join("other-cp"), 5_000).unwrap();
        let mb = build_manifest(&local_b, "events", 0, "dedup-1", 5_000, UploadKind::Full).unwrap();
        for fa in &ma.files {
            for fb in mb.files.iter().filter(|fb| fb.local_name == fa.local_name) {
                if fa.checksum != fb.checksum {
                    assert_ne!(fa.remote_key, fb.remote_key, "{} collides", fa.local_name);
                }
            }
        }
        assert_eq!(
            ma.files[0].remote_key,
            content_key(
                &ma.files[0].local_name,
                &ma.files[0].checksum,
                ma.files[0].size
            )
        );
    }

    #[tokio::test]
    async fn damaged_checkpoints_fall_back_to_the_next_older() {
        for damage in ["flip", "truncate", "delete", "manifest"] {
            let mut f = Fixture::new();
            f.write(1_000);
            let (older, _) = f.checkpoint_and_upload(UploadKind::Full).await;
            f.write(1_000);
            let (newer, _) = f.checkpoint_and_upload(UploadKind::Full).await;
            // Damage an SST that only the newer checkpoint references.
            let only_newer = newer
                .files
                .iter()
                .find(|n| {
                    n.local_name.ends_with(".sst")
                        && !older.files.iter().any(|o| o.remote_key == n.remote_key)
                })
                .expect("the newer checkpoint has an SST of its own");
            let sst = f.remote_path(&newer, &only_newer.local_name);
            match damage {
                "flip" => {
                    let mut bytes = std::fs::read(&sst).unwrap();
                    bytes[100] ^= 0xff;
                    std::fs::write(&sst, bytes).unwrap();
                }
                "truncate" => {
                    let bytes = std::fs::read(&sst).unwrap();
                    std::fs::write(&sst, &bytes[..bytes.len() / 2]).unwrap();
                }
                "delete" => std::fs::remove_file(&sst).unwrap(),
                _ => {
                    let key = crate::checkpoint::manifest::manifest_key(
                        PREFIX,
                        "events",
                        0,
                        &newer.checkpoint_id,
                    );
                    f.remote
                        .put_bytes(&key, b"{ not a manifest".to_vec())
                        .await
                        .unwrap();
                }
            }
            match f.restore("restored").await.0 {
                RestoreOutcome::Restored {
                    checkpoint_id,
                    next_offset,
                    skipped,
                    ..
                } => {
                    assert_eq!(checkpoint_id, older.checkpoint_id, "{damage}");
                    assert_eq!(next_offset, Some(1_000));
                    assert_eq!(skipped.len(), 1, "{damage}: {skipped:?}");
                }
                other => panic!("{damage}: {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn nothing_to_restore_is_reported() {
        let f = Fixture::new();
        assert_eq!(f.restore("restored").await.0, RestoreOutcome::NoCheckpoint);
        let key = crate::checkpoint::manifest::manifest_key(
            PREFIX,
            "events",
            0,
            "0000000000001-00000000",
        );
        f.remote.put_bytes(&key, b"garbage".to_vec()).await.unwrap();
        assert!(matches!(
            f.restore("restored").await.0,
            RestoreOutcome::AllCorrupt { .. }
        ));
    }

    #[tokio::test]
    async fn an_interrupted_restore_resumes_with_the_verified_files() {
        let mut f = Fixture::new();
        f.write(2_000);
        let (manifest, _) = f.checkpoint_and_upload(UploadKind::Full).await;
        // An earlier attempt got one file down before it stopped.
        let target = f.dir.path().join("restored/events_0");
        let staging = f.dir.path().join(format!(
            "restored/events_0.restore-{}",
            manifest.checkpoint_id
        ));
        std::fs::create_dir_all(&staging).unwrap();
        let first = &manifest.files[0];
        std::fs::copy(
            f.remote_path(&manifest, &first.local_name),
            staging.join(&first.local_name),
        )
        .unwrap();
        let (outcome, restored) = f.restore("restored").await;
        assert_eq!(restored, target);
        match outcome {
            RestoreOutcome::Restored { files_resumed, .. } => assert_eq!(files_resumed, 1),
            other => panic!("{other:?}"),
        }
        assert!(!staging.exists(), "staging renamed into place");
    }

    /// Files of `newer` that `older` has too (same object), and their bytes.
    fn shared(older: &CheckpointManifest, newer: &CheckpointManifest) -> (Vec<ManifestFile>, u64) {
        let files: Vec<ManifestFile> = newer
            .files
            .iter()
            .filter(|n| n.local_name.ends_with(".sst"))
            .filter(|n| older.files.iter().any(|o| o.remote_key == n.remote_key))
            .cloned()
            .collect();
        let bytes = files.iter().map(|f| f.size).sum();
        (files, bytes)
    }

    fn restored(outcome: &RestoreOutcome) -> (String, usize, u64) {
        match outcome {
            RestoreOutcome::Restored {
                checkpoint_id,
                files_reused,
                bytes_reused,
                ..
            } => (checkpoint_id.clone(), *files_reused, *bytes_reused),
            other => panic!("{other:?}"),
        }
    }

    /// Warm handoff's delta: a store restored earlier (a prefetch, or a partition coming
    /// back to a volume that held it) is brought to a newer checkpoint by downloading
    /// only the table files it lacks. The shared ones are deleted from the remote here,
    /// so the restore can only succeed by taking them from the older copy.
    #[tokio::test]
    async fn a_restore_over_an_older_copy_downloads_only_the_delta() {
        let mut f = Fixture::new();
        f.write(20_000);
        let (older, _) = f.checkpoint_and_upload(UploadKind::Full).await;
        let (cold, target) = f.restore("restored").await;
        assert_eq!(restored(&cold).1, 0, "nothing to reuse in an empty volume");
        f.write(500);
        let (newer, _) = f.checkpoint_and_upload(UploadKind::Incremental).await;
        let (files, bytes) = shared(&older, &newer);
        assert!(!files.is_empty(), "the newer checkpoint shares table files");
        for file in &files {
            std::fs::remove_file(f.remote_path(&newer, &file.local_name)).unwrap();
        }

        let (warm, again) = f.restore("restored").await;
        assert_eq!(again, target);
        let (id, files_reused, bytes_reused) = restored(&warm);
        assert_eq!(id, newer.checkpoint_id);
        assert_eq!((files_reused, bytes_reused), (files.len(), bytes));
        assert!(
            bytes_reused * 2 > newer.size(),
            "most of the checkpoint is reused: {bytes_reused} of {}",
            newer.size()
        );
        let store = open_store(&target);
        assert_eq!(store.next_offset().unwrap(), Some(20_500));
        for i in (0..20_500).step_by(101) {
            assert_eq!(store.first_offset(&key(i)).unwrap(), Some(i));
        }
    }

    /// A local file of the right name whose content differs (another lineage, damage) is
    /// not taken: it is downloaded, and the store is the checkpoint's.
    #[tokio::test]
    async fn a_local_table_file_that_does_not_verify_is_downloaded_instead() {
        let mut f = Fixture::new();
        f.write(20_000);
        let (older, _) = f.checkpoint_and_upload(UploadKind::Full).await;
        let (_, target) = f.restore("restored").await;
        f.write(500);
        let (newer, _) = f.checkpoint_and_upload(UploadKind::Incremental).await;
        let (files, _) = shared(&older, &newer);
        let damaged = target.join(&files[0].local_name);
        let mut bytes = std::fs::read(&damaged).unwrap();
        bytes[100] ^= 0xff;
        std::fs::write(&damaged, bytes).unwrap();

        let (outcome, _) = f.restore("restored").await;
        let (id, files_reused, _) = restored(&outcome);
        assert_eq!(id, newer.checkpoint_id);
        assert_eq!(files_reused, files.len() - 1);
        let store = open_store(&target);
        for i in (0..20_500).step_by(101) {
            assert_eq!(store.first_offset(&key(i)).unwrap(), Some(i));
        }
    }

    /// Warm handoff: a checkpoint prefetched before the partition is assigned is staged
    /// beside the store directory, never installed; the restore at assignment, of the
    /// newer checkpoint uploaded meanwhile (the old owner's final one), downloads only
    /// the delta. The files they share are deleted from the remote after the prefetch,
    /// so the restore can only succeed by taking them from the staged copy.
    #[tokio::test]
    async fn a_prefetched_checkpoint_is_staged_and_the_restore_fetches_only_the_delta() {
        let mut f = Fixture::new();
        f.write(20_000);
        let (older, _) = f.checkpoint_and_upload(UploadKind::Full).await;
        let target = f.dir.path().join("moved/events_0");
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        let options = RestoreOptions {
            concurrency: 4,
            ..Default::default()
        };
        let staged = transfer::prefetch(&f.remote, PREFIX, "events", 0, &target, &options)
            .await
            .unwrap();
        assert_eq!(restored(&staged).0, older.checkpoint_id);
        assert!(!target.exists(), "a prefetch installs nothing");
        let staging = target.with_file_name(format!("events_0.restore-{}", older.checkpoint_id));
        assert!(staging.is_dir(), "staged at {}", staging.display());
        // Prefetching again finds every file staged: nothing is downloaded twice.
        match transfer::prefetch(&f.remote, PREFIX, "events", 0, &target, &options)
            .await
            .unwrap()
        {
            RestoreOutcome::Restored { files_resumed, .. } => {
                assert_eq!(files_resumed, older.files.len())
            }
            other => panic!("{other:?}"),
        }

        f.write(500);
        let (newer, _) = f.checkpoint_and_upload(UploadKind::Incremental).await;
        let (files, bytes) = shared(&older, &newer);
        assert!(!files.is_empty(), "the newer checkpoint shares table files");
        for file in &files {
            std::fs::remove_file(f.remote_path(&newer, &file.local_name)).unwrap();
        }
        let (outcome, again) = f.restore("moved").await;
        assert_eq!(again, target);
        let (id, files_reused, bytes_reused) = restored(&outcome);
        assert_eq!(id, newer.checkpoint_id);
        assert_eq!((files_reused, bytes_reused), (files.len(), bytes));
        assert!(
            !staging.exists(),
            "the staged copy is removed once restored"
        );
        let store = open_store(&target);
        assert_eq!(store.next_offset().unwrap(), Some(20_500));
        for i in (0..20_500).step_by(101) {
            assert_eq!(store.first_offset(&key(i)).unwrap(), Some(i));
        }
        // A staged copy of a partition that never came is removed on request.
        transfer::prefetch(&f.remote, PREFIX, "events", 0, &target, &options)
            .await
            .unwrap();
        let staged = target.with_file_name(format!("events_0.restore-{}", newer.checkpoint_id));
        assert!(staged.is_dir());
        transfer::discard_staged(&target);
        assert!(!staged.exists() && target.is_dir(), "the store is kept");
    }

    /// A prefetch its partition's restore overtakes is cancelled: no file starts after
    /// the flag is set, it ends `Cancelled` (the loader does not retry it), what it
    /// verified stays staged, and the restore then completes from there.
    #[tokio::test]
    async fn a_cancelled_prefetch_stops_between_files_and_the_restore_takes_what_it_staged() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let mut f = Fixture::new();
        f.write(20_000);
        let (manifest, _) = f.checkpoint_and_upload(UploadKind::Full).await;
        assert!(manifest.files.len() >= 4, "{} files", manifest.files.len());
        let target = f.dir.path().join("moved/events_0");
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        use std::sync::Arc;
        let cancel = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&cancel);
        let options = RestoreOptions {
            concurrency: 1,
            // Cancelled as soon as the first file is verified.
            progress: Some(Arc::new(move |_: &transfer::Progress| {
                flag.store(true, Ordering::SeqCst)
            })),
            cancel: Some(Arc::clone(&cancel)),
            ..Default::default()
        };
        let error = transfer::prefetch(&f.remote, PREFIX, "events", 0, &target, &options)
            .await
            .unwrap_err();
        assert!(
            matches!(error, crate::checkpoint::remote::RemoteError::Cancelled),
            "{error}"
        );
        let staging = target.with_file_name(format!("events_0.restore-{}", manifest.checkpoint_id));
        let staged = std::fs::read_dir(&staging).unwrap().count();
        assert_eq!(staged, 1, "one file at a time: only the first was fetched");
        assert_eq!(
            transfer::staged_partitions(target.parent().unwrap(), "events"),
            std::collections::HashSet::from([0])
        );

        let (outcome, _) = f.restore("moved").await;
        match outcome {
            RestoreOutcome::Restored { files_resumed, .. } => assert_eq!(files_resumed, 1),
            other => panic!("{other:?}"),
        }
        assert!(transfer::staged_partitions(target.parent().unwrap(), "events").is_empty());

        // Through the loader: cancelled before it starts, no attempt is retried.
        let loader = crate::checkpoint::loader::CheckpointLoader {
            remote: crate::checkpoint::remote::Remote::Dir(f.remote.clone()),
            key_prefix: PREFIX.into(),
            concurrency: 2,
            max_attempts: 3,
            time_bound: std::time::Duration::from_secs(30),
            progress: None,
            local_checkpoints: None,
        };
        let outcome = loader
            .prefetch(
                "events",
                0,
                &f.dir.path().join("other/events_0"),
                Arc::new(AtomicBool::new(true)),
            )
            .await;
        assert_eq!(outcome, crate::checkpoint::loader::LoadOutcome::Cancelled);
    }

    /// The partition's local checkpoints (`LOCAL_CHECKPOINT_DIR`) lend their table files
    /// to a restore into an empty store directory.
    #[tokio::test]
    async fn local_checkpoints_lend_their_table_files() {
        let mut f = Fixture::new();
        f.write(20_000);
        let (older, _) = f.checkpoint_and_upload(UploadKind::Full).await;
        f.write(500);
        let (newer, _) = f.checkpoint_and_upload(UploadKind::Incremental).await;
        let (_, bytes) = shared(&older, &newer);
        let local = f.dir.path().join("checkpoints/events_0");
        let (outcome, _) = f.restore_reusing("elsewhere", vec![local]).await;
        let (id, files_reused, bytes_reused) = restored(&outcome);
        assert_eq!(id, newer.checkpoint_id);
        // Every table file of the newer checkpoint is in the local checkpoints.
        let tables: Vec<_> = newer
            .files
            .iter()
            .filter(|f| f.local_name.ends_with(".sst"))
            .collect();
        assert_eq!(files_reused, tables.len());
        assert!(bytes_reused >= bytes);
    }

    #[tokio::test]
    async fn gc_keeps_the_newest_manifests_and_what_they_reference() {
        let mut f = Fixture::new();
        let mut manifests = Vec::new();
        for _ in 0..5 {
            f.write(500);
            manifests.push(f.checkpoint_and_upload(UploadKind::Incremental).await.0);
        }
        let stats = transfer::collect_garbage(&f.remote, PREFIX, "events", 0, 2)
            .await
            .unwrap();
        assert_eq!(stats.manifests_deleted, 3);
        let left = transfer::list_manifest_keys(&f.remote, PREFIX, "events", 0)
            .await
            .unwrap();
        assert_eq!(left.len(), 2);
        assert!(left[0].contains(&manifests[4].checkpoint_id));
        let kept: std::collections::HashSet<String> = manifests[3..]
            .iter()
            .flat_map(|m| m.files.iter().map(|f| f.remote_key.clone()))
            .collect();
        let files = f
            .remote
            .list(&format!("{PREFIX}/events/0/files/"))
            .await
            .unwrap();
        let present: std::collections::HashSet<String> = files
            .iter()
            .map(|k| {
                k.strip_prefix(&format!("{PREFIX}/events/0/"))
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(present, kept, "every referenced file kept, nothing else");
        assert!(stats.files_deleted > 0);
        // The survivors still restore.
        assert!(matches!(
            f.restore("restored").await.0,
            RestoreOutcome::Restored { .. }
        ));
    }

    #[tokio::test]
    async fn gc_by_a_writer_that_lost_the_partition_deletes_nothing() {
        let mut f = Fixture::new();
        for _ in 0..4 {
            f.write(300);
            f.checkpoint_and_upload(UploadKind::Incremental).await;
        }
        let prefix = format!("{PREFIX}/events/");
        let before = f.remote.list(&prefix).await.unwrap();
        let owner = std::sync::atomic::AtomicBool::new(false);
        let stats = transfer::collect_garbage_while(&f.remote, PREFIX, "events", 0, 1, || {
            owner.load(std::sync::atomic::Ordering::SeqCst)
        })
        .await
        .unwrap();
        assert_eq!(stats, transfer::GcStats::default());
        assert_eq!(
            f.remote.list(&prefix).await.unwrap(),
            before,
            "nothing deleted after the fence"
        );
    }

    #[tokio::test]
    async fn gc_deletes_no_file_while_a_kept_manifest_is_unreadable() {
        let mut f = Fixture::new();
        for _ in 0..3 {
            f.write(500);
            f.checkpoint_and_upload(UploadKind::Incremental).await;
        }
        // A newer version's manifest (another format) arrives during a rolling upgrade;
        // it references files of its own that this version cannot see.
        let newer = format!("{PREFIX}/events/0/manifests/9999999999999-zz.json");
        f.remote
            .put_bytes(
                &newer,
                br#"{"format_version": 99, "files": "elsewhere"}"#.to_vec(),
            )
            .await
            .unwrap();
        let its_file = format!("{PREFIX}/events/0/files/written-by-the-newer-version.sst");
        f.remote.put_bytes(&its_file, vec![7; 64]).await.unwrap();
        let before = f
            .remote
            .list(&format!("{PREFIX}/events/0/files/"))
            .await
            .unwrap();

        let stats = transfer::collect_garbage(&f.remote, PREFIX, "events", 0, 2)
            .await
            .unwrap();
        assert_eq!(stats.unreadable_manifests, 1);
        assert_eq!(stats.files_deleted, 0);
        assert_eq!(stats.manifests_deleted, 1, "older manifests still go");
        let after = f
            .remote
            .list(&format!("{PREFIX}/events/0/files/"))
            .await
            .unwrap();
        assert_eq!(after, before, "no file deleted");

        // Once it is no longer among the kept ones, collection resumes.
        for _ in 0..2 {
            f.write(10);
            f.checkpoint_and_upload(UploadKind::Incremental).await;
        }
        // The unreadable one sorts newest by name: remove it as an operator would after
        // the rollback, then collection works again.
        f.remote.delete(&newer).await.unwrap();
        let stats = transfer::collect_garbage(&f.remote, PREFIX, "events", 0, 2)
            .await
            .unwrap();
        assert_eq!(stats.unreadable_manifests, 0);
        assert!(stats.files_deleted >= 1);
    }

    #[tokio::test]
    async fn a_local_store_at_least_as_far_ahead_is_kept() {
        let mut f = Fixture::new();
        f.write(100);
        f.checkpoint_and_upload(UploadKind::Full).await;
        let target = f.dir.path().join("local/events_0");
        std::fs::create_dir_all(&target).unwrap();
        std::fs::write(target.join("marker"), b"local").unwrap();
        let restore = |newer_than| {
            let (remote, target) = (f.remote.clone(), target.clone());
            async move {
                let options = RestoreOptions {
                    concurrency: 2,
                    newer_than: Some(newer_than),
                    ..Default::default()
                };
                transfer::restore(&remote, PREFIX, "events", 0, &target, &options)
                    .await
                    .unwrap()
            }
        };
        assert_eq!(
            restore(100).await,
            RestoreOutcome::NotNewer {
                local_next_offset: 100,
                remote_next_offset: Some(100),
                skipped: vec![]
            }
        );
        assert!(
            target.join("marker").exists(),
            "the local store is untouched"
        );
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = std::sync::Arc::clone(&seen);
        let options = RestoreOptions {
            concurrency: 2,
            newer_than: Some(99),
            progress: Some(std::sync::Arc::new(move |p: &transfer::Progress| {
                log.lock().unwrap().push((p.files_done, p.bytes_done))
            })),
            ..Default::default()
        };
        let outcome = transfer::restore(&f.remote, PREFIX, "events", 0, &target, &options)
            .await
            .unwrap();
        assert!(matches!(
            outcome,
            RestoreOutcome::Restored {
                next_offset: Some(100),
                ..
            }
        ));
        assert!(
            !target.join("marker").exists(),
            "replaced by the checkpoint"
        );
        let seen = seen.lock().unwrap();
        assert!(!seen.is_empty());
        assert!(seen.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1));
    }

    #[tokio::test]
    async fn remote_state_counts_incrementals_since_the_last_full_upload() {
        let mut f = Fixture::new();
        let empty = transfer::remote_state(&f.remote, PREFIX, "events", 0)
            .await
            .unwrap();
        assert_eq!(empty.incrementals_since_full, 0);
        assert!(empty.newest.is_none());
        for kind in [
            UploadKind::Incremental,
            UploadKind::Full,
            UploadKind::Incremental,
            UploadKind::Incremental,
        ] {
            f.write(10);
            f.checkpoint_and_upload(kind).await;
        }
        let state = transfer::remote_state(&f.remote, PREFIX, "events", 0)
            .await
            .unwrap();
        assert_eq!(state.incrementals_since_full, 2);
        assert_eq!(state.newest.unwrap().next_offset, Some(40));
        assert!(!state.referenced.is_empty());
    }
}
