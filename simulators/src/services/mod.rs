//! The gRPC services of the simulator nodes: one module per registry contract, and the
//! scenario control every node serves.

pub mod bmg;
pub mod common;
pub mod elicense;
pub mod gbdfl;
pub mod gbdul;
pub mod kdp;
pub mod pep;
pub mod scenario;
pub mod zags;
