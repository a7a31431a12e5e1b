//! The gossip messages, byte by byte (docs/protocol.md, "Block gossip"):
//! golden encodings, round trips, limits, and decode fuzzing.

use proptest::prelude::*;
use statesync_gossip::code;
use statesync_gossip::wire::{
    HEADER_LEN, Header, MAX_MESSAGE_LEN, MAX_PULL, Message, SIGNED_HEADER_LEN, SignedHeader,
    WireError,
};
use statesync_manifest::hash::Hash;
use std::sync::Arc;

fn block() -> Vec<u8> {
    (0..1000u32).map(|i| (i * 7 + 3) as u8).collect()
}

/// A real block's shard 5 of 4 + 4, and a pull.
fn messages() -> Vec<Message> {
    let b = block();
    let enc = code::encode(&b, 4, 4).expect("encode");
    let header = Header {
        proposer: 3,
        height: 42,
        block_hash: Hash(*blake3::hash(&b).as_bytes()),
        block_len: b.len() as u32,
        k: 4,
        m: 4,
        shard_len: enc.shard_len as u32,
        shard_root: enc.root(),
    };
    let sh = SignedHeader {
        header,
        signature: [0xab; 64],
    };
    vec![
        Message::Shard {
            header: sh,
            index: 5,
            proof: enc.proof(5),
            data: Arc::from(enc.shards[5].as_slice()),
        },
        Message::Pull {
            block: header.id(),
            indices: vec![0, 2, 7],
        },
    ]
}

/// BLAKE3 of every golden encoding, in order. Change deliberately, with a
/// version bump (docs/protocol.md).
const GOLDEN: &str = "9435f463851835c317b41dd16001b6930d43e88abfa3e1d43ae1af621ff3f2b9";

#[test]
fn golden_encodings_and_round_trips() {
    let mut h = blake3::Hasher::new();
    for m in messages() {
        let e = m.encode();
        assert_eq!(e.len(), m.len());
        assert_eq!(Message::decode(&e).as_ref(), Ok(&m));
        h.update(&(e.len() as u32).to_le_bytes());
        h.update(&e);
    }
    let ms = messages();
    // Spot checks against the layout in docs/protocol.md.
    let Message::Shard { header, .. } = &ms[0] else {
        panic!("first message is a shard")
    };
    let e = ms[0].encode();
    assert_eq!(e[0], 0x01);
    assert_eq!(e[1], 1, "header version");
    assert_eq!(&e[2..4], &3u16.to_le_bytes());
    assert_eq!(&e[4..12], &42u64.to_le_bytes());
    assert_eq!(&e[44..48], &1000u32.to_le_bytes());
    assert_eq!(&e[48..50], &4u16.to_le_bytes());
    assert_eq!(&e[50..52], &4u16.to_le_bytes());
    assert_eq!(&e[52..56], &256u32.to_le_bytes());
    assert_eq!(&e[56..88], &header.header.shard_root.0);
    assert_eq!(&e[88..152], &[0xab; 64]);
    assert_eq!(&e[152..154], &5u16.to_le_bytes());
    assert_eq!(e[154], 3, "proof of 3 hashes for 8 leaves");
    assert_eq!(e.len(), 1 + SIGNED_HEADER_LEN + 3 + 3 * 32 + 256);
    assert_eq!(header.header.encode().len(), HEADER_LEN);
    let p = ms[1].encode();
    assert_eq!(p[0], 0x02);
    assert_eq!(&p[33..35], &3u16.to_le_bytes());
    assert_eq!(&p[35..], &[0, 0, 2, 0, 7, 0]);
    assert_eq!(
        h.finalize().to_hex().as_str(),
        GOLDEN,
        "gossip wire format changed"
    );
}

#[test]
fn limits() {
    let ms = messages();
    let e = ms[0].encode();
    // Truncated anywhere: an error, never a panic.
    for cut in 0..e.len() {
        assert!(Message::decode(&e[..cut]).is_err(), "cut at {cut} decoded");
    }
    // Trailing bytes.
    let mut t = e.clone();
    t.push(0);
    assert_eq!(Message::decode(&t), Err(WireError::Trailing(1)));
    // An index beyond k + m.
    let mut bad = e.clone();
    bad[152..154].copy_from_slice(&8u16.to_le_bytes());
    assert!(matches!(Message::decode(&bad), Err(WireError::Invalid(_))));
    // A header whose shard length does not fit its block length.
    let mut bad = e.clone();
    bad[52..56].copy_from_slice(&320u32.to_le_bytes());
    assert!(Message::decode(&bad).is_err());
    // k or m zero, or too many shards.
    for (k, m) in [(0u16, 4u16), (4, 0), (4000, 200)] {
        let mut bad = e.clone();
        bad[48..50].copy_from_slice(&k.to_le_bytes());
        bad[50..52].copy_from_slice(&m.to_le_bytes());
        assert!(Message::decode(&bad).is_err(), "k {k} m {m} accepted");
    }
    // Another version.
    let mut bad = e.clone();
    bad[1] = 2;
    assert!(Message::decode(&bad).is_err());
    // A pull of too many shards.
    let mut p = vec![0x02];
    p.extend_from_slice(&[0; 32]);
    p.extend_from_slice(&((MAX_PULL + 1) as u16).to_le_bytes());
    p.extend(std::iter::repeat_n(0u8, 2 * (MAX_PULL + 1)));
    assert!(matches!(Message::decode(&p), Err(WireError::Invalid(_))));
    // Oversized input is refused before anything is read.
    assert!(Message::decode(&vec![1u8; MAX_MESSAGE_LEN + 1]).is_err());
    // Unknown tag.
    assert!(Message::decode(&[0x7f]).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn random_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = Message::decode(&b);
    }

    #[test]
    fn mutated_messages_never_panic_and_reencode_exactly(
        which in 0usize..2,
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
    ) {
        let mut e = messages()[which].encode();
        for (i, x) in flips {
            let n = e.len();
            e[i % n] ^= x;
        }
        if let Ok(m) = Message::decode(&e) {
            prop_assert_eq!(m.encode(), e);
        }
    }
}
