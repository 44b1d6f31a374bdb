// A Steedos-shaped Moleculer 0.14 node for tests/steedos.rs, driven over
// stdin/stdout (one JSON command a line, answered by one JSON line with the
// same `id`; the first line printed is {"ready":true,"protocol":"4"}).
//
// Env: NATS_URL, NODE_ID, HTTP_PORT (moleculer-web listens there, with
// `autoAliases`, under /api).
//
// Services:
//   `api`: moleculer-web, one route `/api` with `autoAliases: true`;
//   `objectql` (only after the `objectql` command): `ready` answers
//     "objectql is ready"; `insert` runs Steedos' trigger scan: every action
//     in the registry with a `trigger` whose `listenTo` is the object and
//     whose `when` holds "beforeInsert" is called with `{doc}` before the
//     record is kept, and a trigger's error rejects the insert.
//
// Commands:
//   {"cmd":"call","action":"...","params":{...},"opts":{"nodeID":"..."}}
//     -> {"ok":true,"result":...} or {"ok":false,"error":{name,message,code,type,data}}
//   {"cmd":"triggers","object":"accounts","when":"beforeInsert"} -> the trigger actions found
//   {"cmd":"objectql"} -> starts the `objectql` service (a dependency that appears late)
//   {"cmd":"wait","services":[...]} ; {"cmd":"stop"}
"use strict";
const readline = require("readline");
const { ServiceBroker } = require("moleculer14");
const ApiGateway = require("moleculer-web");

const broker = new ServiceBroker({
	nodeID: process.env.NODE_ID,
	transporter: process.env.NATS_URL,
	logger: false,
	heartbeatInterval: 1,
	heartbeatTimeout: 3,
	requestTimeout: 10000
});

function say(obj) {
	process.stdout.write(JSON.stringify(obj) + "\n");
}

broker.createService({
	name: "api",
	mixins: [ApiGateway],
	settings: {
		port: Number(process.env.HTTP_PORT),
		ip: "127.0.0.1",
		routes: [{ path: "/api", autoAliases: true }]
	}
});

// Steedos' trigger scan (objectql's registerTriggers, in short): the
// actions of every service in the registry that declare `trigger`.
function triggers(object, when) {
	const found = [];
	for (const service of broker.registry.getServiceList({ withActions: true })) {
		for (const action of Object.values(service.actions || {})) {
			const trigger = action.trigger;
			if (!trigger || trigger.listenTo !== object) continue;
			const whens = Array.isArray(trigger.when) ? trigger.when : [trigger.when];
			if (whens.includes(when)) found.push({ action: action.name, trigger, node: service.nodeID });
		}
	}
	return found;
}

const objectql = {
	name: "objectql",
	actions: {
		ready() {
			return "objectql is ready";
		},
		async insert(ctx) {
			const { objectName, doc } = ctx.params;
			for (const t of triggers(objectName, "beforeInsert")) {
				await ctx.call(t.action, { doc });
			}
			return { inserted: doc };
		}
	}
};

function plainError(e) {
	return { name: e.name, message: e.message, code: e.code, type: e.type, data: e.data };
}

async function run(cmd) {
	switch (cmd.cmd) {
		case "call":
			return broker.call(cmd.action, cmd.params || {}, Object.assign({ timeout: 10000 }, cmd.opts || {}));
		case "triggers":
			return triggers(cmd.object, cmd.when);
		case "objectql":
			broker.createService(objectql);
			return broker.waitForServices(["objectql"], 10000);
		case "wait":
			return broker.waitForServices(cmd.services, 10000);
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
