//! Test and benchmark tooling (feature `testing`): process guards and a whole multi-host
//! topology of daemons on loopback addresses.

pub mod https;
pub mod kubesim;
pub mod procs;
pub mod stats;
pub mod topology;
pub mod webdriver;
