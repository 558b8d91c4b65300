//! Bounded label values for `/metrics`. Queue and task names come from producers, so a label
//! per value would let anyone who can write to Redis grow every scrape (and Prometheus) without
//! end. A [`LabelCap`] gives at most `max` values of one dimension series of their own, the
//! busiest ones, and counts the rest under [`OTHER`]; every value is cut to
//! [`MAX_LABEL_CHARS`].
//!
//! Busiest, with counters that never go backwards: a value counted under `other` whose volume
//! grows past twice the quietest admitted value's takes its place. The demoted value's counts
//! move into `other` (so `other` and every sum only grow); the promoted value's series starts
//! from that event (what it had before stays in `other`). Volumes of values outside the admitted
//! set are kept in a space-saving sketch of bounded size (a busy value is never evicted from it;
//! a quiet one may be, and then restarts from the smallest count kept).

use std::collections::HashMap;

/// The label value of everything folded together.
pub const OTHER: &str = "other";
/// Longest label value kept (in characters); longer values are cut.
pub const MAX_LABEL_CHARS: usize = 128;

/// One label dimension (queues, or task names).
#[derive(Debug)]
pub struct LabelCap {
    max: usize,
    /// Values with series of their own, and how many events each has had.
    admitted: HashMap<String, u64>,
    /// Events of values counted under `other`, as (count, over-count): a value entering the
    /// full sketch inherits the evicted count, so `count - over` is a lower bound of its own.
    candidates: HashMap<String, (u64, u64)>,
}

/// What [`LabelCap::observe`] decided.
#[derive(Debug, PartialEq, Eq)]
pub struct Labelled {
    /// The label value to count this event under.
    pub label: String,
    /// A value that just lost its own series: its counts must move to `other`.
    pub demoted: Option<String>,
}

/// `value` cut to [`MAX_LABEL_CHARS`] characters.
pub fn cut(value: &str) -> &str {
    match value.char_indices().nth(MAX_LABEL_CHARS) {
        Some((at, _)) => &value[..at],
        None => value,
    }
}

impl LabelCap {
    pub fn new(max: usize) -> LabelCap {
        LabelCap {
            max,
            admitted: HashMap::new(),
            candidates: HashMap::new(),
        }
    }

    /// How many values get series of their own.
    pub fn max(&self) -> usize {
        self.max
    }

    fn sketch_capacity(&self) -> usize {
        (self.max * 8).max(64)
    }

    /// Counts one event of `value` and says which label it goes under.
    pub fn observe(&mut self, value: &str) -> Labelled {
        let value = cut(value);
        let own = |label: &str| Labelled {
            label: label.to_string(),
            demoted: None,
        };
        if let Some(n) = self.admitted.get_mut(value) {
            *n += 1;
            return own(value);
        }
        if self.admitted.len() < self.max {
            self.admitted.insert(value.to_string(), 1);
            return own(value);
        }
        let count = self.count_candidate(value);
        let quietest = self
            .admitted
            .iter()
            .min_by_key(|(_, n)| **n)
            .map(|(v, n)| (v.clone(), *n));
        match quietest {
            // Only events certainly its own count: a flood of new values cannot promote one.
            Some((quiet, quiet_n)) if count > quiet_n.saturating_mul(2) => {
                self.admitted.remove(&quiet);
                self.candidates.remove(value);
                self.admitted.insert(value.to_string(), count);
                self.insert_candidate(quiet.clone(), quiet_n);
                Labelled {
                    label: value.to_string(),
                    demoted: Some(quiet),
                }
            }
            _ => own(OTHER),
        }
    }

    /// Adds one event to `value`'s count outside the admitted set; returns the events
    /// certainly its own.
    fn count_candidate(&mut self, value: &str) -> u64 {
        if let Some((n, over)) = self.candidates.get_mut(value) {
            *n += 1;
            return *n - *over;
        }
        let floor = self.make_room();
        self.candidates
            .insert(value.to_string(), (floor + 1, floor));
        1
    }

    fn insert_candidate(&mut self, value: String, count: u64) {
        self.make_room();
        self.candidates.insert(value, (count, 0));
    }

    /// Evicts the quietest candidate when the sketch is full; returns its count (0 if none).
    fn make_room(&mut self) -> u64 {
        if self.candidates.len() < self.sketch_capacity() {
            return 0;
        }
        let quietest = self
            .candidates
            .iter()
            .min_by_key(|(_, (n, _))| *n)
            .map(|(v, (n, _))| (v.clone(), *n));
        match quietest {
            Some((v, n)) => {
                self.candidates.remove(&v);
                n
            }
            None => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_past_the_cap_fold_into_other_until_they_are_busier() {
        let mut cap = LabelCap::new(2);
        assert_eq!(cap.observe("a").label, "a");
        assert_eq!(cap.observe("b").label, "b");
        assert_eq!(cap.observe("c").label, OTHER);
        assert_eq!(cap.observe("c").label, OTHER);
        // c has 3 events, a and b 1 each: c takes the quietest one's place.
        let promoted = cap.observe("c");
        assert_eq!(promoted.label, "c");
        assert!(matches!(promoted.demoted.as_deref(), Some("a" | "b")));
        assert_eq!(cap.admitted.len(), 2);
    }

    #[test]
    fn a_flood_of_unique_values_stays_bounded() {
        let mut cap = LabelCap::new(10);
        for i in 0..10_000 {
            cap.observe(&format!("junk-{i}"));
        }
        assert_eq!(cap.admitted.len(), 10);
        assert!(cap.candidates.len() <= cap.sketch_capacity());
        // The flood's inherited counts promote none of it over a quiet admitted value...
        let mut cap = LabelCap::new(1);
        cap.observe("legit");
        for i in 0..10_000 {
            assert_eq!(cap.observe(&format!("junk-{i}")).label, OTHER);
        }
        // ...while a value really busier does get its own series.
        let mut last = String::new();
        for _ in 0..5 {
            last = cap.observe("hot").label;
        }
        assert_eq!(last, "hot");
    }

    #[test]
    fn long_values_are_cut_on_a_char_boundary() {
        let long = "é".repeat(1_000);
        assert_eq!(cut(&long).chars().count(), MAX_LABEL_CHARS);
        assert_eq!(cut("short"), "short");
    }
}
