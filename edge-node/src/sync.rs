//! Locks that survive a panic elsewhere. The values behind these locks are whole after
//! every statement, so a thread that panicked while holding one leaves nothing half
//! written; refusing them afterwards would turn one panic into a panic on every
//! connection (the accept loop included).

use std::sync::{Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard};

/// `m.lock()`, poisoned or not.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `l.read()`, poisoned or not.
pub fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(PoisonError::into_inner)
}
