//! IDA gossip for large blocks, with no I/O (RapidChain's information
//! dispersal): a proposer erasure-codes a block into shards with Merkle
//! proofs and signs one header; every committee member relays the shards
//! it got first-hand, decodes from any `k`, and checks the encoding was
//! consistent.
//!
//! - [`code`]: Reed-Solomon shards (reed-solomon-simd) and their tree;
//! - [`wire`]: the messages, byte by byte, bounded decoding;
//! - [`relay`]: the relay rules as a sans-IO state machine ([`Gossip`]);
//! - [`sim`]: a deterministic network simulation (bandwidth, latency,
//!   serialisation time, Byzantine relays) comparing IDA gossip with
//!   flooding over a gossipsub-like mesh and a Turbine-like tree.
//!
//! docs/gossip.md says why the choices (k, m, who sends which shard) are
//! what they are, with the simulation's figures.

#![warn(missing_docs)]

pub mod code;
pub mod relay;
pub mod sim;
pub mod wire;

pub use relay::{Action, Config, Gossip, Verifier, params};
pub use wire::{Header, Message, SignedHeader};
