//! Configuration errors: every problem found in a file, with its YAML path and position.

use std::fmt;

/// A position in a YAML file, 1-based as editors show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    /// 1-based line number.
    pub line: usize,
    /// 1-based column number.
    pub column: usize,
}

/// One problem in a configuration file.
///
/// `path` is the YAML path of the offending node in the form
/// `routes[2].filters[0].jwt.provider`; it is empty for problems with the file as a whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// YAML path of the node the error is about (empty for the document root).
    pub path: String,
    /// Where that node starts in the file, when known.
    pub location: Option<Location>,
    /// Human-readable description. Never contains a secret value.
    pub message: String,
}

impl ConfigError {
    /// An error about `path` without a position yet; positions are filled in by the loader.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            location: None,
            message: message.into(),
        }
    }

    /// The same error with its position set.
    pub fn at(mut self, location: Option<Location>) -> Self {
        self.location = location;
        self
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(loc) = self.location {
            write!(f, "line {}:{}: ", loc.line, loc.column)?;
        }
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}
