//! Reading the files a configuration names (config layers, secrets) as untrusted input: regular files only (a
//! FIFO would block, `/dev/zero` would never end), opened without blocking, read up to a size limit, and every
//! failure said as what it is (missing, not permitted, a symlink loop, too large, not a file).

use std::io::Read as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Largest config or override file read.
pub const MAX_CONFIG_BYTES: u64 = 1024 * 1024;
/// Largest secret (credential) file read.
pub const MAX_SECRET_BYTES: u64 = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{path} does not exist", path = .path.display())]
    Missing { path: PathBuf },
    #[error("{path} cannot be read: permission denied (it must be readable by the user maubot runs as)", path = .path.display())]
    PermissionDenied { path: PathBuf },
    #[error("{path} cannot be read: it is a loop of symbolic links", path = .path.display())]
    SymlinkLoop { path: PathBuf },
    #[error("{path} is not a regular file ({kind}); point it at a file", path = .path.display())]
    NotAFile { path: PathBuf, kind: &'static str },
    #[error("{path} is larger than the limit of {limit} bytes", path = .path.display())]
    TooLarge { path: PathBuf, limit: u64 },
    #[error("{path} cannot be read: {source}", path = .path.display())]
    Other { path: PathBuf, source: std::io::Error },
}

impl FileError {
    pub fn is_missing(&self) -> bool {
        matches!(self, FileError::Missing { .. })
    }
}

fn classify(path: &Path, error: std::io::Error) -> FileError {
    let path = path.to_owned();
    match error.kind() {
        std::io::ErrorKind::NotFound => FileError::Missing { path },
        std::io::ErrorKind::PermissionDenied => FileError::PermissionDenied { path },
        _ if error.raw_os_error() == Some(libc::ELOOP) => FileError::SymlinkLoop { path },
        _ => FileError::Other { path, source: error },
    }
}

fn kind_of(file_type: std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if file_type.is_dir() {
        "a directory"
    } else if file_type.is_fifo() {
        "a named pipe"
    } else if file_type.is_char_device() {
        "a character device"
    } else if file_type.is_block_device() {
        "a block device"
    } else if file_type.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

/// Reads a regular file (following symlinks) of at most `limit` bytes.
pub fn read_bounded(path: &Path, limit: u64) -> Result<Vec<u8>, FileError> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| classify(path, e))?;
    let meta = file.metadata().map_err(|e| classify(path, e))?;
    if !meta.is_file() {
        return Err(FileError::NotAFile { path: path.to_owned(), kind: kind_of(meta.file_type()) });
    }
    if meta.len() > limit {
        return Err(FileError::TooLarge { path: path.to_owned(), limit });
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(limit + 1).read_to_end(&mut bytes).map_err(|e| classify(path, e))?;
    if bytes.len() as u64 > limit {
        return Err(FileError::TooLarge { path: path.to_owned(), limit });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn only_regular_files_within_the_limit_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ok");
        std::fs::write(&file, "hello").unwrap();
        assert_eq!(read_bounded(&file, 5).unwrap(), b"hello");
        assert!(matches!(read_bounded(&file, 4), Err(FileError::TooLarge { limit: 4, .. })));
        assert!(read_bounded(&dir.path().join("nope"), 5).unwrap_err().is_missing());
        let zero = dir.path().join("zero");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        assert!(matches!(read_bounded(&zero, 5), Err(FileError::NotAFile { kind: "a character device", .. })));
        assert!(matches!(read_bounded(dir.path(), 5), Err(FileError::NotAFile { kind: "a directory", .. })));
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let started = std::time::Instant::now();
        assert!(matches!(read_bounded(&fifo, 5), Err(FileError::NotAFile { kind: "a named pipe", .. })));
        assert!(started.elapsed() < std::time::Duration::from_secs(1), "a FIFO must not block");
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::os::unix::fs::symlink(&b, &a).unwrap();
        std::os::unix::fs::symlink(&a, &b).unwrap();
        assert!(matches!(read_bounded(&a, 5), Err(FileError::SymlinkLoop { .. })));
        // Permission checks do not apply to root, who runs the tests in CI; a mode-000 file is refused otherwise.
        if unsafe { libc::geteuid() } != 0 {
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o000)).unwrap();
            assert!(matches!(read_bounded(&file, 5), Err(FileError::PermissionDenied { .. })));
        }
    }
}
