//! Cargo's build script (`build` in Cargo.toml): in release builds, the functions listed in scripts/hot-code.txt
//! (those the daemon runs after READY=1, found by scripts/link-order.py) are placed first in `.text`, one after
//! another, instead of wherever their crates put them, when the linker can do it.
//!
//! Why: after READY the daemon drops its start-up code from memory (src/memory.rs), and the kernel maps up to
//! 64 KiB of the binary around every page fault. Spread over the whole 17 MB `.text`, the few MB a running bot
//! uses made nearly all of it resident again; gathered, they stay a few MB (docs/benchmark.md).
//!
//! lld (rustup's default linker on x86_64 Linux since Rust 1.90) and mold read `--symbol-ordering-file`; GNU ld
//! 2.40 does not. So the script first links an empty program with the same rustc, target, flags and linker, and
//! the ordering options: only if that link succeeds are the options given to the binary. Names the binary does
//! not have are skipped (`--no-warn-symbol-ordering`): a stale list only costs memory. `MAUBOT_LINK_ORDER` tells
//! the crate's tests what was done (tests/integration/link_order.rs).

use std::env;
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Command;

/// The ordering file, relative to Cargo.toml.
const HOT_CODE: &str = "scripts/hot-code.txt";

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let hot_code = manifest_dir.join(HOT_CODE);
    println!("cargo:rerun-if-changed={HOT_CODE}");
    println!("cargo:rerun-if-changed=scripts/link-order.rs");
    // One linker argument each (`-Xlinker`, not `-Wl,`, which would split a path at its commas).
    let mut ordering = OsString::from("--symbol-ordering-file=");
    ordering.push(&hot_code);
    let linker_args = [ordering, "--no-warn-symbol-ordering".into()];
    let outcome = if env::var("PROFILE").as_deref() != Ok("release") {
        "skipped: not a release build".to_string()
    } else if !hot_code.is_file() {
        format!("skipped: {HOT_CODE} is missing")
    } else if !links_with(&linker_args) {
        "skipped: the linker does not take --symbol-ordering-file (GNU ld)".to_string()
    } else {
        for arg in &linker_args {
            println!("cargo:rustc-link-arg-bins=-Xlinker");
            println!("cargo:rustc-link-arg-bins={}", arg.to_string_lossy());
        }
        format!("applied: {HOT_CODE}")
    };
    println!("cargo:rustc-env=MAUBOT_LINK_ORDER={outcome}");
}

/// Whether an empty program links with these linker arguments added, built as this package's binaries are.
fn links_with(linker_args: &[OsString]) -> bool {
    let Some(out_dir) = env::var_os("OUT_DIR").map(PathBuf::from) else { return false };
    let probe = out_dir.join("link-probe.rs");
    if std::fs::write(&probe, "fn main() {}\n").is_err() {
        return false;
    }
    let mut rustc = Command::new(env::var_os("RUSTC").unwrap_or_else(|| "rustc".into()));
    rustc.args(["--crate-type", "bin", "--edition", "2021"]);
    if let Ok(target) = env::var("TARGET") {
        rustc.args(["--target", &target]);
    }
    if let Some(linker) = env::var_os("RUSTC_LINKER") {
        let mut arg = OsString::from("linker=");
        arg.push(linker);
        rustc.arg("-C").arg(arg);
    }
    if let Ok(flags) = env::var("CARGO_ENCODED_RUSTFLAGS") {
        rustc.args(flags.split('\x1f').filter(|flag| !flag.is_empty()));
    }
    for arg in linker_args {
        rustc.args(["-C", "link-arg=-Xlinker"]);
        let mut link_arg = OsString::from("link-arg=");
        link_arg.push(arg);
        rustc.arg("-C").arg(link_arg);
    }
    rustc.arg("-o").arg(out_dir.join("link-probe")).arg(&probe);
    rustc.output().is_ok_and(|output| output.status.success())
}
