//! `greeter`: the smallest possible action, `greeter.hello`.

steedos_sdk::generate!({
    path: ["../../../../wit", "wit"],
    world: "acme:greeter/greeter",
});

use exports::acme::greeter::greet::Guest;

struct Greeter;

impl Guest for Greeter {
    fn hello(name: String) -> String {
        format!("Hello, {name}!")
    }
}

export!(Greeter);
