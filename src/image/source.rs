//! Reading an import source: hashed on a thread of its own, decompressed by its magic bytes.
//!
//! The reader thread hashes the bytes exactly as given (so the digest matches `sha256sum FILE`)
//! while the importing thread decompresses and writes files: on two cores, hashing costs almost
//! no wall time.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::thread::JoinHandle;

use sha2::{Digest, Sha256};

use super::ImageError;

const CHUNK: usize = 1024 * 1024;
/// Chunks in flight between the reader and the importer: bounds memory to ~8 MiB.
const CHUNKS_IN_FLIGHT: usize = 8;

/// The compression of a tar stream, told by its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Xz,
    Zstd,
    Bzip2,
}

impl Compression {
    pub fn detect(head: &[u8]) -> Self {
        match head {
            [0x1f, 0x8b, ..] => Self::Gzip,
            [0xfd, b'7', b'z', b'X', b'Z', 0x00, ..] => Self::Xz,
            [0x28, 0xb5, 0x2f, 0xfd, ..] => Self::Zstd,
            [b'B', b'Z', b'h', ..] => Self::Bzip2,
            _ => Self::None,
        }
    }
}

/// A source being read and hashed on its own thread.
#[derive(Debug)]
pub struct HashedSource {
    chunks: Receiver<io::Result<Vec<u8>>>,
    current: Vec<u8>,
    pos: usize,
    hasher: Option<JoinHandle<String>>,
}

impl HashedSource {
    pub fn spawn(file: File) -> Result<Self, ImageError> {
        let (tx, rx) = mpsc::sync_channel(CHUNKS_IN_FLIGHT);
        let hasher = std::thread::Builder::new()
            .name("import-reader".into())
            .spawn(move || read_and_hash(file, tx))
            .map_err(|source| ImageError::Io {
                context: "starting the import reader thread".into(),
                source,
            })?;
        Ok(Self {
            chunks: rx,
            current: Vec::new(),
            pos: 0,
            hasher: Some(hasher),
        })
    }

    /// Reads what the importer left unread (tar's trailing padding) and returns the source's
    /// SHA-256 as `sha256:HEX`.
    pub fn finish(mut self) -> Result<String, ImageError> {
        io::copy(&mut self, &mut io::sink()).map_err(ImageError::read)?;
        let hasher = self.hasher.take().ok_or_else(|| ImageError::Io {
            context: "finishing the import digest".into(),
            source: io::Error::other("digest already taken"),
        })?;
        let hex = hasher.join().map_err(|_| ImageError::Io {
            context: "the import reader thread".into(),
            source: io::Error::other("it panicked"),
        })?;
        Ok(format!("sha256:{hex}"))
    }
}

impl Read for HashedSource {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.current.len() {
            match self.chunks.recv() {
                Ok(chunk) => {
                    self.current = chunk?;
                    self.pos = 0;
                }
                // The reader thread hung up: end of input.
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len() - self.pos);
        buf[..n].copy_from_slice(&self.current[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

fn read_and_hash(mut file: File, tx: SyncSender<io::Result<Vec<u8>>>) -> String {
    let mut hasher = Sha256::new();
    loop {
        let mut chunk = vec![0; CHUNK];
        let n = match file.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                let _ = tx.send(Err(e));
                break;
            }
        };
        chunk.truncate(n);
        hasher.update(&chunk);
        if tx.send(Ok(chunk)).is_err() {
            // The importer gave up; the digest no longer matters.
            break;
        }
    }
    let digest = hasher.finalize();
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Wraps `source` in the decompressor its first bytes call for.
pub fn decompress<'a, R: Read + 'a>(source: R) -> Result<Box<dyn Read + 'a>, ImageError> {
    let mut buffered = BufReader::with_capacity(CHUNK, source);
    let head = buffered.fill_buf().map_err(ImageError::read)?;
    if head.is_empty() {
        return Err(ImageError::EmptyInput);
    }
    Ok(match Compression::detect(head) {
        Compression::None => Box::new(buffered),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(buffered)),
        Compression::Xz => Box::new(xz2::bufread::XzDecoder::new_multi_decoder(buffered)),
        Compression::Zstd => {
            Box::new(zstd::stream::read::Decoder::with_buffer(buffered).map_err(ImageError::read)?)
        }
        Compression::Bzip2 => return Err(ImageError::UnsupportedCompression("bzip2")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_compression_by_magic() {
        assert_eq!(Compression::detect(&[0x1f, 0x8b, 8]), Compression::Gzip);
        assert_eq!(Compression::detect(b"\xfd7zXZ\x00rest"), Compression::Xz);
        assert_eq!(
            Compression::detect(&[0x28, 0xb5, 0x2f, 0xfd, 0]),
            Compression::Zstd
        );
        assert_eq!(Compression::detect(b"BZh91AY"), Compression::Bzip2);
        assert_eq!(Compression::detect(b"./\0\0"), Compression::None);
        assert_eq!(Compression::detect(b""), Compression::None);
    }
}
