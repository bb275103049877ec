// The GraphQL documents the console sends, and the shapes it reads back.

export type UnitStatus = "IN_PROGRESS" | "IN_REVIEW" | "APPROVED" | "PR_OPEN" | "DONE" | "REJECTED";
export type CompositeStatus = "PLANNING" | "PENDING_APPROVAL" | "IN_PROGRESS" | "DONE" | "REJECTED";
export type SessionStatus = "QUEUED" | "RUNNING" | "SUCCEEDED" | "FAILED" | "STOPPED" | "LOST";

export interface Usage {
  costMicros: number;
  inputTokens: number;
  outputTokens: number;
}

export interface Spread {
  median: number;
  high: number;
}

export interface Estimate {
  samples: number;
  nodes: number;
  chain: number;
  costMicros: Spread | null;
  seconds: Spread | null;
}

export interface Session {
  usage: Usage;
  id: string;
  status: SessionStatus;
  kind: string;
  attempt: number;
  error: string | null;
  failureKind: string | null;
  aiAgentType: string;
  workerId: string | null;
  stopRequested: boolean;
  createdAt: string;
  startedAt: string | null;
  completedAt: string | null;
}

export interface Wait {
  reason: string;
  since: string;
  detail: string;
  until: string | null;
  position: number | null;
}

export interface NodeSummary {
  id: string;
  planId: string;
  state: string;
  dependsOnNodeIds: string[];
  unitTask: { id: string; title: string | null; prompt: string; status: UnitStatus };
}

export interface TaskSummary {
  __typename: "UnitTask" | "CompositeTask";
  usage: Usage;
  id: string;
  workspaceId: string;
  repositoryGroupId: string;
  title: string | null;
  prompt: string;
  createdAt: string;
  updatedAt: string;
  status: UnitStatus | CompositeStatus;
  priority: string;
  wait: Wait | null;
  latestSession: Pick<Session, "id" | "status" | "attempt" | "error"> | null;
  compositeTaskId?: string | null;
  linkedPrUrl?: string | null;
  nodes?: NodeSummary[];
}

export interface TaskDetail extends TaskSummary {
  branchName?: string | null;
  rejectionReason?: string | null;
  baseCommit?: string | null;
  endCommit?: string | null;
  requiredLabels: string[];
  executionAgentType?: string | null;
  planYaml?: string | null;
  planError?: string | null;
  estimate?: Estimate | null;
  agentTask?: { aiAgentType: string | null; sessions: Session[] };
  planningTask?: { aiAgentType: string | null; sessions: Session[] };
}

/** GraphQL cannot give both kinds' `status` one name (their enums differ): it comes back as
 * `unitStatus` or `compositeStatus`, and this puts it where the console reads it. */
export function normalize<T extends TaskSummary>(t: T): T {
  const raw = t as T & { unitStatus?: UnitStatus; compositeStatus?: CompositeStatus };
  return { ...t, status: raw.unitStatus ?? raw.compositeStatus ?? t.status };
}

const WAIT = "wait { reason since detail until position }";
const LATEST = "latestSession { id status attempt error }";

export const TASK_SUMMARY = `
  fragment TaskSummary on Task {
    __typename id workspaceId repositoryGroupId title prompt createdAt updatedAt
    usage { costMicros inputTokens outputTokens }
    ... on UnitTask { unitStatus: status priority compositeTaskId linkedPrUrl ${WAIT} ${LATEST} }
    ... on CompositeTask {
      compositeStatus: status priority ${WAIT} ${LATEST}
      nodes { id planId state dependsOnNodeIds unitTask { id title prompt status } }
    }
  }`;

const SESSION = `id status kind attempt error failureKind aiAgentType workerId stopRequested
  createdAt startedAt completedAt usage { costMicros inputTokens outputTokens }`;

const ESTIMATE = `estimate { samples nodes chain costMicros { median high } seconds { median high } }`;

export const TASK_DETAIL = `
  ${TASK_SUMMARY}
  fragment TaskDetail on Task {
    ...TaskSummary
    ... on UnitTask {
      branchName rejectionReason baseCommit endCommit requiredLabels
      agentTask { aiAgentType sessions { ${SESSION} } }
    }
    ... on CompositeTask {
      requiredLabels executionAgentType planYaml planError ${ESTIMATE}
      planningTask { aiAgentType sessions { ${SESSION} } }
    }
  }`;

export const TASKS = `
  ${TASK_SUMMARY}
  query Tasks($workspaceId: ID!, $after: String) {
    tasks(workspaceId: $workspaceId, first: 100, after: $after) {
      totalCount
      pageInfo { hasNextPage endCursor }
      edges { node { ...TaskSummary } }
    }
  }`;

export const TASK = `
  ${TASK_DETAIL}
  query Task($id: ID!) { task(id: $id) { ...TaskDetail } }`;

export const TASK_UPDATED = `
  ${TASK_SUMMARY}
  subscription TaskUpdated($workspaceId: ID, $taskId: ID) {
    taskUpdated(workspaceId: $workspaceId, taskId: $taskId) {
      taskId deleted task { ...TaskSummary }
    }
  }`;

export interface Workspace {
  id: string;
  name: string;
  description: string | null;
  maxConcurrentJobs: number | null;
}

export interface Repository {
  id: string;
  name: string;
  remoteUrl: string;
  defaultBranch: string;
  vcsProviderType: string;
}

export interface Group {
  id: string;
  name: string | null;
  repositoryIds: string[];
  defaultRequiredLabels: string[];
}

export const WORKSPACES = `
  query Workspaces($offset: Int) {
    workspaces(limit: 100, offset: $offset) { totalCount items { id name description maxConcurrentJobs } }
  }`;

export const WORKSPACE_SETUP = `
  query Setup($id: ID!) {
    workspace(id: $id) {
      id name description maxConcurrentJobs
      repositories { id name remoteUrl defaultBranch vcsProviderType }
      repositoryGroups { id name repositoryIds defaultRequiredLabels }
    }
  }`;

export interface Todo {
  id: string;
  type: "ISSUE_TRIAGE" | "PR_REVIEW";
  source: string;
  status: string;
  repositoryId: string;
  createdAt: string;
  data:
    | { __typename: "IssueTriageData"; issueUrl: string; issueTitle: string; suggestedLabels: string[] }
    | { __typename: "PrReviewData"; prUrl: string; prTitle: string; changedFilesCount: number };
}

export const TODOS = `
  query Todos($workspaceId: ID!, $offset: Int) {
    todoItems(workspaceId: $workspaceId, limit: 100, offset: $offset) {
      totalCount
      items {
        id type source status repositoryId createdAt
        data {
          __typename
          ... on IssueTriageData { issueUrl issueTitle suggestedLabels }
          ... on PrReviewData { prUrl prTitle changedFilesCount }
        }
      }
    }
  }`;

export interface TtyRequest {
  id: string;
  taskId: string;
  sessionId: string;
  prompt: string;
  inputType: "TEXT" | "SELECT" | "CONFIRM" | "PASSWORD";
  options: string[];
  status: string;
  createdAt: string;
  expiresAt: string | null;
}

const TTY = "id taskId sessionId prompt inputType options status createdAt expiresAt";

export const PENDING_TTY = `
  query PendingTty($workspaceId: ID!, $offset: Int) {
    ttyInputRequests(workspaceId: $workspaceId, status: PENDING, limit: 100, offset: $offset) {
      totalCount items { ${TTY} }
    }
  }`;

export const TTY_REQUESTED = `
  subscription TtyRequested($workspaceId: ID!) { ttyInputRequested(workspaceId: $workspaceId) { ${TTY} } }`;

export const PENDING_PLANS = `
  ${TASK_SUMMARY}
  query PendingPlans($workspaceId: ID!, $after: String) {
    tasks(workspaceId: $workspaceId, kind: COMPOSITE, compositeStatus: PENDING_APPROVAL, first: 100, after: $after) {
      pageInfo { hasNextPage endCursor }
      edges { node { ...TaskSummary ... on CompositeTask { planYaml ${ESTIMATE} } } }
    }
  }`;

export interface Worker {
  id: string;
  name: string;
  status: "IDLE" | "BUSY" | "UNHEALTHY";
  lastHeartbeat: string;
  currentTaskId: string | null;
  agentTypes: string[];
  labels: string[];
  draining: boolean;
}

const WORKER = "id name status lastHeartbeat currentTaskId agentTypes labels draining";

export const WORKERS = `query Workers { workers(limit: 500) { totalCount items { ${WORKER} } } }`;

export const WORKER_UPDATED = `
  subscription WorkerUpdated { workerUpdated { workerId deleted worker { ${WORKER} } } }`;
