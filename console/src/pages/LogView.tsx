// A session's log: ANSI colours, following new output, resuming from its offset after a
// dropped stream, and virtualised (only the visible lines are in the page), so a
// 100,000-line log scrolls as smoothly as a short one. It reads the Connect server stream
// SessionService.StreamLog, which replays from an offset and then follows live.
import { useEffect, useRef, useState } from "preact/hooks";
import { Code, ConnectError } from "@connectrpc/connect";
import {
  Virtualizer,
  elementScroll,
  observeElementOffset,
  observeElementRect,
} from "@tanstack/virtual-core";
import { AnsiUp } from "ansi_up";
import { connection, errorText, sessionApi } from "../api";
import { AgentSessionStatus } from "../gen/delidev/v1/task_pb";

const LINE_HEIGHT = 18; // px; styles.css sets .log-line to the same
const ENDED = new Set([
  AgentSessionStatus.SUCCEEDED,
  AgentSessionStatus.FAILED,
  AgentSessionStatus.STOPPED,
  AgentSessionStatus.LOST,
]);
const ANSI_ESCAPE = /\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(\x07|\x1b\\)/g;

/** Lines converted once, in order, so colours that span lines stay right. */
class LogLines {
  readonly html: string[] = [];
  partial = "";
  offset = 0;
  private readonly ansi = new AnsiUp();

  constructor() {
    this.ansi.use_classes = true;
    this.ansi.escape_html = true;
  }

  append(data: string): void {
    const parts = (this.partial + data).split("\n");
    this.partial = parts.pop() ?? "";
    for (const line of parts) this.html.push(this.ansi.ansi_to_html(line.replace(/\r$/, "")));
  }

  get count(): number {
    return this.html.length + (this.partial ? 1 : 0);
  }

  lineHtml(i: number): string {
    if (i < this.html.length) return this.html[i];
    return escapeHtml(this.partial.replace(ANSI_ESCAPE, ""));
  }
}

function escapeHtml(s: string): string {
  return s.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

export function LogView({ sessionId, onEnded }: { sessionId: string; onEnded?: () => void }) {
  const [, setVersion] = useState(0);
  const [state, setState] = useState<"connecting" | "live" | "ended" | "retrying">("connecting");
  const [error, setError] = useState<string | null>(null);
  const [follow, setFollow] = useState(true);
  const followRef = useRef(true);
  const scroller = useRef<HTMLDivElement>(null);
  const lines = useRef(new LogLines());
  const virtualizer = useRef<Virtualizer<HTMLDivElement, Element> | null>(null);

  followRef.current = follow;

  if (virtualizer.current === null) {
    virtualizer.current = new Virtualizer<HTMLDivElement, Element>({
      count: 0,
      getScrollElement: () => scroller.current,
      estimateSize: () => LINE_HEIGHT,
      scrollToFn: elementScroll,
      observeElementRect,
      observeElementOffset,
      overscan: 30,
      onChange: () => setVersion((v) => v + 1),
    });
  }
  const v = virtualizer.current;
  v.setOptions({ ...v.options, count: lines.current.count });

  useEffect(() => v._didMount(), [v]);
  // Where the log last was, to tell a reader's scroll up from the log's own moves (below).
  const lastTop = useRef(0);
  useEffect(() => {
    v._willUpdate();
    if (followRef.current && lines.current.count > 0) {
      v.scrollToIndex(lines.current.count - 1, { align: "end" });
      // Our own move counts as seen: when the browser reports it and a reader's scroll up in
      // one scroll event, that event still shows a move up, and following stops.
      if (scroller.current) lastTop.current = scroller.current.scrollTop;
    }
  });

  useEffect(() => {
    const model = new LogLines();
    lines.current = model;
    setVersion((x) => x + 1);
    const abort = new AbortController();
    let frame = 0;
    const redraw = () => {
      if (!frame) frame = requestAnimationFrame(() => {
        frame = 0;
        setVersion((x) => x + 1);
      });
    };
    (async () => {
      for (let attempt = 0; !abort.signal.aborted; attempt++) {
        try {
          const stream = sessionApi.streamLog(
            { sessionId, fromOffset: BigInt(model.offset) },
            { signal: abort.signal },
          );
          for await (const msg of stream) {
            attempt = 0;
            setState("live");
            setError(null);
            if (msg.data) model.append(msg.data);
            model.offset = Number(msg.nextOffset);
            redraw();
            if (!msg.data && ENDED.has(msg.status)) {
              setState("ended");
              onEnded?.();
              return;
            }
          }
        } catch (e) {
          if (abort.signal.aborted) return;
          if (e instanceof ConnectError && [Code.NotFound, Code.PermissionDenied, Code.InvalidArgument].includes(e.code)) {
            setError(errorText(e));
            setState("ended");
            return;
          }
          if (e instanceof ConnectError && e.code === Code.Unavailable) connection.set("unreachable");
        }
        setState("retrying");
        await new Promise((r) => setTimeout(r, Math.min(10_000, 300 * 2 ** Math.min(attempt, 6))));
      }
    })();
    return () => {
      abort.abort();
      cancelAnimationFrame(frame);
    };
  }, [sessionId]);

  // Following stops when the reader scrolls up, and starts again at the end. Only an upward
  // move counts: the log growing under a scroll to its end is no reason to stop.
  const onScroll = () => {
    const el = scroller.current;
    if (!el) return;
    const atEnd = el.scrollTop + el.clientHeight >= el.scrollHeight - 2 * LINE_HEIGHT;
    const up = el.scrollTop < lastTop.current - 1;
    lastTop.current = el.scrollTop;
    if (atEnd && !followRef.current) setFollow(true);
    else if (up && !atEnd && followRef.current) setFollow(false);
  };

  const model = lines.current;
  return (
    <div class="log">
      <div class="log-head">
        <span class={`badge log-${state}`} data-testid="log-state">
          {state === "live" ? "live" : state === "ended" ? "complete" : state === "retrying" ? "reconnecting…" : "connecting…"}
        </span>
        <span class="muted" data-testid="log-lines">
          {model.count.toLocaleString("en-US")} lines
        </span>
        {!follow && (
          <button
            onClick={() => {
              setFollow(true);
              v.scrollToIndex(model.count - 1, { align: "end" });
            }}
          >
            Follow output
          </button>
        )}
      </div>
      {error && (
        <p class="error" role="alert">
          {error}
        </p>
      )}
      <div class="log-scroll" ref={scroller} onScroll={onScroll} tabIndex={0} aria-label="Session log" data-testid="log">
        <div style={{ height: `${v.getTotalSize()}px`, position: "relative", width: "100%" }}>
          {v.getVirtualItems().map((item) => (
            <div
              key={item.key}
              class="log-line"
              data-index={item.index}
              style={{ transform: `translateY(${item.start}px)` }}
              dangerouslySetInnerHTML={{ __html: model.lineHtml(item.index) }}
            />
          ))}
        </div>
      </div>
    </div>
  );
}
