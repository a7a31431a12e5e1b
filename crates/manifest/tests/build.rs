//! The parallel and incremental builders against the sequential reference
//! implementation, over random trees and change sets; verify and diff.

mod common;

use proptest::prelude::*;
use statesync_manifest::build::{
    BuildError, BuildOptions, ChangeSet, Hint, Previous, build, build_incremental,
};
use statesync_manifest::diff::{ChunkAction, LocalSource, plan};
use statesync_manifest::reference::{TreeFile, manifest_of_tree, read_tree};
use statesync_manifest::verify::verify_dir;
use std::path::Path;

const CS: u32 = 1024;

fn opts(sample_rate: f64, height: u64) -> BuildOptions {
    BuildOptions {
        chunk_size: CS,
        sample_rate,
        sample_budget: u64::MAX,
        height,
        progress: None,
    }
}

/// A random tree: paths from a small alphabet (so that nesting and sibling
/// order matter), sizes around chunk boundaries, some zero and duplicate data.
fn tree_strategy() -> impl Strategy<Value = Vec<TreeFile>> {
    let file = (
        prop::collection::vec(
            prop::sample::select(vec!["a", "b", "a.b", "c-d", "Z"]),
            1..4,
        ),
        prop_oneof![
            Just(0usize),
            1usize..50,
            1000usize..1100,
            2040usize..2060,
            0usize..5000
        ],
        0u8..4,
        any::<bool>(),
        any::<u8>(),
    );
    prop::collection::vec(file, 0..12).prop_map(|fs| {
        let mut seen = std::collections::BTreeMap::new();
        for (parts, size, kind, exec, seed) in fs {
            // Leaves get a distinct suffix so a path is never both file and dir.
            let path = format!("{}.f", parts.join("/"));
            let data: Vec<u8> = match kind {
                0 => vec![0u8; size],
                1 => vec![7u8; size],
                _ => (0..size)
                    .map(|i| (i as u8).wrapping_mul(seed | 1) ^ seed)
                    .collect(),
            };
            seen.insert(path, (data, exec));
        }
        seen.into_iter().map(|(p, (d, e))| (p, d, e)).collect()
    })
}

#[derive(Debug, Clone)]
enum Change {
    Write {
        file: usize,
        at: usize,
        len: usize,
        byte: u8,
    },
    Append {
        file: usize,
        len: usize,
    },
    Truncate {
        file: usize,
        to: usize,
    },
    Remove {
        file: usize,
    },
    Add {
        name: u8,
        len: usize,
    },
    Chmod {
        file: usize,
    },
}

fn change_strategy() -> impl Strategy<Value = Vec<Change>> {
    let c = prop_oneof![
        4 => (any::<usize>(), any::<usize>(), 1usize..1500, any::<u8>()).prop_map(|(file, at, len, byte)| Change::Write { file, at, len, byte }),
        1 => (any::<usize>(), 1usize..3000).prop_map(|(file, len)| Change::Append { file, len }),
        1 => (any::<usize>(), any::<usize>()).prop_map(|(file, to)| Change::Truncate { file, to }),
        1 => any::<usize>().prop_map(|file| Change::Remove { file }),
        1 => (any::<u8>(), 0usize..3000).prop_map(|(name, len)| Change::Add { name, len }),
        1 => any::<usize>().prop_map(|file| Change::Chmod { file }),
    ];
    prop::collection::vec(c, 0..6)
}

/// Applies changes to an in-memory tree and records the change set.
fn apply(tree: &[TreeFile], changes: &[Change]) -> (Vec<TreeFile>, ChangeSet) {
    let mut t = tree.to_vec();
    let mut cs = ChangeSet::default();
    for c in changes {
        if t.is_empty() && !matches!(c, Change::Add { .. }) {
            continue;
        }
        let n = t.len().max(1);
        match *c {
            Change::Write {
                file,
                at,
                len,
                byte,
            } => {
                let f = &mut t[file % n];
                let at = if f.1.is_empty() {
                    0
                } else {
                    at % (f.1.len() + 1)
                };
                let end = at + len;
                if f.1.len() < end {
                    f.1.resize(end, 0);
                }
                f.1[at..end].fill(byte);
                cs.written
                    .entry(f.0.clone())
                    .or_default()
                    .push((at as u64, end as u64));
            }
            Change::Append { file, len } => {
                let f = &mut t[file % n];
                let at = f.1.len();
                f.1.extend((0..len).map(|i| i as u8 ^ 0x5a));
                cs.written
                    .entry(f.0.clone())
                    .or_default()
                    .push((at as u64, (at + len) as u64));
            }
            Change::Truncate { file, to } => {
                let f = &mut t[file % n];
                let to = to % (f.1.len() + 1);
                f.1.truncate(to);
                // A truncation is reported as a write at the new end.
                cs.written
                    .entry(f.0.clone())
                    .or_default()
                    .push((to as u64, to as u64 + 1));
            }
            Change::Remove { file } => {
                let f = t.remove(file % n);
                cs.written.remove(&f.0);
                cs.removed.insert(f.0);
            }
            Change::Add { name, len } => {
                let p = format!("new/{name}.f");
                if t.iter().any(|f| f.0 == p) {
                    continue;
                }
                cs.removed.remove(&p);
                t.push((
                    p.clone(),
                    (0..len).map(|i| (i as u8).wrapping_add(name)).collect(),
                    false,
                ));
                cs.written.insert(p, vec![(0, len as u64)]);
            }
            Change::Chmod { file } => {
                let f = &mut t[file % n];
                f.2 = !f.2;
            }
        }
    }
    (t, cs)
}

/// Writes `new` into `dir`, hard-linking files whose content and mode are
/// unchanged from `old` (as a node creating the next checkpoint would), and
/// writing the others afresh.
fn write_linked(old_dir: &Path, old: &[TreeFile], dir: &Path, new: &[TreeFile]) {
    for f in new {
        let abs = dir.join(&f.0);
        std::fs::create_dir_all(abs.parent().unwrap()).unwrap();
        if old.iter().any(|o| o == f) {
            std::fs::hard_link(old_dir.join(&f.0), &abs).unwrap();
        } else {
            common::write_tree(dir, std::slice::from_ref(f));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn parallel_build_equals_reference(tree in tree_strategy()) {
        let d = tempfile::tempdir().unwrap();
        common::write_tree(d.path(), &tree);
        let want = manifest_of_tree(CS, &tree).unwrap();
        let got = build(d.path(), &opts(0.0, 0)).unwrap();
        prop_assert_eq!(got.manifest.encode(), want.encode());
        prop_assert_eq!(got.manifest.root(), want.root());
        prop_assert_eq!(got.report.chunks_hashed, want.chunks().len() as u64);
        // The oracle's own reading of the directory agrees too.
        let mut reread = read_tree(d.path()).unwrap();
        reread.sort();
        let mut sorted = tree.clone();
        sorted.sort();
        prop_assert_eq!(reread, sorted);
    }

    #[test]
    fn incremental_equals_reference(tree in tree_strategy(), changes in change_strategy(), height in 0u64..1000, full_sample in any::<bool>()) {
        let d0 = tempfile::tempdir().unwrap();
        common::write_tree(d0.path(), &tree);
        let prev = build(d0.path(), &opts(0.0, 0)).unwrap();
        let (new, cs) = apply(&tree, &changes);
        let want = manifest_of_tree(CS, &new).unwrap();
        let rate = if full_sample { 1.0 } else { 0.1 };

        // (a) the exact change set
        let d1 = tempfile::tempdir().unwrap();
        write_linked(d0.path(), &tree, d1.path(), &new);
        let p = Previous { manifest: &prev.manifest, dir: None, stats: None };
        let got = build_incremental(d1.path(), &opts(rate, height), &p, Hint::Exact(&cs)).unwrap();
        prop_assert_eq!(got.manifest.encode(), want.encode());
        prop_assert!(got.report.chunks_reused + got.report.chunks_hashed >= got.report.chunks);

        // (b) automatic, from hard links of the previous checkpoint
        let p = Previous { manifest: &prev.manifest, dir: Some(d0.path()), stats: Some(&prev.stats) };
        let auto = build_incremental(d1.path(), &opts(rate, height), &p, Hint::Auto).unwrap();
        prop_assert_eq!(auto.manifest.encode(), want.encode());
        let linked = new.iter().filter(|f| tree.contains(f)).count() as u64;
        prop_assert_eq!(auto.report.files_reused, linked);
    }
}

#[test]
fn incremental_reuses_and_hashes_only_what_changed() {
    let tree: Vec<TreeFile> = (0..20)
        .map(|i| (format!("f{i:02}"), vec![i as u8; 10 * CS as usize], false))
        .collect();
    let d0 = tempfile::tempdir().unwrap();
    common::write_tree(d0.path(), &tree);
    let prev = build(d0.path(), &opts(0.0, 0)).unwrap();
    let changes = vec![Change::Write {
        file: 3,
        at: 5000,
        len: 10,
        byte: 1,
    }];
    let (new, cs) = apply(&tree, &changes);
    let d1 = tempfile::tempdir().unwrap();
    write_linked(d0.path(), &tree, d1.path(), &new);
    let p = Previous {
        manifest: &prev.manifest,
        dir: None,
        stats: None,
    };
    let got = build_incremental(d1.path(), &opts(0.0, 9), &p, Hint::Exact(&cs)).unwrap();
    assert_eq!(got.report.chunks_hashed, 1);
    assert_eq!(got.report.bytes_hashed, u64::from(CS));
    assert_eq!(got.report.chunks_reused, 199);
    assert_eq!(
        got.manifest.root(),
        manifest_of_tree(CS, &new).unwrap().root()
    );

    // The same sample is chosen on every run for the same height.
    let a = build_incremental(d1.path(), &opts(0.2, 9), &p, Hint::Exact(&cs)).unwrap();
    let b = build_incremental(d1.path(), &opts(0.2, 9), &p, Hint::Exact(&cs)).unwrap();
    assert_eq!(a.report.chunks_sampled, b.report.chunks_sampled);
    assert!(
        (15..70).contains(&a.report.chunks_sampled),
        "{}",
        a.report.chunks_sampled
    );
}

#[test]
fn auto_mode_trusts_old_enough_stat_cache_and_nothing_racy() {
    let tree: Vec<TreeFile> = (0..4)
        .map(|i| (format!("f{i}"), vec![i as u8; 3000], false))
        .collect();
    let d = tempfile::tempdir().unwrap();
    common::write_tree(d.path(), &tree);
    // Built right after writing: every entry is racy, nothing may be reused.
    let first = build(d.path(), &opts(0.0, 0)).unwrap();
    let p = Previous {
        manifest: &first.manifest,
        dir: None,
        stats: Some(&first.stats),
    };
    let again = build_incremental(d.path(), &opts(0.0, 1), &p, Hint::Auto).unwrap();
    assert_eq!(again.report.files_reused, 0);
    // Once the files are older than the racy window, unchanged ones are reused.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let second = build(d.path(), &opts(0.0, 0)).unwrap();
    std::fs::write(d.path().join("f2"), vec![9u8; 3000]).unwrap();
    let p = Previous {
        manifest: &second.manifest,
        dir: None,
        stats: Some(&second.stats),
    };
    let inc = build_incremental(d.path(), &opts(0.0, 2), &p, Hint::Auto).unwrap();
    assert_eq!(inc.report.files_reused, 3);
    let mut want = tree.clone();
    want[2].1 = vec![9u8; 3000];
    assert_eq!(
        inc.manifest.root(),
        manifest_of_tree(CS, &want).unwrap().root()
    );
}

#[test]
fn sampled_rehash_catches_in_place_modification() {
    // The previous checkpoint is modified in place through a hard link: the
    // reused hashes are stale. A full sample must refuse to produce a manifest.
    let tree: Vec<TreeFile> = vec![("f".into(), vec![1u8; 8 * CS as usize], false)];
    let d0 = tempfile::tempdir().unwrap();
    common::write_tree(d0.path(), &tree);
    let prev = build(d0.path(), &opts(0.0, 0)).unwrap();
    let d1 = tempfile::tempdir().unwrap();
    std::fs::hard_link(d0.path().join("f"), d1.path().join("f")).unwrap();
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(d1.path().join("f"))
        .unwrap();
    f.write_all_at(b"sneaky", 3 * u64::from(CS)).unwrap();
    let p = Previous {
        manifest: &prev.manifest,
        dir: Some(d0.path()),
        stats: None,
    };
    let err = build_incremental(d1.path(), &opts(1.0, 5), &p, Hint::Auto).unwrap_err();
    assert!(
        matches!(err, BuildError::SampleMismatch { offset, .. } if offset == 3 * u64::from(CS)),
        "{err}"
    );
}

#[test]
fn change_set_contradictions_are_errors() {
    let tree: Vec<TreeFile> = vec![
        ("a".into(), vec![1; 100], false),
        ("b".into(), vec![2; 100], false),
    ];
    let d0 = tempfile::tempdir().unwrap();
    common::write_tree(d0.path(), &tree);
    let prev = build(d0.path(), &opts(0.0, 0)).unwrap();
    let p = Previous {
        manifest: &prev.manifest,
        dir: None,
        stats: None,
    };
    // Size changed but not reported.
    std::fs::write(d0.path().join("a"), vec![1; 101]).unwrap();
    let err = build_incremental(
        d0.path(),
        &opts(0.0, 1),
        &p,
        Hint::Exact(&ChangeSet::default()),
    )
    .unwrap_err();
    assert!(
        matches!(&err, BuildError::ChangeSet { path, .. } if path == "a"),
        "{err}"
    );
    // Removed but not reported.
    std::fs::write(d0.path().join("a"), vec![1; 100]).unwrap();
    std::fs::remove_file(d0.path().join("b")).unwrap();
    let err = build_incremental(
        d0.path(),
        &opts(0.0, 1),
        &p,
        Hint::Exact(&ChangeSet::default()),
    )
    .unwrap_err();
    assert!(
        matches!(&err, BuildError::ChangeSet { path, .. } if path == "b"),
        "{err}"
    );
    // New file not reported.
    let mut cs = ChangeSet::default();
    cs.removed.insert("b".into());
    std::fs::write(d0.path().join("c"), b"new").unwrap();
    let err = build_incremental(d0.path(), &opts(0.0, 1), &p, Hint::Exact(&cs)).unwrap_err();
    assert!(
        matches!(&err, BuildError::ChangeSet { path, .. } if path == "c"),
        "{err}"
    );
    // Chunk size must match.
    let mut o = opts(0.0, 1);
    o.chunk_size = 2048;
    assert!(matches!(
        build_incremental(d0.path(), &o, &p, Hint::Auto),
        Err(BuildError::ChunkSizeMismatch {
            prev: 1024,
            now: 2048
        })
    ));
}

#[test]
fn verify_reports_exactly_what_differs() {
    let tree = common::sample_tree();
    let d = tempfile::tempdir().unwrap();
    common::write_tree(d.path(), &tree);
    let m = manifest_of_tree(CS, &tree).unwrap();
    let r = verify_dir(d.path(), &m, None).unwrap();
    assert!(r.ok, "{r:?}");
    assert_eq!(r.bytes_checked, m.total_size());

    use std::os::unix::fs::{FileExt, PermissionsExt};
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(d.path().join("data/zeros"))
        .unwrap();
    f.write_all_at(b"x", 2100).unwrap();
    std::fs::remove_file(d.path().join("a.txt")).unwrap();
    std::fs::write(d.path().join("extra"), b"e").unwrap();
    std::fs::set_permissions(
        d.path().join("bin/run"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    std::fs::write(d.path().join("data/copy-of-run"), b"short").unwrap();
    let r = verify_dir(d.path(), &m, None).unwrap();
    assert!(!r.ok);
    assert_eq!(r.missing, vec!["a.txt"]);
    assert_eq!(r.extra, vec!["extra"]);
    assert_eq!(r.mode_mismatch, vec!["bin/run"]);
    assert_eq!(r.size_mismatch.len(), 1);
    assert_eq!(r.size_mismatch[0].path, "data/copy-of-run");
    assert_eq!(r.corrupt.len(), 1);
    assert_eq!(r.corrupt[0].path, "data/zeros");
    assert_eq!(r.corrupt[0].offset, 2048);
    let zi = m.find("data/zeros").unwrap();
    assert_eq!(r.corrupt[0].chunk, m.first_chunk(zi) + 2);
}

#[test]
fn diff_plans_links_copies_zeros_and_fetches() {
    let old: Vec<TreeFile> = vec![
        ("same".into(), vec![3u8; 3000], false),
        (
            "moved-from".into(),
            (0..4096).map(|i| (i / 7) as u8).collect(),
            false,
        ),
        (
            "partly".into(),
            (0..4096).map(|i| (i % 13) as u8).collect(),
            false,
        ),
    ];
    let mut partly = old[2].1.clone();
    partly[3000] ^= 0xff; // chunk 2 changes
    let new: Vec<TreeFile> = vec![
        ("same".into(), vec![3u8; 3000], false),
        ("elsewhere/moved".into(), old[1].1.clone(), false),
        ("exec-copy".into(), vec![3u8; 3000], true),
        ("partly".into(), partly, false),
        ("zeros".into(), vec![0u8; 2500], false),
        (
            "fresh".into(),
            (0..1500).map(|i| (i % 251) as u8 ^ 0x33).collect(),
            false,
        ),
    ];
    let d = tempfile::tempdir().unwrap();
    common::write_tree(d.path(), &old);
    let om = manifest_of_tree(CS, &old).unwrap();
    let nm = manifest_of_tree(CS, &new).unwrap();
    let p = plan(&nm, &[LocalSource::complete(d.path(), &om)]);
    let t = p.totals;
    // "same" and "elsewhere/moved" are linked; "exec-copy" differs in mode so
    // its chunks are copied instead.
    assert_eq!(t.files_linked, 2);
    assert_eq!(t.bytes_linked, 3000 + 4096);
    assert_eq!(t.chunks_zero, 3);
    assert_eq!(t.bytes_zero, 2500);
    // exec-copy: 3 chunks; partly: chunks 0, 1, 3 (chunk 2 changed).
    assert_eq!(t.chunks_copy, 3 + 3);
    assert_eq!(t.chunks_fetch, 1 + 2);
    assert_eq!(t.bytes_fetch, 1024 + 1500);
    assert_eq!(
        t.bytes_linked + t.bytes_zero + t.bytes_copy + t.bytes_fetch,
        t.bytes
    );
    let pi = nm.find("partly").unwrap();
    let first = nm.first_chunk(pi) as usize;
    assert_eq!(p.chunks[first + 2], ChunkAction::Fetch);
    assert_eq!(
        p.chunks[first + 1],
        ChunkAction::Copy {
            source: 0,
            file: om.find("partly").unwrap() as u32,
            offset: 1024
        }
    );
    assert_eq!(p.to_fetch().count() as u64, t.chunks_fetch);
    // Without local sources everything non-zero is fetched.
    let p = plan(&nm, &[]);
    assert_eq!(p.totals.bytes_fetch + p.totals.bytes_zero, p.totals.bytes);
}

#[test]
fn the_sample_is_capped_by_its_byte_budget() {
    use statesync_manifest::build::sample_rate_within;
    // Under the budget the rate decides; over it, about `budget` bytes.
    assert_eq!(
        sample_rate_within(1.0 / 128.0, 32 << 20, 1 << 30),
        1.0 / 128.0
    );
    let r = sample_rate_within(1.0 / 128.0, 32 << 20, 8 << 30);
    assert!((r * (8u64 << 30) as f64 - (32u64 << 20) as f64).abs() < 1.0);
    assert_eq!(sample_rate_within(2.0, 32 << 20, 0), 1.0, "clamped");
    assert_eq!(sample_rate_within(0.5, 0, 100), 0.0);
}

#[test]
fn an_incremental_build_rehashes_within_the_budget() {
    // 64 reused chunks of CS bytes: rate 1 would rehash all of them; a budget
    // of 8 chunks rehashes about 8.
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("s");
    std::fs::create_dir_all(&dir).unwrap();
    for i in 0..8u8 {
        std::fs::write(dir.join(format!("f{i}")), vec![i; (CS * 8) as usize]).unwrap();
    }
    let full = statesync_manifest::build(&dir, &opts(0.0, 1)).unwrap();
    let prev = statesync_manifest::build::Previous {
        manifest: &full.manifest,
        dir: None,
        stats: None,
    };
    let unlimited = statesync_manifest::build_incremental(
        &dir,
        &opts(1.0, 2),
        &prev,
        statesync_manifest::build::Hint::Exact(&Default::default()),
    )
    .unwrap();
    assert_eq!(unlimited.report.chunks_sampled, 64);
    let capped = statesync_manifest::build_incremental(
        &dir,
        &BuildOptions {
            sample_budget: 8 * u64::from(CS),
            ..opts(1.0, 2)
        },
        &prev,
        statesync_manifest::build::Hint::Exact(&Default::default()),
    )
    .unwrap();
    assert!(
        (2..=20).contains(&capped.report.chunks_sampled),
        "{} sampled",
        capped.report.chunks_sampled
    );
    assert_eq!(capped.manifest.root(), full.manifest.root());
}
