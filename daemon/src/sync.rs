//! Locks that survive a panic elsewhere: the one place that decides what a poisoned lock means.
//!
//! Every `std::sync` lock in narpush guards data that each writer leaves consistent before it
//! could panic (a counter, a map entry, a slot set in one assignment), so a poisoned lock only
//! says that some holder panicked; the data is still what was last written. These helpers take
//! the guard either way, so one panicking task does not take the daemon down with it.

use std::sync::{Mutex, MutexGuard, PoisonError, RwLock, RwLockWriteGuard};

/// Locks `mutex`, poisoned or not.
pub fn lock<T: ?Sized>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Takes `lock` for writing, poisoned or not.
pub fn write<T: ?Sized>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}
