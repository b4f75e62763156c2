//! KTAP version 1 parser (Linux `Documentation/dev-tools/ktap.rst`).
//!
//! The kernel's console is noisy: boot log lines come before the test output and other CPUs may
//! print between result lines. The parser therefore works like kunit.py's
//! `extract_tap_lines`/`parse_test`:
//!
//! - Everything before the first `KTAP version N` (or `TAP version 13/14`) line is boot log. The
//!   text in front of `KTAP` on that line (a timestamp, a UART prefix) is taken as a per-line
//!   prefix and that many characters are stripped from every later line.
//! - Structure comes from indentation, not from counting: a `KTAP version` or `# Subtest:` line
//!   indented deeper than the open test starts a subtest block; a result line at the indentation
//!   of an enclosing block closes the blocks above it. Two-space (ktap.rst) and four-space
//!   (KUnit) indentation both work because only "deeper / same / shallower" matters.
//! - Lines that are neither version, plan, result nor diagnostic are "unknown lines": allowed,
//!   kept as the log of the test that reports next, never an error.
//!
//! The verdict is strict where KTAP lets a crash hide: a plan entry without a result line is a
//! crashed test (named by its number and the test before it), a result number out of sequence
//! and a result count above the plan are format errors, `Bail out!` (TAP13, printed by the
//! kernel's panic handler) fails the run naming the test that was running, and no KTAP at all
//! is a failure.
//!
//! The parser is incremental ([`Parser::push`]) so that a runner can watch the stream for
//! progress (per-test timeouts, early end of a serial session) and describe where it stopped
//! ([`Parser::position`]); [`parse`] is the one-shot form.

use std::fmt;
use std::time::Duration;

/// A result-line directive (the word after ` # `), ktap.rst "Test case result lines".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Directive {
    /// Test skipped (with `ok` or `not ok`).
    Skip,
    /// Test not expected to pass yet; a `not ok` is not a failure.
    Todo,
    /// Test expected to fail (kselftest); a `not ok` is not a failure.
    XFail,
    /// Test timed out (with `not ok`).
    Timeout,
    /// Test could not run because of an error given in the diagnostic data (with `not ok`).
    Error,
}

impl Directive {
    fn parse(word: &str) -> Option<Self> {
        match word.to_ascii_uppercase().as_str() {
            "SKIP" => Some(Self::Skip),
            "TODO" => Some(Self::Todo),
            "XFAIL" => Some(Self::XFail),
            "TIMEOUT" => Some(Self::Timeout),
            "ERROR" => Some(Self::Error),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Skip => "SKIP",
            Self::Todo => "TODO",
            Self::XFail => "XFAIL",
            Self::Timeout => "TIMEOUT",
            Self::Error => "ERROR",
        }
    }
}

/// How a test ended, as the harness counts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Outcome {
    Passed,
    Skipped,
    /// `not ok` with a TODO or XFAIL directive: a known failure, not counted against the run.
    ExpectedFail,
    Failed,
    /// No result line where the plan promised one (the kernel died, hung or bailed out).
    Crashed,
}

impl Outcome {
    pub fn label(self) -> &'static str {
        match self {
            Self::Passed => "PASSED",
            Self::Skipped => "SKIPPED",
            Self::ExpectedFail => "XFAIL",
            Self::Failed => "FAILED",
            Self::Crashed => "CRASHED",
        }
    }

    pub fn is_failure(self) -> bool {
        matches!(self, Self::Failed | Self::Crashed)
    }
}

/// One test (a case, or a suite with its subtests) as reported, or as missing.
#[derive(Clone, Debug, PartialEq)]
pub struct TestResult {
    /// Its number in the parent's plan (1-based).
    pub number: usize,
    /// Description from the result line, else the `# Subtest:` name, else `#<number>`.
    pub name: String,
    pub outcome: Outcome,
    /// `Some(true)` for `ok`, `Some(false)` for `not ok`, `None` when no result line came.
    pub reported_ok: Option<bool>,
    pub directive: Option<Directive>,
    /// Text after the directive (a skip reason), or after ` # ` when there is no directive.
    pub comment: String,
    /// Diagnostic and unknown lines printed since the previous result at this level.
    pub log: Vec<String>,
    pub subtests: Vec<TestResult>,
    /// The subtests' plan, for a parent.
    pub plan: Option<usize>,
    /// Time from the previous result (or the block start) to this result, when lines are timed.
    pub duration: Option<Duration>,
    /// 1-based input line of the result line.
    pub line: Option<usize>,
    /// Why the harness judged differently from (or without) the result line.
    pub note: Option<String>,
}

impl TestResult {
    fn missing(number: usize, note: String) -> Self {
        Self {
            number,
            name: format!("#{number}"),
            outcome: Outcome::Crashed,
            reported_ok: None,
            directive: None,
            comment: String::new(),
            log: Vec::new(),
            subtests: Vec::new(),
            plan: None,
            duration: None,
            line: None,
            note: Some(note),
        }
    }

    /// A test without subtests is counted as one test (a suite with an empty plan, e.g.
    /// `1..0 # SKIP`, counts as one skipped test).
    pub fn is_leaf(&self) -> bool {
        self.subtests.is_empty()
    }

    /// Calls `f(path, test)` on this test and all subtests, depth first, parents first.
    pub fn walk<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(&str, &'a TestResult)) {
        let path = join_path(prefix, &self.name);
        f(&path, self);
        for sub in &self.subtests {
            sub.walk(&path, f);
        }
    }
}

fn join_path(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

/// A format error: the output is not valid KTAP in a way that may hide a result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub line: usize,
    pub message: String,
}

/// A `Bail out!` line: the kernel gave up (panic).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BailOut {
    pub line: usize,
    pub reason: String,
    /// The test that was running, as [`Parser::position`] describes it.
    pub running: String,
}

/// Leaf-test counts, as in kunit.py's summary line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub passed: usize,
    pub failed: usize,
    pub skipped: usize,
    pub xfail: usize,
    pub crashed: usize,
    /// KTAP format errors.
    pub errors: usize,
}

impl Counts {
    pub fn total(&self) -> usize {
        self.passed + self.failed + self.skipped + self.xfail + self.crashed
    }

    fn add(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Passed => self.passed += 1,
            Outcome::Failed => self.failed += 1,
            Outcome::Skipped => self.skipped += 1,
            Outcome::ExpectedFail => self.xfail += 1,
            Outcome::Crashed => self.crashed += 1,
        }
    }

    pub fn of(test: &TestResult) -> Self {
        let mut counts = Self::default();
        test.walk("", &mut |_, t| {
            if t.is_leaf() {
                counts.add(t.outcome);
            }
        });
        counts
    }
}

impl fmt::Display for Counts {
    /// `passed: X, failed: Y, skipped: Z` plus the other kinds when non-zero.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "passed: {}, failed: {}, skipped: {}",
            self.passed, self.failed, self.skipped
        )?;
        for (label, n) in [
            ("xfail", self.xfail),
            ("crashed", self.crashed),
            ("errors", self.errors),
        ] {
            if n > 0 {
                write!(f, ", {label}: {n}")?;
            }
        }
        Ok(())
    }
}

/// One reason the run fails, naming the test (dotted path `suite.case`) or the place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub test: String,
    pub message: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.test, self.message)
    }
}

/// A parsed transcript.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Document {
    /// A `KTAP version` / `TAP version` line was seen.
    pub ktap_found: bool,
    /// The first version line, e.g. `KTAP version 1`.
    pub version: Option<String>,
    /// Top-level plan (`1..N`: the number of suites).
    pub plan: Option<usize>,
    /// Directive text on the top-level plan (`1..0 # SKIP reason`).
    pub plan_comment: String,
    /// Top-level tests (suites).
    pub tests: Vec<TestResult>,
    pub problems: Vec<Problem>,
    pub bail_out: Option<BailOut>,
    /// From a `# seed=<n>` diagnostic.
    pub seed: Option<String>,
    /// From the final `# shootdown: exit <code>` line.
    pub exit_code: Option<i32>,
    /// The top-level plan was satisfied and every block closed.
    pub complete: bool,
    /// Lines before the first version line (the boot log).
    pub preamble: Vec<String>,
    /// Top-level lines after the last suite result, and anything after the document ended.
    pub trailer: Vec<String>,
}

impl Document {
    /// Counts over leaf tests, plus format errors.
    pub fn counts(&self) -> Counts {
        let mut counts = Counts::default();
        for test in &self.tests {
            test.walk("", &mut |_, t| {
                if t.is_leaf() {
                    counts.add(t.outcome);
                }
            });
        }
        counts.errors = self.problems.len();
        counts
    }

    /// Every reason this transcript fails, each naming the test or the place. Empty = pass.
    pub fn failures(&self) -> Vec<Failure> {
        let mut out = Vec::new();
        if !self.ktap_found {
            out.push(Failure {
                test: "(boot)".into(),
                message: "no KTAP output: the kernel never printed a `KTAP version` line".into(),
            });
        }
        if let Some(bail) = &self.bail_out {
            out.push(Failure {
                test: bail.running.clone(),
                message: format!("Bail out! {} (line {})", bail.reason, bail.line),
            });
        }
        for test in &self.tests {
            test.walk("", &mut |path, t| {
                if let Some(message) = failure_message(t) {
                    out.push(Failure {
                        test: path.to_string(),
                        message,
                    });
                }
            });
        }
        for problem in &self.problems {
            out.push(Failure {
                test: format!("(KTAP line {})", problem.line),
                message: problem.message.clone(),
            });
        }
        let skipped_all = self.plan_comment.to_ascii_uppercase().starts_with("SKIP");
        if self.ktap_found && self.bail_out.is_none() && self.tests.is_empty() && !skipped_all {
            out.push(Failure {
                test: "(plan)".into(),
                message: "no tests ran (does the ktest= filter match anything?)".into(),
            });
        }
        if let Some(code) = self.exit_code.filter(|&c| c != 0) {
            out.push(Failure {
                test: "(kernel)".into(),
                message: format!("the kernel reported exit status {code}"),
            });
        }
        out
    }

    pub fn passed(&self) -> bool {
        self.failures().is_empty()
    }
}

/// Why one test fails, or `None`. A parent that failed only because a subtest failed is not
/// reported again (its subtest is).
fn failure_message(t: &TestResult) -> Option<String> {
    if !t.outcome.is_failure() {
        return None;
    }
    if !t.is_leaf() && t.subtests.iter().any(|s| s.outcome.is_failure()) {
        return None;
    }
    let mut msg = match (t.reported_ok, t.directive) {
        (None, _) => t.note.clone().unwrap_or_else(|| "no result line".into()),
        (Some(_), Some(d @ (Directive::Timeout | Directive::Error))) => {
            format!("not ok # {}", d.as_str())
        }
        (Some(_), _) => "not ok".into(),
    };
    if !t.comment.is_empty() && t.reported_ok.is_some() {
        msg.push_str(&format!(" ({})", t.comment));
    }
    if let (Some(line), Some(_)) = (t.line, t.reported_ok) {
        msg.push_str(&format!(" [line {line}]"));
    }
    Some(msg)
}

/// Events a runner may act on; returned by [`Parser::push`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// Nothing structural (boot log, diagnostics, unknown lines).
    Other,
    /// The first version line.
    Started,
    /// A result line.
    Result,
    /// A result line that completed the top-level plan.
    Complete,
    /// `Bail out!`.
    BailOut,
    /// `# shootdown: exit <code>`.
    Exit(i32),
}

/// One line, classified (content is the text after the indentation).
#[derive(Debug, PartialEq)]
enum Line<'a> {
    Version { ktap: bool, version: u32 },
    SubtestHeader(&'a str),
    Plan { count: usize, comment: &'a str },
    Result(ResultLine<'a>),
    BailOut(&'a str),
    Diagnostic(&'a str),
    Blank,
    Unknown,
}

#[derive(Debug, PartialEq)]
struct ResultLine<'a> {
    ok: bool,
    number: usize,
    name: &'a str,
    directive: Option<Directive>,
    comment: &'a str,
}

/// `KTAP version N` or `TAP version N` exactly (after indentation).
fn parse_version(content: &str) -> Option<(bool, u32)> {
    let (ktap, rest) = if let Some(rest) = content.strip_prefix("KTAP version ") {
        (true, rest)
    } else {
        (false, content.strip_prefix("TAP version ")?)
    };
    let rest = rest.trim_end();
    if rest.is_empty() || !rest.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((ktap, rest.parse().ok()?))
}

/// Finds a version line inside a raw (prefixed) line: returns the byte offset of the
/// `KTAP`/`TAP` word.
fn find_version(raw: &str) -> Option<usize> {
    for needle in ["KTAP version ", "TAP version "] {
        let mut from = 0;
        while let Some(off) = raw[from..].find(needle) {
            let at = from + off;
            if parse_version(&raw[at..]).is_some() {
                return Some(at);
            }
            from = at + needle.len();
        }
    }
    None
}

/// Splits `<text>[ # <directive> <comment>]`: KTAP descriptions cannot contain `#`.
fn split_directive(rest: &str) -> (&str, Option<Directive>, &str) {
    let Some(hash) = rest.find('#') else {
        return (rest.trim(), None, "");
    };
    let text = rest[..hash].trim();
    let after = rest[hash + 1..].trim();
    let word_end = after.find(char::is_whitespace).unwrap_or(after.len());
    match Directive::parse(&after[..word_end]) {
        Some(d) => (text, Some(d), after[word_end..].trim()),
        None => (text, None, after),
    }
}

fn classify(content: &str) -> Line<'_> {
    if content.is_empty() {
        return Line::Blank;
    }
    if let Some((ktap, version)) = parse_version(content) {
        return Line::Version { ktap, version };
    }
    if let Some(name) = content.strip_prefix("# Subtest:") {
        return Line::SubtestHeader(name.trim());
    }
    if let Some(reason) = content.strip_prefix("Bail out!") {
        return Line::BailOut(reason.trim());
    }
    if let Some(rest) = content.strip_prefix("1..") {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let tail = &rest[digits..];
        if digits > 0 && (tail.is_empty() || tail.starts_with([' ', '#'])) {
            if let Ok(count) = rest[..digits].parse() {
                let comment = tail.trim().trim_start_matches('#').trim();
                return Line::Plan { count, comment };
            }
        }
    }
    let (ok, rest) = if let Some(rest) = content.strip_prefix("not ok ") {
        (false, Some(rest))
    } else if let Some(rest) = content.strip_prefix("ok ") {
        (true, Some(rest))
    } else {
        (false, None)
    };
    if let Some(rest) = rest {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let tail = &rest[digits..];
        if digits > 0 && (tail.is_empty() || tail.starts_with(' ')) {
            if let Ok(number) = rest[..digits].parse() {
                // TAP allows `ok 1 - name`.
                let tail = tail.trim_start();
                let tail = tail.strip_prefix("- ").unwrap_or(tail);
                let (name, directive, comment) = split_directive(tail);
                return Line::Result(ResultLine {
                    ok,
                    number,
                    name,
                    directive,
                    comment,
                });
            }
        }
    }
    if let Some(text) = content.strip_prefix('#') {
        return Line::Diagnostic(text.trim());
    }
    Line::Unknown
}

/// An open test block: a `KTAP version` (or `# Subtest:`) line and what followed at its
/// indentation.
#[derive(Debug)]
struct Block {
    indent: usize,
    name: Option<String>,
    version_seen: bool,
    plan: Option<usize>,
    plan_comment: String,
    results: Vec<TestResult>,
    /// Lines up to the plan: the block's own log (module name, setup messages).
    header_log: Vec<String>,
    /// Lines waiting for the next result at this level.
    pending: Vec<String>,
    opened_at: Option<Duration>,
    last_result_at: Option<Duration>,
}

impl Block {
    fn new(indent: usize, at: Option<Duration>) -> Self {
        Self {
            indent,
            name: None,
            version_seen: false,
            plan: None,
            plan_comment: String::new(),
            results: Vec::new(),
            header_log: Vec::new(),
            pending: Vec::new(),
            opened_at: at,
            last_result_at: at,
        }
    }

    fn next_number(&self) -> usize {
        self.results.len() + 1
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Boot log; no version line yet.
    BeforeStart,
    InDocument,
    /// After `Bail out!`, a second document, or the completed plan: only the exit line and
    /// `Bail out!` still matter.
    Ended,
}

/// Incremental KTAP parser.
#[derive(Debug)]
pub struct Parser {
    state: State,
    line_no: usize,
    prefix_chars: usize,
    /// Open blocks; `stack[0]` is the top-level document once started.
    stack: Vec<Block>,
    doc: Document,
}

impl Default for Parser {
    fn default() -> Self {
        Self::new()
    }
}

impl Parser {
    pub fn new() -> Self {
        Self {
            state: State::BeforeStart,
            line_no: 0,
            prefix_chars: 0,
            stack: Vec::new(),
            doc: Document::default(),
        }
    }

    /// True once a version line was seen.
    pub fn started(&self) -> bool {
        self.state != State::BeforeStart
    }

    /// True once the top-level plan is satisfied with every block closed, or after `Bail out!`.
    pub fn finished(&self) -> bool {
        self.doc.complete || self.doc.bail_out.is_some()
    }

    /// Feeds one line (without or with its line terminator) received `at` since the start.
    pub fn push(&mut self, raw: &str, at: Option<Duration>) -> Event {
        self.line_no += 1;
        let raw = raw.trim_end_matches(['\n', '\r']).trim_end();
        match self.state {
            State::BeforeStart => self.push_before_start(raw, at),
            State::InDocument => {
                let line = strip_chars(raw, self.prefix_chars);
                self.push_in_document(line, at)
            }
            State::Ended => {
                let line = strip_chars(raw, self.prefix_chars);
                self.push_after_end(line)
            }
        }
    }

    fn push_before_start(&mut self, raw: &str, at: Option<Duration>) -> Event {
        if let Some(pos) = find_version(raw) {
            self.prefix_chars = raw[..pos].chars().count();
            self.state = State::InDocument;
            self.doc.ktap_found = true;
            self.doc.version = Some(raw[pos..].to_string());
            let (ktap, version) = parse_version(&raw[pos..]).unwrap_or((true, 1));
            self.check_version(ktap, version);
            let mut root = Block::new(0, at);
            root.version_seen = true;
            self.stack.push(root);
            return Event::Started;
        }
        let trimmed = raw.trim_start();
        if let Some(code) = exit_line(trimmed) {
            self.doc.exit_code = Some(code);
            return Event::Exit(code);
        }
        if let Some(reason) = trimmed.strip_prefix("Bail out!") {
            self.bail_out(reason.trim(), "boot, before any KTAP output".into());
            return Event::BailOut;
        }
        self.doc.preamble.push(raw.to_string());
        Event::Other
    }

    fn push_after_end(&mut self, line: &str) -> Event {
        let content = line.trim_start();
        if let Some(code) = exit_line(content) {
            self.doc.exit_code = Some(code);
            return Event::Exit(code);
        }
        if self.doc.bail_out.is_none() {
            if let Some(reason) = content.strip_prefix("Bail out!") {
                self.bail_out(reason.trim(), "after the last test (shutdown)".into());
                return Event::BailOut;
            }
            if matches!(
                classify(content),
                Line::Result(_) | Line::Plan { .. } | Line::Version { .. }
            ) {
                self.problem("KTAP output after the top-level plan was complete".into());
            }
        }
        self.doc.trailer.push(line.to_string());
        Event::Other
    }

    fn push_in_document(&mut self, line: &str, at: Option<Duration>) -> Event {
        let content = line.trim_start_matches(' ');
        let indent = line.len() - content.len();
        if let Some(code) = exit_line(content) {
            self.doc.exit_code = Some(code);
            return Event::Exit(code);
        }
        match classify(content) {
            Line::Version { ktap, version } => {
                self.check_version(ktap, version);
                self.on_version(indent, at);
                Event::Other
            }
            Line::SubtestHeader(name) => {
                self.on_subtest_header(indent, name, content, at);
                Event::Other
            }
            Line::Plan { count, comment } => {
                self.on_plan(indent, count, comment, content, at);
                Event::Other
            }
            Line::Result(result) => self.on_result(indent, result, at),
            Line::BailOut(reason) => {
                let running = self.position().unwrap_or_default();
                self.bail_out(reason, running);
                Event::BailOut
            }
            Line::Diagnostic(text) => {
                if self.doc.seed.is_none() {
                    if let Some(seed) = text.strip_prefix("seed=") {
                        self.doc.seed = Some(seed.trim().to_string());
                    }
                }
                self.top().pending.push(content.to_string());
                Event::Other
            }
            Line::Unknown => {
                self.top().pending.push(content.to_string());
                Event::Other
            }
            Line::Blank => Event::Other,
        }
    }

    fn top(&mut self) -> &mut Block {
        self.stack.last_mut().expect("the document block is open")
    }

    fn problem(&mut self, message: String) {
        self.doc.problems.push(Problem {
            line: self.line_no,
            message,
        });
    }

    fn check_version(&mut self, ktap: bool, version: u32) {
        let supported = if ktap {
            version == 1
        } else {
            version == 13 || version == 14
        };
        if !supported {
            let kind = if ktap { "KTAP" } else { "TAP" };
            self.problem(format!("unsupported version `{kind} version {version}`"));
        }
    }

    fn bail_out(&mut self, reason: &str, running: String) {
        self.doc.bail_out = Some(BailOut {
            line: self.line_no,
            reason: reason.to_string(),
            running,
        });
        self.state = State::Ended;
    }

    /// Opens a child block at `indent`, moving the parent's pending lines into it (they were
    /// printed for this subtest).
    fn open_block(&mut self, indent: usize, at: Option<Duration>) -> &mut Block {
        let pending = std::mem::take(&mut self.top().pending);
        let mut block = Block::new(indent, at);
        block.pending = pending;
        self.stack.push(block);
        self.top()
    }

    fn on_version(&mut self, indent: usize, at: Option<Duration>) {
        let top = self.stack.last().expect("open");
        if indent > top.indent {
            self.open_block(indent, at).version_seen = true;
            return;
        }
        if indent == top.indent && !top.version_seen && top.plan.is_none() && top.results.is_empty()
        {
            // `# Subtest:` came first (older KUnit); this is the same block.
            self.top().version_seen = true;
            return;
        }
        if indent <= self.stack[0].indent {
            self.problem("a second KTAP document starts here (did the kernel restart?)".into());
            self.state = State::Ended;
            return;
        }
        // A sibling starts while earlier blocks at this depth or deeper never reported.
        while self.stack.last().is_some_and(|b| b.indent >= indent) {
            self.close_without_result(at, "the next test at its parent's level started");
        }
        self.open_block(indent, at).version_seen = true;
    }

    fn on_subtest_header(
        &mut self,
        indent: usize,
        name: &str,
        content: &str,
        at: Option<Duration>,
    ) {
        let depth = self.stack.len();
        let top = self.top();
        if indent > top.indent {
            self.open_block(indent, at).name = Some(name.to_string());
        } else if indent == top.indent && depth > 1 && top.name.is_none() && top.results.is_empty()
        {
            top.name = Some(name.to_string());
        } else {
            // Not a header where one can be: just a diagnostic.
            top.pending.push(content.to_string());
        }
    }

    /// The largest plan taken at its word. A bigger one (a corrupted line) is a format error
    /// and counts as this many: a transcript cut short must not make the parser invent billions
    /// of never-reported entries (found by the `ktap` fuzz target).
    const MAX_PLAN: usize = 1024;

    fn on_plan(
        &mut self,
        indent: usize,
        count: usize,
        comment: &str,
        content: &str,
        at: Option<Duration>,
    ) {
        let top_indent = self.stack.last().expect("open").indent;
        if indent > top_indent {
            self.problem("a plan without a `KTAP version` line before it".into());
            self.open_block(indent, at);
        } else if indent < top_indent {
            self.problem("a plan at the indentation of no open test".into());
            self.top().pending.push(content.to_string());
            return;
        }
        if self.top().plan.is_some() {
            self.problem("a second plan for the same test".into());
            return;
        }
        let count = if count > Self::MAX_PLAN {
            self.problem(format!(
                "the plan 1..{count} is beyond {max} tests: taken as 1..{max}",
                max = Self::MAX_PLAN
            ));
            Self::MAX_PLAN
        } else {
            count
        };
        let top = self.top();
        top.plan = Some(count);
        top.plan_comment = comment.to_string();
        if top.results.is_empty() {
            top.header_log = std::mem::take(&mut top.pending);
        }
        let results = top.results.len();
        if results > count {
            self.problem(format!(
                "the plan 1..{count} comes after {results} results already"
            ));
        }
    }

    fn on_result(&mut self, indent: usize, line: ResultLine<'_>, at: Option<Duration>) -> Event {
        if indent > self.stack.last().expect("open").indent {
            self.problem("subtest results without a `KTAP version` line before them".into());
            self.open_block(indent, at).version_seen = true;
        }
        // The result belongs to the deepest block at or above its indentation.
        let target = self
            .stack
            .iter()
            .rposition(|b| b.indent <= indent)
            .unwrap_or(0);
        if self.stack[target].indent != indent {
            self.problem(format!(
                "result line indented {indent} spaces, matching no open test"
            ));
        }
        while self.stack.len() > target + 2 {
            self.close_without_result(at, "a result line at an outer level came");
        }
        let mut result = TestResult {
            number: line.number,
            name: line.name.to_string(),
            outcome: outcome_of(line.ok, line.directive),
            reported_ok: Some(line.ok),
            directive: line.directive,
            comment: line.comment.to_string(),
            log: Vec::new(),
            subtests: Vec::new(),
            plan: None,
            duration: None,
            line: Some(self.line_no),
            note: None,
        };
        if self.stack.len() == target + 2 {
            let child = self.stack.pop().expect("child block");
            self.attach_subtests(&mut result, child, at, "its parent's result line came");
        } else {
            let top = self.top();
            result.log = std::mem::take(&mut top.pending);
            result.duration = elapsed(top.last_result_at, at);
        }
        self.add_result(result, at);
        if self.stack.len() == 1 && self.stack[0].plan == Some(self.stack[0].results.len()) {
            self.doc.complete = true;
            self.state = State::Ended;
            return Event::Complete;
        }
        Event::Result
    }

    /// Makes `child`'s results the subtests of `result`; fills what the plan promised but
    /// never came with crashed entries, and lets failures bubble up.
    fn attach_subtests(
        &mut self,
        result: &mut TestResult,
        mut child: Block,
        at: Option<Duration>,
        ended: &str,
    ) {
        if let Some(plan) = child.plan {
            let got = child.results.len();
            if got > plan {
                self.problem(format!(
                    "{}: {got} results for the plan 1..{plan}",
                    child.name.as_deref().unwrap_or(&result.name)
                ));
            }
            let last = child
                .results
                .last()
                .map(|r| format!(" (last reported: `{}`)", r.name))
                .unwrap_or_default();
            for number in got + 1..=plan {
                child.results.push(TestResult::missing(
                    number,
                    format!("test {number} of {plan} never reported{last}; {ended} first"),
                ));
            }
        }
        if result.name.is_empty() {
            result.name = child
                .name
                .clone()
                .unwrap_or_else(|| format!("#{}", result.number));
        } else if let Some(header) = &child.name {
            if header != &result.name {
                self.problem(format!(
                    "the subtest header says `{header}` but its result line says `{}`",
                    result.name
                ));
            }
        }
        result.plan = child.plan;
        result.log = child.header_log;
        result.log.append(&mut child.pending);
        result.duration = elapsed(child.opened_at, at);
        let worst_child = child
            .results
            .iter()
            .map(|r| r.outcome)
            .filter(|o| o.is_failure())
            .max();
        if let Some(worst) = worst_child {
            if !result.outcome.is_failure() {
                if result.reported_ok == Some(true) {
                    result.note = Some("reported ok, but a subtest failed".into());
                }
                result.outcome = worst;
            }
        }
        result.subtests = child.results;
    }

    /// Closes the top block, which never printed its own result line (the kernel died inside
    /// it, or moved on): it becomes a crashed test in its parent.
    fn close_without_result(&mut self, at: Option<Duration>, ended: &str) {
        let child = self.stack.pop().expect("child block");
        let number = self.top().next_number();
        let mut result = TestResult::missing(number, String::new());
        result.name = String::new();
        self.attach_subtests(&mut result, child, at, ended);
        result.outcome = Outcome::Crashed;
        result.note = Some(format!(
            "`{}` printed no result line of its own; {ended} first",
            result.name
        ));
        self.add_result(result, at);
    }

    fn add_result(&mut self, result: TestResult, at: Option<Duration>) {
        let path = self.block_path();
        let top = self.top();
        let expected = top.next_number();
        let (number, plan) = (result.number, top.plan);
        let name = result.name.clone();
        top.results.push(result);
        top.last_result_at = at.or(top.last_result_at);
        if number != expected {
            self.problem(format!(
                "{}: expected test number {expected}, got {number} (`{name}`)",
                if path.is_empty() { "top level" } else { &path }
            ));
        }
        if let Some(plan) = plan {
            if number > plan && number == expected {
                self.problem(format!(
                    "{}: test {number} (`{name}`) is beyond the plan 1..{plan}",
                    if path.is_empty() { "top level" } else { &path }
                ));
            }
        }
    }

    /// Dotted names of the open blocks below the root (`suite` or `suite.sub`).
    fn block_path(&self) -> String {
        let mut path = String::new();
        for (depth, block) in self.stack.iter().enumerate().skip(1) {
            let name = match &block.name {
                Some(n) => n.clone(),
                None => format!("#{}", self.stack[depth - 1].next_number()),
            };
            path = join_path(&path, &name);
        }
        path
    }

    /// Where the output stands, naming the test that runs now as well as KTAP allows (a case
    /// is named only by its result line, so a running case is named by number and by the test
    /// before it). `None` before the first version line.
    pub fn position(&self) -> Option<String> {
        let top = self.stack.last()?;
        let path = self.block_path();
        let next = top.next_number();
        let (what, label) = if self.stack.len() == 1 {
            ("suite", String::from("top level"))
        } else {
            ("test", path.clone())
        };
        let of = top.plan.map(|p| format!(" of {p}")).unwrap_or_default();
        let after = top
            .results
            .last()
            .map(|r| format!(", after `{}`", join_path(&path, &r.name)))
            .unwrap_or_default();
        if top.plan.is_some_and(|p| next > p) {
            return Some(format!(
                "{label}: all {} tests reported, its own result line missing",
                next - 1
            ));
        }
        Some(format!("{label}: {what} {next}{of}{after}"))
    }

    /// Ends the input: open blocks become crashed tests, missing plan entries crashed entries.
    pub fn finish(mut self) -> Document {
        if self.stack.is_empty() {
            return self.doc;
        }
        let ended = if self.doc.bail_out.is_some() {
            "Bail out! came"
        } else {
            "the output ended"
        };
        while self.stack.len() > 1 {
            self.close_without_result(None, ended);
        }
        let mut root = self.stack.pop().expect("root");
        if let Some(plan) = root.plan {
            let got = root.results.len();
            if got > plan {
                self.doc.problems.push(Problem {
                    line: self.line_no,
                    message: format!("{got} top-level results for the plan 1..{plan}"),
                });
            }
            for number in got + 1..=plan {
                root.results.push(TestResult::missing(
                    number,
                    format!("suite {number} of {plan} never reported; {ended} first"),
                ));
            }
        } else if !self.doc.complete {
            self.doc.problems.push(Problem {
                line: self.line_no,
                message: "the top-level plan (1..N) is missing".into(),
            });
        }
        self.doc.plan = root.plan;
        self.doc.plan_comment = root.plan_comment;
        self.doc.tests = root.results;
        self.doc.trailer.splice(0..0, root.pending);
        self.doc
    }
}

fn outcome_of(ok: bool, directive: Option<Directive>) -> Outcome {
    match (ok, directive) {
        (_, Some(Directive::Skip)) => Outcome::Skipped,
        (false, Some(Directive::Todo | Directive::XFail)) => Outcome::ExpectedFail,
        (true, _) => Outcome::Passed,
        (false, _) => Outcome::Failed,
    }
}

fn elapsed(from: Option<Duration>, to: Option<Duration>) -> Option<Duration> {
    Some(to?.saturating_sub(from?))
}

/// `# shootdown: exit <code>` (the kernel's last line).
fn exit_line(content: &str) -> Option<i32> {
    let rest = content.strip_prefix('#')?.trim_start();
    rest.strip_prefix("shootdown: exit")?.trim().parse().ok()
}

/// Drops the first `n` characters (the per-line prefix found on the first version line).
fn strip_chars(line: &str, n: usize) -> &str {
    match line.char_indices().nth(n) {
        Some((at, _)) => &line[at..],
        None if n == 0 => line,
        None => "",
    }
}

/// Parses a whole transcript (untimed).
pub fn parse(text: &str) -> Document {
    let mut parser = Parser::new();
    for line in text.lines() {
        parser.push(line, None);
    }
    parser.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_result_lines() {
        assert_eq!(
            classify("ok 1 reached"),
            Line::Result(ResultLine {
                ok: true,
                number: 1,
                name: "reached",
                directive: None,
                comment: ""
            })
        );
        assert_eq!(
            classify("not ok 12 - dma stale # TIMEOUT 30 seconds"),
            Line::Result(ResultLine {
                ok: false,
                number: 12,
                name: "dma stale",
                directive: Some(Directive::Timeout),
                comment: "30 seconds"
            })
        );
        assert_eq!(
            classify("ok 5 check return code # rcode=0"),
            Line::Result(ResultLine {
                ok: true,
                number: 5,
                name: "check return code",
                directive: None,
                comment: "rcode=0"
            })
        );
        assert_eq!(
            classify("ok 3 # skip no SMMU"),
            Line::Result(ResultLine {
                ok: true,
                number: 3,
                name: "",
                directive: Some(Directive::Skip),
                comment: "no SMMU"
            })
        );
        // Not result lines: no number, or glued words.
        assert_eq!(classify("ok then"), Line::Unknown);
        assert_eq!(classify("okay 1 x"), Line::Unknown);
        assert_eq!(classify("ok 1x"), Line::Unknown);
    }

    #[test]
    fn classifies_other_lines() {
        assert_eq!(
            classify("KTAP version 1"),
            Line::Version {
                ktap: true,
                version: 1
            }
        );
        assert_eq!(
            classify("TAP version 14"),
            Line::Version {
                ktap: false,
                version: 14
            }
        );
        assert_eq!(classify("KTAP version one"), Line::Unknown);
        assert_eq!(
            classify("1..0 # SKIP nothing here"),
            Line::Plan {
                count: 0,
                comment: "SKIP nothing here"
            }
        );
        assert_eq!(
            classify("1..4"),
            Line::Plan {
                count: 4,
                comment: ""
            }
        );
        assert_eq!(classify("1..4x"), Line::Unknown);
        assert_eq!(classify("# Subtest: mm"), Line::SubtestHeader("mm"));
        assert_eq!(classify("# seed=42"), Line::Diagnostic("seed=42"));
        assert_eq!(
            classify("Bail out! panic at x"),
            Line::BailOut("panic at x")
        );
        assert_eq!(classify("[cpu1] online"), Line::Unknown);
    }

    #[test]
    fn finds_the_version_line_behind_a_prefix() {
        assert_eq!(find_version("[    0.5] KTAP version 1"), Some(10));
        assert_eq!(find_version("KTAP version 1"), Some(0));
        assert_eq!(find_version("log: TAP version 13"), Some(5));
        assert_eq!(find_version("mentions KTAP version but no number"), None);
        assert_eq!(exit_line("# shootdown: exit 3"), Some(3));
        assert_eq!(exit_line("# shootdown: exit"), None);
    }

    #[test]
    fn strips_by_characters_not_bytes() {
        assert_eq!(strip_chars("äb ok", 2), " ok");
        assert_eq!(strip_chars("ab", 5), "");
        assert_eq!(strip_chars("ab", 0), "ab");
    }

    #[test]
    fn times_results_from_line_timestamps() {
        let mut p = Parser::new();
        let s = Duration::from_secs;
        for (t, line) in [
            (0, "KTAP version 1"),
            (0, "1..1"),
            (1, "  KTAP version 1"),
            (1, "  # Subtest: s"),
            (1, "  1..2"),
            (3, "  ok 1 a"),
            (7, "  ok 2 b"),
            (7, "ok 1 s"),
        ] {
            p.push(line, Some(s(t)));
        }
        let doc = p.finish();
        assert!(doc.passed(), "{:?}", doc.failures());
        let suite = &doc.tests[0];
        assert_eq!(suite.duration, Some(s(6)));
        assert_eq!(suite.subtests[0].duration, Some(s(2)));
        assert_eq!(suite.subtests[1].duration, Some(s(4)));
    }

    #[test]
    fn a_huge_plan_in_a_cut_transcript_is_an_error_not_billions_of_entries() {
        let doc = parse("KTAP version 1\n1..2\n  KTAP version 1\n  1..23333333333\n");
        assert!(!doc.passed());
        assert!(
            doc.problems
                .iter()
                .any(|p| p.message.contains("1..23333333333")),
            "{:?}",
            doc.problems
        );
        assert_eq!(doc.tests[0].subtests.len(), Parser::MAX_PLAN);
    }

    #[test]
    fn position_names_the_running_test() {
        let mut p = Parser::new();
        assert_eq!(p.position(), None);
        for line in [
            "KTAP version 1",
            "1..2",
            "  KTAP version 1",
            "  # Subtest: mm",
            "  1..3",
            "  ok 1 map",
        ] {
            p.push(line, None);
        }
        assert_eq!(p.position().unwrap(), "mm: test 2 of 3, after `mm.map`");
        p.push("  ok 2 unmap", None);
        p.push("  ok 3 protect", None);
        assert_eq!(
            p.position().unwrap(),
            "mm: all 3 tests reported, its own result line missing"
        );
        p.push("ok 1 mm", None);
        assert_eq!(p.position().unwrap(), "top level: suite 2 of 2, after `mm`");
    }
}
