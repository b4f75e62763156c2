//! Clock arithmetic the architected timer needs, kept pure so it is tested on the host.
#![forbid(unsafe_code)]

use core::num::{NonZeroU32, NonZeroU64};

const NS_PER_S: u64 = 1_000_000_000;

/// `ticks * 10^9 / freq` in nanoseconds, cut to 64 bits as the 128-bit formula is, without its
/// 128-bit division (a library call): whole seconds, then the rest. `freq` has 32 bits, as
/// CNTFRQ_EL0.ClockFreq does, so `rest * 10^9 < 2^62`; whole seconds times 10^9 passes 2^64
/// only after 584 years of ticks, where it wraps exactly as the cut did.
pub fn ticks_to_ns(ticks: u64, freq: NonZeroU32) -> u64 {
    let f = NonZeroU64::from(freq);
    let (seconds, rest) = (ticks / f, ticks % f);
    seconds
        .wrapping_mul(NS_PER_S)
        .wrapping_add(rest * NS_PER_S / f)
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The formula `now_ns` used before: a 128-bit product and division, cut to 64 bits.
    fn reference(ticks: u64, freq: NonZeroU32) -> u64 {
        (u128::from(ticks) * u128::from(NS_PER_S) / u128::from(freq.get())) as u64
    }

    fn frequencies() -> impl Strategy<Value = NonZeroU32> {
        prop_oneof![
            Just(1u32),
            Just(3),
            Just(19_200_000),
            Just(54_000_000),
            Just(62_500_000),
            Just(1_000_000_007),
            Just(u32::MAX),
            1..=u32::MAX,
        ]
        .prop_map(|f| NonZeroU32::new(f).unwrap())
    }

    fn tick_counts() -> impl Strategy<Value = u64> {
        prop_oneof![
            any::<u64>(),
            (0..1u64 << 20).prop_map(|d| u64::MAX - d),
            0..1u64 << 40,
        ]
    }

    proptest! {
        #[test]
        fn equals_the_128_bit_formula(ticks in tick_counts(), freq in frequencies()) {
            prop_assert_eq!(ticks_to_ns(ticks, freq), reference(ticks, freq));
        }
    }

    #[test]
    fn equals_the_128_bit_formula_at_the_edges() {
        for f in [1, 2, 3, 7, 54_000_000, 62_500_000, u32::MAX - 1, u32::MAX] {
            let freq = NonZeroU32::new(f).unwrap();
            let f = u64::from(f);
            for ticks in [0, 1, f - 1, f, f + 1, u64::MAX / f * f, u64::MAX - 1, u64::MAX] {
                assert_eq!(ticks_to_ns(ticks, freq), reference(ticks, freq), "{ticks} @ {freq}");
            }
        }
    }
}
