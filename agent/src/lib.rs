//! The p2c agent: the source-side daemon. It enrols once, then dials out to the
//! controller, keeps a session, reports the inventory and runs copy passes on request.

pub mod cache;
pub mod config;
pub mod connect;
pub mod enroll;
pub mod export;
pub mod extents;
pub mod inventory;
pub mod scan;
pub mod services;
pub mod session;
pub mod track;
pub mod upload;
pub mod walk;
