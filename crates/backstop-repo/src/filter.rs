//! Path patterns for `--exclude` and `--include`, gitignore-style:
//!
//! - `*.tmp` (no `/`): matches a file or directory of that name at any depth;
//! - `/var/cache` (leading `/`): matches that absolute path;
//! - `cache/tmp` (a `/` inside): matches those trailing components anywhere;
//! - a trailing `/` (`build/`) matches directories only;
//! - `*`, `?` and `[abc]` match within one component, `**` across components.
//!
//! A directory that matches matches everything below it.

use std::path::Path;

use globset::{GlobBuilder, GlobMatcher};

use crate::error::{Error, Result};

#[derive(Debug, Clone)]
struct Pattern {
    matcher: GlobMatcher,
    /// Match against the file name only.
    name_only: bool,
    dirs_only: bool,
}

/// A set of patterns.
#[derive(Debug, Clone, Default)]
pub struct PathFilter {
    patterns: Vec<Pattern>,
    sources: Vec<String>,
}

impl PathFilter {
    pub fn new(patterns: &[String]) -> Result<PathFilter> {
        let mut out = PathFilter::default();
        for raw in patterns {
            let trimmed = raw.trim();
            if trimmed.is_empty() {
                continue;
            }
            let dirs_only = trimmed.len() > 1 && trimmed.ends_with('/');
            let body = if dirs_only { trimmed.trim_end_matches('/') } else { trimmed };
            let name_only = !body.contains('/');
            let glob = if name_only || body.starts_with('/') { body.to_string() } else { format!("**/{body}") };
            let matcher = GlobBuilder::new(&glob)
                .literal_separator(true)
                .backslash_escape(true)
                .build()
                .map_err(|e| Error::Invalid(format!("invalid pattern {raw:?}: {e}")))?
                .compile_matcher();
            out.patterns.push(Pattern { matcher, name_only, dirs_only });
            out.sources.push(raw.clone());
        }
        Ok(out)
    }

    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Whether the absolute path `path` itself matches (not its ancestors).
    pub fn matches(&self, path: &Path, is_dir: bool) -> bool {
        let name = path.file_name().map(Path::new);
        self.patterns.iter().any(|p| {
            if p.dirs_only && !is_dir {
                return false;
            }
            if p.name_only { name.is_some_and(|n| p.matcher.is_match(n)) } else { p.matcher.is_match(path) }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(patterns: &[&str]) -> PathFilter {
        PathFilter::new(&patterns.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn names_match_at_any_depth() {
        let f = filter(&["*.tmp", "core"]);
        assert!(f.matches(Path::new("/a/b/x.tmp"), false));
        assert!(f.matches(Path::new("/x.tmp"), false));
        assert!(f.matches(Path::new("/home/core"), true));
        assert!(!f.matches(Path::new("/a/x.tmpl"), false));
        assert!(!f.matches(Path::new("/a.tmp/x"), false), "only the entry's own name counts");
    }

    #[test]
    fn anchored_and_relative_paths() {
        let f = filter(&["/var/cache", "build/out"]);
        assert!(f.matches(Path::new("/var/cache"), true));
        assert!(!f.matches(Path::new("/srv/var/cache"), true));
        assert!(f.matches(Path::new("/src/proj/build/out"), true));
        assert!(!f.matches(Path::new("/src/proj/build/output"), true));
    }

    #[test]
    fn trailing_slash_matches_directories_only() {
        let f = filter(&["logs/"]);
        assert!(f.matches(Path::new("/srv/logs"), true));
        assert!(!f.matches(Path::new("/srv/logs"), false));
    }

    #[test]
    fn star_stays_within_a_component_and_double_star_crosses() {
        let f = filter(&["/home/*/cache", "/data/**/tmp"]);
        assert!(f.matches(Path::new("/home/alice/cache"), true));
        assert!(!f.matches(Path::new("/home/alice/x/cache"), true));
        assert!(f.matches(Path::new("/data/a/b/c/tmp"), true));
    }

    #[test]
    fn bad_patterns_are_reported() {
        let err = PathFilter::new(&["[unclosed".to_string()]).unwrap_err();
        assert!(err.to_string().contains("[unclosed"), "{err}");
    }
}
