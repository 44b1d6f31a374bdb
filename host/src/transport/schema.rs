//! This host's packages as Moleculer services, for INFO packets, and
//! `$node` as INFO announces it (its answers are `internals.rs`'s).
//!
//! Each package is a service of its name (`v2.<name>` when it has a
//! `version`, with its `settings`); each action `<service>.<action>` carries
//! the Moleculer properties written in the manifest (`rest`, `trigger`,
//! ...; not `protected` or `private` ones, which stay here) and its
//! parameters' rules in fastest-validator's words, which
//! [`types::rule`](crate::types::rule) derives from the WIT types (the
//! mapping lives there, beside the JSON Schema, and not here). Event
//! subscriptions become listeners in the package's group, with our
//! `prefix.*` (any depth) written as Moleculer's `prefix.**`.

use serde_json::{Map, Value, json};

use crate::broker::Broker;
use crate::manifest::Visibility;
use crate::types::rule;

/// The `services` of this host's INFO packet, read from the broker's
/// query API (its services, the actions they serve, their subscriptions).
pub fn services(broker: &Broker) -> Value {
    // Both by package name: each service takes its run of actions.
    let mut actions = broker.actions().into_iter().peekable();
    let mut services = Vec::new();
    for service in broker.services() {
        let package = service.name();
        let spec = &service.package.spec;
        let full_name = spec.service_name();
        let mut own = Map::new();
        while let Some(entry) = actions.next_if(|a| a.package() == package) {
            if !announced(entry.visibility()) {
                continue;
            }
            let name = format!("{full_name}.{}", entry.name());
            let params: Map<String, Value> = entry
                .params()
                .iter()
                .map(|(pname, ty)| (pname.clone(), rule(ty)))
                .collect();
            let mut definition = entry.properties().cloned().unwrap_or_default();
            definition.insert("name".into(), name.clone().into());
            definition.insert("rawName".into(), entry.name().into());
            definition.insert("params".into(), params.into());
            own.insert(name, definition.into());
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
            "fullName": full_name,
            "version": spec.version.as_ref().map(|v| v.to_json()),
            "settings": spec.settings,
            "metadata": { "steedos-wasm": true },
            "actions": own,
            "events": events,
        }));
    }
    Value::Array(services)
}

/// Whether other nodes hear of an action of this `visibility`: a
/// `protected` or `private` one is for this host only (Moleculer's nodes
/// would not register it either).
fn announced(visibility: Visibility) -> bool {
    matches!(visibility, Visibility::Published | Visibility::Public)
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

/// What INFO says of `$node` (served by `internals.rs`): its name, its
/// actions and their parameters, as a Moleculer node announces them.
pub(super) mod node {
    use serde_json::{Map, Value, json};

    /// The name of the service.
    const NAME: &str = "$node";

    /// Its actions, with the parameters Moleculer declares for each.
    pub(in crate::transport) const ACTIONS: [(&str, &[&str]); 7] = [
        ("list", &["withServices", "onlyAvailable"]),
        (
            "services",
            &[
                "onlyLocal",
                "skipInternal",
                "withActions",
                "withEvents",
                "onlyAvailable",
                "grouping",
            ],
        ),
        (
            "actions",
            &[
                "onlyLocal",
                "skipInternal",
                "withEndpoints",
                "onlyAvailable",
            ],
        ),
        (
            "events",
            &[
                "onlyLocal",
                "skipInternal",
                "withEndpoints",
                "onlyAvailable",
            ],
        ),
        ("health", &[]),
        ("options", &[]),
        ("metrics", &["types", "includes", "excludes"]),
    ];

    /// The INFO entry of `$node`, as a Moleculer node announces it.
    pub(in crate::transport) fn service_info() -> Value {
        let mut actions = Map::new();
        for (action, params) in ACTIONS {
            let full = format!("{NAME}.{action}");
            let rules: Map<String, Value> = params
                .iter()
                .map(|p| {
                    let rule = match *p {
                        "types" | "includes" | "excludes" => {
                            json!({ "type": "any", "optional": true })
                        }
                        _ => json!({ "type": "boolean", "optional": true, "convert": true }),
                    };
                    (p.to_string(), rule)
                })
                .collect();
            let definition = json!({ "name": full, "rawName": action, "cache": false,
                                     "tracing": false, "params": rules });
            actions.insert(full, definition);
        }
        json!({ "name": NAME, "fullName": NAME, "version": null, "settings": {},
                "metadata": {}, "actions": actions, "events": {} })
    }
}
