//! A frame header claiming 2 GiB is refused without allocating anything near
//! that size: this test binary's allocator records the largest single
//! allocation made on the test's thread while the channel reads the header.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::Write;

use proto::{ProtoError, WorkerChannel, socketpair};

/// The system allocator, remembering the largest request per thread.
struct Tracking;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    let _ = LARGEST.try_with(|largest| largest.set(largest.get().max(size)));
}

// SAFETY: every call is forwarded unchanged to `System`.
unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Tracking = Tracking;

/// The claimed 2 GiB is rejected from the header; no allocation on the way
/// exceeds 1 MiB.
#[tokio::test(flavor = "current_thread")]
async fn two_gib_header_allocates_nothing_large() {
    let (mut raw, worker) = socketpair().expect("socketpair");
    let mut worker = WorkerChannel::from_std(worker).expect("channel");
    raw.write_all(&(1u32 << 31).to_be_bytes())
        .expect("write header");
    raw.write_all(&[b'x'; 4096]).expect("write some body");

    LARGEST.with(|largest| largest.set(0));
    let result = worker.recv().await;
    let largest = LARGEST.with(Cell::get);

    assert!(
        matches!(result, Err(ProtoError::FrameTooLarge { len }) if len == 1 << 31),
        "{result:?}"
    );
    assert!(
        largest <= proto::MAX_FRAME,
        "largest allocation was {largest} bytes"
    );
}
