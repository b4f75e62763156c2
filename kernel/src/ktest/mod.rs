//! In-kernel tests: self-registering test cases grouped in suites, reported as KTAP version 1.
