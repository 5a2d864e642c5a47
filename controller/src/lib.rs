//! The p2c controller: the node-side daemon and the operator CLI.

pub mod config;
pub mod init;
pub mod receive;
pub mod state;
pub mod tree;
