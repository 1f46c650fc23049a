//! Integer socket options that neither `socket2` nor `nix` sets on a bare descriptor
//! (`SO_RCVLOWAT`), or that are set on descriptors owned by the ring rather than a socket
//! type: one `setsockopt(2)` wrapper for both.

use std::os::fd::RawFd;

/// `setsockopt(fd, level, name, &value)` for an `int` option.
pub fn set_int(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> std::io::Result<()> {
    // SAFETY: a pointer to an int and its size; an invalid descriptor is an error, not UB.
    let result = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if result == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
