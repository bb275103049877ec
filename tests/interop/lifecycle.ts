// A unit task and a composite task through their whole life cycles, driven by the
// Connect-ES client in phases. Between phases the reference worker (delidev-worker-sim)
// runs the queued jobs over Connect. State passes between phases in the JSON file named by STATE_FILE.
import assert from "node:assert/strict";
import { readFileSync, writeFileSync } from "node:fs";
import { createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";

import { RepositoryGroupService, RepositoryService } from "./gen/delidev/v1/repository_pb.js";
import { SessionService } from "./gen/delidev/v1/session_pb.js";
import {
  AgentSessionStatus,
  CompositeNodeState,
  CompositeTaskStatus,
  TaskService,
  UnitTaskStatus,
  type CompositeTask,
  type Task,
  type UnitTask,
} from "./gen/delidev/v1/task_pb.js";
import { WorkspaceService } from "./gen/delidev/v1/workspace_pb.js";

interface State {
  unitId: string;
  compositeId: string;
}

const baseUrl = process.env.DELIDEV_URL ?? "";
const stateFile = process.env.STATE_FILE ?? "";
const phase = process.env.PHASE ?? "";
const transport = createConnectTransport({
  baseUrl,
  httpVersion: "1.1",
  useBinaryFormat: process.env.BINARY === "1",
});
const workspaces = createClient(WorkspaceService, transport);
const repositories = createClient(RepositoryService, transport);
const groups = createClient(RepositoryGroupService, transport);
const tasks = createClient(TaskService, transport);
const sessions = createClient(SessionService, transport);

function unit(task: Task | undefined): UnitTask {
  assert.equal(task?.task.case, "unitTask");
  return task.task.value as UnitTask;
}

function composite(task: Task | undefined): CompositeTask {
  assert.equal(task?.task.case, "compositeTask");
  return task.task.value as CompositeTask;
}

async function create(): Promise<State> {
  const ws = (await workspaces.create({ name: "lifecycle" })).workspace!;
  const repo = (await repositories.add({ workspaceId: ws.id, remoteUrl: "https://github.com/acme/app" }))
    .repository!;
  const group = (await groups.create({ workspaceId: ws.id, repositoryIds: [repo.id] })).group!;
  const u = unit((await tasks.createUnit({ repositoryGroupId: group.id, prompt: "Fix the bug" })).task);
  assert.equal(u.status, UnitTaskStatus.IN_PROGRESS);
  const c = composite(
    (await tasks.createComposite({ repositoryGroupId: group.id, prompt: "Build the app" })).task,
  );
  assert.equal(c.status, CompositeTaskStatus.PLANNING);
  assert.equal(c.latestSession?.status, AgentSessionStatus.QUEUED);
  const listed = await tasks.list({ workspaceId: ws.id });
  assert.equal(listed.totalCount, 2);
  return { unitId: u.id, compositeId: c.id };
}

async function review(state: State): Promise<void> {
  const u = unit((await tasks.get({ taskId: state.unitId })).task);
  assert.equal(u.status, UnitTaskStatus.IN_REVIEW);
  const log = await sessions.getLog({ sessionId: u.latestSession!.id });
  assert.match(log.content, /^\[sim\] .* starts attempt 1\n/);
  assert.equal(log.complete, true);
  assert.equal(unit((await tasks.approve({ taskId: u.id })).task).status, UnitTaskStatus.APPROVED);
  const pr = unit(
    (await tasks.updateStatus({
      taskId: u.id,
      status: UnitTaskStatus.PR_OPEN,
      linkedPrUrl: "https://github.com/acme/app/pull/1",
    })).task,
  );
  assert.equal(pr.linkedPrUrl, "https://github.com/acme/app/pull/1");
  const done = unit((await tasks.updateStatus({ taskId: u.id, status: UnitTaskStatus.DONE })).task);
  assert.equal(done.status, UnitTaskStatus.DONE);

  const c = composite((await tasks.get({ taskId: state.compositeId })).task);
  assert.equal(c.status, CompositeTaskStatus.PENDING_APPROVAL);
  assert.match(c.planYaml ?? "", /schema/);
  const started = composite((await tasks.approve({ taskId: c.id })).task);
  assert.equal(started.status, CompositeTaskStatus.IN_PROGRESS);
  const states = Object.fromEntries(started.nodes.map((n) => [n.planId, n.state]));
  assert.deepEqual(states, { schema: CompositeNodeState.QUEUED, api: CompositeNodeState.WAITING });
}

async function finishNodes(state: State, expectDone: boolean): Promise<void> {
  const c = composite((await tasks.get({ taskId: state.compositeId })).task);
  for (const node of c.nodes) {
    if (node.state === CompositeNodeState.IN_REVIEW) {
      await tasks.approve({ taskId: node.unitTask!.id });
      await tasks.updateStatus({ taskId: node.unitTask!.id, status: UnitTaskStatus.DONE });
    }
  }
  const after = composite((await tasks.get({ taskId: state.compositeId })).task);
  if (expectDone) {
    assert.equal(after.status, CompositeTaskStatus.DONE);
    assert.ok(after.nodes.every((n) => n.state === CompositeNodeState.DONE));
  } else {
    const states = Object.fromEntries(after.nodes.map((n) => [n.planId, n.state]));
    assert.deepEqual(states, { schema: CompositeNodeState.DONE, api: CompositeNodeState.QUEUED });
  }
}

async function main(): Promise<void> {
  if (phase === "create") {
    writeFileSync(stateFile, JSON.stringify(await create()));
    return;
  }
  const state = JSON.parse(readFileSync(stateFile, "utf8")) as State;
  if (phase === "review") await review(state);
  else if (phase === "node1") await finishNodes(state, false);
  else if (phase === "node2") await finishNodes(state, true);
  else throw new Error(`unknown PHASE ${phase}`);
}

await main();
