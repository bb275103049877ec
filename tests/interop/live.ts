// Live streams through the real npm clients: graphql-ws (WebSocket, graphql-transport-ws)
// and Connect-ES server streaming (JSON and binary), all following one session's log from
// the start while a worker writes it, plus taskUpdated until the task is in review. Two more
// followers (one per API) drop their stream every few thousand characters and resume from
// the offset they reached. The output holds emoji, combining marks and CJK: offsets count
// code points, which JavaScript strings do not, so the clients never count: they check each
// message's offset against the previous message's nextOffset and resume from it.
// Prints {"graphql": ..., "connectJson": ..., "connectBinary": ...,
// "connectResumed": ..., "graphqlResumed": ..., "pagedJson": ..., "pagedBinary": ...,
// "reconnects": {...}, "taskStatuses": [...]} (paged: GetLog read in small pages at the end).
import assert from "node:assert/strict";
import { createClient as createConnectClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { createClient as createGraphQLClient } from "graphql-ws";
import WebSocket from "ws";

import { SessionService } from "./gen/delidev/v1/session_pb.js";

const baseUrl = process.env.DELIDEV_URL ?? "";
const sessionId = process.env.SESSION_ID ?? "";
const taskId = process.env.TASK_ID ?? "";

async function connectLog(binary: boolean): Promise<string> {
  const transport = createConnectTransport({ baseUrl, httpVersion: "1.1", useBinaryFormat: binary });
  const sessions = createConnectClient(SessionService, transport);
  let text = "";
  let next = 0n;
  for await (const message of sessions.streamLog({ sessionId, fromOffset: 0n })) {
    assert.equal(message.offset, next, "a gap or a repeat in StreamLog");
    text += message.data;
    next = message.nextOffset;
  }
  return text;
}

const CUT_EVERY = 3000; // characters between two deliberate disconnections

async function connectLogResumed(): Promise<[string, number]> {
  const transport = createConnectTransport({ baseUrl, httpVersion: "1.1" });
  const sessions = createConnectClient(SessionService, transport);
  let text = "";
  let next = 0n;
  let reconnects = 0;
  for (;;) {
    const abort = new AbortController();
    const cutAt = text.length + CUT_EVERY;
    try {
      const stream = sessions.streamLog({ sessionId, fromOffset: next }, { signal: abort.signal });
      for await (const message of stream) {
        assert.equal(message.offset, next, "a gap or a repeat after resuming");
        text += message.data;
        next = message.nextOffset;
        if (text.length >= cutAt) abort.abort();
      }
      return [text, reconnects];
    } catch (error) {
      if (!abort.signal.aborted) throw error;
      reconnects += 1;
    }
  }
}

interface LogChunk {
  offset: number;
  nextOffset: number;
  data: string;
  final: boolean;
  status: string;
}

const gql = createGraphQLClient({
  url: baseUrl.replace("http://", "ws://") + "/graphql",
  webSocketImpl: WebSocket,
  retryAttempts: 0,
});

function graphqlLog(): Promise<string> {
  return new Promise((resolve, reject) => {
    let text = "";
    let next = 0;
    gql.subscribe<{ sessionLog: LogChunk }>(
      {
        query:
          "subscription($id: ID!) {" +
          " sessionLog(sessionId: $id) { offset nextOffset data final status } }",
        variables: { id: sessionId },
      },
      {
        next: (result) => {
          if (result.errors) return reject(new Error(JSON.stringify(result.errors)));
          const chunk = result.data!.sessionLog;
          if (chunk.offset !== next) return reject(new Error("a gap or a repeat"));
          text += chunk.data;
          next = chunk.nextOffset;
          if (chunk.final) assert.equal(chunk.status, "SUCCEEDED");
        },
        error: reject,
        complete: () => resolve(text),
      },
    );
  });
}

function graphqlLogResumed(): Promise<[string, number]> {
  return new Promise((resolve, reject) => {
    let text = "";
    let next = 0;
    let reconnects = 0;
    const follow = (): void => {
      const cutAt = text.length + CUT_EVERY;
      let done = false;
      const dispose = gql.subscribe<{ sessionLog: LogChunk }>(
        {
          query:
            "subscription($id: ID!, $from: Float!) {" +
            " sessionLog(sessionId: $id, fromOffset: $from) { offset nextOffset data final } }",
          variables: { id: sessionId, from: next },
        },
        {
          next: (result) => {
            if (done) return;
            if (result.errors) return reject(new Error(JSON.stringify(result.errors)));
            const chunk = result.data!.sessionLog;
            if (chunk.offset !== next) return reject(new Error("a gap or a repeat"));
            text += chunk.data;
            next = chunk.nextOffset;
            if (chunk.final) {
              done = true;
              return resolve([text, reconnects]);
            }
            if (text.length >= cutAt) {
              done = true;
              dispose();
              reconnects += 1;
              follow();
            }
          },
          error: reject,
          complete: () => {
            if (!done) resolve([text, reconnects]);
          },
        },
      );
    };
    follow();
  });
}

function taskStatuses(): Promise<string[]> {
  return new Promise((resolve, reject) => {
    const seen: string[] = [];
    const dispose = gql.subscribe<{ taskUpdated: { task: { status: string } | null } }>(
      {
        query:
          "subscription($t: ID!) { taskUpdated(taskId: $t) { task { ... on UnitTask { status } } } }",
        variables: { t: taskId },
      },
      {
        next: (result) => {
          const status = result.data?.taskUpdated.task?.status;
          if (status) seen.push(status);
          if (status === "IN_REVIEW") {
            dispose();
            resolve(seen);
          }
        },
        error: reject,
        complete: () => resolve(seen),
      },
    );
  });
}

const [graphql, connectJson, connectBinary, [connectResumed, connectCuts], [graphqlResumed, graphqlCuts], statuses] =
  await Promise.all([
    graphqlLog(),
    connectLog(false),
    connectLog(true),
    connectLogResumed(),
    graphqlLogResumed(),
    taskStatuses(),
  ]);
await gql.dispose();

// GetLog in small pages, each asked from the previous page's nextOffset.
async function getLogPaged(binary: boolean): Promise<string> {
  const transport = createConnectTransport({ baseUrl, httpVersion: "1.1", useBinaryFormat: binary });
  const sessions = createConnectClient(SessionService, transport);
  let text = "";
  let offset = 0n;
  for (;;) {
    const page = await sessions.getLog({ sessionId, offset, limit: 997n });
    assert.equal(page.offset, offset, "GetLog answered from another offset");
    if (!page.content) return text;
    text += page.content;
    offset = page.nextOffset;
  }
}
const [pagedJson, pagedBinary] = await Promise.all([getLogPaged(false), getLogPaged(true)]);

console.log(
  JSON.stringify({
    pagedJson,
    pagedBinary,
    graphql,
    connectJson,
    connectBinary,
    connectResumed,
    graphqlResumed,
    reconnects: { connect: connectCuts, graphql: graphqlCuts },
    taskStatuses: statuses,
  }),
);
