//! Policy and its runtime form: [`policy`] compiles a snapshot into lookup tables swapped with
//! one `ArcSwap::store`, with route matching over any `codec::HeadView`; [`balance`] picks an
//! endpoint of a backend. The pipeline's plan step reads these.

pub mod balance;
pub mod policy;
