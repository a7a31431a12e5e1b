//! Blocks, headers, transactions, finality proofs and the genesis
//! configuration. Byte layouts are in docs/chain.md; every decoder is
//! bounded and strict (canonical encodings only).

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use statesync_manifest::Hash;
use std::path::Path;

/// Encoding version of headers.
pub const HEADER_VERSION: u8 = 1;
/// Encoded header length in bytes (145).
pub const HEADER_LEN: usize = 1 + 32 + 8 + 32 + 32 + 32 + 8;
/// Largest value a transaction may write (a slot is 64 bytes: length byte +
/// up to 63 value bytes).
pub const MAX_VALUE: usize = 63;
/// Most transactions in one block.
pub const MAX_TXS: usize = 131_072;
/// Most signatures in a finality proof.
pub const MAX_SIGS: usize = 1024;
/// Largest encoded block.
pub const MAX_BLOCK_BYTES: usize = 12 << 20;
/// Largest `payload_bytes` of a genesis.
pub const MAX_PAYLOAD_BYTES: u32 = 8 << 20;
/// The key of payload transactions: beyond every keyspace, so executing
/// them writes nothing (they stand for a block's opaque bulk).
pub const PAYLOAD_KEY: u64 = u64::MAX;
/// The proposer of a chain whose validators vote (each with its own key):
/// validator 0, fixed (docs/chain.md says why).
pub const PROPOSER: u16 = 0;

/// Why a block, header, finality proof or genesis is invalid.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChainError {
    /// Bytes that do not decode, a block at height 0, or a finality proof
    /// with indices not strictly ascending or naming no validator.
    #[error("malformed {what}: {why}")]
    Malformed {
        /// What was being decoded or checked (`"header"`, `"block"`,
        /// `"finality proof"`).
        what: &'static str,
        /// What is wrong with it.
        why: String,
    },
    /// The header's chain id is not this chain's.
    #[error("block {height} belongs to another chain")]
    WrongChain {
        /// Height the block claims.
        height: u64,
    },
    /// Executing a proposal gave another state root than its header
    /// commits.
    #[error("block {height}: executing it gives another state root than its header commits")]
    StateRoot {
        /// Height of the block.
        height: u64,
    },
    /// The header's txs root does not match the block's transactions.
    #[error("block {height}: transactions do not match the header's txs root")]
    TxsRoot {
        /// Height of the block.
        height: u64,
    },
    /// Fewer signatures than the quorum (all of them valid).
    #[error("block {height}: finality proof has {have} valid signatures, {need} needed")]
    NoQuorum {
        /// Height of the block.
        height: u64,
        /// Signatures in the proof.
        have: usize,
        /// The quorum.
        need: usize,
    },
    /// A signature in the finality proof does not verify.
    #[error("block {height}: signature of validator {index} is invalid")]
    BadSignature {
        /// Height of the block.
        height: u64,
        /// Index of the validator in the genesis.
        index: u16,
    },
    /// The block's parent hash is not the header hash of the block below it
    /// (for block 1: not the chain id).
    #[error("block {height}: parent hash does not match block {}", height - 1)]
    ParentMismatch {
        /// Height of the block whose parent link is wrong.
        height: u64,
    },
    /// A state root on a height that is not a checkpoint height, or a zero
    /// state root on one that is.
    #[error("block {height}: a state root is committed only every {interval} blocks")]
    StrayStateRoot {
        /// Height of the block.
        height: u64,
        /// The genesis `checkpoint_interval`.
        interval: u64,
    },
    /// The genesis file is invalid; the reason.
    #[error("invalid genesis: {0}")]
    Genesis(String),
}

fn malformed(what: &'static str, why: impl Into<String>) -> ChainError {
    ChainError::Malformed {
        what,
        why: why.into(),
    }
}

fn keyed(context: &str, data: &[u8]) -> Hash {
    Hash(*blake3::keyed_hash(&blake3::derive_key(context, &[]), data).as_bytes())
}

/// The chain's parameters, shared by every node (a JSON file). Every field
/// is part of the chain id ([`Genesis::spec`]).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Genesis {
    /// Human-readable name of the chain.
    pub name: String,
    /// Validators' ed25519 public keys, hex.
    pub validators: Vec<String>,
    /// Signatures needed for finality (more than half of the validators).
    pub quorum: u32,
    /// The state: `state_files` files of `file_size` bytes, generated from
    /// `seed`.
    pub state_files: u32,
    /// Size of each state file in bytes: a non-zero multiple of the 64-byte
    /// slot.
    pub file_size: u32,
    /// Seed the genesis state bytes are generated from.
    pub seed: u64,
    /// Every `checkpoint_interval`-th header commits the state root (at
    /// least 1).
    pub checkpoint_interval: u64,
    /// Target block time of the leader, in milliseconds.
    pub block_ms: u64,
    /// Transactions the leader generates per block (at most [`MAX_TXS`]).
    pub txs_per_block: u32,
    /// Percent of the keyspace (from its start) that receives 99.9% of the
    /// writes; the rest go anywhere.
    pub hot_percent: u32,
    /// Bytes of opaque payload per block (at most [`MAX_PAYLOAD_BYTES`]):
    /// transactions to [`PAYLOAD_KEY`] of 63 bytes each, which execution
    /// skips; they make blocks of several MB (what IDA gossip is for).
    /// Omitted from the genesis JSON when zero, so older chain ids stay.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub payload_bytes: u32,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

impl Genesis {
    /// Payload transactions per block (63 bytes each).
    pub fn payload_txs(&self) -> usize {
        (self.payload_bytes as usize).div_ceil(MAX_VALUE)
    }

    /// Demo/test validator key `index` derived from a seed (never for real use).
    pub fn demo_key(seed: u64, index: u32) -> ValidatorKey {
        let mut m = seed.to_le_bytes().to_vec();
        m.extend_from_slice(&index.to_le_bytes());
        ValidatorKey(SigningKey::from_bytes(&blake3::derive_key(
            "statesync chain v1 demo validator key",
            &m,
        )))
    }

    /// A genesis with `n` demo validators whose keys derive from `seed`
    /// (quorum `n/2 + 1`, 64 state files of 1 MiB, a checkpoint every 10
    /// blocks of 200 ms), and those keys in validator order.
    pub fn demo(n: u32, seed: u64) -> (Genesis, Vec<ValidatorKey>) {
        let keys: Vec<ValidatorKey> = (0..n).map(|i| Genesis::demo_key(seed, i)).collect();
        let g = Genesis {
            name: "statesync-demo".into(),
            validators: keys.iter().map(|k| k.public_hex()).collect(),
            quorum: n / 2 + 1,
            state_files: 64,
            file_size: 1 << 20,
            seed,
            checkpoint_interval: 10,
            block_ms: 200,
            txs_per_block: 200,
            hot_percent: 5,
            payload_bytes: 0,
        };
        (g, keys)
    }

    /// Reads a genesis JSON file and checks it as [`Genesis::spec`] does;
    /// errors are messages naming the file.
    pub fn load(path: &Path) -> Result<Genesis, String> {
        let s =
            std::fs::read_to_string(path).map_err(|e| format!("read {}: {e}", path.display()))?;
        let g: Genesis =
            serde_json::from_str(&s).map_err(|e| format!("parse {}: {e}", path.display()))?;
        g.spec().map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(g)
    }

    /// The verified form every node works with. Checks 1 to [`MAX_SIGS`]
    /// valid ed25519 validator keys, a quorum of more than half of them,
    /// non-empty state files that are multiples of 64 bytes, a checkpoint
    /// interval of at least 1, and `txs_per_block` and `hot_percent` in
    /// range ([`ChainError::Genesis`] otherwise); the chain id is the keyed
    /// hash (context `statesync chain v1 genesis`) of the canonical JSON.
    pub fn spec(&self) -> Result<Spec, ChainError> {
        let bad = |s: &str| ChainError::Genesis(s.to_string());
        let mut keys = Vec::new();
        for v in &self.validators {
            let b = Hash::from_hex(v).map_err(|_| bad("validator key is not 64 hex digits"))?;
            keys.push(VerifyingKey::from_bytes(&b.0).map_err(|_| bad("invalid validator key"))?);
        }
        let n = keys.len() as u32;
        if n == 0 || n as usize > MAX_SIGS {
            return Err(bad("need 1..=1024 validators"));
        }
        if self.quorum == 0 || self.quorum > n || 2 * self.quorum <= n {
            return Err(bad("quorum must be more than half of the validators"));
        }
        if self.file_size == 0 || !self.file_size.is_multiple_of(64) || self.state_files == 0 {
            return Err(bad("state files must be non-empty multiples of 64 bytes"));
        }
        if self.checkpoint_interval == 0 {
            return Err(bad("checkpoint interval must be at least 1"));
        }
        if self.txs_per_block as usize > MAX_TXS || self.hot_percent > 100 {
            return Err(bad("txs per block or hot percent out of range"));
        }
        if self.payload_bytes > MAX_PAYLOAD_BYTES
            || self.txs_per_block as usize + self.payload_txs() > MAX_TXS
        {
            return Err(bad("payload bytes out of range (at most 8 MiB per block)"));
        }
        let canonical = serde_json::to_vec(self).map_err(|e| bad(&e.to_string()))?;
        Ok(Spec {
            id: keyed("statesync chain v1 genesis", &canonical),
            genesis: self.clone(),
            keys,
        })
    }
}

/// A verified genesis: chain id and validator keys.
#[derive(Clone, Debug)]
pub struct Spec {
    /// Hash of the canonical genesis; the parent of block 1 and part of
    /// every header.
    pub id: Hash,
    /// The genesis it was made from.
    pub genesis: Genesis,
    /// The validators' public keys, by validator index.
    pub keys: Vec<VerifyingKey>,
}

impl Spec {
    /// Signatures needed for finality.
    pub fn quorum(&self) -> usize {
        self.genesis.quorum as usize
    }

    /// Whether a block at `height` commits a state root: `height` is a
    /// positive multiple of `checkpoint_interval`.
    pub fn is_checkpoint(&self, height: u64) -> bool {
        height > 0 && height.is_multiple_of(self.genesis.checkpoint_interval)
    }

    /// The latest checkpoint height at or below `height` (0: genesis).
    pub fn checkpoint_at_or_below(&self, height: u64) -> u64 {
        height - height % self.genesis.checkpoint_interval
    }

    /// Checks everything a block says about itself: chain, height above 0,
    /// transactions, state-root placement and the quorum of signatures
    /// ([`Spec::verify_proof`]). Linkage to the parent is the caller's (it
    /// needs the parent).
    pub fn verify(&self, b: &Block) -> Result<(), ChainError> {
        let h = &b.header;
        if h.chain != self.id {
            return Err(ChainError::WrongChain { height: h.height });
        }
        if h.height == 0 {
            return Err(malformed("block", "height 0 is the genesis, not a block"));
        }
        if txs_root(&b.txs) != h.txs_root {
            return Err(ChainError::TxsRoot { height: h.height });
        }
        if (h.state_root != Hash::ZERO) != self.is_checkpoint(h.height) {
            return Err(ChainError::StrayStateRoot {
                height: h.height,
                interval: self.genesis.checkpoint_interval,
            });
        }
        self.verify_proof(h, &b.proof)
    }

    /// Checks a finality proof for header `h`: indices strictly ascending
    /// and naming validators ([`ChainError::Malformed`]), every signature
    /// valid over `"statesync chain v1 vote" || header hash`
    /// ([`ChainError::BadSignature`]), and at least the quorum of them
    /// ([`ChainError::NoQuorum`]).
    pub fn verify_proof(&self, h: &Header, p: &FinalityProof) -> Result<(), ChainError> {
        let msg = vote_bytes(&h.hash());
        let mut last: Option<u16> = None;
        for (idx, sig) in &p.sigs {
            if last.is_some_and(|l| l >= *idx) {
                return Err(malformed(
                    "finality proof",
                    "indices not strictly ascending",
                ));
            }
            last = Some(*idx);
            let key = self
                .keys
                .get(*idx as usize)
                .ok_or_else(|| malformed("finality proof", format!("no validator {idx}")))?;
            key.verify(&msg, &Signature::from_bytes(sig)).map_err(|_| {
                ChainError::BadSignature {
                    height: h.height,
                    index: *idx,
                }
            })?;
        }
        if p.sigs.len() < self.quorum() {
            return Err(ChainError::NoQuorum {
                height: h.height,
                have: p.sigs.len(),
                need: self.quorum(),
            });
        }
        Ok(())
    }

    /// The transactions the leader includes at `height`: deterministic
    /// from the chain id and the height (a load generator, not a mempool).
    /// `txs_per_block` writes of 8 to 31 bytes; 99.9 % go to the first
    /// `hot_percent` of the keyspace, the rest anywhere; then the payload
    /// ([`Genesis::payload_bytes`]).
    pub fn gen_txs(&self, height: u64) -> Vec<Tx> {
        let g = &self.genesis;
        let slots = g.state_files as u64 * (g.file_size as u64 / 64);
        let hot = (slots * g.hot_percent as u64 / 100).max(1);
        let mut seed = [0u8; 40];
        seed[..32].copy_from_slice(&self.id.0);
        seed[32..].copy_from_slice(&height.to_le_bytes());
        let mut rng = blake3::Hasher::new_derive_key("statesync chain v1 txgen")
            .update(&seed)
            .finalize_xof();
        let mut buf = [0u8; 16];
        let mut txs: Vec<Tx> = (0..g.txs_per_block)
            .map(|_| {
                rng.fill(&mut buf);
                let r = u64::from_le_bytes(buf[..8].try_into().unwrap_or_default());
                let sel = buf[8] as u32 * 256 + buf[9] as u32; // 0..65536
                let key = if sel < 66 { r % slots } else { r % hot };
                let len = 8 + (buf[10] as usize % 24);
                let mut value = Vec::with_capacity(len);
                value.extend_from_slice(&height.to_le_bytes());
                value.extend_from_slice(&buf[11..16]);
                value.resize(len, buf[12]);
                Tx { key, value }
            })
            .collect();
        // The payload: incompressible bytes that execution skips.
        txs.extend((0..g.payload_txs()).map(|_| {
            let mut value = vec![0u8; MAX_VALUE];
            rng.fill(&mut value);
            Tx {
                key: PAYLOAD_KEY,
                value,
            }
        }));
        txs
    }

    /// Produces block `height` on top of `parent` and signs it with `keys`
    /// (validator index, key), sorted by index with duplicate indices
    /// dropped. The signatures must reach the quorum for the block to be
    /// accepted by anyone; nothing is checked here.
    pub fn produce(
        &self,
        parent: Hash,
        height: u64,
        txs: Vec<Tx>,
        state_root: Hash,
        time_ms: u64,
        keys: &[(u16, ValidatorKey)],
    ) -> Block {
        let header = Header {
            chain: self.id,
            height,
            parent,
            txs_root: txs_root(&txs),
            state_root,
            time_ms,
        };
        let msg = vote_bytes(&header.hash());
        let mut sigs: Vec<(u16, [u8; 64])> = keys
            .iter()
            .map(|(i, k)| (*i, k.0.sign(&msg).to_bytes()))
            .collect();
        sigs.sort_by_key(|s| s.0);
        sigs.dedup_by_key(|s| s.0);
        Block {
            header,
            proof: FinalityProof { sigs },
            txs,
        }
    }

    /// Index of `key` in the validator set.
    pub fn index_of(&self, key: &ValidatorKey) -> Option<u16> {
        let pk = key.0.verifying_key();
        self.keys.iter().position(|k| *k == pk).map(|i| i as u16)
    }

    /// Validator `index`'s vote for the header with hash `header_hash`: the
    /// signature a finality proof holds.
    pub fn vote(key: &ValidatorKey, header_hash: &Hash) -> [u8; 64] {
        key.0.sign(&vote_bytes(header_hash)).to_bytes()
    }

    /// Whether `sig` is validator `index`'s vote for `header_hash`.
    pub fn check_vote(&self, index: u16, header_hash: &Hash, sig: &[u8; 64]) -> bool {
        self.keys.get(usize::from(index)).is_some_and(|k| {
            k.verify(&vote_bytes(header_hash), &Signature::from_bytes(sig))
                .is_ok()
        })
    }

    /// Checks a proposal: everything [`Spec::verify`] checks but the quorum,
    /// and that its proof holds exactly the proposer's ([`PROPOSER`]) vote.
    pub fn verify_proposal(&self, b: &Block) -> Result<(), ChainError> {
        let h = &b.header;
        let sigs = &b.proof.sigs;
        if sigs.len() != 1 || sigs[0].0 != PROPOSER {
            return Err(malformed(
                "proposal",
                "its proof must hold the proposer's signature only",
            ));
        }
        if !self.check_vote(PROPOSER, &h.hash(), &sigs[0].1) {
            return Err(ChainError::BadSignature {
                height: h.height,
                index: PROPOSER,
            });
        }
        if h.chain != self.id {
            return Err(ChainError::WrongChain { height: h.height });
        }
        if h.height == 0 {
            return Err(malformed("block", "height 0 is the genesis, not a block"));
        }
        if txs_root(&b.txs) != h.txs_root {
            return Err(ChainError::TxsRoot { height: h.height });
        }
        if (h.state_root != Hash::ZERO) != self.is_checkpoint(h.height) {
            return Err(ChainError::StrayStateRoot {
                height: h.height,
                interval: self.genesis.checkpoint_interval,
            });
        }
        Ok(())
    }

    /// What validator `index` signs to bind its libp2p peer id
    /// (`peer_id`, the id's bytes) to its key on this chain.
    pub fn hello_bytes(&self, index: u16, peer_id: &[u8]) -> Vec<u8> {
        let mut m = b"statesync chain v1 hello".to_vec();
        m.extend_from_slice(&self.id.0);
        m.extend_from_slice(&index.to_le_bytes());
        m.extend_from_slice(peer_id);
        m
    }

    /// Signs a hello ([`Spec::hello_bytes`]).
    pub fn sign_hello(&self, key: &ValidatorKey, index: u16, peer_id: &[u8]) -> [u8; 64] {
        key.0.sign(&self.hello_bytes(index, peer_id)).to_bytes()
    }

    /// Whether `sig` binds `peer_id` to validator `index`.
    pub fn check_hello(&self, index: u16, peer_id: &[u8], sig: &[u8; 64]) -> bool {
        self.keys.get(usize::from(index)).is_some_and(|k| {
            k.verify(
                &self.hello_bytes(index, peer_id),
                &Signature::from_bytes(sig),
            )
            .is_ok()
        })
    }

    /// Whether validator `index`'s key signed `msg` (any domain-separated
    /// message: the gossip header of a proposal).
    pub fn check_signed(&self, index: u16, msg: &[u8], sig: &[u8; 64]) -> bool {
        self.keys
            .get(usize::from(index))
            .is_some_and(|k| k.verify(msg, &Signature::from_bytes(sig)).is_ok())
    }
}

fn vote_bytes(header_hash: &Hash) -> Vec<u8> {
    let mut m = b"statesync chain v1 vote".to_vec();
    m.extend_from_slice(&header_hash.0);
    m
}

/// A validator's ed25519 signing key.
#[derive(Clone)]
pub struct ValidatorKey(pub SigningKey);

impl ValidatorKey {
    /// The public key as 64 hex digits, as listed in
    /// [`Genesis::validators`].
    pub fn public_hex(&self) -> String {
        Hash(self.0.verifying_key().to_bytes()).to_hex()
    }

    /// The secret key as 64 hex digits: what a key file holds
    /// ([`ValidatorKey::load`]).
    pub fn secret_hex(&self) -> String {
        Hash(self.0.to_bytes()).to_hex()
    }

    /// Signs `msg` (domain-separated by the caller).
    pub fn sign(&self, msg: &[u8]) -> [u8; 64] {
        self.0.sign(msg).to_bytes()
    }

    /// Reads a key file: the secret key as 64 hex digits (surrounding
    /// whitespace ignored). Errors are messages naming the file.
    pub fn load(path: &Path) -> Result<ValidatorKey, String> {
        let s =
            std::fs::read_to_string(path).map_err(|e| format!("read {}: {e}", path.display()))?;
        let b = Hash::from_hex(s.trim())
            .map_err(|_| format!("{}: a key file holds 64 hex digits", path.display()))?;
        Ok(ValidatorKey(SigningKey::from_bytes(&b.0)))
    }
}

/// A block header. `state_root` is the manifest root of the checkpoint taken
/// after executing this block, on checkpoint heights only (else zero).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// Chain id (the genesis hash, [`Spec::id`]).
    pub chain: Hash,
    /// Height of the block, at least 1.
    pub height: u64,
    /// Header hash of the parent block; the chain id for block 1.
    pub parent: Hash,
    /// [`txs_root`] of the block's transactions.
    pub txs_root: Hash,
    /// Manifest root of the checkpoint after this block on checkpoint
    /// heights, else zero.
    pub state_root: Hash,
    /// Production time, in milliseconds since the Unix epoch.
    pub time_ms: u64,
}

impl Header {
    /// The 145-byte encoding (docs/chain.md), version [`HEADER_VERSION`].
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0] = HEADER_VERSION;
        b[1..33].copy_from_slice(&self.chain.0);
        b[33..41].copy_from_slice(&self.height.to_le_bytes());
        b[41..73].copy_from_slice(&self.parent.0);
        b[73..105].copy_from_slice(&self.txs_root.0);
        b[105..137].copy_from_slice(&self.state_root.0);
        b[137..145].copy_from_slice(&self.time_ms.to_le_bytes());
        b
    }

    /// Decodes exactly [`HEADER_LEN`] bytes of version [`HEADER_VERSION`]
    /// ([`ChainError::Malformed`] otherwise). The fields are not checked
    /// here ([`Spec::verify`] does).
    pub fn decode(b: &[u8]) -> Result<Header, ChainError> {
        if b.len() != HEADER_LEN {
            return Err(malformed(
                "header",
                format!("{} bytes, want {HEADER_LEN}", b.len()),
            ));
        }
        if b[0] != HEADER_VERSION {
            return Err(malformed("header", format!("version {}", b[0])));
        }
        let h32 = |r: std::ops::Range<usize>| {
            let mut a = [0u8; 32];
            a.copy_from_slice(&b[r]);
            Hash(a)
        };
        let u64at = |o: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[o..o + 8]);
            u64::from_le_bytes(a)
        };
        Ok(Header {
            chain: h32(1..33),
            height: u64at(33),
            parent: h32(41..73),
            txs_root: h32(73..105),
            state_root: h32(105..137),
            time_ms: u64at(137),
        })
    }

    /// The header hash: keyed BLAKE3 (context `statesync chain v1 header`)
    /// of the encoding. It names the block, links children to it and is
    /// what validators sign.
    pub fn hash(&self) -> Hash {
        keyed("statesync chain v1 header", &self.encode())
    }
}

/// One write: `value` into slot `key`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tx {
    /// Slot index; a key beyond the keyspace is skipped on execution.
    pub key: u64,
    /// Bytes stored in the slot (at most [`MAX_VALUE`]), as `len || value
    /// || zero padding`.
    pub value: Vec<u8>,
}

/// Signatures of validators over the header hash.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct FinalityProof {
    /// (validator index, ed25519 signature), strictly ascending by index.
    pub sigs: Vec<(u16, [u8; 64])>,
}

/// A block: header, finality proof and transactions (encoding in
/// docs/chain.md).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Block {
    /// The header; its hash is the block's hash.
    pub header: Header,
    /// The validators' signatures that make it final.
    pub proof: FinalityProof,
    /// The transactions, executed in order.
    pub txs: Vec<Tx>,
}

/// Appends the body encoding `u32 count || (u64 key || u8 len || value)*`
/// to `out`. Lengths are not checked (values must fit in a `u8` length).
pub fn encode_txs(txs: &[Tx], out: &mut Vec<u8>) {
    out.extend_from_slice(&(txs.len() as u32).to_le_bytes());
    for t in txs {
        out.extend_from_slice(&t.key.to_le_bytes());
        out.push(t.value.len() as u8);
        out.extend_from_slice(&t.value);
    }
}

/// The txs root a header commits: keyed BLAKE3 (context
/// `statesync chain v1 txs`) of the [`encode_txs`] encoding.
pub fn txs_root(txs: &[Tx]) -> Hash {
    let mut b = Vec::with_capacity(4 + txs.len() * 40);
    encode_txs(txs, &mut b);
    keyed("statesync chain v1 txs", &b)
}

struct Cursor<'a> {
    b: &'a [u8],
    what: &'static str,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ChainError> {
        if self.b.len() < n {
            return Err(malformed(self.what, "truncated"));
        }
        let (a, rest) = self.b.split_at(n);
        self.b = rest;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, ChainError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, ChainError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, ChainError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, ChainError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }
    /// `header || u16 count || (u16 index, sig[64]) * count`, at most
    /// [`MAX_SIGS`] signatures: the start of a block, and a final head.
    fn head(&mut self) -> Result<(Header, FinalityProof), ChainError> {
        let header = Header::decode(self.take(HEADER_LEN)?)?;
        let n = self.u16()? as usize;
        if n > MAX_SIGS {
            return Err(malformed(self.what, format!("{n} signatures")));
        }
        let mut sigs = Vec::with_capacity(n);
        for _ in 0..n {
            let i = self.u16()?;
            let mut s = [0u8; 64];
            s.copy_from_slice(self.take(64)?);
            sigs.push((i, s));
        }
        Ok((header, FinalityProof { sigs }))
    }
}

impl Block {
    /// Its header's height.
    pub fn height(&self) -> u64 {
        self.header.height
    }

    /// Its header's hash ([`Header::hash`]).
    pub fn hash(&self) -> Hash {
        self.header.hash()
    }

    /// header (145) || u16 signature count || (u16 index, 64-byte sig)* ||
    /// u32 tx count || (u64 key, u8 len, value)*. Limits are not checked
    /// here.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = self.encode_head();
        b.reserve(4 + self.txs.len() * 40);
        encode_txs(&self.txs, &mut b);
        b
    }

    /// The block without its transactions: `header (145) || u16 signature
    /// count || (u16 index, 64-byte sig)*`, what a `Final` message carries
    /// to peers that have the proposal's body from gossip.
    pub fn encode_head(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(HEADER_LEN + 2 + self.proof.sigs.len() * 66);
        b.extend_from_slice(&self.header.encode());
        b.extend_from_slice(&(self.proof.sigs.len() as u16).to_le_bytes());
        for (i, s) in &self.proof.sigs {
            b.extend_from_slice(&i.to_le_bytes());
            b.extend_from_slice(s);
        }
        b
    }

    /// Decodes [`Block::encode_head`] strictly. The proof is checked by
    /// [`Spec::verify_proof`], not here.
    pub fn decode_head(b: &[u8]) -> Result<(Header, FinalityProof), ChainError> {
        let mut c = Cursor { b, what: "head" };
        let head = c.head()?;
        if !c.b.is_empty() {
            return Err(malformed("head", format!("{} trailing bytes", c.b.len())));
        }
        Ok(head)
    }

    /// Decodes a block strictly ([`ChainError::Malformed`] otherwise): at
    /// most [`MAX_BLOCK_BYTES`], [`MAX_SIGS`] signatures, [`MAX_TXS`]
    /// transactions with values of at most [`MAX_VALUE`] bytes, no trailing
    /// bytes. Signer order, signatures, chain and roots are checked by
    /// [`Spec::verify`], not here.
    pub fn decode(b: &[u8]) -> Result<Block, ChainError> {
        if b.len() > MAX_BLOCK_BYTES {
            return Err(malformed(
                "block",
                format!("{} bytes, limit {MAX_BLOCK_BYTES}", b.len()),
            ));
        }
        let mut c = Cursor { b, what: "block" };
        let (header, proof) = c.head()?;
        let t = c.u32()? as usize;
        if t > MAX_TXS {
            return Err(malformed("block", format!("{t} transactions")));
        }
        let mut txs = Vec::with_capacity(t.min(c.b.len() / 9));
        for _ in 0..t {
            let key = c.u64()?;
            let len = c.u8()? as usize;
            if len > MAX_VALUE {
                return Err(malformed("block", format!("value of {len} bytes")));
            }
            txs.push(Tx {
                key,
                value: c.take(len)?.to_vec(),
            });
        }
        if !c.b.is_empty() {
            return Err(malformed("block", format!("{} trailing bytes", c.b.len())));
        }
        Ok(Block { header, proof, txs })
    }
}

impl statesync_engine::range::BlockInfo for Block {
    fn height(&self) -> u64 {
        self.header.height
    }
    fn hash(&self) -> [u8; 32] {
        self.header.hash().0
    }
    fn parent(&self) -> [u8; 32] {
        self.header.parent.0
    }
}
