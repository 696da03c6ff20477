//! Conformance suites of the traits defined here whose implementations live in several crates
//! (feature `testing`; production builds leave it off).

pub mod gateway_conformance;
