//! The partition manifest: which children the root builds (and starts) at
//! boot. A text entry `manifest` in the boot bundle, one child per line:
//!
//! ```text
//! # name   options (as for `create`)
//! alpha --memory 32M --vps 1 --image testos --mode hello --start
//! beta  --memory 32M --vps 1 --image testos --mode hello --start
//! ```
//!
//! Blank lines and lines starting with `#` are ignored. Each line is parsed
//! exactly like the shell's `create` command.

use crate::cli::{self, Command, CreateSpec, ParseError};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

/// A manifest line that did not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestError {
    /// 1-based line number.
    pub line: usize,
    /// Why.
    pub error: ParseError,
}

impl core::fmt::Display for ManifestError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "manifest line {}: {}", self.line, self.error)
    }
}

/// One child to build at boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// What to build.
    pub spec: CreateSpec,
    /// Start it after building.
    pub start: bool,
}

/// Parse the whole manifest; the first bad line fails it.
pub fn parse(text: &str) -> Result<Vec<Entry>, ManifestError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let err = |error| ManifestError { line: i + 1, error };
        let as_create: String = format!("create {line}");
        match cli::parse(&as_create).map_err(err)? {
            Some(Command::Create { spec, start }) => out.push(Entry { spec, start }),
            _ => return Err(err(ParseError::Missing("a partition"))),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_default_manifest() {
        let text = "# children\n\nalpha --memory 32M --image testos --start\nbeta --memory 16M --vps 2 --image testos --mode spin\n";
        let entries = parse(text).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].spec.name, "alpha");
        assert!(entries[0].start);
        assert_eq!(entries[1].spec.vps, 2);
        assert!(!entries[1].start);
    }

    #[test]
    fn reports_the_bad_line() {
        let e = parse("alpha --memory 32M --image testos\nbeta --memory lots --image t\n").unwrap_err();
        assert_eq!(e.line, 2);
        assert!(
            e.to_string()
                .starts_with("manifest line 2: bad value 'lots' for --memory")
        );
    }
}
