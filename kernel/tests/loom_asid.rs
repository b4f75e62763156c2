//! Loom model of the ASID allocator: a rollover racing another CPU's switches never gives one
//! (generation, ASID) to two address spaces. Run with `make test-loom`.
#![cfg(loom)]

use loom::sync::Mutex;
use loom::thread;
use shootdown::mm::asid::{AsidAllocator, AsidBits, AsidContext};
use std::sync::Arc;

/// Two CPUs switch between four address spaces with three usable ASIDs, so a rollover races
/// with the other CPU's switches (fast and slow path). No (generation, ASID) may ever have two
/// owners.
#[test]
fn fast_path_races_with_rollover() {
    loom::model(|| {
        let alloc = Arc::new(AsidAllocator::with_limit(AsidBits::Eight, 2, 4).unwrap());
        let spaces = Arc::new([(); 4].map(|_| AsidContext::new()));
        let log: Arc<Mutex<Vec<(u64, u16, usize)>>> = Arc::new(Mutex::new(Vec::new()));
        let plan: [&[usize]; 2] = [&[0, 1, 0], &[2, 3]];
        let handles: Vec<_> = (0..2)
            .map(|cpu| {
                let (alloc, spaces, log) = (alloc.clone(), spaces.clone(), log.clone());
                thread::spawn(move || {
                    for &space in plan[cpu] {
                        let a = alloc.activate(cpu, &spaces[space]).unwrap();
                        log.lock()
                            .unwrap()
                            .push((a.generation, a.asid.get(), space));
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let log = log.lock().unwrap();
        for (i, &(g1, a1, s1)) in log.iter().enumerate() {
            for &(g2, a2, s2) in &log[i + 1..] {
                assert!(!(g1 == g2 && a1 == a2 && s1 != s2), "shared ASID: {log:?}");
            }
        }
    });
}
