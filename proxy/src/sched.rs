//! The sidecar's CPU scheduling hint: a short time slice under Linux's EEVDF scheduler.
//!
//! # Why
//!
//! A sidecar works in short bursts: a request or a response costs it a few tens of
//! microseconds, then it sleeps in `epoll_wait`. It shares CPUs with its app and, on a small
//! node, with the next hop. When a request arrives while another task runs on the CPU the
//! sidecar wakes on, EEVDF lets the running task go on towards the end of its slice — by
//! default 0.7 ms × (1 + log2 CPUs), 1.4 ms on two CPUs — unless the woken task asked for a
//! *shorter* slice, in which case it may preempt at once (the kernel's `PREEMPT_SHORT`).
//! Every wake-up on a request's path can wait like that, and over two hops these waits are a
//! visible part of the latency: on the benchmark machine a 300 µs slice took about 35 µs off
//! the two-sidecar median and a third off p99 (ARCHITECTURE.md, "Runtime and cost").
//!
//! A short slice does not buy CPU time: the weight (nice value) is unchanged, so the sidecar
//! gets the same share of a busy CPU as before. It only changes *when* it runs: sooner after
//! a wake-up, in shorter turns. The price is more context switches when the sidecar itself is
//! busy for longer than its slice; 300 µs is well above a burst's length, so saturated
//! throughput moved by less than the run-to-run noise, while 100 µs (the kernel's minimum)
//! cost about 2%.
//!
//! # How
//!
//! `sched_setattr(2)` with `sched_runtime` set on a fair policy (`SCHED_OTHER`, `SCHED_BATCH`,
//! `SCHED_IDLE`) requests the slice; Linux 6.12 and later honour it (clamped to 0.1–100 ms),
//! older kernels accept and ignore it, which `sched_getattr` then shows. Threads inherit the
//! slice when they are created, so it is requested on the main thread before the runtime
//! starts its threads. Real-time and deadline policies are left alone: whoever chose them knows
//! better.
//!
//! No maintained crate wraps `sched_setattr` (libc only has the syscall numbers; nix and
//! rustix do not have it), so this module makes the two raw system calls itself. It is the
//! only `unsafe` code in the workspace.
#![allow(unsafe_code)]

use std::io;
use std::time::Duration;

/// `SCHED_OTHER`, `SCHED_BATCH` and `SCHED_IDLE`: the fair-class policies that have a slice.
const FAIR_POLICIES: [u32; 3] = [0, 3, 5];

/// `struct sched_attr` as of Linux 4.13 (`SCHED_ATTR_SIZE_VER1`); the kernel accepts any size
/// it knows and zero-fills or checks the rest.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct SchedAttr {
    size: u32,
    sched_policy: u32,
    sched_flags: u64,
    sched_nice: i32,
    sched_priority: u32,
    sched_runtime: u64,
    sched_deadline: u64,
    sched_period: u64,
    sched_util_min: u32,
    sched_util_max: u32,
}

const ATTR_SIZE: u32 = std::mem::size_of::<SchedAttr>() as u32;

/// A thread's slice, as the kernel reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slice {
    /// The thread runs with slices of this length: the requested one, or the kernel's default.
    Length(Duration),
    /// The kernel does not report slices, and ignores requests for one (before Linux 6.12).
    Unsupported,
    /// The thread runs under a real-time or deadline policy, which has no slice; left alone.
    NotFair,
}

/// Requests `slice` for the calling thread (and every thread it creates afterwards), keeping
/// its policy and nice value, and reports what the kernel made of it.
pub fn request(slice: Duration) -> io::Result<Slice> {
    let mut attr = get()?;
    if !FAIR_POLICIES.contains(&attr.sched_policy) {
        return Ok(Slice::NotFair);
    }
    // At least 1 ns: a zero runtime means "the default slice" to the kernel.
    attr.sched_runtime = u64::try_from(slice.as_nanos()).unwrap_or(u64::MAX).max(1);
    attr.sched_flags = 0;
    set(&attr)?;
    current()
}

/// Goes back to the kernel's default slice for the calling thread.
pub fn reset() -> io::Result<()> {
    let mut attr = get()?;
    if FAIR_POLICIES.contains(&attr.sched_policy) {
        attr.sched_runtime = 0;
        attr.sched_flags = 0;
        set(&attr)?;
    }
    Ok(())
}

/// The calling thread's slice as the kernel reports it (custom or default alike).
pub fn current() -> io::Result<Slice> {
    let attr = get()?;
    Ok(if !FAIR_POLICIES.contains(&attr.sched_policy) {
        Slice::NotFair
    } else if attr.sched_runtime == 0 {
        Slice::Unsupported
    } else {
        Slice::Length(Duration::from_nanos(attr.sched_runtime))
    })
}

fn get() -> io::Result<SchedAttr> {
    let mut attr = SchedAttr::default();
    // SAFETY: `attr` is a valid, writable `struct sched_attr` of `ATTR_SIZE` bytes, which is
    // the size passed; pid 0 is the calling thread; flags must be 0.
    let r = unsafe {
        libc::syscall(
            libc::SYS_sched_getattr,
            0,
            &mut attr as *mut SchedAttr,
            ATTR_SIZE,
            0,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(attr)
}

fn set(attr: &SchedAttr) -> io::Result<()> {
    let attr = SchedAttr {
        size: ATTR_SIZE,
        ..*attr
    };
    // SAFETY: `attr` is a valid `struct sched_attr` whose `size` field gives its length; the
    // kernel only reads it. pid 0 is the calling thread; flags must be 0.
    let r = unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &attr as *const SchedAttr, 0) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    // Each test runs on its own thread, so changing that thread's slice affects nothing else.

    #[test]
    fn a_requested_slice_is_applied_inherited_and_reset() {
        let before = current().unwrap();
        let outcome = request(Duration::from_micros(300)).unwrap();
        match (before, outcome) {
            // The kernel clamps to 0.1–100 ms; 300 µs is inside, so it is kept exactly.
            (Slice::Length(_), Slice::Length(d)) => assert_eq!(d, Duration::from_micros(300)),
            (Slice::Unsupported, Slice::Unsupported) | (Slice::NotFair, Slice::NotFair) => {}
            other => panic!("unexpected slices {other:?}"),
        }
        assert_eq!(current().unwrap(), outcome);
        // A thread created now inherits the slice.
        let child = std::thread::spawn(|| current().unwrap()).join().unwrap();
        assert_eq!(child, outcome);
        reset().unwrap();
        assert_eq!(current().unwrap(), before);
    }

    #[test]
    fn slices_below_the_kernel_minimum_are_clamped() {
        if let Slice::Length(d) = request(Duration::from_nanos(1)).unwrap() {
            assert_eq!(d, Duration::from_micros(100));
        }
        reset().unwrap();
    }
}
