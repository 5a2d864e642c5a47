//! Several source hosts at once.
