// A real Moleculer node for tests/telemetry.rs: `node-math.relay` calls
// `action` with `params` from inside an action (a Node.js hop between two
// packages), and a `$tracing.spans` listener prints every batch it
// receives as {"spans":[...],"sender":"<node>"}, one JSON line (and a
// `$metrics.snapshot` listener each snapshot as {"metrics":[...],"sender"}).
//
// Env: MOLECULER (14 or 15), NATS_URL, NODE_ID, TRACING ("1": Moleculer's
// own tracing on, exported by its Event exporter as `$tracing.spans`, as
// Steedos configures it), WAIT_SERVICES (comma-separated services to see
// before saying ready). The first line printed is {"ready":true}.
"use strict";

const release = process.env.MOLECULER === "14" ? "moleculer14" : "moleculer15";
const { ServiceBroker } = require(release);

const tracing =
	process.env.TRACING === "1"
		? { enabled: true, exporter: { type: "Event", options: { interval: 0 } } }
		: { enabled: false };

const broker = new ServiceBroker({
	nodeID: process.env.NODE_ID,
	transporter: process.env.NATS_URL,
	logger: false,
	heartbeatInterval: 1,
	heartbeatTimeout: 3,
	requestTimeout: 10000,
	tracing
});

function say(obj) {
	process.stdout.write(JSON.stringify(obj) + "\n");
}

broker.createService({
	name: "node-math",
	actions: {
		relay(ctx) {
			return ctx.call(ctx.params.action, ctx.params.params || {});
		}
	}
});

broker.createService({
	name: "trace-watch",
	events: {
		"$tracing.spans"(ctx) {
			say({ spans: ctx.params, sender: ctx.nodeID });
		},
		"$metrics.snapshot"(ctx) {
			say({ metrics: ctx.params, sender: ctx.nodeID });
		}
	}
});

broker
	.start()
	.then(() => {
		const wait = (process.env.WAIT_SERVICES || "").split(",").filter(Boolean);
		return wait.length ? broker.waitForServices(wait, 20000) : null;
	})
	.then(() => say({ ready: true }))
	.catch(e => {
		say({ ready: false, error: String(e) });
		process.exit(1);
	});

process.stdin.on("end", () => broker.stop().then(() => process.exit(0)));
process.stdin.resume();
