//! A hostile child's hypercall control word, signal input and post input.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| hv1_abi::fuzzing::hypercall_inputs(data));
