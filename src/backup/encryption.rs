//! Archives encrypted to age recipients (`maubot backup --encrypt-to age1…`), in the age-encryption.org/v1
//! format through the `age` crate: the archive holds access tokens and E2EE keys, and an encrypted one can sit
//! on a backup server that must not read them. Decrypted by `maubot restore --identity FILE`, or by `age -d` /
//! `rage -d` with the same identity file. Only native X25519 recipients (`age1…`): they need no plugins and no
//! passphrase prompt, so a timer can write them.

use std::io::{BufRead, Read, Write};
use std::path::Path;
use std::str::FromStr;

use super::BackupError;

/// The first bytes of every age file.
const MAGIC: &[u8] = b"age-encryption.org/v1";

/// Parses `age1…` recipients.
pub fn parse_recipients(texts: &[String]) -> Result<Vec<age::x25519::Recipient>, BackupError> {
    texts
        .iter()
        .map(|text| {
            age::x25519::Recipient::from_str(text.trim())
                .map_err(|reason| BackupError::BadRecipient { recipient: text.clone(), reason: reason.to_string() })
        })
        .collect()
}

/// Reads an age identity file (what `age-keygen` writes: `AGE-SECRET-KEY-1…` lines, `#` comments).
pub fn read_identities(path: &Path) -> Result<Vec<Box<dyn age::Identity>>, BackupError> {
    let bad = |reason: String| BackupError::BadIdentity { path: path.to_owned(), reason };
    let file = std::fs::File::open(path).map_err(|e| bad(e.to_string()))?;
    let identities = age::IdentityFile::from_buffer(std::io::BufReader::new(file))
        .map_err(|e| bad(e.to_string()))?
        .into_identities()
        .map_err(|e| bad(e.to_string()))?;
    if identities.is_empty() {
        return Err(bad("it holds no identity (an AGE-SECRET-KEY-1… line)".into()));
    }
    Ok(identities)
}

/// Whether `input` starts like an age file (looked at without consuming it).
pub fn is_encrypted(input: &mut impl BufRead) -> std::io::Result<bool> {
    Ok(input.fill_buf()?.starts_with(MAGIC))
}

/// The archive's bytes, decrypted when it is an age file. `from` names the archive in errors.
pub fn reader<'a, R: BufRead + 'a>(
    from: &Path,
    mut input: R,
    identities: &[Box<dyn age::Identity>],
) -> Result<Box<dyn Read + 'a>, BackupError> {
    if !is_encrypted(&mut input).map_err(super::io(from))? {
        return Ok(Box::new(input));
    }
    if identities.is_empty() {
        return Err(BackupError::Encrypted { path: from.to_owned() });
    }
    let cannot = |reason: String| BackupError::CannotDecrypt { path: from.to_owned(), reason };
    let decryptor = age::Decryptor::new_buffered(input).map_err(|e| cannot(e.to_string()))?;
    let reader = decryptor
        .decrypt(identities.iter().map(|i| i.as_ref() as &dyn age::Identity))
        .map_err(|e| cannot(e.to_string()))?;
    Ok(Box::new(reader))
}

/// Where an archive is written: the file itself, or an age stream into it.
pub enum Sink<W: Write> {
    Plain(W),
    Encrypted(age::stream::StreamWriter<W>),
}

impl<W: Write> Sink<W> {
    pub fn new(output: W, recipients: &[age::x25519::Recipient]) -> std::io::Result<Self> {
        if recipients.is_empty() {
            return Ok(Sink::Plain(output));
        }
        let encryptor = age::Encryptor::with_recipients(recipients.iter().map(|r| r as &dyn age::Recipient))
            .map_err(std::io::Error::other)?;
        Ok(Sink::Encrypted(encryptor.wrap_output(output)?))
    }

    /// Ends the age stream (its last chunk and tag); returns the file.
    pub fn finish(self) -> std::io::Result<W> {
        match self {
            Sink::Plain(output) => Ok(output),
            Sink::Encrypted(stream) => stream.finish(),
        }
    }
}

impl<W: Write> Write for Sink<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Sink::Plain(output) => output.write(buf),
            Sink::Encrypted(stream) => stream.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Sink::Plain(output) => output.flush(),
            Sink::Encrypted(stream) => stream.flush(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use age::secrecy::ExposeSecret;

    #[test]
    fn an_archive_encrypted_to_a_recipient_opens_only_with_its_identity() {
        let identity = age::x25519::Identity::generate();
        let recipients = parse_recipients(&[identity.to_public().to_string()]).unwrap();
        let mut sink = Sink::new(Vec::new(), &recipients).unwrap();
        sink.write_all(b"the tar bytes").unwrap();
        let encrypted = sink.finish().unwrap();
        assert!(encrypted.starts_with(MAGIC) && !encrypted.windows(3).any(|w| w == b"tar"));

        let dir = tempfile::tempdir().unwrap();
        let key_file = dir.path().join("key.txt");
        std::fs::write(&key_file, format!("# a comment\n{}\n", identity.to_string().expose_secret())).unwrap();
        let identities = read_identities(&key_file).unwrap();
        let from = Path::new("archive.tar");
        let mut plain = Vec::new();
        reader(from, encrypted.as_slice(), &identities).unwrap().read_to_end(&mut plain).unwrap();
        assert_eq!(plain, b"the tar bytes");

        assert!(matches!(reader(from, encrypted.as_slice(), &[]), Err(BackupError::Encrypted { .. })));
        let other = dir.path().join("other.txt");
        std::fs::write(&other, age::x25519::Identity::generate().to_string().expose_secret()).unwrap();
        let wrong = read_identities(&other).unwrap();
        assert!(matches!(reader(from, encrypted.as_slice(), &wrong), Err(BackupError::CannotDecrypt { .. })));
        let mut same = Vec::new();
        reader(from, b"not encrypted".as_slice(), &identities).unwrap().read_to_end(&mut same).unwrap();
        assert_eq!(same, b"not encrypted", "a plain archive reads as it is");
        assert!(matches!(parse_recipients(&["age1notakey".into()]), Err(BackupError::BadRecipient { .. })));
    }
}
