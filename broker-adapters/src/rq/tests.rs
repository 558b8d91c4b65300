//! Unit tests of the RQ adapter on synthetic replies.
