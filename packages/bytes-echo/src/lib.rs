//! `bytes-echo`: large byte lists in and out, for the host's memory tests.

steedos_sdk::generate!({
    path: ["../../wit", "wit"],
    world: "test:bytes/bytes-package",
});

use exports::test::bytes::bytes::{CallError, Guest};
use steedos_sdk::wit::broker;

struct Bytes;

impl Guest for Bytes {
    fn echo(data: Vec<u8>) -> Vec<u8> {
        data
    }

    fn make(size: u32) -> Vec<u8> {
        (0..size).map(|i| i as u8).collect()
    }

    fn fetch(size: u32) -> Result<Vec<u8>, CallError> {
        match size {
            0 => Err(CallError::Failed("nothing to fetch".into())),
            n => Ok(Self::make(n)),
        }
    }

    fn sum(data: Vec<u8>) -> u64 {
        data.iter().map(|b| u64::from(*b)).sum()
    }

    fn wrap(data: Vec<u8>) -> (u32, Vec<u8>) {
        (data.len() as u32, data)
    }

    fn relay(action: String, params: Vec<u8>) -> Result<Vec<u8>, String> {
        broker::call(&action, &params).map_err(|e| format!("{e:?}"))
    }
}

export!(Bytes);
