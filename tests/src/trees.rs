//! Source trees with pseudo-random content for transfer tests.

use std::path::Path;

/// `len` pseudo-random (incompressible) bytes derived from `seed`.
pub fn random_bytes(seed: &str, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    blake3::Hasher::new().update(seed.as_bytes()).finalize_xof().fill(&mut out);
    out
}

/// `files` random files of `size` bytes each, spread over a few directories, plus some
/// small text files. Returns the bytes of file data written.
pub fn random_tree(root: &Path, seed: &str, files: usize, size: usize) -> std::io::Result<u64> {
    let mut total = 0u64;
    for i in 0..files {
        let dir = root.join(format!("data/d{}", i % 7));
        std::fs::create_dir_all(&dir)?;
        let data = random_bytes(&format!("{seed}-{i}"), size);
        std::fs::write(dir.join(format!("f{i:04}.bin")), &data)?;
        total += data.len() as u64;
    }
    std::fs::create_dir_all(root.join("conf"))?;
    for i in 0..50 {
        let text = format!("config {i} of {seed}\n").repeat(40);
        std::fs::write(root.join(format!("conf/c{i:02}")), &text)?;
        total += text.len() as u64;
    }
    Ok(total)
}
