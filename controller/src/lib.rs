//! The p2c controller: the node-side daemon and the operator CLI.

#![forbid(unsafe_code)]

pub mod admin;
pub mod assess;
pub mod boot;
pub mod bootcheck;
pub mod cli;
pub mod config;
pub mod context;
pub mod ctconf;
pub mod cutover;
pub mod enroll;
pub mod finalise;
pub mod guest;
pub mod import;
pub mod init;
pub mod link;
pub mod migrate;
pub mod migration;
pub mod online;
pub mod pass;
pub mod plan;
pub mod platform;
pub mod port;
pub mod preflight;
pub mod private_area;
pub mod quota;
pub mod receive;
pub mod server;
pub mod session;
pub mod state;
pub mod throttle;
pub mod tree;
pub mod verify;
