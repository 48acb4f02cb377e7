//! Arbitrary operation sequences (insert, batch, contains, claim, complete,
//! release, remove, filler batches, clock forward and back, sync, gc,
//! compact, reopen, kill / power loss / torn power loss, injected failures
//! of msync, fsync, fsync dir, rename, allocate, open, remove and mmap) run
//! against the reference model of `dedupstore-tests`, whose oracle opens the
//! store a power loss (and a kill, and every 7th step a torn power loss)
//! would leave after every step; any disagreement panics. The decoder is
//! `dedupstore_tests::model::decode_ops`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (durability, nkeys, ops) = dedupstore_tests::model::decode_ops(data);
    dedupstore_tests::model::run(durability, nkeys, &ops);
});
