//! KTAP version 1 output (Linux `Documentation/dev-tools/ktap.rst`): version lines, plans,
//! result lines with directives, diagnostics, and two-space indentation for subtests.

use core::fmt::{self, Write};

/// The outcome of one test as KTAP reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// `ok`
    Pass,
    /// `not ok`
    Fail,
    /// `ok ... # SKIP`
    Skip,
}

/// Writes KTAP to any `fmt::Write` sink at a nesting level.
pub struct KtapWriter<W: Write> {
    out: W,
    depth: usize,
}

impl<W: Write> KtapWriter<W> {
    /// A writer at the top level.
    pub fn new(out: W) -> Self {
        Self { out, depth: 0 }
    }

    /// Nests one level (subtests of a suite).
    pub fn enter(&mut self) {
        self.depth += 1;
    }

    /// Returns to the parent level.
    pub fn leave(&mut self) {
        self.depth = self.depth.saturating_sub(1);
    }

    fn indent(&mut self) -> fmt::Result {
        for _ in 0..self.depth {
            self.out.write_str("  ")?;
        }
        Ok(())
    }

    /// `KTAP version 1` followed by the plan `1..n`.
    pub fn header(&mut self, n: usize) -> fmt::Result {
        self.indent()?;
        self.out.write_str("KTAP version 1\n")?;
        self.indent()?;
        writeln!(self.out, "1..{n}")
    }

    /// A nested suite's header in KUnit's order: `KTAP version 1`, `# Subtest: name`, then the
    /// plan `1..n`. Linux's own parser (`tools/testing/kunit/kunit_parser.py`) reads the
    /// subtest line only between the version line and the plan; after the plan it counts the
    /// suite's cases wrong.
    pub fn suite_header(&mut self, name: &str, n: usize) -> fmt::Result {
        self.indent()?;
        self.out.write_str("KTAP version 1\n")?;
        self.indent()?;
        writeln!(self.out, "# Subtest: {name}")?;
        self.indent()?;
        writeln!(self.out, "1..{n}")
    }

    /// A diagnostic line, one `# ` line per line of `text`.
    pub fn diagnostic(&mut self, text: &str) -> fmt::Result {
        for line in text.lines() {
            self.indent()?;
            writeln!(self.out, "# {line}")?;
        }
        Ok(())
    }

    /// A result line. `#` in names or reasons is replaced: KTAP descriptions cannot contain it.
    pub fn result(
        &mut self,
        number: usize,
        name: &str,
        outcome: Outcome,
        reason: Option<&str>,
    ) -> fmt::Result {
        self.indent()?;
        let word = if outcome == Outcome::Fail {
            "not ok"
        } else {
            "ok"
        };
        write!(self.out, "{word} {number} ")?;
        write_clean(&mut self.out, name)?;
        if outcome == Outcome::Skip {
            self.out.write_str(" # SKIP")?;
            if let Some(r) = reason {
                self.out.write_char(' ')?;
                write_clean(&mut self.out, r)?;
            }
        }
        self.out.write_char('\n')
    }

    /// Gives the sink back.
    pub fn into_inner(self) -> W {
        self.out
    }
}

fn write_clean<W: Write>(out: &mut W, s: &str) -> fmt::Result {
    for c in s.chars() {
        out.write_char(match c {
            '#' => '_',
            '\n' | '\r' => ' ',
            c => c,
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::String;

    #[test]
    fn nested_output_is_ktap_v1() {
        let mut w = KtapWriter::new(String::new());
        w.header(1).unwrap();
        w.enter();
        w.suite_header("boot", 2).unwrap();
        w.result(1, "reached", Outcome::Pass, None).unwrap();
        w.diagnostic("expected 4\ngot 3").unwrap();
        w.result(2, "cpus #online", Outcome::Fail, None).unwrap();
        w.leave();
        w.result(1, "boot", Outcome::Fail, None).unwrap();
        w.result(2, "gic", Outcome::Skip, Some("no GIC # here"))
            .unwrap();
        let out = w.into_inner();
        assert_eq!(
            out,
            "KTAP version 1\n1..1\n  KTAP version 1\n  # Subtest: boot\n  1..2\n  ok 1 reached\n  # expected 4\n  # got 3\n  not ok 2 cpus _online\nnot ok 1 boot\nok 2 gic # SKIP no GIC _ here\n"
        );
    }
}
