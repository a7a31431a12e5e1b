//! Golden encodings of every wire message, round trips, limits, and decoding
//! fuzz (random and mutated inputs never panic; accepted inputs are canonical).

use statesync_manifest::hash::Hash;
use statesync_manifest::reference::manifest_of_tree;
use statesync_proto::*;

fn manifest() -> statesync_manifest::Manifest {
    let files = vec![
        ("a".to_string(), b"hello".to_vec(), false),
        ("b/c".to_string(), vec![7u8; 3000], true),
    ];
    manifest_of_tree(1024, &files).unwrap()
}

fn all_messages() -> (Vec<Request>, Vec<Response>) {
    let m = manifest();
    let root = m.root();
    let advert = SignedAdvert {
        body: Advert {
            seq: 9,
            entries: vec![AdvertEntry {
                height: 100,
                root,
                bytes: 3005,
            }],
        }
        .encode(),
        signature: vec![0xab; 64],
    };
    let (fe, fp) = m.file_piece(0).unwrap();
    let (ce, cp) = m.chunk_piece(0).unwrap();
    let reqs = vec![
        Request::GetHeader { root },
        Request::GetFilePiece { root, index: 0 },
        Request::GetChunkPiece { root, index: 3 },
        Request::GetChunks {
            root,
            indices: vec![0, 2, 3],
        },
        Request::GetAdvert,
        Request::Announce {
            advert: advert.clone(),
        },
    ];
    let resps = vec![
        Response::Header {
            header: m.header().encode(),
        },
        Response::FilePiece {
            index: 0,
            entries: fe.to_vec(),
            proof: fp,
        },
        Response::ChunkPiece {
            index: 0,
            entries: ce.to_vec(),
            proof: cp,
        },
        Response::Chunks {
            chunks: vec![
                (0, Bytes::from_static(b"hello")),
                (2, vec![7u8; 1024].into()),
            ],
        },
        Response::Advert { advert },
        Response::Ack,
        Response::Busy {
            retry_after_ms: 250,
        },
        Response::NotFound,
        Response::Refused {
            reason: "bad request".into(),
        },
    ];
    (reqs, resps)
}

/// Hash of all golden encodings, in order: any change to any message's bytes
/// changes it. Update deliberately, with a protocol version bump.
const GOLDEN_WIRE: &str = "0731b5192921de8d55e0c639ba0782812a74667e05a8d64367fee6939793f6eb";

#[test]
fn golden_encodings() {
    let (reqs, resps) = all_messages();
    let mut h = blake3::Hasher::new();
    for r in &reqs {
        h.update(&frame(&r.encode()));
    }
    for r in &resps {
        h.update(&frame(&r.encode()));
    }
    assert_eq!(
        h.finalize().to_hex().as_str(),
        GOLDEN_WIRE,
        "wire format changed"
    );
    // Byte-level spot checks (docs/protocol.md).
    let root = manifest().root();
    let e = Request::GetChunks {
        root,
        indices: vec![5],
    }
    .encode();
    assert_eq!(e[0], 0x04);
    assert_eq!(&e[1..33], &root.0);
    assert_eq!(&e[33..35], &1u16.to_le_bytes());
    assert_eq!(&e[35..43], &5u64.to_le_bytes());
    assert_eq!(
        Response::Busy { retry_after_ms: 7 }.encode(),
        vec![0xe0, 7, 0, 0, 0]
    );
    assert_eq!(Response::NotFound.encode(), vec![0xe1]);
    assert_eq!(frame(&[1, 2]), vec![2, 0, 0, 0, 1, 2]);
}

#[test]
fn roundtrips() {
    let (reqs, resps) = all_messages();
    for r in reqs {
        assert_eq!(Request::decode(&r.encode()).unwrap(), r);
    }
    for r in resps {
        assert_eq!(Response::decode(&r.encode()).unwrap(), r);
    }
    let a = Advert {
        seq: 1,
        entries: vec![],
    };
    assert_eq!(Advert::decode(&a.encode()).unwrap(), a);
}

#[test]
fn pieces_on_the_wire_verify_against_the_root() {
    let m = manifest();
    let (_, resps) = all_messages();
    let header =
        statesync_manifest::RootHeader::decode_verified(&m.header().encode(), &m.root()).unwrap();
    for r in resps {
        match Response::decode(&r.encode()).unwrap() {
            Response::FilePiece {
                index,
                entries,
                proof,
            } => header.verify_file_piece(index, &entries, &proof).unwrap(),
            Response::ChunkPiece {
                index,
                entries,
                proof,
            } => header.verify_chunk_piece(index, &entries, &proof).unwrap(),
            _ => {}
        }
    }
}

#[test]
fn limits_are_enforced_before_allocation() {
    let root = Hash([1; 32]);
    // Too many indices.
    let mut e = vec![0x04];
    e.extend_from_slice(&root.0);
    e.extend_from_slice(&2000u16.to_le_bytes());
    assert!(matches!(Request::decode(&e), Err(ProtoError::Limit { .. })));
    // Zero indices.
    let mut e = vec![0x04];
    e.extend_from_slice(&root.0);
    e.extend_from_slice(&0u16.to_le_bytes());
    assert!(matches!(Request::decode(&e), Err(ProtoError::Limit { .. })));
    // Oversized request.
    assert!(matches!(
        Request::decode(&vec![0u8; MAX_REQUEST_LEN + 1]),
        Err(ProtoError::TooLong { .. })
    ));
    // A piece claiming 4 billion entries in a tiny message.
    let mut e = vec![0x83];
    e.extend_from_slice(&0u64.to_le_bytes());
    e.extend_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(
        Response::decode(&e),
        Err(ProtoError::Limit { .. })
    ));
    // Chunk data longer than the message.
    let mut e = vec![0x84, 1, 0];
    e.extend_from_slice(&0u64.to_le_bytes());
    e.extend_from_slice(&u32::MAX.to_le_bytes());
    assert!(Response::decode(&e).is_err());
    // Frames.
    assert!(matches!(
        check_frame_len(u32::MAX.to_le_bytes(), MAX_RESPONSE_LEN),
        Err(ProtoError::TooLong { .. })
    ));
    assert!(matches!(
        check_frame_len([0; 4], MAX_RESPONSE_LEN),
        Err(ProtoError::Empty)
    ));
    assert_eq!(check_frame_len(5u32.to_le_bytes(), 10), Ok(5));
    // Unknown tags, empty input, trailing bytes, bad UTF-8.
    assert_eq!(Request::decode(&[0x7f]), Err(ProtoError::UnknownTag(0x7f)));
    assert_eq!(Response::decode(&[]), Err(ProtoError::Empty));
    assert_eq!(Response::decode(&[0xe1, 0]), Err(ProtoError::Trailing(1)));
    assert_eq!(
        Response::decode(&[0xe2, 2, 0, 0xff, 0xfe]),
        Err(ProtoError::Utf8)
    );
    // A piece entry with a traversal path is refused by the entry decoder.
    let m = manifest();
    let (fe, fp) = m.file_piece(0).unwrap();
    let mut entries = fe.to_vec();
    entries[0].path = "..".into();
    let enc = Response::FilePiece {
        index: 0,
        entries,
        proof: fp,
    }
    .encode();
    let err = Response::decode(&enc).unwrap_err();
    assert!(err.to_string().contains(".."), "{err}");
}

use statesync_manifest::rng::SplitMix64 as Rng;

fn fuzz_cases() -> u64 {
    std::env::var("STATESYNC_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000)
}

#[test]
fn random_and_mutated_messages_never_panic_and_accepted_ones_are_canonical() {
    let (reqs, resps) = all_messages();
    let seeds: Vec<Vec<u8>> = reqs
        .iter()
        .map(Request::encode)
        .chain(resps.iter().map(Response::encode))
        .collect();
    let mut rng = Rng::new(42);
    for i in 0..fuzz_cases() {
        let buf: Vec<u8> = if i % 3 == 0 {
            let len = (rng.next_u64() % 200) as usize;
            (0..len).map(|_| rng.next_u64() as u8).collect()
        } else {
            let mut e = seeds[(rng.next_u64() as usize) % seeds.len()].clone();
            for _ in 0..1 + rng.next_u64() % 3 {
                if e.is_empty() {
                    break;
                }
                let at = (rng.next_u64() as usize) % e.len();
                match rng.next_u64() % 4 {
                    0 => e[at] ^= 1 << (rng.next_u64() % 8),
                    1 => e.truncate(at),
                    2 => e.insert(at, rng.next_u64() as u8),
                    _ => e[at] = 0xff,
                }
            }
            e
        };
        if let Ok(r) = Request::decode(&buf) {
            assert_eq!(r.encode(), buf);
        }
        let decoded = Response::decode(&buf);
        if let Ok(r) = &decoded {
            assert_eq!(r.encode(), buf);
        }
        // Decoding in place accepts and rejects exactly the same inputs.
        assert_eq!(Response::decode_owned(buf.clone().into()), decoded);
        let _ = Advert::decode(&buf);
    }
}

mod blocks_protocol {
    use statesync_proto::blocks::*;

    fn all() -> (Vec<BlockRequest>, Vec<BlockResponse>) {
        (
            vec![
                BlockRequest::GetStatus,
                BlockRequest::GetBlocks {
                    start: 7,
                    count: 64,
                },
                BlockRequest::NewBlock {
                    block: vec![1, 2, 3],
                },
                BlockRequest::Hello {
                    index: 3,
                    sig: [0x5a; 64],
                },
                BlockRequest::Vote {
                    height: 9,
                    hash: [0x11; 32],
                    index: 2,
                    sig: [0x22; 64],
                },
                BlockRequest::Gossip {
                    msg: vec![0x01, 0x02],
                },
                BlockRequest::Subscribe,
                BlockRequest::Final {
                    head: vec![0x33; 7],
                },
            ],
            vec![
                BlockResponse::Status(Status {
                    head: 120,
                    head_hash: [5; 32],
                    low: 1,
                    checkpoint: 120,
                }),
                BlockResponse::Blocks {
                    blocks: vec![vec![9; 10], vec![]],
                },
                BlockResponse::Ack,
                BlockResponse::Busy {
                    retry_after_ms: 250,
                },
                BlockResponse::NotFound,
            ],
        )
    }

    #[test]
    fn golden_and_round_trip() {
        let (reqs, resps) = all();
        let mut h = blake3::Hasher::new();
        for r in &reqs {
            let e = r.encode();
            assert_eq!(BlockRequest::decode(&e).unwrap(), *r);
            h.update(&e);
        }
        for r in &resps {
            let e = r.encode();
            assert_eq!(BlockResponse::decode(&e).unwrap(), *r);
            h.update(&e);
        }
        assert_eq!(
            BlockRequest::GetBlocks {
                start: 7,
                count: 64
            }
            .encode(),
            [0x11, 7, 0, 0, 0, 0, 0, 0, 0, 64, 0, 0, 0]
        );
        let v = BlockRequest::Vote {
            height: 9,
            hash: [0x11; 32],
            index: 2,
            sig: [0x22; 64],
        }
        .encode();
        assert_eq!(v.len(), 107);
        assert_eq!(&v[..9], &[0x14, 9, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&v[41..43], &[2, 0]);
        let hello = BlockRequest::Hello {
            index: 3,
            sig: [0x5a; 64],
        }
        .encode();
        assert_eq!(&hello[..3], &[0x13, 3, 0]);
        assert_eq!(
            BlockRequest::Gossip { msg: vec![9] }.encode(),
            [0x15, 1, 0, 0, 0, 9]
        );
        assert_eq!(BlockRequest::Subscribe.encode(), [0x16]);
        assert_eq!(
            BlockRequest::Final { head: vec![8, 9] }.encode(),
            [0x17, 2, 0, 0, 0, 8, 9]
        );
        let mut big = vec![0x17];
        big.extend_from_slice(&((MAX_FINAL_LEN + 1) as u32).to_le_bytes());
        assert!(BlockRequest::decode(&big).is_err());
        assert!(BlockRequest::decode(&[0x16, 0]).is_err(), "trailing byte");
        // A gossip message over the limit is refused before it is copied.
        let mut big = vec![0x15];
        big.extend_from_slice(
            &((statesync_proto::blocks::MAX_GOSSIP_LEN + 1) as u32).to_le_bytes(),
        );
        assert!(BlockRequest::decode(&big).is_err());
        assert_eq!(
            h.finalize().to_hex().to_string(),
            "613eb81fbbce18d766b8c8f20ac1377196b00cc7835c1287bf08562292f10ff1"
        );
    }

    #[test]
    fn limits_and_fuzz() {
        assert!(
            BlockRequest::decode(
                &BlockRequest::GetBlocks {
                    start: 1,
                    count: 257
                }
                .encode()
            )
            .is_err()
        );
        assert!(
            BlockRequest::decode(&BlockRequest::GetBlocks { start: 1, count: 0 }.encode()).is_err()
        );
        let mut huge = vec![0x91];
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(BlockResponse::decode(&huge).is_err());
        let (reqs, resps) = all();
        let encs: Vec<Vec<u8>> = reqs
            .iter()
            .map(|r| r.encode())
            .chain(resps.iter().map(|r| r.encode()))
            .collect();
        let mut x = 88172645463325252u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for i in 0..50_000 {
            let mut m = encs[i % encs.len()].clone();
            match next() % 3 {
                0 => m.truncate((next() % (m.len() as u64 + 1)) as usize),
                1 if !m.is_empty() => {
                    let p = (next() % m.len() as u64) as usize;
                    m[p] ^= 1 << (next() % 8);
                }
                _ => m = (0..next() % 64).map(|_| next() as u8).collect(),
            }
            if let Ok(r) = BlockRequest::decode(&m) {
                assert_eq!(r.encode(), m);
            }
            if let Ok(r) = BlockResponse::decode(&m) {
                assert_eq!(r.encode(), m);
            }
        }
    }
}

/// The pieces a server writes concatenate to the canonical encoding, and a
/// frame decoded in place (chunk data sliced, not copied) equals the copied
/// decoding.
#[test]
fn response_parts_and_owned_decoding_match_the_encoding() {
    let (_, resps) = all_messages();
    for r in &resps {
        let whole = r.encode();
        let parts: Vec<u8> = r.encode_parts().iter().flat_map(|p| p.to_vec()).collect();
        assert_eq!(parts, whole, "{r:?}");
        let owned = Response::decode_owned(whole.clone().into()).expect("decode_owned");
        assert_eq!(owned, Response::decode(&whole).expect("decode"));
        assert_eq!(&owned, r);
    }
}
