//! Route tests on a store filled with known rows: every report answers exact numbers.
