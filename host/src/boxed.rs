//! Futures boxed where they are built. `Box::pin(make())` builds the
//! future on the stack and then copies it to the heap: for the call path's
//! futures (a call attempt is about 2.6 KB, wasmtime's call about 1.4 KB)
//! that copy showed in profiles as the first `memmove` of every call.
//! [`pinned`] allocates first and has `make` write the future straight
//! into the allocation.
//!
//! A leaf: it knows nothing of calls, only of futures.

use std::pin::Pin;

/// `Box::pin(make())`, with the future written into its box rather than
/// copied there.
#[inline(always)]
pub fn pinned<F: Future>(make: impl FnOnce() -> F) -> Pin<Box<F>> {
    let mut slot = Box::<F>::new_uninit();
    slot.write(make());
    // SAFETY: `write` initialised the slot; if `make` had panicked the
    // uninitialised box would have been freed without dropping an `F`.
    Box::into_pin(unsafe { slot.assume_init() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_pinned_future_runs_and_drops_once() {
        let owned = std::sync::Arc::new(7u32);
        let held = owned.clone();
        let f = pinned(|| async move { *held + 1 });
        assert_eq!(std::sync::Arc::strong_count(&owned), 2);
        assert_eq!(f.await, 8);
        assert_eq!(std::sync::Arc::strong_count(&owned), 1);
    }
}
