// The peer of `cluster.*`: two Moleculer 0.15 processes over the nats-server
// (or redis-server, through ioredis) at argv[2] (host/benches/cluster.rs passes the one it started). This
// process calls `greeter.hello` on the other from 1 and 100 concurrent
// callers, then emits `order.bench` events to its `audit` listener, kept at
// most 20 000 ahead. Prints `bench: peer.moleculer.cluster.<name> = <v> <unit>`.
// Like ours, the c100 figure is the median of BENCH_ROUNDS (default 3) rounds.
"use strict";
const { fork } = require("child_process");
const { ServiceBroker } = require("moleculer");

const url = process.argv[2] || "nats://127.0.0.1:4222";
// Figures over Redis are named `peer.moleculer.cluster.redis.*`.
const name = url.startsWith("redis") ? "peer.moleculer.cluster.redis" : "peer.moleculer.cluster";
const MEASURE_MS = 3000;
const EVENTS = 300000;
const WINDOW = 20000;
const ROUNDS = Math.max(1, Number(process.env.BENCH_ROUNDS) || 3);

function serve() {
	let handled = 0;
	const broker = new ServiceBroker({ nodeID: "mol-server", transporter: url, logger: false, metrics: false, tracing: false });
	broker.createService({ name: "greeter", actions: { hello: ctx => `Hello, ${ctx.params.name}!` } });
	broker.createService({
		name: "audit",
		actions: { count: () => handled },
		events: { "order.**"() { handled++; } }
	});
	broker.start().then(() => process.send && process.send("ready"));
	process.on("message", m => m === "stop" && broker.stop().then(() => process.exit(0)));
}

async function rate(broker, callers) {
	const end = Date.now() + MEASURE_MS;
	const started = process.hrtime.bigint();
	const loops = Array.from({ length: callers }, async () => {
		let n = 0;
		while (Date.now() < end) {
			await broker.call("greeter.hello", { name: "bench" });
			n++;
		}
		return n;
	});
	const total = (await Promise.all(loops)).reduce((a, b) => a + b, 0);
	return total / (Number(process.hrtime.bigint() - started) / 1e9);
}

async function events(broker) {
	const base = await broker.call("audit.count");
	const started = process.hrtime.bigint();
	for (let sent = 1; sent <= EVENTS; sent++) {
		broker.emit("order.bench", { "order-id": 1 });
		if (sent % 1000 === 0) {
			while (sent - ((await broker.call("audit.count")) - base) > WINDOW) {
				await new Promise(r => setTimeout(r, 1));
			}
		}
	}
	while ((await broker.call("audit.count")) - base < EVENTS) {
		await new Promise(r => setTimeout(r, 1));
	}
	return EVENTS / (Number(process.hrtime.bigint() - started) / 1e9);
}

async function main() {
	const server = fork(__filename, [url, "serve"]);
	await new Promise(r => server.once("message", r));
	const broker = new ServiceBroker({ nodeID: "mol-caller", transporter: url, logger: false, metrics: false, tracing: false });
	await broker.start();
	await broker.waitForServices(["greeter", "audit"], 10000);
	await rate(broker, 1); // warm up the JIT
	const c1 = await rate(broker, 1);
	console.log(`bench: ${name}.call.c1 = ${c1.toFixed(1)} calls/s`);
	const rounds = [];
	for (let i = 0; i < ROUNDS; i++) rounds.push(await rate(broker, 100));
	const median = [...rounds].sort((a, b) => a - b)[Math.floor(rounds.length / 2)];
	const text = rounds.map(r => r.toFixed(0)).join(", ");
	console.log(`bench: ${name}.call.c100 = ${median.toFixed(1)} calls/s (median of ${rounds.length} rounds: ${text})`);
	const e = await events(broker);
	console.log(`bench: ${name}.event = ${e.toFixed(1)} events/s`);
	await broker.stop();
	server.send("stop");
}

if (process.argv[3] === "serve") {
	serve();
} else {
	main().catch(e => {
		console.error(e);
		process.exit(1);
	});
}
