//! Self-tests of the harness itself (`p2c_tests`): they prove the tools other tests rely on
//! work here, and that the tree comparator can fail.

mod fixtures;
mod loopfs;
mod netns;
mod util;
