//! `Group::call_async`: one execution per key across tasks and executors,
//! and the rule for giving up.  Every step that must have happened before
//! the next is a handshake (a gate the test opens, the group's counters, a
//! guard's Drop), never a sleep; the deadline only turns a hang into a
//! failure.

use libsingleflight::{Error, Group, Stats};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::thread;
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(20);

/// Polls the group's counters until cond holds (they are the only sign that
/// a caller on another thread has joined a flight).
fn wait_until<T: Send + Sync + 'static>(
    group: &Group<T>,
    what: &str,
    cond: impl Fn(&Stats) -> bool,
) {
    let deadline = Instant::now() + DEADLINE;
    while !cond(&group.stats()) {
        assert!(
            Instant::now() < deadline,
            "timed out waiting until {}",
            what
        );
        thread::yield_now();
    }
}

/// Runs f on its own thread and fails the test if it has not returned
/// within the deadline (a lost wake-up would otherwise hang the suite).
fn within_deadline<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(panic_safe(f));
    });
    match rx.recv_timeout(DEADLINE) {
        Ok(Ok(r)) => r,
        Ok(Err(p)) => std::panic::resume_unwind(p),
        Err(_) => panic!("the test did not finish within {:?}", DEADLINE),
    }
}

fn panic_safe<R>(f: impl FnOnce() -> R) -> std::thread::Result<R> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
}

/// A gate a work future waits on: pending until the test opens it.
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
    fn wait(&self) -> GateWait {
        GateWait(self.clone())
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

/// Records that the work future was dropped, and on which thread.
struct DropFlag(Arc<Mutex<Option<thread::ThreadId>>>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        *self.0.lock().unwrap() = Some(thread::current().id());
    }
}

/// A waker that counts its wake-ups, for polling futures by hand.
#[derive(Default)]
struct CountingWaker(AtomicUsize);

impl Wake for CountingWaker {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

fn poll_once<F: Future + Unpin>(f: &mut F, w: &Arc<CountingWaker>) -> Poll<F::Output> {
    let waker = Waker::from(w.clone());
    Pin::new(f).poll(&mut Context::from_waker(&waker))
}

fn tokio_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .build()
        .expect("tokio runtime")
}

#[test]
fn a_lone_async_call_returns_its_value_unshared() {
    let group: Group<String> = Group::new();
    let (v, shared) =
        futures_executor::block_on(group.call_async("k", || async { "v".to_string() })).unwrap();
    assert_eq!(*v, "v");
    assert!(!shared);
    assert_eq!(group.stats().in_flight, 0);
}

/// N tasks on a multi-thread tokio runtime: one execution, one Arc, and the
/// followers are woken from the thread that finished the flight.
#[test]
fn tokio_tasks_on_one_key_share_one_execution() {
    within_deadline(|| {
        const N: usize = 64;
        let rt = tokio_runtime();
        let group: Arc<Group<Vec<u8>>> = Arc::new(Group::new());
        let runs = Arc::new(AtomicUsize::new(0));
        let gate = Gate::default();
        let tasks: Vec<_> = (0..N)
            .map(|_| {
                let (group, runs, gate) = (group.clone(), runs.clone(), gate.clone());
                rt.spawn(async move {
                    group
                        .call_async(b"key", move || async move {
                            runs.fetch_add(1, Ordering::SeqCst);
                            gate.wait().await;
                            vec![1, 2, 3]
                        })
                        .await
                })
            })
            .collect();
        wait_until(&group, "every task joined", |s| {
            s.leaders == 1 && s.followers == (N - 1) as u64
        });
        gate.open();
        let results: Vec<_> = tasks
            .into_iter()
            .map(|t| rt.block_on(t).expect("task").expect("call"))
            .collect();
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        for (v, shared) in &results {
            assert!(Arc::ptr_eq(v, &results[0].0), "callers got different Arcs");
            assert!(*shared);
        }
        assert_eq!(group.stats().in_flight, 0);
    });
}

/// The same on a second executor, futures' thread pool: nothing here is
/// tied to tokio.
#[test]
fn futures_thread_pool_tasks_on_one_key_share_one_execution() {
    within_deadline(|| {
        const N: usize = 32;
        let pool = futures_executor::ThreadPool::builder()
            .pool_size(3)
            .create()
            .unwrap();
        let group: Arc<Group<u64>> = Arc::new(Group::new());
        let runs = Arc::new(AtomicUsize::new(0));
        let gate = Gate::default();
        let (tx, rx) = mpsc::channel();
        for _ in 0..N {
            let (group, runs, gate, tx) = (group.clone(), runs.clone(), gate.clone(), tx.clone());
            pool.spawn_ok(async move {
                let r = group
                    .call_async("key", move || async move {
                        runs.fetch_add(1, Ordering::SeqCst);
                        gate.wait().await;
                        7
                    })
                    .await;
                tx.send(r).unwrap();
            });
        }
        wait_until(&group, "every task joined", |s| {
            s.leaders == 1 && s.followers == (N - 1) as u64
        });
        gate.open();
        for _ in 0..N {
            let (v, shared) = rx.recv_timeout(DEADLINE).expect("a task finished").unwrap();
            assert_eq!(*v, 7);
            assert!(shared);
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
    });
}

#[test]
fn a_blocking_caller_joins_an_async_flight() {
    within_deadline(|| {
        let group: Arc<Group<String>> = Arc::new(Group::new());
        let gate = Gate::default();
        let w = Arc::new(CountingWaker::default());
        let g2 = gate.clone();
        let mut leader = group.call_async("k", move || async move {
            g2.wait().await;
            "async".to_string()
        });
        assert!(poll_once(&mut leader, &w).is_pending());
        let blocking = {
            let group = group.clone();
            thread::spawn(move || group.call("k", || "blocking".to_string()))
        };
        wait_until(&group, "the blocking caller joined", |s| s.followers == 1);
        gate.open();
        let (v, shared) = futures_executor::block_on(leader).unwrap();
        let (bv, bshared) = blocking.join().unwrap().unwrap();
        assert!(Arc::ptr_eq(&v, &bv));
        assert_eq!(*v, "async");
        assert!(shared && bshared);
    });
}

#[test]
fn an_async_caller_joins_a_blocking_flight() {
    within_deadline(|| {
        let group: Arc<Group<String>> = Arc::new(Group::new());
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let blocking = {
            let group = group.clone();
            thread::spawn(move || {
                group.call("k", move || {
                    release_rx.recv().unwrap();
                    "blocking".to_string()
                })
            })
        };
        wait_until(&group, "the blocking leader started", |s| s.leaders == 1);
        let w = Arc::new(CountingWaker::default());
        let mut follower = group.call_async("k", || async { "async".to_string() });
        assert!(poll_once(&mut follower, &w).is_pending());
        assert_eq!(group.stats().followers, 1);
        release_tx.send(()).unwrap();
        let (bv, _) = blocking.join().unwrap().unwrap();
        let (v, shared) = futures_executor::block_on(follower).unwrap();
        assert!(Arc::ptr_eq(&v, &bv));
        assert!(shared);
        assert!(
            w.0.load(Ordering::SeqCst) >= 1,
            "the done callback woke the task"
        );
    });
}

type Call<'g> = Pin<Box<dyn Future<Output = Result<(Arc<u32>, bool), Error>> + Send + 'g>>;

/// Starts a flight led by an async caller whose work waits on the returned
/// gate, with `followers` async followers, all polled once.
fn flight_with_followers<'g>(
    group: &'g Group<u32>,
    followers: usize,
    runs: &Arc<AtomicUsize>,
    dropped: &Arc<Mutex<Option<thread::ThreadId>>>,
) -> (Gate, Vec<Call<'g>>) {
    let gate = Gate::default();
    let w = Arc::new(CountingWaker::default());
    let mut calls: Vec<Call<'g>> = Vec::new();
    for _ in 0..=followers {
        let (runs, gate, dropped) = (runs.clone(), gate.clone(), dropped.clone());
        let mut c = Box::pin(group.call_async("k", move || async move {
            let _flag = DropFlag(dropped);
            runs.fetch_add(1, Ordering::SeqCst);
            gate.wait().await;
            42
        }));
        assert!(poll_once(&mut c, &w).is_pending());
        calls.push(c);
    }
    assert_eq!(group.stats().followers, followers as u64);
    (gate, calls)
}

#[test]
fn one_follower_giving_up_does_not_fail_the_others() {
    let group: Group<u32> = Group::new();
    let (runs, dropped) = (Arc::new(AtomicUsize::new(0)), Arc::new(Mutex::new(None)));
    let (gate, mut calls) = flight_with_followers(&group, 2, &runs, &dropped);
    drop(calls.remove(2));
    assert_eq!(group.stats().cancels, 1);
    assert!(dropped.lock().unwrap().is_none(), "the work goes on");
    gate.open();
    for c in calls {
        let (v, shared) = futures_executor::block_on(c).unwrap();
        assert_eq!(*v, 42);
        assert!(shared);
    }
    let s = group.stats();
    assert_eq!((s.leaders, s.abandons, s.in_flight), (1, 0, 0));
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

#[test]
fn the_leader_giving_up_hands_the_same_work_to_a_follower() {
    let group: Group<u32> = Group::new();
    let (runs, dropped) = (Arc::new(AtomicUsize::new(0)), Arc::new(Mutex::new(None)));
    let (gate, mut calls) = flight_with_followers(&group, 2, &runs, &dropped);
    drop(calls.remove(0));
    assert!(
        dropped.lock().unwrap().is_none(),
        "the work was not dropped"
    );
    gate.open();
    for c in calls {
        let (v, shared) = futures_executor::block_on(c).unwrap();
        assert_eq!(*v, 42);
        assert!(shared);
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the work was not restarted");
    assert!(
        dropped.lock().unwrap().is_some(),
        "the finished work was dropped"
    );
    let s = group.stats();
    assert_eq!(
        (
            s.leaders,
            s.cancels,
            s.abandons,
            s.leader_exits,
            s.in_flight
        ),
        (1, 1, 0, 0, 0)
    );
}

#[test]
fn a_follower_that_took_the_work_over_can_hand_it_on_again() {
    let group: Group<u32> = Group::new();
    let (runs, dropped) = (Arc::new(AtomicUsize::new(0)), Arc::new(Mutex::new(None)));
    let (gate, mut calls) = flight_with_followers(&group, 2, &runs, &dropped);
    let w = Arc::new(CountingWaker::default());
    drop(calls.remove(0)); // the leader: the duty is parked, a follower woken
                           // The first follower polled takes the parked work over and polls it.
    assert!(poll_once(&mut calls[0], &w).is_pending());
    assert!(poll_once(&mut calls[1], &w).is_pending());
    drop(calls.remove(0)); // the driver goes: the other one takes over
    assert!(dropped.lock().unwrap().is_none());
    gate.open();
    let (v, _) = futures_executor::block_on(calls.remove(0)).unwrap();
    assert_eq!(*v, 42);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert_eq!(group.stats().abandons, 0);
}

#[test]
fn every_caller_giving_up_drops_the_work_at_once_and_frees_the_key() {
    let group: Group<u32> = Group::new();
    let (runs, dropped) = (Arc::new(AtomicUsize::new(0)), Arc::new(Mutex::new(None)));
    let (_gate, mut calls) = flight_with_followers(&group, 2, &runs, &dropped);
    drop(calls.remove(0)); // the leader first: the work is parked
    drop(calls.remove(0));
    assert!(
        dropped.lock().unwrap().is_none(),
        "one caller is still interested"
    );
    drop(calls.remove(0));
    assert_eq!(
        *dropped.lock().unwrap(),
        Some(thread::current().id()),
        "the work is dropped by the last caller to leave, before its drop returns"
    );
    let s = group.stats();
    assert_eq!(
        (s.abandons, s.cancels, s.in_flight, s.leader_exits),
        (1, 3, 0, 0)
    );
    // A new caller starts a fresh flight.
    let (v, shared) = futures_executor::block_on(group.call_async("k", || async { 5 })).unwrap();
    assert_eq!((*v, shared), (5, false));
    assert_eq!(group.stats().leaders, 2);
}

#[test]
fn a_lone_leader_giving_up_abandons_its_flight() {
    let group: Group<u32> = Group::new();
    let (runs, dropped) = (Arc::new(AtomicUsize::new(0)), Arc::new(Mutex::new(None)));
    let (_gate, calls) = flight_with_followers(&group, 0, &runs, &dropped);
    drop(calls);
    assert!(dropped.lock().unwrap().is_some());
    assert_eq!(group.stats().abandons, 1);
}

#[test]
fn a_future_dropped_before_its_first_poll_changes_nothing() {
    let group: Group<u32> = Group::new();
    let called = AtomicBool::new(false);
    drop(group.call_async("k", || {
        called.store(true, Ordering::SeqCst);
        async { 1 }
    }));
    assert!(!called.load(Ordering::SeqCst));
    assert_eq!(group.stats(), Stats::default());
}

#[test]
fn blocking_followers_left_alone_get_leader_exited() {
    within_deadline(|| {
        let group: Arc<Group<u32>> = Arc::new(Group::new());
        let (runs, dropped) = (Arc::new(AtomicUsize::new(0)), Arc::new(Mutex::new(None)));
        let (_gate, calls) = flight_with_followers(&group, 0, &runs, &dropped);
        let blocking = {
            let group = group.clone();
            thread::spawn(move || group.call("k", || 0))
        };
        wait_until(&group, "the blocking caller joined", |s| s.followers == 1);
        drop(calls);
        assert_eq!(blocking.join().unwrap(), Err(Error::LeaderExited));
        assert!(dropped.lock().unwrap().is_some());
        let s = group.stats();
        assert_eq!((s.abandons, s.leader_exits), (0, 1));
    });
}

#[test]
fn a_panic_in_the_work_reaches_followers_and_resumes_in_the_leader() {
    let group: Group<u32> = Group::new();
    let gate = Gate::default();
    let w = Arc::new(CountingWaker::default());
    let g2 = gate.clone();
    let mut leader = group.call_async("k", move || async move {
        g2.wait().await;
        panic!("work failed")
    });
    assert!(poll_once(&mut leader, &w).is_pending());
    let mut follower = group.call_async("k", || async { 0 });
    assert!(poll_once(&mut follower, &w).is_pending());
    gate.open();
    let caught = panic_safe(|| futures_executor::block_on(leader)).unwrap_err();
    assert_eq!(caught.downcast_ref::<&str>(), Some(&"work failed"));
    assert_eq!(
        futures_executor::block_on(follower),
        Err(Error::Panicked("work failed".into()))
    );
    assert_eq!(group.stats().panics, 1);
}

#[test]
fn awaiting_the_same_key_inside_the_work_is_a_deadlock_error() {
    let group: Arc<Group<u32>> = Arc::new(Group::new());
    let g = group.clone();
    let (v, _) = futures_executor::block_on(group.call_async("k", move || async move {
        match g.call_async("k", || async { 0 }).await {
            Err(Error::Deadlock) => 1,
            other => panic!("expected Deadlock, got {:?}", other),
        }
    }))
    .unwrap();
    assert_eq!(*v, 1);
    let (v, _) = futures_executor::block_on({
        let g = group.clone();
        group.call_async("a", move || async move {
            *g.call_async("b", || async { 2 }).await.unwrap().0 + 1
        })
    })
    .unwrap();
    assert_eq!(*v, 3, "another key nests fine");
}

#[test]
fn forget_lets_the_next_async_caller_start_a_new_flight() {
    let group: Group<u32> = Group::new();
    let (runs, dropped) = (Arc::new(AtomicUsize::new(0)), Arc::new(Mutex::new(None)));
    let (gate, calls) = flight_with_followers(&group, 1, &runs, &dropped);
    assert!(group.forget("k"));
    let (v, shared) = futures_executor::block_on(group.call_async("k", || async { 9 })).unwrap();
    assert_eq!((*v, shared), (9, false));
    gate.open();
    for c in calls {
        assert_eq!(*futures_executor::block_on(c).unwrap().0, 42);
    }
}

#[test]
fn the_future_is_send_when_the_value_is() {
    fn assert_send<S: Send>(_: &S) {}
    let group: Group<String> = Group::new();
    let f = group.call_async("k", || async { String::new() });
    assert_send(&f);
}

/// Many tokio tasks, each giving up or not at random (seeded, printed):
/// those that stay get the value, and the work is dropped iff all left.
#[test]
fn tokio_tasks_giving_up_at_random_never_fail_the_others() {
    within_deadline(|| {
        let seed: u64 = std::env::var("SF_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(12);
        println!("seed {} (SF_TEST_SEED=... to replay)", seed);
        let mut rng = seed;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let rt = tokio_runtime();
        for round in 0..50 {
            let group: Arc<Group<u32>> = Arc::new(Group::new());
            let n = 2 + (next() % 16) as usize;
            let stay: Vec<bool> = (0..n).map(|_| next() % 3 != 0).collect();
            let gate = Gate::default();
            let dropped = Arc::new(Mutex::new(None));
            let mut tasks = Vec::new();
            for &s in &stay {
                let (group, gate, dropped) = (group.clone(), gate.clone(), dropped.clone());
                let (quit_tx, quit_rx) = tokio::sync::oneshot::channel::<()>();
                let task = rt.spawn(async move {
                    let call = group.call_async("k", move || async move {
                        let _flag = DropFlag(dropped);
                        gate.wait().await;
                        round
                    });
                    // Racing the call against the test's signal: when the
                    // signal wins, the call's future is dropped.
                    Either {
                        a: call,
                        b: quit_rx,
                    }
                    .await
                });
                tasks.push((s, quit_tx, task));
            }
            wait_until(&group, "every task joined", |st| {
                st.leaders == 1 && st.followers == (n - 1) as u64
            });
            let mut kept = Vec::new();
            for (s, quit_tx, task) in tasks {
                if s {
                    kept.push((quit_tx, task));
                } else {
                    quit_tx.send(()).unwrap();
                    assert!(
                        rt.block_on(task).unwrap().is_none(),
                        "a task that gave up got a value"
                    );
                }
            }
            gate.open();
            for (_quit_tx, task) in kept.drain(..) {
                let (v, _) = rt
                    .block_on(task)
                    .unwrap()
                    .expect("no value")
                    .expect("call failed");
                assert_eq!(*v, round);
            }
            let all_left = stay.iter().all(|s| !s);
            let s = group.stats();
            assert_eq!(s.abandons, all_left as u64, "seed {} round {}", seed, round);
            assert!(dropped.lock().unwrap().is_some());
            assert_eq!(s.in_flight, 0);
        }
    });
}

/// Resolves to a's output, or None when b resolves first (dropping a).
struct Either<A, B> {
    a: A,
    b: B,
}

impl<A: Future + Unpin, B: Future + Unpin> Future for Either<A, B> {
    type Output = Option<A::Output>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if Pin::new(&mut self.b).poll(cx).is_ready() {
            return Poll::Ready(None);
        }
        Pin::new(&mut self.a).poll(cx).map(Some)
    }
}
