// Tasks: the list (state, type and queue filters; go to a task by id) and a task's page
// (its attempts, from its events, with errors and timings; cancel).

import { api, can, showError, showNotice } from "../api.js";
import { badge, clear, debounce, duration, fields, h, json, select, table, when } from "../dom.js";
import { positionAt } from "../live.js";

const TASK_STATES = ["", "QUEUED", "RUNNING", "RETRYING", "SUCCEEDED", "FAILED", "CANCELLED"];
const ENDED = new Set(["SUCCEEDED", "FAILED", "CANCELLED"]);
// Older tasks' events are not replayed: the replay reads the whole event stream since the
// task was created.
const HISTORY_MAX_AGE_MS = 6 * 3600 * 1000;
// Rows watched live, at most: the live feed takes up to 100 topics per subscription.
const LIVE_ROWS = 100;
// How far before a list's read its rows' changes are replayed (clocks differ a little).
const REPLAY_MARGIN_MS = 2000;
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

export async function renderList(section, _id, ctx) {
  const params = ctx.params;
  let types = [];
  try {
    types = (await api("GET", "/v1/task-types")).items;
  } catch (err) {
    showError(err, "task types");
  }
  const search = h("input", { name: "id", type: "search", placeholder: "task id", size: 38, "aria-label": "task id" });
  const filters = h(
    "form",
    {
      class: "filters",
      onchange: (event) => event.target !== search && ctx.go("/tasks", withoutId(new FormData(event.currentTarget))),
      onsubmit: (event) => {
        event.preventDefault();
        const id = search.value.trim();
        if (!UUID.test(id)) {
          showError(`"${id}" is not a task id (a UUID)`);
          return;
        }
        ctx.go(`/tasks/${id}`);
      },
    },
    h("label", {}, "State ", select("state", TASK_STATES.map((st) => [st, st || "any"]), params.get("state"))),
    h("label", {}, "Type ", select("type", [["", "all"], ...types.map((t) => [t.name, t.name])], params.get("type"))),
    h("label", {}, "Queue ", select("queue", [["", "all"], ...[...new Set(types.map((t) => t.queue))].map((q) => [q, q])], params.get("queue"))),
    h("span", { class: "search" }, search, h("button", { type: "submit" }, "Open")),
  );
  const list = h("div", { class: "list" });
  // The rows on the page, by task id: each changes live as its task does.
  const shown = new Map();
  let pageToken = "";
  const more = h("button", { type: "button", hidden: true, onclick: () => load(false).catch(showError) }, "More");
  const load = async (fresh) => {
    // Changes from a little before the read on are replayed to the rows: none falls
    // between the read and the subscription.
    const since = positionAt(new Date().toISOString(), REPLAY_MARGIN_MS);
    const page = await api("GET", "/v1/tasks", {
      params: {
        state: params.get("state"),
        type: params.get("type"),
        queue: params.get("queue"),
        page_size: 50,
        page_token: fresh ? "" : pageToken,
      },
    });
    if (!ctx.alive()) return;
    if (fresh) shown.clear();
    const rows = page.items.map((t) => {
      const row = taskRow(t);
      shown.set(t.id, row);
      return row;
    });
    if (fresh) clear(list, table(["task", "type", "queue", "state", "attempts", "created", "ran", "error"], rows, { class: "tasks" }));
    else list.querySelector("tbody").append(...rows);
    pageToken = page.next_page_token || "";
    more.hidden = !pageToken;
    // The feed takes at most LIVE_ROWS topics: the newest rows are the ones that change.
    const ids = [...shown.keys()].slice(0, LIVE_ROWS);
    await ctx.live.watch(
      ids.map((id) => `task:${id}`),
      (event) => {
        const row = shown.get(event.subject.replace("task/", ""));
        if (row && event.type !== "task.dead_lettered") fillRow(row, liveFields(event.data || {}));
      },
      { after: since },
    );
  };
  const refresh = h("button", { type: "button", onclick: () => load(true).catch(showError) }, "Refresh");
  section.append(
    h("h1", {}, "Tasks"),
    filters,
    h("div", { class: "actions" }, refresh, h("span", { class: "hint" }, "Rows change live; new tasks show on Refresh.")),
    list,
    more,
  );
  await load(true);
}

/** A row of the list, from the API's task. */
function taskRow(t) {
  const row = h(
    "tr",
    { dataset: { task: t.id } },
    h("td", {}, h("a", { href: `#/tasks/${t.id}` }, t.id.slice(0, 8))),
    h("td", {}, t.type),
    h("td", {}, t.queue),
    h("td"),
    h("td", { class: "num" }),
    h("td", {}, when(t.created_at)),
    h("td"),
    h("td", { class: "error-text" }),
  );
  fillRow(row, { state: t.state, attempts: t.attempts, started_at: t.started_at, finished_at: t.finished_at, error: t.error ? t.error.message : "" });
  return row;
}

/** A task event's data as the row's fields (its times are Unix seconds). */
function liveFields(data) {
  const iso = (t) => (t ? new Date(t * 1000).toISOString() : null);
  return { state: data.state, attempts: data.attempts, started_at: iso(data.started_at), finished_at: iso(data.finished_at), error: data.error || "" };
}

function fillRow(row, f) {
  const cells = row.children;
  clear(cells[3], badge(f.state));
  cells[4].textContent = f.attempts ?? "";
  clear(cells[6], duration(f.started_at, f.finished_at));
  cells[7].textContent = f.error;
}

function withoutId(form) {
  form.delete("id");
  return form;
}

export async function renderTask(section, taskId, ctx) {
  const head = h("div", { class: "task-head" });
  const attempts = h("div", { class: "attempts" });
  section.append(h("h1", {}, "Task ", h("code", {}, taskId)), head, h("h2", {}, "Attempts"), attempts);
  // Reads and the cancel may answer out of order: an answer older than one applied is dropped.
  let asked = 0;
  let applied = 0;
  const newest = async (request) => {
    const n = ++asked;
    const answer = await request;
    if (n < applied) return null;
    applied = n;
    return answer;
  };
  let task = await newest(api("GET", `/v1/tasks/${encodeURIComponent(taskId)}`));
  const events = [];

  const cancel = async () => {
    try {
      const answer = await newest(api("POST", `/v1/tasks/${encodeURIComponent(taskId)}/cancel`, { body: { reason: "cancelled from the dashboard" } }));
      // A running task stops when its agent next hears of the cancellation.
      showNotice(answer && answer.state === "CANCELLED" ? "Task cancelled" : "Cancellation requested: the task stops when its agent hears of it");
      if (answer) {
        task = answer;
        drawHead();
      }
    } catch (err) {
      showError(err, "cancel task");
    }
  };
  const drawHead = () => {
    const actions = [];
    if (!ENDED.has(task.state) && can("POST", "/v1/tasks/{task_id}/cancel")) {
      actions.push(h("button", { type: "button", class: "danger", onclick: cancel }, "Cancel task"));
    }
    clear(
      head,
      fields([
        ["state", badge(task.state)],
        ["type", task.type],
        ["queue", `${task.queue} · ${task.priority}`],
        ["attempts", task.attempts],
        ["agent", task.agent],
        ["created", when(task.created_at)],
        ["started", when(task.started_at)],
        ["finished", when(task.finished_at)],
        ["ran", duration(task.started_at, task.finished_at)],
        ["parent", task.parent_id ? h("a", { href: `#/tasks/${task.parent_id}` }, task.parent_id) : "—"],
        ["error", task.error ? h("span", { class: "error-text" }, `${task.error.reason || task.error.kind}: ${task.error.message}`) : "—"],
      ]),
      h("div", { class: "actions" }, actions),
      h("h3", {}, "payload"),
      json(task.payload),
      h("h3", {}, "result"),
      json(task.result),
    );
  };
  const drawAttempts = () => {
    // Each start opens an attempt; what followed it (retrying, failed, succeeded) closes it.
    const rows = [];
    for (const event of events) {
      const data = event.data || {};
      let row = rows[rows.length - 1];
      if (event.type === "task.queued") continue;
      if (event.type === "task.started") {
        rows.push({ attempt: data.attempts, agent: data.agent, started: data.started_at, outcome: "running", ended: null, error: "" });
      } else if (event.type === "task.dead_lettered" && row) {
        row.outcome = `${row.outcome}, dead-lettered`;
      } else {
        if (!row || row.ended) {
          // Ended without a start of its own (cancelled while queued).
          row = { attempt: data.attempts, agent: data.agent, started: null, error: "" };
          rows.push(row);
        }
        row.outcome = event.type.replace("task.", "");
        row.ended = Date.parse(event.time) / 1000;
        row.error = data.error || row.error;
      }
    }
    const iso = (t) => (t ? new Date(t * 1000).toISOString() : null);
    clear(
      attempts,
      table(
        ["attempt", "agent", "started", "then", "took", "error"],
        rows.map((r) =>
          h(
            "tr",
            {},
            h("td", { class: "num" }, r.attempt ?? "—"),
            h("td", {}, r.agent || "—"),
            h("td", {}, when(iso(r.started))),
            h("td", {}, r.outcome),
            h("td", {}, duration(iso(r.started), iso(r.ended))),
            h("td", { class: "error-text" }, r.error || ""),
          ),
        ),
        { class: "attempt-list" },
      ),
      h("p", { class: "hint" }, "From the task's events; the event stream keeps about the last million."),
    );
  };
  drawHead();
  const refetch = debounce(async () => {
    try {
      const answer = await newest(api("GET", `/v1/tasks/${encodeURIComponent(taskId)}`));
      if (answer && ctx.alive()) {
        task = answer;
        drawHead();
      }
    } catch (err) {
      showError(err, "refreshing the task");
    }
  }, 250);
  const recent = Date.now() - Date.parse(task.created_at) < HISTORY_MAX_AGE_MS;
  if (!recent) {
    clear(attempts, h("p", { class: "hint" }, `${task.attempts} attempt(s); the events of tasks older than 6 hours are not replayed here.`));
  }
  ctx.live.watch(
    [`task:${taskId}`],
    (event) => {
      if (event.subject !== `task/${taskId}`) return;
      events.push(event);
      if (recent) drawAttempts();
      refetch();
    },
    { after: recent ? positionAt(task.created_at) : null },
  );
  if (recent) drawAttempts();
}
