//! The previous release's `maubot`, built from a pinned commit of this repository by
//! `scripts/build-previous-release.sh` (cached under `target/previous-release/`; `scripts/test.sh` builds it before
//! the tests run, so this finds it in place).

use std::path::PathBuf;
use std::sync::OnceLock;

/// The previous release's binary; builds it when it is not there yet.
pub fn previous_release() -> PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY
        .get_or_init(|| {
            let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
            let output = std::process::Command::new("bash")
                .arg(root.join("scripts/build-previous-release.sh"))
                .current_dir(&root)
                .stderr(std::process::Stdio::inherit())
                .output()
                .expect("bash runs");
            assert!(output.status.success(), "scripts/build-previous-release.sh failed");
            let path = String::from_utf8(output.stdout).unwrap();
            root.join(path.trim())
        })
        .clone()
}
