//! What every fuzz target shares (included by path from each crate's `tests/fuzz.rs`): a
//! counting allocator that records the peak bytes a thread holds, the committed seed corpus,
//! mutations of it as a proptest strategy, and the run: each case must return (Ok or Err)
//! without a panic and without holding more than the stated bound at any moment.
#![allow(dead_code, unsafe_code, clippy::unwrap_used, clippy::expect_used)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

/// Counts the bytes each thread allocates (net of what it frees) and their peak.
pub struct Counting;

thread_local! {
    static CURRENT: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn track(delta: isize) {
    // try_with: the thread-locals may be gone while a thread is torn down.
    let _ = CURRENT.try_with(|c| {
        let now = c.get() + delta;
        c.set(now);
        let _ = PEAK.try_with(|p| p.set(p.get().max(now)));
    });
}

// SAFETY: every call is forwarded to the system allocator unchanged; the counters are
// thread-local cells with constant initialisers, which never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        track(layout.size() as isize);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        track(-(layout.size() as isize));
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        track(layout.size() as isize);
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        track(new_size as isize - layout.size() as isize);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Runs `f` and returns the most bytes it held at once, on this thread, above what was held
/// before.
pub fn peak_of<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = CURRENT.with(Cell::get);
    PEAK.with(|p| p.set(base));
    let out = f();
    let peak = PEAK.with(Cell::get) - base;
    (out, peak.max(0) as usize)
}

/// The committed seeds of a target: `tests/fuzz/corpus/{target}/*`.
pub fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fuzz/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let seeds: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).unwrap()).collect();
    assert!(!seeds.is_empty(), "no seeds in {}", dir.display());
    seeds
}

/// One edit of a seed.
#[derive(Debug, Clone)]
pub enum Mutation {
    Flip {
        at: usize,
        byte: u8,
    },
    Insert {
        at: usize,
        bytes: Vec<u8>,
    },
    Delete {
        at: usize,
        len: usize,
    },
    Truncate {
        at: usize,
    },
    /// Replaces a run of ASCII digits with a huge or negative number (sizes, counts, offsets).
    Number {
        at: usize,
        text: String,
    },
    /// Duplicates a slice (repeated keys, nested structures).
    Repeat {
        at: usize,
        len: usize,
        times: usize,
    },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let numbers = prop_oneof![
        Just("0".to_string()),
        Just("-1".to_string()),
        Just("1000000000".to_string()),
        Just("18446744073709551615".to_string()),
        Just("9223372036854775807".to_string()),
        Just("4294967296".to_string()),
        Just("1e308".to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
    ];
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Flip { at, byte }),
        (
            any::<usize>(),
            proptest::collection::vec(any::<u8>(), 1..16)
        )
            .prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
        (any::<usize>(), 1usize..64).prop_map(|(at, len)| Mutation::Delete { at, len }),
        any::<usize>().prop_map(|at| Mutation::Truncate { at }),
        (any::<usize>(), numbers).prop_map(|(at, text)| Mutation::Number { at, text }),
        (any::<usize>(), 1usize..32, 2usize..64).prop_map(|(at, len, times)| Mutation::Repeat {
            at,
            len,
            times
        }),
    ]
}

pub fn apply(seed: &[u8], mutations: &[Mutation]) -> Vec<u8> {
    let mut b = seed.to_vec();
    for m in mutations {
        let n = b.len().max(1);
        match m {
            Mutation::Flip { at, byte } => {
                if !b.is_empty() {
                    let i = at % b.len();
                    b[i] = *byte;
                }
            }
            Mutation::Insert { at, bytes } => {
                let i = at % (b.len() + 1);
                b.splice(i..i, bytes.iter().copied());
            }
            Mutation::Delete { at, len } => {
                let i = at % n;
                let j = (i + len).min(b.len());
                if i < j {
                    b.drain(i..j);
                }
            }
            Mutation::Truncate { at } => b.truncate(at % n),
            Mutation::Number { at, text } => {
                let digits: Vec<usize> = (0..b.len()).filter(|&i| b[i].is_ascii_digit()).collect();
                if !digits.is_empty() {
                    let start = digits[at % digits.len()];
                    let end = (start..b.len())
                        .find(|&i| !b[i].is_ascii_digit())
                        .unwrap_or(b.len());
                    b.splice(start..end, text.bytes());
                }
            }
            Mutation::Repeat { at, len, times } => {
                if !b.is_empty() {
                    let i = at % b.len();
                    let j = (i + len).min(b.len());
                    let slice: Vec<u8> = b[i..j].to_vec();
                    for _ in 0..*times {
                        b.splice(j..j, slice.iter().copied());
                    }
                }
            }
        }
    }
    b
}

/// Inputs: one of `seeds`, mutated 0 to 6 times.
pub fn inputs(seeds: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    (
        proptest::sample::select(seeds),
        proptest::collection::vec(mutation(), 0..6),
    )
        .prop_map(|(seed, ms)| apply(&seed, &ms))
}

/// How many cases each target runs: ND_FUZZ_CASES, default 256 (bounded, so CI's time is).
pub fn cases() -> u32 {
    std::env::var("ND_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

/// Runs `target` on mutated seeds: no panic, and at most `max_bytes` held at once per case.
pub fn fuzz(target: &str, max_bytes: usize, run: impl Fn(&[u8])) {
    fuzz_seeds(target, corpus(target), max_bytes, run);
}

/// As [`fuzz`], on seeds the target made itself (outputs of a real run, say).
pub fn fuzz_seeds(target: &str, seeds: Vec<Vec<u8>>, max_bytes: usize, run: impl Fn(&[u8])) {
    let mut runner = TestRunner::new(Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&inputs(seeds), |input| {
        let (outcome, peak) =
            peak_of(|| std::panic::catch_unwind(AssertUnwindSafe(|| run(&input))));
        prop_assert!(
            outcome.is_ok(),
            "{target}: panicked on {} bytes",
            input.len()
        );
        prop_assert!(
            peak <= max_bytes,
            "{target}: held {peak} bytes at once (bound {max_bytes}) on {} input bytes",
            input.len()
        );
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}
