//! The decode budget: how much work and memory one payload may cost any decoder (pickle, JSON,
//! msgpack, zlib/gzip), in one place.
//!
//! A payload over budget is an error for that payload ([`BudgetExceeded`]), never a truncation
//! nobody sees, a panic or a stall: every decoder checks these limits as it goes, so its time and
//! memory are bounded by them whatever the bytes say.
//!
//! The binary sets the limits once at start ([`Limits::configure`], from its flags); decoders read
//! them with [`Limits::current`]. Tests pass their own to the `*_with` functions of
//! [`crate::codec`].

use std::sync::OnceLock;

/// Limits every decoder works within. The defaults let through any payload a real task writes
/// (a result of a million numbers included) and refuse the hostile ones cheaply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Containers nested deeper than this are refused (default 128, serde_json's own limit).
    /// Also caps a pickle's open MARKs, which only nesting needs.
    pub max_depth: usize,
    /// Values (containers and scalars) one payload may decode to, shared references counted
    /// each time they are expanded (default 2,000,000).
    pub max_items: usize,
    /// Bytes of strings and binary values one payload may decode to, shared references counted
    /// each time (default 16 MiB).
    pub max_decoded_bytes: usize,
    /// Bytes a zlib or gzip body may decompress to (default 8 MiB).
    pub max_decompressed_bytes: usize,
}

impl Limits {
    pub const DEFAULT: Limits = Limits {
        max_depth: 128,
        max_items: 2_000_000,
        max_decoded_bytes: 16 * 1024 * 1024,
        max_decompressed_bytes: 8 * 1024 * 1024,
    };

    /// The limits in force: those given to [`Limits::configure`], else the defaults.
    pub fn current() -> Limits {
        CONFIGURED.get().copied().unwrap_or(Limits::DEFAULT)
    }

    /// Sets the process-wide limits; once, before decoding starts. `false` when they were
    /// already set (the first setting stays).
    pub fn configure(limits: Limits) -> bool {
        CONFIGURED.set(limits).is_ok()
    }
}

impl Default for Limits {
    fn default() -> Limits {
        Limits::DEFAULT
    }
}

static CONFIGURED: OnceLock<Limits> = OnceLock::new();

/// Which limit a payload went over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BudgetExceeded {
    #[error("over the decode budget: nested deeper than {0} levels")]
    Depth(usize),
    #[error("over the decode budget: more than {0} values")]
    Items(usize),
    #[error("over the decode budget: more than {0} bytes of strings")]
    Bytes(usize),
    #[error("over the decode budget: decompresses to more than {0} bytes")]
    Decompressed(usize),
}

/// A running count against [`Limits`]: what one decode has spent so far.
#[derive(Debug, Clone)]
pub(crate) struct Spent {
    limits: Limits,
    items: usize,
    bytes: usize,
}

impl Spent {
    pub(crate) fn new(limits: Limits) -> Spent {
        Spent {
            limits,
            items: 0,
            bytes: 0,
        }
    }

    /// Counts `n` more values.
    pub(crate) fn items(&mut self, n: usize) -> Result<(), BudgetExceeded> {
        self.items = self.items.saturating_add(n);
        if self.items > self.limits.max_items {
            return Err(BudgetExceeded::Items(self.limits.max_items));
        }
        Ok(())
    }

    /// Counts `n` more bytes of strings or binary values.
    pub(crate) fn bytes(&mut self, n: usize) -> Result<(), BudgetExceeded> {
        self.bytes = self.bytes.saturating_add(n);
        if self.bytes > self.limits.max_decoded_bytes {
            return Err(BudgetExceeded::Bytes(self.limits.max_decoded_bytes));
        }
        Ok(())
    }

    /// Checks a nesting depth (the root's children are at depth 1).
    pub(crate) fn depth(&self, depth: usize) -> Result<(), BudgetExceeded> {
        if depth > self.limits.max_depth {
            return Err(BudgetExceeded::Depth(self.limits.max_depth));
        }
        Ok(())
    }
}
