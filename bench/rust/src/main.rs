//! rustbench: the benchmark workload of bench/sfbench.cpp over the Rust
//! binding, printing the same JSON line.

use libsingleflight::Group;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

/// Counts the calling thread's Rust heap allocations.  The library's own
/// mallocs are not seen here; sfbench counts those (zero in steady state).
struct Counting;

thread_local! {
    static ALLOCS: Cell<u64> = Cell::new(0);
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        System.alloc(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        System.dealloc(p, l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        System.realloc(p, l, n)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn thread_allocs() -> u64 {
    ALLOCS.with(|c| c.get())
}

#[repr(C)]
struct Timespec {
    sec: i64,
    nsec: i64,
}
extern "C" {
    fn clock_gettime(clock: i32, tp: *mut Timespec) -> i32;
}
const CLOCK_PROCESS_CPUTIME_ID: i32 = 2;

/// CPU time of the whole process, all threads: steadier than wall time on a
/// shared machine.
fn cpu_ns() -> u64 {
    let mut ts = Timespec { sec: 0, nsec: 0 };
    unsafe { clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.sec as u64 * 1_000_000_000 + ts.nsec as u64
}

#[derive(Clone, Copy, PartialEq)]
enum Fn {
    Trivial,
    Spin,
    Sleep,
}

fn make_keys(n: usize, prefix: &str, keylen: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let mut k = format!("{}{:04}", prefix, i).into_bytes();
            if keylen > 0 {
                if k.len() > keylen {
                    k = k[k.len() - keylen..].to_vec();
                }
                k.resize(keylen, b'x');
            }
            k
        })
        .collect()
}

fn pct(v: &mut Vec<u32>, p: f64) -> f64 {
    if v.is_empty() {
        return -1.0;
    }
    v.sort_unstable();
    v[(p * (v.len() - 1) as f64) as usize] as f64
}

fn main() {
    let mut threads = 1usize;
    let mut keys_arg = "1".to_string();
    let mut fn_name = "trivial".to_string();
    let mut dur_ms = 200u64;
    let mut warm_ms = 50u64;
    let mut keylen = 0usize;
    let args: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < args.len() {
        let v = args.get(i + 1).cloned().unwrap_or_default();
        match args[i].trim_start_matches('-') {
            "threads" => threads = v.parse().expect("--threads"),
            "keys" => keys_arg = v,
            "fn" => fn_name = v,
            "duration-ms" => dur_ms = v.parse().expect("--duration-ms"),
            "warmup-ms" => warm_ms = v.parse().expect("--warmup-ms"),
            "keylen" => keylen = v.parse().expect("--keylen"),
            other => {
                eprintln!("rustbench: unknown argument {}", other);
                std::process::exit(2);
            }
        }
        i += 2;
    }
    let fnk = match fn_name.as_str() {
        "trivial" => Fn::Trivial,
        "spin" => Fn::Spin,
        "sleep" => Fn::Sleep,
        _ => {
            eprintln!("rustbench: bad --fn");
            std::process::exit(2)
        }
    };
    let unique = keys_arg == "unique";
    let shared_keys = Arc::new(if unique {
        Vec::new()
    } else {
        make_keys(keys_arg.parse().expect("--keys"), "key:", keylen)
    });
    let group: Arc<Group<u64>> = Arc::new(Group::new());
    let base = Instant::now();
    let phase = Arc::new(AtomicU32::new(0)); // 0 warmup, 1 ready, 2 measure, 3 stop
    let ready = Arc::new(Barrier::new(threads + 1));
    let timed = fnk != Fn::Trivial;

    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (group, phase, ready, shared_keys) = (
                group.clone(),
                phase.clone(),
                ready.clone(),
                shared_keys.clone(),
            );
            std::thread::spawn(move || {
                let own;
                let ks: &Vec<Vec<u8>> = if unique {
                    own = make_keys(4096, &format!("u:{}:", t), keylen);
                    &own
                } else {
                    &shared_keys
                };
                let n = ks.len();
                let mut idx = t * n / threads;
                let execs = Cell::new(0u64);
                let mut wake: Vec<u32> = Vec::with_capacity(if timed { 1 << 16 } else { 0 });
                let now = || base.elapsed().as_nanos() as u64;
                let mut one = |record: bool, wake: &mut Vec<u32>| {
                    let k = &ks[idx];
                    idx += 1;
                    if idx == n {
                        idx = 0;
                    }
                    let e0 = execs.get();
                    let (v, _) = group
                        .call(k, || {
                            execs.set(execs.get() + 1);
                            match fnk {
                                Fn::Trivial => 1,
                                Fn::Spin => {
                                    let t0 = now();
                                    let mut t = now();
                                    while t - t0 < 1000 {
                                        t = now();
                                    }
                                    t
                                }
                                Fn::Sleep => {
                                    std::thread::sleep(Duration::from_millis(1));
                                    now()
                                }
                            }
                        })
                        .expect("call failed");
                    if record && timed && execs.get() == e0 && wake.len() < wake.capacity() {
                        let d = now().saturating_sub(*v);
                        wake.push(d.min(u32::MAX as u64) as u32);
                    }
                };
                while phase.load(Ordering::Relaxed) == 0 {
                    one(false, &mut wake);
                }
                ready.wait();
                while phase.load(Ordering::Acquire) < 2 {
                    std::thread::yield_now();
                }
                let (a0, e0) = (thread_allocs(), execs.get());
                let mut ops = 0u64;
                while phase.load(Ordering::Relaxed) == 2 {
                    one(true, &mut wake);
                    ops += 1;
                }
                let allocs = thread_allocs() - a0;
                (ops, execs.get() - e0, allocs, wake)
            })
        })
        .collect();

    std::thread::sleep(Duration::from_millis(warm_ms));
    phase.store(1, Ordering::SeqCst);
    ready.wait();
    let c0 = cpu_ns();
    let t0 = Instant::now();
    phase.store(2, Ordering::Release);
    std::thread::sleep(Duration::from_millis(dur_ms));
    phase.store(3, Ordering::SeqCst);
    let (mut ops, mut execs, mut allocs, mut wake) = (0u64, 0u64, 0u64, Vec::new());
    for h in handles {
        let (o, e, a, w) = h.join().expect("worker panicked");
        ops += o;
        execs += e;
        allocs += a;
        wake.extend(w);
    }
    let wall = t0.elapsed().as_nanos() as f64;
    let cpu = (cpu_ns() - c0) as f64;
    let div = |a: f64, b: f64| if b == 0.0 { 0.0 } else { a / b };
    let p50 = pct(&mut wake, 0.5);
    let p99 = pct(&mut wake, 0.99);
    println!(
        "{{\"kind\":\"cell\",\"contender\":\"rust\",\"threads\":{},\"keys\":\"{}\",\"fn\":\"{}\",\
         \"keylen\":{},\"ops\":{},\"wall_ns\":{},\"ns_per_op\":{:.3},\"cpu_ns_per_op\":{:.3},\
         \"execs_per_call\":{:.6},\"allocs_per_call\":{:.6},\"wake_n\":{},\"wake_p50_ns\":{},\"wake_p99_ns\":{}}}",
        threads,
        keys_arg,
        fn_name,
        keylen,
        ops,
        wall as u64,
        div(wall, ops as f64),
        div(cpu, ops as f64),
        div(execs as f64, ops as f64),
        div(allocs as f64, ops as f64),
        wake.len(),
        p50,
        p99
    );
}
