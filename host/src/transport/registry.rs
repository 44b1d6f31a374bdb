//! The registry of remote nodes: who is there, which actions each serves,
//! which events each listens to, kept up to date from INFO, HEARTBEAT and
//! DISCONNECT packets.
//!
//! Calls are balanced round-robin over the nodes serving an action; an
//! `emit` goes to one node of each listening group (a group is a service:
//! a package here, a Moleculer service there), a `broadcast` to every node
//! with a listener, as Moleculer's registry does.
//!
//! State only: it must not send packets (the transit does) or see this
//! host's packages.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::bus::Subject;
use serde_json::Value;

use super::bounds::{MAX_ACTIONS_PER_NODE, MAX_INFO_BYTES, MAX_NAME, MAX_NODES};
use super::packet::Info;

/// One remote node.
#[derive(Debug)]
struct Node {
    instance_id: Option<String>,
    seq: u64,
    last_seen: Instant,
    hostname: Option<String>,
    client: Option<String>,
    /// Whether it is a Steedos host (its INFO's `client.langVersion`).
    steedos: bool,
    services: Vec<String>,
    actions: Vec<String>,
    /// Each action's `params` rules as the node announced them.
    params: HashMap<String, Value>,
    /// `(event pattern, group)`.
    listeners: Vec<(String, String)>,
    req: Subject,
    event: Subject,
    /// Bytes of the INFO it came from (see [`MAX_INFO_BYTES`]).
    size: usize,
}

/// The nodes serving one action.
#[derive(Debug, Default)]
struct Endpoints {
    nodes: Vec<(Arc<str>, Subject)>,
    next: AtomicUsize,
}

/// The nodes of one event group.
#[derive(Debug, Default)]
struct Group {
    /// `(event pattern, node)`.
    listeners: Vec<(String, Arc<str>)>,
    next: AtomicUsize,
}

/// What an INFO packet changed.
#[derive(Debug, PartialEq, Eq)]
pub enum Joined {
    /// A node not seen before (or seen before it was lost).
    New,
    /// A known node restarted: a new instance id.
    Restarted,
    /// A known node with new services.
    Updated,
    /// Nothing new.
    Same,
}

/// A node as reports and tests see it.
#[derive(Clone, Debug)]
pub struct NodeReport {
    /// Its id.
    pub id: String,
    /// Its host name, as it said.
    pub hostname: Option<String>,
    /// Its client type (`nodejs`, `rust`).
    pub client: Option<String>,
    /// Its services.
    pub services: Vec<String>,
    /// Its actions.
    pub actions: Vec<String>,
}

/// Every remote node and the indexes calls and events use.
#[derive(Debug)]
pub struct Registry {
    prefix: String,
    nodes: HashMap<Arc<str>, Node>,
    actions: HashMap<String, Endpoints>,
    groups: HashMap<String, Group>,
    /// The sum of the nodes' `size`.
    info_bytes: usize,
}

impl Registry {
    /// An empty registry for subjects under `prefix` (`MOL`, `MOL-dev`).
    pub fn new(prefix: &str) -> Self {
        Registry {
            prefix: prefix.to_string(),
            nodes: HashMap::new(),
            actions: HashMap::new(),
            groups: HashMap::new(),
            info_bytes: 0,
        }
    }

    /// How many nodes are known.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether no node is known.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Bytes of the INFO packets kept.
    pub fn info_bytes(&self) -> usize {
        self.info_bytes
    }

    /// Records a node's INFO of `size` bytes (its sender already checked);
    /// refused, naming the bound, when keeping it would pass one.
    pub fn apply_info(&mut self, info: &Info, size: usize) -> Result<Joined, String> {
        let old_size = self.nodes.get(info.sender.as_str()).map(|n| n.size);
        if old_size.is_none() && self.nodes.len() >= MAX_NODES {
            return Err(format!("{MAX_NODES} nodes are known already"));
        }
        if self.info_bytes - old_size.unwrap_or(0) + size > MAX_INFO_BYTES {
            return Err(format!(
                "the INFO packets kept would pass {} MiB",
                MAX_INFO_BYTES >> 20
            ));
        }
        check_counts(info)?;
        let id: Arc<str> = info.sender.as_str().into();
        let seq = info.seq.unwrap_or(1);
        let Offer {
            services,
            actions,
            params,
            listeners,
        } = Offer::of(info);
        let joined = match self.nodes.get(&id) {
            None => Joined::New,
            Some(n) if n.instance_id != info.instance_id => Joined::Restarted,
            Some(n) if seq > n.seq || n.actions != actions || n.listeners != listeners => {
                Joined::Updated
            }
            Some(_) => Joined::Same,
        };
        let node = Node {
            instance_id: info.instance_id.clone(),
            seq,
            last_seen: Instant::now(),
            hostname: info.hostname.clone(),
            client: info
                .client
                .as_ref()
                .and_then(|c| c.get("type"))
                .and_then(Value::as_str)
                .map(str::to_string),
            steedos: info
                .client
                .as_ref()
                .and_then(|c| c.get("langVersion"))
                .is_some_and(|v| v == super::packet::ClientOut::THIS.lang_version),
            services,
            actions,
            params,
            listeners,
            req: format!("{}.REQ.{id}", self.prefix).into(),
            event: format!("{}.EVENT.{id}", self.prefix).into(),
            size,
        };
        self.info_bytes = self.info_bytes - old_size.unwrap_or(0) + size;
        self.nodes.insert(id, node);
        if joined != Joined::Same {
            self.reindex();
        }
        Ok(joined)
    }

    /// Notes a HEARTBEAT; `false` when the node is unknown (ask for its INFO).
    pub fn heartbeat(&mut self, node: &str) -> bool {
        match self.nodes.get_mut(node) {
            Some(n) => {
                n.last_seen = Instant::now();
                true
            }
            None => false,
        }
    }

    /// Forgets a node; `false` when it was not known.
    pub fn remove(&mut self, node: &str) -> bool {
        let Some(removed) = self.nodes.remove(node) else {
            return false;
        };
        self.info_bytes -= removed.size;
        self.reindex();
        true
    }

    /// Nodes not heard from for `timeout`.
    pub fn silent_for(&self, timeout: Duration) -> Vec<Arc<str>> {
        let now = Instant::now();
        self.nodes
            .iter()
            .filter(|(_, n)| now.duration_since(n.last_seen) > timeout)
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// The next node serving `action`, round-robin, with its REQ subject.
    pub fn pick(&self, action: &str) -> Option<(Arc<str>, Subject)> {
        let endpoints = self.actions.get(action)?;
        let n = endpoints.nodes.len();
        if n == 0 {
            return None;
        }
        let i = endpoints.next.fetch_add(1, Ordering::Relaxed) % n;
        Some(endpoints.nodes[i].clone())
    }

    /// `node`, when it serves `action`.
    pub fn pick_on(&self, action: &str, node: &str) -> Option<(Arc<str>, Subject)> {
        let endpoints = self.actions.get(action)?;
        endpoints
            .nodes
            .iter()
            .find(|(id, _)| &**id == node)
            .cloned()
    }

    /// The parameters of `action` with their fastest-validator rules, as a
    /// node serving it announced them (`$$`-options left out); `None` when
    /// no node serves it.
    pub fn params(&self, action: &str) -> Option<Vec<(String, Value)>> {
        let endpoints = self.actions.get(action)?;
        if endpoints.nodes.is_empty() {
            return None;
        }
        let rules = endpoints
            .nodes
            .iter()
            .find_map(|(id, _)| self.nodes.get(id)?.params.get(action)?.as_object());
        Some(
            rules
                .map(|rules| {
                    rules
                        .iter()
                        .filter(|(name, _)| !name.starts_with("$$"))
                        .map(|(name, rule)| (name.clone(), rule.clone()))
                        .collect()
                })
                .unwrap_or_default(),
        )
    }

    /// Whether some node has the service `name` (its full name).
    pub fn has_service(&self, name: &str) -> bool {
        self.nodes
            .values()
            .any(|n| n.services.iter().any(|s| s == name))
    }

    /// Whether some node serves `action`.
    pub fn serves(&self, action: &str) -> bool {
        self.actions
            .get(action)
            .is_some_and(|e| !e.nodes.is_empty())
    }

    /// Where an event goes: `(node, EVENT subject, groups)`. `emit` picks one
    /// node per listening group that `local_groups` does not already serve
    /// and sends each node its groups; `broadcast` reaches every node with a
    /// matching listener (groups `None`: all its listeners).
    pub fn event_targets(
        &self,
        event: &str,
        broadcast: bool,
        local_groups: &[Arc<str>],
    ) -> Vec<(Subject, Option<Vec<String>>)> {
        let mut targets = self.listening_targets(event, broadcast, local_groups);
        // Every Steedos host drops its in-memory action cache on a clean,
        // whether a package of it listens or not (no group: no delivery).
        if event.starts_with(crate::kv::cache::CLEAN_EVENT_PREFIX) {
            for node in self.nodes.values().filter(|n| n.steedos) {
                if !targets.iter().any(|(subject, _)| *subject == node.event) {
                    targets.push((node.event.clone(), Some(Vec::new())));
                }
            }
        }
        targets
    }

    /// [`Registry::event_targets`] among the nodes that listen to `event`.
    fn listening_targets(
        &self,
        event: &str,
        broadcast: bool,
        local_groups: &[Arc<str>],
    ) -> Vec<(Subject, Option<Vec<String>>)> {
        if broadcast {
            return self
                .nodes
                .values()
                .filter(|n| n.listeners.iter().any(|(p, _)| matches(p, event)))
                .map(|n| (n.event.clone(), None))
                .collect();
        }
        let mut by_node: Vec<(Arc<str>, Vec<String>)> = Vec::new();
        for (group, members) in &self.groups {
            if local_groups.iter().any(|g| **g == **group) {
                continue;
            }
            let mut nodes: Vec<&Arc<str>> = members
                .listeners
                .iter()
                .filter(|(p, _)| matches(p, event))
                .map(|(_, n)| n)
                .collect();
            nodes.dedup();
            if nodes.is_empty() {
                continue;
            }
            let node = nodes[members.next.fetch_add(1, Ordering::Relaxed) % nodes.len()];
            match by_node.iter_mut().find(|(n, _)| n == node) {
                Some((_, groups)) => groups.push(group.clone()),
                None => by_node.push((node.clone(), vec![group.clone()])),
            }
        }
        by_node
            .into_iter()
            .filter_map(|(node, groups)| {
                self.nodes
                    .get(&node)
                    .map(|n| (n.event.clone(), Some(groups)))
            })
            .collect()
    }

    /// Every node, sorted by id.
    pub fn reports(&self) -> Vec<NodeReport> {
        let mut all: Vec<NodeReport> = self
            .nodes
            .iter()
            .map(|(id, n)| NodeReport {
                id: id.to_string(),
                hostname: n.hostname.clone(),
                client: n.client.clone(),
                services: n.services.clone(),
                actions: n.actions.clone(),
            })
            .collect();
        all.sort_by(|a, b| a.id.cmp(&b.id));
        all
    }

    fn reindex(&mut self) {
        let mut ids: Vec<&Arc<str>> = self.nodes.keys().collect();
        ids.sort();
        let mut actions: HashMap<String, Endpoints> = HashMap::new();
        let mut groups: HashMap<String, Group> = HashMap::new();
        for id in ids {
            let node = &self.nodes[id];
            for action in &node.actions {
                let e = actions.entry(action.clone()).or_default();
                if !e.nodes.iter().any(|(n, _)| n == id) {
                    e.nodes.push((id.clone(), node.req.clone()));
                }
            }
            for (pattern, group) in &node.listeners {
                groups
                    .entry(group.clone())
                    .or_default()
                    .listeners
                    .push((pattern.clone(), id.clone()));
            }
        }
        // Keep the round-robin positions across updates.
        for (name, e) in &actions {
            if let Some(old) = self.actions.get(name) {
                e.next
                    .store(old.next.load(Ordering::Relaxed), Ordering::Relaxed);
            }
        }
        for (name, g) in &groups {
            if let Some(old) = self.groups.get(name) {
                g.next
                    .store(old.next.load(Ordering::Relaxed), Ordering::Relaxed);
            }
        }
        self.actions = actions;
        self.groups = groups;
    }
}

/// Refuses an INFO with more actions or listeners than
/// [`MAX_ACTIONS_PER_NODE`], or a name longer than [`MAX_NAME`].
fn check_counts(info: &Info) -> Result<(), String> {
    let long = |name: &str| name.len() > MAX_NAME;
    let (mut actions, mut listeners) = (0usize, 0usize);
    for service in &info.services {
        actions += service.actions.as_ref().map_or(0, |a| a.len());
        listeners += service.events.as_ref().map_or(0, |e| e.len());
        let names = std::iter::once(service.name.as_str())
            .chain(service.actions.iter().flatten().map(|(k, _)| k.as_str()))
            .chain(service.events.iter().flatten().map(|(k, _)| k.as_str()));
        if let Some(name) = names.into_iter().find(|n| long(n)) {
            return Err(format!(
                "a name of {} bytes (at most {MAX_NAME})",
                name.len()
            ));
        }
        // A `name` or `group` inside an entry stands for the key.
        let inner = service
            .actions
            .iter()
            .flatten()
            .chain(service.events.iter().flatten())
            .filter_map(|(_, v)| v.as_object())
            .flat_map(|o| {
                ["name", "group"]
                    .into_iter()
                    .filter_map(|k| o.get(k)?.as_str())
            });
        if let Some(name) = inner.into_iter().find(|n| long(n)) {
            return Err(format!(
                "a name of {} bytes (at most {MAX_NAME})",
                name.len()
            ));
        }
    }
    if info.services.len() > MAX_ACTIONS_PER_NODE
        || actions > MAX_ACTIONS_PER_NODE
        || listeners > MAX_ACTIONS_PER_NODE
    {
        return Err(format!(
            "{} services, {actions} actions and {listeners} event listeners (at most {MAX_ACTIONS_PER_NODE} each)",
            info.services.len()
        ));
    }
    Ok(())
}

/// Moleculer's event name match: `*` is any run of characters but `.`,
/// `**` any run at all, `?` one character; anything else is literal.
pub fn matches(pattern: &str, name: &str) -> bool {
    if !pattern.contains(['*', '?']) {
        return pattern == name;
    }
    glob(pattern.as_bytes(), name.as_bytes())
}

fn glob(p: &[u8], s: &[u8]) -> bool {
    match p {
        [] => s.is_empty(),
        [b'*', b'*', rest @ ..] => (0..=s.len()).any(|i| glob(rest, &s[i..])),
        [b'*', rest @ ..] => {
            let run = s.iter().position(|&c| c == b'.').unwrap_or(s.len());
            (0..=run).any(|i| glob(rest, &s[i..]))
        }
        [b'?', rest @ ..] => !s.is_empty() && glob(rest, &s[1..]),
        [c, rest @ ..] => s.first() == Some(c) && glob(rest, &s[1..]),
    }
}

/// What one INFO offers: its services, the actions callable from here
/// (with their parameter rules), and its event listeners.
struct Offer {
    services: Vec<String>,
    actions: Vec<String>,
    params: HashMap<String, Value>,
    listeners: Vec<(String, String)>,
}

impl Offer {
    fn of(info: &Info) -> Offer {
        let mut services = Vec::new();
        let mut actions = Vec::new();
        let mut params = HashMap::new();
        let mut listeners = Vec::new();
        for service in &info.services {
            services.push(
                service
                    .full_name
                    .clone()
                    .unwrap_or_else(|| service.name.clone()),
            );
            for (name, action) in service.actions.iter().flatten() {
                // Actions a node keeps to itself are not callable from here.
                let visibility = action.get("visibility").and_then(Value::as_str);
                if matches!(visibility, Some("protected" | "private")) {
                    continue;
                }
                let full = action
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or(name)
                    .to_string();
                if let Some(rules) = action.get("params") {
                    params.insert(full.clone(), rules.clone());
                }
                actions.push(full);
            }
            for (name, event) in service.events.iter().flatten() {
                let pattern = event
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or(name)
                    .to_string();
                let group = event
                    .get("group")
                    .and_then(Value::as_str)
                    .unwrap_or(&service.name)
                    .to_string();
                listeners.push((pattern, group));
            }
        }
        Offer {
            services,
            actions,
            params,
            listeners,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn info(sender: &str, instance: &str, value: Value) -> Info {
        let mut v = value;
        v["ver"] = json!("4");
        v["sender"] = json!(sender);
        v["instanceID"] = json!(instance);
        serde_json::from_value(v).expect("info")
    }

    impl Registry {
        fn apply_info_ok(&mut self, info: &Info) -> Joined {
            self.apply_info(info, 100).expect("within bounds")
        }
    }

    #[test]
    fn what_is_kept_from_the_wire_is_bounded() {
        let mut r = Registry::new("MOL");
        for i in 0..MAX_NODES {
            r.apply_info(&info(&format!("n{i}"), "1", json!({})), 10)
                .expect("fits");
        }
        assert!(
            r.apply_info(&info("one-more", "1", json!({})), 10)
                .unwrap_err()
                .contains("nodes are known")
        );
        // A known node may still update itself.
        r.apply_info(&info("n0", "2", json!({})), 10)
            .expect("known");
        assert!(r.remove("n1"));
        assert_eq!(r.info_bytes(), (MAX_NODES - 1) * 10);
        let big = r.apply_info(&info("big", "1", json!({})), MAX_INFO_BYTES);
        assert!(big.unwrap_err().contains("MiB"));
        let long = json!({ "services": [{ "name": "x".repeat(MAX_NAME + 1) }] });
        assert!(r.apply_info(&info("long", "1", long), 10).is_err());
        let inner = json!({ "services": [{ "name": "s", "actions": { "s.a": { "name": "y".repeat(MAX_NAME + 1) } } }] });
        assert!(r.apply_info(&info("inner", "1", inner), 10).is_err());
        let actions: serde_json::Map<String, Value> = (0..=MAX_ACTIONS_PER_NODE)
            .map(|i| (format!("s.a{i}"), json!({})))
            .collect();
        let many = json!({ "services": [{ "name": "s", "actions": actions }] });
        assert!(r.apply_info(&info("many", "1", many), 10).is_err());
        assert_eq!(r.len(), MAX_NODES - 1);
    }

    #[test]
    fn moleculer_event_patterns() {
        assert!(matches("order.placed", "order.placed"));
        assert!(matches("order.*", "order.placed"));
        assert!(!matches("order.*", "order.placed.eu"));
        assert!(matches("order.**", "order.placed.eu"));
        assert!(matches("**", "anything.at.all"));
        assert!(matches("user.?", "user.x"));
        assert!(!matches("order.*", "orders.placed"));
    }

    #[test]
    fn calls_round_robin_and_emits_skip_local_groups() {
        let mut r = Registry::new("MOL");
        let svc = json!({ "services": [{ "name": "greeter",
            "actions": { "greeter.hello": { "name": "greeter.hello" }, "greeter.secret": { "name": "greeter.secret", "visibility": "private" } },
            "events": { "order.*": { "name": "order.*", "group": "greeter" } } }] });
        assert_eq!(r.apply_info_ok(&info("a", "1", svc.clone())), Joined::New);
        assert_eq!(r.apply_info_ok(&info("b", "1", svc.clone())), Joined::New);
        assert_eq!(r.apply_info_ok(&info("b", "1", svc.clone())), Joined::Same);
        assert_eq!(r.apply_info_ok(&info("b", "2", svc)), Joined::Restarted);
        let picks: Vec<String> = (0..4)
            .map(|_| r.pick("greeter.hello").unwrap().0.to_string())
            .collect();
        assert_eq!(picks, ["a", "b", "a", "b"]);
        assert!(r.pick("greeter.secret").is_none());
        let one = r.event_targets("order.placed", false, &[]);
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].1, Some(vec!["greeter".to_string()]));
        assert!(
            r.event_targets("order.placed", false, &["greeter".into()])
                .is_empty()
        );
        assert_eq!(
            r.event_targets("order.placed", true, &["greeter".into()])
                .len(),
            2
        );
        assert!(r.event_targets("user.created", true, &[]).is_empty());
        assert!(r.remove("a"));
        assert_eq!(r.pick("greeter.hello").unwrap().0.as_ref(), "b");
    }
}
