//! What a QEMU command line gives the guest (CPUs, memory), checked against the kernel's boot
//! banner. The kernel's own tests only trust the device tree and the hardware; whether the tree
//! says what QEMU was told is the launcher's question, so the harness asks it here.

use crate::ktap::Failure;

/// The machine a command line asks for. `None`: the line does not say (machine default), or
/// the device tree is not QEMU's (`-dtb`), so the tree need not match.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Machine {
    pub cpus: Option<u64>,
    pub memory_mib: Option<u64>,
}

impl Machine {
    /// From a QEMU argument list (program name or not): the last `-smp` and `-m` win, as in
    /// QEMU. Memory is left out when `-dtb` hands the guest a tree QEMU did not write.
    pub fn from_args(args: &[String]) -> Self {
        let last = |flag: &str| {
            args.windows(2)
                .filter(|w| w[0] == flag)
                .map(|w| w[1].as_str())
                .next_back()
        };
        let own_tree = !args.iter().any(|a| a == "-dtb");
        Self {
            cpus: last("-smp").and_then(smp_cpus),
            memory_mib: last("-m").and_then(memory_mib).filter(|_| own_tree),
        }
    }

    /// What the banner (`cpus N online of M in the device tree`, `memory N MiB ...`) says
    /// against this machine; one failure per mismatch (a line the banner lacks is not compared).
    pub fn check_banner(&self, preamble: &[String]) -> Vec<Failure> {
        let mut out = Vec::new();
        // The banner's own lines (firmware before it may print anything). Without a banner
        // there is nothing to compare (the run fails or passes on its KTAP).
        let Some(start) = preamble.iter().position(|l| l.starts_with("Shootdown ")) else {
            return out;
        };
        let field = |name: &str| {
            preamble[start..].iter().find_map(|l| {
                let rest = l.trim_start().strip_prefix(name)?;
                Some(
                    rest.split_whitespace()
                        .map(str::to_string)
                        .collect::<Vec<_>>(),
                )
            })
        };
        let mut fail = |message: String| {
            out.push(Failure {
                test: "(machine)".into(),
                message,
            })
        };
        if let Some(want) = self.cpus {
            match field("cpus") {
                // ["2", "online", "of", "2", "in", ...]
                Some(w) if w.len() > 3 => {
                    let (online, tree) = (w[0].parse::<u64>().ok(), w[3].parse::<u64>().ok());
                    if tree != Some(want) || online != Some(want) {
                        fail(format!(
                            "QEMU was given {want} CPUs; the kernel found {} in the device tree \
                             and brought {} online",
                            w[3], w[0]
                        ));
                    }
                }
                // An older or foreign banner: nothing to compare.
                _ => {}
            }
        }
        if let Some(want) = self.memory_mib {
            match field("memory") {
                Some(w) if w[0].parse::<u64>().ok() == Some(want) => {}
                Some(w) => fail(format!(
                    "QEMU was given {want} MiB of RAM; the device tree describes {} MiB",
                    w.first().map_or("no", String::as_str)
                )),
                None => {}
            }
        }
        out
    }
}

/// `-smp 4`, `-smp 4,sockets=1`, `-smp cpus=4,maxcpus=8`.
fn smp_cpus(v: &str) -> Option<u64> {
    v.split(',').find_map(|part| match part.split_once('=') {
        Some(("cpus", n)) => n.parse().ok(),
        Some(_) => None,
        None => part.parse().ok(),
    })
}

/// `-m 512` (MiB), `-m 1G`, `-m 2048M`, `-m size=1G,slots=2,maxmem=4G`.
fn memory_mib(v: &str) -> Option<u64> {
    let size = v.split(',').find_map(|part| match part.split_once('=') {
        Some(("size", s)) => Some(s),
        Some(_) => None,
        None => Some(part),
    })?;
    let (digits, unit) = size.split_at(
        size.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(size.len()),
    );
    let n: u64 = digits.parse().ok()?;
    match unit {
        "" | "M" | "m" | "MiB" => Some(n),
        "G" | "g" | "GiB" => n.checked_mul(1024),
        "T" | "t" => n.checked_mul(1024 * 1024),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Vec<String> {
        line.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn reads_smp_and_memory_as_qemu_does() {
        let m = Machine::from_args(&args(
            "qemu -M virt -smp 2 -m 1G -smp cpus=3,maxcpus=8 -m 512",
        ));
        assert_eq!((m.cpus, m.memory_mib), (Some(3), Some(512)));
        let m = Machine::from_args(&args("-m size=2G,slots=2,maxmem=4G -smp 4,sockets=1"));
        assert_eq!((m.cpus, m.memory_mib), (Some(4), Some(2048)));
        assert_eq!(Machine::from_args(&args("-m 16G")).memory_mib, Some(16384));
        assert_eq!(Machine::from_args(&args("-m 768M")).memory_mib, Some(768));
        assert_eq!(Machine::from_args(&args("-M raspi4b")), Machine::default());
        let pi = Machine::from_args(&args("-m 2G -dtb pi.dtb -smp 4"));
        assert_eq!((pi.cpus, pi.memory_mib), (Some(4), None));
        assert_eq!(Machine::from_args(&args("-m lots")).memory_mib, None);
    }

    #[test]
    fn checks_the_banner() {
        let banner: Vec<String> = [
            "Shootdown 0.1.0 (aarch64)",
            "  cpus     2 online of 2 in the device tree",
            "  memory   1024 MiB in 1 range(s); 946 MiB in page frames",
        ]
        .map(String::from)
        .to_vec();
        let m = |cpus, memory_mib| Machine { cpus, memory_mib };
        assert!(m(Some(2), Some(1024)).check_banner(&banner).is_empty());
        assert!(m(None, None).check_banner(&banner).is_empty());
        let f = m(Some(3), Some(2048)).check_banner(&banner);
        assert_eq!(f.len(), 2, "{f:?}");
        assert!(f[0].message.contains("given 3 CPUs"), "{f:?}");
        assert!(f[1].message.contains("2048 MiB"), "{f:?}");
        assert!(
            m(Some(1), None).check_banner(&[]).is_empty(),
            "no banner at all"
        );
        assert!(
            m(Some(1), None).check_banner(&banner[..1]).is_empty(),
            "no cpus line"
        );
    }
}
