//! The end of a soak: a DMA racing the teardown of its address space (`fault=teardown`), and
//! the last user of a bound address space going while other CPUs unmap (`fault=release`).

use super::*;

/// `teardown`: the end of the soak with a DMA in flight. `edu` runs its transfer ~100 ms
/// after it is started, so the teardown (release: quiesce) completes first; the model engine
/// runs transfers back to back on another CPU. Either way no transfer that started after the
/// teardown returned may land, and the context ends released.
pub(crate) fn teardown_race(
    rig: &mut Rig<BoardDomain>,
    bond: Bond<BoardDomain>,
    cpus: usize,
) -> Result<Result<(), String>, RigError> {
    let frame = rig.alloc_device_frame()?;
    rig::fill(frame, 0)?;
    rig.space()
        .mmap(
            Placement::Fixed(VirtAddr(TEARDOWN_VA)),
            PAGE as usize,
            RW,
            Backing::Physical(frame, MemoryType::Normal),
        )
        .map_err(rig::fail)?;
    let result = if rig.dev.is_edu() {
        edu_teardown_race(rig, &bond, frame)
    } else {
        model_teardown_race(rig, &bond, frame, cpus)
    };
    let state = bond.state();
    let unbound = bond.unbind();
    if let Some(f) = frames() {
        f.free(frame);
    }
    let result = result?;
    Ok(result.and_then(|()| {
        if state != ContextState::Released {
            return Err(format!("context {state:?} after teardown, not Released"));
        }
        unbound.map_err(|e| format!("unbind after teardown: {e}"))
    }))
}

pub(super) fn edu_teardown_race(
    rig: &mut Rig<BoardDomain>,
    bond: &Bond<BoardDomain>,
    frame: PhysAddr,
) -> Result<Result<(), String>, RigError> {
    rig.load_buffer(&[0x44; 16])?;
    rig.dev.store(TEARDOWN_VA, 16)?; // cached, and proves the page is live
    if rig::read(frame, 16)? != [0x44; 16] {
        return Ok(Err(String::from("the first write did not land")));
    }
    rig.load_buffer(&[0xee; 16])?;
    rig.drain_events();
    rig.dev.start_store(TEARDOWN_VA, 16)?;
    let started = crate::arch::aarch64::timer::now_ns();
    let space: Option<MmUser<CpuMm>> = rig.take_space();
    drop(space); // the last user: release quiesces the context, then the tables are freed
    let torn = bond.state();
    let pending = rig.dev.is_busy();
    let took_us = (crate::arch::aarch64::timer::now_ns() - started) / 1000;
    rig.dev.wait()?;
    let now = rig::read(frame, 16)?;
    let events = rig.drain_events();
    Ok(if now != [0x44; 16] {
        Err(format!(
            "the in-flight DMA landed after the teardown ({torn:?}, {took_us} us, transfer \
             still pending when it returned: {pending}): {now:?}"
        ))
    } else if !events.is_empty() {
        Err(format!("release faults must be quiet: {events:?}"))
    } else {
        Ok(())
    })
}

pub(super) fn model_teardown_race(
    rig: &mut Rig<BoardDomain>,
    bond: &Bond<BoardDomain>,
    frame: PhysAddr,
    cpus: usize,
) -> Result<Result<(), String>, RigError> {
    let Some(model) = rig.model else {
        return Ok(Err(String::from("no model")));
    };
    let _ = model.take_stale_translations();
    let space = rig.take_space();
    let space = spin::Mutex::new(space);
    let started = AtomicU64::new(0);
    let at_teardown = AtomicU64::new(u64::MAX);
    let failures = AtomicUsize::new(0);
    let rig = &*rig;
    let racer = if cpus > 1 { 1 } else { 0 };
    smp::on_each_cpu(&|cpu| {
        if cpu == racer {
            // Transfers back to back, transfer i writing i, until well after the teardown.
            for i in 1..=1_000_000u32 {
                let value: Vec<u8> = (0..4).flat_map(|_| i.to_le_bytes()).collect();
                if rig.load_buffer(&value).is_err() {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
                started.store(u64::from(i), Ordering::SeqCst);
                if rig.dev.store(TEARDOWN_VA, 16).is_err() {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
                let torn = at_teardown.load(Ordering::SeqCst);
                if torn != u64::MAX && u64::from(i) > torn + 20 {
                    break;
                }
            }
        }
        if cpu == 0 {
            while started.load(Ordering::SeqCst) < 5 {
                core::hint::spin_loop();
            }
            // Transfers during the teardown may still translate (until release's CMD_SYNC):
            // tell the checker, which then flags only uses after the teardown returned.
            let id = u64::MAX - 1;
            let asid = bond.asid().unwrap_or(0);
            model.begin_unmap(asid, VirtAddr(0), VirtAddr(USER_END), id);
            drop(space.lock().take()); // release, then the tables are freed
            at_teardown.store(started.load(Ordering::SeqCst), Ordering::SeqCst);
            model.end_unmap(id);
        }
    });
    let s = at_teardown.load(Ordering::SeqCst);
    let last = started.load(Ordering::SeqCst);
    let bytes = rig::read(frame, 4)?;
    let value = u64::from(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]));
    let stale = model.take_stale_translations();
    let _ = rig.drain_events();
    Ok(if failures.load(Ordering::Relaxed) != 0 {
        Err(String::from("a transfer failed to run"))
    } else if last <= s {
        Err(format!(
            "no transfer after the teardown ({last} started, {s} before)"
        ))
    } else if value > s {
        Err(format!(
            "transfer {value} landed, started after the teardown returned (at {s})"
        ))
    } else if !stale.is_empty() {
        Err(format!(
            "{} stale translations, first {}",
            stale.len(),
            stale[0]
        ))
    } else {
        Ok(())
    })
}

/// Where the transfer racing the teardown goes (every round's page is unmapped by then).
const TEARDOWN_VA: u64 = WINDOW + WINDOW_SIZE - 2 * SLOT;

/// Where the release race maps its pages: one per CPU, clear of the rig's own pages.
const RELEASE_VA: u64 = WINDOW;

/// `release`: a fresh address space bound to the device, one page per CPU cached in the IOTLB.
/// CPU 0 drops the last user (release quiesces the context, then the tables go) while the
/// other CPUs unmap their page without holding a user reference (the OOM reaper's
/// `munmap_nonblocking`) and, when the unmap returned, have the device write there; CPU 1 also
/// binds and unbinds a second stream of the same address space. No write may land in an
/// unmapped page's frame, the model's checker must see no stale use, and no SMMU-wide abort or
/// SVA failure may follow from the race (issue 20).
pub(super) fn release_race(cpus: usize, verbose: bool) -> Result<Result<(), String>, RigError> {
    if cpus < 2 {
        return Ok(Err(String::from("needs two CPUs")));
    }
    let mut rig = Rig::board()?;
    rig.bind()?;
    let before = rig.sva.stats();
    let frames: Vec<PhysAddr> = rig.map(RELEASE_VA, cpus as u64, RW, 0)?;
    rig.load_buffer(&[0xee; 16])?; // every store below writes this
    for cpu in 1..cpus {
        rig.dev.fetch(RELEASE_VA + cpu as u64 * PAGE, 16)?; // now cached
    }
    if let Some(m) = rig.model {
        let _ = m.take_stale_translations();
    }
    let aspace = Arc::clone(&**rig.space());
    let space = spin::Mutex::new(rig.take_space());
    let (ready, torn) = (AtomicUsize::new(0), AtomicBool::new(false));
    let (unmapped, binds, refused) = (AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0));
    let errors = spin::Mutex::new(Vec::<String>::new());
    let device = spin::Mutex::new(());
    let (rig_ref, second_sid) = (&rig, rig.sid + 1);
    smp::on_each_cpu(&|cpu| {
        if cpu >= cpus {
            return;
        }
        ready.fetch_add(1, Ordering::SeqCst);
        while ready.load(Ordering::SeqCst) < cpus {
            core::hint::spin_loop();
        }
        if cpu == 0 {
            drop(space.lock().take()); // the last user: release, then the tables are freed
            torn.store(true, Ordering::SeqCst);
            return;
        }
        let va = RELEASE_VA + cpu as u64 * PAGE;
        if aspace
            .munmap_nonblocking(VirtAddr(va), PAGE as usize)
            .is_ok()
        {
            unmapped.fetch_add(1, Ordering::Relaxed);
            let _turn = device.lock();
            if let Err(e) = rig_ref.dev.store(va, 16) {
                errors.lock().push(format!("store after the unmap: {e}"));
            }
        }
        while cpu == 1 && !torn.load(Ordering::SeqCst) {
            let root = aspace.root().unwrap_or(PhysAddr(0));
            match sva::bind::<BoardDomain>(second_sid, rig_ref.mm(), root, MAIR_VALUE) {
                Ok(bond) => {
                    binds.fetch_add(1, Ordering::Relaxed);
                    if let Err(e) = bond.unbind() {
                        errors
                            .lock()
                            .push(format!("unbinding the second stream: {e}"));
                    }
                }
                // After release, or after the last user went: the documented refusals.
                Err(SvaError::ContextDead(_) | SvaError::Notifier(_)) => {
                    refused.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => errors
                    .lock()
                    .push(format!("binding the second stream: {e}")),
            }
        }
    });
    let mut errors = errors.into_inner();
    for (cpu, frame) in frames.iter().enumerate().skip(1) {
        if rig::read(*frame, 16)?.contains(&0xee) {
            errors.push(format!(
                "CPU {cpu}'s page: the device wrote its freed frame"
            ));
        }
    }
    let stale = rig.stale_translation_count();
    if stale != 0 {
        errors.push(format!("{stale} stale translations"));
    }
    let state = rig.bond().map(|b| b.state());
    if state != Some(ContextState::Released) {
        errors.push(format!("context {state:?} after the race, not Released"));
    }
    let after = rig.sva.stats();
    if after.aborts != before.aborts || after.failures != before.failures || rig.smmu.is_disabled()
    {
        errors.push(format!(
            "an SVA failure or SMMU-wide abort: {} failures, {} aborts",
            after.failures - before.failures,
            after.aborts - before.aborts
        ));
    }
    if let Err(e) = rig.unbind() {
        errors.push(format!("unbind after the race: {e}"));
    }
    let _ = rig.drain_events();
    if verbose {
        println!(
            "    # fault release: {} of {} pages unmapped during the race, second stream bound {} times, refused {} times",
            unmapped.load(Ordering::Relaxed),
            cpus - 1,
            binds.load(Ordering::Relaxed),
            refused.load(Ordering::Relaxed)
        );
    }
    Ok(match errors.first() {
        None => Ok(()),
        Some(_) => Err(errors.join("; ")),
    })
}
