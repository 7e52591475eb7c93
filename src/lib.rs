//! upecho: the tutorial's upper-casing echo server done properly, as a library first.
//!
//! - [`transform`]: the byte transform every reply obeys.
//! - [`net`]: socket set-up (socket2) and process limits, shared by every subcommand.
//! - [`serve`]: the single-threaded mio reactor and the `upecho serve` glue.
//! - [`client`]: `upecho tcp` / `upecho udp`.
//! - [`load`]: `upecho load`.

pub mod addr;
pub mod client;
pub mod io_outcome;
pub mod load;
pub mod net;
pub mod serve;
pub mod transform;
pub mod units;

pub use transform::Transform;
