//! p2c's integration tests: one binary, one module per area.

mod guest_start;
