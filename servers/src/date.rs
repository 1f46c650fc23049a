//! The `Date` header, formatted at most once per second per thread.
//!
//! Reading the clock goes through the vDSO (`clock_gettime` without entering the kernel),
//! so checking it per response is cheap; formatting is what the cache saves. Every thread
//! keeps its own copy, so no lock is taken and no other thread is disturbed.

use std::cell::RefCell;
use std::time::{SystemTime, UNIX_EPOCH};

/// Length of an IMF-fixdate: `Sun, 06 Nov 1994 08:49:37 GMT`.
pub const LEN: usize = 29;

thread_local! {
    static CACHE: RefCell<(u64, [u8; LEN])> = const { RefCell::new((0, [b' '; LEN])) };
}

/// The current date as an RFC 7231 IMF-fixdate.
pub fn now() -> [u8; LEN] {
    let now = SystemTime::now();
    let second = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    CACHE.with(|cache| {
        let mut cache = cache.borrow_mut();
        if cache.0 != second {
            let text = httpdate::fmt_http_date(now);
            cache.1.copy_from_slice(&text.as_bytes()[..LEN]);
            cache.0 = second;
        }
        cache.1
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn is_a_parseable_current_http_date() {
        let text = String::from_utf8(super::now().to_vec()).unwrap();
        let parsed = httpdate::parse_http_date(&text).unwrap();
        let skew = std::time::SystemTime::now().duration_since(parsed).unwrap();
        assert!(skew.as_secs() <= 1, "{text} is {skew:?} old");
        assert!(text.ends_with(" GMT"));
    }
}
