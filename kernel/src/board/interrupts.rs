//! A device's wired interrupts as the device tree gives them to a GIC: the `interrupts` cells
//! read with the controller's `#interrupt-cells`, paired with `interrupt-names`.
//!
//! The GIC bindings (Linux `Documentation/devicetree/bindings/interrupt-controller/arm,gic.yaml`
//! and `arm,gic-v3.yaml`) use three cells per interrupt: the type (0 = SPI, 1 = PPI), the
//! number within the type (SPI n is INTID 32 + n, PPI n is INTID 16 + n), and flags whose bits
//! [3:0] give the trigger (1 = edge rising, 4 = level high; a GIC cannot sense the other two
//! on SPIs and PPIs). GICv3 allows a fourth cell, the phandle of a PPI partition (a set of
//! CPUs the PPI is affine to), which must be 0 for everything but a partitioned PPI; the kernel
//! uses no partitions, so it takes 4 cells with the fourth 0. The pure parser
//! [`gic_interrupts`] is host-tested; `dt` finds the cells.

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

/// Cells per interrupt the GIC bindings use.
pub const GIC_INTERRUPT_CELLS: u32 = 3;
/// Cells per interrupt with GICv3's PPI-partition cell.
pub const GIC_V3_PARTITIONED_CELLS: u32 = 4;
/// The first INTID of an SPI (GIC architecture: SGIs 0-15, PPIs 16-31, SPIs 32-1019).
const SPI_BASE: u32 = 32;
const PPI_BASE: u32 = 16;
const LAST_SPI_INTID: u32 = 1019;

/// How a line signals (flags bits [3:0] of the specifier).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// A rising edge (1).
    Edge,
    /// A high level (4).
    Level,
}

/// Shared or private to one CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IrqKind {
    /// Shared peripheral interrupt (type 0).
    Spi,
    /// Private peripheral interrupt (type 1).
    Ppi,
}

/// One interrupt as the GIC numbers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GicInterrupt {
    /// SPI or PPI.
    pub kind: IrqKind,
    /// The number within its kind (SPI n, PPI n).
    pub number: u32,
    /// Edge or level.
    pub trigger: Trigger,
}

impl GicInterrupt {
    /// The interrupt ID the GIC's registers and acknowledge use.
    pub fn intid(&self) -> u32 {
        match self.kind {
            IrqKind::Spi => SPI_BASE + self.number,
            IrqKind::Ppi => PPI_BASE + self.number,
        }
    }
}

impl fmt::Display for GicInterrupt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            IrqKind::Spi => "SPI",
            IrqKind::Ppi => "PPI",
        };
        let trigger = match self.trigger {
            Trigger::Edge => "edge",
            Trigger::Level => "level",
        };
        write!(
            f,
            "{kind} {} (INTID {}, {trigger})",
            self.number,
            self.intid()
        )
    }
}

/// An interrupt and the name `interrupt-names` gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedInterrupt {
    /// `eventq`, `gerror`, ...
    pub name: String,
    /// The line.
    pub irq: GicInterrupt,
}

/// Why a node's interrupts cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InterruptError {
    /// No `interrupt-parent` (on the node or an ancestor) names the GIC the kernel found.
    NoController,
    /// The controller's `#interrupt-cells` is neither the GIC bindings' 3 nor GICv3's 4.
    CellsPerInterrupt(u32),
    /// `interrupts` is not a whole number of specifiers (a missing or extra cell).
    Truncated {
        /// Bytes in the property.
        bytes: usize,
        /// Cells per specifier.
        cells: u32,
    },
    /// `interrupt-names` gives one name to two specifiers.
    DuplicateName {
        /// The name.
        name: String,
    },
    /// A fourth cell is not 0: a partitioned PPI (which the kernel does not support), or a
    /// phandle where the binding requires 0.
    Partitioned {
        /// Which specifier.
        index: usize,
        /// The fourth cell.
        phandle: u32,
    },
    /// `interrupt-names` does not name each specifier exactly once.
    NamesMismatch {
        /// Names given.
        names: usize,
        /// Specifiers given.
        interrupts: usize,
    },
    /// The type cell is neither SPI (0) nor PPI (1).
    UnknownType {
        /// Which specifier.
        index: usize,
        /// The cell.
        cell: u32,
    },
    /// The flags ask for a trigger a GIC cannot sense (falling edge, low level, or none).
    UnsupportedTrigger {
        /// Which specifier.
        index: usize,
        /// The flags cell.
        flags: u32,
    },
    /// The number is past the last SPI (INTID 1019) or PPI (15).
    NumberOutOfRange {
        /// Which specifier.
        index: usize,
        /// The number cell.
        number: u32,
    },
}

impl fmt::Display for InterruptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoController => f.write_str("no interrupt-parent names the GIC"),
            Self::CellsPerInterrupt(n) => write!(
                f,
                "the interrupt controller's #interrupt-cells is {n}, not {GIC_INTERRUPT_CELLS} \
                 or {GIC_V3_PARTITIONED_CELLS}"
            ),
            Self::Truncated { bytes, cells } => write!(
                f,
                "`interrupts` has {bytes} bytes, not a whole number of {cells}-cell specifiers"
            ),
            Self::DuplicateName { name } => {
                write!(f, "interrupt-names gives {name:?} to two interrupts")
            }
            Self::Partitioned { index, phandle } => write!(
                f,
                "interrupt {index}: PPI partition {phandle:#x} (4th cell) is not 0: partitions \
                 are not supported"
            ),
            Self::NamesMismatch { names, interrupts } => {
                write!(f, "{names} interrupt-names for {interrupts} interrupts")
            }
            Self::UnknownType { index, cell } => {
                write!(
                    f,
                    "interrupt {index}: type {cell} is neither SPI (0) nor PPI (1)"
                )
            }
            Self::UnsupportedTrigger { index, flags } => write!(
                f,
                "interrupt {index}: flags {flags:#x} ask for a trigger a GIC cannot sense"
            ),
            Self::NumberOutOfRange { index, number } => {
                write!(f, "interrupt {index}: number {number} is out of range")
            }
        }
    }
}

/// Reads `interrupts` (`cells`, big-endian) with the controller's `#interrupt-cells` and pairs
/// each specifier with its `interrupt-names` entry. All or nothing: one bad specifier refuses
/// the whole property, so a driver never wires half of what the tree describes.
pub fn gic_interrupts(
    cells: &[u8],
    interrupt_cells: u32,
    names: &[&str],
) -> Result<Vec<NamedInterrupt>, InterruptError> {
    if interrupt_cells != GIC_INTERRUPT_CELLS && interrupt_cells != GIC_V3_PARTITIONED_CELLS {
        return Err(InterruptError::CellsPerInterrupt(interrupt_cells));
    }
    let stride = interrupt_cells as usize * 4;
    if cells.len() % stride != 0 {
        return Err(InterruptError::Truncated {
            bytes: cells.len(),
            cells: interrupt_cells,
        });
    }
    let count = cells.len() / stride;
    if names.len() != count {
        return Err(InterruptError::NamesMismatch {
            names: names.len(),
            interrupts: count,
        });
    }
    if let Some((i, _)) = names
        .iter()
        .enumerate()
        .find(|&(i, name)| names[..i].contains(name))
    {
        return Err(InterruptError::DuplicateName {
            name: names[i].to_string(),
        });
    }
    cells
        .chunks_exact(stride)
        .zip(names)
        .enumerate()
        .map(|(index, (spec, name))| {
            let cell = |i: usize| {
                u32::from_be_bytes([
                    spec[4 * i],
                    spec[4 * i + 1],
                    spec[4 * i + 2],
                    spec[4 * i + 3],
                ])
            };
            if interrupt_cells == GIC_V3_PARTITIONED_CELLS && cell(3) != 0 {
                return Err(InterruptError::Partitioned {
                    index,
                    phandle: cell(3),
                });
            }
            Ok(NamedInterrupt {
                name: name.to_string(),
                irq: specifier(index, cell(0), cell(1), cell(2))?,
            })
        })
        .collect()
}

fn specifier(
    index: usize,
    kind: u32,
    number: u32,
    flags: u32,
) -> Result<GicInterrupt, InterruptError> {
    let (kind, last) = match kind {
        0 => (IrqKind::Spi, LAST_SPI_INTID - SPI_BASE),
        1 => (IrqKind::Ppi, SPI_BASE - PPI_BASE - 1),
        cell => return Err(InterruptError::UnknownType { index, cell }),
    };
    if number > last {
        return Err(InterruptError::NumberOutOfRange { index, number });
    }
    let trigger = match flags & 0xf {
        1 => Trigger::Edge,
        4 => Trigger::Level,
        _ => return Err(InterruptError::UnsupportedTrigger { index, flags }),
    };
    Ok(GicInterrupt {
        kind,
        number,
        trigger,
    })
}

/// The interrupt named `name`, if the list has it.
pub fn named<'a>(irqs: &'a [NamedInterrupt], name: &str) -> Option<&'a GicInterrupt> {
    irqs.iter().find(|i| i.name == name).map(|i| &i.irq)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cells(words: &[u32]) -> Vec<u8> {
        words.iter().flat_map(|w| w.to_be_bytes()).collect()
    }

    /// QEMU virt's SMMUv3 node (`hw/arm/virt.c`: SPIs 74-77, edge rising).
    #[test]
    fn reads_the_virt_smmu_interrupts() {
        let raw = cells(&[0, 0x4a, 1, 0, 0x4b, 1, 0, 0x4c, 1, 0, 0x4d, 1]);
        let names = ["eventq", "priq", "cmdq-sync", "gerror"];
        let irqs = gic_interrupts(&raw, 3, &names).unwrap();
        assert_eq!(irqs.len(), 4);
        let eventq = named(&irqs, "eventq").unwrap();
        assert_eq!(eventq.kind, IrqKind::Spi);
        assert_eq!((eventq.number, eventq.intid()), (74, 106));
        assert_eq!(eventq.trigger, Trigger::Edge);
        assert_eq!(named(&irqs, "gerror").unwrap().intid(), 109);
        assert_eq!(named(&irqs, "combined"), None);
        assert_eq!(eventq.to_string(), "SPI 74 (INTID 106, edge)");
    }

    #[test]
    fn level_and_ppi_specifiers() {
        let raw = cells(&[1, 13, 4, 0, 987, 4]);
        let irqs = gic_interrupts(&raw, 3, &["timer", "last"]).unwrap();
        assert_eq!(irqs[0].irq.intid(), 29);
        assert_eq!(irqs[0].irq.trigger, Trigger::Level);
        assert_eq!(irqs[1].irq.intid(), 1019);
    }

    #[test]
    fn missing_and_extra_cells_are_refused() {
        let mut raw = cells(&[0, 0x4a, 1, 0, 0x4b]);
        assert_eq!(
            gic_interrupts(&raw, 3, &["eventq", "gerror"]),
            Err(InterruptError::Truncated {
                bytes: 20,
                cells: 3
            })
        );
        raw.extend_from_slice(&cells(&[1, 7]));
        assert_eq!(
            gic_interrupts(&raw, 3, &["eventq", "gerror"]),
            Err(InterruptError::Truncated {
                bytes: 28,
                cells: 3
            })
        );
        assert_eq!(
            gic_interrupts(&cells(&[0, 1, 1]), 2, &["eventq"]),
            Err(InterruptError::CellsPerInterrupt(2))
        );
    }

    /// GICv3's `#interrupt-cells = 4`: the fourth cell (a PPI partition) 0 is read as 3 cells;
    /// a partition is refused, naming the specifier.
    #[test]
    fn four_cell_specifiers_without_a_partition() {
        let raw = cells(&[0, 0x4a, 1, 0, 1, 13, 4, 0]);
        let irqs = gic_interrupts(&raw, 4, &["eventq", "timer"]).unwrap();
        assert_eq!((irqs[0].irq.intid(), irqs[0].irq.trigger), (106, Trigger::Edge));
        assert_eq!(irqs[1].irq.intid(), 29);
        assert_eq!(
            gic_interrupts(&cells(&[0, 0x4a, 1, 0, 1, 13, 4, 7]), 4, &["eventq", "timer"]),
            Err(InterruptError::Partitioned {
                index: 1,
                phandle: 7
            })
        );
        assert_eq!(
            gic_interrupts(&cells(&[0, 0x4a, 1]), 4, &["eventq"]),
            Err(InterruptError::Truncated {
                bytes: 12,
                cells: 4
            })
        );
        assert_eq!(
            gic_interrupts(&cells(&[0, 1, 1, 0, 0]), 5, &["eventq"]),
            Err(InterruptError::CellsPerInterrupt(5))
        );
    }

    #[test]
    fn a_name_given_twice_is_refused() {
        let raw = cells(&[0, 0x4a, 1, 0, 0x4b, 1, 0, 0x4c, 1]);
        let err = gic_interrupts(&raw, 3, &["eventq", "gerror", "eventq"]).unwrap_err();
        assert_eq!(
            err,
            InterruptError::DuplicateName {
                name: "eventq".into()
            }
        );
        assert!(err.to_string().contains("\"eventq\""), "{err}");
    }

    #[test]
    fn names_must_match_the_specifiers() {
        let raw = cells(&[0, 0x4a, 1, 0, 0x4d, 1]);
        assert_eq!(
            gic_interrupts(&raw, 3, &["eventq"]),
            Err(InterruptError::NamesMismatch {
                names: 1,
                interrupts: 2
            })
        );
        assert_eq!(
            gic_interrupts(&raw, 3, &[]),
            Err(InterruptError::NamesMismatch {
                names: 0,
                interrupts: 2
            })
        );
        assert_eq!(gic_interrupts(&[], 3, &[]), Ok(Vec::new()));
    }

    #[test]
    fn bad_type_trigger_or_number_names_the_specifier() {
        let names = ["a", "b"];
        let ok = [0, 1, 1];
        let refuse = |bad: [u32; 3]| {
            let mut w = ok.to_vec();
            w.extend_from_slice(&bad);
            gic_interrupts(&cells(&w), 3, &names).unwrap_err()
        };
        assert_eq!(
            refuse([2, 1, 1]),
            InterruptError::UnknownType { index: 1, cell: 2 }
        );
        for flags in [0, 2, 8, 3] {
            assert_eq!(
                refuse([0, 1, flags]),
                InterruptError::UnsupportedTrigger { index: 1, flags }
            );
        }
        assert_eq!(
            refuse([0, 988, 1]),
            InterruptError::NumberOutOfRange {
                index: 1,
                number: 988
            }
        );
        assert_eq!(
            refuse([1, 16, 4]),
            InterruptError::NumberOutOfRange {
                index: 1,
                number: 16
            }
        );
        // Every message names what is wrong.
        assert!(refuse([2, 1, 1]).to_string().contains("type 2"));
    }
}
