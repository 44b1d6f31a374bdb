//! `hostile`: a package that tries what a sandboxed package must not be
//! able to do, and reports what happened, so a test can assert the host
//! refused it. Its `started` and `stopped` misbehave on request:
//! `HOSTILE_STARTED=spin|trap` and `HOSTILE_STOPPED=spin|sleep` (sleep
//! blocks in a host call, where no epoch deadline reaches it).

steedos_sdk::generate!({
    path: ["../../wit", "wit"],
    world: "test:hostile/hostile-package",
});

use std::ffi::CString;
use std::io::Write;
use std::net::{TcpStream, ToSocketAddrs, UdpSocket};
use std::time::Duration;

use exports::steedos::package::lifecycle::Guest as LifecycleGuest;
use exports::test::hostile::hostile::Guest;

fn outcome<T>(r: std::io::Result<T>) -> String {
    match r {
        Ok(_) => "ok".to_string(),
        Err(e) => format!("refused: {e}"),
    }
}

struct Hostile;

impl Guest for Hostile {
    fn tcp_connect(addr: String) -> String {
        outcome(TcpStream::connect(addr.as_str()).and_then(|mut s| s.write_all(b"hello")))
    }

    fn udp_bind(addr: String) -> String {
        outcome(UdpSocket::bind(addr.as_str()))
    }

    fn lookup(host: String) -> String {
        match (host.as_str(), 80).to_socket_addrs() {
            Ok(addrs) => format!("ok: {:?}", addrs.collect::<Vec<_>>()),
            Err(e) => format!("refused: {e}"),
        }
    }

    fn symlink(target: String, link: String) -> String {
        let (Ok(target), Ok(link)) = (CString::new(target), CString::new(link)) else {
            return "refused: a NUL in a path".to_string();
        };
        // SAFETY: two NUL-terminated strings that outlive the call.
        match unsafe { libc::symlink(target.as_ptr(), link.as_ptr()) } {
            0 => "ok".to_string(),
            _ => format!("refused: {}", std::io::Error::last_os_error()),
        }
    }

    fn read(path: String) -> String {
        match std::fs::read_to_string(&path) {
            Ok(text) => format!("ok: {text}"),
            Err(e) => format!("refused: {e}"),
        }
    }

    fn write(path: String, contents: String) -> String {
        outcome(std::fs::write(&path, contents))
    }
}

fn spin() -> ! {
    let mut n: u64 = 0;
    loop {
        n = std::hint::black_box(n.wrapping_add(1));
    }
}

impl LifecycleGuest for Hostile {
    fn started() -> Result<(), String> {
        match std::env::var("HOSTILE_STARTED").as_deref() {
            Ok("spin") => spin(),
            Ok("trap") => panic!("started traps on purpose"),
            _ => Ok(()),
        }
    }

    fn stopped() {
        match std::env::var("HOSTILE_STOPPED").as_deref() {
            Ok("spin") => spin(),
            Ok("sleep") => std::thread::sleep(Duration::from_secs(600)),
            _ => {}
        }
    }
}

export!(Hostile);
