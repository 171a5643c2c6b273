//! Histograms aggregated in the kernel: log2 (BCC's `-d`/funclatency layout) and linear.
//! The slot functions are shared so the kernel and the tests bucket values identically.

/// Slots of a log2 histogram: slot 0 holds 0 and 1, slot i holds [2^i, 2^(i+1)).
/// 64 slots cover every u64, so no value is ever clamped.
pub const LOG2_SLOTS: usize = 64;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Log2Hist {
    pub slots: [u64; LOG2_SLOTS],
}

crate::user_pod!(Log2Hist);

impl Log2Hist {
    pub const ZERO: Self = Self {
        slots: [0; LOG2_SLOTS],
    };
}

/// floor(log2(v)) with 0 and 1 in slot 0: a branch ladder the verifier accepts (no loops).
#[inline(always)]
pub fn log2_slot(value: u64) -> u32 {
    let mut v = value;
    let mut slot = 0;
    if v >= 1 << 32 {
        v >>= 32;
        slot += 32;
    }
    if v >= 1 << 16 {
        v >>= 16;
        slot += 16;
    }
    if v >= 1 << 8 {
        v >>= 8;
        slot += 8;
    }
    if v >= 1 << 4 {
        v >>= 4;
        slot += 4;
    }
    if v >= 1 << 2 {
        v >>= 2;
        slot += 2;
    }
    if v >= 1 << 1 {
        slot += 1;
    }
    slot
}

/// Slots of a linear histogram.
pub const LINEAR_SLOTS: usize = 64;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinearHist {
    pub slots: [u64; LINEAR_SLOTS],
}

crate::user_pod!(LinearHist);

/// Slot of `value` for buckets of `step` starting at `min`; values outside land in the first
/// or last slot (the userspace printer labels those as "< min" and ">= max").
#[inline(always)]
pub fn linear_slot(value: u64, min: u64, step: u64) -> u32 {
    if value < min || step == 0 {
        return 0;
    }
    let slot = (value - min) / step;
    if slot >= LINEAR_SLOTS as u64 {
        LINEAR_SLOTS as u32 - 1
    } else {
        slot as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log2_slots() {
        assert_eq!(log2_slot(0), 0);
        assert_eq!(log2_slot(1), 0);
        assert_eq!(log2_slot(2), 1);
        assert_eq!(log2_slot(3), 1);
        assert_eq!(log2_slot(4), 2);
        assert_eq!(log2_slot(1023), 9);
        assert_eq!(log2_slot(1024), 10);
        assert_eq!(log2_slot(u64::MAX), 63);
        for shift in 1..64 {
            assert_eq!(log2_slot(1u64 << shift), shift);
            assert_eq!(log2_slot((1u64 << shift) - 1), shift - 1);
        }
    }

    #[test]
    fn linear_slots() {
        assert_eq!(linear_slot(5, 10, 5), 0);
        assert_eq!(linear_slot(10, 10, 5), 0);
        assert_eq!(linear_slot(15, 10, 5), 1);
        assert_eq!(linear_slot(10_000, 10, 5), 63);
    }
}
