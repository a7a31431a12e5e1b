//! The fetcher reads `Chunks` responses off the stream chunk by chunk into
//! aligned buffers. It must accept exactly the frames the reference decoder
//! (`Response::decode`) accepts and produce the same messages; chunk data
//! must land block-aligned (the writer hands it to the device as it is).

use futures::executor::block_on;
use futures::io::Cursor;
use statesync_net::StateCodec;
use statesync_net::chunkbuf::ALIGN;
use statesync_net::libp2p::StreamProtocol;
use statesync_net::libp2p::request_response::Codec;
use statesync_proto::{Bytes, MAX_RESPONSE_LEN, Response};

fn read(frame_body: &[u8]) -> std::io::Result<Response> {
    let mut framed = (frame_body.len() as u32).to_le_bytes().to_vec();
    framed.extend_from_slice(frame_body);
    let mut io = Cursor::new(framed);
    let p = StreamProtocol::new("/statesync/state/1");
    block_on(StateCodec::default().read_response(&p, &mut io))
}

fn chunks(lens: &[usize]) -> Response {
    Response::Chunks {
        chunks: lens
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                let data: Vec<u8> = (0..n).map(|k| (k * 13 + i) as u8).collect();
                (i as u64 * 3, Bytes::from(data))
            })
            .collect(),
    }
}

#[test]
fn chunks_are_read_off_the_stream_aligned_and_equal_to_the_reference() {
    for lens in [
        vec![],
        vec![0],
        vec![1],
        vec![4096, 1 << 20, 5000, 3],
        vec![1 << 20; 16],
    ] {
        let r = chunks(&lens);
        let got = read(&r.encode()).expect("read");
        assert_eq!(got, r);
        let Response::Chunks { chunks } = got else {
            panic!("not chunks")
        };
        for (_, d) in &chunks {
            assert_eq!(d.as_ptr() as usize % ALIGN, 0, "chunk data not aligned");
        }
    }
    // Other responses take the ordinary path.
    for r in [
        Response::NotFound,
        Response::Busy { retry_after_ms: 9 },
        Response::Ack,
    ] {
        assert_eq!(read(&r.encode()).expect("read"), r);
    }
}

#[test]
fn stream_and_reference_decoders_accept_the_same_frames() {
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let bases = [
        chunks(&[5, 7]).encode(),
        chunks(&[4096, 100, 0]).encode(),
        chunks(&[]).encode(),
        Response::NotFound.encode(),
    ];
    let cases = std::env::var("STATESYNC_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000u64);
    let mut accepted = 0;
    for k in 0..cases {
        let mut e = bases[(k % bases.len() as u64) as usize].clone();
        // Mutations aimed at the chunk counts, headers and lengths.
        for _ in 0..1 + next() % 3 {
            if e.is_empty() {
                e.push(0x84);
            }
            let at = (next() % e.len() as u64) as usize;
            match next() % 5 {
                0 => e[at] ^= 1 << (next() % 8),
                1 => e.truncate(at.max(1)),
                2 => e.insert(at, next() as u8),
                3 => e[at] = [0, 1, 0xff, 0x84][(next() % 4) as usize],
                _ => e.extend_from_slice(&[0u8; 3]),
            }
        }
        if e.is_empty() || e.len() > MAX_RESPONSE_LEN {
            continue;
        }
        let reference = Response::decode(&e);
        let streamed = read(&e);
        match (&reference, &streamed) {
            (Ok(a), Ok(b)) => {
                assert_eq!(a, b, "{e:?}");
                accepted += 1;
            }
            (Err(_), Err(_)) => {}
            _ => panic!("decoders disagree on {e:?}: {reference:?} vs {streamed:?}"),
        }
    }
    // Some mutations keep the frame valid: both paths were exercised.
    assert!(accepted > 0);
}
