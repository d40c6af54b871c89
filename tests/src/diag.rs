//! Parsing `meshgate validate` output: `FILE: line L:C: PATH: MESSAGE`.

/// One validation error as printed by `meshgate validate`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: String,
    pub line: u32,
    pub column: u32,
    pub path: String,
    pub message: String,
}

/// Every line of `output` in the `FILE: line L:C: PATH: MESSAGE` format.
pub fn parse(output: &str) -> Vec<Diagnostic> {
    output.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Diagnostic> {
    let (file, rest) = line.split_once(": line ")?;
    let (pos, rest) = rest.split_once(": ")?;
    let (l, c) = pos.split_once(':')?;
    let (path, message) = match rest.split_once(": ") {
        Some((p, m)) => (p, m),
        None => ("", rest),
    };
    Some(Diagnostic {
        file: file.trim().to_owned(),
        line: l.trim().parse().ok()?,
        column: c.trim().parse().ok()?,
        path: path.trim().to_owned(),
        message: message.trim().to_owned(),
    })
}

/// 1-based number of the first line of `yaml` that contains `needle`: lets
/// tests name the expected line without counting by hand.
pub fn line_of(yaml: &str, needle: &str) -> u32 {
    let idx = yaml
        .lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("{needle:?} not found in test YAML"));
    u32::try_from(idx + 1).expect("line number fits in u32")
}

/// [`line_of`] for the `n`th (0-based) line containing `needle`.
pub fn nth_line_of(yaml: &str, needle: &str, n: usize) -> u32 {
    let idx = yaml
        .lines()
        .enumerate()
        .filter(|(_, l)| l.contains(needle))
        .nth(n)
        .map(|(i, _)| i)
        .unwrap_or_else(|| panic!("occurrence {n} of {needle:?} not found in test YAML"));
    u32::try_from(idx + 1).expect("line number fits in u32")
}
