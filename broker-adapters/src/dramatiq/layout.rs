//! Dramatiq's key layout under its namespace (`dramatiq` by default): building the keys
//! taskscope reads, and classifying a key named by a notification or a SCAN. Every key name and
//! suffix test of the adapter lives here; nothing here knows what the keys hold.
//!
//! Per queue `q`: `<ns>:<q>` (list of redis ids), `<ns>:<q>.msgs` (hash of payloads), the delay
//! queue `<ns>:<q>.DQ` / `.DQ.msgs`, the dead letters `<ns>:<q>.XQ` (sorted set) / `.XQ.msgs`;
//! per worker process and queue `<ns>:__acks__.<worker>.<q>` (a set; `q` may be `x.DQ`); and
//! `<ns>:__heartbeats__`.

use crate::adapter::glob_escape;

/// Which of a queue's three lists (and their hashes) a key is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Part {
    /// The queue itself.
    Main,
    /// `.DQ`: delayed and retried messages waiting for their ETA.
    Delayed,
    /// `.XQ`: dead letters.
    Dead,
}

impl Part {
    fn suffix(self) -> &'static str {
        match self {
            Part::Main => "",
            Part::Delayed => ".DQ",
            Part::Dead => ".XQ",
        }
    }
}

/// What a key under the namespace is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind<'k> {
    /// `<ns>:<q>`, `<ns>:<q>.DQ` (lists) or `<ns>:<q>.XQ` (a sorted set); `queue` is the base.
    List { queue: &'k str, part: Part },
    /// `<ns>:<q>.msgs`, `.DQ.msgs`, `.XQ.msgs`.
    Messages { queue: &'k str, part: Part },
    /// `<ns>:__acks__.<worker>.<q>`: `queue` is the base queue, `delayed` for a `.DQ` one.
    Acks {
        worker: &'k str,
        queue: &'k str,
        delayed: bool,
    },
    /// `<ns>:__heartbeats__`.
    Heartbeats,
}

/// Key names under one namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    ns: String,
}

/// The base queue and part of a queue name as Dramatiq writes it (`default.DQ`).
pub fn split_queue(name: &str) -> (&str, Part) {
    if let Some(q) = name.strip_suffix(".DQ") {
        (q, Part::Delayed)
    } else if let Some(q) = name.strip_suffix(".XQ") {
        (q, Part::Dead)
    } else {
        (name, Part::Main)
    }
}

impl Layout {
    pub fn new(ns: &str) -> Layout {
        Layout { ns: ns.to_string() }
    }

    fn key(&self, rest: &str) -> String {
        format!("{}:{rest}", self.ns)
    }

    /// `<ns>:<q>` and its `.DQ` / `.XQ`.
    pub fn list(&self, queue: &str, part: Part) -> String {
        self.key(&format!("{queue}{}", part.suffix()))
    }

    /// `<ns>:<q>.msgs` and its `.DQ.msgs` / `.XQ.msgs`.
    pub fn messages(&self, queue: &str, part: Part) -> String {
        self.key(&format!("{queue}{}.msgs", part.suffix()))
    }

    /// The hash of the messages of a list key (`<ns>:<q>.DQ` -> `<ns>:<q>.DQ.msgs`).
    pub fn messages_of_list(list_key: &str) -> String {
        format!("{list_key}.msgs")
    }

    pub fn heartbeats(&self) -> String {
        self.key("__heartbeats__")
    }

    fn acks_prefix(&self) -> String {
        self.key("__acks__.")
    }

    /// Globs: every `.msgs` hash, every ack set, every dead-letter set.
    pub fn messages_pattern(&self) -> String {
        format!("{}:*.msgs", glob_escape(&self.ns))
    }

    pub fn acks_pattern(&self) -> String {
        format!("{}:__acks__.*", glob_escape(&self.ns))
    }

    pub fn dead_pattern(&self) -> String {
        format!("{}:*.XQ", glob_escape(&self.ns))
    }

    /// `<ns>:__acks__.<worker>.<queue>` -> (worker, queue as named, e.g. `default.DQ`).
    pub fn parse_acks<'k>(&self, key: &'k str) -> Option<(&'k str, &'k str)> {
        let rest = key.strip_prefix(&self.acks_prefix())?;
        // Worker ids are uuids (no dots); the queue may contain dots.
        rest.split_once('.')
    }

    pub fn classify<'k>(&self, key: &'k str) -> Option<KeyKind<'k>> {
        if let Some((worker, name)) = self.parse_acks(key) {
            let (queue, part) = split_queue(name);
            return Some(KeyKind::Acks {
                worker,
                queue,
                delayed: part == Part::Delayed,
            });
        }
        let rest = key.strip_prefix(&self.ns)?.strip_prefix(':')?;
        if rest == "__heartbeats__" {
            return Some(KeyKind::Heartbeats);
        }
        if let Some(hash) = rest.strip_suffix(".msgs") {
            let (queue, part) = split_queue(hash);
            return Some(KeyKind::Messages { queue, part });
        }
        let (queue, part) = split_queue(rest);
        Some(KeyKind::List { queue, part })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_classify_back_to_what_built_them() {
        let l = Layout::new("dramatiq");
        for part in [Part::Main, Part::Delayed, Part::Dead] {
            assert_eq!(
                l.classify(&l.list("a.b", part)),
                Some(KeyKind::List { queue: "a.b", part })
            );
            assert_eq!(
                l.classify(&l.messages("a.b", part)),
                Some(KeyKind::Messages { queue: "a.b", part })
            );
        }
        assert_eq!(
            l.classify("dramatiq:__acks__.w1.default.DQ"),
            Some(KeyKind::Acks {
                worker: "w1",
                queue: "default",
                delayed: true
            })
        );
        assert_eq!(l.classify(&l.heartbeats()), Some(KeyKind::Heartbeats));
        assert_eq!(l.classify("other:default"), None);
        assert_eq!(
            Layout::messages_of_list(&l.list("q", Part::Delayed)),
            l.messages("q", Part::Delayed)
        );
    }
}
