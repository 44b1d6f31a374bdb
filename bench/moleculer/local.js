// The peer of `call.host_a_b.*`: host -> a.callB -> b.echo on one Moleculer
// broker (no transporter), with the same 64-character string payload, from
// 1 and 100 concurrent callers. Prints `bench: peer.moleculer.<name> = <v> calls/s`.
"use strict";
const { ServiceBroker } = require("moleculer");

const MEASURE_MS = 3000;
const payload = "0123456789abcdef".repeat(4);

async function rate(broker, callers) {
	const end = Date.now() + MEASURE_MS;
	const started = process.hrtime.bigint();
	const loops = Array.from({ length: callers }, async () => {
		let n = 0;
		while (Date.now() < end) {
			for (let i = 0; i < 64; i++) {
				const r = await broker.call("a.callB", { data: payload });
				if (r !== payload) throw new Error("echo mismatch");
				n++;
			}
		}
		return n;
	});
	const total = (await Promise.all(loops)).reduce((a, b) => a + b, 0);
	const seconds = Number(process.hrtime.bigint() - started) / 1e9;
	return total / seconds;
}

async function main() {
	const broker = new ServiceBroker({ logger: false, metrics: false, tracing: false });
	broker.createService({ name: "b", actions: { echo: ctx => ctx.params.data } });
	broker.createService({
		name: "a",
		actions: { callB: ctx => ctx.call("b.echo", { data: ctx.params.data }) }
	});
	await broker.start();
	await rate(broker, 1); // warm up the JIT
	for (const c of [1, 100]) {
		const r = await rate(broker, c);
		console.log(`bench: peer.moleculer.call.host_a_b.c${c} = ${r.toFixed(1)} calls/s`);
	}
	await broker.stop();
}

main().catch(e => {
	console.error(e);
	process.exit(1);
});
