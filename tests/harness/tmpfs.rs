//! A small tmpfs mounted for one test, to run a store out of space (root
//! only). Unmounted, and its mount point removed, when dropped.

use std::ffi::CString;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

pub struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (`"4m"`) on the existing directory `path`;
    /// the error when this process may not mount (not root, or a container
    /// without `CAP_SYS_ADMIN`).
    pub fn mount(path: &Path, size: &str) -> std::io::Result<Tmpfs> {
        let target = CString::new(path.as_os_str().as_bytes()).expect("path without NUL");
        let options = CString::new(format!("size={size},mode=0700")).expect("options");
        // SAFETY: valid NUL-terminated strings for the duration of the call.
        let rc = unsafe {
            libc::mount(
                c"tmpfs".as_ptr(),
                target.as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                options.as_ptr().cast(),
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Tmpfs {
            path: path.to_path_buf(),
        })
    }

    /// Writes a file until the filesystem is full; returns its path.
    pub fn fill(&self) -> PathBuf {
        let filler = self.path.join("filler");
        let mut f = std::fs::File::create(&filler).expect("creating the filler");
        let chunk = vec![0u8; 64 << 10];
        loop {
            match f.write(&chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => panic!("filling {}: {e}", self.path.display()),
            }
        }
        // Smaller writes take the last partial chunk's room too.
        while f.write(&[0u8; 512]).is_ok_and(|n| n > 0) {}
        filler
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if let Ok(target) = CString::new(self.path.as_os_str().as_bytes()) {
            // SAFETY: a valid path; a lazy unmount cannot fail on a busy mount.
            unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        }
        let _ = std::fs::remove_dir(&self.path);
    }
}
