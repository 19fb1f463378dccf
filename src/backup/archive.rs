//! The archive file: a tar (the `tar` crate) whose first entry is the manifest, then the files it lists, in its
//! order. Written to a temporary file (mode 0600) beside the target, synced, then renamed; read into a staging
//! directory with every entry checked against the manifest (its path, its size and SHA-256, nothing missing,
//! nothing extra, regular files only), so that a damaged archive is refused before anything is restored.

use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

use sha2::Digest;

use super::encryption::{self, Sink};
use super::manifest::{self, Manifest};
use super::{BackupError, io};

/// Largest manifest read.
const MAX_MANIFEST_BYTES: u64 = 4 * 1024 * 1024;

/// Writes the archive of `staging` (the files `manifest` lists) to the new file `to`, encrypted to `recipients`
/// when there are any; returns its size.
pub fn write(
    to: &Path,
    manifest: &Manifest,
    staging: &Path,
    recipients: &[age::x25519::Recipient],
) -> Result<u64, BackupError> {
    let name = to.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let temporary = to.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_file(&temporary);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temporary)
        .map_err(io(&temporary))?;
    let result = (|| {
        let sink = Sink::new(std::io::BufWriter::new(file), recipients)?;
        let mut builder = tar::Builder::new(sink);
        let text = serde_json::to_vec_pretty(manifest).expect("a manifest serializes");
        append(&mut builder, manifest::NAME, text.len() as u64, manifest.created_at, &mut text.as_slice())?;
        for entry in &manifest.files {
            let mut file = std::fs::File::open(staging.join(&entry.path))?;
            append(&mut builder, &entry.path, entry.size, manifest.created_at, &mut file)?;
        }
        let mut writer = builder.into_inner()?.finish()?;
        writer.flush()?;
        let file = writer.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        Ok::<u64, std::io::Error>(file.metadata()?.len())
    })();
    let bytes = match result {
        Ok(bytes) => bytes,
        Err(e) => {
            let _ = std::fs::remove_file(&temporary);
            return Err(io(to)(e));
        }
    };
    if to.exists() {
        let _ = std::fs::remove_file(&temporary);
        return Err(BackupError::TargetExists { path: to.to_owned() });
    }
    std::fs::rename(&temporary, to).map_err(io(to))?;
    if let Some(dir) = to.parent().filter(|p| !p.as_os_str().is_empty())
        && let Ok(dir) = std::fs::File::open(dir)
    {
        let _ = dir.sync_all();
    }
    Ok(bytes)
}

fn append<W: Write>(
    builder: &mut tar::Builder<W>,
    path: &str,
    size: u64,
    mtime: i64,
    data: &mut dyn Read,
) -> std::io::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_size(size);
    header.set_mode(0o600);
    header.set_mtime(mtime.max(0) as u64);
    builder.append_data(&mut header, path, data.take(size))
}

/// Reads the archive `from` into `staging` (empty, private), checking every entry; returns the manifest. An
/// archive encrypted with age is decrypted with `identities` on the way (a damaged one fails its age tag).
pub fn read_checked(
    from: &Path,
    staging: &Path,
    identities: &[Box<dyn age::Identity>],
) -> Result<Manifest, BackupError> {
    let not_an_archive = |reason: String| BackupError::NotAnArchive { path: from.to_owned(), reason };
    let corrupt = |reason: String| BackupError::Corrupt { path: from.to_owned(), reason };
    let file = std::fs::File::open(from).map_err(io(from))?;
    let mut archive = tar::Archive::new(encryption::reader(from, std::io::BufReader::new(file), identities)?);
    let mut entries = archive.entries().map_err(|e| not_an_archive(e.to_string()))?;
    let mut first = match entries.next() {
        Some(Ok(entry)) => entry,
        Some(Err(e)) => return Err(not_an_archive(format!("it is not a tar file ({e})"))),
        None => return Err(not_an_archive("it is empty".into())),
    };
    let first_name = first.path().map(|p| p.to_string_lossy().into_owned()).unwrap_or_default();
    if first_name != manifest::NAME || first.size() > MAX_MANIFEST_BYTES {
        return Err(not_an_archive(format!("its first entry is `{first_name}`, not the manifest")));
    }
    let mut text = Vec::new();
    first.read_to_end(&mut text).map_err(|e| corrupt(format!("the manifest cannot be read: {e}")))?;
    let manifest: Manifest =
        serde_json::from_slice(&text).map_err(|e| not_an_archive(format!("the manifest is not valid: {e}")))?;
    let mut expected: std::collections::BTreeMap<&str, &manifest::FileEntry> =
        manifest.files.iter().map(|f| (f.path.as_str(), f)).collect();
    if expected.len() != manifest.files.len() {
        return Err(corrupt("the manifest names a file twice".into()));
    }
    for entry in entries {
        let mut entry = entry.map_err(|e| corrupt(format!("an entry cannot be read: {e}")))?;
        let path = entry.path().map(|p| p.to_string_lossy().into_owned()).unwrap_or_default();
        if !manifest::is_safe_path(&path) {
            return Err(corrupt(format!("it holds `{path}`, a path outside the state directory")));
        }
        if entry.header().entry_type() != tar::EntryType::Regular {
            return Err(corrupt(format!("`{path}` is not a regular file")));
        }
        let Some(listed) = expected.remove(path.as_str()) else {
            return Err(corrupt(format!("`{path}` is not in the manifest (or is there twice)")));
        };
        let target = staging.join(&path);
        if let Some(parent) = target.parent() {
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(parent).map_err(io(parent))?;
        }
        let mut out =
            std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&target).map_err(io(&target))?;
        let mut hasher = sha2::Sha256::new();
        let mut size = 0u64;
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            let n = entry.read(&mut buffer).map_err(|e| corrupt(format!("`{path}` cannot be read: {e}")))?;
            if n == 0 {
                break;
            }
            hasher.update(&buffer[..n]);
            out.write_all(&buffer[..n]).map_err(io(&target))?;
            size += n as u64;
        }
        out.sync_all().map_err(io(&target))?;
        let sha256 = hex::encode(hasher.finalize());
        if size != listed.size || sha256 != listed.sha256 {
            return Err(corrupt(format!("`{path}` does not match its checksum in the manifest")));
        }
    }
    if let Some(missing) = expected.keys().next() {
        return Err(corrupt(format!("`{missing}` is in the manifest but not in the archive (cut short?)")));
    }
    Ok(manifest)
}
