//! The sidecar's CPU scheduling hint: a short time slice under Linux's EEVDF scheduler.
//!
//! # Why
//!
//! A sidecar works in short bursts: a request or a response costs it a few tens of
//! microseconds, then it sleeps in `epoll_wait`. It shares CPUs with its app and, on a small
//! node, with the next hop. When a request arrives while another task runs on the CPU the
//! sidecar wakes on, EEVDF lets the running task go on towards the end of its slice — by
//! default 0.7–0.75 ms × (1 + log2 CPUs, counting at most 8), 1.4–1.5 ms on two CPUs — unless
//! the woken task asked for a *shorter* slice, in which case it may preempt at once (the
//! kernel's `PREEMPT_SHORT`). Every wake-up on a request's path can wait like that, and over
//! two hops these waits are a visible part of the latency: on the benchmark machine a short
//! slice took about 35 µs off the median of a two-sidecar chain.
//!
//! A short slice does not buy CPU time: the weight (nice value) is unchanged, so the sidecar
//! gets the same share of a busy CPU as before. It only changes *when* it runs: sooner after
//! a wake-up, in shorter turns. But a sidecar alone in front of its app then preempts the app
//! at every response, and both pay for it in context switches and cold caches: there the
//! sidecar's CPU per request rose by 45% and its median latency got worse. So the slice is
//! opt-in (`--sched-slice`); the measurements are in ARCHITECTURE.md ("Waking up on time").
//!
//! # How
//!
//! `sched_setattr(2)` with `sched_runtime` set on a policy of the fair class (`SCHED_OTHER`,
//! `SCHED_BATCH`) requests the slice; Linux 6.12 and later honour it (clamped to 0.1–100 ms)
//! and report the slice in `sched_getattr`, older kernels accept and ignore it and report 0.
//! Threads inherit the slice when they are created, unless `SCHED_RESET_ON_FORK` is set, so it
//! is requested on the main thread before the runtime starts its threads. Other policies
//! (real-time, deadline, `SCHED_IDLE`, sched_ext) have no slice to set and are left alone.
//!
//! No maintained crate wraps `sched_setattr` (libc only has the syscall numbers; nix and
//! rustix do not have it), so this module makes the two raw system calls itself. They are the
//! only `unsafe` code in the workspace.

use std::io;
use std::time::Duration;

/// A thread's slice, as the kernel reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slice {
    /// The thread runs with slices of this length: the requested one, or the kernel's default.
    Length(Duration),
    /// The kernel does not report slices, and ignores requests for one (before Linux 6.12).
    Unsupported,
    /// The thread's policy has no slice (real-time, deadline, `SCHED_IDLE`, sched_ext).
    OtherPolicy,
}

/// The shortest and longest slices the kernel honours; it clamps other requests to these.
pub const RANGE: (Duration, Duration) = (Duration::from_micros(100), Duration::from_millis(100));

/// Requests `slice` for the calling thread (and every thread it creates afterwards), keeping
/// its policy, nice value and flags, and reports what the kernel made of it.
pub fn request(slice: Duration) -> io::Result<Slice> {
    sys::request(slice)
}

/// The slice of thread `tid` (0: the calling thread), as the kernel reports it.
pub fn of_thread(tid: u32) -> io::Result<Slice> {
    sys::of_thread(tid)
}

#[cfg(target_os = "linux")]
mod sys {
    use super::Slice;
    use std::io;
    use std::time::Duration;

    /// The fair-class policies, whose tasks have a slice: `SCHED_OTHER` and `SCHED_BATCH`.
    /// (`SCHED_IDLE` accepts the call but keeps its slice.)
    const FAIR_POLICIES: [u32; 2] = [0, 3];
    /// `SCHED_FLAG_RESET_ON_FORK`: the one flag `sched_getattr` reports that must be passed
    /// back as it was (clearing it needs privileges).
    const RESET_ON_FORK: u64 = 0x01;

    /// `struct sched_attr` as of Linux 4.13 (`SCHED_ATTR_SIZE_VER1`).
    #[repr(C)]
    #[derive(Debug, Default, Clone, Copy)]
    pub(super) struct SchedAttr {
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

    const ATTR_SIZE: u32 = 56;
    const _: () = assert!(std::mem::size_of::<SchedAttr>() == ATTR_SIZE as usize);

    pub(super) fn request(slice: Duration) -> io::Result<Slice> {
        let mut attr = get(0)?;
        if !FAIR_POLICIES.contains(&attr.sched_policy) {
            return Ok(Slice::OtherPolicy);
        }
        // At least 1 ns: a zero runtime means "the default slice" to the kernel.
        attr.sched_runtime = u64::try_from(slice.as_nanos()).unwrap_or(u64::MAX).max(1);
        set(attr)?;
        of_thread(0)
    }

    pub(super) fn of_thread(tid: u32) -> io::Result<Slice> {
        let attr = get(tid)?;
        Ok(if !FAIR_POLICIES.contains(&attr.sched_policy) {
            Slice::OtherPolicy
        } else if attr.sched_runtime == 0 {
            Slice::Unsupported
        } else {
            Slice::Length(Duration::from_nanos(attr.sched_runtime))
        })
    }

    /// Puts back attributes read by `get` (the tests restore a thread with it).
    #[cfg(test)]
    pub(super) fn restore(attr: SchedAttr) -> io::Result<()> {
        set(attr)
    }

    #[allow(unsafe_code)]
    pub(super) fn get(tid: u32) -> io::Result<SchedAttr> {
        let pid = libc::pid_t::try_from(tid)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "no such thread id"))?;
        let mut attr = SchedAttr::default();
        // SAFETY: `attr` is a valid, writable `struct sched_attr` of `ATTR_SIZE` bytes, the
        // size passed, and lives across the call; flags must be 0.
        let r = unsafe {
            libc::syscall(
                libc::SYS_sched_getattr,
                pid,
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

    #[allow(unsafe_code)]
    fn set(attr: SchedAttr) -> io::Result<()> {
        let attr = SchedAttr {
            size: ATTR_SIZE,
            // Without the util-clamp flags the kernel leaves any clamps as they are.
            sched_flags: attr.sched_flags & RESET_ON_FORK,
            ..attr
        };
        // SAFETY: `attr` is a valid `struct sched_attr` whose `size` field gives its length and
        // which lives across the call; the kernel only reads it. pid 0 is the calling thread;
        // flags must be 0.
        let r = unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &attr as *const SchedAttr, 0) };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// Other systems have no slices to ask for.
#[cfg(not(target_os = "linux"))]
mod sys {
    use super::Slice;
    use std::io;
    use std::time::Duration;

    pub(super) fn request(_: Duration) -> io::Result<Slice> {
        Ok(Slice::Unsupported)
    }

    pub(super) fn of_thread(_: u32) -> io::Result<Slice> {
        Ok(Slice::Unsupported)
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    // Each test runs on its own thread and restores it, so nothing else sees its slices.

    /// The calling thread's attributes, or `None` where the calls are refused (a seccomp
    /// profile, gVisor): nothing can be checked there.
    fn saved() -> Option<sys::SchedAttr> {
        match sys::get(0) {
            Ok(attr) => Some(attr),
            Err(e) => {
                eprintln!("skipped: sched_getattr refused: {e}");
                None
            }
        }
    }

    #[test]
    fn a_requested_slice_is_applied_and_inherited() {
        let Some(before) = saved() else { return };
        let outcome = request(Duration::from_micros(300)).unwrap();
        match (of_thread(0).unwrap(), outcome) {
            (_, Slice::Length(d)) => assert_eq!(d, Duration::from_micros(300)),
            (now, Slice::Unsupported | Slice::OtherPolicy) => assert_eq!(now, outcome),
        }
        // A thread created now inherits the slice.
        let child = std::thread::spawn(|| of_thread(0).unwrap()).join().unwrap();
        assert_eq!(child, outcome);
        sys::restore(before).unwrap();
    }

    #[test]
    fn slices_outside_the_kernel_range_are_clamped() {
        let Some(before) = saved() else { return };
        for (asked, got) in [
            (Duration::from_nanos(1), RANGE.0),
            (Duration::from_secs(1), RANGE.1),
        ] {
            if let Slice::Length(d) = request(asked).unwrap() {
                assert_eq!(d, got);
            }
        }
        sys::restore(before).unwrap();
    }

    /// The kernel's id of the calling thread.
    fn tid() -> u32 {
        let link = std::fs::read_link("/proc/thread-self").unwrap();
        link.file_name().unwrap().to_str().unwrap().parse().unwrap()
    }

    #[test]
    fn another_threads_slice_can_be_read() {
        let Some(before) = saved() else { return };
        // A thread that exists before the request keeps its slice.
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let other = std::thread::spawn(move || {
            tid_tx.send(tid()).unwrap();
            let _ = done_rx.recv();
        });
        let other_tid = tid_rx.recv().unwrap();
        let earlier = of_thread(other_tid).unwrap();
        let mine = request(Duration::from_millis(2)).unwrap();
        assert_eq!(of_thread(tid()).unwrap(), mine);
        assert_eq!(of_thread(other_tid).unwrap(), earlier);
        if let Slice::Length(d) = mine {
            assert_eq!(d, Duration::from_millis(2));
            assert_ne!(earlier, mine);
        }
        done_tx.send(()).unwrap();
        other.join().unwrap();
        sys::restore(before).unwrap();
    }
}
