//! `$node`: this node as Moleculer's internal service, so Moleculer
//! tooling (the REPL, Laboratory, Steedos' admin pages) sees a Wasm node
//! like any other. `list`, `services`, `actions`, `events`, `health`,
//! `options` and `metrics` answer with the shapes of Moleculer 0.14's
//! `internals.js` and registry catalogs, from what this node knows: its
//! packages in full, and the other nodes as their INFO told it. `$node` is
//! announced in INFO as Moleculer announces it, so a peer calling
//! `$node.health` with `{ nodeID }` reaches it.
//!
//! It answers at once, without an instance; it never calls out.

use std::sync::{Arc, Weak};

use serde_json::{Map, Value, json};

use super::packet::ClientOut;
use super::redact;
use super::schema::node::ACTIONS;
use super::transit::{Transit, cpu_percent, hostname, now_ms};
use crate::broker::InternalService;
use crate::context::CallError;
use crate::manifest::Serializer;

/// `$node` of one node.
pub(super) struct NodeService(pub(super) Weak<Transit>);

impl InternalService for NodeService {
    fn call(&self, action: &str, params: &[u8]) -> Option<Result<Value, CallError>> {
        let name = action.strip_prefix("$node.")?;
        ACTIONS.iter().find(|(n, _)| *n == name)?;
        let Some(transit) = self.0.upgrade() else {
            return Some(Err(CallError::NotFound(
                "this node is leaving the cluster".into(),
            )));
        };
        let flags = match Flags::parse(action, params) {
            Ok(flags) => flags,
            Err(e) => return Some(Err(e)),
        };
        Some(Ok(match name {
            "list" => list(&transit, &flags),
            "services" => services(&transit, &flags),
            "actions" => actions(&transit, &flags),
            "events" => events(&transit, &flags),
            "health" => health(),
            "options" => options(&transit),
            _ => metrics(&transit),
        }))
    }
}

/// The boolean options of a `$node` action (Moleculer's `convert: true`:
/// `"true"` counts).
struct Flags(Map<String, Value>);

impl Flags {
    fn parse(action: &str, params: &[u8]) -> Result<Flags, CallError> {
        if params.iter().all(u8::is_ascii_whitespace) {
            return Ok(Flags(Map::new()));
        }
        match serde_json::from_slice(params) {
            Ok(Value::Object(map)) => Ok(Flags(map)),
            Ok(Value::Null) => Ok(Flags(Map::new())),
            _ => Err(CallError::InvalidParams(format!(
                "{action}: params must be an object"
            ))),
        }
    }

    fn get(&self, key: &str, default: bool) -> bool {
        match self.0.get(key) {
            Some(Value::Bool(b)) => *b,
            Some(Value::String(s)) => s == "true" || s == "1",
            Some(Value::Number(n)) => n.as_f64().is_some_and(|n| n != 0.0),
            _ => default,
        }
    }
}

/// This node as Moleculer's node catalog describes a node.
fn this_node(transit: &Transit, with_services: bool) -> Value {
    let mut node = json!({
        "id": &*transit.node_id,
        "instanceID": transit.instance_id,
        "available": true,
        "local": true,
        "lastHeartbeatTime": now_ms(),
        "config": {},
        "client": client(),
        "metadata": {},
        "ipList": ["127.0.0.1"],
        "port": null,
        "hostname": hostname(),
        "udpAddress": null,
        "cpu": cpu_percent(),
        "cpuSeq": 1,
        "seq": transit.seq.load(std::sync::atomic::Ordering::Relaxed),
        "offlineSince": null,
    });
    if with_services {
        node["services"] = transit.announced();
    }
    node
}

fn client() -> Value {
    let c = ClientOut::THIS;
    json!({ "type": c.kind, "version": c.version, "langVersion": c.lang_version })
}

fn list(transit: &Transit, flags: &Flags) -> Value {
    let with_services = flags.get("withServices", false);
    let mut nodes = vec![this_node(transit, with_services)];
    for remote in transit.registry().reports() {
        let mut node = json!({
            "id": remote.id,
            "available": true,
            "local": false,
            "hostname": remote.hostname,
            "client": { "type": remote.client },
        });
        if with_services {
            let names: Vec<Value> = remote
                .services
                .iter()
                .map(|s| json!({ "name": s, "fullName": s }))
                .collect();
            node["services"] = Value::Array(names);
        }
        nodes.push(node);
    }
    Value::Array(nodes)
}

/// The services this node announces (its packages and `$node`).
fn local_services(transit: &Transit) -> Vec<Value> {
    match transit.announced() {
        Value::Array(services) => services,
        _ => Vec::new(),
    }
}

fn services(transit: &Transit, flags: &Flags) -> Value {
    let (skip_internal, grouping) = (
        flags.get("skipInternal", false),
        flags.get("grouping", true),
    );
    let mut out = Vec::new();
    for mut service in local_services(transit) {
        let name = service["name"].as_str().unwrap_or_default().to_owned();
        if skip_internal && name.starts_with('$') {
            continue;
        }
        if let Value::Object(map) = &mut service {
            if !flags.get("withActions", false) {
                map.remove("actions");
            }
            if !flags.get("withEvents", false) {
                map.remove("events");
            }
            map.insert("local".into(), true.into());
            map.insert("available".into(), true.into());
            match grouping {
                true => map.insert("nodes".into(), json!([&*transit.node_id])),
                false => map.insert("nodeID".into(), json!(&*transit.node_id)),
            };
        }
        out.push(service);
    }
    if !flags.get("onlyLocal", false) {
        for remote in transit.registry().reports() {
            for name in remote
                .services
                .iter()
                .filter(|n| !skip_internal || !n.starts_with('$'))
            {
                let at = match grouping {
                    true => ("nodes", json!([remote.id])),
                    false => ("nodeID", json!(remote.id)),
                };
                let mut service = json!({ "name": name, "fullName": name, "local": false,
                                          "available": true });
                service[at.0] = at.1;
                out.push(service);
            }
        }
    }
    Value::Array(out)
}

fn actions(transit: &Transit, flags: &Flags) -> Value {
    let skip_internal = flags.get("skipInternal", false);
    let endpoint = |node: &str| json!([{ "nodeID": node, "state": true, "available": true }]);
    let mut out = Vec::new();
    for service in local_services(transit) {
        let Some(Value::Object(defs)) = service.get("actions") else {
            continue;
        };
        for (name, def) in defs {
            if skip_internal && name.starts_with('$') {
                continue;
            }
            let mut item = json!({ "name": name, "count": 1, "hasLocal": true,
                                   "available": true, "action": def });
            if flags.get("withEndpoints", false) {
                item["endpoints"] = endpoint(&transit.node_id);
            }
            out.push(item);
        }
    }
    if !flags.get("onlyLocal", false) {
        for remote in transit.registry().reports() {
            for name in remote
                .actions
                .iter()
                .filter(|n| !skip_internal || !n.starts_with('$'))
            {
                let mut item = json!({ "name": name, "count": 1, "hasLocal": false,
                                       "available": true, "action": { "name": name } });
                if flags.get("withEndpoints", false) {
                    item["endpoints"] = endpoint(&remote.id);
                }
                out.push(item);
            }
        }
    }
    Value::Array(out)
}

fn events(transit: &Transit, flags: &Flags) -> Value {
    let mut out = Vec::new();
    for service in local_services(transit) {
        let Some(Value::Object(defs)) = service.get("events") else {
            continue;
        };
        for (name, def) in defs {
            let mut item = json!({ "name": name, "group": def["group"], "count": 1,
                                   "hasLocal": true, "available": true, "event": def });
            if flags.get("withEndpoints", false) {
                item["endpoints"] =
                    json!([{ "nodeID": &*transit.node_id, "state": true, "available": true }]);
            }
            out.push(item);
        }
    }
    Value::Array(out)
}

/// Moleculer's `getHealthStatus()`, from /proc where Linux has it.
fn health() -> Value {
    let proc_text = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
    let loads: Vec<f64> = proc_text("/proc/loadavg")
        .split_whitespace()
        .take(3)
        .filter_map(|x| x.parse().ok())
        .collect();
    let load = |i: usize| loads.get(i).copied().unwrap_or(0.0);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let meminfo = proc_text("/proc/meminfo");
    let kib = |key: &str| {
        meminfo
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .map_or(0, |k| k * 1024)
    };
    let (free, total) = (kib("MemAvailable:"), kib("MemTotal:"));
    let uptime = |path: &str| {
        proc_text(path)
            .split_whitespace()
            .next()
            .and_then(|x| x.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let rss = kib("VmRSS:").max(status_rss());
    let now = std::time::SystemTime::now();
    let now_ms = now_ms();
    json!({
        "cpu": { "load1": load(0), "load5": load(1), "load15": load(2), "cores": cores,
                 "utilization": ((load(0) * 100.0 / cores as f64).floor() as i64).min(100) },
        "mem": { "free": free, "total": total,
                 "percent": if total > 0 { free as f64 * 100.0 / total as f64 } else { 0.0 } },
        "os": { "uptime": uptime("/proc/uptime"), "type": std::env::consts::OS,
                "release": proc_text("/proc/sys/kernel/osrelease").trim(), "hostname": hostname(),
                "arch": std::env::consts::ARCH, "platform": std::env::consts::OS, "user": {} },
        "process": { "pid": std::process::id(), "memory": { "rss": rss },
                     "uptime": process_uptime(), "argv": [] },
        "client": client(),
        "net": { "ip": ["127.0.0.1"] },
        "time": { "now": now_ms, "iso": humantime::format_rfc3339_millis(now).to_string(),
                  "utc": httpdate(now) },
    })
}

fn status_rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|r| r.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |k| k * 1024)
}

/// Seconds since this process started.
fn process_uptime() -> f64 {
    static STARTED: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    STARTED
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_secs_f64()
}

/// `Date.toUTCString()`'s moment, in RFC 3339 (seconds).
fn httpdate(at: std::time::SystemTime) -> String {
    humantime::format_rfc3339_seconds(at).to_string()
}

/// The node's settings in Moleculer's option names (secrets left out).
fn options(transit: &Transit) -> Value {
    let s = &transit.settings;
    json!({
        "nodeID": &*transit.node_id,
        "namespace": s.namespace.clone().unwrap_or_default(),
        "transporter": redact(&s.transporter),
        "serializer": match s.serializer { Serializer::Json => "JSON", Serializer::MessagePack => "MsgPack" },
        "heartbeatInterval": s.heartbeat_interval.as_secs_f64(),
        "heartbeatTimeout": s.heartbeat_timeout.as_secs_f64(),
        "transit": { "disableVersionCheck": false },
        "registry": { "preferLocal": true },
        "metrics": { "enabled": true },
        "protocol": transit.ver,
    })
}

/// The host's metrics (its Prometheus exposition) as Moleculer's
/// `metrics.list()` writes them: `[{ name, type, description, values }]`.
fn metrics(transit: &Transit) -> Value {
    let text = transit.broker.metrics().render(&transit.broker.reports());
    let mut list: Vec<Map<String, Value>> = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            let mut metric = Map::new();
            metric.insert("name".into(), name.into());
            metric.insert("description".into(), help.into());
            metric.insert("values".into(), Value::Array(Vec::new()));
            list.push(metric);
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let kind = rest.split_whitespace().nth(1).unwrap_or("gauge");
            if let Some(last) = list.last_mut() {
                last.insert("type".into(), kind.into());
            }
        } else if let Some((series, value)) = line.rsplit_once(' ')
            && let Some(last) = list.last_mut()
            && let Ok(value) = value.parse::<f64>()
        {
            let (_, labels) = series.split_once('{').unwrap_or((series, "}"));
            let labels = labels.trim_end_matches('}');
            if let Some(Value::Array(values)) = last.get_mut("values") {
                values
                    .push(json!({ "key": labels, "value": value, "labels": labels_json(labels) }));
            }
        }
    }
    Value::Array(list.into_iter().map(Value::Object).collect())
}

/// `a="x",b="y"` as `{ "a": "x", "b": "y" }` (values our exposition writes never hold `",`).
fn labels_json(labels: &str) -> Value {
    let map: Map<String, Value> = labels
        .split("\",")
        .filter_map(|pair| pair.split_once("=\""))
        .map(|(k, v)| (k.to_owned(), v.trim_end_matches('"').into()))
        .collect();
    Value::Object(map)
}

/// Installs `$node` for `transit` on its broker.
pub(super) fn install(transit: &Arc<Transit>) {
    let service = NodeService(Arc::downgrade(transit));
    transit.broker.set_internal(Some(Arc::new(service)));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::schema::node::service_info;

    #[test]
    fn info_announces_every_action_of_node() {
        let info = service_info();
        assert_eq!(info["name"], "$node");
        let actions = info["actions"].as_object().expect("actions");
        assert_eq!(actions.len(), 7);
        assert_eq!(actions["$node.health"]["rawName"], "health");
    }

    #[test]
    fn labels_read_as_an_object() {
        assert_eq!(
            labels_json(r#"package="a",action="b""#),
            json!({ "package": "a", "action": "b" })
        );
    }
}
