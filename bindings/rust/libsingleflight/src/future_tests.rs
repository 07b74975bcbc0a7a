//! White-box tests of `call_async`'s one C party per flight: they read the
//! C library's own counters (which do not see Rust-side joins) beside the
//! group's `stats()` (which add them).  Handshakes only, no sleeps.

use crate::{Error, Group};
use libsingleflight_sys as sys;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::thread;
use std::time::{Duration, Instant};

/// The C library's counters for the group, without the Rust-side joins.
fn c_stats<T>(g: &Group<T>) -> sys::sf_group_stats {
    let mut s = sys::sf_group_stats {
        version: sys::SF_GROUP_STATS_VERSION,
        ..Default::default()
    };
    // SAFETY: a live group and a versioned out-struct.
    assert_eq!(unsafe { sys::sf_group_stats_get(g.raw.as_ptr(), &mut s) }, sys::SF_OK);
    s
}

#[derive(Default)]
struct CountingWaker(AtomicUsize);

impl Wake for CountingWaker {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

fn poll_with<F: Future + Unpin>(f: &mut F, w: &Arc<CountingWaker>) -> Poll<F::Output> {
    let waker = Waker::from(w.clone());
    Pin::new(f).poll(&mut Context::from_waker(&waker))
}

/// A gate a work future waits on.
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

impl Future for Gate {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut g = self.0.lock().unwrap();
        if g.0 {
            Poll::Ready(())
        } else {
            g.1.push(cx.waker().clone());
            Poll::Pending
        }
    }
}

fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {}", what);
        thread::yield_now();
    }
}

#[test]
fn followers_of_an_async_flight_join_without_a_c_call_and_are_all_woken_once() {
    const N: usize = 50;
    let group: Group<u32> = Group::new();
    let gate = Gate::default();
    let g2 = gate.clone();
    let lead_waker = Arc::new(CountingWaker::default());
    let mut leader = group.call_async("k", move || async move {
        g2.await;
        7
    });
    assert!(poll_with(&mut leader, &lead_waker).is_pending());
    let wakers: Vec<_> = (0..N).map(|_| Arc::new(CountingWaker::default())).collect();
    let mut followers: Vec<_> = wakers
        .iter()
        .map(|w| {
            let mut f = group.call_async("k", || async { 0 });
            assert!(poll_with(&mut f, w).is_pending());
            f
        })
        .collect();
    // The library saw one caller: the leader.  The group counts them all.
    let c = c_stats(&group);
    assert_eq!((c.calls, c.leaders, c.followers), (1, 1, 0));
    let s = group.stats();
    assert_eq!((s.calls, s.leaders, s.followers), (N as u64 + 1, 1, N as u64));

    gate.open();
    let (v, shared) = match poll_with(&mut leader, &lead_waker) {
        Poll::Ready(out) => out.unwrap(),
        Poll::Pending => panic!("the work was ready"),
    };
    assert_eq!((*v, shared), (7, true), "the leader's flight was shared in Rust");
    for (w, f) in wakers.iter().zip(followers.iter_mut()) {
        assert_eq!(w.0.load(Ordering::SeqCst), 1, "every follower woken exactly once");
        match poll_with(f, w) {
            Poll::Ready(Ok((fv, fshared))) => {
                assert!(Arc::ptr_eq(&fv, &v));
                assert!(fshared);
            }
            other => panic!("a follower got {:?}", other.map(|o| o.map(|(v, s)| (*v, s)))),
        }
    }
    assert_eq!(c_stats(&group).in_flight, 0);
}

#[test]
fn async_followers_of_a_blocking_flight_share_one_c_handle() {
    const N: usize = 20;
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
    wait_until("the blocking leader started", || group.stats().leaders == 1);
    let wakers: Vec<_> = (0..N).map(|_| Arc::new(CountingWaker::default())).collect();
    let mut followers: Vec<_> = wakers
        .iter()
        .map(|w| {
            let mut f = group.call_async("k", || async { "async".to_string() });
            assert!(poll_with(&mut f, w).is_pending());
            f
        })
        .collect();
    // One handle in C for the twenty of them.
    assert_eq!(c_stats(&group).followers, 1);
    assert_eq!(group.stats().followers, N as u64);

    release_tx.send(()).unwrap();
    let (bv, _) = blocking.join().unwrap().unwrap();
    // One done callback woke them all, on the blocking leader's thread.
    for (w, f) in wakers.iter().zip(followers.iter_mut()) {
        assert_eq!(w.0.load(Ordering::SeqCst), 1);
        match poll_with(f, w) {
            Poll::Ready(Ok((v, shared))) => {
                assert!(Arc::ptr_eq(&v, &bv));
                assert!(shared);
            }
            _ => panic!("a follower got no value"),
        }
    }
    assert_eq!(c_stats(&group).in_flight, 0);
}

#[test]
fn async_followers_of_a_blocking_flight_give_up_in_c_once_the_last_goes() {
    let group: Arc<Group<u32>> = Arc::new(Group::new());
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let blocking = {
        let group = group.clone();
        thread::spawn(move || {
            group.call("k", move || {
                release_rx.recv().unwrap();
                3
            })
        })
    };
    wait_until("the blocking leader started", || group.stats().leaders == 1);
    let w = Arc::new(CountingWaker::default());
    let mut followers: Vec<_> = (0..3)
        .map(|_| {
            let mut f = group.call_async("k", || async { 0 });
            assert!(poll_with(&mut f, &w).is_pending());
            f
        })
        .collect();
    drop(followers.remove(0));
    drop(followers.remove(0));
    assert_eq!(c_stats(&group).cancels, 0, "another async caller still waits");
    assert_eq!(group.stats().cancels, 2);
    drop(followers.remove(0));
    let c = c_stats(&group);
    assert_eq!((c.cancels, c.abandons), (1, 0), "a blocking flight is never abandoned");
    assert_eq!(group.stats().cancels, 3);
    // The key's Rust flight went with its last caller: a new async caller
    // joins the blocking flight afresh and gets its value.
    let mut late = group.call_async("k", || async { 0 });
    assert!(poll_with(&mut late, &w).is_pending());
    release_tx.send(()).unwrap();
    assert_eq!(*blocking.join().unwrap().unwrap().0, 3);
    assert_eq!(*futures_executor::block_on(late).unwrap().0, 3);
    assert_eq!(c_stats(&group).in_flight, 0);
}

#[test]
fn a_caller_after_a_blocking_flight_completed_starts_a_new_one() {
    let group: Arc<Group<u32>> = Arc::new(Group::new());
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let blocking = {
        let group = group.clone();
        thread::spawn(move || {
            group.call("k", move || {
                release_rx.recv().unwrap();
                1
            })
        })
    };
    wait_until("the blocking leader started", || group.stats().leaders == 1);
    let w = Arc::new(CountingWaker::default());
    let mut early = group.call_async("k", || async { 0 });
    assert!(poll_with(&mut early, &w).is_pending());
    release_tx.send(()).unwrap();
    blocking.join().unwrap().unwrap();
    // The early caller has its outcome but has not read it: its flight is
    // over, and a new caller must not get that old value.
    let (v, shared) = futures_executor::block_on(group.call_async("k", || async { 2 })).unwrap();
    assert_eq!((*v, shared), (2, false));
    assert_eq!(group.stats().leaders, 2);
    assert_eq!(*futures_executor::block_on(early).unwrap().0, 1);
}

#[test]
fn a_panic_reaches_rust_joined_followers_with_the_message_c_followers_read() {
    let group: Arc<Group<u32>> = Arc::new(Group::new());
    let gate = Gate::default();
    let g2 = gate.clone();
    let w = Arc::new(CountingWaker::default());
    let mut leader = group.call_async("k", move || async move {
        g2.await;
        panic!("bad\0news")
    });
    assert!(poll_with(&mut leader, &w).is_pending());
    let mut follower = group.call_async("k", || async { 0 });
    assert!(poll_with(&mut follower, &w).is_pending());
    let blocking = {
        let group = group.clone();
        thread::spawn(move || group.call("k", || 0))
    };
    wait_until("the blocking follower joined", || c_stats(&group).followers == 1);
    gate.open();
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        futures_executor::block_on(&mut leader)
    }));
    assert!(caught.is_err(), "the panic resumes in the leader");
    let from_c = blocking.join().unwrap();
    let from_rust = futures_executor::block_on(follower);
    assert_eq!(from_c, Err(Error::Panicked("bad\\0news".into())));
    assert_eq!(from_rust, Err(Error::Panicked("bad\\0news".into())));
}
