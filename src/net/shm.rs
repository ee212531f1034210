//! Shared-memory mappings for same-host lanes (`net::lane`): the crate's only `mmap`.
//!
//! A [`Mapping`] is a file under `/dev/shm` mapped read-write and shared by the two ranks
//! of one ring link: the sender copies payloads into its slots, the receiver reads them
//! and publishes how many it has consumed in an atomic counter of the control page. Which
//! side may touch which slot when is `net::lane`'s protocol; this module only maps, checks
//! and hands out views.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::ptr::NonNull;
use std::sync::atomic::AtomicU64;

/// A shared, writable mapping of a whole lane file.
#[derive(Debug)]
pub(super) struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by this value; it is only reached through
// `&self`/`&mut self`, so moving it to the event-loop thread is like moving a `Vec<u8>`.
unsafe impl Send for Mapping {}

impl Mapping {
    /// Creates `path` (which must not exist: `O_EXCL`, and `O_NOFOLLOW` so a planted
    /// symlink is not followed), mode 0600, `len` bytes of zeros, and maps it.
    ///
    /// # Errors
    /// Whatever `open`, `ftruncate` or `mmap` report.
    pub(super) fn create(path: &Path, len: usize) -> std::io::Result<Mapping> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)?;
        // The umask may have cleared bits of 0600; the receiver wants exactly 0600.
        let made = file.set_permissions(std::fs::Permissions::from_mode(0o600)).and_then(|()| reserve(&file, len));
        match made.and_then(|()| Mapping::map(&file, len)) {
            Ok(m) => Ok(m),
            Err(e) => {
                let _ = std::fs::remove_file(path);
                Err(e)
            }
        }
    }

    /// Opens and maps a lane file a peer created, after checking that it is a regular
    /// file (not followed through a symlink) owned by this process's user, mode 0600,
    /// exactly `len` bytes long.
    ///
    /// # Errors
    /// A sentence naming the check that failed.
    pub(super) fn open_checked(path: &Path, len: usize) -> Result<Mapping, String> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            // O_NONBLOCK: a FIFO planted under a lane's name cannot block the open; it is
            // then refused as not a regular file.
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
            .open(path)
            .map_err(|e| format!("open: {e}"))?;
        let meta = file.metadata().map_err(|e| format!("fstat: {e}"))?;
        // SAFETY: geteuid has no preconditions and cannot fail.
        let uid = unsafe { libc::geteuid() };
        if !meta.file_type().is_file() {
            return Err("not a regular file".into());
        }
        if meta.uid() != uid {
            return Err(format!("owned by uid {}, this process runs as {uid}", meta.uid()));
        }
        if meta.mode() & 0o7777 != 0o600 {
            return Err(format!("mode {:o}, expected 600", meta.mode() & 0o7777));
        }
        if meta.size() != len as u64 {
            return Err(format!("{} bytes, expected {len}", meta.size()));
        }
        Mapping::map(&file, len).map_err(|e| format!("mmap: {e}"))
    }

    fn map(file: &File, len: usize) -> std::io::Result<Mapping> {
        if len == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "empty lane"));
        }
        // SAFETY: a fresh shared mapping of `len` bytes of an open file at an address the
        // kernel picks; nothing else in this process refers to that range. MAP_POPULATE
        // takes the page faults here, once, instead of in the first collectives.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or_else(|| std::io::Error::other("mmap returned null"))?;
        Ok(Mapping { ptr, len })
    }

    /// Length of the mapping in bytes.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// The atomic counter at byte `offset` (a multiple of 8 inside the mapping).
    ///
    /// # Panics
    /// If `offset` is misaligned or out of range (caller bug).
    pub(super) fn counter(&self, offset: usize) -> &AtomicU64 {
        assert!(offset % 8 == 0 && offset + 8 <= self.len, "lane counter at {offset}");
        // SAFETY: in range and 8-byte aligned (the mapping is page-aligned); both processes
        // only ever access these 8 bytes atomically, and AtomicU64 has u64's layout.
        unsafe { &*self.ptr.as_ptr().add(offset).cast::<AtomicU64>() }
    }

    /// Bytes `[offset, offset + len)` to read.
    ///
    /// # Panics
    /// If the range is outside the mapping (caller bug).
    pub(super) fn bytes(&self, offset: usize, len: usize) -> &[u8] {
        assert!(offset.checked_add(len).is_some_and(|end| end <= self.len), "lane range {offset}+{len}");
        // SAFETY: in range. The lane protocol (`net::lane`) gives these bytes to this side
        // alone until it publishes them: the peer writes a slot only after this side has
        // released it through the control page's counter (release/acquire). A peer that
        // broke that rule could only be the same user running a modified build, which
        // `docs/SECURITY.md` puts out of scope like any authenticated member that lies.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().add(offset), len) }
    }

    /// Bytes `[offset, offset + len)` to write.
    ///
    /// # Panics
    /// If the range is outside the mapping (caller bug).
    pub(super) fn bytes_mut(&mut self, offset: usize, len: usize) -> &mut [u8] {
        assert!(offset.checked_add(len).is_some_and(|end| end <= self.len), "lane range {offset}+{len}");
        // SAFETY: in range; `&mut self` makes this the only view in this process, and the
        // lane protocol keeps the peer off a slot until it is published (see `bytes`).
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr().add(offset), len) }
    }
}

/// Sizes `file` to `len` bytes with every block allocated now: a full tmpfs (Docker gives
/// containers 64 MiB of `/dev/shm` by default) is then an error here, the lane is not
/// offered and the link keeps to TCP, instead of a SIGBUS at the first write to a page
/// the filesystem cannot back.
fn reserve(file: &File, len: usize) -> std::io::Result<()> {
    let len = libc::off_t::try_from(len).map_err(|_| std::io::Error::other("lane too large"))?;
    // SAFETY: posix_fallocate on an open descriptor we own; it touches no memory of ours.
    let err = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len) };
    if err == 0 {
        Ok(())
    } else {
        Err(std::io::Error::from_raw_os_error(err))
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr` and `len` are exactly what mmap returned, and no view outlives
        // `self` (they all borrow it).
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}
