//! Kernel traces: the `# T` lines the kernel prints at exit with `trace=1` (see the kernel's
//! `trace` module), turned into Chrome/Perfetto trace-event JSON, and checked.
//!
//! One track per CPU; the kernel's begin/end pairs become nested slices ("munmap",
//! "arch_invalidate_secondary_tlbs", "CMD_SYNC", "DMA"), everything else instant events. Open
//! the file in Perfetto (ui.perfetto.dev) or `chrome://tracing`.

use std::fmt::Write as _;

/// A record kind, by the number the kernel prints (kernel `trace::Kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    UnmapBegin,
    UnmapEnd,
    ProtectBegin,
    ProtectEnd,
    NotifierStart,
    NotifierEnd,
    CpuTlbi,
    SecondaryBegin,
    SecondaryEnd,
    SmmuCommand,
    CmdSyncBegin,
    CmdSyncEnd,
    DmaBegin,
    DmaEnd,
    Fault,
}

impl Kind {
    fn from_number(n: u64) -> Option<Kind> {
        use Kind::*;
        Some(match n {
            1 => UnmapBegin,
            2 => UnmapEnd,
            3 => ProtectBegin,
            4 => ProtectEnd,
            5 => NotifierStart,
            6 => NotifierEnd,
            7 => CpuTlbi,
            8 => SecondaryBegin,
            9 => SecondaryEnd,
            10 => SmmuCommand,
            11 => CmdSyncBegin,
            12 => CmdSyncEnd,
            13 => DmaBegin,
            14 => DmaEnd,
            15 => Fault,
            _ => return None,
        })
    }

    /// (slice name, phase): `B`/`E` for begin/end pairs, `i` for instants.
    fn event(self) -> (&'static str, char) {
        use Kind::*;
        match self {
            UnmapBegin => ("munmap", 'B'),
            UnmapEnd => ("munmap", 'E'),
            ProtectBegin => ("mprotect", 'B'),
            ProtectEnd => ("mprotect", 'E'),
            NotifierStart => ("invalidate_range_start", 'i'),
            NotifierEnd => ("invalidate_range_end", 'i'),
            CpuTlbi => ("CPU TLBI", 'i'),
            SecondaryBegin => ("arch_invalidate_secondary_tlbs", 'B'),
            SecondaryEnd => ("arch_invalidate_secondary_tlbs", 'E'),
            SmmuCommand => ("SMMU command", 'i'),
            CmdSyncBegin => ("CMD_SYNC", 'B'),
            CmdSyncEnd => ("CMD_SYNC", 'E'),
            DmaBegin => ("DMA", 'B'),
            DmaEnd => ("DMA", 'E'),
            Fault => ("IOMMU fault", 'i'),
        }
    }
}

/// One record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    pub cpu: u64,
    pub ts_ns: u64,
    pub kind: Kind,
    pub a: u64,
    pub b: u64,
}

/// A whole trace.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Trace {
    pub records: Vec<Record>,
}

/// The console held no trace, or a malformed one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceError(pub String);

impl std::fmt::Display for TraceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Extracts the trace between `# trace-begin` and `# trace-end` from a console log.
pub fn parse(console: &str) -> Result<Trace, TraceError> {
    let mut lines = console.lines().map(str::trim);
    if !lines.any(|l| l.starts_with("# trace-begin")) {
        return Err(TraceError(
            "no trace in the output (boot with trace=1; the kernel prints it at exit)".into(),
        ));
    }
    let mut trace = Trace::default();
    for line in lines {
        if line.starts_with("# trace-end") {
            return Ok(trace);
        }
        let Some(rest) = line.strip_prefix("# T ") else {
            continue; // other console output interleaved
        };
        let fields: Vec<u64> = rest
            .split_whitespace()
            .map(|f| u64::from_str_radix(f, 16))
            .collect::<Result<_, _>>()
            .map_err(|e| TraceError(format!("bad trace line {line:?}: {e}")))?;
        let [cpu, ts_ns, kind, a, b] = fields[..] else {
            return Err(TraceError(format!(
                "bad trace line {line:?}: expected 5 fields"
            )));
        };
        let kind = Kind::from_number(kind)
            .ok_or_else(|| TraceError(format!("bad trace line {line:?}: unknown kind {kind}")))?;
        trace.records.push(Record {
            cpu,
            ts_ns,
            kind,
            a,
            b,
        });
    }
    Err(TraceError(
        "the trace has no `# trace-end` (output cut short?)".into(),
    ))
}

/// Chrome trace-event JSON (the "JSON Object Format": `{"traceEvents": [...]}`).
pub fn chrome_json(trace: &Trace) -> String {
    let mut out = String::from("{\"displayTimeUnit\":\"ns\",\"traceEvents\":[\n");
    let mut cpus: Vec<u64> = trace.records.iter().map(|r| r.cpu).collect();
    cpus.sort_unstable();
    cpus.dedup();
    let mut first = true;
    let mut sep = |out: &mut String| {
        if !first {
            out.push_str(",\n");
        }
        first = false;
    };
    for cpu in &cpus {
        sep(&mut out);
        let _ = write!(
            out,
            "{{\"name\":\"thread_name\",\"ph\":\"M\",\"pid\":0,\"tid\":{cpu},\"args\":{{\"name\":\"CPU {cpu}\"}}}}"
        );
    }
    for r in &trace.records {
        let (name, ph) = r.kind.event();
        sep(&mut out);
        // Timestamps are in microseconds; keep the nanoseconds as decimals.
        let _ = write!(
            out,
            "{{\"name\":\"{name}\",\"ph\":\"{ph}\",\"ts\":{}.{:03},\"pid\":0,\"tid\":{}",
            r.ts_ns / 1000,
            r.ts_ns % 1000,
            r.cpu
        );
        if ph == 'i' {
            out.push_str(",\"s\":\"t\"");
        }
        let _ = write!(out, ",\"args\":{{{}}}}}", args(r));
    }
    out.push_str("\n]}\n");
    out
}

fn args(r: &Record) -> String {
    use Kind::*;
    match r.kind {
        SmmuCommand => format!("\"opcode\":\"{:#04x}\",\"dword0\":\"{:#018x}\"", r.a, r.b),
        CmdSyncBegin => format!("\"index\":{}", r.a),
        CmdSyncEnd => format!("\"index\":{},\"ok\":{}", r.a, r.b == 0),
        DmaBegin => format!(
            "\"address\":\"{:#x}\",\"length\":{},\"device_writes\":{}",
            r.a,
            r.b & !(1 << 63),
            r.b >> 63 == 1
        ),
        DmaEnd => format!("\"address\":\"{:#x}\",\"faulted\":{}", r.a, r.b != 0),
        Fault => format!(
            "\"address\":\"{:#x}\",\"stream\":\"{:#x}\",\"type\":\"{:#04x}\"",
            r.a,
            r.b >> 8,
            r.b & 0xff
        ),
        _ => format!("\"start\":\"{:#x}\",\"end\":\"{:#x}\"", r.a, r.b),
    }
}

/// Checks the property the trace exists to show: on every CPU, each unmap that returned had,
/// between its begin and its end, a completed secondary-TLB invalidation covering its range.
/// Returns how many unmaps were checked.
pub fn check_unmaps(trace: &Trace) -> Result<usize, String> {
    /// An unmap that began and has not ended: CPU, range, the secondary invalidations since.
    struct Open {
        cpu: u64,
        start: u64,
        end: u64,
        invalidated: Vec<(u64, u64)>,
    }
    let mut checked = 0;
    let mut open: Vec<Open> = Vec::new();
    for r in &trace.records {
        match r.kind {
            Kind::UnmapBegin => open.push(Open {
                cpu: r.cpu,
                start: r.a,
                end: r.b,
                invalidated: Vec::new(),
            }),
            Kind::SecondaryEnd => {
                for o in open.iter_mut().filter(|o| o.cpu == r.cpu) {
                    o.invalidated.push((r.a, r.b));
                }
            }
            Kind::UnmapEnd => {
                let Some(i) = open
                    .iter()
                    .rposition(|o| o.cpu == r.cpu && o.start == r.a && o.end == r.b)
                else {
                    return Err(format!(
                        "CPU {}: unmap [{:#x}, {:#x}) ended without beginning",
                        r.cpu, r.a, r.b
                    ));
                };
                let Open {
                    start,
                    end,
                    invalidated: done,
                    ..
                } = open.remove(i);
                if !covered(start, end, &done) {
                    return Err(format!(
                        "CPU {}: unmap [{start:#x}, {end:#x}) returned before the secondary TLBs \
                         were invalidated for all of it (invalidated: {done:x?})",
                        r.cpu
                    ));
                }
                checked += 1;
            }
            _ => {}
        }
    }
    Ok(checked)
}

/// True if the union of `parts` covers `[start, end)`.
fn covered(start: u64, end: u64, parts: &[(u64, u64)]) -> bool {
    let mut parts = parts.to_vec();
    parts.sort_unstable();
    let mut at = start;
    for (s, e) in parts {
        if s <= at && e > at {
            at = e;
        }
    }
    at >= end
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "\
boot noise
# trace-begin 6 records, clock 1000000000 Hz
# T 0 10 1 1000 3000
# T 1 15 d 5000 1000
# T 0 20 8 1000 3000
# T 0 30 9 1000 3000
# T 0 40 2 1000 3000
# T 1 50 e 5000 0
# trace-end
# shootdown: exit 0
";

    #[test]
    fn parses_and_converts_to_chrome_json() {
        let t = parse(LOG).unwrap();
        assert_eq!(t.records.len(), 6);
        assert_eq!(t.records[1].kind, Kind::DmaBegin);
        let json = chrome_json(&t);
        assert!(json.starts_with("{\"displayTimeUnit\":\"ns\",\"traceEvents\":["));
        assert!(json.contains("\"name\":\"munmap\",\"ph\":\"B\",\"ts\":0.016,\"pid\":0,\"tid\":0"));
        assert!(json.contains("\"name\":\"thread_name\",\"ph\":\"M\",\"pid\":0,\"tid\":1"));
        assert!(json.contains("\"device_writes\":false"));
        // Balanced braces and brackets (the integration test parses it with a real parser).
        assert_eq!(json.matches('{').count(), json.matches('}').count());
        assert_eq!(check_unmaps(&t), Ok(1));
    }

    #[test]
    fn an_unmap_returning_before_its_invalidation_is_caught() {
        let bad = LOG.replace("# T 0 30 9 1000 3000\n", "# T 0 30 9 1000 2000\n");
        let e = check_unmaps(&parse(&bad).unwrap()).unwrap_err();
        assert!(e.contains("returned before the secondary TLBs"), "{e}");
        let none = LOG.replace("# T 0 20 8 1000 3000\n# T 0 30 9 1000 3000\n", "");
        assert!(check_unmaps(&parse(&none).unwrap()).is_err());
    }

    #[test]
    fn missing_or_malformed_traces_are_errors() {
        assert!(parse("no trace here").is_err());
        assert!(
            parse("# trace-begin\n# T 0 1 1 2 3\n").is_err(),
            "cut short"
        );
        assert!(
            parse("# trace-begin\n# T 0 1 99 2 3\n# trace-end").is_err(),
            "unknown kind"
        );
        assert!(
            parse("# trace-begin\n# T 0 zz 1 2 3\n# trace-end").is_err(),
            "not hex"
        );
        assert!(
            parse("# trace-begin\n# T 0 1 1 2\n# trace-end").is_err(),
            "too few fields"
        );
    }
}
