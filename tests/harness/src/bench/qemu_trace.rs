//! QEMU's own count of the SMMU commands of a benchmark boot, split by the guest's console.
//!
//! QEMU runs with `-trace smmuv3_cmdq_opcode -trace smmuv3_range_inval -trace
//! smmuv3_record_event -trace pl011_write -D FILE` ([`TRACE_ARGS`]). Every command QEMU's
//! SMMUv3 consumes and every byte the guest writes to the PL011's data register land in that one
//! file, in the order QEMU executed them: under `-icount` all vCPUs run in one thread, and both
//! events are handled synchronously in the MMIO write that causes them (a CMDQ_PROD write
//! consumes the queue before the store returns). The console is rebuilt from the trace itself,
//! so its marker lines split the commands exactly where the guest printed them:
//!
//! ```text
//!     # bench-window begin name=smmu.unmap smmu=mmio strategy=range pages=16
//!     # bench-window end name=smmu.unmap smmu=mmio strategy=range pages=16
//! ```
//!
//! A guest prints `begin` before it starts what it measures and `end` after it returned; what
//! QEMU saw in between is that window's. Everything else is counted per segment of the boot
//! (before the first benchmark, then by the last benchmark case that printed), which is how the
//! report says which commands happen outside the measured unmaps.
//!
//! A trace that cannot be split is an error, never an empty result: no console in it (the
//! `pl011_write` event was not enabled), a `TLBI_NH_VA` without its `smmuv3_range_inval` (range
//! or not is unknown), a window that does not close or closes another.

use std::collections::BTreeMap;
use std::fmt;

/// The trace events to give QEMU (each after `-trace`), then `-D FILE`.
pub const TRACE_EVENTS: [&str; 4] = [
    "smmuv3_cmdq_opcode",
    "smmuv3_range_inval",
    "smmuv3_record_event",
    "pl011_write",
];

/// Commands (and recorded events) by kind. Command kinds are the kernel's metric names where
/// the kernel counts that kind (`tlbi_va`, `tlbi_va_range`, `tlbi_asid`, `sync`), else QEMU's
/// opcode name in lower case (`cfgi_ste`, `tlbi_nsnh_all`, ...). Events the SMMU recorded are
/// `event:<QEMU's event name>`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts(pub BTreeMap<String, u64>);

impl Counts {
    pub fn get(&self, kind: &str) -> u64 {
        self.0.get(kind).copied().unwrap_or(0)
    }

    fn add(&mut self, kind: &str) {
        *self.0.entry(kind.to_string()).or_default() += 1;
    }

    /// Commands only (recorded events are not commands).
    pub fn commands(&self) -> u64 {
        self.0
            .iter()
            .filter(|(k, _)| !k.starts_with(EVENT_PREFIX))
            .map(|(_, n)| n)
            .sum()
    }

    /// Events the SMMU recorded (faults), of any kind.
    pub fn events(&self) -> u64 {
        self.0
            .iter()
            .filter(|(k, _)| k.starts_with(EVENT_PREFIX))
            .map(|(_, n)| n)
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for Counts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("none");
        }
        let parts: Vec<String> = self.0.iter().map(|(k, n)| format!("{n} {k}")).collect();
        f.write_str(&parts.join(", "))
    }
}

pub const EVENT_PREFIX: &str = "event:";

/// One measured window: the key the guest printed (`name` first, then its parameters) and
/// what QEMU saw in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Window {
    pub name: String,
    pub params: Vec<(String, String)>,
    pub counts: Counts,
}

impl Window {
    pub fn param(&self, key: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Commands outside every window, by segment of the boot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outside {
    /// `boot` (before the first benchmark line) or the benchmark case that printed last.
    pub segment: String,
    pub counts: Counts,
}

/// A parsed trace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QemuTrace {
    pub windows: Vec<Window>,
    /// In boot order, one entry per segment that saw commands.
    pub outside: Vec<Outside>,
    /// The console as the trace rebuilt it (UTF-8, `\r` dropped).
    pub console: String,
}

impl QemuTrace {
    /// Every window with `name` whose parameters include all of `params`.
    pub fn windows<'a>(
        &'a self,
        name: &'a str,
        params: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Window> {
        self.windows
            .iter()
            .filter(move |w| w.name == name && params.iter().all(|(k, v)| w.param(k) == Some(*v)))
    }

    /// Commands outside the windows, summed over the segments.
    pub fn outside_total(&self) -> Counts {
        let mut total = Counts::default();
        for o in &self.outside {
            for (k, n) in &o.counts.0 {
                *total.0.entry(k.clone()).or_default() += n;
            }
        }
        total
    }
}

/// A trace that cannot be split into windows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceError {
    pub line: usize,
    pub reason: String,
}

impl fmt::Display for TraceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "QEMU trace line {}: {}", self.line, self.reason)
    }
}

impl std::error::Error for TraceError {}

const WINDOW_BEGIN: &str = "# bench-window begin ";
const WINDOW_END: &str = "# bench-window end ";

/// The kernel's metric name for a QEMU opcode (`SMMU_CMD_TLBI_NH_ASID` -> `tlbi_asid`); `None`
/// for `TLBI_NH_VA`, which is per page or a range depending on its TG field.
fn kind_of(opcode: &str) -> Option<String> {
    let name = opcode.strip_prefix("SMMU_CMD_").unwrap_or(opcode);
    match name {
        "TLBI_NH_VA" => None,
        "TLBI_NH_ASID" => Some("tlbi_asid".into()),
        "SYNC" => Some("sync".into()),
        other => Some(other.to_ascii_lowercase()),
    }
}

/// The event name and its arguments, without QEMU's optional `pid@seconds:` prefix
/// (`-msg timestamp=on`).
fn split_event(line: &str) -> Option<(&str, &str)> {
    let line = match line.split_once(':') {
        Some((prefix, rest)) if prefix.contains('@') && !prefix.contains(' ') => rest,
        _ => line,
    };
    let (event, args) = line.split_once(' ').unwrap_or((line, ""));
    Some((event, args.trim()))
}

/// `key=value` out of a trace event's arguments.
fn arg<'a>(args: &'a str, key: &str) -> Option<&'a str> {
    args.split_whitespace()
        .find_map(|t| t.strip_prefix(key)?.strip_prefix('='))
}

/// The word after `key` in `key value key value` arguments (pl011's events).
fn word_after<'a>(args: &'a str, key: &str) -> Option<&'a str> {
    let mut words = args.split_whitespace();
    words.by_ref().find(|w| *w == key)?;
    words.next()
}

/// A `key=value ...` marker key: `name` first.
fn parse_key(text: &str) -> Option<(String, Vec<(String, String)>)> {
    let mut pairs = text.split_whitespace().map(|t| {
        t.split_once('=')
            .map(|(k, v)| (k.to_string(), v.to_string()))
    });
    let (k, name) = pairs.next()??;
    if k != "name" {
        return None;
    }
    let params: Option<Vec<_>> = pairs.collect();
    Some((name, params?))
}

/// The parser's state while it walks the trace.
struct Splitter {
    out: QemuTrace,
    /// The console line being received: bytes, decoded as UTF-8 once the line ends.
    line: Vec<u8>,
    open: Option<Window>,
    segment: String,
    /// A `TLBI_NH_VA` waiting for its first `smmuv3_range_inval`.
    pending_va: Option<usize>,
    at: usize,
}

impl Splitter {
    fn err(&self, reason: impl Into<String>) -> TraceError {
        TraceError {
            line: self.at,
            reason: reason.into(),
        }
    }

    fn count(&mut self, kind: &str) {
        match &mut self.open {
            Some(w) => w.counts.add(kind),
            None => {
                if self.out.outside.last().map(|o| &o.segment) != Some(&self.segment) {
                    self.out.outside.push(Outside {
                        segment: self.segment.clone(),
                        counts: Counts::default(),
                    });
                }
                let last = self.out.outside.last_mut().expect("pushed above");
                last.counts.add(kind);
            }
        }
    }

    fn console_byte(&mut self, byte: u8) -> Result<(), TraceError> {
        match byte {
            b'\n' => {
                let line = String::from_utf8_lossy(&std::mem::take(&mut self.line)).into_owned();
                self.out.console.push_str(&line);
                self.out.console.push('\n');
                self.console_line(line.trim())
            }
            b'\r' => Ok(()),
            b => {
                self.line.push(b);
                Ok(())
            }
        }
    }

    fn console_line(&mut self, line: &str) -> Result<(), TraceError> {
        if let Some(key) = line.strip_prefix(WINDOW_BEGIN) {
            if let Some(w) = &self.open {
                return Err(self.err(format!("window `{key}` begins inside `{}`", w.name)));
            }
            let (name, params) = parse_key(key)
                .ok_or_else(|| self.err(format!("window key `{key}` is not name=... k=v ...")))?;
            self.segment = name.clone();
            self.open = Some(Window {
                name,
                params,
                counts: Counts::default(),
            });
        } else if let Some(key) = line.strip_prefix(WINDOW_END) {
            let parsed = parse_key(key);
            let w = self
                .open
                .take()
                .ok_or_else(|| self.err(format!("window `{key}` ends but never began")))?;
            if parsed.as_ref() != Some(&(w.name.clone(), w.params.clone())) {
                return Err(self.err(format!("window `{key}` ends, but `{}` is open", w.name)));
            }
            self.out.windows.push(w);
        } else if let Some(rest) = line.strip_prefix("# bench name=") {
            self.segment = rest.split_whitespace().next().unwrap_or("").to_string();
        }
        Ok(())
    }

    fn event(&mut self, event: &str, args: &str) -> Result<(), TraceError> {
        match event {
            // `addr 0x000 value 0x0000005b reg DR`: only the data register carries bytes.
            "pl011_write" if word_after(args, "addr").is_some_and(is_zero) => {
                let value = word_after(args, "value")
                    .and_then(|v| u64::from_str_radix(v.trim_start_matches("0x"), 16).ok())
                    .ok_or_else(|| self.err(format!("pl011_write without a value: `{args}`")))?;
                self.console_byte(value as u8)?;
            }
            "smmuv3_cmdq_opcode" => {
                self.resolve_pending_va()?;
                let opcode = args.trim_start_matches("<---").trim();
                match kind_of(opcode) {
                    Some(kind) => self.count(&kind),
                    None => self.pending_va = Some(self.at),
                }
            }
            // QEMU traces one line per power-of-two piece of a range; the first one after the
            // opcode tells its TG: 0 = one page, otherwise a range (hw/arm/smmuv3.c,
            // smmuv3_range_inval).
            "smmuv3_range_inval" if self.pending_va.take().is_some() => {
                let tg = arg(args, "tg")
                    .ok_or_else(|| self.err(format!("smmuv3_range_inval without tg: `{args}`")))?;
                self.count(if tg == "0" {
                    "tlbi_va"
                } else {
                    "tlbi_va_range"
                });
            }
            "smmuv3_record_event" => {
                let kind = args.split_whitespace().next().unwrap_or("?");
                let kind = kind.strip_prefix("SMMU_EVT_").unwrap_or(kind);
                self.count(&format!("{EVENT_PREFIX}{kind}"));
            }
            _ => {}
        }
        Ok(())
    }

    fn resolve_pending_va(&self) -> Result<(), TraceError> {
        match self.pending_va {
            Some(at) => Err(TraceError {
                line: at,
                reason: "TLBI_NH_VA without smmuv3_range_inval after it: per page or range is \
                         unknown (trace smmuv3_range_inval too)"
                    .into(),
            }),
            None => Ok(()),
        }
    }
}

fn is_zero(v: &str) -> bool {
    u64::from_str_radix(v.trim_start_matches("0x"), 16) == Ok(0)
}

/// Splits a QEMU trace (the `-D` file) into windows and outside segments.
pub fn parse(text: &str) -> Result<QemuTrace, TraceError> {
    let mut s = Splitter {
        out: QemuTrace::default(),
        line: Vec::new(),
        open: None,
        segment: "boot".into(),
        pending_va: None,
        at: 0,
    };
    let mut console_events = 0usize;
    for (i, line) in text.lines().enumerate() {
        s.at = i + 1;
        let Some((event, args)) = split_event(line.trim()) else {
            continue;
        };
        if event == "pl011_write" {
            console_events += 1;
        }
        s.event(event, args)?;
    }
    s.at = text.lines().count();
    s.resolve_pending_va()?;
    if console_events == 0 {
        return Err(s.err("no pl011_write events: the console is not in the trace, so the commands cannot be split (trace pl011_write too)"));
    }
    if let Some(w) = &s.open {
        return Err(s.err(format!(
            "window `{}` never ended (the guest stopped inside it?)",
            w.name
        )));
    }
    s.out.console.push_str(&String::from_utf8_lossy(&s.line));
    Ok(s.out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The trace lines of `text` written to the console.
    fn console(text: &str) -> String {
        text.bytes()
            .map(|b| format!("pl011_write addr 0x000 value 0x{b:08x} reg DR\n"))
            .collect()
    }

    fn opcode(name: &str) -> String {
        format!("smmuv3_cmdq_opcode <--- SMMU_CMD_{name}\n")
    }

    fn inval(tg: u8, pages: u64) -> String {
        format!(
            "smmuv3_range_inval vmid=0 asid=1 addr=0x4000000000 tg={tg} num_pages=0x{pages:x} ttl=0 leaf=0 stage=1\n"
        )
    }

    const KEY: &str = "name=smmu.unmap smmu=mmio strategy=range pages=16";

    fn sample_trace() -> String {
        [
            opcode("CFGI_STE_RANGE"),
            opcode("TLBI_NSNH_ALL"),
            opcode("SYNC"),
            console("Shootdown\r\nKTAP version 1\n"),
            console(&format!("    # bench-window begin {KEY}\n")),
            opcode("TLBI_NH_VA"),
            inval(1, 16),
            inval(1, 8),
            opcode("TLBI_NH_VA"),
            inval(0, 1),
            opcode("SYNC"),
            console(&format!("    # bench-window end {KEY}\n")),
            console("    # bench name=smmu.unmap smmu=mmio metric=sync value=1 unit=commands\n"),
            opcode("TLBI_NH_ASID"),
            opcode("SYNC"),
            "smmuv3_record_event F_TRANSLATION sid=0x10\n".into(),
        ]
        .concat()
    }

    #[test]
    fn commands_fall_into_the_window_the_console_opened() {
        let t = parse(&sample_trace()).unwrap();
        assert_eq!(t.windows.len(), 1);
        let w = &t.windows[0];
        assert_eq!(w.name, "smmu.unmap");
        assert_eq!(w.param("strategy"), Some("range"));
        // The second range_inval line belongs to the same range command.
        assert_eq!(w.counts.to_string(), "1 sync, 1 tlbi_va, 1 tlbi_va_range");
        assert_eq!(w.counts.commands(), 3);
        assert!(t.console.contains("KTAP version 1\n"), "{}", t.console);
        assert!(!t.console.contains('\r'));
    }

    #[test]
    fn outside_commands_are_counted_by_segment() {
        let t = parse(&sample_trace()).unwrap();
        let segments: Vec<_> = t
            .outside
            .iter()
            .map(|o| (o.segment.as_str(), o.counts.to_string()))
            .collect();
        assert_eq!(
            segments,
            [
                (
                    "boot",
                    "1 cfgi_ste_range, 1 sync, 1 tlbi_nsnh_all".to_string()
                ),
                (
                    "smmu.unmap",
                    "1 event:F_TRANSLATION, 1 sync, 1 tlbi_asid".to_string()
                ),
            ]
        );
        assert_eq!(t.outside_total().commands(), 5);
        assert_eq!(t.outside_total().events(), 1);
    }

    #[test]
    fn timestamped_lines_are_read_too() {
        let stamped: String = sample_trace()
            .lines()
            .map(|l| format!("4242@1700000000.123456:{l}\n"))
            .collect();
        assert_eq!(parse(&stamped).unwrap(), parse(&sample_trace()).unwrap());
    }

    #[test]
    fn a_trace_that_cannot_be_split_is_an_error() {
        let no_console = [opcode("SYNC"), opcode("SYNC")].concat();
        assert!(parse(&no_console)
            .unwrap_err()
            .reason
            .contains("pl011_write"));
        let no_range = sample_trace().replace(&inval(0, 1), "");
        assert!(parse(&no_range).unwrap_err().reason.contains("range_inval"));
        let open = sample_trace().replace(&console(&format!("    # bench-window end {KEY}\n")), "");
        assert!(parse(&open).unwrap_err().reason.contains("never ended"));
        let other = sample_trace().replace(
            &console(&format!("    # bench-window end {KEY}\n")),
            &console("    # bench-window end name=smmu.unmap pages=1\n"),
        );
        assert!(parse(&other).unwrap_err().reason.contains("is open"));
        let nested = sample_trace().replace(
            &opcode("SYNC"),
            &console(&format!("# bench-window begin {KEY}\n")),
        );
        assert!(parse(&nested).is_err());
    }

    /// The window around `body`, with `KEY`.
    fn windowed(body: &str) -> String {
        [
            console(&format!("    # bench-window begin {KEY}\n")),
            body.to_string(),
            console(&format!("    # bench-window end {KEY}\n")),
        ]
        .concat()
    }

    /// The UART carries bytes; the log they are compared with is UTF-8 text. A character of
    /// several bytes is one character of the console, not one per byte.
    #[test]
    fn the_console_is_rebuilt_as_utf8() {
        let text = "Shootdown – 4 µs\n";
        assert_eq!(parse(&console(text)).unwrap().console, text);
        // Bytes that are not UTF-8 are replaced, and the markers after them still split.
        let garbage = [0xffu8, 0xfe, b'\n']
            .iter()
            .map(|b| format!("pl011_write addr 0x000 value 0x{b:08x} reg DR\n"))
            .collect::<String>();
        let t = parse(&(garbage + &windowed(&opcode("SYNC")))).unwrap();
        assert!(
            t.console.starts_with("\u{fffd}\u{fffd}\n"),
            "{:?}",
            t.console
        );
        assert_eq!(t.windows[0].counts.to_string(), "1 sync");
    }

    /// Another CPU's bytes inside a marker line break it: an error (a window that never began,
    /// never ended, or ends another), never a window with a wrong key. Whole lines printed
    /// between the markers (kernel messages, other results) change nothing.
    #[test]
    fn interleaved_console_output_is_an_error_or_harmless() {
        let begin = format!("    # bench-window begin {KEY}\n");
        // A line of k=v tokens, the worst case: the broken marker still parses as a key.
        let (head, tail) = begin.split_at(40);
        let split = sample_trace().replace(
            &console(&begin),
            &[console(head), console("x=1\n"), console(tail)].concat(),
        );
        assert!(parse(&split).unwrap_err().reason.contains("is open"));
        // A partial line (printk without a newline) before a marker hides it.
        let end = format!("    # bench-window end {KEY}\n");
        let hidden_end =
            sample_trace().replace(&console(&end), &console(&format!("[ 1.0] cut{end}")));
        assert!(parse(&hidden_end)
            .unwrap_err()
            .reason
            .contains("never ended"));
        let hidden_begin = sample_trace().replace(
            &console(&begin),
            &console(&format!("cut{}", begin.trim_start())),
        );
        assert!(parse(&hidden_begin)
            .unwrap_err()
            .reason
            .contains("never began"));
        // Whole lines between the markers.
        let between = sample_trace().replace(
            &inval(0, 1),
            &[
                inval(0, 1),
                console("[    1.000000] vfio-pci 0000:00:02.0: a warning\r\n"),
                console("    # bench name=smmu.iotlb_hit_rate smmu=model metric=hits value=1 unit=lookups\n"),
            ]
            .concat(),
        );
        assert_eq!(
            parse(&between).unwrap().windows,
            parse(&sample_trace()).unwrap().windows
        );
        // CR LF (a tty's ONLCR) ends a marker like LF.
        let crlf = sample_trace().replace(&console(&end), &console(&end.replace('\n', "\r\n")));
        assert_eq!(parse(&crlf).unwrap(), parse(&sample_trace()).unwrap());
    }

    /// A TLBI_NH_VA's TG comes from the range_inval lines QEMU writes while executing it, right
    /// after its opcode line. Without them (QEMU before 8.1 names the event
    /// smmuv3_s1_range_inval) the next command is an error, never a guess from another
    /// command's lines; TLBI_NH_VAA's lines never stand for a TLBI_NH_VA.
    #[test]
    fn range_inval_lines_belong_to_the_command_before_them() {
        let two_va = [opcode("TLBI_NH_VA"), opcode("TLBI_NH_VA"), inval(1, 16)].concat();
        assert!(parse(&windowed(&two_va))
            .unwrap_err()
            .reason
            .contains("range_inval"));
        let old_name = inval(0, 1).replace("smmuv3_range_inval", "smmuv3_s1_range_inval");
        let old = [opcode("TLBI_NH_VA"), old_name, opcode("SYNC")].concat();
        assert!(parse(&windowed(&old)).is_err());
        let vaa = [opcode("TLBI_NH_VAA"), inval(1, 16), opcode("SYNC")].concat();
        let t = parse(&windowed(&vaa)).unwrap();
        assert_eq!(t.windows[0].counts.to_string(), "1 sync, 1 tlbi_nh_vaa");
    }

    /// Lines exactly as QEMU 10.0.2 writes them (`-D`; `-msg timestamp=on` adds `pid@time:`).
    #[test]
    fn qemu_10_lines_are_read() {
        let lines = "smmuv3_cmdq_opcode <--- SMMU_CMD_TLBI_NH_VA\n\
            smmuv3_range_inval vmid=-1 asid=1 addr=0x4000000000 tg=1 num_pages=0x10 ttl=0 leaf=1 stage=1\n\
            31940@1796605182.189211:smmuv3_cmdq_opcode <--- SMMU_CMD_SYNC\n\
            smmuv3_record_event SMMU_EVT_F_TRANSLATION sid=0x10\n";
        let t = parse(&windowed(lines)).unwrap();
        assert_eq!(
            t.windows[0].counts.to_string(),
            "1 event:F_TRANSLATION, 1 sync, 1 tlbi_va_range"
        );
    }

    /// A trace cut off inside a window (QEMU killed) is an error; so is an empty one. A boot
    /// without markers has no windows (the goal then says not measured).
    #[test]
    fn cut_empty_and_unmarked_traces() {
        let text = sample_trace();
        let cut = &text[..text.find("SMMU_CMD_TLBI_NH_VA").unwrap() + 12];
        assert!(parse(cut).unwrap_err().reason.contains("never ended"));
        assert!(parse("").unwrap_err().reason.contains("pl011_write"));
        let unmarked = [console("KTAP version 1\n"), opcode("SYNC")].concat();
        assert!(parse(&unmarked).unwrap().windows.is_empty());
    }
}
