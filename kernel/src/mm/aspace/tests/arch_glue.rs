//! What the address space owes the CPU glue: the tables stay alive while a CPU has them
//! loaded, Access-flag faults are answered, executable memory is I-cache clean, and physical
//! ranges are checked against the machine's PA size.

extern crate std;

use std::thread;
use std::time::Duration;

use super::*;

fn rx() -> Permissions {
    Permissions::new(false, true, false)
}

#[test]
fn a_loaded_space_outlives_its_last_other_user() {
    let h = host(64);
    let baseline = h.memory().live_frames();
    let user = AddressSpace::create(h).unwrap();
    map_anon(&user, A, 2);
    let loaded = user.load(1).unwrap();
    assert_eq!(loaded.cpu(), 1);
    assert_eq!(Some(loaded.root()), user.root());
    assert_eq!(user.active_cpus(), 0b10);
    drop(user);
    // The CPU's reference is the last one: nothing is torn down under it.
    let space = loaded.space().clone();
    assert_eq!(space.root(), Some(loaded.root()));
    assert_eq!(space.mm().users(), 1);
    drop(loaded);
    assert_eq!(space.root(), None, "the unload was the last user: teardown ran");
    assert_eq!(space.active_cpus(), 0);
    assert_eq!(h.memory().live_frames(), baseline, "everything went back");
}

#[test]
fn an_exited_space_cannot_be_loaded_and_bad_cpus_are_refused() {
    let h = host(64);
    let user = AddressSpace::create(h).unwrap();
    assert_eq!(user.load(64).err(), Some(MmError::NoSuchCpu(64)));
    let arc: Arc<AddressSpace<Host>> = Arc::clone(&user);
    drop(user);
    assert_eq!(arc.load(0).err(), Some(MmError::Exited));
    assert_eq!(arc.active_cpus(), 0, "a failed load leaves no bit behind");
}

/// Re-activating the space a CPU already runs loads it a second time, then drops the first
/// `Loaded`: that drop must not take the CPU's bit away from the second one.
#[test]
fn a_second_load_on_the_same_cpu_is_refused_and_keeps_the_bit() {
    let h = host(64);
    let user = AddressSpace::create(h).unwrap();
    let first = user.load(1).unwrap();
    let users = user.mm().users();
    let second = user.load(1);
    assert!(
        matches!(second, Err(MmError::AlreadyLoaded(1))),
        "a second Loaded for CPU 1 shares the first one's bit"
    );
    drop(second);
    assert_eq!(
        user.mm().users(),
        users,
        "the refused load kept no user reference"
    );
    assert_eq!(
        user.active_cpus(),
        0b10,
        "the refusal took the loaded CPU's bit away"
    );
    drop(first);
    assert_eq!(user.active_cpus(), 0);
    assert!(user.load(1).is_ok(), "once unloaded it can be loaded again");
}

#[test]
fn teardown_waits_for_a_cpu_that_loaded_without_a_user_reference() {
    let h = host(64);
    let user = AddressSpace::create(h).unwrap();
    map_anon(&user, A, 1);
    let space: Arc<AddressSpace<Host>> = Arc::clone(&user);
    space.set_load_knob(LOAD_NO_USER);
    let loaded = space.load(2).unwrap();
    let frames = h.memory().live_frames();
    let dropper = thread::spawn(move || drop(user));
    thread::sleep(Duration::from_millis(50));
    assert!(
        !dropper.is_finished(),
        "teardown finished while CPU 2 had the tables loaded"
    );
    assert_eq!(h.memory().live_frames(), frames, "nothing was freed yet");
    drop(loaded);
    dropper.join().unwrap();
    assert_eq!(space.root(), None);
}

/// The failing twin: with neither the user reference nor the active bit, the last user's drop
/// frees the tables a CPU still has loaded.
#[test]
fn without_the_load_protocol_the_tables_are_freed_under_a_loaded_cpu() {
    let h = host(64);
    let baseline = h.memory().live_frames();
    let user = AddressSpace::create(h).unwrap();
    map_anon(&user, A, 1);
    let space: Arc<AddressSpace<Host>> = Arc::clone(&user);
    space.set_load_knob(LOAD_UNPROTECTED);
    let loaded = space.load(0).unwrap();
    drop(user);
    assert_eq!(
        space.root(),
        None,
        "the tables of a loaded CPU were torn down"
    );
    assert_eq!(
        h.memory().live_frames(),
        baseline,
        "the root {} the CPU still walks was freed",
        loaded.root()
    );
}

#[test]
fn loads_racing_the_last_user_never_see_freed_tables() {
    for _ in 0..50 {
        let h = host(64);
        let user = AddressSpace::create(h).unwrap();
        map_anon(&user, A, 1);
        let space: Arc<AddressSpace<Host>> = Arc::clone(&user);
        let cpus: Vec<_> = (1..4)
            .map(|cpu| {
                let space = space.clone();
                thread::spawn(move || {
                    let mut loads = 0;
                    while let Ok(loaded) = space.load(cpu) {
                        // While loaded, the table is the one the CPU walks and it translates.
                        assert_eq!(space.root(), Some(loaded.root()));
                        assert!(space.translate(VirtAddr(A)).is_some());
                        loads += 1;
                        drop(loaded);
                        if loads > 10_000 {
                            break;
                        }
                    }
                })
            })
            .collect();
        thread::yield_now();
        drop(user);
        for t in cpus {
            t.join().unwrap();
        }
        assert_eq!(space.root(), None);
        assert_eq!(space.active_cpus(), 0);
    }
}

#[test]
fn an_access_flag_fault_is_answered_by_setting_the_flag() {
    let h = host(64);
    let user = AddressSpace::create(h).unwrap();
    let rec = Arc::new(RangeRecorder::default());
    let _sub = MmuNotifier::register(user.mm(), rec.clone()).unwrap();
    map_anon(&user, A, 2);
    let _act = h.asids().activate(0, user.asid_context()).unwrap();
    assert_eq!(user.clear_flush_young(VirtAddr(A), 2 * PAGE_SIZE), Ok(true));
    assert_eq!(user.test_young(VirtAddr(A + PAGE)), Ok(false));
    h.take_tlb_ops();
    let log_before = rec.log.lock().unwrap().len();

    // The fault's address is anywhere in the page.
    assert_eq!(user.mark_young(VirtAddr(A + PAGE + 0x123)), Ok(true));
    assert_eq!(user.test_young(VirtAddr(A + PAGE)), Ok(true));
    assert_eq!(user.test_young(VirtAddr(A)), Ok(false), "only that page");
    // Invalid (AF = 0) to valid: published, never invalidated, nobody notified.
    let ops = h.take_tlb_ops();
    assert!(ops.contains(&TlbOp::DsbIshst), "{ops:?}");
    assert!(
        !ops.iter().any(|op| matches!(op, TlbOp::Tlbi { .. })),
        "{ops:?}"
    );
    assert_eq!(rec.log.lock().unwrap().len(), log_before);
    // A second CPU faulting on the same page finds it young already.
    assert_eq!(user.mark_young(VirtAddr(A + PAGE)), Ok(false));
    // A fault outside any mapping is not an Access-flag fault to answer.
    assert_eq!(
        user.mark_young(VirtAddr(A + 8 * PAGE)),
        Err(MmError::NotMapped(VirtAddr(A + 8 * PAGE)))
    );
    assert!(matches!(
        user.mark_young(VirtAddr(USER_END)),
        Err(MmError::OutOfRange { .. })
    ));
}

/// A device's Access-flag fault arrives through the core (an SVA binding holds only that): the
/// core reaches its address space, and says so when there is none left to answer.
#[test]
fn the_core_answers_an_access_flag_fault_through_its_address_space() {
    let h = host(64);
    let user = AddressSpace::create(h).unwrap();
    map_anon(&user, A, 1);
    assert_eq!(user.clear_flush_young(VirtAddr(A), PAGE_SIZE), Ok(true));
    let core = user.mm().clone();
    assert_eq!(core.mark_young(VirtAddr(A + 8)), Ok(true));
    assert_eq!(user.test_young(VirtAddr(A)), Ok(true));
    assert_eq!(
        core.mark_young(VirtAddr(A + PAGE)),
        Err(FaultError::NotMapped(VirtAddr(A + PAGE)))
    );
    assert_eq!(
        core.mark_young(VirtAddr(USER_END)),
        Err(FaultError::OutOfRange(VirtAddr(USER_END)))
    );
    let space = Arc::clone(&user);
    drop(user);
    assert_eq!(core.mark_young(VirtAddr(A)), Err(FaultError::Exited));
    drop(space);
    assert_eq!(core.mark_young(VirtAddr(A)), Err(FaultError::NoHandler));
    assert_eq!(MmCore::new().mark_young(VirtAddr(A)), Err(FaultError::NoHandler));
}

#[test]
fn memory_is_made_icache_coherent_before_it_becomes_executable() {
    let h = host(64);
    let user = AddressSpace::create(h).unwrap();
    map_anon(&user, A, 2);
    assert!(h.take_icache_syncs().is_empty(), "not executable");

    // mmap of executable anonymous memory: each fresh frame.
    let x = user
        .mmap(Placement::Anywhere, 2 * PAGE_SIZE, rx(), Backing::Anonymous)
        .unwrap();
    let synced = h.take_icache_syncs();
    let frames: Vec<_> = (0..2)
        .map(|i| (user.translate(VirtAddr(x.0 + i * PAGE)).unwrap().pa, PAGE_SIZE))
        .collect();
    assert_eq!(synced, frames);

    // mprotect to executable: every mapped page of the range; already executable: nothing.
    user.mprotect(VirtAddr(A), 2 * PAGE_SIZE, rx()).unwrap();
    let synced = h.take_icache_syncs();
    let total: usize = synced.iter().map(|&(_, len)| len).sum();
    assert_eq!(total, 2 * PAGE_SIZE, "{synced:?}");
    assert_eq!(synced[0].0, user.translate(VirtAddr(A)).unwrap().pa);
    user.mprotect(VirtAddr(A), PAGE_SIZE, rx()).unwrap();
    assert!(h.take_icache_syncs().is_empty());

    // A physical executable mapping: its whole range at once.
    let pa = PhysAddr(0x8000_0000);
    user.mmap(
        Placement::Anywhere,
        4 * PAGE_SIZE,
        rx(),
        Backing::Physical(pa, MemoryType::Normal),
    )
    .unwrap();
    assert_eq!(h.take_icache_syncs(), [(pa, 4 * PAGE_SIZE)]);
}

#[test]
fn physical_ranges_are_checked_against_the_cpus_pa_size() {
    // A Cortex-A72 reports a 44-bit PA range.
    let h = host_with_pa_bits(64, 44);
    let user = AddressSpace::create(h).unwrap();
    let top = PhysAddr((1 << 44) - PAGE);
    let map = |pa: PhysAddr, len: usize| {
        user.mmap(
            Placement::Anywhere,
            len,
            rw(),
            Backing::Physical(pa, MemoryType::Device),
        )
    };
    let err = map(top, 2 * PAGE_SIZE).unwrap_err();
    assert_eq!(
        err,
        MmError::PhysOutOfRange {
            start: top,
            len: 2 * PAGE_SIZE,
            bits: 44
        }
    );
    assert!(std::format!("{err}").contains("44-bit"), "{err}");
    assert!(user.regions().is_empty());
    assert!(map(top, PAGE_SIZE).is_ok(), "the last page below 2^44 is fine");
}
