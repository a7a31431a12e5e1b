#![allow(dead_code)]

use statesync_manifest::reference::TreeFile;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

pub fn write_tree(dir: &Path, files: &[TreeFile]) {
    for (p, data, exec) in files {
        let abs = dir.join(p);
        std::fs::create_dir_all(abs.parent().unwrap()).unwrap();
        std::fs::write(&abs, data).unwrap();
        let mode = if *exec { 0o755 } else { 0o644 };
        std::fs::set_permissions(&abs, std::fs::Permissions::from_mode(mode)).unwrap();
    }
}

/// A small fixed tree used by golden and behaviour tests.
pub fn sample_tree() -> Vec<TreeFile> {
    let pattern: Vec<u8> = (0..3000u32).map(|i| (i * 7 % 251) as u8).collect();
    vec![
        ("a.txt".into(), b"hello world\n".to_vec(), false),
        ("bin/run".into(), pattern.clone(), true),
        ("data/zeros".into(), vec![0u8; 5000], false),
        ("data/copy-of-run".into(), pattern, false),
        ("empty".into(), Vec::new(), false),
    ]
}
