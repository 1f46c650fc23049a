//! The attribution categories, defined once for the whole lab.
//!
//! Every other crate names a category through [`Category`] and its stable lowercase name
//! ([`Category::name`], also the serde representation). The numeric values are shared with
//! the BPF program (`bpf/tracer.bpf.c`, `CAT_*`): do not renumber.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Category {
    /// Client-facing sockets: the listening socket and accepted connections.
    Network = 0,
    /// Sockets whose peer is the database.
    Database = 1,
    /// The log file(s), stdout and stderr.
    Logging = 2,
    /// Waiting for readiness or completions (epoll, poll, io_uring_enter, eventfd).
    EventLoop = 3,
    /// futex and other thread hand-offs.
    Sync = 4,
    /// Thread and process life cycle.
    Threads = 5,
    /// mmap, munmap, mprotect, madvise, brk, mremap.
    Memory = 6,
    /// Everything else, listed by name.
    Other = 7,
}

impl Category {
    pub const ALL: [Category; 8] = [
        Category::Network,
        Category::Database,
        Category::Logging,
        Category::EventLoop,
        Category::Sync,
        Category::Threads,
        Category::Memory,
        Category::Other,
    ];

    /// The stable name used in tables, JSON and metrics labels.
    pub fn name(self) -> &'static str {
        match self {
            Category::Network => "network",
            Category::Database => "database",
            Category::Logging => "logging",
            Category::EventLoop => "event-loop",
            Category::Sync => "sync",
            Category::Threads => "threads",
            Category::Memory => "memory",
            Category::Other => "other",
        }
    }

    pub fn from_name(name: &str) -> Option<Category> {
        Category::ALL.into_iter().find(|c| c.name() == name)
    }

    /// The category with this numeric value (the BPF program's `CAT_*`).
    pub fn from_index(i: u8) -> Option<Category> {
        Category::ALL.get(i as usize).copied()
    }

    /// The three categories an fd can give a call (the rest come from the call itself).
    pub fn is_io(self) -> bool {
        matches!(
            self,
            Category::Network | Category::Database | Category::Logging
        )
    }
}

impl std::fmt::Display for Category {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_match_serde() {
        for c in Category::ALL {
            assert_eq!(Category::from_name(c.name()), Some(c));
            assert_eq!(Category::from_index(c as u8), Some(c));
            assert_eq!(
                serde_json::to_string(&c).unwrap(),
                format!("\"{}\"", c.name())
            );
        }
    }
}
