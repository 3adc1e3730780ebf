//! Private UID/GID ranges: 65536 IDs per machine from systemd's container range
//! (524288–1878982656, see systemd's UIDS-GIDS.md), never overlapping another machine's.

use serde::{Deserialize, Serialize};

/// IDs per machine: a full 16-bit range, so every UID in the image maps.
pub const RANGE_SIZE: u32 = 0x1_0000;
/// The first base: systemd's container range starts at 0x80000.
pub const FIRST_BASE: u32 = 0x8_0000;
/// The last ID systemd assigns to containers (0x6FFFFFFF).
pub const LAST_ID: u32 = 0x6FFF_FFFF;

/// A machine's range: container UID/GID N is host ID `base + N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct UidRange {
    pub base: u32,
}

impl UidRange {
    /// Whether `base` is a valid range start (aligned, inside the container range).
    pub fn is_valid_base(base: u32) -> bool {
        base >= FIRST_BASE && base.is_multiple_of(RANGE_SIZE) && base <= LAST_ID + 1 - RANGE_SIZE
    }

    /// The lowest free range; `None` when every range is taken.
    pub fn allocate(used: &[UidRange]) -> Option<Self> {
        (FIRST_BASE..=LAST_ID + 1 - RANGE_SIZE)
            .step_by(RANGE_SIZE as usize)
            .map(|base| Self { base })
            .find(|candidate| !used.contains(candidate))
    }

    /// The `uid_map`/`gid_map` line: `0 BASE 65536`.
    pub fn map_line(self) -> String {
        format!("0 {} {RANGE_SIZE}\n", self.base)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocates_lowest_free_aligned_range() {
        assert_eq!(UidRange::allocate(&[]), Some(UidRange { base: 524_288 }));
        let used = [UidRange { base: 524_288 }, UidRange { base: 655_360 }];
        assert_eq!(UidRange::allocate(&used), Some(UidRange { base: 589_824 }));
        let all: Vec<UidRange> = (FIRST_BASE..=LAST_ID + 1 - RANGE_SIZE)
            .step_by(RANGE_SIZE as usize)
            .map(|base| UidRange { base })
            .collect();
        assert_eq!(UidRange::allocate(&all), None);
    }

    #[test]
    fn valid_bases() {
        assert!(UidRange::is_valid_base(524_288));
        assert!(UidRange::is_valid_base(0x6FFF_0000));
        assert!(!UidRange::is_valid_base(0));
        assert!(!UidRange::is_valid_base(524_289));
        assert!(!UidRange::is_valid_base(0x7000_0000));
        assert_eq!(UidRange { base: 589_824 }.map_line(), "0 589824 65536\n");
    }
}
