use libsingleflight::{Error, Group};
use std::panic;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

/// Polls the group's counters until cond holds: the library's follower count
/// is the only observable sign that a thread has joined a flight.  The
/// deadline turns a bug into a failure instead of a hang.
fn wait_until<T: Send + Sync + 'static>(
    group: &Group<T>,
    what: &str,
    cond: impl Fn(&libsingleflight::Stats) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if cond(&group.stats()) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting until {}",
            what
        );
        thread::sleep(Duration::from_micros(50));
    }
}

#[test]
fn a_lone_call_returns_its_value_unshared() {
    let group: Group<String> = Group::new();
    let (value, shared) = group.call("k", || "v".to_string()).unwrap();
    assert_eq!(*value, "v");
    assert!(!shared);
}

#[test]
fn concurrent_callers_share_one_execution_and_one_arc() {
    const N: usize = 8;
    let group: Arc<Group<Vec<u8>>> = Arc::new(Group::new());
    let runs = Arc::new(AtomicUsize::new(0));
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let release_rx = Arc::new(std::sync::Mutex::new(release_rx));

    let handles: Vec<_> = (0..N)
        .map(|_| {
            let (group, runs, release_rx) = (group.clone(), runs.clone(), release_rx.clone());
            thread::spawn(move || {
                group
                    .call(b"key", || {
                        runs.fetch_add(1, Ordering::SeqCst);
                        release_rx.lock().unwrap().recv().unwrap();
                        vec![1, 2, 3]
                    })
                    .unwrap()
            })
        })
        .collect();
    wait_until(&group, "all callers joined", |s| {
        s.leaders == 1 && s.followers == (N - 1) as u64
    });
    release_tx.send(()).unwrap();

    let results: Vec<(Arc<Vec<u8>>, bool)> =
        handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "the closure ran more than once"
    );
    for (value, shared) in &results {
        assert!(
            Arc::ptr_eq(value, &results[0].0),
            "callers got different Arcs"
        );
        assert_eq!(**value, vec![1, 2, 3]);
        assert!(*shared);
    }
    let s = group.stats();
    assert_eq!((s.calls, s.in_flight), (N as u64, 0));
}

#[test]
fn a_panic_reaches_followers_as_an_error_and_resumes_in_the_leader() {
    let group: Arc<Group<u32>> = Arc::new(Group::new());
    let (entered_tx, entered_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();

    let leader = {
        let group = group.clone();
        thread::spawn(move || {
            group.call("k", move || -> u32 {
                entered_tx.send(()).unwrap();
                release_rx.recv().unwrap();
                panic!("boom {}", 7)
            })
        })
    };
    entered_rx.recv().unwrap();
    let followers: Vec<_> = (0..3)
        .map(|_| {
            let group = group.clone();
            thread::spawn(move || group.call("k", || 0))
        })
        .collect();
    wait_until(&group, "three followers joined", |s| s.followers == 3);
    release_tx.send(()).unwrap();

    for f in followers {
        let got = f.join().expect("a follower's thread must not panic");
        assert_eq!(got, Err(Error::Panicked("boom 7".to_string())));
    }
    let payload = leader.join().expect_err("the leader's panic must resume");
    // Whether the payload is a String or a &str depends on how the compiler
    // folded the format string; either way it must be the original one.
    let text = payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()));
    assert_eq!(text.as_deref(), Some("boom 7"));
    assert_eq!(group.stats().panics, 1);

    let (value, _) = group.call("k", || 5).unwrap();
    assert_eq!(*value, 5, "the key must be free after a panic");
}

#[test]
fn a_non_string_panic_payload_still_names_the_panic() {
    let group: Group<u8> = Group::new();
    let payload = panic::catch_unwind(panic::AssertUnwindSafe(|| {
        let _ = group.call("k", || panic::panic_any(42_i32));
    }))
    .expect_err("the leader's panic must resume");
    assert_eq!(
        payload.downcast_ref::<i32>(),
        Some(&42),
        "the original payload must resume"
    );
}

#[test]
fn the_error_names_the_panic() {
    let err = Error::Panicked("disk on fire".to_string());
    assert!(err.to_string().contains("disk on fire"));
}

#[test]
fn calling_the_same_key_from_inside_the_closure_is_a_deadlock_error() {
    let group: Group<i32> = Group::new();
    let (value, _) = group
        .call("k", || match group.call("k", || 1) {
            Err(Error::Deadlock) => 2,
            other => panic!("nested call gave {:?}", other),
        })
        .unwrap();
    assert_eq!(*value, 2);
}

#[test]
fn a_nested_call_on_another_key_works() {
    let group: Group<i32> = Group::new();
    let (value, _) = group
        .call("outer", || *group.call("inner", || 20).unwrap().0 + 1)
        .unwrap();
    assert_eq!(*value, 21);
}

#[test]
fn forget_starts_a_new_flight_while_the_old_one_finishes() {
    let group: Arc<Group<&'static str>> = Arc::new(Group::new());
    let (entered_tx, entered_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let first = {
        let group = group.clone();
        thread::spawn(move || {
            group
                .call("k", move || {
                    entered_tx.send(()).unwrap();
                    release_rx.recv().unwrap();
                    "old"
                })
                .unwrap()
        })
    };
    entered_rx.recv().unwrap();
    assert!(group.forget("k"));
    let (value, shared) = group.call("k", || "new").unwrap();
    assert_eq!((*value, shared), ("new", false));
    release_tx.send(()).unwrap();
    let (old, old_shared) = first.join().unwrap();
    assert_eq!((*old, old_shared), ("old", false));
    assert!(!group.forget("k"), "nothing is in flight any more");
}

#[test]
fn keys_are_bytes_including_empty_and_nul() {
    let group: Arc<Group<String>> = Arc::new(Group::new());
    let (entered_tx, entered_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let blocked = {
        let group = group.clone();
        thread::spawn(move || {
            group.call(b"a\0b", move || {
                entered_tx.send(()).unwrap();
                release_rx.recv().unwrap();
                "a\\0b".to_string()
            })
        })
    };
    entered_rx.recv().unwrap();
    for key in [&b"a\0c"[..], b"a", b""] {
        let (value, shared) = group.call(key, || format!("{:?}", key)).unwrap();
        assert_eq!(
            *value,
            format!("{:?}", key),
            "key {:?} joined another flight",
            key
        );
        assert!(!shared);
    }
    release_tx.send(()).unwrap();
    assert_eq!(*blocked.join().unwrap().unwrap().0, "a\\0b");
}

/// Counts drops, to show the value is dropped once, after its last user.
struct Tracked(Arc<AtomicUsize>);

impl Drop for Tracked {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn the_value_is_dropped_once_after_the_last_arc() {
    let drops = Arc::new(AtomicUsize::new(0));
    let group: Arc<Group<Tracked>> = Arc::new(Group::new());
    let (entered_tx, entered_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let leader = {
        let (group, drops) = (group.clone(), drops.clone());
        thread::spawn(move || {
            group
                .call("k", move || {
                    entered_tx.send(()).unwrap();
                    release_rx.recv().unwrap();
                    Tracked(drops)
                })
                .unwrap()
                .0
        })
    };
    entered_rx.recv().unwrap();
    let follower = {
        let group = group.clone();
        thread::spawn(move || group.call("k", || unreachable!()).unwrap().0)
    };
    wait_until(&group, "the follower joined", |s| s.followers == 1);
    release_tx.send(()).unwrap();
    let a = leader.join().unwrap();
    let b = follower.join().unwrap();
    assert!(Arc::ptr_eq(&a, &b));
    assert_eq!(
        drops.load(Ordering::SeqCst),
        0,
        "dropped while still in use"
    );
    drop(a);
    assert_eq!(
        drops.load(Ordering::SeqCst),
        0,
        "dropped while still in use"
    );
    drop(b);
    assert_eq!(drops.load(Ordering::SeqCst), 1, "not dropped exactly once");
    drop(group);
    assert_eq!(drops.load(Ordering::SeqCst), 1);
}

#[test]
fn many_keys_under_contention_stay_consistent() {
    const THREADS: usize = 8;
    const ROUNDS: usize = 300;
    let group: Arc<Group<String>> = Arc::new(Group::new());
    let runs = Arc::new(AtomicUsize::new(0));
    let start = Arc::new(Barrier::new(THREADS));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let (group, runs, start) = (group.clone(), runs.clone(), start.clone());
            thread::spawn(move || {
                start.wait();
                for i in 0..ROUNDS {
                    let key = format!("key-{}", (i + t) % 5);
                    let (value, _) = group
                        .call(&key, || {
                            runs.fetch_add(1, Ordering::SeqCst);
                            thread::yield_now();
                            format!("{}!", key)
                        })
                        .unwrap();
                    assert_eq!(*value, format!("{}!", key));
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let s = group.stats();
    assert_eq!(s.calls, (THREADS * ROUNDS) as u64);
    assert_eq!(s.leaders, runs.load(Ordering::SeqCst) as u64);
    assert_eq!(s.in_flight, 0);
}

#[test]
fn group_is_send_and_sync_for_shareable_values() {
    fn assert_send_sync<S: Send + Sync>() {}
    assert_send_sync::<Group<String>>();
    assert_send_sync::<Group<Vec<u8>>>();
    assert_send_sync::<Error>();
}
