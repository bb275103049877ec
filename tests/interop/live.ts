// Live streams through the real npm clients: graphql-ws (WebSocket, graphql-transport-ws)
// and Connect-ES server streaming (JSON and binary), all following one session's log from
// the start while a worker writes it, plus taskUpdated until the task is in review. Two more
// followers (one per API) drop their stream every few thousand characters and resume from
// the offset they reached. Prints {"graphql": ..., "connectJson": ..., "connectBinary": ...,
// "connectResumed": ..., "graphqlResumed": ..., "reconnects": {...}, "taskStatuses": [...]}.
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
  for await (const message of sessions.streamLog({ sessionId, fromOffset: 0n })) {
    assert.equal(Number(message.offset), text.length, "a gap or a repeat in StreamLog");
    text += message.data;
  }
  return text;
}

const CUT_EVERY = 3000; // characters between two deliberate disconnections

async function connectLogResumed(): Promise<[string, number]> {
  const transport = createConnectTransport({ baseUrl, httpVersion: "1.1" });
  const sessions = createConnectClient(SessionService, transport);
  let text = "";
  let reconnects = 0;
  for (;;) {
    const abort = new AbortController();
    const cutAt = text.length + CUT_EVERY;
    try {
      const stream = sessions.streamLog(
        { sessionId, fromOffset: BigInt(text.length) },
        { signal: abort.signal },
      );
      for await (const message of stream) {
        assert.equal(Number(message.offset), text.length, "a gap or a repeat after resuming");
        text += message.data;
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
    gql.subscribe<{ sessionLog: LogChunk }>(
      {
        query:
          "subscription($id: ID!) { sessionLog(sessionId: $id) { offset data final status } }",
        variables: { id: sessionId },
      },
      {
        next: (result) => {
          if (result.errors) return reject(new Error(JSON.stringify(result.errors)));
          const chunk = result.data!.sessionLog;
          if (chunk.offset !== text.length) return reject(new Error("a gap or a repeat"));
          text += chunk.data;
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
    let reconnects = 0;
    const follow = (): void => {
      const cutAt = text.length + CUT_EVERY;
      let done = false;
      const dispose = gql.subscribe<{ sessionLog: LogChunk }>(
        {
          query:
            "subscription($id: ID!, $from: Float!) {" +
            " sessionLog(sessionId: $id, fromOffset: $from) { offset data final } }",
          variables: { id: sessionId, from: text.length },
        },
        {
          next: (result) => {
            if (done) return;
            if (result.errors) return reject(new Error(JSON.stringify(result.errors)));
            const chunk = result.data!.sessionLog;
            if (chunk.offset !== text.length) return reject(new Error("a gap or a repeat"));
            text += chunk.data;
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
console.log(
  JSON.stringify({
    graphql,
    connectJson,
    connectBinary,
    connectResumed,
    graphqlResumed,
    reconnects: { connect: connectCuts, graphql: graphqlCuts },
    taskStatuses: statuses,
  }),
);
