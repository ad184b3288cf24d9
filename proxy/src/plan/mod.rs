//! Policy and its runtime form: [`policy`] compiles a snapshot into lookup tables swapped with
//! one `ArcSwap::store`, with route matching over any `codec::HeadView`; [`balance`] picks an
//! endpoint of a backend; [`budget`] counts a destination's requests and retries;
//! [`breaker`], [`limit`], [`fault`] and [`mirror`] are the state of the other resilience steps
//! (a destination's concurrency limit and queue, a route's rate limit, a route's injected
//! faults, a shadow service's bound on mirrored copies), compiled with the tables and carried
//! across snapshots where their policy is unchanged. The pipeline's plan, admit and attempt
//! steps read these.

pub mod balance;
pub mod breaker;
pub mod budget;
pub mod fault;
pub mod limit;
pub mod mirror;
pub mod policy;
