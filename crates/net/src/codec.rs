//! The request/response codecs of `/statesync/state/1` and
//! `/statesync/blocks/3`: framing of `statesync-proto` messages on libp2p
//! streams, a little-endian u32 length prefix checked against the
//! direction's limit before anything is read. A `Chunks` response is read
//! chunk by chunk into aligned buffers ([`ChunkBuf`]).

use crate::chunkbuf::ChunkBuf;
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;
use statesync_proto::Bytes;
use statesync_proto::blocks::{
    BlockRequest, BlockResponse, MAX_BLOCKS_REQUEST_LEN, MAX_BLOCKS_RESPONSE_LEN,
};
use statesync_proto::{
    CHUNK_HEADER_LEN, CHUNKS_TAG, MAX_REQUEST_LEN, MAX_RESPONSE_LEN, ProtoError, Request, Response,
    check_chunk_count, check_chunk_total, check_frame_len, truncated,
};
use std::io;
use std::marker::PhantomData;

/// A protocol's messages and their per-direction size limits.
pub trait Messages: Send + Sync + 'static {
    /// The request.
    type Req: Send + 'static;
    /// The response.
    type Resp: Send + 'static;
    /// Longest request frame body accepted (bytes).
    const MAX_REQ: usize;
    /// Longest response frame body accepted (bytes).
    const MAX_RESP: usize;
    /// The encoded request: the frame's body.
    fn encode_req(r: &Self::Req) -> Vec<u8>;
    /// Decodes a request frame's body.
    fn decode_req(b: &[u8]) -> Result<Self::Req, ProtoError>;
    /// The encoded response in pieces to write one after another (their
    /// concatenation is the frame's body).
    fn encode_resp(r: &Self::Resp) -> Vec<Bytes>;
    /// Decodes a frame's body it takes over.
    fn decode_resp(b: Vec<u8>) -> Result<Self::Resp, ProtoError>;
    /// Whether the protocol has a `Chunks` response
    /// ([`statesync_proto::CHUNKS_TAG`]) to be read off the stream chunk by
    /// chunk into aligned buffers (see [`Messages::chunks_response`]).
    const HAS_CHUNKS: bool = false;
    /// That response, made of chunks read that way.
    fn chunks_response(_chunks: Vec<(u64, Bytes)>) -> Option<Self::Resp> {
        None
    }
}

/// The messages of `/statesync/state/1`.
pub struct StateMessages;

impl Messages for StateMessages {
    type Req = Request;
    type Resp = Response;
    const MAX_REQ: usize = MAX_REQUEST_LEN;
    const MAX_RESP: usize = MAX_RESPONSE_LEN;
    fn encode_req(r: &Request) -> Vec<u8> {
        r.encode()
    }
    fn decode_req(b: &[u8]) -> Result<Request, ProtoError> {
        Request::decode(b)
    }
    fn encode_resp(r: &Response) -> Vec<Bytes> {
        r.encode_parts()
    }
    fn decode_resp(b: Vec<u8>) -> Result<Response, ProtoError> {
        Response::decode_owned(Bytes::from(b))
    }
    const HAS_CHUNKS: bool = true;
    fn chunks_response(chunks: Vec<(u64, Bytes)>) -> Option<Response> {
        Some(Response::Chunks { chunks })
    }
}

/// The messages of `/statesync/blocks/3`.
pub struct BlockMessages;

impl Messages for BlockMessages {
    type Req = BlockRequest;
    type Resp = BlockResponse;
    const MAX_REQ: usize = MAX_BLOCKS_REQUEST_LEN;
    const MAX_RESP: usize = MAX_BLOCKS_RESPONSE_LEN;
    fn encode_req(r: &BlockRequest) -> Vec<u8> {
        r.encode()
    }
    fn decode_req(b: &[u8]) -> Result<BlockRequest, ProtoError> {
        BlockRequest::decode(b)
    }
    fn encode_resp(r: &BlockResponse) -> Vec<Bytes> {
        vec![Bytes::from(r.encode())]
    }
    fn decode_resp(b: Vec<u8>) -> Result<BlockResponse, ProtoError> {
        BlockResponse::decode(&b)
    }
}

/// Length-prefixed framing for any [`Messages`].
pub struct FramedCodec<M>(PhantomData<M>);

impl<M> Clone for FramedCodec<M> {
    fn clone(&self) -> Self {
        FramedCodec(PhantomData)
    }
}

impl<M> Default for FramedCodec<M> {
    fn default() -> Self {
        FramedCodec(PhantomData)
    }
}

/// The codec of `/statesync/state/1`: [`Request`]s and [`Response`]s, the
/// chunks of a `Chunks` response read straight into [`ChunkBuf`]s.
pub type StateCodec = FramedCodec<StateMessages>;
/// The codec of `/statesync/blocks/3`: [`BlockRequest`]s and
/// [`BlockResponse`]s.
pub type BlocksCodec = FramedCodec<BlockMessages>;

async fn read_frame<T: AsyncRead + Unpin + Send>(io: &mut T, max: usize) -> io::Result<Vec<u8>> {
    let n = read_frame_len(io, max).await?;
    let mut buf = vec![0u8; n];
    io.read_exact(&mut buf).await?;
    Ok(buf)
}

async fn read_frame_len<T: AsyncRead + Unpin + Send>(io: &mut T, max: usize) -> io::Result<usize> {
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    check_frame_len(len, max).map_err(invalid)
}

/// Reads a response frame of `n` bytes; a `Chunks` response of a protocol
/// that has one is decoded off the stream, each chunk's data read straight
/// into its own block-aligned buffer ([`ChunkBuf`]) that the fetcher's
/// writer hands to the device as it is. Accepts exactly the frames
/// [`statesync_proto::Response::decode`] accepts (same checks, same order).
async fn read_response_frame<M: Messages, T: AsyncRead + Unpin + Send>(
    io: &mut T,
    n: usize,
) -> io::Result<M::Resp> {
    let mut tag = [0u8; 1];
    io.read_exact(&mut tag).await?;
    if M::HAS_CHUNKS && tag[0] == CHUNKS_TAG {
        let chunks = read_chunks(io, n - 1).await?;
        return M::chunks_response(chunks).ok_or_else(|| invalid("no chunks response"));
    }
    let mut buf = vec![0u8; n];
    buf[0] = tag[0];
    io.read_exact(&mut buf[1..]).await?;
    M::decode_resp(buf).map_err(invalid)
}

/// The body of a `Chunks` response after its tag: `left` bytes.
async fn read_chunks<T: AsyncRead + Unpin + Send>(
    io: &mut T,
    mut left: usize,
) -> io::Result<Vec<(u64, Bytes)>> {
    let mut at = 1;
    let mut field = async |io: &mut T, buf: &mut [u8], what, left: &mut usize| {
        if *left < buf.len() {
            return Err(invalid(truncated(what, at, buf.len(), *left)));
        }
        io.read_exact(buf).await?;
        *left -= buf.len();
        at += buf.len();
        Ok::<(), io::Error>(())
    };
    let mut count = [0u8; 2];
    field(io, &mut count, "chunk count", &mut left).await?;
    let n = usize::from(u16::from_le_bytes(count));
    check_chunk_count(n, left).map_err(invalid)?;
    let mut chunks = Vec::with_capacity(n);
    let mut total = 0usize;
    for _ in 0..n {
        let mut h = [0u8; CHUNK_HEADER_LEN];
        field(io, &mut h, "chunk header", &mut left).await?;
        let (i, len) = h.split_at(8);
        let i = u64::from_le_bytes(i.try_into().map_err(invalid)?);
        let len = u32::from_le_bytes(len.try_into().map_err(invalid)?) as usize;
        total += len;
        check_chunk_total(total).map_err(invalid)?;
        let mut buf = ChunkBuf::take(len).ok_or_else(|| invalid("chunk buffer"))?;
        field(io, buf.as_mut_slice(), "chunk data", &mut left).await?;
        chunks.push((i, buf.freeze()));
    }
    if left != 0 {
        return Err(invalid(ProtoError::Trailing(left)));
    }
    Ok(chunks)
}

/// Writes the length prefix and then each piece of the body as it is (no
/// concatenation into one buffer first).
async fn write_frame<T: AsyncWrite + Unpin + Send>(io: &mut T, parts: &[Bytes]) -> io::Result<()> {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let len = u32::try_from(len).map_err(invalid)?;
    io.write_all(&len.to_le_bytes()).await?;
    for p in parts {
        io.write_all(p).await?;
    }
    io.flush().await
}

/// A peer must send a request within this long once its stream is open.
pub const REQUEST_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The slowest a peer may drain an answer before its stream is dropped:
/// a fixed allowance plus this rate. A client that opens streams and never
/// reads them (a half-open stream attack) holds the answer's memory for that
/// long at most, not for the whole request timeout.
pub const MIN_DRAIN_BYTES_PER_SEC: u64 = 256 << 10;
/// See [`MIN_DRAIN_BYTES_PER_SEC`].
pub const DRAIN_ALLOWANCE: std::time::Duration = std::time::Duration::from_secs(10);

/// How long writing `len` bytes of an answer may take.
pub fn drain_deadline(len: usize) -> std::time::Duration {
    DRAIN_ALLOWANCE
        + std::time::Duration::from_secs_f64(len as f64 / MIN_DRAIN_BYTES_PER_SEC as f64)
}

fn timed_out(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, format!("{what} timed out"))
}

fn invalid(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

/// A request as read off a peer's stream: a valid one, or what was wrong
/// with it. libp2p reports nothing about a request whose read fails, so a
/// malformed one (an oversized length, bytes that do not decode) is handed
/// up as a value for the node to count against the peer; sending one is
/// refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Inbound<R> {
    /// A well-formed request.
    Request(R),
    /// What was wrong with it.
    Malformed(String),
}

impl<R> From<R> for Inbound<R> {
    fn from(r: R) -> Self {
        Inbound::Request(r)
    }
}

#[async_trait::async_trait]
impl<M: Messages> libp2p::request_response::Codec for FramedCodec<M> {
    type Protocol = StreamProtocol;
    type Request = Inbound<M::Req>;
    type Response = M::Resp;

    async fn read_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Inbound<M::Req>>
    where
        T: AsyncRead + Unpin + Send,
    {
        let frame = tokio::time::timeout(REQUEST_READ_TIMEOUT, read_frame(io, M::MAX_REQ))
            .await
            .map_err(|_| timed_out("reading the request"))?;
        let buf = match frame {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                return Ok(Inbound::Malformed(e.to_string()));
            }
            Err(e) => return Err(e),
        };
        Ok(match M::decode_req(&buf) {
            Ok(r) => Inbound::Request(r),
            Err(e) => Inbound::Malformed(e.to_string()),
        })
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<M::Resp>
    where
        T: AsyncRead + Unpin + Send,
    {
        let n = read_frame_len(io, M::MAX_RESP).await?;
        read_response_frame::<M, T>(io, n).await
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Inbound<M::Req>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        match req {
            Inbound::Request(r) => write_frame(io, &[Bytes::from(M::encode_req(&r))]).await,
            Inbound::Malformed(_) => Err(invalid("a malformed request is not sent")),
        }
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: M::Resp,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        let parts = M::encode_resp(&res);
        let len = parts.iter().map(|p| p.len()).sum();
        tokio::time::timeout(drain_deadline(len), write_frame(io, &parts))
            .await
            .map_err(|_| timed_out("the peer draining the answer"))?
    }
}
