//! The p2c agent: the source-side daemon. It enrols once, then dials out to the
//! controller, keeps a session, reports the inventory and runs copy passes on request.

#![deny(unsafe_code)]
// Audited `unsafe` lives only in the modules marked `#[allow(unsafe_code)]`, every block with
// a `// SAFETY:` comment (clippy `undocumented_unsafe_blocks` is denied).

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
// Audited: fanotify and open_by_handle_at(2) for change tracking.
#[allow(unsafe_code)]
pub mod track;
pub mod upload;
pub mod walk;
