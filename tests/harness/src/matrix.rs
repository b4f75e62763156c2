//! A matrix of QEMU command lines as users write them (`qemu/matrix.toml`): each entry is the
//! raw machine arguments of one configuration, without `-kernel` or `-append`: the harness adds
//! the kernel, the console wiring and the test filter, and nothing else, so the kernel's
//! defaults must cope with whatever the line describes.
//!
//! ```toml
//! [[entry]]
//! name = "edu-slot-6"                                   # letters, digits, - and _
//! args = "-M virt,iommu=smmuv3 -cpu max -m 1G -smp 2 -device edu,addr=6"
//! timeout = 300                                         # optional, seconds
//! ```
//!
//! `args` is split at white space (no quoting: no argument a matrix needs has a space).
//! [`sample`] picks a rotating window of entries for `make test`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::{Table, Value};

/// One configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    /// The `-M` value.
    pub machine: String,
    /// Every other argument, in order.
    pub args: Vec<String>,
    pub timeout: Option<Duration>,
}

/// Why a matrix file cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MatrixError {
    pub path: PathBuf,
    /// The entry (by index, and name when it has one).
    pub entry: Option<String>,
    pub message: String,
}

impl fmt::Display for MatrixError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.entry {
            Some(e) => write!(f, "{}: {e}: {}", self.path.display(), self.message),
            None => write!(f, "{}: {}", self.path.display(), self.message),
        }
    }
}

impl std::error::Error for MatrixError {}

/// Arguments the harness owns: an entry giving them would change how the kernel is booted or
/// watched, not the machine.
const HARNESS_ARGS: &[&str] = &[
    "-kernel",
    "-append",
    "-serial",
    "-monitor",
    "-display",
    "-semihosting",
    "-no-reboot",
    "-nographic",
    "-s",
    "-S",
    "-gdb",
];

const KEYS: &[&str] = &["name", "args", "timeout"];

/// Parses a matrix file's text (`path` only names it in errors).
pub fn parse(path: &Path, text: &str) -> Result<Vec<Entry>, MatrixError> {
    let err = |entry: Option<String>, message: String| MatrixError {
        path: path.to_path_buf(),
        entry,
        message,
    };
    let table: Table = text
        .parse()
        .map_err(|e: toml::de::Error| err(None, e.to_string().trim().to_string()))?;
    if let Some(k) = table.keys().find(|k| *k != "entry") {
        return Err(err(
            None,
            format!("unknown key `{k}` (only [[entry]] tables)"),
        ));
    }
    let Some(Value::Array(items)) = table.get("entry") else {
        return Err(err(None, "no [[entry]] tables".into()));
    };
    let mut entries: Vec<Entry> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let label = Some(format!("entry {}", i + 1));
        let t = item
            .as_table()
            .ok_or_else(|| err(label.clone(), "not a table".into()))?;
        let e = entry(t).map_err(|m| {
            let name = t.get("name").and_then(Value::as_str);
            err(name.map(|n| format!("entry `{n}`")).or(label.clone()), m)
        })?;
        if entries.iter().any(|x| x.name == e.name) {
            return Err(err(label, format!("a second entry named `{}`", e.name)));
        }
        entries.push(e);
    }
    Ok(entries)
}

fn entry(t: &Table) -> Result<Entry, String> {
    if let Some(k) = t.keys().find(|k| !KEYS.contains(&k.as_str())) {
        return Err(format!("unknown key `{k}` (known: {})", KEYS.join(", ")));
    }
    let name = t
        .get("name")
        .and_then(Value::as_str)
        .filter(|n| {
            !n.is_empty()
                && n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_".contains(c))
        })
        .ok_or("`name` must be letters, digits, `-` and `_`")?;
    let line = t
        .get("args")
        .and_then(Value::as_str)
        .ok_or("`args` must be a string of QEMU arguments")?;
    let mut args: Vec<String> = line.split_whitespace().map(String::from).collect();
    if let Some(a) = args.iter().find(|a| HARNESS_ARGS.contains(&a.as_str())) {
        return Err(format!("`{a}` is the harness's to give"));
    }
    let at = args
        .iter()
        .position(|a| a == "-M" || a == "-machine")
        .filter(|&i| i + 1 < args.len())
        .ok_or("`args` has no `-M MACHINE`")?;
    let machine = args.remove(at + 1);
    args.remove(at);
    if args.iter().any(|a| a == "-M" || a == "-machine") {
        return Err("`-M` given twice".into());
    }
    let timeout = match t.get("timeout") {
        None => None,
        Some(Value::Integer(n)) if *n > 0 => Some(Duration::from_secs(*n as u64)),
        Some(_) => return Err("`timeout` must be a number of seconds above 0".into()),
    };
    Ok(Entry {
        name: name.to_string(),
        machine,
        args,
        timeout,
    })
}

/// Loads a matrix file.
pub fn load(path: &Path) -> Result<Vec<Entry>, MatrixError> {
    let text = std::fs::read_to_string(path).map_err(|e| MatrixError {
        path: path.to_path_buf(),
        entry: None,
        message: e.to_string(),
    })?;
    parse(path, &text)
}

/// `n` consecutive entries (wrapping) out of `len`, the window chosen by `rotate_by` (a date,
/// a commit, any text): successive values walk the window through the whole matrix, so a
/// daily `make test` covers every entry within `len / n` days. Indexes in matrix order.
pub fn sample(len: usize, n: usize, rotate_by: &str) -> Vec<usize> {
    if n >= len {
        return (0..len).collect();
    }
    let step = match rotate_by.trim().parse::<u64>() {
        Ok(k) => k,
        Err(_) => fnv1a(rotate_by.as_bytes()),
    };
    let start = (step % len as u64) as usize * n % len;
    let mut picked: Vec<usize> = (0..n).map(|k| (start + k) % len).collect();
    picked.sort_unstable();
    picked
}

/// FNV-1a: a stable hash of text (std's hasher may change between releases).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(text: &str) -> Result<Vec<Entry>, MatrixError> {
        parse(Path::new("qemu/m.toml"), text)
    }

    #[test]
    fn reads_entries() {
        let m = parse_str(
            r#"
            [[entry]]
            name = "one"
            args = "-M virt,iommu=smmuv3 -cpu max  -m 1G -device edu,addr=6"
            [[entry]]
            name = "two_2"
            args = "-smp 3 -machine virt,gic-version=2"
            timeout = 300
            "#,
        )
        .unwrap();
        assert_eq!(m[0].machine, "virt,iommu=smmuv3");
        assert_eq!(
            m[0].args,
            ["-cpu", "max", "-m", "1G", "-device", "edu,addr=6"]
        );
        assert_eq!(m[0].timeout, None);
        assert_eq!(m[1].machine, "virt,gic-version=2");
        assert_eq!(m[1].args, ["-smp", "3"]);
        assert_eq!(m[1].timeout, Some(Duration::from_secs(300)));
    }

    #[test]
    fn refuses_bad_entries_by_name() {
        let err = |text: &str| parse_str(text).unwrap_err().to_string();
        let one = |body: &str| format!("[[entry]]\n{body}");
        assert!(err("").contains("no [[entry]]"));
        assert!(err("x = 1").contains("unknown key `x`"));
        assert!(
            err(&one("name = \"a\"\nargs = \"-cpu max\"")).contains("entry `a`: `args` has no `-M")
        );
        assert!(err(&one("name = \"a\"\nargs = \"-M virt -append x\""))
            .contains("`-append` is the harness's"));
        assert!(err(&one("name = \"a b\"\nargs = \"-M virt\"")).contains("`name`"));
        assert!(
            err(&one("name = \"a\"\nargs = \"-M virt\"\nmem = 1")).contains("unknown key `mem`")
        );
        assert!(err(&one("name = \"a\"\nargs = \"-M virt -M virt\"")).contains("twice"));
        assert!(err(&one("name = \"a\"\nargs = \"-M virt\"\ntimeout = 0")).contains("timeout"));
        let twice = format!(
            "{}\n{}",
            one("name = \"a\"\nargs = \"-M virt\""),
            one("name = \"a\"\nargs = \"-M virt\"")
        );
        assert!(err(&twice).contains("second entry named `a`"));
    }

    #[test]
    fn samples_rotate_through_everything() {
        assert_eq!(sample(3, 5, "x"), [0, 1, 2]);
        let n = 3;
        let mut covered = std::collections::BTreeSet::new();
        for day in 0..10u64 {
            let s = sample(10, n, &day.to_string());
            assert_eq!(s.len(), n);
            assert!(s.iter().all(|&i| i < 10));
            covered.extend(s);
        }
        assert_eq!(covered.len(), 10, "ten successive days cover every entry");
        assert_eq!(sample(10, n, "abc123"), sample(10, n, "abc123"), "stable");
        assert_eq!(sample(10, 2, "1"), [2, 3]);
    }

    #[test]
    fn the_shipped_matrix_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../qemu/matrix.toml");
        let m = load(&path).unwrap();
        assert!(m.len() >= 10, "{} entries", m.len());
    }
}
