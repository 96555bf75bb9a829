// Agents: every registered instance with its role, version, lifecycle state, last
// heartbeat and load, read again every few seconds (heartbeats are not events).

import { api, showError } from "../api.js";
import { ago, badge, clear, h, table, when } from "../dom.js";

const REFRESH_MS = 5000;

export async function render(section, _id, ctx) {
  const list = h("div", { class: "list" });
  const stamp = h("p", { class: "hint" });
  section.append(h("h1", {}, "Agents"), stamp, list);
  const load = async () => {
    const { items } = await api("GET", "/v1/agents");
    if (!ctx.alive()) return;
    items.sort((a, b) => a.role.localeCompare(b.role) || a.instance.localeCompare(b.instance));
    const rows = items.map((a) =>
      h(
        "tr",
        { dataset: { agent: a.id } },
        h("td", {}, a.role),
        h("td", {}, h("code", {}, a.instance)),
        h("td", {}, a.version),
        h("td", {}, badge(a.state)),
        h("td", {}, ago(a.last_seen_at)),
        h("td", {}, h("meter", { min: 0, max: 1, value: a.load, title: `${Math.round(a.load * 100)} %` }), ` ${Math.round(a.load * 100)} %`),
        h("td", {}, when(a.started_at)),
        h("td", { class: "types" }, a.task_types.join(", ")),
      ),
    );
    clear(list, table(["role", "instance", "version", "state", "last heartbeat", "load", "started", "task types"], rows, { class: "agents" }));
    stamp.textContent = `${items.length} agent(s), read ${new Date().toLocaleTimeString()}; refreshed every ${REFRESH_MS / 1000} s.`;
  };
  await load();
  let failing = false;
  const timer = setInterval(() => {
    load().then(
      () => (failing = false),
      (err) => {
        // One alert per outage, not one every few seconds.
        if (!failing) showError(err, "refreshing agents");
        failing = true;
      },
    );
  }, REFRESH_MS);
  ctx.onLeave(() => clearInterval(timer));
}
