// A real Moleculer node for tests/cluster.rs, driven over stdin/stdout.
//
// Env: MOLECULER (14 or 15: which npm release, hence protocol 4 or 5),
// NATS_URL (the transporter: nats:// or redis://, the latter through ioredis),
// NODE_ID, NAMESPACE (optional).
//
// Services: `node-math` (add, whoami, fail, slow, relay: calls `action`
// with `params` from inside an action; flaky: counts its calls and, as
// the `flaky` command set it, answers "ok", throws a retryable error
// (503) or answers only after 5 s) and a listener of
// `test.**` in the group named by LISTENER_GROUP (default `node-watch`).
//
// `node-math.relayMeta` calls `action` with `params` and `meta` from
// inside an action and answers {result, meta: its ctx.meta after, id}.
// `objectql` (after the `objectql` command) is a stub of Steedos' objectql:
// `find` records its context (meta, id, parentID, requestID, level,
// caller), sets reply meta of every JSON type and answers one record.
//
// Commands, one JSON object a line on stdin, answered by one JSON line on
// stdout with the same `id`:
//   {"id":1,"cmd":"callMeta","action":"...","params":{...},"meta":{...}}
//     -> {"id":1,"ok":true,"result":{"result":...,"meta":<the caller's ctx.meta after>}}
//   {"id":1,"cmd":"objectql"} starts the objectql stub; {"cmd":"seen"} -> what objectql.find saw
//   {"id":1,"cmd":"call","action":"greeter.hello","params":{...},"meta":{...}}
//     -> {"id":1,"ok":true,"result":...} or {"id":1,"ok":false,"error":{name,message,code,type,data}}
//   {"id":2,"cmd":"emit"|"broadcast","event":"test.x","payload":{...}} -> {"id":2,"ok":true}
//   {"id":3,"cmd":"wait","services":["greeter"]} -> {"id":3,"ok":true}
//   {"id":4,"cmd":"nodes"} -> {"id":4,"ok":true,"result":[{id, available}]}
//   {"id":5,"cmd":"stop"} -> {"id":5,"ok":true}, then the process exits
//   {"id":6,"cmd":"flaky","mode":"ok"|"throw"|"slow"} -> {"id":6,"ok":true,"result":calls so far}
//   {"id":7,"cmd":"flaky"} -> {"id":7,"ok":true,"result":calls so far} (mode unchanged)
//   {"id":8,"cmd":"departed"} -> {"id":8,"ok":true,"result":[{id, unexpected}]}: the nodes
//     this broker saw leave, in order, `unexpected` false for a DISCONNECT
//     and true for a node lost to the heartbeat timeout
// Events the listener receives are printed as {"received":event,"data":...,"group":...,"sender":...}.
// The first line printed is {"ready":true,"protocol":"4"|"5"}.
"use strict";
const readline = require("readline");

const release = process.env.MOLECULER === "14" ? "moleculer14" : "moleculer15";
const { ServiceBroker, Errors } = require(release);

const broker = new ServiceBroker({
	nodeID: process.env.NODE_ID,
	namespace: process.env.NAMESPACE || "",
	transporter: process.env.NATS_URL,
	logger: false,
	heartbeatInterval: 1,
	heartbeatTimeout: 3,
	requestTimeout: 10000
});

// What `node-math.flaky` does, and how often it was called.
const flaky = { mode: "ok", calls: 0 };

function say(obj) {
	process.stdout.write(JSON.stringify(obj) + "\n");
}

broker.createService({
	name: "node-math",
	actions: {
		add: {
			params: { a: "number", b: "number" },
			handler(ctx) {
				return ctx.params.a + ctx.params.b;
			}
		},
		whoami(ctx) {
			return {
				nodeID: broker.nodeID,
				meta: ctx.meta,
				id: ctx.id,
				parentID: ctx.parentID,
				requestID: ctx.requestID,
				level: ctx.level,
				caller: ctx.caller,
				params: ctx.params
			};
		},
		fail() {
			throw new Errors.MoleculerClientError("the teapot refuses", 418, "TEAPOT", { why: "test" });
		},
		relay(ctx) {
			return ctx.call(ctx.params.action, ctx.params.params || {});
		},
		async relayMeta(ctx) {
			const result = await ctx.call(ctx.params.action, ctx.params.params || {}, { meta: ctx.params.meta || {} });
			return { result, meta: ctx.meta, id: ctx.id };
		},
		flaky() {
			flaky.calls += 1;
			if (flaky.mode === "throw") {
				throw new Errors.MoleculerRetryableError("flaky is down", 503, "FLAKY");
			}
			if (flaky.mode === "slow") {
				return new Promise(resolve => setTimeout(() => resolve("late"), 5000));
			}
			return "ok";
		}
	}
});

const group = process.env.LISTENER_GROUP || "node-watch";
broker.createService({
	name: group,
	events: {
		"test.**"(ctx) {
			say({ received: ctx.eventName, data: ctx.params, group, sender: ctx.nodeID, type: ctx.eventType });
		}
	}
});

// What objectql.find saw, in order.
const seen = [];
const objectql = {
	name: "objectql",
	actions: {
		find(ctx) {
			seen.push({ meta: JSON.parse(JSON.stringify(ctx.meta)), id: ctx.id, parentID: ctx.parentID, requestID: ctx.requestID, level: ctx.level, caller: ctx.caller });
			ctx.meta.objectql = { found: 1, ok: true, none: null, list: [1, "a"] };
			ctx.meta.count = 7;
			return [{ _id: "a1", name: "Acme" }];
		}
	}
};

// Nodes seen leaving ($node.disconnected), in order.
const departed = [];
broker.localBus.on("$node.disconnected", ({ node, unexpected }) => {
	departed.push({ id: node.id, unexpected: !!unexpected });
});

function plainError(e) {
	return { name: e.name, message: e.message, code: e.code, type: e.type, data: e.data, retryable: e.retryable };
}

async function run(cmd) {
	switch (cmd.cmd) {
		case "call":
			return broker.call(cmd.action, cmd.params || {}, { meta: cmd.meta || {}, timeout: cmd.timeout || 10000 });
		case "callMeta": {
			const p = broker.call(cmd.action, cmd.params || {}, { meta: cmd.meta || {}, timeout: cmd.timeout || 10000 });
			const result = await p;
			return { result, meta: p.ctx.meta };
		}
		case "objectql":
			broker.createService(objectql);
			return broker.waitForServices(["objectql"], 10000);
		case "seen":
			return seen;
		case "emit":
			return broker.emit(cmd.event, cmd.payload);
		case "broadcast":
			return broker.broadcast(cmd.event, cmd.payload);
		case "wait":
			return broker.waitForServices(cmd.services, 10000);
		case "nodes":
			return broker.registry.nodes.list({}).map(n => ({ id: n.id, available: n.available, client: n.client }));
		case "departed":
			return departed;
		case "flaky":
			if (cmd.mode) flaky.mode = cmd.mode;
			return flaky.calls;
		case "stop":
			await broker.stop();
			say({ id: cmd.id, ok: true });
			process.exit(0);
			return;
		default:
			throw new Error(`unknown command ${cmd.cmd}`);
	}
}

broker.start().then(() => {
	say({ ready: true, protocol: broker.PROTOCOL_VERSION });
	const lines = readline.createInterface({ input: process.stdin });
	lines.on("line", line => {
		let cmd;
		try {
			cmd = JSON.parse(line);
		} catch (e) {
			return say({ ok: false, error: { message: `not JSON: ${line}` } });
		}
		run(cmd).then(
			result => say({ id: cmd.id, ok: true, result: result === undefined ? null : result }),
			e => say({ id: cmd.id, ok: false, error: plainError(e) })
		);
	});
	lines.on("close", () => broker.stop().then(() => process.exit(0)));
});
