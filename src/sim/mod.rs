//! An in-memory network in virtual time that drives the same core as the TCP driver.
