//! OpenAPI 3.1 for the gateway, generated from the packages' WIT types.
//!
//! Every exposed action is one `POST /api/<package>/<action>` operation
//! whose request body is an object of its WIT parameters and whose 200
//! response is its result (for `result<T, E>`, `T`; `E` answers 422).
//! Every REST alias is one more operation with its path and query
//! parameters; an alias to an action of another node of the cluster is
//! described by the fastest-validator rules that node announced. Schemas
//! are JSON Schema 2020-12, as OpenAPI 3.1 uses, from
//! [`types::json_schema`](crate::types::json_schema): the one description of
//! the codec's JSON encoding. This module lays out operations only and must
//! not map a WIT type itself.

use serde_json::{Map, Value, json};
use wasmtime::component::types::Type;

use crate::broker::Broker;
use crate::context::ErrorKind;
use crate::manifest::{Alias, GatewaySettings, pattern_matches};
use crate::package::ActionType;
use crate::types::{json_schema as schema, params_schema, rule_schema, rule_type};

/// The OpenAPI document of what the gateway exposes now, read from the
/// broker's query API (the actions it serves, the rules other nodes
/// announced).
pub fn document(app: &str, broker: &Broker, gateway: &GatewaySettings) -> Value {
    let mut paths = Map::new();
    // Only `published` actions are the gateway's to call (`visibility`).
    let published = |entry: &crate::broker::ActionEntry| {
        entry.visibility() == crate::manifest::Visibility::Published
    };
    for entry in broker.actions() {
        let name = entry.full_name();
        if !published(&entry) || !gateway.expose.iter().any(|p| pattern_matches(p, &name)) {
            continue;
        }
        let path = format!("/api/{}/{}", entry.package(), entry.name());
        paths.insert(path, json!({ "post": operation(&name, entry.ty(), None) }));
    }
    for alias in &gateway.aliases {
        let path = alias_path(alias);
        let op = match broker.find_action(&alias.action) {
            Some(entry) if !published(&entry) => continue,
            Some(entry) => {
                let mut op = operation(&alias.action, entry.ty(), Some(&alias.segments));
                // operationIds are unique: the alias's names its route too.
                op["operationId"] = json!(format!("{} via {} {path}", alias.action, alias.method));
                op
            }
            // An action of another node: its parameters as that node announced them.
            None => match broker.remote_params(&alias.action) {
                Some(rules) => remote_operation(alias, &rules, &path),
                None => continue,
            },
        };
        if let Value::Object(ops) = paths.entry(path).or_insert_with(|| json!({})) {
            ops.insert(alias.method.to_ascii_lowercase(), op);
        }
    }
    json!({
        "openapi": "3.1.0",
        "info": { "title": format!("{app} (steedos-wasm)"), "version": env!("CARGO_PKG_VERSION") },
        "paths": paths,
        "components": { "schemas": { "Error": error_schema() } },
    })
}

fn operation(name: &str, action: &ActionType, alias: Option<&Vec<String>>) -> Value {
    let mut op = Map::new();
    op.insert("operationId".into(), json!(name));
    op.insert(
        "summary".into(),
        json!(format!(
            "{name}: {}",
            crate::types::wit_signature(&action.params, action.result.as_ref())
        )),
    );
    let path_params: Vec<&str> = alias
        .map(|segs| segs.iter().filter_map(|s| s.strip_prefix(':')).collect())
        .unwrap_or_default();
    match alias {
        Some(_) => {
            let mut parameters = Vec::new();
            for (pname, ty) in &action.params {
                let location = if path_params.contains(&pname.as_str()) {
                    "path"
                } else {
                    "query"
                };
                let required = location == "path" || !matches!(ty, Type::Option(_));
                parameters.push(json!({ "name": pname, "in": location, "required": required, "schema": schema(ty) }));
            }
            op.insert("parameters".into(), Value::Array(parameters));
        }
        None => {
            op.insert(
                "requestBody".into(),
                json!({ "required": true, "content": { "application/json": { "schema": params_schema(&action.params) } } }),
            );
        }
    }
    let ok = match &action.result {
        Some(Type::Result(r)) => r
            .ok()
            .map(|t| schema(&t))
            .unwrap_or(json!({ "type": "null" })),
        Some(t) => schema(t),
        None => json!({ "type": "null" }),
    };
    op.insert("responses".into(), responses(ok));
    Value::Object(op)
}

/// An alias's path in OpenAPI's words: `/stock/{sku}`.
fn alias_path(alias: &Alias) -> String {
    let segments: Vec<String> = alias
        .segments
        .iter()
        .map(|s| match s.strip_prefix(':') {
            Some(p) => format!("{{{p}}}"),
            None => s.clone(),
        })
        .collect();
    format!("/{}", segments.join("/"))
}

/// The operation of an alias to another node's action, from the
/// fastest-validator rules that node announced: path parameters from the
/// route, every other parameter in the query.
fn remote_operation(alias: &Alias, rules: &[(String, Value)], path: &str) -> Value {
    let in_path: Vec<&str> = alias
        .segments
        .iter()
        .filter_map(|s| s.strip_prefix(':'))
        .collect();
    let rule_of = |name: &str| rules.iter().find(|(n, _)| n == name).map(|(_, r)| r);
    let mut parameters: Vec<Value> = in_path
        .iter()
        .map(|name| {
            let schema = rule_of(name).map_or(json!({ "type": "string" }), rule_schema);
            json!({ "name": name, "in": "path", "required": true, "schema": schema })
        })
        .collect();
    for (name, rule) in rules.iter().filter(|(n, _)| !in_path.contains(&n.as_str())) {
        let (_, optional) = rule_type(rule);
        parameters.push(
            json!({ "name": name, "in": "query", "required": !optional, "schema": rule_schema(rule) }),
        );
    }
    json!({
        "operationId": format!("{} via {} {path}", alias.action, alias.method),
        "summary": format!("{}: an action of another node of the cluster", alias.action),
        "parameters": parameters,
        "responses": responses(json!({})),
    })
}

/// The responses of every operation, with `ok` as the 200 body: one per
/// call-error kind's status ([`ErrorKind`], the table the gateway answers
/// by), and the gateway's own refusal of a body too large.
fn responses(ok: Value) -> Value {
    let error = json!({ "$ref": "#/components/schemas/Error" });
    let mut responses = Map::new();
    responses.insert("200".into(), json!({ "description": "the action's result", "content": { "application/json": { "schema": ok } } }));
    let kinds = ErrorKind::ALL.map(|k| (k.http_status(), k.description()));
    for (code, what) in kinds.into_iter().chain([(413, "request body too large")]) {
        let described = responses.entry(code.to_string()).or_insert_with(
            || json!({ "description": "", "content": { "application/json": { "schema": error } } }),
        );
        let text = match described["description"].as_str() {
            Some("") | None => what.to_string(),
            Some(other) => format!("{other}; {what}"),
        };
        described["description"] = json!(text);
    }
    Value::Object(responses)
}

fn error_schema() -> Value {
    json!({
        "type": "object",
        "required": ["error"],
        "properties": { "error": {
            "type": "object",
            "required": ["kind", "message", "request_id"],
            "properties": {
                "kind": { "type": "string" },
                "message": { "type": "string" },
                "package": { "type": ["string", "null"] },
                "action": { "type": ["string", "null"] },
                "request_id": { "type": "string" },
            },
        }},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_kind_s_status_is_a_documented_response() {
        let responses = responses(json!({}));
        for kind in ErrorKind::ALL {
            let code = kind.http_status().to_string();
            let described = responses[&code]["description"].as_str().unwrap_or("");
            assert!(
                described.contains(kind.description()),
                "{kind}: {responses}"
            );
        }
        assert!(responses["413"].is_object());
    }

    #[test]
    fn a_remote_alias_has_path_and_query_parameters_by_rule() {
        let alias = Alias {
            method: "GET".into(),
            segments: vec!["add".into(), ":a".into()],
            action: "math.add".into(),
        };
        let rules = vec![
            ("a".to_string(), json!("number")),
            ("b".to_string(), json!("number|optional")),
        ];
        let op = remote_operation(&alias, &rules, &alias_path(&alias));
        assert_eq!(alias_path(&alias), "/add/{a}");
        assert_eq!(
            op["parameters"],
            json!([
                { "name": "a", "in": "path", "required": true, "schema": { "type": "number" } },
                { "name": "b", "in": "query", "required": false, "schema": { "type": "number" } },
            ])
        );
        assert_eq!(op["operationId"], "math.add via GET /add/{a}");
    }
}
