//! `legacy`: a package built against `steedos:package@0.1.0`, kept so the
//! host's adapter for old packages is tested: its meta comes as string
//! pairs, its calls and its event handler work as before.

wit_bindgen::generate!({
    path: ["../../wit/0.1.0", "wit"],
    world: "test:legacy/legacy-package",
    generate_all,
});

use std::sync::Mutex;

use exports::steedos::package::events::Guest as EventsGuest;
use exports::test::legacy::legacy::Guest as LegacyGuest;
use steedos::package::broker;
use steedos::package::types::CallContext;

type Seen = (String, Vec<(String, String)>);

static LAST: Mutex<Option<Seen>> = Mutex::new(None);

struct Legacy;

impl LegacyGuest for Legacy {
    fn meta() -> Vec<(String, String)> {
        broker::context().meta
    }

    fn call(action: String) -> Result<u32, String> {
        match broker::call(&action, &[0x80]) {
            Ok(reply) => Ok(reply.len() as u32),
            Err(e) => Err(format!("{e:?}")),
        }
    }

    fn last_event() -> Option<Seen> {
        LAST.lock().ok()?.clone()
    }
}

impl EventsGuest for Legacy {
    fn handle(event: String, _payload: Vec<u8>, ctx: CallContext) {
        if let Ok(mut last) = LAST.lock() {
            *last = Some((event, ctx.meta));
        }
    }
}

export!(Legacy);
