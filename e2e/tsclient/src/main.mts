// Drives a live agent the way a TypeScript host program would: through a
// client generated from the agent's own /openapi.yaml by openapi-typescript
// (the types, the module agent-api) and openapi-fetch (the runtime), with
// nothing hand-written about the API but this script. Streams are read the
// way openapi-fetch documents, parseAs: "stream", then NDJSON split into
// lines and Server-Sent Events parsed by eventsource-parser.
//
// AGENT_URL is the agent's TCP listener, AGENT_TOKEN its bearer token (never
// printed). The script prints a line per check; any failure prints FAIL and
// why, and exits 1.

import createClient from "openapi-fetch";
import { EventSourceParserStream } from "eventsource-parser/stream";
import type { EventSourceMessage } from "eventsource-parser";
import type { components, paths } from "agent-api";

type Event = components["schemas"]["Event"];
type OutputMessage = components["schemas"]["OutputMessage"];
type SandboxState = components["schemas"]["SandboxState"];

// A bound on every wait: only a hang ever reaches it, the machine may be busy.
const waitMs = 60_000;

class CheckError extends Error {}

function check(ok: boolean, what: string): asserts ok {
  if (!ok) throw new CheckError(what);
}

function env(name: string): string {
  const v = process.env[name];
  if (!v) throw new CheckError(`${name} is not set`);
  return v;
}

// within fails with what when p has not settled in waitMs.
async function within<T>(what: string, p: Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new CheckError(`no ${what} within ${waitMs / 1000} s`)), waitMs);
  });
  try {
    return await Promise.race([p, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

const client = createClient<paths>({
  baseUrl: env("AGENT_URL"),
  headers: { Authorization: `Bearer ${env("AGENT_TOKEN")}` },
});

const show = (v: unknown) => JSON.stringify(v);

async function ping(): Promise<void> {
  const got = await client.GET("/v1/ping");
  check(got.data !== undefined, `GET /v1/ping: ${got.response.status} ${show(got.error)}`);
  check(got.data.message === "pong" && got.data.version !== "", `GET /v1/ping answered ${show(got.data)}`);
  console.log(`ok: GET /v1/ping: pong, version ${got.data.version}`);

  const nowMs = Date.now();
  const secs = Math.floor(nowMs / 1000);
  const body = { message: "from ts", timestamp_secs: secs, timestamp_nanos: (nowMs % 1000) * 1_000_000 };
  const post = await client.POST("/v1/ping", { body });
  check(post.data !== undefined, `POST /v1/ping ${show(body)}: ${post.response.status} ${show(post.error)}`);
  check(post.data.message === "pong: from ts", `POST /v1/ping answered message ${show(post.data.message)}, want "pong: from ts"`);
  check(typeof post.data.clock_drift_ms === "number", `POST /v1/ping with a host time answered no clock_drift_ms: ${show(post.data)}`);
  check(post.data.clock_stepped !== true, `POST /v1/ping stepped the clock of an agent run with --set-clock=false: ${show(post.data)}`);
  console.log(`ok: POST /v1/ping with the host time: ${post.data.message}, drift ${post.data.clock_drift_ms} ms`);
}

// unknownSandbox checks that an unknown id is a 404 whose body is the Error
// schema and nothing else.
async function unknownSandbox(): Promise<void> {
  const got = await client.GET("/v1/sandboxes/{id}", { params: { path: { id: "ts-no-such-box" } } });
  check(got.response.status === 404, `GET an unknown sandbox: status ${got.response.status}, want 404`);
  const e = got.error;
  check(e !== undefined && typeof e === "object", `GET an unknown sandbox: no JSON error body: ${show(e)}`);
  const keys = Object.keys(e).sort().join(",");
  check(keys === "code,message", `the 404's body has fields ${keys}, want exactly code and message (the Error schema)`);
  check(e.code === 404 && typeof e.message === "string" && e.message !== "",
    `the 404's body ${show(e)} wants code 404 and a message`);
  console.log(`ok: GET an unknown sandbox: 404 ${show(e)}`);
}

async function create(id: string): Promise<void> {
  const got = await client.POST("/v1/sandboxes", { body: { id, network: { mode: "none" } } });
  check(got.data !== undefined, `create ${id}: ${got.response.status} ${show(got.error)}`);
  check(got.response.status === 202 && got.data.id === id, `create ${id} answered ${got.response.status} ${show(got.data)}, want 202`);
}

// untilState polls the sandbox until it is in state; failed ends the wait.
async function untilState(id: string, state: SandboxState): Promise<void> {
  const deadline = Date.now() + waitMs;
  for (;;) {
    const got = await client.GET("/v1/sandboxes/{id}", { params: { path: { id } } });
    check(got.data !== undefined, `GET sandbox ${id}: ${got.response.status} ${show(got.error)}`);
    if (got.data.state === state) return;
    check(got.data.state !== "failed", `sandbox ${id} failed: ${got.data.error ?? ""}`);
    check(Date.now() < deadline, `sandbox ${id} is still ${got.data.state} after ${waitMs / 1000} s, want ${state}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function remove(id: string, force: boolean): Promise<void> {
  const got = await client.DELETE("/v1/sandboxes/{id}", { params: { path: { id }, query: { force } } });
  check(got.response.status === 204, `remove ${id}: ${got.response.status} ${show(got.error)}, want 204`);
}

// lines splits text into lines, without their ends.
function lines(): TransformStream<string, string> {
  let rest = "";
  return new TransformStream({
    transform(chunk, out) {
      const parts = (rest + chunk).split("\n");
      rest = parts.pop() ?? "";
      for (const p of parts) if (p !== "") out.enqueue(p);
    },
    flush(out) {
      if (rest !== "") out.enqueue(rest);
    },
  });
}

interface RunResult {
  stdout: string;
  stderr: string;
  exit: number;
  messages: number;
}

// runCmd runs cmd in the sandbox, reading the NDJSON answer as a stream
// to its end (going away would kill the command).
async function runCmd(id: string, cmd: string[]): Promise<RunResult> {
  const got = await client.POST("/v1/sandboxes/{id}/run", {
    params: { path: { id } },
    body: { cmd },
    parseAs: "stream",
  });
  check(got.data !== undefined && got.data !== null, `run ${show(cmd)} in ${id}: ${got.response.status} ${show(got.error)}`);
  const ctype = got.response.headers.get("Content-Type") ?? "";
  check(ctype.startsWith("application/x-ndjson"), `run answered Content-Type ${ctype}, want application/x-ndjson`);
  const out = { stdout: "", stderr: "" };
  let exit: number | undefined;
  let messages = 0;
  const reader = got.data.pipeThrough(new TextDecoderStream()).pipeThrough(lines()).getReader();
  for (;;) {
    const { value, done } = await within(`output of ${show(cmd)}`, reader.read());
    if (done) break;
    messages++;
    check(exit === undefined, `run output after the last message: ${value}`);
    const m = JSON.parse(value) as OutputMessage;
    if (m.stream === "stdout" || m.stream === "stderr") {
      out[m.stream] += Buffer.from(m.data ?? "", "base64").toString("utf8");
    }
    if (m.done) {
      check(m.stream === "exit" && typeof m.exit_code === "number", `the last run message ${value} wants stream exit and exit_code`);
      exit = m.exit_code;
    }
  }
  check(exit !== undefined, `the output of ${show(cmd)} ended after ${messages} messages without one with done: true`);
  return { ...out, exit, messages };
}

// run runs a command that writes to both streams and exits 3.
async function run(id: string): Promise<void> {
  const cmd = ["sh", "-c", "echo to-out; echo to-err >&2; exit 3"];
  const r = await runCmd(id, cmd);
  check(r.stdout === "to-out\n" && r.stderr === "to-err\n" && r.exit === 3,
    `run ${show(cmd)}: stdout ${show(r.stdout)}, stderr ${show(r.stderr)}, exit ${r.exit}; want "to-out\\n", "to-err\\n", 3`);
  console.log(`ok: run in ${id}, read as a stream of ${r.messages} NDJSON messages: stdout and stderr apart, exit code 3`);
}

// A subscription to GET /v1/events as Server-Sent Events.
interface Seen {
  seq: number;
  data: string; // the event's JSON as sent
  event: Event;
}

class Subscription {
  private abort = new AbortController();
  private reader: ReadableStreamDefaultReader<EventSourceMessage> | undefined;
  private lastSeq = 0;

  constructor(readonly name: string) {}

  // open subscribes, from lastEventId on when given; it returns once the
  // agent has answered, and so subscribed.
  async open(lastEventId?: number): Promise<void> {
    const header = lastEventId === undefined ? {} : { "Last-Event-ID": String(lastEventId) };
    this.abort = new AbortController();
    const got = await within(`answer to the events subscription ${this.name}`, client.GET("/v1/events", {
      params: { header },
      headers: { Accept: "text/event-stream" },
      parseAs: "stream",
      signal: this.abort.signal,
    }));
    check(got.data !== undefined && got.data !== null, `events ${this.name}: ${got.response.status} ${show(got.error)}`);
    const ctype = got.response.headers.get("Content-Type") ?? "";
    check(ctype.startsWith("text/event-stream"), `events with Accept: text/event-stream answered Content-Type ${ctype}`);
    this.reader = got.data.pipeThrough(new TextDecoderStream()).pipeThrough(new EventSourceParserStream()).getReader();
  }

  // next is the next event, awaited as what; its seq (the SSE id) must
  // exceed the one before.
  async next(what = "event"): Promise<Seen> {
    check(this.reader !== undefined, `events ${this.name} is not open`);
    const { value, done } = await within(`${what} on ${this.name}`, this.reader.read());
    check(!done, `events ${this.name}: the stream ended`);
    check(value.event === undefined, `events ${this.name}: a message of type ${value.event}: ${value.data}`);
    check(value.id !== undefined && /^[0-9]+$/.test(value.id), `events ${this.name}: a message without a decimal id: ${show(value)}`);
    const seq = Number(value.id);
    const event = JSON.parse(value.data) as Event;
    check(event.seq === seq, `events ${this.name}: id ${seq} and seq ${event.seq} differ: ${value.data}`);
    check(seq > this.lastSeq, `events ${this.name}: seq ${seq} after ${this.lastSeq}: not increasing`);
    this.lastSeq = seq;
    return { seq, data: value.data, event };
  }

  // until reads events up to and including the first that matches.
  async until(what: string, match: (e: Event) => boolean): Promise<Seen[]> {
    const seen: Seen[] = [];
    for (;;) {
      const s = await this.next(what);
      seen.push(s);
      if (match(s.event)) return seen;
    }
  }

  // close disconnects.
  async close(): Promise<void> {
    this.abort.abort();
    await this.reader?.cancel().catch(() => undefined);
    this.reader = undefined;
  }
}

const is = (id: string, action: Event["action"], exitCode?: string) => (e: Event) =>
  e.sandbox_id === id && e.action === action && (exitCode === undefined || e.attributes?.["exit_code"] === exitCode);

const describe = (seen: Seen[]) => seen.map((s) => `${s.seq}:${s.event.sandbox_id}/${s.event.action}`).join(" ");

// events follows events over SSE on two subscriptions: a witness that
// stays connected, and one that disconnects, misses what the agent does
// meanwhile (another sandbox created and removed), and reconnects with
// Last-Event-ID: it must get exactly what the witness got after that id,
// then follow live.
async function events(a: string, b: string): Promise<void> {
  const witness = new Subscription("witness");
  const resumer = new Subscription("resumer");
  await witness.open();
  await resumer.open();

  // A run that exits 0: its idle event is told apart from the earlier run's.
  const ran = await runCmd(a, ["true"]);
  check(ran.exit === 0, `run true in ${a}: exit ${ran.exit}`);
  const before = await resumer.until(`${a}'s idle with exit code 0`, is(a, "idle", "0"));
  const last = before[before.length - 1]!.seq;
  await witness.until(`the event ${last}`, (e) => e.seq === last);
  await resumer.close();
  console.log(`ok: events over SSE: ${describe(before)}; disconnected after ${last}`);

  await create(b);
  await untilState(b, "ready");
  await remove(b, false);
  const missed = await witness.until(`${b}'s removed`, is(b, "removed"));
  const actions = missed.filter((s) => s.event.sandbox_id === b).map((s) => s.event.action);
  check(actions[0] === "created" && actions.includes("ready"), `while disconnected, ${b}'s events were ${actions.join(" ")}`);

  await resumer.open(last);
  await remove(a, true);
  const tail = await witness.until(`${a}'s removed`, is(a, "removed"));
  const want = [...missed, ...tail];
  const got = await resumer.until(`${a}'s removed`, is(a, "removed"));
  const same = got.length === want.length && got.every((s, i) => s.seq === want[i]!.seq && s.data === want[i]!.data);
  check(same, `reconnected with Last-Event-ID: ${last}, got ${describe(got)}; want ${describe(want)}`);
  console.log(`ok: reconnected with Last-Event-ID: ${last}: replayed the ${missed.length} missed (${describe(missed)}), then live ${describe(tail)}`);
  await witness.close();
  await resumer.close();
}

async function main(): Promise<void> {
  await ping();
  await unknownSandbox();
  const a = "ts-a";
  await create(a);
  await untilState(a, "ready");
  console.log(`ok: created ${a}, ready`);
  await run(a);
  await events(a, "ts-b");
  const left = await client.GET("/v1/sandboxes");
  check(left.data !== undefined && left.data.sandboxes.length === 0, `sandboxes left at the end: ${show(left.data ?? left.error)}`);
  console.log("ok: both sandboxes removed");
}

try {
  await main();
  console.log("PASS");
  process.exit(0);
} catch (e) {
  const why = e instanceof CheckError ? e.message : e instanceof Error ? (e.stack ?? e.message) : String(e);
  console.log(`FAIL: ${why}`);
  process.exit(1);
}
