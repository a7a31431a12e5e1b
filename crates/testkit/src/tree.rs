//! Directory trees: write, read back, compare, copy.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Writes `data` at `dir/rel`, creating parent directories.
pub fn write_file(dir: &Path, rel: &str, data: &[u8]) {
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().expect("a file path has a parent")).expect("mkdir");
    std::fs::write(p, data).expect("write");
}

/// Writes `(path, content, executable)` files under `dir`.
pub fn write_tree(dir: &Path, files: &[(String, Vec<u8>, bool)]) {
    for (p, data, exec) in files {
        write_file(dir, p, data);
        let mode = if *exec { 0o755 } else { 0o644 };
        std::fs::set_permissions(dir.join(p), std::fs::Permissions::from_mode(mode))
            .expect("chmod");
    }
}

/// Every file under `dir` (recursively), in no particular order.
pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out
}

/// Files under `dir` (0 if it does not exist).
pub fn count_files(dir: &Path) -> usize {
    walk(dir).len()
}

/// Every file under `dir` as (relative path, content), sorted: two trees
/// are byte-identical when these are equal.
pub fn read_tree(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = walk(dir)
        .into_iter()
        .map(|p| {
            let rel = p
                .strip_prefix(dir)
                .expect("under dir")
                .to_string_lossy()
                .into_owned();
            let data = std::fs::read(&p).expect("read");
            (rel, data)
        })
        .collect();
    v.sort();
    v
}

/// `cp -a from to`: a copy keeping modes and timestamps.
pub fn copy_tree(from: &Path, to: &Path) {
    let st = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .expect("run cp");
    assert!(st.success(), "cp -a {} {}", from.display(), to.display());
}
