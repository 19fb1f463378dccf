//! The binary users run keeps the code a running bot uses in one place (scripts/link-order.rs): the functions
//! scripts/hot-code.txt lists lie side by side in `.text`, and the list still names the binary's functions.

use crate::harness::bot::BIN;
use std::collections::HashMap;
use std::process::Command;

/// What the build script did: "applied: ..." or "skipped: <why>".
const OUTCOME: &str = env!("MAUBOT_LINK_ORDER");

#[test]
fn the_code_a_running_bot_uses_is_linked_side_by_side() {
    if let Some(why) = OUTCOME.strip_prefix("skipped: ") {
        // Said, not hidden; and only where it has to be: a binary lld linked names it in its `.comment`.
        eprintln!("link order not applied to {BIN}: {why}");
        let binary = std::fs::read(BIN).unwrap();
        let by_lld = binary.windows(b"Linker: LLD".len()).any(|window| window == b"Linker: LLD");
        assert!(why == "not a release build" || !by_lld, "{BIN} was linked by lld, yet: {OUTCOME}");
        return;
    }
    let output = Command::new("nm").args(["--defined-only", "--print-size", BIN]).output().expect("nm (binutils)");
    assert!(output.status.success(), "nm failed: {}", String::from_utf8_lossy(&output.stderr));
    // address size type name
    let functions: HashMap<&str, (u64, u64)> = std::str::from_utf8(&output.stdout)
        .unwrap()
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [address, size, kind, name] = fields[..] else { return None };
            let address = u64::from_str_radix(address, 16).ok()?;
            matches!(kind, "t" | "T").then_some((name, (address, u64::from_str_radix(size, 16).ok()?)))
        })
        .collect();
    let listed = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/hot-code.txt")).unwrap();
    let listed: Vec<&str> = listed.lines().filter(|line| !line.is_empty()).collect();
    let found: Vec<(u64, u64)> = listed.iter().filter_map(|name| functions.get(name).copied()).collect();
    assert!(
        found.len() * 4 >= listed.len() * 3,
        "scripts/hot-code.txt is stale: only {} of its {} functions are in {BIN}; regenerate it with \
         `python3 scripts/link-order.py` (needs valgrind) and commit it",
        found.len(),
        listed.len()
    );
    let start = found.iter().map(|(address, _)| *address).min().unwrap();
    let end = found.iter().map(|(address, size)| address + size).max().unwrap();
    let total: u64 = found.iter().map(|(_, size)| size).sum();
    // Functions are aligned to 16 bytes: a little padding between them, nothing else.
    assert!(
        end - start <= total + total / 20 + 64 * 1024,
        "the {} listed functions ({total} bytes) are spread over {} bytes of .text: the ordering was not applied",
        found.len(),
        end - start
    );
}
