//! Arbitrary operation sequences (insert, batch, remove, contains, clock,
//! sync, gc, compact, reopen, kill / power loss / torn power loss) run
//! against the reference model of `dedupstore-tests`; any disagreement
//! panics. The decoder is `dedupstore_tests::model::decode_ops`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (durability, nkeys, ops) = dedupstore_tests::model::decode_ops(data);
    dedupstore_tests::model::run(durability, nkeys, &ops);
});
