//! Policy and its runtime form: [`policy`] compiles a snapshot into lookup tables swapped with
//! one `ArcSwap::store`, with route matching over any `codec::HeadView`; [`balance`] picks an
//! endpoint of a backend; [`budget`] counts a destination's requests and retries. The
//! pipeline's plan step and attempt loop read these.

pub mod balance;
pub mod budget;
pub mod policy;
