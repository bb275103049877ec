// Interop test: the official Connect-ES client (@connectrpc/connect-node) against a running
// DeliDev server, over HTTP/1.1 with the Connect protocol, once with the JSON codec and once
// with the binary (protobuf) codec.
//
// Run by tests/interop/test_typescript_interop.py, which starts the server. By hand:
//   npm ci && npm run generate && DELIDEV_URL=http://127.0.0.1:8080 npm test

import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { after, before, describe, test } from "node:test";

import { timestampDate } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient, type Interceptor } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";

import {
  AiAgentType,
  ErrorInfoSchema,
  VcsProviderType,
  type ErrorInfo,
} from "./gen/delidev/v1/common_pb.js";
import { RepositoryGroupService, RepositoryService } from "./gen/delidev/v1/repository_pb.js";
import {
  AgentSessionStatus,
  TaskKind,
  TaskService,
  UnitTaskStatus,
  type UnitTask,
} from "./gen/delidev/v1/task_pb.js";
import { WorkspaceService } from "./gen/delidev/v1/workspace_pb.js";

const baseUrl = process.env.DELIDEV_URL;
if (!baseUrl) {
  throw new Error("DELIDEV_URL is not set: give the base URL of a running DeliDev server");
}

// Numeric codes of the specification, carried in ErrorInfo.delidev_code.
const INVALID_PARAMS = -32602;
const NOT_FOUND = -32003;

const CODECS = [
  { name: "json", useBinaryFormat: false, contentType: "application/json" },
  { name: "binary", useBinaryFormat: true, contentType: "application/proto" },
] as const;

/** Calls `fn`, which must fail with `code`; returns the error. */
async function expectError(fn: () => Promise<unknown>, code: Code): Promise<ConnectError> {
  let result: unknown;
  try {
    result = await fn();
  } catch (e) {
    const err = ConnectError.from(e);
    assert.equal(
      err.code,
      code,
      `expected code ${Code[code]}, got ${Code[err.code]}: ${err.rawMessage}`,
    );
    return err;
  }
  assert.fail(`expected code ${Code[code]}, but the call succeeded with ${JSON.stringify(result)}`);
}

/** Fails if the message carries fields the client's schema does not know (binary codec). */
function assertNoUnknownFields(message: { $unknown?: unknown[] }, what: string): void {
  assert.equal(message.$unknown, undefined, `${what} has unknown fields`);
}

/** The single ErrorInfo detail of `err`. */
function errorInfo(err: ConnectError): ErrorInfo {
  const infos = err.findDetails(ErrorInfoSchema);
  assert.equal(
    infos.length,
    1,
    `expected exactly one delidev.v1.ErrorInfo detail, got ${infos.length} ` +
      `(detail types: ${JSON.stringify(err.details.map((d) => ("type" in d ? d.type : d.desc.typeName)))})`,
  );
  return infos[0];
}

for (const codec of CODECS) {
  describe(`Connect protocol, ${codec.name} codec`, { timeout: 60_000 }, () => {
    // Records the Content-Type of every successful response, to prove the codec in use.
    const contentTypes = new Set<string>();
    const recordContentType: Interceptor = (next) => async (req) => {
      const res = await next(req);
      contentTypes.add(res.header.get("content-type") ?? "<none>");
      return res;
    };
    const transport = createConnectTransport({
      baseUrl,
      httpVersion: "1.1",
      useBinaryFormat: codec.useBinaryFormat,
      // Strict: a field the client does not know is an interop failure, not noise.
      jsonOptions: { ignoreUnknownFields: false },
      defaultTimeoutMs: 10_000,
      interceptors: [recordContentType],
    });
    const workspaces = createClient(WorkspaceService, transport);
    const repositories = createClient(RepositoryService, transport);
    const groups = createClient(RepositoryGroupService, transport);
    const tasks = createClient(TaskService, transport);
    const suffix = `${codec.name}-${randomUUID().slice(0, 8)}`;

    test("workspace life cycle: create, get, list, update, delete", async () => {
      const started = Date.now();
      const created = await workspaces.create({
        name: `interop-${suffix}`,
        description: "made by the TypeScript interop test",
      });
      const ws = created.workspace;
      assert.ok(ws, "CreateWorkspaceResponse.workspace is missing");
      assertNoUnknownFields(ws, "Workspace");
      assert.match(ws.id, /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i);
      assert.equal(ws.name, `interop-${suffix}`);
      assert.equal(ws.description, "made by the TypeScript interop test");
      assert.ok(ws.createdAt, "createdAt is missing");
      const createdAt = timestampDate(ws.createdAt);
      assert.ok(
        Math.abs(createdAt.getTime() - started) < 60_000,
        `createdAt ${createdAt.toISOString()} is far from now`,
      );

      const got = await workspaces.get({ workspaceId: ws.id });
      assert.equal(got.workspace?.id, ws.id);
      assert.equal(got.workspace?.name, ws.name);
      assert.equal(got.workspace?.description, ws.description);

      const listed = await workspaces.list({ limit: 500 });
      assert.ok(listed.totalCount >= 1, `totalCount is ${listed.totalCount}`);
      assert.ok(
        listed.workspaces.some((w) => w.id === ws.id),
        "List does not return the new workspace",
      );

      const updated = await workspaces.update({ workspaceId: ws.id, name: `renamed-${suffix}` });
      assert.equal(updated.workspace?.id, ws.id);
      assert.equal(updated.workspace?.name, `renamed-${suffix}`);
      // Fields left unset are not changed.
      assert.equal(updated.workspace?.description, "made by the TypeScript interop test");
      assert.equal((await workspaces.get({ workspaceId: ws.id })).workspace?.name, `renamed-${suffix}`);

      await workspaces.delete({ workspaceId: ws.id });
      const err = await expectError(() => workspaces.get({ workspaceId: ws.id }), Code.NotFound);
      assert.equal(errorInfo(err).delidevCode, NOT_FOUND);
    });

    describe("repositories", () => {
      let workspaceId = "";
      let repositoryId = "";
      let groupId = "";

      before(async () => {
        const created = await workspaces.create({ name: `interop-repos-${suffix}` });
        assert.ok(created.workspace);
        workspaceId = created.workspace.id;
      });

      after(async () => {
        if (workspaceId) {
          await workspaces.delete({ workspaceId });
        }
      });

      test("add a repository: name and provider derived from the remote URL", async () => {
        const added = await repositories.add({
          workspaceId,
          remoteUrl: "git@github.com:acme/widgets.git",
        });
        const repo = added.repository;
        assert.ok(repo, "AddRepositoryResponse.repository is missing");
        assertNoUnknownFields(repo, "Repository");
        assert.equal(repo.workspaceId, workspaceId);
        assert.equal(repo.remoteUrl, "git@github.com:acme/widgets.git");
        assert.equal(repo.name, "widgets");
        assert.equal(
          repo.vcsProviderType,
          VcsProviderType.GITHUB,
          `vcsProviderType is ${VcsProviderType[repo.vcsProviderType]}`,
        );
        assert.equal(repo.defaultBranch, "main");
        repositoryId = repo.id;
        assert.ok(repositoryId, "repository id is empty");
      });

      test("create a repository group with that repository", async () => {
        assert.ok(repositoryId, "no repository: the previous test failed");
        const created = await groups.create({ workspaceId, repositoryIds: [repositoryId] });
        const group = created.group;
        assert.ok(group, "CreateRepositoryGroupResponse.group is missing");
        assertNoUnknownFields(group, "RepositoryGroup");
        assert.ok(group.id, "group id is empty");
        assert.equal(group.workspaceId, workspaceId);
        assert.deepEqual(group.repositoryIds, [repositoryId]);
        groupId = group.id;
      });

      test("a unit task: create, get, list, retry refused while queued, delete", async () => {
        assert.ok(groupId, "no group: the previous test failed");
        const created = await tasks.createUnit({
          repositoryGroupId: groupId,
          prompt: "Add a README",
          title: "Docs",
          aiAgentType: AiAgentType.AIDER,
        });
        assert.equal(created.task?.task.case, "unitTask");
        const unit = created.task?.task.value as UnitTask;
        assert.equal(unit.status, UnitTaskStatus.IN_PROGRESS);
        assert.equal(unit.title, "Docs");
        assert.equal(unit.branchName, `delidev/${unit.id}`);
        assert.equal(unit.latestSession?.status, AgentSessionStatus.QUEUED);
        assert.equal(unit.agentTask?.aiAgentType, AiAgentType.AIDER);
        assert.equal(unit.agentTask?.baseRemotes.length, 1);

        const got = await tasks.get({ taskId: unit.id });
        assert.equal((got.task?.task.value as UnitTask).id, unit.id);
        const listed = await tasks.list({ workspaceId, kind: TaskKind.UNIT });
        assert.equal(listed.totalCount, 1);
        assert.equal((listed.tasks[0].task.value as UnitTask).id, unit.id);

        const err = await expectError(() => tasks.retry({ taskId: unit.id }), Code.FailedPrecondition);
        assert.match(err.rawMessage, /queued/);
        await tasks.delete({ taskId: unit.id });
        await expectError(() => tasks.get({ taskId: unit.id }), Code.NotFound);
      });
    });

    describe("errors", () => {
      test("a malformed workspace id is InvalidArgument with ErrorInfo(-32602, workspace_id)", async () => {
        const err = await expectError(
          () => workspaces.get({ workspaceId: "not-a-uuid" }),
          Code.InvalidArgument,
        );
        const info = errorInfo(err);
        assert.equal(info.delidevCode, INVALID_PARAMS);
        assert.equal(info.field, "workspace_id");
      });

      test("an unknown workspace id is NotFound with ErrorInfo(-32003)", async () => {
        const err = await expectError(
          () => workspaces.get({ workspaceId: randomUUID() }),
          Code.NotFound,
        );
        assert.equal(errorInfo(err).delidevCode, NOT_FOUND);
      });

      test("TaskService.Get of an unknown task is NotFound", async () => {
        const err = await expectError(() => tasks.get({ taskId: randomUUID() }), Code.NotFound);
        assert.equal(errorInfo(err).delidevCode, NOT_FOUND);
      });
    });

    test("responses used the expected codec", () => {
      assert.deepEqual([...contentTypes], [codec.contentType]);
    });
  });
}
