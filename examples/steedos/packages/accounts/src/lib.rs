//! `accounts`: a Steedos package moved into a Wasm sandbox (see
//! `wit/accounts.wit` and the example's `steedos.toml`): a before-insert
//! trigger Steedos finds by its `trigger` property, an action moleculer-web
//! routes by its `rest` property, and a `started` that checks a service it
//! depends on.

steedos_sdk::generate!({
    path: ["../../../../wit", "wit"],
    world: "acme:accounts/accounts-package",
});

use std::sync::Mutex;

use exports::steedos::package::lifecycle::Guest as LifecycleGuest;
use exports::acme::accounts::records::{Account, CallError, Guest};

/// What `started` heard, for `started-with`.
static STARTED_WITH: Mutex<String> = Mutex::new(String::new());

struct Accounts;

impl Guest for Accounts {
    fn before_insert(doc: Account) -> Result<(), CallError> {
        match (doc.name.as_deref(), doc.balance) {
            (None | Some(""), _) => Err(CallError::InvalidParams(
                "an account needs a name".to_string(),
            )),
            (_, Some(balance)) if balance < 0 => Err(CallError::Failed(format!(
                "an account cannot open with a balance of {balance}"
            ))),
            _ => Ok(()),
        }
    }

    fn hello(name: String) -> String {
        format!("Hello, {name}!")
    }

    fn started_with() -> String {
        STARTED_WITH.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

impl LifecycleGuest for Accounts {
    fn started() -> Result<(), String> {
        let Ok(action) = std::env::var("STARTED_CALL") else {
            return Ok(());
        };
        let empty: std::collections::BTreeMap<String, String> = Default::default();
        let reply: String = steedos_sdk::call(&action, &empty)
            .map_err(|e| format!("`{action}` failed in started: {e:?}"))?;
        if let Ok(mut heard) = STARTED_WITH.lock() {
            *heard = reply;
        }
        Ok(())
    }

    fn stopped() {}
}

export!(Accounts);
