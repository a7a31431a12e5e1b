//! Framing of `statesync-proto` messages on libp2p streams: a u32 length
//! prefix checked against the direction's limit before anything is read.

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;
use statesync_proto::Bytes;
use statesync_proto::blocks::{
    BlockRequest, BlockResponse, MAX_BLOCKS_REQUEST_LEN, MAX_BLOCKS_RESPONSE_LEN,
};
use statesync_proto::{
    MAX_REQUEST_LEN, MAX_RESPONSE_LEN, ProtoError, Request, Response, check_frame_len,
};
use std::io;
use std::marker::PhantomData;

/// A protocol's messages and their per-direction size limits.
pub trait Messages: Send + Sync + 'static {
    type Req: Send + 'static;
    type Resp: Send + 'static;
    const MAX_REQ: usize;
    const MAX_RESP: usize;
    fn encode_req(r: &Self::Req) -> Vec<u8>;
    fn decode_req(b: &[u8]) -> Result<Self::Req, ProtoError>;
    /// The encoded response in pieces to write one after another (their
    /// concatenation is the frame's body).
    fn encode_resp(r: &Self::Resp) -> Vec<Bytes>;
    /// Decodes a frame's body it takes over.
    fn decode_resp(b: Vec<u8>) -> Result<Self::Resp, ProtoError>;
}

/// `/statesync/state/1`.
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
}

/// `/statesync/blocks/1`.
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

pub type StateCodec = FramedCodec<StateMessages>;
pub type BlocksCodec = FramedCodec<BlockMessages>;

async fn read_frame<T: AsyncRead + Unpin + Send>(io: &mut T, max: usize) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let n = check_frame_len(len, max).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    let mut buf = vec![0u8; n];
    io.read_exact(&mut buf).await?;
    Ok(buf)
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

fn invalid(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

#[async_trait::async_trait]
impl<M: Messages> libp2p::request_response::Codec for FramedCodec<M> {
    type Protocol = StreamProtocol;
    type Request = M::Req;
    type Response = M::Resp;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<M::Req>
    where
        T: AsyncRead + Unpin + Send,
    {
        let buf = read_frame(io, M::MAX_REQ).await?;
        M::decode_req(&buf).map_err(invalid)
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<M::Resp>
    where
        T: AsyncRead + Unpin + Send,
    {
        let buf = read_frame(io, M::MAX_RESP).await?;
        M::decode_resp(buf).map_err(invalid)
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: M::Req,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &[Bytes::from(M::encode_req(&req))]).await
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
        write_frame(io, &M::encode_resp(&res)).await
    }
}
