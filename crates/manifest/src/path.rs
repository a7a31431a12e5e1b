//! Normalised relative paths: the rules every path in a manifest obeys
//! (docs/manifest.md, "Paths"), and conversion to and from filesystem paths.
//!
//! A manifest path is UTF-8, uses `/` as the only separator, is relative, and
//! every component is non-empty, not `.` or `..`, without NUL or `\`, at most
//! [`MAX_COMPONENT_LEN`] bytes; the whole path is at most [`MAX_PATH_LEN`]
//! bytes and [`MAX_DEPTH`] components. Such a path can only name a file
//! strictly inside the directory it is joined to (symlinks aside, which the
//! writer refuses separately).

use std::path::{Path, PathBuf};

/// Longest path, in bytes; also the largest `path_len` in a file entry.
pub const MAX_PATH_LEN: usize = 4096;
/// Longest path component, in bytes.
pub const MAX_COMPONENT_LEN: usize = 255;
/// Most components in one path.
pub const MAX_DEPTH: usize = 64;

/// Which path rule is broken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The path is the empty string.
    #[error("empty path")]
    Empty,
    /// The path is this many bytes, more than [`MAX_PATH_LEN`].
    #[error("path is {0} bytes, the limit is {MAX_PATH_LEN}")]
    TooLong(usize),
    /// The path starts with `/` (or, from the filesystem, has a root or
    /// prefix component).
    #[error("path is absolute")]
    Absolute,
    /// The path has `//` or a trailing `/`.
    #[error("path has an empty component (`//` or a trailing `/`)")]
    EmptyComponent,
    /// A component is `.`.
    #[error("path has a `.` component")]
    Dot,
    /// A component is `..`.
    #[error("path has a `..` component")]
    DotDot,
    /// The path contains a NUL byte.
    #[error("path contains a NUL byte")]
    Nul,
    /// The path contains `\`, refused so that a path means the same on
    /// every platform.
    #[error("path contains a backslash")]
    Backslash,
    /// A component is this many bytes, more than [`MAX_COMPONENT_LEN`].
    #[error("a path component is {0} bytes, the limit is {MAX_COMPONENT_LEN}")]
    ComponentTooLong(usize),
    /// The path has more than [`MAX_DEPTH`] components.
    #[error("path is more than {MAX_DEPTH} levels deep")]
    TooDeep,
    /// A filesystem path component is not valid UTF-8 ([`from_fs`] only).
    #[error("path is not valid UTF-8")]
    NotUtf8,
}

/// Checks that `p` is a normalised relative path as defined above, returning
/// the first rule it breaks.
pub fn validate(p: &str) -> Result<(), PathError> {
    if p.is_empty() {
        return Err(PathError::Empty);
    }
    if p.len() > MAX_PATH_LEN {
        return Err(PathError::TooLong(p.len()));
    }
    if p.starts_with('/') {
        return Err(PathError::Absolute);
    }
    if p.contains('\0') {
        return Err(PathError::Nul);
    }
    // A backslash is a separator on Windows; refusing it keeps a manifest
    // meaning the same thing everywhere.
    if p.contains('\\') {
        return Err(PathError::Backslash);
    }
    let mut depth = 0;
    for c in p.split('/') {
        depth += 1;
        match c {
            "" => return Err(PathError::EmptyComponent),
            "." => return Err(PathError::Dot),
            ".." => return Err(PathError::DotDot),
            _ if c.len() > MAX_COMPONENT_LEN => return Err(PathError::ComponentTooLong(c.len())),
            _ => {}
        }
    }
    if depth > MAX_DEPTH {
        return Err(PathError::TooDeep);
    }
    Ok(())
}

/// Joins a manifest path to `root`, one component at a time. When `rel` has
/// passed [`validate`], the result is always strictly inside `root`; nothing
/// is checked here.
pub fn join(root: &Path, rel: &str) -> PathBuf {
    let mut out = root.to_path_buf();
    for c in rel.split('/') {
        out.push(c);
    }
    out
}

/// Converts a path relative to a checkpoint directory into manifest form
/// (components joined with `/`), then [`validate`]s it.
///
/// # Errors
///
/// [`PathError::NotUtf8`] for a non-UTF-8 component, [`PathError::Dot`],
/// [`PathError::DotDot`] or [`PathError::Absolute`] for `.`, `..` or a
/// root/prefix component, or any error of [`validate`].
pub fn from_fs(rel: &Path) -> Result<String, PathError> {
    let mut parts = Vec::new();
    for c in rel.components() {
        match c {
            std::path::Component::Normal(s) => {
                parts.push(s.to_str().ok_or(PathError::NotUtf8)?);
            }
            std::path::Component::CurDir => return Err(PathError::Dot),
            std::path::Component::ParentDir => return Err(PathError::DotDot),
            _ => return Err(PathError::Absolute),
        }
    }
    let s = parts.join("/");
    validate(&s)?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_normal_paths() {
        for p in [
            "a",
            "a/b",
            "dir/sub/file.bin",
            "x..y",
            ".hidden",
            "a/.b/..c",
        ] {
            assert_eq!(validate(p), Ok(()), "{p}");
        }
    }

    #[test]
    fn rejects_bad_paths() {
        let long = "a".repeat(256);
        let cases: &[(&str, PathError)] = &[
            ("", PathError::Empty),
            ("/etc/passwd", PathError::Absolute),
            ("../x", PathError::DotDot),
            ("a/../../x", PathError::DotDot),
            ("a/./b", PathError::Dot),
            (".", PathError::Dot),
            ("a//b", PathError::EmptyComponent),
            ("a/", PathError::EmptyComponent),
            ("a\0b", PathError::Nul),
            ("a\\..\\b", PathError::Backslash),
            (&long, PathError::ComponentTooLong(256)),
        ];
        for (p, e) in cases {
            assert_eq!(validate(p).as_ref(), Err(e), "{p:?}");
        }
        let deep = vec!["d"; 65].join("/");
        assert_eq!(validate(&deep), Err(PathError::TooDeep));
        let too_long = vec!["abcdefgh"; 600].join("/");
        assert_eq!(validate(&too_long), Err(PathError::TooLong(too_long.len())));
    }

    #[test]
    fn join_stays_inside() {
        let root = Path::new("/tmp/root");
        assert_eq!(join(root, "a/b"), PathBuf::from("/tmp/root/a/b"));
    }
}
