//! This host's packages as Moleculer services, for INFO packets.
//!
//! Each package is a service of its name; each action `<package>.<action>`
//! carries its parameters' rules in fastest-validator's words, which
//! [`types::rule`](crate::types::rule) derives from the WIT types (the
//! mapping lives there, beside the JSON Schema, and not here). Event
//! subscriptions become listeners in the package's group, with our
//! `prefix.*` (any depth) written as Moleculer's `prefix.**`.

use serde_json::{Map, Value, json};

use crate::broker::Broker;
use crate::types::rule;

/// The `services` of this host's INFO packet, read from the broker's
/// query API (its services, the actions they serve, their subscriptions).
pub fn services(broker: &Broker) -> Value {
    // Both by package name: each service takes its run of actions.
    let mut actions = broker.actions().into_iter().peekable();
    let mut services = Vec::new();
    for service in broker.services() {
        let package = service.name();
        let mut own = Map::new();
        while let Some(entry) = actions.next_if(|a| a.package() == package) {
            let name = entry.full_name();
            let params: Map<String, Value> = entry
                .params()
                .iter()
                .map(|(pname, ty)| (pname.clone(), rule(ty)))
                .collect();
            own.insert(
                name.clone(),
                json!({ "name": name, "rawName": entry.name(), "params": params }),
            );
        }
        let events: Map<String, Value> = service
            .subscriptions()
            .iter()
            .map(|pattern| {
                let name = moleculer_pattern(pattern);
                (name.clone(), json!({ "name": name, "group": package }))
            })
            .collect();
        services.push(json!({
            "name": package,
            "fullName": package,
            "version": null,
            "settings": {},
            "metadata": { "steedos-wasm": true },
            "actions": own,
            "events": events,
        }));
    }
    Value::Array(services)
}

/// Our event pattern (`order.*` is any name under `order.`) in Moleculer's words.
fn moleculer_pattern(pattern: &str) -> String {
    match pattern {
        "*" => "**".to_string(),
        p => match p.strip_suffix(".*") {
            Some(prefix) => format!("{prefix}.**"),
            None => p.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscriptions_in_moleculer_words() {
        assert_eq!(moleculer_pattern("order.*"), "order.**");
        assert_eq!(moleculer_pattern("*"), "**");
        assert_eq!(moleculer_pattern("order.placed"), "order.placed");
    }
}
