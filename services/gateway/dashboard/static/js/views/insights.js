// Insights and reports: throughput, success rate and duration percentiles over time
// (charts from GET /v1/reports), the top error fingerprints, open insights and canary
// verdicts.
//
// A report covers "the last N seconds", so the charts ask for nested windows (the last
// bucket, the last two, ...): counts are additive, so each bucket's throughput and success
// rate are differences of neighbours. Percentiles are not additive: their chart shows each
// trailing window's percentiles instead.

import { ApiError, api, can, showError } from "../api.js";
import { lineChart } from "../charts.js";
import { badge, clear, fields, h, json, percent, seconds, select, table, when } from "../dom.js";

const WINDOWS = [
  ["3600", "last hour"],
  ["21600", "last 6 hours"],
  ["86400", "last day"],
];
const BUCKETS = 12;

export async function render(section, _id, ctx) {
  const params = ctx.params;
  const windowS = Number(params.get("window") || 3600);
  const groupBy = params.get("group_by") || "type";
  const bucketS = Math.round(windowS / BUCKETS);
  const controls = h(
    "form",
    { class: "filters", onchange: (event) => ctx.go("/insights", new FormData(event.currentTarget)), onsubmit: (e) => e.preventDefault() },
    h("label", {}, "Window ", select("window", WINDOWS, String(windowS))),
    h("label", {}, "Group by ", select("group_by", [["type", "task type"], ["queue", "queue"], ["version", "agent version"]], groupBy)),
    h("label", {}, "Group ", h("span", { class: "group-choice" })),
  );
  const charts = h("div", { class: "charts" }, h("p", { class: "hint" }, "loading reports…"));
  const summary = h("div", { class: "list" });
  const errors = h("div", { class: "list" });
  const insights = h("div", { class: "list insights" }, h("p", { class: "hint" }, "loading insights…"));
  const canaries = h("div", { class: "canaries" });
  section.append(
    h("h1", {}, "Insights and reports"),
    controls,
    charts,
    h("h2", {}, "By ", groupBy),
    summary,
    h("h2", {}, "Top error fingerprints"),
    errors,
    h("h2", {}, "Open insights"),
    insights,
    h("h2", {}, "Canary verdicts"),
    canaries,
  );
  renderCanaries(canaries, ctx);
  loadInsights(insights, ctx);

  // reports[k - 1] covers the last k buckets.
  const reports = await Promise.all(
    Array.from({ length: BUCKETS }, (_, i) => api("GET", "/v1/reports", { params: { window: (i + 1) * bucketS, group_by: groupBy } })),
  );
  if (!ctx.alive()) return;
  const whole = reports[BUCKETS - 1];
  const groups = whole.rows.map((r) => r.group).sort();
  const busiest = whole.rows.reduce((a, b) => (b.total > (a ? a.total : -1) ? b : a), null);
  const chosen = params.get("group") || "";
  controls.querySelector(".group-choice").append(select("group", [["", "all"], ...groups.map((g) => [g, g || "(none)"])], chosen));

  const totals = (report) => {
    const rows = report.rows.filter((r) => !chosen || r.group === chosen);
    return { total: rows.reduce((a, r) => a + r.total, 0), succeeded: rows.reduce((a, r) => a + r.succeeded, 0) };
  };
  const cumulative = reports.map(totals);
  // Bucket j (0 the oldest) is window BUCKETS - j minus window BUCKETS - j - 1.
  const perBucket = Array.from({ length: BUCKETS }, (_, j) => {
    const k = BUCKETS - j;
    const outer = cumulative[k - 1];
    const inner = k > 1 ? cumulative[k - 2] : { total: 0, succeeded: 0 };
    const total = Math.max(0, outer.total - inner.total);
    const succeeded = Math.max(0, outer.succeeded - inner.succeeded);
    return { throughput: total / bucketS, success: total ? succeeded / total : null };
  });
  const end = Date.parse(whole.end);
  const clock = (ms) => new Date(ms).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", hourCycle: "h23" });
  const bucketLabels = perBucket.map((_, j) => clock(end - (BUCKETS - 1 - j) * bucketS * 1000));
  const latencyGroup = chosen || (busiest ? busiest.group : null);
  const latencyRow = (report) => report.rows.find((r) => r.group === latencyGroup) || null;
  const trailingLabels = reports.map((_, i) => `${Math.round(((i + 1) * bucketS) / 60)}m`);
  const pct = (key) => reports.map((r) => (latencyRow(r) && latencyRow(r).total ? latencyRow(r)[key] : null));
  clear(
    charts,
    lineChart("Throughput (tasks/s)", bucketLabels, [{ name: "throughput", values: perBucket.map((b) => b.throughput), cls: "s1" }], {
      format: (v) => v.toFixed(v < 1 ? 3 : 1),
    }),
    lineChart("Success rate", bucketLabels, [{ name: "success", values: perBucket.map((b) => b.success), cls: "s2" }], {
      format: (v) => `${Math.round(v * 100)}%`,
      max: 1,
    }),
    lineChart(
      `Duration over the trailing window${latencyGroup !== null ? ` (${latencyGroup || "(none)"})` : ""}`,
      trailingLabels,
      [
        { name: "p50", values: pct("p50_s"), cls: "s1" },
        { name: "p95", values: pct("p95_s"), cls: "s3" },
        { name: "p99", values: pct("p99_s"), cls: "s4" },
      ],
      { format: seconds },
    ),
  );
  clear(
    summary,
    table(
      [groupBy, "finished", "success", "throughput", "p50", "p95", "p99", "retry rate", "dead letters"],
      whole.rows.map((r) =>
        h(
          "tr",
          {},
          h("td", {}, r.group || "(none)"),
          h("td", { class: "num" }, r.total),
          h("td", { class: "num" }, percent(r.success_rate)),
          h("td", { class: "num" }, `${r.throughput_per_s.toFixed(3)}/s`),
          h("td", { class: "num" }, seconds(r.p50_s)),
          h("td", { class: "num" }, seconds(r.p95_s)),
          h("td", { class: "num" }, seconds(r.p99_s)),
          h("td", { class: "num" }, percent(r.retry_rate)),
          h("td", { class: "num" }, r.dead_letters),
        ),
      ),
      { class: "report" },
    ),
  );
  const fingerprints = new Map();
  for (const row of whole.rows) {
    for (const e of row.top_errors) {
      const seen = fingerprints.get(e.fingerprint);
      if (seen) {
        seen.count += e.count;
        seen.groups.add(row.group);
        if (e.last_seen > seen.last_seen) seen.last_seen = e.last_seen;
      } else {
        fingerprints.set(e.fingerprint, { ...e, groups: new Set([row.group]) });
      }
    }
  }
  const top = [...fingerprints.values()].sort((a, b) => b.count - a.count).slice(0, 10);
  clear(
    errors,
    table(
      ["count", "fingerprint", groupBy, "last seen", "example"],
      top.map((e) =>
        h(
          "tr",
          {},
          h("td", { class: "num" }, e.count),
          h("td", {}, h("code", {}, e.fingerprint)),
          h("td", {}, [...e.groups].join(", ")),
          h("td", {}, when(e.last_seen)),
          h("td", { class: "error-text" }, e.example),
        ),
      ),
      { class: "fingerprints" },
    ),
  );
}

async function loadInsights(box, ctx) {
  let page;
  try {
    page = await api("GET", "/v1/insights", { params: { state: "open", page_size: 50 } });
  } catch (err) {
    if (!ctx.alive()) return;
    if (err instanceof ApiError && (err.status === 404 || err.status === 501)) {
      clear(box, h("p", { class: "hint no-insights" }, "no insights service"));
      return;
    }
    showError(err, "insights");
    clear(box, h("p", { class: "failed" }, `Insights could not be read: ${err.message}`));
    return;
  }
  if (!ctx.alive()) return;
  const items = (page && page.items) || [];
  if (!items.length) {
    clear(box, h("p", { class: "hint no-open" }, "No open insights."));
    return;
  }
  clear(
    box,
    table(
      ["severity", "kind", "subject", "window", "opened", "evidence"],
      items.map((i) =>
        h(
          "tr",
          { dataset: { insight: i.id } },
          h("td", {}, badge((i.severity || "info").toUpperCase())),
          h("td", {}, i.kind),
          h("td", {}, h("code", {}, i.subject)),
          h("td", {}, when(i.window_start), " – ", when(i.window_end)),
          h("td", {}, when(i.created_at)),
          h("td", {}, h("details", {}, h("summary", {}, "evidence"), json(i.evidence))),
        ),
      ),
      { class: "insight-list" },
    ),
  );
}

function verdictView(a) {
  return h(
    "div",
    { class: "verdict", dataset: { verdict: a.verdict } },
    h("h3", {}, badge(a.verdict), " ", a.subject, ": ", a.canary, " against ", a.baseline),
    fields([
      ["id", h("code", {}, a.id)],
      ["window", seconds(a.window_s)],
      ["when", when(a.created_at)],
      ["reasons", a.reasons.length ? h("ul", {}, a.reasons.map((r) => h("li", {}, r))) : "—"],
    ]),
    h("details", {}, h("summary", {}, "statistics"), json({ cohorts: a.cohorts, error_rate: a.error_rate, duration: a.duration, thresholds: a.thresholds })),
  );
}

/** Recent verdicts from GET /v1/canary-analyses, newest first; one opens below the list. */
function renderCanaries(box, ctx) {
  const list = h("div", { class: "list" });
  const detail = h("div", { class: "verdict-detail" });
  let pageToken = "";
  const more = h("button", { type: "button", hidden: true, onclick: () => load(false) }, "More");
  const open = (analysis) => clear(detail, verdictView(analysis));
  const load = async (fresh) => {
    let page;
    try {
      page = await api("GET", "/v1/canary-analyses", { params: { page_size: 20, page_token: fresh ? "" : pageToken } });
    } catch (err) {
      showError(err, "canary verdicts");
      return;
    }
    if (!ctx.alive()) return;
    const rows = page.items.map((a) =>
      h(
        "tr",
        { dataset: { analysis: a.id } },
        h("td", {}, h("button", { type: "button", class: "link open-verdict", onclick: () => open(a) }, a.id.slice(0, 8))),
        h("td", {}, badge(a.verdict)),
        h("td", {}, h("code", {}, a.subject)),
        h("td", {}, a.canary, " against ", a.baseline),
        h("td", { class: "num" }, seconds(a.window_s)),
        h("td", {}, when(a.created_at)),
      ),
    );
    if (fresh) clear(list, table(["id", "verdict", "task type", "canary vs baseline", "window", "when"], rows, { class: "canary-list" }));
    else list.querySelector("tbody").append(...rows);
    pageToken = page.next_page_token || "";
    more.hidden = !pageToken;
  };
  const lookup = h(
    "form",
    {
      class: "filters",
      onsubmit: async (event) => {
        event.preventDefault();
        const id = new FormData(event.currentTarget).get("id").trim();
        if (!id) return;
        try {
          open(await api("GET", `/v1/canary-analyses/${encodeURIComponent(id)}`));
        } catch (err) {
          showError(err, `canary analysis ${id}`);
        }
      },
    },
    h("label", {}, "Verdict id ", h("input", { name: "id", size: 38, required: true })),
    h("button", { type: "submit" }, "Look up"),
  );
  const analyze = can("POST", "/v1/canary-analyses")
    ? h(
        "form",
        {
          class: "filters",
          onsubmit: async (event) => {
            event.preventDefault();
            const form = new FormData(event.currentTarget);
            try {
              const analysis = await api("POST", "/v1/canary-analyses", {
                body: { subject: form.get("subject") || "*", baseline: form.get("baseline"), canary: form.get("canary"), window_s: Number(form.get("window_s")) },
              });
              open(analysis);
              load(true);
            } catch (err) {
              showError(err, "canary analysis");
            }
          },
        },
        h("label", {}, "Task type ", h("input", { name: "subject", value: "*", size: 12 })),
        h("label", {}, "Baseline ", h("input", { name: "baseline", required: true, size: 10 })),
        h("label", {}, "Canary ", h("input", { name: "canary", required: true, size: 10 })),
        h("label", {}, "Window (s) ", h("input", { name: "window_s", type: "number", min: 1, value: 900, size: 6 })),
        h("button", { type: "submit" }, "Compare"),
      )
    : null;
  clear(box, lookup, analyze, list, more, detail);
  load(true);
}
