//! The reference chain: formats pinned, verification, execution on real
//! files and a real redb, retention over 100 checkpoints, restart and
//! backfill.

use statesync_chain::types::{Block, HEADER_LEN, Header, Spec};
use statesync_chain::{ChainError, Genesis, ImportError, Replica, ValidatorKey};
use statesync_manifest::Hash;
use std::path::Path;

fn small(interval: u64) -> (Spec, Vec<(u16, ValidatorKey)>) {
    let (mut g, keys) = Genesis::demo(4, 7);
    g.state_files = 8;
    g.file_size = 64 << 10;
    g.checkpoint_interval = interval;
    g.txs_per_block = 50;
    g.hot_percent = 10;
    let spec = g.spec().unwrap();
    let signers: Vec<(u16, ValidatorKey)> = keys
        .into_iter()
        .take(3)
        .enumerate()
        .map(|(i, k)| (i as u16, k))
        .collect();
    (spec, signers)
}

fn produce(dir: &Path, spec: &Spec, keys: &[(u16, ValidatorKey)], n: u64) -> (Replica, Vec<Block>) {
    let (mut r, _) = Replica::open(dir, spec.clone()).unwrap();
    let blocks = (0..n).map(|i| r.produce(keys, 1000 + i).unwrap()).collect();
    (r, blocks)
}

#[test]
fn golden_formats() {
    let (spec, keys) = small(5);
    assert_eq!(
        spec.id.to_hex(),
        "f0fb0cfb0a817db3daafe29a14c7a50fddff378c4ba06ec52db8c211cc5349e5"
    );
    let h = Header {
        chain: Hash([1; 32]),
        height: 42,
        parent: Hash([2; 32]),
        txs_root: Hash([3; 32]),
        state_root: Hash([4; 32]),
        time_ms: 1_700_000_000_000,
    };
    let e = h.encode();
    assert_eq!(e.len(), HEADER_LEN);
    assert_eq!(e[0], 1);
    assert_eq!(&e[33..41], &42u64.to_le_bytes());
    assert_eq!(
        h.hash().to_hex(),
        "18753b7415af92585c59a3d04b4f6b2c68183d98435c39125874b10a28fee24a"
    );
    assert_eq!(Header::decode(&e).unwrap(), h);
    let b = spec.produce(spec.id, 1, spec.gen_txs(1), Hash::ZERO, 5, &keys);
    assert_eq!(
        blake3::hash(&b.encode()).to_hex().to_string(),
        "62ae27bc2af2fc7bed0eb1f4b8c9a7f681b1854495a2ae1252cd253aed6d2136"
    );
    assert_eq!(Block::decode(&b.encode()).unwrap(), b);
}

#[test]
fn decoding_is_bounded_and_strict() {
    let (spec, keys) = small(5);
    let b = spec.produce(spec.id, 1, spec.gen_txs(1), Hash::ZERO, 5, &keys);
    let enc = b.encode();
    let mut x = 0x9e3779b97f4a7c15u64;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for i in 0..20_000 {
        let mut m = enc.clone();
        match i % 3 {
            0 => {
                let n = (next() % m.len() as u64) as usize;
                m.truncate(n);
            }
            1 => {
                let p = (next() % m.len() as u64) as usize;
                m[p] ^= 1 << (next() % 8);
            }
            _ => m = (0..(next() % 400)).map(|_| next() as u8).collect(),
        }
        if let Ok(d) = Block::decode(&m) {
            assert_eq!(d.encode(), m, "non-canonical encoding accepted");
            if m != enc {
                assert!(spec.verify(&d).is_err(), "a mutated block still verifies");
            }
        }
    }
    let mut long = enc.clone();
    long.push(0);
    assert!(Block::decode(&long).is_err());
}

#[test]
fn finality_needs_a_quorum_of_valid_signatures() {
    let (spec, keys) = small(5);
    let b = spec.produce(spec.id, 1, spec.gen_txs(1), Hash::ZERO, 5, &keys);
    spec.verify(&b).unwrap();
    let two = spec.produce(spec.id, 1, spec.gen_txs(1), Hash::ZERO, 5, &keys[..2]);
    assert!(matches!(
        spec.verify(&two),
        Err(ChainError::NoQuorum {
            have: 2,
            need: 3,
            ..
        })
    ));
    let mut forged = b.clone();
    forged.proof.sigs[1].1[5] ^= 1;
    assert!(matches!(
        spec.verify(&forged),
        Err(ChainError::BadSignature { index: 1, .. })
    ));
    let mut tampered = b.clone();
    tampered.txs[0].value[0] ^= 1;
    assert!(matches!(
        spec.verify(&tampered),
        Err(ChainError::TxsRoot { .. })
    ));
    let (other, okeys) = {
        let (g, k) = Genesis::demo(4, 8);
        (g.spec().unwrap(), k)
    };
    let foreign = other.produce(
        other.id,
        1,
        vec![],
        Hash::ZERO,
        5,
        &[
            (0, okeys[0].clone()),
            (1, okeys[1].clone()),
            (2, okeys[2].clone()),
        ],
    );
    assert!(matches!(
        spec.verify(&foreign),
        Err(ChainError::WrongChain { .. })
    ));
    let stray = spec.produce(spec.id, 1, vec![], Hash([9; 32]), 5, &keys);
    assert!(matches!(
        spec.verify(&stray),
        Err(ChainError::StrayStateRoot { .. })
    ));
    // Duplicate signer indices cannot fake a quorum.
    let mut dup = b.clone();
    dup.proof.sigs[2] = dup.proof.sigs[1];
    assert!(spec.verify(&dup).is_err());
}

#[test]
fn a_follower_reaches_the_same_state_and_roots() {
    let t = tempfile::tempdir().unwrap();
    let (spec, keys) = small(5);
    let (leader, blocks) = produce(&t.path().join("a"), &spec, &keys, 23);
    let (mut f, rep) = Replica::open(&t.path().join("b"), spec.clone()).unwrap();
    assert!(rep.generated_genesis);
    f.checkpoint_every = true;
    // In batches of 7, with one overlapping re-import.
    let mut i = 0;
    while i < blocks.len() {
        let end = (i + 7).min(blocks.len());
        let from = i.saturating_sub(1);
        let r = f.import(&blocks[from..end]).unwrap();
        for (h, root) in &r.checkpoints {
            assert_eq!(*root, blocks[*h as usize - 1].header.state_root.to_hex());
        }
        i = end;
    }
    assert_eq!(f.head(), leader.head());
    // A block that does not attach is the sender's fault.
    let (other_leader, other) = produce(&t.path().join("c"), &small(5).0, &keys, 1);
    drop(other_leader);
    let _ = other;
    let mut bad = blocks[22].clone();
    bad.header.parent = Hash([7; 32]);
    assert!(matches!(f.import(&[bad]), Err(ImportError::Bad(_))));
    // Restart: live state rebuilt from the latest checkpoint plus replay.
    drop(f);
    let (f2, rep) = Replica::open(&t.path().join("b"), spec.clone()).unwrap();
    assert_eq!(rep.checkpoint, 20);
    assert_eq!(rep.replayed, 3);
    assert_eq!(f2.head(), leader.head());
    let same = statesync_manifest::verify_dir(
        &f2.store.state_dir(20),
        &f2.store.load_manifest(20).unwrap(),
        None,
    );
    assert!(same.is_ok());
}

#[test]
fn a_hundred_checkpoints_leak_nothing() {
    let t = tempfile::tempdir().unwrap();
    let (spec, keys) = small(1);
    let (r, _) = produce(&t.path().join("a"), &spec, &keys, 100);
    let cps = r.store.list().unwrap();
    assert_eq!(
        cps.len(),
        3,
        "{:?}",
        cps.iter().map(|c| c.height).collect::<Vec<_>>()
    );
    assert_eq!(cps.last().unwrap().height, 100);
    let anchors = std::fs::read_dir(t.path().join("a/anchors"))
        .unwrap()
        .count();
    assert_eq!(anchors, 3);
    for d in ["store/staging", "store/trash"] {
        let p = t.path().join("a").join(d);
        if p.exists() {
            let left: Vec<_> = std::fs::read_dir(&p).unwrap().collect();
            assert!(left.is_empty(), "{d} holds {left:?}");
        }
    }
    // Disk: live + 3 checkpoints sharing unchanged files, well under 5 states.
    let du = dir_bytes(&t.path().join("a/store")) + dir_bytes(&t.path().join("a/live"));
    assert!(du < 5 * r.state_bytes(), "{du} bytes on disk");
}

fn dir_bytes(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut seen = std::collections::HashSet::new();
    let mut total = 0;
    let mut stack = vec![p.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let md = e.metadata().unwrap();
            if md.is_dir() {
                stack.push(e.path());
            } else if seen.insert(md.ino()) {
                total += md.blocks() * 512;
            }
        }
    }
    total
}

#[test]
fn state_sync_adoption_then_backfill() {
    let t = tempfile::tempdir().unwrap();
    let (spec, keys) = small(5);
    let (leader, blocks) = produce(&t.path().join("a"), &spec, &keys, 20);
    // The joiner receives checkpoint 20 by state sync (a copy here).
    let copy = t.path().join("b-incoming");
    std::fs::create_dir_all(&copy).unwrap();
    for f in statesync_manifest::build::scan(&leader.store.state_dir(20)).unwrap() {
        let to = copy.join(&f.path);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(&f.abs, &to).unwrap();
    }
    std::fs::create_dir_all(t.path().join("b")).unwrap();
    let (mut b, _) = Replica::open(&t.path().join("b"), spec.clone()).unwrap();
    let m = leader.store.load_manifest(20).unwrap();
    b.adopt(&blocks[19], &copy, &m).unwrap();
    assert_eq!(b.head(), leader.head());
    assert_eq!(b.low(), 20);
    // A forged history is rejected, the real one accepted, to genesis.
    let desc: Vec<Block> = blocks[..19].iter().rev().cloned().collect();
    let mut forged = desc[..5].to_vec();
    forged[2].txs.clear();
    assert!(b.backfill(&forged).is_err());
    assert_eq!(b.low(), 20);
    b.backfill(&desc[..10]).unwrap();
    assert_eq!(b.low(), 10);
    drop(b);
    let (mut b, rep) = Replica::open(&t.path().join("b"), spec.clone()).unwrap();
    assert_eq!(rep.low, 10, "backfill pointer survives a restart");
    b.backfill(&desc[10..]).unwrap();
    assert_eq!(b.low(), 1);
    // And the joiner continues forward.
    let (mut leader, _) = (leader, ());
    let more: Vec<Block> = (0..5)
        .map(|i| leader.produce(&keys, 2000 + i).unwrap())
        .collect();
    b.import(&more).unwrap();
    assert_eq!(b.head(), leader.head());
}

#[test]
fn an_unanchored_checkpoint_is_dropped_on_open() {
    let t = tempfile::tempdir().unwrap();
    let (spec, keys) = small(5);
    let (r, _) = produce(&t.path().join("a"), &spec, &keys, 12);
    drop(r);
    // Crash between checkpoint 10 and its anchor.
    std::fs::remove_file(t.path().join("a/anchors").join(format!("{:020}", 10))).unwrap();
    let (r, rep) = Replica::open(&t.path().join("a"), spec.clone()).unwrap();
    assert_eq!(rep.checkpoint, 5);
    assert_eq!(r.head().0, 12);
}

/// A checkpoint that cannot be written (here: the store's staging area is
/// broken) fails the step without losing anything: the leader's live state
/// is rebuilt and the block produced again; a follower keeps the writes in
/// its next change set, so its next checkpoint still has the committed root.
#[test]
fn a_failed_checkpoint_loses_nothing() {
    let t = tempfile::tempdir().unwrap();
    let (spec, keys) = small(5);
    let break_staging = |data: &Path| {
        let st = data.join("store/staging");
        std::fs::remove_dir_all(&st).unwrap();
        std::fs::write(&st, b"not a directory").unwrap();
    };
    let repair_staging = |data: &Path| {
        let st = data.join("store/staging");
        std::fs::remove_file(&st).unwrap();
        std::fs::create_dir(&st).unwrap();
    };
    // Leader.
    let a = t.path().join("a");
    let (mut leader, _) = Replica::open(&a, spec.clone()).unwrap();
    let mut blocks: Vec<Block> = (0..4).map(|i| leader.produce(&keys, i).unwrap()).collect();
    break_staging(&a);
    assert!(matches!(
        leader.produce(&keys, 4),
        Err(ImportError::Local(_))
    ));
    assert_eq!(
        leader.head().0,
        4,
        "a failed step must not advance the head"
    );
    repair_staging(&a);
    for i in 4..12 {
        blocks.push(leader.produce(&keys, 100 + i).unwrap());
    }
    // Follower, on a chain whose block 5 writes a file no later block
    // touches: the failed checkpoint's writes must reach checkpoint 10.
    let c = t.path().join("c");
    let (mut leader2, _) = Replica::open(&c, spec.clone()).unwrap();
    let slots_per_file = spec.genesis.file_size as u64 / 64;
    let tx = |key: u64, v: u8| statesync_chain::Tx {
        key,
        value: vec![v; 20],
    };
    let mut chain2 = Vec::new();
    for h in 1..=12u64 {
        let key = if h == 5 { 3 * slots_per_file + 7 } else { h };
        chain2.push(
            leader2
                .produce_txs(&keys, h, vec![tx(key, h as u8)])
                .unwrap(),
        );
    }
    let b = t.path().join("b");
    let (mut f, _) = Replica::open(&b, spec.clone()).unwrap();
    f.checkpoint_every = true;
    f.import(&chain2[..4]).unwrap();
    break_staging(&b);
    assert!(matches!(
        f.import(&chain2[4..5]),
        Err(ImportError::Local(_))
    ));
    repair_staging(&b);
    let r = f.import(&chain2[5..]).unwrap();
    assert_eq!(r.checkpoints.len(), 1, "{r:?}");
    assert_eq!(f.head(), leader2.head());
    let m = f.store.load_manifest(10).unwrap();
    assert_eq!(m.root(), chain2[9].header.state_root);
    statesync_manifest::verify_dir(&f.store.state_dir(10), &m, None).unwrap();
}

/// Block history retention: a long-running node keeps the last
/// `keep_blocks` blocks (never fewer than back to its oldest checkpoint),
/// advertises the new low, serves nothing below it, and its block store
/// stops growing.
#[test]
fn block_history_is_pruned_and_the_store_stays_bounded() {
    let t = tempfile::tempdir().unwrap();
    let (spec, keys) = small(10);
    let (mut r, _) = Replica::open(&t.path().join("a"), spec.clone()).unwrap();
    r.keep_blocks = Some(25);
    let size = || {
        std::fs::metadata(t.path().join("a/blocks.redb"))
            .unwrap()
            .len()
    };
    let mut sizes = Vec::new();
    for round in 0..6 {
        for i in 0..100u64 {
            r.produce(&keys, 1000 + round * 100 + i).unwrap();
        }
        sizes.push(size());
    }
    let (head, _) = r.head();
    assert_eq!(head, 600);
    let oldest_cp = r.store.list().unwrap().first().unwrap().height;
    let low = r.low();
    // The last checkpoint was taken at 600: history reaches back 25 blocks
    // or to the oldest kept checkpoint, whichever is lower.
    assert_eq!(
        low,
        (600 - 25).min(oldest_cp),
        "low {low}, oldest checkpoint {oldest_cp}"
    );
    assert_eq!(r.blocks.bounds().unwrap(), Some((low, 600)));
    assert!(r.blocks.get(low - 1).unwrap().is_none());
    assert!(r.blocks.get(low).unwrap().is_some());
    assert!(r.blocks.range_raw(1, 10, 1 << 20).unwrap().is_empty());
    // Freed pages are reused: the file does not grow once pruning runs.
    let last = *sizes.last().unwrap();
    assert!(
        last <= sizes[1] + sizes[1] / 2,
        "block store grew: {sizes:?}"
    );
    // Reopened, the bounds hold.
    drop(r);
    let (r, _) = Replica::open(&t.path().join("a"), spec).unwrap();
    assert_eq!(r.low(), low);
    assert_eq!(r.head().0, 600);
}

/// Validators with their own keys: the proposer executes and signs its
/// proposal, each validator executes it and votes, a quorum of votes makes
/// it final on every replica, with the same state roots; nobody signs two
/// blocks at one height, a restart included; a proposer that restarts
/// proposes the same block again; a wrong state root gets no vote.
#[test]
fn proposals_votes_and_finality_with_one_key_per_validator() {
    let (mut g, keys) = Genesis::demo(4, 7);
    g.state_files = 8;
    g.file_size = 64 << 10;
    g.checkpoint_interval = 3;
    g.txs_per_block = 50;
    g.payload_bytes = 10_000;
    let spec = g.spec().unwrap();
    let d = tempfile::tempdir().unwrap();
    let (mut p, _) = Replica::open(&d.path().join("p"), spec.clone()).unwrap();
    let mut vs: Vec<Replica> = (1..4)
        .map(|i| {
            Replica::open(&d.path().join(format!("v{i}")), spec.clone())
                .unwrap()
                .0
        })
        .collect();
    for round in 0..7u64 {
        let b = p.propose(&keys[0], 1000 + round).unwrap();
        assert_eq!(b.height(), round + 1);
        assert!(b.encode().len() > 10_000, "payload missing");
        assert_eq!(p.head().0, round, "a pending proposal is not the head");
        // The same proposal again while pending.
        assert_eq!(p.propose(&keys[0], 9999).unwrap().hash(), b.hash());
        let mut sigs = vec![b.proof.sigs[0]];
        for (i, v) in vs.iter_mut().enumerate().take(2) {
            let idx = i as u16 + 1;
            let sig = v.vote(idx, &keys[idx as usize], &b).unwrap();
            assert!(spec.check_vote(idx, &b.hash(), &sig));
            sigs.push((idx, sig));
        }
        sigs.sort_by_key(|s| s.0);
        let fin = Block {
            header: b.header.clone(),
            proof: statesync_chain::FinalityProof { sigs },
            txs: b.txs.clone(),
        };
        spec.verify(&fin).unwrap();
        p.import(std::slice::from_ref(&fin)).unwrap();
        for v in vs.iter_mut() {
            v.import(std::slice::from_ref(&fin)).unwrap();
        }
        assert_eq!(p.head(), (round + 1, fin.hash()));
        for v in &vs {
            assert_eq!(v.head(), (round + 1, fin.hash()));
            assert!(v.pending().is_none());
        }
    }
    // Checkpoints at 3 and 6 on every replica, the same roots.
    let roots =
        |r: &Replica| -> Vec<Hash> { r.store.list().unwrap().iter().map(|c| c.root).collect() };
    for v in &vs {
        assert_eq!(roots(v), roots(&p));
    }
    // One vote per height: a second block at height 8 is refused, before
    // and after a restart of the validator.
    let b8 = p.propose(&keys[0], 5000).unwrap();
    vs[0].vote(1, &keys[1], &b8).unwrap();
    let mut other = b8.clone();
    other.header.time_ms += 1;
    other.proof.sigs = vec![(0, Spec::vote(&keys[0], &other.hash()))];
    let e = vs[0].vote(1, &keys[1], &other).unwrap_err();
    assert!(e.to_string().contains("already voted"), "{e}");
    drop(vs.remove(0));
    let (mut v1, _) = Replica::open(&d.path().join("v1"), spec.clone()).unwrap();
    assert_eq!(
        v1.head().0,
        7,
        "the pending block is not final after a restart"
    );
    let e = v1.vote(1, &keys[1], &other).unwrap_err();
    assert!(e.to_string().contains("already voted"), "{e}");
    assert!(
        v1.vote(1, &keys[1], &b8).is_ok(),
        "the same block gets its vote again"
    );
    // The proposer restarts: it proposes the very same block 8.
    drop(p);
    let (mut p, _) = Replica::open(&d.path().join("p"), spec.clone()).unwrap();
    assert_eq!(p.head().0, 7);
    assert_eq!(p.propose(&keys[0], 7777).unwrap().hash(), b8.hash());
    // A proposal whose committed state root is wrong gets no vote, and the
    // validator's state is untouched.
    p.drop_pending().unwrap();
    assert_eq!(p.head().0, 7);
    let b8 = p.propose(&keys[0], 1).unwrap();
    let mut sigs = vec![b8.proof.sigs[0], (1, v1.vote(1, &keys[1], &b8).unwrap())];
    sigs.push((2, vs[0].vote(2, &keys[2], &b8).unwrap()));
    let fin8 = Block {
        header: b8.header.clone(),
        proof: statesync_chain::FinalityProof { sigs },
        txs: b8.txs.clone(),
    };
    p.import(std::slice::from_ref(&fin8)).unwrap();
    v1.import(std::slice::from_ref(&fin8)).unwrap();
    let b9 = p.propose(&keys[0], 2).unwrap();
    assert_eq!(b9.height(), 9, "a checkpoint height");
    let mut forged = b9.clone();
    forged.header.state_root = Hash([7; 32]);
    forged.proof.sigs = vec![(0, Spec::vote(&keys[0], &forged.hash()))];
    let e = v1.vote(1, &keys[1], &forged).unwrap_err();
    assert!(
        matches!(e, ImportError::Bad(ChainError::StateRoot { .. })),
        "{e}"
    );
    assert_eq!(v1.head().0, 8);
    assert!(
        v1.vote(1, &keys[1], &b9).is_ok(),
        "the honest proposal still gets a vote"
    );
    // A proposal not signed by the proposer is refused.
    let mut unsigned = b9.clone();
    unsigned.proof.sigs = vec![(1, Spec::vote(&keys[1], &b9.hash()))];
    assert!(matches!(
        vs[0].vote(2, &keys[2], &unsigned),
        Err(ImportError::Bad(_))
    ));
}

#[test]
fn a_final_head_carries_the_proof_without_the_transactions() {
    let (spec, keys) = small(5);
    let b = spec.produce(spec.id, 1, spec.gen_txs(1), Hash::ZERO, 5, &keys);
    let head = b.encode_head();
    assert_eq!(head.len(), HEADER_LEN + 2 + 3 * 66);
    assert_eq!(
        &b.encode()[..head.len()],
        &head[..],
        "a prefix of the block"
    );
    let (h, p) = Block::decode_head(&head).unwrap();
    assert_eq!(h, b.header);
    assert_eq!(p, b.proof);
    spec.verify_proof(&h, &p).unwrap();
    // Joined with the gossiped body it is the block.
    let joined = Block {
        header: h,
        proof: p,
        txs: b.txs.clone(),
    };
    assert_eq!(joined, b);
    assert!(Block::decode_head(&head[..head.len() - 1]).is_err());
    let mut long = head.clone();
    long.push(0);
    assert!(Block::decode_head(&long).is_err());
    let mut forged = head.clone();
    let last = forged.len() - 1;
    forged[last] ^= 1;
    let (h, p) = Block::decode_head(&forged).unwrap();
    assert!(spec.verify_proof(&h, &p).is_err());
}
