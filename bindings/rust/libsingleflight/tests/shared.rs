//! SharedGroup across processes.  The processes are this test binary run
//! again with std::process::Command, each running one test in a child role
//! (an environment variable) that opens the group by name, as unrelated
//! workers would, and prints what it saw on lines starting with "REPORT ".
//! Every wait is on an observable condition (the segment's follower count),
//! never on elapsed time; the deadline only turns a hang into a failure.

use libsingleflight::{Error, SharedGroup, SharedOptions};
use libsingleflight_sys as sys;
use std::env;
use std::os::unix::process::ExitStatusExt;
use std::panic::{self, AssertUnwindSafe};
use std::process::{self, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

const ROLE: &str = "SF_RUST_SHARED_CHILD";
const NAME: &str = "SF_RUST_SHARED_NAME";
const CHILDREN: usize = 4;

/// A name no other run on the host uses at the same time.
fn unique_name(what: &str) -> String {
    format!("sfrust-{}-{}", process::id(), what)
}

/// Bytes a mix-up would change: NULs, high bytes, and longer than the
/// library's 64 inline bytes, so the value lives in the arena.
fn payload(n: usize) -> Vec<u8> {
    (0..n).map(|i| ((i * 131 + 7) % 256) as u8).collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{:02x}", x)).collect()
}

/// The group's name when this process is a child running `test`.
fn child_of(test: &str) -> Option<String> {
    match (env::var(ROLE), env::var(NAME)) {
        (Ok(role), Ok(name)) if role == test => Some(name),
        _ => None,
    }
}

fn report(line: &str) {
    println!("REPORT {}", line);
}

/// Runs `test` of this binary in n child processes at once, returning each
/// one's output once all have exited.
fn run_children(test: &str, name: &str, n: usize) -> Vec<Output> {
    let exe = env::current_exe().expect("the test binary's path");
    let children: Vec<_> = (0..n)
        .map(|_| {
            Command::new(&exe)
                .args([test, "--exact", "--nocapture", "--test-threads=1"])
                .env(ROLE, test)
                .env(NAME, name)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawning a child")
        })
        .collect();
    children
        .into_iter()
        .map(|c| c.wait_with_output().expect("waiting for a child"))
        .collect()
}

/// What a child reported.
fn reports(o: &Output) -> Vec<String> {
    String::from_utf8_lossy(&o.stdout)
        .lines()
        // The harness may have started the line ("test name ... ").
        .filter_map(|l| l.find("REPORT ").map(|i| l[i + 7..].to_string()))
        .collect()
}

fn describe(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Inside a leader's closure: returns once n callers have joined, counted
/// over every process.
fn await_followers(g: &SharedGroup, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while g.stats().followers < n {
        assert!(Instant::now() < deadline, "followers never joined");
        thread::yield_now();
    }
}

fn segment_exists(name: &str) -> bool {
    std::path::Path::new(&format!("/dev/shm/libsingleflight.{}", name)).exists()
}

#[test]
fn processes_on_one_cold_key_share_one_execution_and_the_same_bytes() {
    const TEST: &str = "processes_on_one_cold_key_share_one_execution_and_the_same_bytes";
    if let Some(name) = child_of(TEST) {
        let g = SharedGroup::open(&name, &SharedOptions::default()).unwrap();
        let (v, shared) = g
            .call("cold", || {
                report("ran");
                await_followers(&g, CHILDREN as u64 - 1);
                payload(5000)
            })
            .unwrap();
        report(&format!("value {} {}", shared, hex(&v)));
        return;
    }
    let name = unique_name("cold");
    {
        let parent = SharedGroup::open(&name, &SharedOptions::default()).unwrap();
        let outs = run_children(TEST, &name, CHILDREN);
        let want = format!("value true {}", hex(&payload(5000)));
        let mut ran = 0;
        for o in &outs {
            assert!(o.status.success(), "{}", describe(o));
            let r = reports(o);
            ran += r.iter().filter(|l| *l == "ran").count();
            assert!(r.contains(&want), "{}", describe(o));
        }
        assert_eq!(ran, 1, "one execution across the processes");
        let s = parent.stats();
        assert_eq!(
            (s.leaders, s.followers, s.in_flight),
            (1, CHILDREN as u64 - 1, 0)
        );
        assert!(segment_exists(&name));
    }
    assert!(
        !segment_exists(&name),
        "the last process to close removes the segment"
    );
}

#[test]
fn a_panicking_leader_resumes_and_followers_elsewhere_get_its_message() {
    const TEST: &str = "a_panicking_leader_resumes_and_followers_elsewhere_get_its_message";
    if let Some(name) = child_of(TEST) {
        let g = SharedGroup::open(&name, &SharedOptions::default()).unwrap();
        let got = panic::catch_unwind(AssertUnwindSafe(|| {
            g.call("k", || -> Vec<u8> {
                await_followers(&g, CHILDREN as u64 - 1);
                panic!("db down")
            })
        }));
        match got {
            Err(p) => report(&format!("leader {}", p.downcast_ref::<&str>().unwrap())),
            Ok(Err(Error::Panicked(msg))) => report(&format!("follower {}", msg)),
            Ok(other) => report(&format!("unexpected {:?}", other)),
        }
        return;
    }
    let name = unique_name("panic");
    let parent = SharedGroup::open(&name, &SharedOptions::default()).unwrap();
    let outs = run_children(TEST, &name, CHILDREN);
    let (mut leaders, mut followers) = (0, 0);
    for o in &outs {
        assert!(o.status.success(), "{}", describe(o));
        for r in reports(o) {
            match r.as_str() {
                "leader db down" => leaders += 1,
                "follower db down" => followers += 1,
                _ => panic!("unexpected report {:?}\n{}", r, describe(o)),
            }
        }
    }
    assert_eq!((leaders, followers), (1, CHILDREN - 1));
    assert_eq!(parent.stats().panics, 1);
}

#[test]
fn a_killed_leader_releases_the_followers_and_the_key_leads_afresh() {
    const TEST: &str = "a_killed_leader_releases_the_followers_and_the_key_leads_afresh";
    if let Some(name) = child_of(TEST) {
        let g = SharedGroup::open(&name, &SharedOptions::default()).unwrap();
        let got = g.call("k", || -> Vec<u8> {
            await_followers(&g, CHILDREN as u64 - 1);
            // SIGKILL, which nothing in the process can intercept.
            let _ = Command::new("sh")
                .arg("-c")
                .arg(format!("kill -KILL {}", process::id()))
                .status();
            loop {
                thread::park();
            }
        });
        report(&format!("{:?}", got));
        return;
    }
    let name = unique_name("kill");
    let parent = SharedGroup::open(&name, &SharedOptions::default()).unwrap();
    let outs = run_children(TEST, &name, CHILDREN);
    let (mut killed, mut released) = (0, 0);
    for o in &outs {
        if o.status.signal() == Some(9) {
            killed += 1;
        } else {
            assert!(o.status.success(), "{}", describe(o));
            assert_eq!(
                reports(o),
                vec!["Err(LeaderExited)".to_string()],
                "{}",
                describe(o)
            );
            released += 1;
        }
    }
    assert_eq!((killed, released), (1, CHILDREN - 1));
    let mut runs = 0;
    let (v, shared) = parent
        .call("k", || {
            runs += 1;
            b"fresh".to_vec()
        })
        .unwrap();
    assert_eq!((runs, v.as_slice(), shared), (1, &b"fresh"[..], false));
}

#[test]
fn threads_of_one_process_share_one_execution() {
    const N: usize = 4;
    let g =
        Arc::new(SharedGroup::open(&unique_name("threads"), &SharedOptions::default()).unwrap());
    let runs = Arc::new(AtomicUsize::new(0));
    let handles: Vec<_> = (0..N)
        .map(|_| {
            let (g, runs) = (g.clone(), runs.clone());
            thread::spawn(move || {
                g.call("k", || {
                    runs.fetch_add(1, Ordering::SeqCst);
                    await_followers(&g, N as u64 - 1);
                    "same".to_string()
                })
                .unwrap()
            })
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), (b"same".to_vec(), true));
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert_eq!(g.processes(), 1);
}

#[test]
fn a_value_above_the_limit_is_an_error_and_empty_values_are_values() {
    let opts = SharedOptions {
        arena_bytes: 1 << 20,
        max_value_bytes: 1024,
        ..Default::default()
    };
    let g = SharedGroup::open(&unique_name("limit"), &opts).unwrap();
    assert_eq!(
        g.call("big", || vec![7u8; 2048]),
        Err(Error::Status(sys::SF_EINVAL))
    );
    assert_eq!(g.call("small", || vec![7u8; 1024]).unwrap().0.len(), 1024);
    assert_eq!(g.call("empty", Vec::<u8>::new).unwrap(), (vec![], false));
}

#[test]
fn calling_the_own_key_from_the_closure_is_a_deadlock_error() {
    let g = SharedGroup::open(&unique_name("self"), &SharedOptions::default()).unwrap();
    let mut inner = None;
    let (v, _) = g
        .call("k", || {
            inner = Some(g.call("k", || b"inner".to_vec()));
            b"outer".to_vec()
        })
        .unwrap();
    assert_eq!(v, b"outer");
    assert_eq!(inner, Some(Err(Error::Deadlock)));
}

#[test]
fn bad_names_and_options_are_errors() {
    for bad in ["a/b", ".hidden", "nul\0byte"] {
        assert_eq!(
            SharedGroup::open(bad, &SharedOptions::default()).unwrap_err(),
            Error::Status(sys::SF_EINVAL),
            "{:?}",
            bad
        );
    }
    let opts = SharedOptions {
        arena_bytes: 1 << 20,
        max_value_bytes: 1 << 20,
        ..Default::default()
    };
    assert_eq!(
        SharedGroup::open(&unique_name("opts"), &opts).unwrap_err(),
        Error::Status(sys::SF_EINVAL)
    );
}

#[test]
fn shared_group_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<SharedGroup>();
}

#[test]
fn a_file_path_group_is_shared_by_two_attachments() {
    let path = std::env::temp_dir().join(format!("sfrust-{}-path.shm", process::id()));
    let opts = SharedOptions {
        path: Some(path.clone()),
        ..Default::default()
    };
    let a = Arc::new(SharedGroup::open("", &opts).unwrap());
    let b = Arc::new(SharedGroup::open("", &opts).unwrap());
    assert_eq!(a.processes(), 2, "each attachment counts as a process");
    let leader = {
        let a = a.clone();
        thread::spawn(move || {
            a.call("k", || {
                await_followers(&a, 1);
                b"from a".to_vec()
            })
        })
    };
    // Joins a's flight through the other attachment, or leads if a has not
    // begun yet: then a's call is the follower, and the assertions hold
    // the other way round.
    let mine = b.call("k", || {
        await_followers(&b, 1);
        b"from b".to_vec()
    });
    let theirs = leader.join().unwrap();
    let (mine, theirs) = (mine.unwrap(), theirs.unwrap());
    assert_eq!(mine.0, theirs.0, "one execution, the same bytes");
    assert!(mine.1 && theirs.1);
    drop((a, b));
    let _ = std::fs::remove_file(&path);
}
