//! Many migrations at once (issue 6): live migration with a cutover that stops a real
//! service, the rollback of a failed cutover, failure isolation between migrations, several
//! source hosts in network namespaces with real agent processes, and wave plans.

mod hosts;
mod isolation;
mod live;
mod plan;
mod shared;
