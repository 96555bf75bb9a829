// Runs: the list (workflow and state filters, refreshed by run events) and a run's page
// (its DAG coloured by step state, live from run.* and step.* events).

import { api, can, listAll, showError, showNotice } from "../api.js";
import { drawDag } from "../dag.js";
import { badge, clear, debounce, duration, fields, h, json, select, table, when } from "../dom.js";

const RUN_STATES = ["", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED"];
const RUN_EVENTS = ["run.started", "run.succeeded", "run.failed", "run.cancelled", "run.retried"];

export async function renderList(section, _id, ctx) {
  const params = ctx.params;
  const workflows = await listAll("/v1/workflows", { page_size: 500 });
  const filters = h(
    "form",
    {
      class: "filters",
      onchange: (event) => ctx.go("/runs", new FormData(event.currentTarget)),
      onsubmit: (event) => event.preventDefault(),
    },
    h("label", {}, "Workflow ", select("workflow", [["", "all"], ...workflows.map((w) => [w.name, w.name])], params.get("workflow"))),
    h("label", {}, "State ", select("state", RUN_STATES.map((st) => [st, st || "any"]), params.get("state"))),
  );
  const list = h("div", { class: "list" });
  let pageToken = "";
  const more = h("button", { type: "button", hidden: true, onclick: () => load(false) }, "More");
  const load = async (fresh) => {
    const page = await api("GET", "/v1/runs", {
      params: { workflow: params.get("workflow"), state: params.get("state"), page_size: 50, page_token: fresh ? "" : pageToken },
    });
    if (!ctx.alive()) return;
    const rows = page.items.map((run) =>
      h(
        "tr",
        { dataset: { run: run.id } },
        h("td", {}, h("a", { href: `#/runs/${run.id}` }, run.id.slice(0, 8))),
        h("td", {}, `${run.workflow} v${run.version}`),
        h("td", {}, badge(run.state)),
        h("td", {}, when(run.created_at)),
        h("td", {}, duration(run.created_at, run.state === "RUNNING" ? null : run.updated_at)),
        h("td", { class: "error-text" }, run.error || ""),
      ),
    );
    if (fresh) clear(list, table(["run", "workflow", "state", "started", "took", "error"], rows, { class: "runs" }));
    else list.querySelector("tbody").append(...rows);
    pageToken = page.next_page_token || "";
    more.hidden = !pageToken;
  };
  section.append(h("h1", {}, "Runs"), filters, list, more);
  // A run that starts or ends shows up without a reload. Watching starts before the first
  // read, so nothing falls between them.
  const refresh = debounce(() => load(true).catch((err) => showError(err, "refreshing runs")), 300);
  await ctx.live.watch(RUN_EVENTS.map((t) => `type:${t}`), refresh);
  await load(true);
}

export async function renderRun(section, runId, ctx) {
  const dagBox = h("div", { class: "dag-box" });
  const head = h("div", { class: "run-head" });
  const detail = h("div", { class: "step-detail" });
  section.append(h("h1", {}, "Run ", h("code", {}, runId)), head, dagBox, detail);
  let run = null;
  let definition = null;
  let selected = null;
  const states = {};
  // Reads and actions may answer out of order: an answer older than one applied is dropped.
  let asked = 0;
  let applied = 0;
  const newest = async (request) => {
    const n = ++asked;
    const answer = await request;
    if (n < applied) return null;
    applied = n;
    return answer;
  };

  const draw = () => {
    if (!definition) return;
    const onSelect = (name) => {
      selected = name;
      draw();
      showStep();
    };
    clear(dagBox, drawDag(definition, states, onSelect, selected));
  };
  const drawHead = () => {
    const actions = [];
    if (run.state === "RUNNING" && can("POST", "/v1/runs/{run_id}/cancel")) {
      actions.push(h("button", { type: "button", class: "danger", onclick: () => act("cancel") }, "Cancel run"));
    }
    if ((run.state === "FAILED" || run.state === "CANCELLED") && can("POST", "/v1/runs/{run_id}/retry")) {
      actions.push(h("button", { type: "button", onclick: () => act("retry") }, "Retry run"));
    }
    clear(
      head,
      fields([
        ["state", badge(run.state)],
        ["workflow", h("a", { href: `#/runs?workflow=${encodeURIComponent(run.workflow)}` }, `${run.workflow} v${run.version}`)],
        ["started", when(run.created_at)],
        ["updated", when(run.updated_at)],
        ["error", run.error ? h("span", { class: "error-text" }, run.error) : "—"],
      ]),
      h("div", { class: "actions" }, actions),
      h("details", {}, h("summary", {}, "Input and output"), h("h3", {}, "input"), json(run.input), h("h3", {}, "output"), json(run.output)),
    );
  };
  const act = async (verb) => {
    try {
      const answer = await newest(api("POST", `/v1/runs/${encodeURIComponent(runId)}/${verb}`));
      showNotice(verb === "cancel" ? "Run cancelled" : "The run's failed and cancelled steps run again");
      if (answer) {
        run = answer;
        apply();
      }
    } catch (err) {
      showError(err, `${verb} run`);
    }
  };
  const showStep = async () => {
    if (!selected) return;
    const name = selected;
    const spec = (definition.steps || []).find((st) => st.name === name) || definition.on_failure || {};
    const step = run.steps.find((st) => st.name === name);
    const taskList = h("div", { class: "step-tasks" });
    clear(
      detail,
      h("h2", {}, "Step ", h("code", {}, name)),
      fields([
        ["state", badge(states[name] || "PENDING")],
        ["type", spec.type || (spec.workflow ? `workflow ${spec.workflow}` : "—")],
        ["depends on", (spec.depends_on || []).join(", ") || "—"],
        ["attempts", step ? step.attempts : 0],
        ["started", when(step && step.started_at)],
        ["took", duration(step && step.started_at, step && step.finished_at)],
        ["error", step && step.error ? h("span", { class: "error-text" }, step.error) : "—"],
      ]),
      h("h3", {}, "input (as defined)"),
      json(spec.input ?? null),
      h("h3", {}, "output"),
      json(step ? step.output : null),
      taskList,
    );
    // The step's tasks carry its resolved input, one per for_each item; a step that runs a
    // child workflow has its runs instead.
    const ids = step ? step.task_ids.slice(0, 20) : [];
    if (!ids.length) return;
    if (spec.workflow) {
      clear(taskList, h("h3", {}, "child runs"), ids.map((id) => h("div", {}, h("a", { href: `#/runs/${id}` }, id))));
      return;
    }
    try {
      const tasks = await Promise.all(ids.map((id) => api("GET", `/v1/tasks/${id}`)));
      if (!ctx.alive() || selected !== name) return;
      clear(
        taskList,
        h("h3", {}, "tasks (resolved input)"),
        tasks.map((t) => h("div", { class: "step-task" }, h("a", { href: `#/tasks/${t.id}` }, t.id.slice(0, 8)), " ", badge(t.state), json(t.payload))),
      );
    } catch (err) {
      showError(err, "the step's tasks");
    }
  };
  const apply = () => {
    for (const step of run.steps) states[step.name] = step.state;
    drawHead();
    draw();
    if (selected) showStep();
  };
  const refetch = debounce(async () => {
    try {
      const answer = await newest(api("GET", `/v1/runs/${encodeURIComponent(runId)}`));
      if (answer && ctx.alive()) {
        run = answer;
        apply();
      }
    } catch (err) {
      showError(err, "refreshing the run");
    }
  }, 250);

  // Watch first, then read: every change after the read arrives as an event. Each event
  // colours its step at once; the run is read again for the details.
  let events = 0;
  await ctx.live.watch([`run:${runId}`], (event) => {
    if (event.subject !== `run/${runId}`) return;
    events += 1;
    if (event.data && event.data.step && event.type.startsWith("step.")) {
      states[event.data.step] = event.type.slice("step.".length).toUpperCase();
      draw();
    }
    if (run) refetch();
  });
  run = await newest(api("GET", `/v1/runs/${encodeURIComponent(runId)}`));
  const seen = events;
  const workflow = await api("GET", `/v1/workflows/${encodeURIComponent(run.workflow)}`, { params: { version: run.version } });
  definition = workflow.definition || { steps: [] };
  if (!ctx.alive()) return;
  apply();
  // Events that came while the definition loaded may be newer than the run read before.
  if (events !== seen) refetch();
}
