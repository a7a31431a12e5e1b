//! Sans-IO protocol cores of statesync. Each scheduler is a deterministic
//! state machine: `handle_*` in (with the current time passed in), `poll_*`
//! out; the decision is pure functions. No sockets, no files, no clock: the
//! async shell in `statesync-node` drives them, and simulations drive them
//! with a virtual clock.
//!
//! - [`fetch`]: the state fetch scheduler (manifest and chunks of one
//!   trusted root, peer windows, strikes and bans).
//! - [`range`]: block range sync, forward towards the head and backward
//!   (backfill) down to a horizon.
//! - [`lookup`]: bounded lookups of missing parents near the head.
//! - [`peers`]: the peer set manager (dials, backoff, discovery).
//! - [`decide`]: the catch-up decision (follow, replay or state sync) and
//!   when to switch a running state sync to a newer checkpoint.
//! - [`catchup`]: the catch-up phase machine that uses that decision.

#![warn(missing_docs)]

pub mod admission;
pub mod catchup;
pub mod decide;
pub mod fetch;
pub mod lookup;
pub mod peers;
pub mod range;
