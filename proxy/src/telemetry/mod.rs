//! Telemetry: [`metrics`], the Prometheus registry the pipeline's finish step records into.

pub mod metrics;
