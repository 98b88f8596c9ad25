//! The library side of the `shep` command: the topology that `shep up` starts, so that
//! tests and the demo start exactly what a user starts.

pub mod topology;
