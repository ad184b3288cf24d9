//! The load generator: open loop (fixed rate, latency measured from each request's *intended*
//! send time, so a stalled server cannot hide its stall — coordinated omission) or closed loop
//! (every worker sends back to back, to find the maximum throughput).
//!
//! # How a run works
//!
//! A run has *workers*; each sends one request at a time. With HTTP/1.1 every worker owns one
//! connection; with h2, `streams` workers share each connection, which gives `streams` requests
//! in flight per connection.
//!
//! - Open loop: a dedicated OS thread (the *pacer*) emits one ticket per request at its intended
//!   time (`start + i / rate`) into a queue that the workers take from in order. If every worker
//!   is busy the ticket waits in the queue, and that wait is part of its latency. The pacer is a
//!   thread, not a tokio timer, because tokio timers have millisecond granularity: up to 1 ms of
//!   timer slack would be charged to every request and swamp sub-millisecond proxy overheads.
//! - Closed loop: workers loop until the end of the run; latency is measured from the actual
//!   send.
//!
//! Requests whose intended (open) or completion (closed) time falls in the warmup are sent but
//! not recorded. Latencies of successful responses (2xx; for gRPC also `grpc-status: 0` in the
//! trailers) go into an HDR histogram in microseconds; failed responses and transport errors
//! (connect, protocol, timeout) are counted separately.
//!
//! # Bounds
//!
//! The pacer emits a finite number of tickets. Every request has a timeout that never reaches
//! past the run's hard deadline (open loop: end + timeout; closed loop: end). Open-loop requests
//! cut off at that deadline, and tickets still queued then (sent no more), count as
//! *unfinished*; closed-loop requests in flight at the end are dropped uncounted. A final guard
//! aborts the workers if they still have not stopped shortly after the deadline.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use hyper::client::conn::{http1, http2};
use serde::Serialize;
use tokio::sync::{mpsc, Mutex};
use tokio::task::JoinSet;

use crate::cli::LoadArgs;
use crate::client::{connect_http1, connect_http2, judge, Endpoint, Outcome, ReqBody};
use crate::protocol::Protocol;
use crate::Result;

/// Highest latency the histograms can hold (longer ones are clamped to it): 10 minutes in µs.
const MAX_LATENCY_US: u64 = 600_000_000;
/// Highest open-loop rate accepted; keeps the ticket queue's memory bounded.
const MAX_RATE: f64 = 1_000_000.0;
/// Pause after a failed connect in closed loop, so a refused port does not become a busy loop.
const RECONNECT_BACKOFF: Duration = Duration::from_millis(10);
/// How long before a request's intended time the pacer stops sleeping and spins (see
/// `spawn_pacer`).
const SPIN_MARGIN: Duration = Duration::from_micros(100);
/// How many distinct error messages a report keeps, to explain errors without flooding.
const MAX_ERROR_SAMPLES: usize = 5;

/// Adds `message` to `samples` unless it is already there or `MAX_ERROR_SAMPLES` are kept.
fn keep_sample(samples: &mut Vec<String>, message: String) {
    if samples.len() < MAX_ERROR_SAMPLES && !samples.contains(&message) {
        samples.push(message);
    }
}

/// How requests are scheduled.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Mode {
    /// Fixed rate in requests per second.
    Open {
        /// Requests per second.
        rate: f64,
    },
    /// Back to back on every worker.
    Closed,
}

/// Everything a run needs.
#[derive(Clone, Debug)]
pub(crate) struct LoadSpec {
    /// Where requests go.
    pub(crate) endpoint: Endpoint,
    /// Open or closed loop.
    pub(crate) mode: Mode,
    /// TCP connections.
    pub(crate) connections: usize,
    /// Requests in flight per connection (h2 only; HTTP/1.1 is always 1).
    pub(crate) streams: usize,
    /// Measured duration, after the warmup.
    pub(crate) duration: Duration,
    /// Unmeasured load before the measured duration.
    pub(crate) warmup: Duration,
    /// Per-request timeout.
    pub(crate) timeout: Duration,
    /// Keep one [`Sample`] per measured request in the report, for statistics over parts of
    /// the window (the failover scenario); off for ordinary runs.
    pub(crate) timeline: bool,
    /// Told the instant the measured window starts, once the connections are open and the
    /// clock is set: lets a scenario act at fixed points of the window.
    pub(crate) window_start: Option<mpsc::UnboundedSender<Instant>>,
}

/// What became of one request, in a timeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum SampleOutcome {
    /// A successful response.
    Ok,
    /// A complete response that is not a success (non-2xx, gRPC error status).
    Failed,
    /// Connect failure, protocol error or timeout.
    Transport,
    /// Not finished by the hard deadline.
    Unfinished,
}

/// One measured request of a run with a timeline.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub(crate) struct Sample {
    /// Its latency clock's start (the intended send in open loop), from the start of the
    /// measured window.
    pub(crate) at: Duration,
    /// What became of it.
    pub(crate) outcome: SampleOutcome,
    /// From `at` to the end of its response (or its failure), in microseconds.
    pub(crate) latency_us: u64,
}

/// Latency percentiles in milliseconds.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub(crate) struct Percentiles {
    /// Median.
    pub(crate) p50: f64,
    /// 90th percentile.
    pub(crate) p90: f64,
    /// 99th percentile.
    pub(crate) p99: f64,
    /// 99.9th percentile.
    pub(crate) p99_9: f64,
    /// Largest recorded value.
    pub(crate) max: f64,
    /// Arithmetic mean.
    pub(crate) mean: f64,
}

impl Percentiles {
    fn of(histogram: &Histogram<u64>) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        if histogram.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            p50: ms(histogram.value_at_quantile(0.50)),
            p90: ms(histogram.value_at_quantile(0.90)),
            p99: ms(histogram.value_at_quantile(0.99)),
            p99_9: ms(histogram.value_at_quantile(0.999)),
            max: ms(histogram.max()),
            mean: histogram.mean() / 1000.0,
        }
    }

    /// Combines rounds of one measurement, each given with its number of samples: every
    /// quantile is the median over the rounds that have samples, so one round that met a noisy
    /// moment of the shared CPUs (or a quiet one) does not decide the row; `max` is the largest
    /// and `mean` is weighted by samples.
    pub(crate) fn median_of(rounds: &[(Percentiles, u64)]) -> Percentiles {
        let measured: Vec<&(Percentiles, u64)> = rounds.iter().filter(|(_, n)| *n > 0).collect();
        let samples: u64 = measured.iter().map(|(_, n)| n).sum();
        if samples == 0 {
            return Percentiles::default();
        }
        let median = |field: fn(&Percentiles) -> f64| {
            let mut values: Vec<f64> = measured.iter().map(|(p, _)| field(p)).collect();
            values.sort_by(f64::total_cmp);
            let mid = values.len() / 2;
            if values.len() % 2 == 1 {
                values[mid]
            } else {
                (values[mid - 1] + values[mid]) / 2.0
            }
        };
        Percentiles {
            p50: median(|p| p.p50),
            p90: median(|p| p.p90),
            p99: median(|p| p.p99),
            p99_9: median(|p| p.p99_9),
            max: measured.iter().map(|(p, _)| p.max).fold(0.0, f64::max),
            mean: measured
                .iter()
                .map(|(p, n)| p.mean * *n as f64)
                .sum::<f64>()
                / samples as f64,
        }
    }
}

/// The result of one run. Counts cover the measured window only, except `completed_total`.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct LoadReport {
    /// What was requested.
    pub(crate) target: String,
    /// `open` or `closed`.
    pub(crate) mode: &'static str,
    /// Requested rate (open loop only).
    pub(crate) target_rps: Option<f64>,
    /// What the load generator spoke.
    pub(crate) protocol: Protocol,
    /// TCP connections.
    pub(crate) connections: usize,
    /// Maximum requests in flight (workers).
    pub(crate) concurrency: usize,
    /// Measured duration in seconds.
    pub(crate) duration_s: f64,
    /// Warmup in seconds (over all rounds, for a combined report).
    pub(crate) warmup_s: f64,
    /// Requests in the measured window (open loop: scheduled; closed loop: completed).
    pub(crate) requests: u64,
    /// Successful responses: 2xx, and for gRPC `grpc-status: 0` in the trailers.
    pub(crate) ok: u64,
    /// Complete responses that are not a success: non-2xx, or a gRPC error status.
    pub(crate) status_errors: u64,
    /// Connect failures, protocol errors and timeouts.
    pub(crate) transport_errors: u64,
    /// Open loop: requests not completed by the hard deadline (the end of the run plus one
    /// timeout), whether cut off in flight or never sent because every worker was stuck.
    pub(crate) unfinished: u64,
    /// Seconds from the start of the measured window until its last request finished (at least
    /// the measured duration).
    pub(crate) elapsed_s: f64,
    /// Achieved throughput: successful responses per second of `elapsed_s`.
    pub(crate) rps: f64,
    /// Latency of successful responses: from the intended send time (open loop) or the actual
    /// send (closed loop) to the end of the response body (and trailers).
    pub(crate) latency_ms: Percentiles,
    /// Latency of successful responses from the actual send; in open loop the gap between this and
    /// `latency_ms` is time spent queued behind busy connections.
    pub(crate) service_time_ms: Percentiles,
    /// Latency percentiles over every successful request of every round (a combined report's
    /// `latency_ms` is the median of the rounds' percentiles; for one run they are equal).
    pub(crate) latency_all_ms: Percentiles,
    /// The latency histogram behind `latency_all_ms`, kept to combine rounds.
    #[serde(skip)]
    pub(crate) latency_histogram: Histogram<u64>,
    /// Requests completed including the warmup, whatever their outcome: the denominator for
    /// "CPU per request" when CPU is sampled around the whole run.
    pub(crate) completed_total: u64,
    /// A few distinct error messages, to say why errors happened.
    pub(crate) error_samples: Vec<String>,
    /// Every measured request, in no particular order, when the spec asked for a timeline.
    #[serde(skip)]
    pub(crate) timeline: Vec<Sample>,
}

impl LoadReport {
    /// One report for several rounds of the same run: counts, durations and elapsed time add
    /// up (so `rps` is over all rounds), latency percentiles are the median over rounds
    /// (`Percentiles::median_of`). `None` for no rounds.
    pub(crate) fn combine(rounds: &[LoadReport]) -> Option<LoadReport> {
        let mut combined = rounds.first()?.clone();
        let sum = |field: fn(&LoadReport) -> u64| rounds.iter().map(field).sum::<u64>();
        let sum_f = |field: fn(&LoadReport) -> f64| rounds.iter().map(field).sum::<f64>();
        combined.requests = sum(|r| r.requests);
        combined.ok = sum(|r| r.ok);
        combined.status_errors = sum(|r| r.status_errors);
        combined.transport_errors = sum(|r| r.transport_errors);
        combined.unfinished = sum(|r| r.unfinished);
        combined.completed_total = sum(|r| r.completed_total);
        combined.duration_s = sum_f(|r| r.duration_s);
        combined.warmup_s = sum_f(|r| r.warmup_s);
        combined.elapsed_s = sum_f(|r| r.elapsed_s);
        combined.rps = if combined.elapsed_s > 0.0 {
            combined.ok as f64 / combined.elapsed_s
        } else {
            0.0
        };
        let weighted = |field: fn(&LoadReport) -> Percentiles| {
            rounds.iter().map(|r| (field(r), r.ok)).collect::<Vec<_>>()
        };
        combined.latency_ms = Percentiles::median_of(&weighted(|r| r.latency_ms));
        combined.service_time_ms = Percentiles::median_of(&weighted(|r| r.service_time_ms));
        for round in &rounds[1..] {
            // Same bounds and precision everywhere (`Tally::new`), so adding cannot fail; if it
            // ever did, the over-all percentiles would just miss that round.
            let _ = combined.latency_histogram.add(&round.latency_histogram);
        }
        combined.latency_all_ms = Percentiles::of(&combined.latency_histogram);
        combined.error_samples = Vec::new();
        for sample in rounds.iter().flat_map(|r| &r.error_samples) {
            keep_sample(&mut combined.error_samples, sample.clone());
        }
        Some(combined)
    }

    /// All errors: non-2xx, transport, unfinished.
    pub(crate) fn errors(&self) -> u64 {
        self.status_errors + self.transport_errors + self.unfinished
    }

    /// Prints the human-readable summary.
    pub(crate) fn print_human(&self) {
        let l = &self.latency_ms;
        let s = &self.service_time_ms;
        let rate = self.target_rps.map_or_else(
            || "closed loop".to_string(),
            |r| format!("open loop at {r} rps"),
        );
        println!(
            "target      {} over {}, {rate}, {} connections, {} in flight max",
            self.target,
            self.protocol.label(),
            self.connections,
            self.concurrency
        );
        println!(
            "window      {:.2}s measured after {:.2}s warmup (elapsed {:.2}s)",
            self.duration_s, self.warmup_s, self.elapsed_s
        );
        println!("throughput  {:.1} rps (successful)", self.rps);
        println!(
            "requests    {} (ok {}, failed responses {}, transport errors {}, unfinished {})",
            self.requests, self.ok, self.status_errors, self.transport_errors, self.unfinished
        );
        if self.ok == 0 {
            println!("latency     no successful response to measure");
        } else {
            println!(
                "latency     p50 {:.3} ms  p90 {:.3} ms  p99 {:.3} ms  p99.9 {:.3} ms  max {:.3} ms",
                l.p50, l.p90, l.p99, l.p99_9, l.max
            );
            println!(
                "service     p50 {:.3} ms  p90 {:.3} ms  p99 {:.3} ms  p99.9 {:.3} ms  max {:.3} ms",
                s.p50, s.p90, s.p99, s.p99_9, s.max
            );
        }
        for sample in &self.error_samples {
            println!("error       {sample}");
        }
    }
}

/// Runs `ferrule-bench load`.
pub(crate) async fn run_cli(args: LoadArgs) -> Result<()> {
    let endpoint = Endpoint::resolve(
        &args.url,
        args.host.as_deref(),
        args.protocol,
        args.allow_non_loopback,
    )
    .await?;
    let (mode, default_connections) = match args.rate {
        Some(rate) => (Mode::Open { rate }, 32),
        None => (Mode::Closed, 64),
    };
    let spec = LoadSpec {
        endpoint,
        mode,
        connections: args.connections.unwrap_or(default_connections),
        streams: args.streams,
        duration: args.duration,
        warmup: args.warmup,
        timeout: args.timeout,
        timeline: false,
        window_start: None,
    };
    let report = run(&spec).await?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        report.print_human();
    }
    Ok(())
}

/// The instants that delimit a run.
#[derive(Clone, Copy, Debug)]
struct Clock {
    /// First intended send.
    start: Instant,
    /// Start of the measured window (end of warmup).
    measure_from: Instant,
    /// End of the measured window; no request is scheduled or started after it.
    end: Instant,
    /// Nothing is sent after it; requests in flight at it are cut off.
    hard_deadline: Instant,
}

/// Runs one load test as described by `spec`.
pub(crate) async fn run(spec: &LoadSpec) -> Result<LoadReport> {
    validate(spec)?;
    let streams = if spec.endpoint.protocol.is_h2() {
        spec.streams
    } else {
        1
    };
    let endpoint = Arc::new(spec.endpoint.clone());

    // Open every connection before the clock starts, so connection setup is not charged to the
    // first requests and an unreachable target fails fast with a clear error.
    let mut conns = Vec::with_capacity(spec.connections * streams);
    for _ in 0..spec.connections {
        if endpoint.protocol.is_h2() {
            let slot = Arc::new(H2Slot::new(connect_http2(endpoint.addr).await?));
            conns.extend((0..streams).map(|_| Conn::H2 {
                slot: slot.clone(),
                current: None,
            }));
        } else {
            conns.push(Conn::H1(Some(connect_http1(endpoint.addr).await?)));
        }
    }
    let concurrency = conns.len();

    // A short lead so every worker is parked on the queue before the first ticket is due.
    let start = Instant::now() + Duration::from_millis(20);
    let measure_from = start + spec.warmup;
    let end = measure_from + spec.duration;
    let clock = Clock {
        start,
        measure_from,
        end,
        hard_deadline: end + spec.timeout,
    };
    if let Some(tell) = &spec.window_start {
        // The listener may have given up waiting; the run does not depend on it.
        let _ = tell.send(measure_from);
    }

    let mut workers = JoinSet::new();
    let mut pacer = None;
    match spec.mode {
        Mode::Open { rate } => {
            let (tickets_tx, tickets_rx) = mpsc::unbounded_channel();
            let tickets = Arc::new(Mutex::new(tickets_rx));
            for conn in conns {
                let worker = Worker::new(conn, endpoint.clone(), clock, spec)?;
                workers.spawn(worker.open_loop(tickets.clone()));
            }
            pacer = Some(spawn_pacer(clock, rate, tickets_tx)?);
        }
        Mode::Closed => {
            for conn in conns {
                let worker = Worker::new(conn, endpoint.clone(), clock, spec)?;
                workers.spawn(worker.closed_loop());
            }
        }
    }

    // Workers stop by themselves by the hard deadline; this guard only catches a bug.
    let guard = tokio::time::Instant::from_std(clock.hard_deadline + Duration::from_secs(5));
    let mut tally = Tally::new()?;
    if spec.timeline {
        tally.timeline = Some((clock.measure_from, Vec::new()));
    }
    loop {
        match tokio::time::timeout_at(guard, workers.join_next()).await {
            Ok(Some(joined)) => tally.merge(joined?)?,
            Ok(None) => break,
            Err(_) => {
                workers.abort_all();
                return Err("load workers did not stop by the hard deadline".into());
            }
        }
    }
    if let Some(pacer) = pacer {
        // The queue closed, so the pacer has already returned; joining only reaps the thread.
        let _ = tokio::task::spawn_blocking(move || pacer.join()).await;
    }
    Ok(tally.report(spec, &endpoint, clock, concurrency))
}

fn validate(spec: &LoadSpec) -> Result<()> {
    if spec.connections == 0 || spec.connections > 10_000 {
        return Err("--connections must be between 1 and 10000".into());
    }
    if spec.streams == 0 || spec.streams > 1_000 {
        return Err("--streams must be between 1 and 1000".into());
    }
    if let Mode::Open { rate } = spec.mode {
        if !(rate > 0.0 && rate <= MAX_RATE) {
            return Err(format!("--rate must be above 0 and at most {MAX_RATE}").into());
        }
    }
    if spec.duration.is_zero() {
        return Err("--duration must be above 0".into());
    }
    if spec.timeout.is_zero() {
        return Err("--timeout must be above 0".into());
    }
    Ok(())
}

/// Starts the pacer thread: emits the intended send time of every request of the run, each at
/// that time, then closes the queue by dropping the sender.
fn spawn_pacer(
    clock: Clock,
    rate: f64,
    tickets: mpsc::UnboundedSender<Instant>,
) -> Result<std::thread::JoinHandle<()>> {
    let total = ((clock.end - clock.start).as_secs_f64() * rate).ceil() as u64;
    let handle = std::thread::Builder::new()
        .name("ferrule-bench-pacer".into())
        .spawn(move || {
            // Sleeping overshoots by the kernel's timer slack (~50 µs), which would be charged to
            // every request; so sleep until a margin before the intended time and spin the rest.
            // A tenth of the interval at most keeps the spinning under ~10% of one core.
            let spin_margin = SPIN_MARGIN.min(Duration::from_secs_f64(0.1 / rate));
            for i in 0..total {
                // Computed from the start each time, so sleep overshoot never accumulates.
                let intended = clock.start + Duration::from_secs_f64(i as f64 / rate);
                let now = Instant::now();
                if intended > now + spin_margin {
                    std::thread::sleep(intended - now - spin_margin);
                }
                // Bounded: ends at `intended`, at most `spin_margin` plus the sleep's overshoot.
                while Instant::now() < intended {
                    std::hint::spin_loop();
                }
                if tickets.send(intended).is_err() {
                    return; // every worker is gone
                }
            }
        })?;
    Ok(handle)
}

/// The connection a worker sends on.
enum Conn {
    /// An HTTP/1.1 connection owned by this worker; `None` after a failure (reconnect next time).
    H1(Option<http1::SendRequest<ReqBody>>),
    /// A share of an h2 connection.
    H2 {
        /// The connection shared with the other workers on it.
        slot: Arc<H2Slot>,
        /// This worker's clone of the sender and its generation.
        current: Option<(u64, http2::SendRequest<ReqBody>)>,
    },
}

/// One h2 connection shared by several workers. When it breaks, the first worker to notice
/// reconnects and the others pick up the new connection, so the connection count stays fixed.
struct H2Slot {
    state: Mutex<(u64, http2::SendRequest<ReqBody>)>,
}

impl H2Slot {
    fn new(sender: http2::SendRequest<ReqBody>) -> Self {
        H2Slot {
            state: Mutex::new((0, sender)),
        }
    }

    /// Returns a live sender; `broken` is the generation the caller saw fail, if any.
    async fn checkout(
        &self,
        endpoint: &Endpoint,
        broken: Option<u64>,
    ) -> Result<(u64, http2::SendRequest<ReqBody>)> {
        let mut state = self.state.lock().await;
        if state.1.is_closed() || Some(state.0) == broken {
            let sender = connect_http2(endpoint.addr).await?;
            *state = (state.0 + 1, sender);
        }
        Ok((state.0, state.1.clone()))
    }
}

impl Conn {
    /// Sends one request and reads the whole response.
    async fn exchange(&mut self, endpoint: &Endpoint) -> Outcome {
        let response = match self {
            Conn::H1(slot) => {
                let mut sender = match slot.take().filter(|s| !s.is_closed()) {
                    Some(sender) => sender,
                    None => match connect_http1(endpoint.addr).await {
                        Ok(sender) => sender,
                        Err(e) => return Outcome::Transport(e.to_string()),
                    },
                };
                let result = async {
                    sender.ready().await?;
                    sender.send_request(endpoint.request()).await
                }
                .await;
                // Keep the connection only if it worked; if this future is dropped (timeout)
                // the sender is dropped with it, and the next request reconnects.
                if result.is_ok() {
                    *slot = Some(sender);
                }
                result
            }
            Conn::H2 { slot, current } => {
                let (generation, mut sender) = match current.take() {
                    Some(live) if !live.1.is_closed() => live,
                    stale => match slot.checkout(endpoint, stale.map(|s| s.0)).await {
                        Ok(fresh) => fresh,
                        Err(e) => return Outcome::Transport(e.to_string()),
                    },
                };
                let result = async {
                    sender.ready().await?;
                    sender.send_request(endpoint.request()).await
                }
                .await;
                if result.is_ok() {
                    *current = Some((generation, sender));
                }
                result
            }
        };
        match response {
            Ok(response) => judge(endpoint.protocol, response).await,
            Err(e) => Outcome::Transport(e.to_string()),
        }
    }

    /// Forgets an HTTP/1.1 connection whose exchange was cut short: its state is unknown.
    /// (An h2 stream cut short is reset by hyper; the connection stays usable.)
    fn abandon(&mut self) {
        if let Conn::H1(slot) = self {
            *slot = None;
        }
    }
}

/// One request at a time on one connection (or one h2 stream slot).
struct Worker {
    conn: Conn,
    endpoint: Arc<Endpoint>,
    clock: Clock,
    timeout: Duration,
    tally: Tally,
}

impl Worker {
    fn new(conn: Conn, endpoint: Arc<Endpoint>, clock: Clock, spec: &LoadSpec) -> Result<Self> {
        let mut tally = Tally::new()?;
        if spec.timeline {
            tally.timeline = Some((clock.measure_from, Vec::new()));
        }
        Ok(Worker {
            conn,
            endpoint,
            clock,
            timeout: spec.timeout,
            tally,
        })
    }

    /// Takes tickets until the pacer closes the queue (bounded: the pacer emits a finite count).
    async fn open_loop(mut self, tickets: Arc<Mutex<mpsc::UnboundedReceiver<Instant>>>) -> Tally {
        loop {
            // The lock makes workers take tickets one at a time, in order.
            let next = tickets.lock().await.recv().await;
            let Some(intended) = next else { break };
            let measured = intended >= self.clock.measure_from;
            let sent = Instant::now();
            if sent >= self.clock.hard_deadline {
                if measured {
                    self.tally.requests += 1;
                    self.tally.unfinished += 1;
                    self.tally.mark(intended, SampleOutcome::Unfinished, sent);
                }
                continue;
            }
            let outcome = self.exchange_until(self.clock.hard_deadline).await;
            let done = Instant::now();
            self.tally.completed_total += 1;
            if measured {
                self.tally.requests += 1;
                self.tally.record(outcome, intended, sent, done);
            }
        }
        self.tally
    }

    /// Sends back to back until the end of the window (bounded by time: every iteration
    /// either waits on I/O with a budget that ends at `end` or sleeps).
    async fn closed_loop(mut self) -> Tally {
        tokio::time::sleep_until(self.clock.start.into()).await;
        loop {
            let sent = Instant::now();
            if sent >= self.clock.end {
                break;
            }
            let outcome = self.exchange_until(self.clock.end).await;
            let done = Instant::now();
            if matches!(outcome, Outcome::CutOff) {
                // Cut off by the end of the run, not a failure of the target.
                break;
            }
            self.tally.completed_total += 1;
            let failed = matches!(outcome, Outcome::Transport(_));
            if done >= self.clock.measure_from && done <= self.clock.end {
                self.tally.requests += 1;
                self.tally.record(outcome, sent, sent, done);
            }
            if failed {
                tokio::time::sleep(RECONNECT_BACKOFF).await;
            }
        }
        self.tally
    }

    /// One exchange, bounded by the request timeout and by `limit` (the end of the run).
    async fn exchange_until(&mut self, limit: Instant) -> Outcome {
        let now = Instant::now();
        let cut_off = now + self.timeout >= limit;
        let budget = self.timeout.min(limit.saturating_duration_since(now));
        match tokio::time::timeout(budget, self.conn.exchange(&self.endpoint)).await {
            Ok(outcome) => outcome,
            Err(_) => {
                self.conn.abandon();
                if cut_off {
                    Outcome::CutOff
                } else {
                    Outcome::Transport(format!(
                        "no complete response within the {:?} timeout",
                        self.timeout
                    ))
                }
            }
        }
    }
}

/// Counters and histograms of one worker, merged into one at the end.
struct Tally {
    latency: Histogram<u64>,
    service: Histogram<u64>,
    requests: u64,
    ok: u64,
    status_errors: u64,
    transport_errors: u64,
    unfinished: u64,
    completed_total: u64,
    last_done: Option<Instant>,
    error_samples: Vec<String>,
    /// The start of the measured window and the samples, when a timeline is kept.
    timeline: Option<(Instant, Vec<Sample>)>,
}

impl Tally {
    fn new() -> Result<Self> {
        // 3 significant digits: 1 µs resolution below 1 ms, 0.1% relative error above.
        let histogram = || Histogram::new_with_bounds(1, MAX_LATENCY_US, 3);
        Ok(Tally {
            latency: histogram()?,
            service: histogram()?,
            requests: 0,
            ok: 0,
            status_errors: 0,
            transport_errors: 0,
            unfinished: 0,
            completed_total: 0,
            last_done: None,
            error_samples: Vec::new(),
            timeline: None,
        })
    }

    /// Adds a sample to the timeline, if one is kept.
    fn mark(&mut self, from: Instant, outcome: SampleOutcome, done: Instant) {
        if let Some((window, samples)) = &mut self.timeline {
            samples.push(Sample {
                at: from.saturating_duration_since(*window),
                outcome,
                latency_us: u64::try_from(done.saturating_duration_since(from).as_micros())
                    .unwrap_or(u64::MAX),
            });
        }
    }

    /// Records a measured request: `from` is when its latency starts (intended or actual send).
    fn record(&mut self, outcome: Outcome, from: Instant, sent: Instant, done: Instant) {
        self.last_done = self.last_done.max(Some(done));
        let kind = match outcome {
            Outcome::Ok => SampleOutcome::Ok,
            Outcome::Failed(_) => SampleOutcome::Failed,
            Outcome::Transport(_) => SampleOutcome::Transport,
            Outcome::CutOff => SampleOutcome::Unfinished,
        };
        self.mark(from, kind, done);
        match outcome {
            Outcome::Ok => {
                self.ok += 1;
                let us = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
                self.latency.saturating_record(us(done - from));
                self.service.saturating_record(us(done - sent));
            }
            Outcome::Failed(message) => {
                self.status_errors += 1;
                self.sample(message);
            }
            Outcome::Transport(message) => {
                self.transport_errors += 1;
                self.sample(message);
            }
            Outcome::CutOff => {
                self.unfinished += 1;
                self.sample("unfinished at the hard deadline (end of run + timeout)".into());
            }
        }
    }

    fn sample(&mut self, message: String) {
        keep_sample(&mut self.error_samples, message);
    }

    fn merge(&mut self, other: Tally) -> Result<()> {
        self.latency.add(&other.latency)?;
        self.service.add(&other.service)?;
        self.requests += other.requests;
        self.ok += other.ok;
        self.status_errors += other.status_errors;
        self.transport_errors += other.transport_errors;
        self.unfinished += other.unfinished;
        self.completed_total += other.completed_total;
        self.last_done = self.last_done.max(other.last_done);
        for message in other.error_samples {
            self.sample(message);
        }
        if let (Some((_, mine)), Some((_, theirs))) = (&mut self.timeline, other.timeline) {
            mine.extend(theirs);
        }
        Ok(())
    }

    fn report(
        self,
        spec: &LoadSpec,
        endpoint: &Endpoint,
        clock: Clock,
        concurrency: usize,
    ) -> LoadReport {
        // Open loop: requests scheduled near the end finish a little after it; counting that
        // time keeps a target that falls behind from looking faster than it was.
        let finished = self.last_done.map_or(clock.end, |done| done.max(clock.end));
        let elapsed = (finished - clock.measure_from).as_secs_f64();
        let (mode, target_rps) = match spec.mode {
            Mode::Open { rate } => ("open", Some(rate)),
            Mode::Closed => ("closed", None),
        };
        LoadReport {
            target: endpoint.describe(),
            mode,
            target_rps,
            protocol: endpoint.protocol,
            connections: spec.connections,
            concurrency,
            duration_s: spec.duration.as_secs_f64(),
            warmup_s: spec.warmup.as_secs_f64(),
            requests: self.requests,
            ok: self.ok,
            status_errors: self.status_errors,
            transport_errors: self.transport_errors,
            unfinished: self.unfinished,
            elapsed_s: elapsed,
            rps: if elapsed > 0.0 {
                self.ok as f64 / elapsed
            } else {
                0.0
            },
            latency_ms: Percentiles::of(&self.latency),
            latency_all_ms: Percentiles::of(&self.latency),
            latency_histogram: self.latency,
            service_time_ms: Percentiles::of(&self.service),
            completed_total: self.completed_total,
            error_samples: self.error_samples,
            timeline: self
                .timeline
                .map(|(_, samples)| samples)
                .unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_bounds_are_valid() {
        assert!(Tally::new().is_ok());
    }

    fn at(p99: f64, max: f64, mean: f64) -> Percentiles {
        Percentiles {
            p50: p99 / 2.0,
            p90: p99 / 1.5,
            p99,
            p99_9: p99 * 2.0,
            max,
            mean,
        }
    }

    #[test]
    fn rounds_combine_by_median_and_skip_empty_ones() {
        // One noisy round (p99 9 ms) and one without samples do not move the median.
        let rounds = [
            (at(0.5, 1.0, 0.2), 100),
            (at(9.0, 20.0, 0.4), 100),
            (at(0.4, 2.0, 0.2), 200),
            (Percentiles::default(), 0),
        ];
        let combined = Percentiles::median_of(&rounds);
        assert_eq!(combined.p99, 0.5);
        assert_eq!(combined.p50, 0.25);
        assert_eq!(combined.max, 20.0);
        assert!((combined.mean - 0.25).abs() < 1e-9);
        // An even count takes the mean of the middle two.
        let even = Percentiles::median_of(&rounds[..2]);
        assert_eq!(even.p99, 4.75);
        assert_eq!(Percentiles::median_of(&[]).p99, 0.0);
    }

    #[test]
    fn combined_reports_add_counts_and_time() {
        let report = |ok: u64, errors: u64, p99: f64| LoadReport {
            target: "t".into(),
            mode: "open",
            target_rps: Some(1000.0),
            protocol: Protocol::Http1,
            connections: 32,
            concurrency: 32,
            duration_s: 3.0,
            warmup_s: 0.5,
            requests: ok + errors,
            ok,
            status_errors: errors,
            transport_errors: 0,
            unfinished: 0,
            elapsed_s: 3.0,
            rps: ok as f64 / 3.0,
            latency_ms: at(p99, p99, p99 / 2.0),
            service_time_ms: at(p99, p99, p99 / 2.0),
            latency_all_ms: at(p99, p99, p99 / 2.0),
            latency_histogram: {
                let mut h = Tally::new().unwrap().latency;
                h.record_n((p99 * 1000.0) as u64, ok).unwrap();
                h
            },
            completed_total: ok + errors + 500,
            error_samples: if errors > 0 {
                vec!["503".into()]
            } else {
                vec![]
            },
            timeline: Vec::new(),
        };
        let combined = LoadReport::combine(&[
            report(3000, 0, 0.3),
            report(2999, 1, 0.9),
            report(3000, 0, 0.4),
        ])
        .unwrap();
        assert_eq!(combined.requests, 9000);
        assert_eq!(combined.ok, 8999);
        assert_eq!(combined.errors(), 1);
        assert_eq!(combined.completed_total, 10_500);
        assert_eq!(combined.duration_s, 9.0);
        assert!((combined.rps - 8999.0 / 9.0).abs() < 1e-9);
        assert_eq!(combined.latency_ms.p99, 0.4);
        // Over all requests, the slow round's third of them decides p99.
        assert_eq!(combined.latency_all_ms.p99, 0.9);
        assert_eq!(combined.latency_all_ms.p50, 0.4);
        assert_eq!(combined.error_samples, vec!["503".to_string()]);
        assert!(LoadReport::combine(&[]).is_none());
    }

    async fn upstream() -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(crate::upstream::serve(
            listener,
            bytes::Bytes::from_static(&[b'x'; 1024]),
        ));
        addr
    }

    fn spec(endpoint: Endpoint, mode: Mode) -> LoadSpec {
        LoadSpec {
            endpoint,
            mode,
            connections: 4,
            streams: 2,
            duration: Duration::from_millis(500),
            warmup: Duration::from_millis(100),
            timeout: Duration::from_secs(2),
            timeline: false,
            window_start: None,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn open_loop_sends_the_scheduled_count() {
        let addr = upstream().await;
        for protocol in Protocol::ALL {
            let url = format!("http://{addr}{}", protocol.path());
            let endpoint = Endpoint::resolve(&url, None, protocol, false)
                .await
                .unwrap();
            let report = run(&spec(endpoint, Mode::Open { rate: 200.0 }))
                .await
                .unwrap();
            // 200 rps for 0.5 s: 100 scheduled in the window (boundary rounding allows ±1).
            assert!((99..=101).contains(&report.requests), "{report:?}");
            assert_eq!(report.ok, report.requests, "{report:?}");
            assert_eq!(report.errors(), 0, "{report:?}");
            assert!(report.latency_ms.p50 > 0.0);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn closed_loop_runs_and_an_unreachable_target_fails_fast() {
        let addr = upstream().await;
        let url = format!("http://{addr}/");
        let endpoint = Endpoint::resolve(&url, None, Protocol::Http1, false)
            .await
            .unwrap();
        let report = run(&spec(endpoint, Mode::Closed)).await.unwrap();
        assert!(report.ok > 0 && report.errors() == 0, "{report:?}");

        // Nothing listens on a port we just released: the run must fail fast, not hang.
        let port = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", port.local_addr().unwrap());
        drop(port);
        let endpoint = Endpoint::resolve(&url, None, Protocol::Http1, false)
            .await
            .unwrap();
        assert!(run(&spec(endpoint, Mode::Closed)).await.is_err());
    }

    #[tokio::test]
    async fn non_loopback_targets_are_refused() {
        let refused = Endpoint::resolve("http://192.0.2.1:80/", None, Protocol::Http1, false).await;
        assert!(refused.is_err());
    }
}
