// Dead letters: why each task ended there, its payload, redrive (the payload may be
// edited first) and purge, each offered only to the roles the policy lets do it.

import { api, can, showError, showNotice } from "../api.js";
import { badge, clear, fields, h, json, table, when } from "../dom.js";

export async function render(section, _id, ctx) {
  const params = ctx.params;
  const filters = h(
    "form",
    {
      class: "filters",
      onsubmit: (event) => {
        event.preventDefault();
        ctx.go("/dead-letters", new FormData(event.currentTarget));
      },
    },
    h("label", {}, "Type ", h("input", { name: "type", value: params.get("type") || "", size: 18 })),
    h("label", {}, "Queue ", h("input", { name: "queue", value: params.get("queue") || "", size: 12 })),
    h("button", { type: "submit" }, "Filter"),
  );
  const list = h("div", { class: "list" });
  const detail = h("div", { class: "letter-detail" });
  section.append(h("h1", {}, "Dead letters"), filters);
  if (can("POST", "/v1/dead-letters/purge")) section.append(purgeForm(params, () => load()));
  section.append(list, detail);

  const load = async () => {
    const page = await api("GET", "/v1/dead-letters", { params: { type: params.get("type"), queue: params.get("queue"), page_size: 100 } });
    if (!ctx.alive()) return;
    const rows = page.items.map((letter) =>
      h(
        "tr",
        { dataset: { letter: letter.id, task: letter.task.id } },
        h("td", {}, h("button", { type: "button", class: "link open-letter", onclick: () => open(letter) }, letter.id.slice(0, 8))),
        h("td", {}, letter.task.type),
        h("td", {}, letter.task.queue),
        h("td", { class: "error-text" }, letter.reason),
        h("td", { class: "error-text" }, letter.task.error ? letter.task.error.message : ""),
        h("td", {}, when(letter.created_at)),
        h("td", {}, letter.redriven_task_id ? h("a", { href: `#/tasks/${letter.redriven_task_id}` }, `redriven → ${letter.redriven_task_id.slice(0, 8)}`) : "—"),
      ),
    );
    clear(list, table(["letter", "type", "queue", "reason", "error", "when", "redrive"], rows, { class: "letters" }));
  };

  const open = (letter) => {
    const payload = h("textarea", { name: "payload", rows: 8, spellcheck: "false", readonly: !can("POST", "/v1/dead-letters/{dead_letter_id}/redrive") });
    payload.value = JSON.stringify(letter.task.payload, null, 2);
    const outcome = h("p", { class: "outcome" });
    const redrive = async () => {
      let edited;
      try {
        edited = JSON.parse(payload.value);
      } catch (err) {
        showError(`the payload is not JSON: ${err.message}`);
        return;
      }
      try {
        const task = await api("POST", `/v1/dead-letters/${letter.id}/redrive`, { body: { payload: edited } });
        clear(outcome, "Redriven as task ", h("a", { href: `#/tasks/${task.id}`, class: "redriven" }, task.id), " ", badge(task.state));
        showNotice(`Redriven as task ${task.id}`);
        await load();
      } catch (err) {
        showError(err, "redrive");
      }
    };
    clear(
      detail,
      h("h2", {}, "Dead letter ", h("code", {}, letter.id)),
      fields([
        ["task", h("a", { href: `#/tasks/${letter.task.id}` }, letter.task.id)],
        ["type", letter.task.type],
        ["reason", h("span", { class: "error-text" }, letter.reason)],
        ["error", letter.task.error ? `${letter.task.error.kind}: ${letter.task.error.message}` : "—"],
        ["attempts", letter.task.attempts],
        ["dead since", when(letter.created_at)],
        ["redriven as", letter.redriven_task_id ? h("a", { href: `#/tasks/${letter.redriven_task_id}` }, letter.redriven_task_id) : "—"],
      ]),
      h("label", { class: "payload" }, can("POST", "/v1/dead-letters/{dead_letter_id}/redrive") ? "Payload (edit before redriving)" : "Payload", payload),
      can("POST", "/v1/dead-letters/{dead_letter_id}/redrive") ? h("div", { class: "actions" }, h("button", { type: "button", class: "redrive", onclick: redrive }, "Redrive")) : null,
      outcome,
      h("details", {}, h("summary", {}, "Result"), json(letter.task.result)),
    );
    detail.scrollIntoView({ block: "nearest" });
  };

  await load();
}

function purgeForm(params, reload) {
  const olderThan = h("input", { name: "older_than", type: "datetime-local" });
  const confirm = h("button", { type: "button", class: "danger", hidden: true }, "Confirm purge");
  const purge = async () => {
    const body = { type: params.get("type") || null, queue: params.get("queue") || null };
    if (olderThan.value) body.older_than = new Date(olderThan.value).toISOString();
    try {
      const answer = await api("POST", "/v1/dead-letters/purge", { body });
      showNotice(`Purged ${answer.purged} dead letter(s)`);
      await reload();
    } catch (err) {
      showError(err, "purge");
    } finally {
      confirm.hidden = true;
    }
  };
  confirm.addEventListener("click", purge);
  const scope = [params.get("type") && `type ${params.get("type")}`, params.get("queue") && `queue ${params.get("queue")}`].filter(Boolean).join(", ");
  return h(
    "div",
    { class: "purge" },
    h("label", {}, "Purge the dead letters ", scope ? `of ${scope}` : "of every type and queue", ", or only those older than ", olderThan),
    h("button", { type: "button", class: "danger", onclick: () => (confirm.hidden = false) }, "Purge…"),
    confirm,
  );
}
