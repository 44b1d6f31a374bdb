//! `greeter` version 2: answers `Hi, <name>! (v2)`, so a test can tell
//! which version served a call during an upgrade.

steedos_sdk::generate!({
    path: ["../../wit", "wit"],
    world: "acme:greeter/greeter",
});

use exports::acme::greeter::greet::Guest;

struct GreeterV2;

impl Guest for GreeterV2 {
    fn hello(name: String) -> String {
        format!("Hi, {name}! (v2)")
    }
}

export!(GreeterV2);
