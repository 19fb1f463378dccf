//! Cargo's build script (`build` in Cargo.toml): in release builds linked by lld, the functions listed in
//! scripts/hot-code.txt (those the daemon runs after READY=1, found by scripts/link-order.py) are placed first in
//! `.text`, one after another, instead of wherever their crates put them.
//!
//! Why: after READY the daemon drops its start-up code from memory (src/memory.rs), and the kernel maps up to
//! 64 KiB of the binary around every page fault. Spread over the whole 17 MB `.text`, the few MB a running bot
//! uses made nearly all of it resident again; gathered, they stay a few MB (docs/benchmark.md).
//!
//! Only lld reads `--symbol-ordering-file` (GNU ld 2.40 has no such option), so the script first asks rustc which
//! linker it will use (`--print link-args` on an empty program, with the same target, flags and linker); with
//! another linker the binary is linked as before. Names the binary no longer has are skipped by lld
//! (`--no-warn-symbol-ordering`): a stale list only costs memory. `MAUBOT_LINK_ORDER` tells the crate's tests what
//! was done (tests/integration/link_order.rs).

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The ordering file, relative to Cargo.toml.
const HOT_CODE: &str = "scripts/hot-code.txt";

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let hot_code = manifest_dir.join(HOT_CODE);
    println!("cargo:rerun-if-changed={HOT_CODE}");
    println!("cargo:rerun-if-changed=scripts/link-order.rs");
    let outcome = if env::var("PROFILE").as_deref() != Ok("release") {
        "skipped: not a release build".to_string()
    } else if !hot_code.is_file() {
        format!("skipped: {HOT_CODE} is missing")
    } else if !links_with_lld() {
        "skipped: the linker is not lld".to_string()
    } else {
        println!("cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={}", hot_code.display());
        println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
        format!("applied: {HOT_CODE}")
    };
    println!("cargo:rustc-env=MAUBOT_LINK_ORDER={outcome}");
}

/// Whether rustc links this target's binaries with lld: rustup's x86_64 Linux toolchains do since Rust 1.90
/// (`-fuse-ld=lld` with its bundled `rust-lld`), or flags that ask for it.
fn links_with_lld() -> bool {
    let Some(out_dir) = env::var_os("OUT_DIR").map(PathBuf::from) else { return false };
    let probe = out_dir.join("link-probe.rs");
    if std::fs::write(&probe, "fn main() {}\n").is_err() {
        return false;
    }
    let mut rustc = Command::new(env::var_os("RUSTC").unwrap_or_else(|| "rustc".into()));
    rustc.args(["--print", "link-args", "--crate-type", "bin", "--edition", "2021"]);
    if let Ok(target) = env::var("TARGET") {
        rustc.args(["--target", &target]);
    }
    if let Some(linker) = env::var_os("RUSTC_LINKER") {
        let mut arg = std::ffi::OsString::from("linker=");
        arg.push(linker);
        rustc.arg("-C").arg(arg);
    }
    if let Ok(flags) = env::var("CARGO_ENCODED_RUSTFLAGS") {
        rustc.args(flags.split('\x1f').filter(|flag| !flag.is_empty()));
    }
    rustc.arg("-o").arg(out_dir.join("link-probe")).arg(&probe);
    match rustc.output() {
        Ok(output) if output.status.success() => mentions_lld(&String::from_utf8_lossy(&output.stdout)),
        _ => false,
    }
}

fn mentions_lld(link_args: &str) -> bool {
    link_args.contains("-fuse-ld=lld") || link_args.split(['"', ' ']).any(|arg| is_lld(Path::new(arg)))
}

fn is_lld(program: &Path) -> bool {
    matches!(program.file_name().and_then(|name| name.to_str()), Some("ld.lld" | "rust-lld" | "lld"))
}
