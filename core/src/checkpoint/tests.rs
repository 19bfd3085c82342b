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
    let store = PartitionStore::open(
        dir.path().join("store"),
        &settings(),
        &StoreResources::default(),
    )
    .unwrap();
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
    let store = PartitionStore::open(
        dir.path().join("store"),
        &settings(),
        &StoreResources::default(),
    )
    .unwrap();
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
