//! `bytes-import`: large byte lists through a typed import of `bytes-echo`
//! (see `wit/import.wit`).

steedos_sdk::generate!({
    path: ["../../wit", "../bytes-echo/wit", "wit"],
    world: "test:bytes-import/bytes-import-package",
});

use exports::test::bytes_import::through::Guest;
use test::bytes::bytes;

struct Through;

fn counting(size: u32) -> Vec<u8> {
    (0..size).map(|i| i as u8).collect()
}

fn sum(data: &[u8]) -> u64 {
    data.iter().map(|b| u64::from(*b)).sum()
}

impl Guest for Through {
    fn sum(size: u32) -> u64 {
        bytes::sum(&counting(size))
    }

    fn make(size: u32) -> u64 {
        sum(&bytes::make(size))
    }

    fn fetch(size: u32) -> Result<u64, String> {
        match bytes::fetch(size) {
            Ok(data) => Ok(sum(&data)),
            Err(e) => Err(format!("{e:?}")),
        }
    }

    fn echo(size: u32) -> Result<u64, String> {
        let sent = counting(size);
        let back = bytes::echo(&sent);
        match back == sent {
            true => Ok(sum(&back)),
            false => Err(format!("sent {} bytes, got {} others back", sent.len(), back.len())),
        }
    }
}

export!(Through);
