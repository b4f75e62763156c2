//! Shell-style globs (`*` and `?`) for `ktest=` test selection.

/// True if `text` matches `pattern` (`*` = any run of characters, `?` = any one character).
pub fn matches(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    let mut backtrack: Option<(usize, usize)> = None; // (index after '*', text index it matched up to)
    while ti < t.len() {
        if pi < p.len() && (p[pi] == b'?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            backtrack = Some((pi + 1, ti));
            pi += 1;
        } else if let Some((after_star, matched)) = backtrack {
            pi = after_star;
            ti = matched + 1;
            backtrack = Some((after_star, matched + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// True if test `suite.case` is selected by a comma-separated list of globs. A glob without a
/// dot selects whole suites (`mm` = `mm.*`).
pub fn selected(filter: &str, suite: &str, case: &str) -> bool {
    filter
        .split(',')
        .map(str::trim)
        .filter(|g| !g.is_empty())
        .any(|g| {
            if g.contains('.') {
                let mut full = alloc::string::String::with_capacity(suite.len() + case.len() + 1);
                full.push_str(suite);
                full.push('.');
                full.push_str(case);
                matches(g, &full)
            } else {
                matches(g, suite)
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(matches("*", ""));
        assert!(matches("mm.*", "mm.map"));
        assert!(matches("m?.map", "mm.map"));
        assert!(matches("*map*", "mm.unmap_faults"));
        assert!(!matches("mm.*", "smmu.map"));
        assert!(!matches("a*b", "acbd"));
        assert!(matches("a*b*c", "axxbyyc"));
    }

    #[test]
    fn selection() {
        assert!(selected("boot", "boot", "reached"));
        assert!(!selected("boot", "mm", "reached"));
        assert!(selected("mm.map*,boot.cpus", "boot", "cpus"));
        assert!(selected("*", "anything", "at_all"));
        assert!(!selected("", "boot", "reached"));
        assert!(!selected("boot.x", "boot", "reached"));
    }
}
