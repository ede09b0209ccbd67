//! The memory readers spend on decoded events, charged before it is spent: the server's
//! memory for that (shared fairly between tenants), and the meter each reader charges as it
//! reads, row by row, by what `size` says a row takes.

use std::sync::Mutex;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::service::capacity::share::{Held, Shares};

/// Memory for decoded events and request bodies, over all readers, in bytes.
pub const MEMORY_BYTES: usize = 128 << 20;
/// How long a reader waits for memory before it is shed with `UNAVAILABLE`.
pub const MEMORY_WAIT: Duration = Duration::from_secs(2);

/// The server's memory for decoded events: 1 KiB units, half of them at most for one
/// tenant. Cheap to clone.
#[derive(Clone)]
pub struct Memory(Shares);

impl Memory {
    pub fn new(bytes: usize) -> Self {
        let kib = u32::try_from(bytes >> 10).unwrap_or(u32::MAX);
        Memory(Shares::new(kib, kib / 2))
    }

    /// The most one tenant may hold, in bytes.
    pub fn share(&self) -> usize {
        (self.0.share() as usize) << 10
    }

    /// Bytes free now, over all tenants.
    pub fn available(&self) -> usize {
        self.0.available() << 10
    }

    /// Holds `bytes` for `tenant` until the result is dropped; `Busy` when they cannot be
    /// had within `MEMORY_WAIT`.
    pub async fn reserve(&self, tenant: &str, bytes: usize) -> Result<Held> {
        let kib = u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX);
        self.0.acquire(tenant, kib, MEMORY_WAIT).await
    }
}

impl Default for Memory {
    fn default() -> Self {
        Memory::new(MEMORY_BYTES)
    }
}

/// Why a charge failed.
#[derive(Debug)]
pub enum Overdrawn {
    /// The reader's own limit would be passed.
    Limit,
    /// No memory came free in time.
    Busy,
}

/// Memory reserved ahead of a read, before it takes a database connection: rows are charged
/// from it without waiting, so that no reader waits for memory with a connection in hand.
pub const ADVANCE: usize = 1 << 20;

/// What one reader holds: every row is charged before it is decoded, against the reader's
/// limit and the server's memory, and held until `release` (or until the meter goes).
pub struct Meter {
    memory: Memory,
    tenant: String,
    limit: usize,
    state: Mutex<Holding>,
}

#[derive(Default)]
struct Holding {
    permits: Option<Held>,
    /// Bytes charged since the last release.
    charged: usize,
    /// All charges since the meter was made.
    total: usize,
}

impl Holding {
    /// Bytes the permits cover.
    fn covered(&self) -> usize {
        self.permits
            .as_ref()
            .map_or(0, |p| (p.units() as usize) << 10)
    }

    fn hold(&mut self, permit: Held) {
        match self.permits.as_mut() {
            Some(held) => held.merge(permit),
            None => self.permits = Some(permit),
        }
    }
}

impl Meter {
    /// A reader of `tenant`'s (or for `tenant`) that may hold at most `limit` bytes.
    pub fn new(memory: &Memory, tenant: &str, limit: usize) -> Self {
        Meter {
            memory: memory.clone(),
            tenant: tenant.to_owned(),
            limit: limit.min(memory.share()),
            state: Mutex::default(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, Holding> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The most this reader may hold.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes charged since the meter was made, released or not.
    pub fn total(&self) -> usize {
        self.state().total
    }

    /// Waits for up to `bytes` more (within the limit) to charge rows from: `Busy` when
    /// they do not come within `MEMORY_WAIT`.
    pub async fn reserve(&self, bytes: usize) -> Result<(), Overdrawn> {
        let wanted = {
            let state = self.state();
            let room = self.limit.saturating_sub(state.covered());
            bytes.min(room)
        };
        if wanted == 0 {
            return Ok(());
        }
        let permit = self
            .memory
            .reserve(&self.tenant, wanted)
            .await
            .map_err(|_| Overdrawn::Busy)?;
        self.state().hold(permit);
        Ok(())
    }

    /// Charges `bytes`, holding them until released: from what was reserved, else from
    /// memory free right now, never waiting.
    pub fn charge(&self, bytes: usize) -> Result<(), Overdrawn> {
        let mut state = self.state();
        if state.charged + bytes > self.limit {
            return Err(Overdrawn::Limit);
        }
        let short = (state.charged + bytes).saturating_sub(state.covered());
        if short > 0 {
            let kib = u32::try_from(short.div_ceil(1024)).unwrap_or(u32::MAX);
            let permit = self
                .memory
                .0
                .try_acquire(&self.tenant, kib)
                .ok_or(Overdrawn::Busy)?;
            state.hold(permit);
        }
        state.charged += bytes;
        state.total += bytes;
        Ok(())
    }

    /// Gives back what was reserved and not charged.
    pub fn settle(&self) {
        let mut state = self.state();
        let keep = u32::try_from(state.charged.div_ceil(1024)).unwrap_or(u32::MAX);
        if let Some(permits) = state.permits.as_mut() {
            drop(permits.split_off(keep));
        }
    }

    /// Gives back what is held: what was read is no longer in memory.
    pub fn release(&self) {
        let mut state = self.state();
        state.permits = None;
        state.charged = 0;
    }
}

/// A reader's charge failing, as the error its caller answers with.
impl From<Overdrawn> for Error {
    fn from(overdrawn: Overdrawn) -> Self {
        match overdrawn {
            Overdrawn::Busy => Error::Busy,
            Overdrawn::Limit => Error::bad_input(
                "first",
                "the answer would hold more events than one request may; ask for fewer or smaller events",
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_meter_holds_what_it_charged_until_released() {
        let memory = Memory::new(1 << 20);
        let meter = Meter::new(&memory, "t", 256 << 10);
        meter.reserve(ADVANCE).await.unwrap();
        assert_eq!(
            memory.available(),
            (1 << 20) - (256 << 10),
            "as much as the limit"
        );
        meter.charge(100 << 10).unwrap();
        assert!(matches!(meter.charge(200 << 10), Err(Overdrawn::Limit)));
        meter.settle();
        assert_eq!(memory.available(), (1 << 20) - (100 << 10));
        meter.charge(50 << 10).unwrap();
        assert_eq!(
            memory.available(),
            (1 << 20) - (150 << 10),
            "taken as it came"
        );
        meter.release();
        assert_eq!(memory.available(), 1 << 20);
        assert_eq!(meter.total(), 150 << 10);
        let (u, v) = (
            Meter::new(&memory, "u", 1 << 20),
            Meter::new(&memory, "v", 1 << 20),
        );
        u.reserve(1 << 20).await.unwrap();
        v.reserve(1 << 20).await.unwrap();
        assert_eq!(memory.available(), 0, "each as much as a tenant's share");
        assert!(
            matches!(meter.charge(1), Err(Overdrawn::Busy)),
            "never waits"
        );
    }
}
