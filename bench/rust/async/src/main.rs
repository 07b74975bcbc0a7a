//! rustasyncbench: the async measurements of the Rust binding (issues 12, 17).
//!
//!   rustasyncbench herd     [--tasks 10000] [--sleep-ms 10] [--reps 9] [--spawn]
//!   rustasyncbench uncontended [--calls 200000] [--reps 9]
//!   rustasyncbench checks
//!   rustasyncbench stampede [--tasks 10000]
//!   rustasyncbench overhead [--callers 100] [--rounds 2000]
//!   rustasyncbench cancel   [--followers 3] [--rounds 20000]
//!
//! Each prints one JSON line.  `overhead` measures libsingleflight's
//! call_async and async_singleflight's UnaryGroup::work in the same process,
//! alternating between them, on the same workload.  `herd`, `uncontended`
//! and `checks` (in peers.rs) set call_async against singleflight-async and
//! async_singleflight in the same process.

mod peers;

use async_singleflight::UnaryGroup;
use libsingleflight::Group;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Instant;

/// The process's thread count, from the kernel.
fn threads() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("a Threads: line")
}

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse().expect(name))
        .unwrap_or(default)
}

fn arg_str(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned()
}

fn pct(v: &mut [u64], p: f64) -> u64 {
    v.sort_unstable();
    v[((v.len() - 1) as f64 * p) as usize]
}

/// 10,000 tasks on a multi-thread runtime call one key; the work waits until
/// the group counts every other task as a follower.  One execution, every
/// task completes, and no thread is added for the waiters.
fn stampede() {
    let tasks = arg("--tasks", 10_000) as usize;
    let rt = tokio::runtime::Builder::new_multi_thread().build().unwrap();
    let group: Arc<Group<u64>> = Arc::new(Group::new());
    let execs = Arc::new(AtomicUsize::new(0));
    let release = Arc::new(tokio::sync::Notify::new());
    let before = threads();
    let t0 = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|_| {
            let (group, execs, release) = (group.clone(), execs.clone(), release.clone());
            rt.spawn(async move {
                group
                    .call_async("hot", move || async move {
                        execs.fetch_add(1, Ordering::SeqCst);
                        release.notified().await;
                        42
                    })
                    .await
            })
        })
        .collect();
    // Handshake: every task has joined the one flight.
    while group.stats().followers < (tasks - 1) as u64 {
        std::thread::yield_now();
    }
    let during = threads();
    let joined_ns = t0.elapsed().as_nanos();
    release.notify_one();
    let mut completed = 0;
    for h in handles {
        let (v, _) = rt.block_on(h).unwrap().unwrap();
        assert_eq!(*v, 42);
        completed += 1;
    }
    let total_ns = t0.elapsed().as_nanos();
    let after = threads();
    let s = group.stats();
    println!(
        "{{\"bench\":\"stampede\",\"tasks\":{},\"executions\":{},\"completed\":{},\
         \"leaders\":{},\"followers\":{},\"threads_before\":{},\"threads_joined\":{},\
         \"threads_after\":{},\"joined_ms\":{:.1},\"total_ms\":{:.1}}}",
        tasks,
        execs.load(Ordering::SeqCst),
        completed,
        s.leaders,
        s.followers,
        before,
        during,
        after,
        joined_ns as f64 / 1e6,
        total_ns as f64 / 1e6
    );
}

struct NoopWake;
impl Wake for NoopWake {
    fn wake(self: Arc<Self>) {}
}

/// Pending on its first poll (waking itself), ready on the second: the work
/// of a flight that every caller joins before it completes.
struct YieldOnce(bool, u64);
impl Future for YieldOnce {
    type Output = u64;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<u64> {
        if self.0 {
            Poll::Ready(self.1)
        } else {
            self.0 = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
}

/// Polls every future until all are ready, in order, with a waker that does
/// nothing: the cost measured is the libraries', not an executor's.
fn run_all<F: Future + Unpin>(mut futs: Vec<F>) -> u64 {
    let waker = Waker::from(Arc::new(NoopWake));
    let mut cx = Context::from_waker(&waker);
    let mut done = vec![false; futs.len()];
    let mut left = futs.len();
    let mut polls = 0;
    while left > 0 {
        for (f, d) in futs.iter_mut().zip(done.iter_mut()) {
            if !*d && Pin::new(f).poll(&mut cx).is_ready() {
                *d = true;
                left -= 1;
            }
            polls += 1;
        }
    }
    polls
}

fn ours(group: &Group<u64>, callers: usize, rounds: usize) -> f64 {
    let t0 = Instant::now();
    for r in 0..rounds {
        let futs: Vec<_> = (0..callers)
            .map(|_| group.call_async("k", move || YieldOnce(false, r as u64)))
            .collect();
        run_all(futs);
    }
    t0.elapsed().as_nanos() as f64 / (callers * rounds) as f64
}

fn theirs(group: &UnaryGroup<String, u64>, callers: usize, rounds: usize) -> f64 {
    let t0 = Instant::now();
    for r in 0..rounds {
        let futs: Vec<_> = (0..callers)
            .map(|_| Box::pin(group.work("k", YieldOnce(false, r as u64))))
            .collect();
        run_all(futs);
    }
    t0.elapsed().as_nanos() as f64 / (callers * rounds) as f64
}

/// Per call, for `callers` concurrent callers of one key per flight (1: the
/// uncontended call), alternating the two libraries round by round.
fn overhead() {
    let callers = arg("--callers", 100) as usize;
    let rounds = arg("--rounds", 2000) as usize;
    let reps = arg("--reps", 7) as usize;
    let group: Group<u64> = Group::new();
    let idiom: UnaryGroup<String, u64> = UnaryGroup::new();
    for c in [1, callers] {
        ours(&group, c, rounds / 10 + 1);
        theirs(&idiom, c, rounds / 10 + 1);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for _ in 0..reps {
            a.push(ours(&group, c, rounds));
            b.push(theirs(&idiom, c, rounds));
        }
        a.sort_by(|x, y| x.partial_cmp(y).unwrap());
        b.sort_by(|x, y| x.partial_cmp(y).unwrap());
        let (ma, mb) = (a[reps / 2], b[reps / 2]);
        println!(
            "{{\"bench\":\"overhead\",\"callers\":{},\"rounds\":{},\"reps\":{},\
             \"libsingleflight_ns_per_call\":{:.1},\"async_singleflight_ns_per_call\":{:.1},\
             \"ratio\":{:.2}}}",
            c,
            rounds,
            reps,
            ma,
            mb,
            ma / mb
        );
    }
    assert_eq!(group.stats().in_flight, 0);
}

/// Records when the work future is dropped.
struct Stamp(Arc<AtomicU64>, Instant);
impl Drop for Stamp {
    fn drop(&mut self) {
        self.0.store(self.1.elapsed().as_nanos() as u64, Ordering::SeqCst);
    }
}

/// The time from the last caller's drop starting to the work future being
/// dropped: a leader and `followers` followers join, then all give up (the
/// leader first, so the work is parked and the last follower abandons it).
fn cancel() {
    let followers = arg("--followers", 3) as usize;
    let rounds = arg("--rounds", 20000) as usize;
    let group: Group<u64> = Group::new();
    let base = Instant::now();
    let dropped_at = Arc::new(AtomicU64::new(0));
    let waker = Waker::from(Arc::new(NoopWake));
    let mut cx = Context::from_waker(&waker);
    let mut lat = Vec::with_capacity(rounds);
    let pending = Arc::new(Mutex::new(()));
    for _ in 0..rounds {
        let mut futs: Vec<_> = (0..=followers)
            .map(|_| {
                let (d, p) = (dropped_at.clone(), pending.clone());
                group.call_async("k", move || async move {
                    let _stamp = Stamp(d, base);
                    let _p = p;
                    std::future::pending::<u64>().await
                })
            })
            .collect();
        for f in futs.iter_mut() {
            assert!(Pin::new(f).poll(&mut cx).is_pending());
        }
        let last = futs.pop().unwrap();
        drop(futs);
        let t0 = base.elapsed().as_nanos() as u64;
        drop(last);
        lat.push(dropped_at.load(Ordering::SeqCst).saturating_sub(t0));
    }
    let s = group.stats();
    assert_eq!(s.abandons, rounds as u64);
    println!(
        "{{\"bench\":\"cancel\",\"followers\":{},\"rounds\":{},\"abandons\":{},\
         \"p50_ns\":{},\"p99_ns\":{},\"max_ns\":{}}}",
        followers,
        rounds,
        s.abandons,
        pct(&mut lat, 0.5),
        pct(&mut lat, 0.99),
        pct(&mut lat, 1.0)
    );
}

fn main() {
    match std::env::args().nth(1).as_deref() {
        Some("stampede") => stampede(),
        Some("overhead") => overhead(),
        Some("cancel") => cancel(),
        Some("herd") => peers::herd(
            arg("--tasks", 10_000) as usize,
            arg("--sleep-ms", 10),
            arg("--reps", 9) as usize,
            std::env::args().any(|a| a == "--spawn"),
        ),
        Some("uncontended") => {
            peers::uncontended(arg("--calls", 200_000) as usize, arg("--reps", 9) as usize)
        }
        Some("checks") => peers::checks(),
        _ => {
            eprintln!("usage: rustasyncbench herd|uncontended|checks|stampede|overhead|cancel [options]");
            std::process::exit(2);
        }
    }
}
