//! libsingleflight's `call_async` against its peers, in the same process:
//! the herd, the uncontended call, and what each does when callers give up.
//!
//! The peers are pinned in Cargo.toml: singleflight-async 0.2.0
//! (`SingleFlight::work`, a tokio `Mutex` per flight) and async_singleflight
//! 0.6.2 (`UnaryGroup::work`, a tokio `watch` channel per flight).

use async_singleflight::UnaryGroup;
use libsingleflight::Group;
use singleflight_async::SingleFlight;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

pub const CONTENDERS: [&str; 3] = ["libsingleflight", "singleflight-async", "async_singleflight"];

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Spawns `tasks` tasks from inside the runtime (as a server's accept loop
/// would, onto the worker's own queue), each running one call, and waits
/// for them all; returns the sum of their values and the time from the
/// first spawn (`spawn`) or from the release (the default: every task is
/// spawned and waiting on a watch channel first, so the time is the
/// library's, not tokio's spawning) to the last task's end.
async fn herd_tasks<Fut>(tasks: usize, spawn: bool, mut call: impl FnMut() -> Fut) -> (u64, Duration)
where
    Fut: Future<Output = u64> + Send + 'static,
{
    let (tx, rx) = tokio::sync::watch::channel(spawn);
    let ready = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|_| {
            let (fut, mut rx, ready) = (call(), rx.clone(), ready.clone());
            tokio::spawn(async move {
                ready.fetch_add(1, Ordering::Relaxed);
                rx.wait_for(|go| *go).await.expect("the release");
                fut.await
            })
        })
        .collect();
    let t0 = if spawn {
        t0
    } else {
        while ready.load(Ordering::Relaxed) < tasks {
            tokio::task::yield_now().await;
        }
        let t = Instant::now();
        tx.send(true).expect("the tasks wait");
        t
    };
    let mut sum = 0;
    for h in handles {
        sum += h.await.expect("a herd task panicked");
    }
    (sum, t0.elapsed())
}

/// One herd of `tasks` tasks on one key whose work sleeps `sleep`, with a
/// fresh group: returns (wall time in ms, executions).
fn herd_once(
    rt: &tokio::runtime::Runtime,
    who: &str,
    tasks: usize,
    sleep: Duration,
    spawn: bool,
) -> (f64, usize) {
    let execs = Arc::new(AtomicUsize::new(0));
    let e = execs.clone();
    let (sum, took) = match who {
        "libsingleflight" => {
            let g: Arc<Group<u64>> = Arc::new(Group::new());
            rt.block_on(rt.spawn(herd_tasks(tasks, spawn, move || {
                let (g, e) = (g.clone(), e.clone());
                async move {
                    let (v, _) = g
                        .call_async("hot", move || async move {
                            e.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(sleep).await;
                            42
                        })
                        .await
                        .expect("call_async");
                    *v
                }
            })))
        }
        "singleflight-async" => {
            let g: Arc<SingleFlight<&'static str, u64>> = Arc::new(SingleFlight::new());
            rt.block_on(rt.spawn(herd_tasks(tasks, spawn, move || {
                let (g, e) = (g.clone(), e.clone());
                async move {
                    g.work("hot", move || async move {
                        e.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(sleep).await;
                        42
                    })
                    .await
                }
            })))
        }
        "async_singleflight" => {
            let g: Arc<UnaryGroup<String, u64>> = Arc::new(UnaryGroup::new());
            rt.block_on(rt.spawn(herd_tasks(tasks, spawn, move || {
                let (g, e) = (g.clone(), e.clone());
                async move {
                    g.work("hot", async move {
                        e.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(sleep).await;
                        42
                    })
                    .await
                }
            })))
        }
        _ => unreachable!(),
    }
    .expect("the herd's spawner panicked");
    let ms = took.as_secs_f64() * 1e3;
    assert_eq!(sum, 42 * tasks as u64, "{}: a task got another value", who);
    (ms, execs.load(Ordering::Relaxed))
}

/// `herd [--tasks 10000] [--sleep-ms 10] [--reps 9] [--spawn]`: the
/// contenders take turns (the first one rotating), on one runtime with the
/// default worker count.  One line per run, then one with the medians of
/// the time over the sleep.
pub fn herd(tasks: usize, sleep_ms: u64, reps: usize, spawn: bool) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_time()
        .build()
        .unwrap();
    let sleep = Duration::from_millis(sleep_ms);
    for who in CONTENDERS {
        herd_once(&rt, who, tasks, sleep, spawn); // warm-up: threads, allocator, timer
    }
    let mut over: Vec<Vec<f64>> = vec![Vec::new(); CONTENDERS.len()];
    let mut execs: Vec<Vec<usize>> = vec![Vec::new(); CONTENDERS.len()];
    for rep in 0..reps {
        for k in 0..CONTENDERS.len() {
            let i = (rep + k) % CONTENDERS.len();
            let (ms, ex) = herd_once(&rt, CONTENDERS[i], tasks, sleep, spawn);
            println!(
                "{{\"bench\":\"herd\",\"mode\":\"{}\",\"rep\":{},\"contender\":\"{}\",\"tasks\":{},\"sleep_ms\":{},\
                 \"total_ms\":{:.2},\"over_ms\":{:.2},\"executions\":{}}}",
                if spawn { "spawn" } else { "release" },
                rep,
                CONTENDERS[i],
                tasks,
                sleep_ms,
                ms,
                ms - sleep_ms as f64,
                ex
            );
            over[i].push(ms - sleep_ms as f64);
            execs[i].push(ex);
        }
    }
    let mut line = format!(
        "{{\"bench\":\"herd-summary\",\"mode\":\"{}\",\"tasks\":{},\"reps\":{}",
        if spawn { "spawn" } else { "release" },
        tasks,
        reps
    );
    for (i, who) in CONTENDERS.iter().enumerate() {
        let (lo, hi) = (
            over[i].iter().cloned().fold(f64::INFINITY, f64::min),
            over[i].iter().cloned().fold(0.0, f64::max),
        );
        line += &format!(
            ",\"{}\":{{\"over_ms_median\":{:.2},\"over_ms_min\":{:.2},\"over_ms_max\":{:.2},\"executions\":{:?}}}",
            who,
            median(&mut over[i]),
            lo,
            hi,
            execs[i]
        );
    }
    println!("{}}}", line);
}

/// The calling thread's CPU time in ns (the kernel's schedstat).
fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .expect("/proc/thread-self/schedstat")
}

/// `uncontended [--calls 200000] [--reps 9]`: one task at a time on a
/// tokio runtime (block_on), each call awaited before the next, its work
/// ready at once; CPU ns per call, contenders interleaved.
pub fn uncontended(calls: usize, reps: usize) {
    let rt = tokio::runtime::Builder::new_multi_thread().build().unwrap();
    let ours: Group<u64> = Group::new();
    let sfa: SingleFlight<&'static str, u64> = SingleFlight::new();
    let asf: UnaryGroup<String, u64> = UnaryGroup::new();
    // The time is this thread's CPU time (block_on runs every call here):
    // on a shared machine the wall clock also counts the time other jobs
    // held the core.
    let run = |who: &str, n: usize| -> f64 {
        let t0 = thread_cpu_ns();
        let sum: u64 = rt.block_on(async {
            let mut sum = 0u64;
            for i in 0..n as u64 {
                sum += match who {
                    "libsingleflight" => *ours.call_async("k", move || async move { i }).await.unwrap().0,
                    "singleflight-async" => sfa.work("k", move || async move { i }).await,
                    _ => asf.work("k", async move { i }).await,
                };
            }
            sum
        });
        let ns = (thread_cpu_ns() - t0) as f64 / n as f64;
        assert_eq!(sum, (n as u64) * (n as u64 - 1) / 2);
        ns
    };
    // --only NAME: one contender alone, for a profiler.
    let only = crate::arg_str("--only");
    let skip = |who: &str| only.as_deref().map_or(false, |o| o != who);
    for who in CONTENDERS {
        if !skip(who) {
            run(who, calls / 10);
        }
    }
    let mut ns: Vec<Vec<f64>> = vec![Vec::new(); CONTENDERS.len()];
    for rep in 0..reps {
        for k in 0..CONTENDERS.len() {
            let i = (rep + k) % CONTENDERS.len();
            if skip(CONTENDERS[i]) {
                continue;
            }
            ns[i].push(run(CONTENDERS[i], calls));
        }
    }
    let mut line = format!("{{\"bench\":\"uncontended\",\"calls\":{},\"reps\":{}", calls, reps);
    for (i, who) in CONTENDERS.iter().enumerate() {
        if ns[i].is_empty() {
            continue;
        }
        let all: Vec<String> = ns[i].iter().map(|v| format!("{:.1}", v)).collect();
        line += &format!(
            ",\"{}\":{{\"ns_median\":{:.1},\"ns\":[{}]}}",
            who,
            median(&mut ns[i]),
            all.join(",")
        );
    }
    println!("{}}}", line);
    assert_eq!(ours.stats().in_flight, 0);
}

// ---- what each contender does when callers give up ------------------------

/// A gate the work waits on, opened by the check.
#[derive(Clone, Default)]
struct Gate(Arc<Mutex<(bool, Vec<Waker>)>>);

impl Gate {
    fn open(&self) {
        let wakers = {
            let mut g = self.0.lock().unwrap();
            g.0 = true;
            std::mem::take(&mut g.1)
        };
        wakers.into_iter().for_each(Waker::wake);
    }
}

struct GateWait(Gate);

impl Future for GateWait {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut g = (self.0).0.lock().unwrap();
        if g.0 {
            Poll::Ready(())
        } else {
            g.1.push(cx.waker().clone());
            Poll::Pending
        }
    }
}

/// What happened to the works of one check: started, completed, and
/// dropped (a work dropped before completing was told to stop).
#[derive(Default)]
struct Probe {
    started: AtomicUsize,
    completed: AtomicUsize,
    dropped: AtomicUsize,
}

struct DropCount(Arc<Probe>);

impl Drop for DropCount {
    fn drop(&mut self) {
        self.0.dropped.fetch_add(1, Ordering::SeqCst);
    }
}

/// The work of caller `v`: counts its start, waits for the gate, returns v.
fn work(probe: Arc<Probe>, gate: Gate, v: u64) -> impl Future<Output = u64> + Send + 'static {
    async move {
        probe.started.fetch_add(1, Ordering::SeqCst);
        let _drop = DropCount(probe.clone());
        GateWait(gate).await;
        probe.completed.fetch_add(1, Ordering::SeqCst);
        v
    }
}

struct NoopWake;
impl Wake for NoopWake {
    fn wake(self: Arc<Self>) {}
}

type Call<'a> = Pin<Box<dyn Future<Output = Option<u64>> + 'a>>;

/// One caller of key "k" with its own work (value v), through a contender;
/// None when the call failed instead of producing a value.
fn caller<'a>(c: &'a Contender, probe: &Arc<Probe>, gate: &Gate, v: u64) -> Call<'a> {
    let w = work(probe.clone(), gate.clone(), v);
    match c {
        Contender::Ours(g) => Box::pin(async move { g.call_async("k", move || w).await.ok().map(|(v, _)| *v) }),
        Contender::Sfa(g) => Box::pin(async move { Some(g.work("k", move || w).await) }),
        Contender::Asf(g) => Box::pin(async move { Some(g.work("k", w).await) }),
    }
}

enum Contender {
    Ours(Group<u64>),
    Sfa(SingleFlight<&'static str, u64>),
    Asf(UnaryGroup<String, u64>),
}

impl Contender {
    fn new(who: &str) -> Self {
        match who {
            "libsingleflight" => Contender::Ours(Group::new()),
            "singleflight-async" => Contender::Sfa(SingleFlight::new()),
            _ => Contender::Asf(UnaryGroup::new()),
        }
    }
}

fn poll(c: &mut Call<'_>) -> Poll<Option<u64>> {
    let waker = Waker::from(Arc::new(NoopWake));
    c.as_mut().poll(&mut Context::from_waker(&waker))
}

/// Polls every call round after round until all are ready (or 100 rounds
/// pass: a hang), returning their outputs; None for one still pending.
fn finish(mut calls: Vec<Call<'_>>) -> Vec<Option<Option<u64>>> {
    let mut out: Vec<Option<Option<u64>>> = vec![None; calls.len()];
    for _ in 0..100 {
        for (c, o) in calls.iter_mut().zip(out.iter_mut()) {
            if o.is_none() {
                if let Poll::Ready(v) = poll(c) {
                    *o = Some(v);
                }
            }
        }
        if out.iter().all(Option::is_some) {
            break;
        }
    }
    out
}

fn results_json(r: &[Option<Option<u64>>]) -> String {
    let items: Vec<String> = r
        .iter()
        .map(|o| match o {
            None => "\"hung\"".to_string(),
            Some(None) => "\"error\"".to_string(),
            Some(Some(v)) => v.to_string(),
        })
        .collect();
    format!("[{}]", items.join(","))
}

/// Three callers of one key, values 1 (the starter), 2 and 3, each polled
/// once: the starter's work is running, the others wait.
fn three_callers<'a>(c: &'a Contender, probe: &Arc<Probe>, gate: &Gate) -> Vec<Call<'a>> {
    (1..=3u64)
        .map(|v| {
            let mut call = caller(c, probe, gate, v);
            assert!(poll(&mut call).is_pending(), "a caller finished before the gate opened");
            call
        })
        .collect()
}

/// `checks`: one JSON line per contender and case, with a verdict.
pub fn checks() {
    for who in CONTENDERS {
        // 1. The starter's future is dropped while the others wait.
        {
            let c = Contender::new(who);
            let (probe, gate) = (Arc::new(Probe::default()), Gate::default());
            let mut calls = three_callers(&c, &probe, &gate);
            drop(calls.remove(0));
            let dropped_early = probe.dropped.load(Ordering::SeqCst);
            // Let the others see it before the work could finish.
            for call in calls.iter_mut() {
                let _ = poll(call);
            }
            gate.open();
            let r = finish(calls);
            let started = probe.started.load(Ordering::SeqCst);
            let verdict = if r.iter().any(|o| !matches!(o, Some(Some(_)))) {
                "failed (a waiting caller got no value)"
            } else if started > 1 {
                "restarted (a waiting caller ran its own work from the start)"
            } else if dropped_early == 0 && r.iter().all(|o| *o == Some(Some(1))) {
                "continued (the same work went on; every caller got its value)"
            } else {
                "other"
            };
            println!(
                "{{\"bench\":\"checks\",\"contender\":\"{}\",\"case\":\"starter dropped while others wait\",\
                 \"works_started\":{},\"starter_work_dropped_at_once\":{},\"results\":{},\"verdict\":\"{}\"}}",
                who,
                started,
                dropped_early > 0,
                results_json(&r),
                verdict
            );
        }
        // 2. Every caller gives up (the starter first).
        {
            let c = Contender::new(who);
            let (probe, gate) = (Arc::new(Probe::default()), Gate::default());
            let calls = three_callers(&c, &probe, &gate);
            drop(calls);
            let stopped = probe.dropped.load(Ordering::SeqCst) - probe.completed.load(Ordering::SeqCst);
            let started = probe.started.load(Ordering::SeqCst);
            // The key is free: a new caller gets its own work's value.
            let mut fresh = vec![caller(&c, &probe, &gate, 9)];
            gate.open();
            let r = finish(std::mem::take(&mut fresh));
            let verdict = if stopped == started && r[0] == Some(Some(9)) {
                "work dropped at once; the key is free"
            } else if stopped < started {
                "the work lives on with nobody waiting"
            } else {
                "other"
            };
            println!(
                "{{\"bench\":\"checks\",\"contender\":\"{}\",\"case\":\"every caller gone\",\
                 \"works_started\":{},\"works_dropped_unfinished\":{},\"next_caller\":{},\"verdict\":\"{}\"}}",
                who,
                started,
                stopped,
                results_json(&r),
                verdict
            );
        }
        // 3. One waiting caller gives up alone.
        {
            let c = Contender::new(who);
            let (probe, gate) = (Arc::new(Probe::default()), Gate::default());
            let mut calls = three_callers(&c, &probe, &gate);
            drop(calls.remove(2));
            gate.open();
            let r = finish(calls);
            let started = probe.started.load(Ordering::SeqCst);
            let verdict = if started == 1 && r.iter().all(|o| *o == Some(Some(1))) {
                "the others unaffected"
            } else {
                "other"
            };
            println!(
                "{{\"bench\":\"checks\",\"contender\":\"{}\",\"case\":\"one caller dropped alone\",\
                 \"works_started\":{},\"results\":{},\"verdict\":\"{}\"}}",
                who,
                started,
                results_json(&r),
                verdict
            );
        }
    }
}
