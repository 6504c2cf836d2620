//! Layer blobs: verified while streamed, unpacked for overlayfs.
//!
//! A layer is unpacked once per diffID into its own directory. OCI whiteouts
//! become what overlayfs understands: `.wh.NAME` a 0/0 character device,
//! `.wh..wh..opq` the `trusted.overlay.opaque=y` xattr on the directory. No
//! entry may land outside the layer directory: `..` components are refused,
//! and whiteouts, devices and hard links never go through a symlink.

use std::ffi::OsStr;
use std::fs;
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use nix::sys::stat::{Mode, SFlag, makedev, mknod};
use sha2::{Digest as _, Sha256};

use crate::runtime::RuntimeError;

/// Hashes everything read through it.
pub(crate) struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    bytes: u64,
}

impl<R: Read> HashingReader<R> {
    pub(crate) fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }

    /// Reads the rest of the stream, then returns `(sha256:<hex>, size)`.
    pub(crate) fn finish(mut self) -> io::Result<(String, u64)> {
        io::copy(&mut self, &mut io::sink())?;
        Ok((
            format!("sha256:{}", hex::encode(self.hasher.finalize())),
            self.bytes,
        ))
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

pub(crate) fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Compression {
    None,
    Gzip,
    Zstd,
}

pub(crate) fn sniff(head: &[u8]) -> Compression {
    match head {
        [0x1f, 0x8b, ..] => Compression::Gzip,
        [0x28, 0xb5, 0x2f, 0xfd, ..] => Compression::Zstd,
        _ => Compression::None,
    }
}

/// Wraps `reader` in the decompressor its first bytes call for.
pub(crate) fn decompress<'a, R: Read + 'a>(
    reader: R,
    what: &str,
) -> Result<Box<dyn Read + 'a>, RuntimeError> {
    let mut buffered = BufReader::new(reader);
    let head = buffered.fill_buf().map_err(|source| RuntimeError::Io {
        context: format!("reading {what}"),
        source,
    })?;
    match sniff(head) {
        Compression::None => Ok(Box::new(buffered)),
        Compression::Gzip => Ok(Box::new(flate2::read::MultiGzDecoder::new(buffered))),
        Compression::Zstd => Err(RuntimeError::Image(format!(
            "{what} is zstd-compressed, which this node cannot unpack yet (use gzip or uncompressed layers)"
        ))),
    }
}

/// What unpacking a layer blob measured.
#[derive(Debug)]
pub(crate) struct UnpackedLayer {
    /// Digest and size of the blob as stored (compressed).
    pub digest: String,
    pub size: u64,
    /// Digest of the uncompressed tar stream.
    pub diff_id: String,
}

/// Streams the blob at `blob` into `dest` (which must not exist), hashing it
/// on the way, and checks both digests. On any error `dest` is removed, so a
/// half-unpacked or unverified layer is never left behind.
pub(crate) fn unpack_blob(
    blob: &Path,
    dest: &Path,
    expected_digest: Option<&str>,
    expected_diff_id: &str,
) -> Result<UnpackedLayer, RuntimeError> {
    let result = unpack_blob_inner(blob, dest, expected_digest, expected_diff_id);
    if result.is_err() {
        let _ = fs::remove_dir_all(dest);
    }
    result
}

fn unpack_blob_inner(
    blob: &Path,
    dest: &Path,
    expected_digest: Option<&str>,
    expected_diff_id: &str,
) -> Result<UnpackedLayer, RuntimeError> {
    let what = format!("layer {}", blob.display());
    let io_err = |context: String| move |source| RuntimeError::Io { context, source };
    let file = fs::File::open(blob).map_err(io_err(format!("opening {what}")))?;
    fs::create_dir(dest).map_err(io_err(format!("creating {}", dest.display())))?;
    let mut outer = HashingReader::new(file);
    let diff = {
        let mut inner = HashingReader::new(decompress(&mut outer, &what)?);
        unpack_tar(&mut inner, dest).map_err(|e| match e {
            RuntimeError::Io { context, source } => RuntimeError::Io {
                context: format!("{what}: {context}"),
                source,
            },
            other => other,
        })?;
        inner
            .finish()
            .map_err(io_err(format!("decompressing {what}")))?
            .0
    };
    let (digest, size) = outer.finish().map_err(io_err(format!("reading {what}")))?;
    if let Some(expected) = expected_digest
        && expected != digest
    {
        return Err(RuntimeError::DigestMismatch {
            what,
            expected: expected.to_string(),
            actual: digest,
        });
    }
    if diff != expected_diff_id {
        return Err(RuntimeError::DigestMismatch {
            what: format!("{what} (uncompressed, diffID)"),
            expected: expected_diff_id.to_string(),
            actual: diff,
        });
    }
    Ok(UnpackedLayer {
        digest,
        size,
        diff_id: diff,
    })
}

/// Unpacks a (decompressed) layer tar into `dest`.
pub(crate) fn unpack_tar(reader: impl Read, dest: &Path) -> Result<(), RuntimeError> {
    let io = |context: String| move |source| RuntimeError::Io { context, source };
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_unpack_xattrs(true);
    archive.set_overwrite(true);
    archive.set_preserve_mtime(true);
    for entry in archive.entries().map_err(io("reading tar".into()))? {
        let mut entry = entry.map_err(io("reading tar entry".into()))?;
        let raw_path = entry.path().map_err(io("reading entry path".into()))?;
        let rel = relative_inside(&raw_path)?;
        let Some(name) = rel.file_name() else {
            continue; // the layer root itself (`./`)
        };
        let name = name.as_bytes();
        if let Some(target) = name.strip_prefix(b".wh.") {
            let parent = real_dir(dest, rel.parent().unwrap_or(Path::new("")))?;
            if target == b".wh..opq" {
                xattr::set(&parent, "trusted.overlay.opaque", b"y")
                    .map_err(io(format!("marking {} opaque", parent.display())))?;
            } else if !target.starts_with(b".wh.") && !target.is_empty() {
                let path = parent.join(OsStr::from_bytes(target));
                remove_any(&path)?;
                mknod(&path, SFlag::S_IFCHR, Mode::empty(), makedev(0, 0))
                    .map_err(|e| io(format!("creating whiteout {}", path.display()))(e.into()))?;
            }
            // Other `.wh..wh.*` names are aufs bookkeeping: nothing to apply.
            continue;
        }
        let kind = entry.header().entry_type();
        if kind.is_hard_link() {
            let link = entry
                .link_name()
                .map_err(io("reading hard link target".into()))?
                .ok_or_else(|| RuntimeError::Image(format!("hard link {rel:?} has no target")))?;
            let source = no_symlink_path(dest, &relative_inside(&link)?)?;
            let path = real_dir(dest, rel.parent().unwrap_or(Path::new("")))?
                .join(rel.file_name().unwrap_or_default());
            remove_any(&path)?;
            fs::hard_link(&source, &path).map_err(io(format!(
                "hard linking {} to {}",
                path.display(),
                source.display()
            )))?;
        } else if kind.is_character_special() || kind.is_block_special() || kind.is_fifo() {
            let header = entry.header();
            let mode = header.mode().map_err(io("reading mode".into()))?;
            let major = header.device_major().ok().flatten().unwrap_or(0);
            let minor = header.device_minor().ok().flatten().unwrap_or(0);
            let (uid, gid) = (
                header.uid().map_err(io("reading uid".into()))?,
                header.gid().map_err(io("reading gid".into()))?,
            );
            let flag = if kind.is_character_special() {
                SFlag::S_IFCHR
            } else if kind.is_block_special() {
                SFlag::S_IFBLK
            } else {
                SFlag::S_IFIFO
            };
            let path = real_dir(dest, rel.parent().unwrap_or(Path::new("")))?
                .join(rel.file_name().unwrap_or_default());
            remove_any(&path)?;
            mknod(
                &path,
                flag,
                Mode::from_bits_truncate(mode & 0o7777),
                makedev(major.into(), minor.into()),
            )
            .map_err(|e| io(format!("creating device {}", path.display()))(e.into()))?;
            nix::unistd::chown(
                &path,
                Some(nix::unistd::Uid::from_raw(uid as u32)),
                Some(nix::unistd::Gid::from_raw(gid as u32)),
            )
            .map_err(|e| io(format!("chown {}", path.display()))(e.into()))?;
        } else {
            let unpacked = entry
                .unpack_in(dest)
                .map_err(io(format!("unpacking {}", rel.display())))?;
            if !unpacked {
                return Err(RuntimeError::Image(format!(
                    "tar entry {rel:?} would land outside the layer"
                )));
            }
        }
    }
    Ok(())
}

/// `path` made relative (leading `/` and `.` dropped); `..` is refused.
pub(crate) fn relative_inside(path: &Path) -> Result<PathBuf, RuntimeError> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            Component::ParentDir => {
                return Err(RuntimeError::Image(format!(
                    "tar entry {path:?} escapes the layer (contains ..)"
                )));
            }
        }
    }
    Ok(out)
}

/// `dest/rel` as a directory, creating missing components, refusing any
/// existing component that is a symlink or not a directory.
fn real_dir(dest: &Path, rel: &Path) -> Result<PathBuf, RuntimeError> {
    let mut cur = dest.to_path_buf();
    for c in rel.components() {
        cur.push(c);
        match fs::symlink_metadata(&cur) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(RuntimeError::Image(format!(
                    "{} is a symlink or a file, not a directory: refusing to write through it",
                    cur.display()
                )));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir(&cur).map_err(|source| RuntimeError::Io {
                    context: format!("creating {}", cur.display()),
                    source,
                })?;
            }
            Err(source) => {
                return Err(RuntimeError::Io {
                    context: format!("inspecting {}", cur.display()),
                    source,
                });
            }
        }
    }
    Ok(cur)
}

/// `dest/rel`, which must exist and whose parents must be real directories.
fn no_symlink_path(dest: &Path, rel: &Path) -> Result<PathBuf, RuntimeError> {
    let mut cur = dest.to_path_buf();
    let n = rel.components().count();
    for (i, c) in rel.components().enumerate() {
        cur.push(c);
        let meta = fs::symlink_metadata(&cur).map_err(|source| RuntimeError::Io {
            context: format!("hard link target {}", cur.display()),
            source,
        })?;
        if i + 1 < n && !meta.is_dir() {
            return Err(RuntimeError::Image(format!(
                "hard link target goes through {}, which is not a directory",
                cur.display()
            )));
        }
    }
    Ok(cur)
}

fn remove_any(path: &Path) -> Result<(), RuntimeError> {
    let result = match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    };
    result.map_err(|source| RuntimeError::Io {
        context: format!("replacing {}", path.display()),
        source,
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};

    use super::*;

    fn tar_of(entries: &[(&str, tar::EntryType, &[u8], Option<&str>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, kind, data, link) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_mode(if kind.is_dir() { 0o755 } else { 0o644 });
            h.set_size(data.len() as u64);
            h.set_mtime(1);
            h.set_uid(0);
            h.set_gid(0);
            if let Some(l) = link {
                h.set_link_name(l).unwrap();
            }
            // set_path refuses `..`; write the raw name to test our own check.
            let name = h.as_old_mut().name.as_mut();
            name[..path.len()].copy_from_slice(path.as_bytes());
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn whiteouts_and_opaque_dirs() {
        let dir = tempfile::tempdir().unwrap();
        let t = tar_of(&[
            ("etc/", tar::EntryType::Directory, b"", None),
            ("etc/.wh.gone", tar::EntryType::Regular, b"", None),
            ("var/.wh..wh..opq", tar::EntryType::Regular, b"", None),
            ("var/kept", tar::EntryType::Regular, b"k", None),
            ("etc/a", tar::EntryType::Regular, b"a", None),
            ("etc/b", tar::EntryType::Link, b"", Some("etc/a")),
        ]);
        unpack_tar(&t[..], dir.path()).unwrap();
        let wh = fs::symlink_metadata(dir.path().join("etc/gone")).unwrap();
        assert!(wh.file_type().is_char_device());
        assert_eq!(wh.rdev(), 0);
        assert_eq!(
            xattr::get(dir.path().join("var"), "trusted.overlay.opaque").unwrap(),
            Some(b"y".to_vec())
        );
        assert_eq!(fs::read(dir.path().join("var/kept")).unwrap(), b"k");
        let (a, b) = (
            fs::metadata(dir.path().join("etc/a")).unwrap(),
            fs::metadata(dir.path().join("etc/b")).unwrap(),
        );
        assert_eq!(a.ino(), b.ino());
    }

    #[test]
    fn refuses_escapes() {
        let outside = tempfile::tempdir().unwrap();
        for entries in [
            vec![("../evil", tar::EntryType::Regular, &b"x"[..], None)],
            vec![("a/../../evil", tar::EntryType::Regular, &b"x"[..], None)],
            vec![(
                "h",
                tar::EntryType::Link,
                &b""[..],
                Some("../../etc/passwd"),
            )],
        ] {
            let dir = tempfile::tempdir().unwrap();
            let t = tar_of(&entries);
            assert!(unpack_tar(&t[..], dir.path()).is_err(), "{entries:?}");
        }
        // A symlink pointing outside, then a whiteout or device through it.
        let dir = tempfile::tempdir().unwrap();
        let target = outside.path().to_str().unwrap().to_string();
        let t = tar_of(&[
            ("out", tar::EntryType::Symlink, b"", Some(&target)),
            ("out/.wh.x", tar::EntryType::Regular, b"", None),
        ]);
        assert!(unpack_tar(&t[..], dir.path()).is_err());
        let t = tar_of(&[
            ("out", tar::EntryType::Symlink, b"", Some(&target)),
            ("out/file", tar::EntryType::Regular, b"x", None),
        ]);
        assert!(unpack_tar(&t[..], dir.path()).is_err());
        assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0);
    }

    #[test]
    fn verifies_digests_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let t = tar_of(&[("f", tar::EntryType::Regular, b"hello", None)]);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(&mut gz, &t).unwrap();
        let gz = gz.finish().unwrap();
        let blob = dir.path().join("blob");
        fs::write(&blob, &gz).unwrap();
        let (digest, diff) = (sha256_digest(&gz), sha256_digest(&t));
        let got = unpack_blob(&blob, &dir.path().join("ok"), Some(&digest), &diff).unwrap();
        assert_eq!(
            (got.digest, got.diff_id, got.size),
            (digest.clone(), diff.clone(), gz.len() as u64)
        );
        assert_eq!(fs::read(dir.path().join("ok/f")).unwrap(), b"hello");

        let wrong = sha256_digest(b"other");
        let err = unpack_blob(&blob, &dir.path().join("bad"), Some(&wrong), &diff).unwrap_err();
        assert!(matches!(err, RuntimeError::DigestMismatch { .. }), "{err}");
        assert!(!dir.path().join("bad").exists());
        let err = unpack_blob(&blob, &dir.path().join("bad"), Some(&digest), &wrong).unwrap_err();
        assert!(matches!(err, RuntimeError::DigestMismatch { .. }), "{err}");
        assert!(!dir.path().join("bad").exists());
    }
}
