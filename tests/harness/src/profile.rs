//! Board profiles: `qemu/<board>.toml`, one per QEMU machine Shootdown is tested on.
//!
//! ```toml
//! description = "QEMU virt with SMMUv3 and the edu DMA device"
//! machine = "virt,iommu=smmuv3,gic-version=3"   # -M (required)
//! cpu = "max"                                   # -cpu
//! smp = 4                                       # -smp (integer or string)
//! memory = "2G"                                 # -m
//! dtb = "build/dtb/bcm2711-rpi-4-b.dtb"         # -dtb, relative to the repository root
//! devices = ["edu,addr=2,dma_mask=0xffffffffffffffff"]   # one -device each
//! args = []                                     # more QEMU arguments, verbatim
//! bootargs = ""                                 # default kernel command line (-append)
//! timeout = 120                                 # seconds for a whole test run
//! test_timeout = 60                             # seconds without a new KTAP result (0 = off)
//! firmware_banner = "U-Boot 20"                 # a line the firmware prints before the kernel
//! must_run = ["isolation.*"]                    # cases this board's devices let run: a SKIP fails
//! ```
//!
//! Unknown keys are errors (a typo must not silently drop a device).

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::{Table, Value};

/// One board profile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Profile {
    pub name: String,
    pub description: String,
    pub machine: String,
    pub cpu: Option<String>,
    pub smp: Option<String>,
    pub memory: Option<String>,
    /// Relative paths are relative to the repository root (the directory `qemu/` is in).
    pub dtb: Option<PathBuf>,
    pub devices: Vec<String>,
    pub args: Vec<String>,
    pub bootargs: String,
    pub timeout: Duration,
    pub test_timeout: Option<Duration>,
    /// Text the console must show before the kernel's first line (the firmware's banner), so
    /// a profile that boots through firmware cannot pass by booting the kernel directly.
    pub firmware_banner: Option<String>,
    /// Cases (`suite.case`, or `suite.*`) the profile's hardware lets run: reported as a SKIP,
    /// one fails the run (the kernel skips what it does not find; the profile knows what it gave).
    pub must_run: Vec<String>,
}

/// Why a profile could not be loaded.
#[derive(Debug)]
pub enum ProfileError {
    /// No `<dir>/<name>.toml`; `available` lists the profiles that exist.
    NotFound {
        name: String,
        dir: PathBuf,
        available: Vec<String>,
    },
    BadName(String),
    Io(PathBuf, std::io::Error),
    Syntax(PathBuf, String),
    /// A key is missing, unknown or of the wrong type.
    Field {
        path: PathBuf,
        key: String,
        message: String,
    },
}

impl fmt::Display for ProfileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProfileError::NotFound {
                name,
                dir,
                available,
            } => write!(
                f,
                "no board profile `{name}` in {} (available: {})",
                dir.display(),
                if available.is_empty() {
                    "none".to_string()
                } else {
                    available.join(", ")
                }
            ),
            ProfileError::BadName(name) => {
                write!(
                    f,
                    "bad board name `{name}`: use letters, digits, `-` and `_`"
                )
            }
            ProfileError::Io(path, e) => write!(f, "{}: {e}", path.display()),
            ProfileError::Syntax(path, e) => write!(f, "{}: {e}", path.display()),
            ProfileError::Field { path, key, message } => {
                write!(f, "{}: `{key}`: {message}", path.display())
            }
        }
    }
}

impl std::error::Error for ProfileError {}

const KEYS: &[&str] = &[
    "description",
    "machine",
    "cpu",
    "smp",
    "memory",
    "dtb",
    "devices",
    "args",
    "bootargs",
    "timeout",
    "test_timeout",
    "firmware_banner",
    "must_run",
];

/// Default whole-run limit when a profile has none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

impl Profile {
    /// Loads `<dir>/<name>.toml`.
    pub fn load(dir: &Path, name: &str) -> Result<Self, ProfileError> {
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(ProfileError::BadName(name.to_string()));
        }
        let path = dir.join(format!("{name}.toml"));
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ProfileError::NotFound {
                    name: name.to_string(),
                    dir: dir.to_path_buf(),
                    available: list(dir).unwrap_or_default(),
                })
            }
            Err(e) => return Err(ProfileError::Io(path, e)),
        };
        Self::parse(name, &path, &text)
    }

    /// Parses a profile's text; `path` is only used in error messages.
    pub fn parse(name: &str, path: &Path, text: &str) -> Result<Self, ProfileError> {
        let table: Table = text.parse().map_err(|e: toml::de::Error| {
            ProfileError::Syntax(path.to_path_buf(), e.to_string().trim().to_string())
        })?;
        let field = |key: &str, message: String| ProfileError::Field {
            path: path.to_path_buf(),
            key: key.to_string(),
            message,
        };
        if let Some(key) = table.keys().find(|k| !KEYS.contains(&k.as_str())) {
            return Err(field(
                key,
                format!("unknown key (known: {})", KEYS.join(", ")),
            ));
        }
        let string = |key: &str| -> Result<Option<String>, ProfileError> {
            match table.get(key) {
                None => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(other) => Err(field(
                    key,
                    format!("expected a string, found {}", other.type_str()),
                )),
            }
        };
        let strings = |key: &str| -> Result<Vec<String>, ProfileError> {
            match table.get(key) {
                None => Ok(Vec::new()),
                Some(Value::Array(items)) => items
                    .iter()
                    .map(|v| match v {
                        Value::String(s) => Ok(s.clone()),
                        other => Err(field(
                            key,
                            format!("expected strings, found {}", other.type_str()),
                        )),
                    })
                    .collect(),
                Some(other) => Err(field(
                    key,
                    format!("expected an array of strings, found {}", other.type_str()),
                )),
            }
        };
        let seconds = |key: &str| -> Result<Option<Duration>, ProfileError> {
            match table.get(key) {
                None => Ok(None),
                Some(Value::Integer(n)) if *n >= 0 => Ok(Some(Duration::from_secs(*n as u64))),
                Some(Value::Float(x)) if x.is_finite() && *x >= 0.0 => {
                    Ok(Some(Duration::from_secs_f64(*x)))
                }
                Some(other) => Err(field(
                    key,
                    format!(
                        "expected seconds (a number >= 0), found {}",
                        describe(other)
                    ),
                )),
            }
        };
        let smp = match table.get("smp") {
            None => None,
            Some(Value::Integer(n)) if *n > 0 => Some(n.to_string()),
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => {
                return Err(field(
                    "smp",
                    format!(
                        "expected a CPU count or a -smp string, found {}",
                        describe(other)
                    ),
                ))
            }
        };
        let memory = match table.get("memory") {
            None => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Integer(n)) if *n > 0 => Some(format!("{n}M")),
            Some(other) => {
                return Err(field(
                    "memory",
                    format!("expected a size like \"1G\", found {}", describe(other)),
                ))
            }
        };
        let machine = string("machine")?
            .ok_or_else(|| field("machine", "missing (the QEMU -M value)".into()))?;
        let timeout = seconds("timeout")?.unwrap_or(DEFAULT_TIMEOUT);
        if timeout.is_zero() {
            return Err(field("timeout", "must be more than 0 seconds".into()));
        }
        Ok(Profile {
            name: name.to_string(),
            description: string("description")?.unwrap_or_default(),
            machine,
            cpu: string("cpu")?,
            smp,
            memory,
            dtb: string("dtb")?.map(PathBuf::from),
            devices: strings("devices")?,
            args: strings("args")?,
            bootargs: string("bootargs")?.unwrap_or_default(),
            timeout,
            test_timeout: seconds("test_timeout")?.filter(|d| !d.is_zero()),
            firmware_banner: string("firmware_banner")?.filter(|b| !b.is_empty()),
            must_run: strings("must_run")?,
        })
    }

    /// A matrix entry as a profile: its machine and raw arguments, no boot arguments.
    pub fn from_matrix_entry(e: &crate::matrix::Entry) -> Self {
        Profile {
            name: e.name.clone(),
            description: String::new(),
            machine: e.machine.clone(),
            cpu: None,
            smp: None,
            memory: None,
            dtb: None,
            devices: Vec::new(),
            args: e.args.clone(),
            bootargs: String::new(),
            timeout: e.timeout.unwrap_or(DEFAULT_TIMEOUT),
            test_timeout: None,
            firmware_banner: None,
            must_run: Vec::new(),
        }
    }

    /// True if `case` (`suite.case`) is one the profile says must run.
    pub fn must_run(&self, case: &str) -> bool {
        self.must_run.iter().any(|p| match p.strip_suffix(".*") {
            Some(suite) => case.split_once('.').is_some_and(|(s, _)| s == suite),
            None => p == case,
        })
    }

    /// A failure for every case of `doc` the profile says must run that was skipped.
    pub fn check_must_run(&self, doc: &crate::ktap::Document) -> Vec<crate::ktap::Failure> {
        let mut out = Vec::new();
        for suite in &doc.tests {
            suite.walk("", &mut |path, t| {
                if t.is_leaf() && t.outcome == crate::ktap::Outcome::Skipped && self.must_run(path)
                {
                    out.push(crate::ktap::Failure {
                        test: path.to_string(),
                        message: format!(
                            "skipped ({}), but board `{}` has what it needs (must_run)",
                            t.comment, self.name
                        ),
                    });
                }
            });
        }
        out
    }

    /// The QEMU arguments that describe the board (machine, CPUs, memory, DTB, devices, extra
    /// arguments), with relative paths resolved against `root`.
    pub fn board_args(&self, root: &Path) -> Vec<String> {
        let mut args = vec!["-M".to_string(), self.machine.clone()];
        for (flag, value) in [
            ("-cpu", &self.cpu),
            ("-smp", &self.smp),
            ("-m", &self.memory),
        ] {
            if let Some(value) = value {
                args.push(flag.to_string());
                args.push(value.clone());
            }
        }
        if let Some(dtb) = self.dtb_path(root) {
            args.push("-dtb".to_string());
            args.push(dtb.display().to_string());
        }
        for device in &self.devices {
            args.push("-device".to_string());
            args.push(device.clone());
        }
        args.extend(self.args.iter().cloned());
        args
    }

    pub fn dtb_path(&self, root: &Path) -> Option<PathBuf> {
        self.dtb.as_ref().map(|p| {
            if p.is_absolute() {
                p.clone()
            } else {
                root.join(p)
            }
        })
    }
}

/// A TOML value in an error message (numbers by value, anything else by type).
fn describe(value: &Value) -> String {
    match value {
        Value::Integer(n) => n.to_string(),
        Value::Float(x) => x.to_string(),
        Value::String(s) => format!("{s:?}"),
        other => other.type_str().to_string(),
    }
}

/// The file beside the profiles that lists users' own QEMU lines (`harness matrix`): not a
/// profile.
pub const MATRIX_FILE: &str = "matrix.toml";

/// The profile names in `dir`, sorted.
pub fn list(dir: &Path) -> std::io::Result<Vec<String>> {
    let mut names: Vec<String> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            if name == MATRIX_FILE {
                return None;
            }
            name.strip_suffix(".toml").map(str::to_string)
        })
        .collect();
    names.sort();
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Profile, ProfileError> {
        Profile::parse("t", Path::new("qemu/t.toml"), text)
    }

    #[test]
    fn reads_every_key() {
        let p = parse(
            r#"
            description = "d"
            machine = "virt,iommu=smmuv3"
            cpu = "max"
            smp = 4
            memory = "2G"
            dtb = "build/x.dtb"
            devices = ["edu,addr=2"]
            args = ["-d", "guest_errors"]
            bootargs = "log=info"
            timeout = 90
            test_timeout = 0
            "#,
        )
        .unwrap();
        assert_eq!(p.timeout, Duration::from_secs(90));
        assert_eq!(p.test_timeout, None, "0 switches the per-test limit off");
        assert_eq!(
            p.board_args(Path::new("/repo")),
            [
                "-M",
                "virt,iommu=smmuv3",
                "-cpu",
                "max",
                "-smp",
                "4",
                "-m",
                "2G",
                "-dtb",
                "/repo/build/x.dtb",
                "-device",
                "edu,addr=2",
                "-d",
                "guest_errors"
            ]
        );
    }

    #[test]
    fn a_skip_the_profile_forbids_fails() {
        let p = parse("machine = \"virt\"\nmust_run = [\"iso.*\", \"dev.bypass\"]").unwrap();
        let doc = crate::ktap::parse(
            "KTAP version 1\n1..2\n  KTAP version 1\n  # Subtest: iso\n  1..2\n  ok 1 a # SKIP one device\n  ok 2 b\nok 1 iso\n\
             \x20 KTAP version 1\n  # Subtest: dev\n  1..2\n  ok 1 bypass # SKIP mask\n  ok 2 other # SKIP fine\nok 2 dev\n",
        );
        let f = p.check_must_run(&doc);
        let names: Vec<&str> = f.iter().map(|f| f.test.as_str()).collect();
        assert_eq!(names, ["iso.a", "dev.bypass"], "{f:?}");
        assert!(f[0].message.contains("one device"), "{f:?}");
        assert!(parse("machine = \"virt\"")
            .unwrap()
            .check_must_run(&doc)
            .is_empty());
    }

    #[test]
    fn rejects_bad_profiles_with_the_key_named() {
        let err = |text: &str| parse(text).unwrap_err().to_string();
        assert!(err("cpu = \"max\"").contains("`machine`: missing"));
        assert!(err("machine = \"virt\"\ndevice = [\"edu\"]").contains("`device`: unknown key"));
        assert!(err("machine = \"virt\"\nsmp = 0").contains("`smp`"));
        assert!(
            err("machine = \"virt\"\ndevices = \"edu\"").contains("expected an array of strings")
        );
        assert!(err("machine = \"virt\"\ntimeout = -1").contains("`timeout`"));
        assert!(err("machine = \"virt\"\ntimeout = 0").contains("more than 0"));
        assert!(err("machine = ").contains("qemu/t.toml"));
    }

    #[test]
    fn names_the_available_profiles_when_one_is_missing() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../qemu");
        let e = Profile::load(&dir, "virtt").unwrap_err().to_string();
        assert!(
            e.contains("no board profile `virtt`") && e.contains("virt-smmu"),
            "{e}"
        );
        assert!(Profile::load(&dir, "../etc/passwd").is_err());
    }

    #[test]
    fn the_shipped_profiles_load() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../qemu");
        let names = list(&dir).unwrap();
        for board in ["virt", "virt-smmu", "raspi4b"] {
            assert!(
                names.iter().any(|n| n == board),
                "{board} missing from {names:?}"
            );
            let p = Profile::load(&dir, board).unwrap();
            assert!(!p.description.is_empty());
        }
        // Every name listed is a profile (the matrix of user lines lives beside them).
        for name in &names {
            Profile::load(&dir, name).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        let smmu = Profile::load(&dir, "virt-smmu").unwrap();
        assert!(smmu.machine.contains("iommu=smmuv3"));
        assert!(smmu.devices.iter().any(|d| d.starts_with("edu")));
        assert_eq!(smmu.smp.as_deref(), Some("4"));
        let pi = Profile::load(&dir, "raspi4b").unwrap();
        assert_eq!(
            pi.dtb.as_deref(),
            Some(Path::new("build/dtb/bcm2711-rpi-4-b.dtb"))
        );
    }
}
