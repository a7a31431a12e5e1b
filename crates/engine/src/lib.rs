//! Sans-IO protocol cores. Each is a deterministic state machine: `handle_*`
//! in (with the current time passed in), `poll_*` out. No sockets, no files,
//! no clock; the async shell in `statesync` (the node crate) drives them, and
//! simulations drive them with a virtual clock.

pub mod catchup;
pub mod decide;
pub mod fetch;
pub mod lookup;
pub mod peers;
pub mod range;
