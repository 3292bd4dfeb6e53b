// The dsat command. `dsat help` lists what it does.
import { parseArgs } from "node:util";
import { createClient, DSAT_VERSION, toDsatError } from "@dsat/sdk";
import * as cmd from "./commands.ts";
import { runDemo } from "./demo.ts";
import { loadPipelineFile } from "./pipeline-file.ts";
import { startSatellite } from "./satellite.ts";

const HELP = `dsat ${DSAT_VERSION}: a distributed pipeline mesh

usage:
  dsat up [PIPELINE_FILE...]        a local satellite: etcd (unless --etcd), a router that serves
        [--status-process]          StatusService too, and the workers each file names; Ctrl-C
                                    stops everything; --status-process: StatusService in a
                                    process of its own instead
  dsat demo [--tasks N]             the sample pipeline over N tasks (default 1000), then stop
  dsat pipeline apply FILE          validate and store a pipeline definition (YAML or JSON)
  dsat pipeline list                the pipelines and their versions
  dsat submit PIPELINE [PAYLOAD]    submit a task (PAYLOAD: JSON, text, or @file); prints its id
        [--wait] [--id ID]          --wait: wait for the end and print the output
  dsat watch ID                     follow a task's transitions live until it ends
  dsat state ID                     a task's state, stage by stage
  dsat trace ID                     a task's timeline: stages, attempts, workers, durations, as bars
  dsat cancel ID [--reason TEXT]    cancel a task wherever it runs
  dsat retry ID [--wait]            submit a failed, timed-out or cancelled task again (same
                                    pipeline, input and headers); prints the new task's id
  dsat list [--pipeline P] [--state S[,S]] [--limit N]
  dsat members                      who is up: kind, stage, version, load
  dsat top [--once]                 live load per stage (workers, in-flight/capacity, queued, avg
                                    run time) and the members, redrawn every second

options:
  --etcd HOST:PORT[,…]   etcd endpoints (default: DSAT_ETCD, then .dsat/up.json, then 127.0.0.1:2379)
`;

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    etcd: { type: "string" },
    "data-dir": { type: "string" },
    routers: { type: "string" },
    tasks: { type: "string" },
    window: { type: "string" },
    wait: { type: "boolean" },
    id: { type: "string" },
    reason: { type: "string" },
    pipeline: { type: "string" },
    state: { type: "string" },
    limit: { type: "string" },
    once: { type: "boolean" },
    "serve-status": { type: "boolean" },
    "status-process": { type: "boolean" },
    help: { type: "boolean", short: "h" },
  },
});

const [command, ...args] = positionals;
const usage = (why: string): never => {
  process.stderr.write(`dsat: ${why}\n\n${HELP}`);
  process.exit(2);
};

async function main(): Promise<number> {
  if (values.help || !command || command === "help") {
    process.stdout.write(HELP);
    return 0;
  }
  if (command === "version") {
    process.stdout.write(`${DSAT_VERSION}\n`);
    return 0;
  }
  if (command === "demo") {
    return runDemo({
      tasks: values.tasks ? Number(values.tasks) : undefined,
      window: values.window ? Number(values.window) : undefined,
      etcd: values.etcd,
    });
  }
  if (command === "up") return up();
  const etcd = cmd.resolveEtcd(values.etcd);
  const client = createClient({ etcd, timeoutMs: 10_000 });
  try {
    await cmd.checkEtcd(etcd);
    switch (command) {
      case "pipeline":
        if (args[0] === "apply" && args[1]) await cmd.pipelineApply(client, args[1]);
        else if (args[0] === "list") await cmd.pipelineList(client);
        else usage("pipeline takes: apply FILE | list");
        return 0;
      case "submit":
        if (!args[0]) usage("submit needs a pipeline name");
        return await cmd.submit(client, args[0] as string, cmd.readPayload(args[1]), { wait: values.wait ?? false, id: values.id });
      case "watch":
        if (!args[0]) usage("watch needs a task id");
        return await cmd.watch(client, args[0] as string);
      case "state":
        if (!args[0]) usage("state needs a task id");
        await cmd.state(client, args[0] as string);
        return 0;
      case "trace":
        if (!args[0]) usage("trace needs a task id");
        await cmd.trace(client, args[0] as string);
        return 0;
      case "retry":
        if (!args[0]) usage("retry needs a task id");
        return await cmd.retry(client, args[0] as string, values.wait ?? false);
      case "cancel":
        if (!args[0]) usage("cancel needs a task id");
        await client.cancel(args[0] as string, values.reason ?? "cancelled from the dsat command");
        process.stdout.write(`cancel sent for ${args[0]}\n`);
        return 0;
      case "list":
        await cmd.list(client, { pipeline: values.pipeline, state: values.state, limit: Number(values.limit ?? 50) });
        return 0;
      case "members":
        await cmd.members(client);
        return 0;
      case "top":
        return await cmd.top(client, { once: values.once ?? false });
      default:
        return usage(`unknown command "${command}"`);
    }
  } catch (err) {
    const e = toDsatError(err);
    process.stderr.write(`dsat ${command}: ${e.rawMessage}\n`);
    return 1;
  } finally {
    await client.close();
  }
}

async function up(): Promise<number> {
  const files = args.map((f) => loadPipelineFile(f));
  const sat = await startSatellite({
    etcd: values.etcd,
    dataDir: values["data-dir"],
    files,
    routers: values.routers ? Number(values.routers) : 1,
    // --serve-status is the default now; it is still accepted.
    serveStatus: !(values["status-process"] ?? false),
    log: (l) => process.stdout.write(`${l}\n`),
  });
  process.stdout.write(`\nthe mesh is up. In another terminal: dsat members, dsat submit …, dsat watch ID. Ctrl-C stops it.\n`);
  await new Promise<void>((resolve) => {
    process.once("SIGINT", resolve);
    process.once("SIGTERM", resolve);
  });
  process.stdout.write("\nstopping…\n");
  await sat.stop();
  return 0;
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    process.stderr.write(`dsat ${command ?? ""}: ${toDsatError(err).rawMessage}\n`);
    process.exit(1);
  },
);
