//! Format tests: golden values, canonical round trips, every rejection the
//! spec lists, proofs of pieces and chunks, and decoding fuzz.

mod common;

use proptest::prelude::*;
use statesync_manifest::format::{
    self, CHUNK_ENTRY_LEN, ChunkEntry, FileEntry, Manifest, ManifestError, PREFIX_LEN, RootHeader,
};
use statesync_manifest::hash::{self, Domain, Hash};
use statesync_manifest::path::PathError;
use statesync_manifest::reference::manifest_of_tree;

fn sample() -> Manifest {
    manifest_of_tree(1024, &common::sample_tree()).unwrap()
}

#[test]
fn golden_domain_keys() {
    // The context strings are part of the format: changing one changes every
    // hash. Pin the derived keys' hashes.
    assert_eq!(
        blake3::hash(Domain::Chunk.key()).to_hex().as_str(),
        GOLDEN_CHUNK_KEY,
        "chunk domain key changed: that is a format change"
    );
    assert_eq!(
        hash::chunk_hash(b"statesync").to_hex(),
        GOLDEN_CHUNK_HASH,
        "chunk hash changed"
    );
}

const GOLDEN_CHUNK_KEY: &str = "1ef89dacf58c07c8f27805de1166a1937fd1bfbb04deb9a7654272c79f12f764";
const GOLDEN_CHUNK_HASH: &str = "1fdee2dbea9f32410c73f599b68181a52b58c8031d05bbc7efa68d6d034d94c1";
const GOLDEN_ROOT: &str = "4d9ba18f05afa30e2dcffc22561a7218317283d55db74ab041b0337043c597cc";
const GOLDEN_ENCODING_HASH: &str =
    "58a8bc189e5bd0fc02c3ff0e88e3c808942a1dd47b85b8ae6f512772bd4d7cd3";
const GOLDEN_ENCODING_LEN: usize = 858;

#[test]
fn golden_manifest() {
    let m = sample();
    let enc = m.encode();
    assert_eq!(m.root().to_hex(), GOLDEN_ROOT, "manifest root changed");
    assert_eq!(enc.len(), GOLDEN_ENCODING_LEN);
    assert_eq!(
        blake3::hash(&enc).to_hex().as_str(),
        GOLDEN_ENCODING_HASH,
        "encoding changed"
    );
    // The prefix layout, byte by byte (docs/manifest.md).
    assert_eq!(&enc[0..4], b"SSMF");
    assert_eq!(&enc[4..6], &1u16.to_le_bytes());
    assert_eq!(&enc[6..8], &[0, 0]);
    assert_eq!(&enc[8..12], &1024u32.to_le_bytes());
    assert_eq!(&enc[12..16], &5u32.to_le_bytes());
    assert_eq!(&enc[16..24], &(1 + 3 + 5 + 3u64).to_le_bytes());
    // First file entry: "a.txt".
    assert_eq!(&enc[24..26], &5u16.to_le_bytes());
    assert_eq!(&enc[26..31], b"a.txt");
    assert_eq!(&enc[31..39], &12u64.to_le_bytes());
    assert_eq!(enc[39], 0);
}

#[test]
fn identical_files_have_identical_hashes_and_zero_chunks_are_known() {
    let m = sample();
    let run = &m.files()[m.find("bin/run").unwrap()];
    let copy = &m.files()[m.find("data/copy-of-run").unwrap()];
    assert_eq!(run.hash, copy.hash);
    assert!(run.executable && !copy.executable);
    let zi = m.find("data/zeros").unwrap();
    let zc = m.file_chunks(zi);
    assert_eq!(zc.len(), 5);
    assert!(zc.iter().all(ChunkEntry::is_zero));
    assert_eq!(zc[4].len, 5000 - 4 * 1024);
    assert!(!m.file_chunks(m.find("a.txt").unwrap())[0].is_zero());
}

#[test]
fn roundtrip_is_canonical() {
    let m = sample();
    let enc = m.encode();
    let d = Manifest::decode(&enc).unwrap();
    assert_eq!(d.encode(), enc);
    assert_eq!(d.root(), m.root());
    assert!(Manifest::decode_verified(&enc, &m.root()).is_ok());
    let mut other = m.root();
    other.0[0] ^= 1;
    assert!(matches!(
        Manifest::decode_verified(&enc, &other),
        Err(ManifestError::RootMismatch { .. })
    ));
}

#[test]
fn root_commits_to_everything() {
    let base = common::sample_tree();
    let root = manifest_of_tree(1024, &base).unwrap().root();
    // chunk size
    assert_ne!(manifest_of_tree(2048, &base).unwrap().root(), root);
    // path
    let mut t = base.clone();
    t[0].0 = "b.txt".into();
    assert_ne!(manifest_of_tree(1024, &t).unwrap().root(), root);
    // mode
    let mut t = base.clone();
    t[0].2 = true;
    assert_ne!(manifest_of_tree(1024, &t).unwrap().root(), root);
    // one byte of content
    let mut t = base.clone();
    t[2].1[4999] = 1;
    assert_ne!(manifest_of_tree(1024, &t).unwrap().root(), root);
    // size (an extra zero byte)
    let mut t = base;
    t[2].1.push(0);
    assert_ne!(manifest_of_tree(1024, &t).unwrap().root(), root);
}

/// Re-encodes a manifest with a patched file table, bypassing validation.
fn raw_encode(chunk_size: u32, files: &[FileEntry], chunks: &[ChunkEntry]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(b"SSMF");
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&chunk_size.to_le_bytes());
    out.extend_from_slice(&(files.len() as u32).to_le_bytes());
    out.extend_from_slice(&(chunks.len() as u64).to_le_bytes());
    for f in files {
        format::encode_file_entry(f, &mut out);
    }
    for c in chunks {
        format::encode_chunk_entry(c, &mut out);
    }
    out
}

fn with_path(path: &str) -> Result<Manifest, ManifestError> {
    let m = sample();
    let mut files = m.files().to_vec();
    files[0].path = path.into();
    Manifest::decode(&raw_encode(1024, &files, m.chunks()))
}

#[test]
fn rejects_bad_paths() {
    let cases: &[(&str, PathError)] = &[
        ("/abs", PathError::Absolute),
        ("../up", PathError::DotDot),
        ("a/../../up", PathError::DotDot),
        ("./a", PathError::Dot),
        ("a//b", PathError::EmptyComponent),
        ("a\0", PathError::Nul),
    ];
    for (p, want) in cases {
        match with_path(p) {
            Err(ManifestError::BadPath { err, path, .. }) => {
                assert_eq!(&err, want, "{p:?}");
                assert_eq!(&path, p);
            }
            other => panic!("{p:?}: {other:?}"),
        }
    }
    let m = sample();
    let mut files = m.files().to_vec();
    files[0].path = String::new();
    assert!(matches!(
        Manifest::decode(&raw_encode(1024, &files, m.chunks())),
        Err(ManifestError::BadPath {
            err: PathError::Empty,
            ..
        })
    ));
}

#[test]
fn rejects_structural_errors() {
    let m = sample();
    let (files, chunks) = (m.files().to_vec(), m.chunks().to_vec());

    // Duplicate and unsorted paths.
    let mut f = files.clone();
    f[1].path = f[0].path.clone();
    assert!(matches!(
        Manifest::decode(&raw_encode(1024, &f, &chunks)),
        Err(ManifestError::DuplicatePath { .. })
    ));
    let mut f = files.clone();
    f.swap(0, 1);
    assert!(matches!(
        Manifest::decode(&raw_encode(1024, &f, &chunks)),
        Err(ManifestError::Unsorted { .. })
    ));
    // A file under a file.
    let mut f = files.clone();
    f[0].path = "a".into();
    f[1].path = "a/x".into();
    assert!(matches!(
        Manifest::decode(&raw_encode(1024, &f, &chunks)),
        Err(ManifestError::FileUnderFile { .. })
    ));
    // Size that disagrees with the chunk table.
    let mut f = files.clone();
    f[0].size += 1;
    assert!(matches!(
        Manifest::decode(&raw_encode(1024, &f, &chunks)),
        Err(ManifestError::BadChunk { .. } | ManifestError::FileHash { .. })
    ));
    let mut f = files.clone();
    f[2].size += 2048; // needs two more chunks
    assert!(matches!(
        Manifest::decode(&raw_encode(1024, &f, &chunks)),
        Err(ManifestError::ChunkCount { .. })
    ));
    // Chunk entry fields.
    let mut c = chunks.clone();
    c[1].offset += 1;
    assert!(matches!(
        Manifest::decode(&raw_encode(1024, &files, &c)),
        Err(ManifestError::BadChunk { index: 1, .. })
    ));
    // A chunk hash that does not match the file hash.
    let mut c = chunks.clone();
    c[0].hash.0[0] ^= 1;
    assert!(matches!(
        Manifest::decode(&raw_encode(1024, &files, &c)),
        Err(ManifestError::FileHash { .. })
    ));
    // Mode byte.
    let mut enc = m.encode();
    enc[39] = 2;
    assert!(matches!(
        Manifest::decode(&enc),
        Err(ManifestError::BadMode { mode: 2, .. })
    ));
}

#[test]
fn rejects_header_errors_and_bounds_allocation() {
    let enc = sample().encode();
    let patch = |at: usize, bytes: &[u8]| {
        let mut e = enc.clone();
        e[at..at + bytes.len()].copy_from_slice(bytes);
        Manifest::decode(&e)
    };
    assert_eq!(patch(0, b"XXXX").unwrap_err(), ManifestError::BadMagic);
    assert_eq!(
        patch(4, &2u16.to_le_bytes()).unwrap_err(),
        ManifestError::UnsupportedVersion(2)
    );
    assert_eq!(patch(6, &[1, 0]).unwrap_err(), ManifestError::Flags(1));
    assert_eq!(
        patch(8, &1000u32.to_le_bytes()).unwrap_err(),
        ManifestError::ChunkSize(1000)
    );
    // Huge counts with a short input: refused before any allocation.
    assert!(matches!(
        patch(12, &format::MAX_FILES.to_le_bytes()).unwrap_err(),
        ManifestError::CountTooLarge { .. }
    ));
    assert!(matches!(
        patch(12, &u32::MAX.to_le_bytes()).unwrap_err(),
        ManifestError::TooManyFiles { .. }
    ));
    assert!(matches!(
        patch(16, &format::MAX_CHUNKS.to_le_bytes()).unwrap_err(),
        ManifestError::CountTooLarge { .. }
    ));
    assert!(matches!(
        patch(16, &u64::MAX.to_le_bytes()).unwrap_err(),
        ManifestError::TooManyChunks { .. }
    ));
    // Truncation anywhere and trailing bytes.
    for cut in 0..enc.len() {
        assert!(Manifest::decode(&enc[..cut]).is_err(), "cut at {cut}");
    }
    let mut long = enc.clone();
    long.push(0);
    assert_eq!(
        Manifest::decode(&long).unwrap_err(),
        ManifestError::Trailing(1)
    );
    let _ = PREFIX_LEN;
}

/// A manifest large enough to have several pieces of each table.
fn big() -> Manifest {
    let files: Vec<_> = (0..2500u32)
        .map(|i| {
            let len = (i as usize * 37) % 3000;
            let data: Vec<u8> = (0..len).map(|j| (j as u32 ^ i) as u8).collect();
            (format!("d{}/f{i:05}", i % 7), data, i % 5 == 0)
        })
        .collect();
    manifest_of_tree(1024, &files).unwrap()
}

#[test]
fn pieces_and_chunks_prove_against_the_root() {
    let m = big();
    let root = m.root();
    let header = RootHeader::decode_verified(&m.header().encode(), &root).unwrap();
    assert!(header.file_piece_count() >= 3);
    assert!(header.chunk_piece_count() >= 2);
    let mut files = Vec::new();
    for j in 0..header.file_piece_count() {
        let (entries, proof) = m.file_piece(j).unwrap();
        header.verify_file_piece(j, entries, &proof).unwrap();
        assert!(proof.len() <= 3, "logarithmic proof");
        // Tampering with any entry or the proof fails.
        let mut bad = entries.to_vec();
        bad[0].size ^= 1;
        assert!(header.verify_file_piece(j, &bad, &proof).is_err());
        assert!(header.verify_file_piece(j, &entries[1..], &proof).is_err());
        if !proof.is_empty() {
            let mut p = proof.clone();
            p[0].0[5] ^= 1;
            assert!(header.verify_file_piece(j, entries, &p).is_err());
        }
        files.extend_from_slice(entries);
    }
    let mut chunks = Vec::new();
    for j in 0..header.chunk_piece_count() {
        let (entries, proof) = m.chunk_piece(j).unwrap();
        header.verify_chunk_piece(j, entries, &proof).unwrap();
        let mut bad = entries.to_vec();
        bad[3].hash.0[0] ^= 1;
        assert!(header.verify_chunk_piece(j, &bad, &proof).is_err());
        // A piece presented as another piece fails.
        if j > 0 {
            assert!(header.verify_chunk_piece(j - 1, entries, &proof).is_err());
        }
        chunks.extend_from_slice(entries);
    }
    assert!(m.file_piece(header.file_piece_count()).is_none());
    // The pieces reassemble into the same manifest.
    let again = Manifest::new(m.chunk_size(), files, chunks).unwrap();
    assert_eq!(again.root(), root);

    // A single chunk: entry proof (log size) then data.
    let n = m.chunks().len() as u64;
    for idx in [0, 1, n / 2, n - 1] {
        let e = m.chunks()[idx as usize];
        let proof = m.chunk_proof(idx).unwrap();
        assert!(proof.len() <= 64 - (n - 1).leading_zeros() as usize);
        header.verify_chunk_entry(idx, &e, &proof).unwrap();
        assert!(header.verify_chunk_entry(idx ^ 1, &e, &proof).is_err());
        let mut forged = e;
        forged.hash = Hash([9; 32]);
        assert!(header.verify_chunk_entry(idx, &forged, &proof).is_err());
    }
    let data = b"x".repeat(10);
    let e = ChunkEntry {
        file: 0,
        offset: 0,
        len: 10,
        hash: hash::chunk_hash(&data),
    };
    format::verify_chunk_data(0, &e, &data).unwrap();
    assert!(format::verify_chunk_data(0, &e, &data[1..]).is_err());
    assert!(format::verify_chunk_data(0, &e, &b"y".repeat(10)).is_err());
}

#[test]
fn small_tables_have_one_piece_at_the_root() {
    let m = sample();
    let h = *m.header();
    assert_eq!(h.file_piece_count(), 1);
    let (e, p) = m.file_piece(0).unwrap();
    assert!(p.is_empty());
    h.verify_file_piece(0, e, &p).unwrap();
    let (e, p) = m.chunk_piece(0).unwrap();
    h.verify_chunk_piece(0, e, &p).unwrap();
    let empty = Manifest::new(1024, vec![], vec![]).unwrap();
    assert_eq!(empty.header().file_piece_count(), 0);
    assert_eq!(
        Manifest::decode(&empty.encode()).unwrap().root(),
        empty.root()
    );
}

fn fuzz_cases() -> u32 {
    std::env::var("STATESYNC_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000)
}

/// Decoding arbitrary bytes never panics; whatever decodes is canonical.
#[test]
fn decode_random_bytes_never_panics() {
    let mut rng = Rng::new(0x5eed_0001);
    let mut accepted = 0;
    for i in 0..fuzz_cases() {
        let len = (rng.next_u64() % 300) as usize;
        let mut buf: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
        // Half the inputs start with a valid prefix so decoding goes deeper.
        if i % 2 == 0 && buf.len() >= 24 {
            buf[..4].copy_from_slice(b"SSMF");
            buf[4..8].copy_from_slice(&[1, 0, 0, 0]);
            buf[8..12].copy_from_slice(&1024u32.to_le_bytes());
            let nf = (rng.next_u64() % 4) as u32;
            buf[12..16].copy_from_slice(&nf.to_le_bytes());
            buf[16..24].copy_from_slice(&(rng.next_u64() % 4).to_le_bytes());
        }
        if let Ok(m) = Manifest::decode(&buf) {
            assert_eq!(m.encode(), buf);
            accepted += usize::from(!m.files().is_empty());
        }
        let _ = RootHeader::decode(&buf);
    }
    // Random bytes essentially never form a non-empty valid manifest (hashes
    // must chain); a bare prefix with zero counts is a valid empty one.
    assert!(accepted <= 1);
}

/// Mutations of a valid encoding never panic and never yield a non-canonical
/// manifest; most are rejected.
#[test]
fn decode_mutated_manifests_never_panics() {
    let enc = sample().encode();
    let mut rng = Rng::new(0x5eed_0002);
    let mut accepted = 0u32;
    for _ in 0..fuzz_cases() {
        let mut e = enc.clone();
        for _ in 0..1 + rng.next_u64() % 4 {
            let at = (rng.next_u64() as usize) % e.len().max(1);
            match rng.next_u64() % 6 {
                0 => e[at] ^= 1 << (rng.next_u64() % 8),
                1 => e[at] = rng.next_u64() as u8,
                2 => e.truncate(at),
                3 => e.insert(at, rng.next_u64() as u8),
                4 => {
                    e.remove(at.min(e.len().saturating_sub(1)));
                }
                _ => {
                    // Overwrite a length or count field with an extreme value.
                    let v = [0u8, 0xff][(rng.next_u64() % 2) as usize];
                    for b in e.iter_mut().skip(at).take(8) {
                        *b = v;
                    }
                }
            }
            if e.is_empty() {
                break;
            }
        }
        if let Ok(m) = Manifest::decode(&e) {
            assert_eq!(m.encode(), e, "accepted input must be canonical");
            accepted += 1;
        }
    }
    // Only mutations of free-form fields (path letters, mode within a valid
    // set) can survive; hashes chain, so almost everything is rejected.
    assert!(
        u64::from(accepted) * 20 < u64::from(fuzz_cases()),
        "{accepted} accepted"
    );
}

use statesync_manifest::rng::SplitMix64 as Rng;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]
    /// Proptest-shrinkable variant over structured inputs: valid prefix, random
    /// entries.
    #[test]
    fn decode_structured_garbage(files in prop::collection::vec((".{0,12}", any::<u64>(), 0u8..3, any::<[u8; 32]>()), 0..5),
                                 chunks in prop::collection::vec((any::<u32>(), any::<u32>(), any::<u64>(), any::<[u8; 32]>()), 0..5)) {
        let mut out = Vec::new();
        out.extend_from_slice(b"SSMF");
        out.extend_from_slice(&[1, 0, 0, 0]);
        out.extend_from_slice(&1024u32.to_le_bytes());
        out.extend_from_slice(&(files.len() as u32).to_le_bytes());
        out.extend_from_slice(&(chunks.len() as u64).to_le_bytes());
        for (p, size, mode, h) in &files {
            out.extend_from_slice(&(p.len() as u16).to_le_bytes());
            out.extend_from_slice(p.as_bytes());
            out.extend_from_slice(&size.to_le_bytes());
            out.push(*mode);
            out.extend_from_slice(h);
        }
        for (f, l, o, h) in &chunks {
            out.extend_from_slice(&f.to_le_bytes());
            out.extend_from_slice(&l.to_le_bytes());
            out.extend_from_slice(&o.to_le_bytes());
            out.extend_from_slice(h);
        }
        if let Ok(m) = Manifest::decode(&out) {
            prop_assert_eq!(m.encode(), out);
        }
        let _ = CHUNK_ENTRY_LEN;
    }
}
