//! A per-thread cap on the size of any single allocation, used while third-party parsers read
//! untrusted input.
//!
//! dicom-rs reserves an element's declared length before reading it (with `try_reserve`), so a
//! small malformed file can make it reserve and zero gigabytes. While a cap is set on a thread,
//! this allocator refuses larger requests: a fallible reservation then fails and the parser
//! returns an error instead of exhausting memory. Outside [`with_limit`] it is the system
//! allocator, unchanged. The cap works only in a program that installs [`GuardedAlloc`] as its
//! global allocator (`ctsentry` does, in `main.rs`; so do the fuzz targets); the library does not
//! impose it on its users.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

thread_local! {
    static LIMIT: Cell<usize> = const { Cell::new(usize::MAX) };
}

fn limit() -> usize {
    LIMIT.try_with(Cell::get).unwrap_or(usize::MAX)
}

/// The system allocator with the per-thread single-allocation cap.
pub struct GuardedAlloc;

// SAFETY: every call forwards to `System` with the same arguments, or returns null, which the
// GlobalAlloc contract allows for any request.
unsafe impl GlobalAlloc for GuardedAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() > limit() {
            std::ptr::null_mut()
        } else {
            unsafe { System.alloc(layout) }
        }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() > limit() {
            std::ptr::null_mut()
        } else {
            unsafe { System.alloc_zeroed(layout) }
        }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > limit() {
            std::ptr::null_mut()
        } else {
            unsafe { System.realloc(ptr, layout, new_size) }
        }
    }
}

/// Runs `f` with allocations on this thread capped at `max_bytes` each; the previous cap is
/// restored afterwards, also when `f` panics.
pub fn with_limit<T>(max_bytes: usize, f: impl FnOnce() -> T) -> T {
    struct Restore(usize);
    impl Drop for Restore {
        fn drop(&mut self) {
            let _ = LIMIT.try_with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(limit());
    let _ = LIMIT.try_with(|c| c.set(max_bytes.min(limit())));
    f()
}

#[cfg(test)]
mod tests {
    #[test]
    fn fallible_reservations_over_the_cap_fail_and_the_cap_is_restored() {
        let r = super::with_limit(1 << 20, || {
            let mut v: Vec<u8> = Vec::new();
            (v.try_reserve_exact(64 << 20).is_err(), v.try_reserve_exact(1000).is_ok())
        });
        assert_eq!(r, (true, true));
        let mut v: Vec<u8> = Vec::new();
        assert!(v.try_reserve_exact(64 << 20).is_ok());
    }
}
