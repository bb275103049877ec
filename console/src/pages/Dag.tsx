// A composite task's plan as a graph: nodes in columns by depth (a node sits right of
// everything it depends on), edges as curves, each node coloured by its state.
import type { NodeSummary } from "../queries";
import { label, titleOf } from "../format";
import { href } from "../router";

const W = 190;
const H = 46;
const GAP_X = 50;
const GAP_Y = 14;

function layout(nodes: NodeSummary[]): Map<string, { x: number; y: number }> {
  const byId = new Map(nodes.map((n) => [n.id, n]));
  const depth = new Map<string, number>();
  const visiting = new Set<string>();
  const depthOf = (id: string): number => {
    const known = depth.get(id);
    if (known !== undefined) return known;
    if (visiting.has(id)) return 0; // a cycle cannot be planned; never loop on one
    visiting.add(id);
    const deps = byId.get(id)?.dependsOnNodeIds.filter((d) => byId.has(d)) ?? [];
    const d = deps.length ? 1 + Math.max(...deps.map(depthOf)) : 0;
    depth.set(id, d);
    return d;
  };
  const rows = new Map<number, number>();
  const at = new Map<string, { x: number; y: number }>();
  for (const n of nodes) {
    const d = depthOf(n.id);
    const row = rows.get(d) ?? 0;
    rows.set(d, row + 1);
    at.set(n.id, { x: d * (W + GAP_X), y: row * (H + GAP_Y) });
  }
  return at;
}

export function Dag({ nodes, compact = false }: { nodes: NodeSummary[]; compact?: boolean }) {
  if (compact) {
    return (
      <span class="dag-compact" aria-label="plan nodes">
        {nodes.map((n) => (
          <span class={`dot state-${n.state.toLowerCase()}`} title={`${n.planId}: ${label(n.state)}`} />
        ))}
      </span>
    );
  }
  const at = layout(nodes);
  const width = Math.max(...[...at.values()].map((p) => p.x)) + W;
  const height = Math.max(...[...at.values()].map((p) => p.y)) + H;
  return (
    <div class="dag" role="group" aria-label="Plan">
      <div class="dag-canvas" style={{ width: `${width}px`, height: `${height}px` }}>
      <svg width={width} height={height} viewBox={`0 0 ${width} ${height}`} aria-hidden="true">
        {nodes.flatMap((n) =>
          n.dependsOnNodeIds.map((d) => {
            const a = at.get(d);
            const b = at.get(n.id);
            if (!a || !b) return null;
            const x1 = a.x + W;
            const y1 = a.y + H / 2;
            const x2 = b.x;
            const y2 = b.y + H / 2;
            const mid = (x1 + x2) / 2;
            return <path class="edge" d={`M${x1},${y1} C${mid},${y1} ${mid},${y2} ${x2},${y2}`} />;
          }),
        )}
      </svg>
      {nodes.map((n) => {
        const p = at.get(n.id)!;
        return (
          <a
            class={`node state-${n.state.toLowerCase()}`}
            href={href({ page: "task", id: n.unitTask.id })}
            style={{ left: `${p.x}px`, top: `${p.y}px`, width: `${W}px`, height: `${H}px` }}
            data-testid="dag-node"
            data-state={n.state}
          >
            <span class="node-title">{titleOf(n.unitTask)}</span>
            <span class="node-state">
              {n.planId} · {label(n.state)}
            </span>
          </a>
        );
      })}
      </div>
    </div>
  );
}
