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

/// The `services` of this host's INFO packet.
pub fn services(broker: &Broker) -> Value {
    let mut services = Vec::new();
    for service in broker.services() {
        let package = &service.package;
        let mut actions = Map::new();
        for action in &package.ty.actions {
            let name = format!("{}.{}", package.name, action.name);
            let mut params = Map::new();
            for (pname, ty) in &action.params {
                params.insert(pname.clone(), rule(ty));
            }
            actions.insert(
                name.clone(),
                json!({ "name": name, "rawName": action.name, "params": params }),
            );
        }
        let mut events = Map::new();
        if package.ty.handles_events() {
            for pattern in &package.spec.events {
                let name = moleculer_pattern(pattern);
                events.insert(
                    name.clone(),
                    json!({ "name": name, "group": &*package.name }),
                );
            }
        }
        services.push(json!({
            "name": &*package.name,
            "fullName": &*package.name,
            "version": null,
            "settings": {},
            "metadata": { "steedos-wasm": true },
            "actions": actions,
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
