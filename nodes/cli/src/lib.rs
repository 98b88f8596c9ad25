//! The library side of the `shep` command: the topology that `shep up` starts, so that
//! tests and the demo start exactly what a user starts; the clock an SDU process of its own
//! follows a simulation by.

pub mod scenario_clock;
pub mod topology;
