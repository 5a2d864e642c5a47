//! The p2c controller: the node-side daemon and the operator CLI.

pub mod guest;
pub mod tree;
