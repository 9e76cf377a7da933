// The official mem0ai Node SDK (MemoryClient, the version pinned in package.json), unchanged,
// against a running `memstream serve`. Driven by tests/e2e/test_node_sdk.py, which starts the
// server with a scripted chat-completions LLM and queues, in order, its answers for the three
// inferred adds below: the conversation (2 ADDs), "I started eating fish" (1 UPDATE) and the
// asyncMode add (1 ADD).
//
// Every call is one step: it records the SDK's answer (as the SDK returns it, camelCase keys)
// or the error it threw, and the script goes on, so one run shows every incompatibility. What
// the SDK itself prints with console.error/warn is kept per step. The result is one JSON
// object on stdout. Environment: MEMSTREAM_URL, MEMSTREAM_API_KEY, MEMSTREAM_USER (an entity
// id unique to the run), MEMSTREAM_BAD_KEY (a well-formed key the server does not know).
import { readFileSync } from "node:fs";
import { MemoryClient } from "mem0ai";

const host = process.env.MEMSTREAM_URL;
const apiKey = process.env.MEMSTREAM_API_KEY;
const user = process.env.MEMSTREAM_USER;
const badKey = process.env.MEMSTREAM_BAD_KEY;
if (!host || !apiKey || !user || !badKey) {
  console.error("set MEMSTREAM_URL, MEMSTREAM_API_KEY, MEMSTREAM_USER and MEMSTREAM_BAD_KEY");
  process.exit(2);
}

const installed = new URL("./node_modules/mem0ai/package.json", import.meta.url);
const out = {
  sdk: JSON.parse(readFileSync(installed, "utf8")).version,
  node: process.version,
  steps: {},
  console: [],
};

let current = "construct";
for (const level of ["error", "warn"]) {
  console[level] = (...args) => {
    out.console.push({ step: current, level, text: args.map(String).join(" ") });
  };
}

async function step(name, fn) {
  current = name;
  try {
    const value = await fn();
    out.steps[name] = { ok: true, value: value === undefined ? null : value };
    return value;
  } catch (err) {
    out.steps[name] = {
      ok: false,
      error: { name: err?.name, message: String(err?.message ?? err), code: err?.errorCode },
    };
    return undefined;
  }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

const client = new MemoryClient({ apiKey, host });

// construction pinged /v1/ping/; getProject waits for that ping and needs its org and project
await step("getProject", () => client.getProject({ fields: [] }));
out.identity = { organizationId: client.organizationId, projectId: client.projectId };

await step("updateProject", () =>
  client.updateProject({
    customInstructions: "Remember food and places only.",
    customCategories: [{ food: "what the user eats" }, { places: "where the user lives" }],
  }),
);
await step("getProjectFields", () =>
  client.getProject({ fields: ["custom_instructions", "custom_categories"] }),
);

// add(messages) as the SDK defaults it: no infer flag and no async flag (3.x sends neither)
const first = await step("addInferred", () =>
  client.add(
    [
      { role: "user", content: "I'm a vegetarian and I live in Lisbon." },
      { role: "assistant", content: "Noted!" },
    ],
    { userId: user, metadata: { source: "node-sdk" } },
  ),
);
await step("addUpdate", () => client.add("I started eating fish.", { userId: user }));
const verbatim = await step("addVerbatim", () =>
  client.add("raw note from node", { userId: user, infer: false }),
);

// the SDK forwards option keys it does not declare, snake-cased: asyncMode -> async_mode
await step("addAsync", () =>
  client.add("I play chess on Sundays.", { userId: user, asyncMode: true }),
);
await step("asyncAppeared", async () => {
  for (let i = 0; i < 300; i++) {
    const page = await client.getAll({ filters: { user_id: user } });
    const hit = page.results.find((m) => m.memory === "Plays chess");
    if (hit) return hit;
    await sleep(100);
  }
  throw new Error("the asyncMode memory never appeared in getAll (30 s)");
});

await step("search", () =>
  client.search("where does the user live", { filters: { user_id: user }, topK: 10, threshold: 0 }),
);
await step("getAll", () => client.getAll({ filters: { user_id: user }, page: 1, pageSize: 50 }));
await step("getAllPage2", () => client.getAll({ filters: { user_id: user }, page: 2, pageSize: 3 }));
await step("getAllWithAgents", () =>
  client.getAll({ filters: { AND: [{ user_id: user }, { agent_id: "*" }] } }),
);

const firstId = first?.results?.find((r) => r.event === "ADD")?.id;
await step("get", () => client.get(firstId));
await step("update", () =>
  client.update(firstId, { text: "Lives in Porto", metadata: { source: "node-sdk", v: 2 } }),
);
await step("getAfterUpdate", () => client.get(firstId));
await step("users", () => client.users());
await step("feedback", () =>
  client.feedback({ memoryId: firstId, feedback: "POSITIVE", feedbackReason: "right" }),
);
await step("exportCreate", () =>
  client.createMemoryExport({ schema: { type: "object" }, filters: { user_id: user } }),
);
await step("exportGet", () =>
  client.getMemoryExport({ memoryExportId: out.steps.exportCreate.value?.id }),
);
await step("delete", () => client.delete(firstId));
await step("getAfterDelete", () => client.get(firstId));
await step("history", () => client.history(firstId));

const verbatimId = verbatim?.results?.[0]?.id;
await step("batchUpdate", () => client.batchUpdate([{ memoryId: verbatimId, text: "batch note" }]));
await step("getAfterBatch", () => client.get(verbatimId));
await step("deleteAll", () => client.deleteAll({ userId: user }));
await step("getAllAfterDeleteAll", () => client.getAll({ filters: { user_id: user } }));

// webhooks, created after the last memory event so that nothing is delivered
await step("createWebhook", () =>
  client.createWebhook({ name: "node", url: "http://127.0.0.1:9/hook", eventTypes: ["memory_add"] }),
);
const webhookId = out.steps.createWebhook.value?.webhookId;
await step("updateWebhook", () => client.updateWebhook({ webhookId, name: "node-2" }));
await step("getWebhooks", () => client.getWebhooks());
await step("deleteWebhook", () => client.deleteWebhook({ webhookId }));

// profiles are not implemented by memstream: a 501 with a sentence, not "memory not found"
await step("getProfile", () => client.getProfile({ entityId: user }));
await step("getProfileSettings", () => client.getProfileSettings());

// a host ending in "/" makes the SDK ask for //v1/...
const slashed = new MemoryClient({ apiKey, host: `${host}/` });
await step("slashedHost", async () => {
  await slashed.getProject({ fields: ["name"] });
  return { organizationId: slashed.organizationId, projectId: slashed.projectId };
});

// an unknown key: the constructor's ping fails (the SDK logs it), calls fail with 401
current = "badKeyConstruct";
const bad = new MemoryClient({ apiKey: badKey, host });
await step("badKeyPing", () => bad.ping());
await step("badKeySearch", () => bad.search("anything", { filters: { user_id: user } }));

process.stdout.write(`${JSON.stringify(out)}\n`);
