use statesync_manifest::build::ChangeSet;
use statesync_manifest::verify::verify_dir;
use statesync_store::{CreateOptions, Store, StoreError};
use std::path::Path;

fn opts() -> CreateOptions {
    CreateOptions {
        chunk_size: 1024,
        sample_rate: 0.0,
        ..Default::default()
    }
}

use statesync_testkit::write_file as write;

fn count(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|r| r.count()).unwrap_or(0)
}

#[test]
fn create_full_then_incremental_links_unchanged_files() {
    let src = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    for i in 0..10 {
        write(src.path(), &format!("d/f{i}"), &vec![i as u8; 5000]);
    }
    let (store, rep) = Store::open(root.path()).unwrap();
    assert!(rep.removed_staging.is_empty());
    let c1 = store.create_from_dir(10, src.path(), &opts()).unwrap();
    assert!(!c1.incremental);
    assert_eq!(c1.info.files, 10);
    let m1 = store.load_manifest(10).unwrap();
    assert!(verify_dir(&store.state_dir(10), &m1, None).unwrap().ok);

    // The application reports one write.
    write(src.path(), "d/f3", &[9u8; 5000]);
    let mut changes = ChangeSet::default();
    changes.written.insert("d/f3".into(), vec![(0, 5000)]);
    let o = CreateOptions {
        changes: Some(changes),
        ..opts()
    };
    let c2 = store.create_from_dir(20, src.path(), &o).unwrap();
    assert!(c2.incremental);
    assert_eq!(c2.files_linked, 9);
    assert_eq!(c2.report.chunks_hashed, 5);
    let m2 = store.load_manifest(20).unwrap();
    assert!(verify_dir(&store.state_dir(20), &m2, None).unwrap().ok);
    assert!(
        verify_dir(&store.state_dir(10), &m1, None).unwrap().ok,
        "old checkpoint untouched"
    );
    assert_ne!(m1.root(), m2.root());

    // Heights only grow.
    assert!(matches!(
        store.create_from_dir(15, src.path(), &opts()),
        Err(StoreError::NotNewer {
            height: 15,
            latest: 20
        })
    ));
    // Promoted files are read-only.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(store.state_dir(20).join("d/f3"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o222, 0);
    let list = store.list().unwrap();
    assert_eq!(
        list.iter().map(|c| c.height).collect::<Vec<_>>(),
        vec![10, 20]
    );
    assert_eq!(list[1].root, m2.root());
}

#[test]
fn auto_incremental_uses_source_metadata() {
    let src = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    for i in 0..5 {
        write(src.path(), &format!("f{i}"), &vec![i as u8; 3000]);
    }
    let (store, _) = Store::open(root.path()).unwrap();
    // Files must be older than the racy window to be trusted by metadata.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    store.create_from_dir(1, src.path(), &opts()).unwrap();
    write(src.path(), "f1", &[7u8; 3000]);
    let c = store.create_from_dir(2, src.path(), &opts()).unwrap();
    assert_eq!(c.files_linked, 4);
    assert_eq!(c.report.files_reused, 4);
    let m = store.load_manifest(2).unwrap();
    assert!(verify_dir(&store.state_dir(2), &m, None).unwrap().ok);
}

#[test]
fn stale_staging_is_removed_and_live_staging_kept() {
    let root = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(root.path()).unwrap();
    // A writer that died: its directory and a lock nobody holds.
    let dead = root.path().join("staging/00000000000000000007.999999.1");
    std::fs::create_dir_all(dead.join("state/sub")).unwrap();
    std::fs::write(dead.join("state/sub/partial"), b"half").unwrap();
    std::fs::write(
        root.path()
            .join("staging/00000000000000000007.999999.1.lock"),
        b"",
    )
    .unwrap();
    // A live writer in this process.
    let live = store.begin(8).unwrap();
    std::fs::write(live.state_dir().join("x"), b"x").unwrap();
    let (store2, rep) = Store::open(root.path()).unwrap();
    assert_eq!(rep.removed_staging, vec![dead.clone()]);
    assert!(!dead.exists());
    assert!(live.state_dir().join("x").exists());
    assert!(
        store2.list().unwrap().is_empty(),
        "nothing half-written is listed"
    );
    drop(live);
    assert_eq!(
        count(&root.path().join("staging")),
        0,
        "dropped staging is removed"
    );
}

#[test]
fn damaged_checkpoint_is_never_listed_and_prune_removes_it() {
    let src = tempfile::tempdir().unwrap();
    write(src.path(), "a", b"hello");
    let root = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(root.path()).unwrap();
    store.create_from_dir(1, src.path(), &opts()).unwrap();
    store.create_from_dir(2, src.path(), &opts()).unwrap();
    let mf = root
        .path()
        .join("checkpoints/00000000000000000002/manifest");
    let bytes = std::fs::read(&mf).unwrap();
    std::fs::write(&mf, &bytes[..bytes.len() - 3]).unwrap();
    std::fs::create_dir_all(root.path().join("checkpoints/not-a-height")).unwrap();
    let (valid, invalid) = store.scan().unwrap();
    assert_eq!(valid.iter().map(|c| c.height).collect::<Vec<_>>(), vec![1]);
    assert_eq!(invalid.len(), 2);
    assert!(
        invalid.iter().any(|i| i.reason.contains("cannot fit")),
        "{invalid:?}"
    );
    let rep = store.prune(5).unwrap();
    assert_eq!(rep.removed_invalid.len(), 2);
    assert_eq!(count(&root.path().join("checkpoints")), 1);
}

#[test]
fn retention_keeps_last_n_and_pinned_and_leaks_nothing() {
    let src = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(root.path()).unwrap();
    write(src.path(), "big", &vec![1u8; 20_000]);
    for h in 1..=100u64 {
        write(src.path(), &format!("f{}", h % 10), &h.to_le_bytes());
        let mut changes = ChangeSet::default();
        changes.written.insert(format!("f{}", h % 10), vec![(0, 8)]);
        let o = CreateOptions {
            changes: (h > 10).then_some(changes),
            ..opts()
        };
        store.create_from_dir(h, src.path(), &o).unwrap();
        if h == 42 {
            store.pin(42, "slow-sync", "peer X is syncing it").unwrap();
        }
        store.prune(3).unwrap();
    }
    let heights: Vec<u64> = store.list().unwrap().iter().map(|c| c.height).collect();
    assert_eq!(heights, vec![42, 98, 99, 100]);
    assert!(matches!(
        store.remove(42),
        Err(StoreError::Pinned { height: 42, .. })
    ));
    assert!(store.unpin(42, "slow-sync").unwrap());
    let rep = store.prune(3).unwrap();
    assert_eq!(rep.removed, vec![42]);
    assert_eq!(count(&root.path().join("checkpoints")), 3);
    assert_eq!(count(&root.path().join("staging")), 0);
    assert_eq!(count(&root.path().join("trash")), 0);
    assert_eq!(count(&root.path().join("pins")), 0);
    // Disk use is bounded: 3 checkpoints share the big file by hard link.
    let m = store.load_manifest(100).unwrap();
    assert!(verify_dir(&store.state_dir(100), &m, None).unwrap().ok);
    assert!(matches!(
        store.pin(5, "x", ""),
        Err(StoreError::NotFound(5))
    ));
    assert!(matches!(
        store.pin(100, "../x", ""),
        Err(StoreError::PinName(_))
    ));
}

#[test]
fn source_with_symlink_is_refused_and_nothing_is_promoted() {
    let src = tempfile::tempdir().unwrap();
    write(src.path(), "a", b"x");
    std::os::unix::fs::symlink("/etc", src.path().join("link")).unwrap();
    let root = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(root.path()).unwrap();
    let err = store.create_from_dir(1, src.path(), &opts()).unwrap_err();
    assert!(err.to_string().contains("link"), "{err}");
    assert!(store.list().unwrap().is_empty());
    assert_eq!(count(&root.path().join("staging")), 0);
}

#[test]
fn leases_of_dead_processes_are_released_on_open() {
    let src = tempfile::tempdir().unwrap();
    write(src.path(), "a", b"x");
    let root = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(root.path()).unwrap();
    store.create_from_dir(1, src.path(), &opts()).unwrap();
    // A lease of a pid that cannot exist, and one of this (live) process.
    store
        .pin(1, "lease-999999999-serving", "dead server")
        .unwrap();
    store
        .pin(1, &statesync_store::lease_name("serving"), "live server")
        .unwrap();
    let (store, rep) = Store::open(root.path()).unwrap();
    assert_eq!(rep.stale_leases, 1);
    let pins: Vec<String> = store.pins().unwrap().into_iter().map(|(_, n)| n).collect();
    assert_eq!(pins, vec![statesync_store::lease_name("serving")]);
    assert_eq!(store.prune(0).unwrap().kept_pinned, vec![1]);
}
