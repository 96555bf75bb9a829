// The dashboard's shell: sign-in with a token, hash routes, the live feed's status.

import { api, session, showError, signIn, signOut } from "./api.js";
import { clear, h } from "./dom.js";
import { LiveFeed } from "./live.js";
import * as agents from "./views/agents.js";
import * as deadLetters from "./views/deadletters.js";
import * as insights from "./views/insights.js";
import * as runs from "./views/runs.js";
import * as tasks from "./views/tasks.js";

const ROUTES = [
  [/^\/runs\/([^/]+)$/, "runs", runs.renderRun],
  [/^\/runs$/, "runs", runs.renderList],
  [/^\/tasks\/([^/]+)$/, "tasks", tasks.renderTask],
  [/^\/tasks$/, "tasks", tasks.renderList],
  [/^\/dead-letters$/, "dead-letters", deadLetters.render],
  [/^\/agents$/, "agents", agents.render],
  [/^\/insights$/, "insights", insights.render],
];

const liveBadge = document.getElementById("live");
const live = new LiveFeed(
  (status, text) => {
    liveBadge.dataset.status = status;
    liveBadge.textContent = text;
  },
  (topics) => {
    liveBadge.dataset.watching = topics ? topics.join(" ") : "";
    liveBadge.title = topics && topics.length ? `The live event feed, watching ${topics.join(", ")}` : "The live event feed";
  },
);

let cleanup = null;
let generation = 0;

function parseHash() {
  const [path, search] = (location.hash.replace(/^#/, "") || "/runs").split("?");
  return { path, params: new URLSearchParams(search || "") };
}

/** Goes to a route, replacing the current entry when only the filters changed. */
export function go(path, params) {
  const search = params ? new URLSearchParams([...params].filter(([, v]) => v)).toString() : "";
  location.hash = `#${path}${search ? `?${search}` : ""}`;
}

async function route() {
  if (cleanup) cleanup();
  cleanup = null;
  live.unwatch();
  const mine = ++generation;
  const view = document.getElementById("view");
  // Each render gets a section of its own: a slow load of a page left behind writes into
  // a section no longer on the page.
  const section = h("section", { class: "page" });
  clear(view, section);
  if (!session.me) {
    renderSignIn(section);
    return;
  }
  const { path, params } = parseHash();
  const match = ROUTES.map(([re, name, render]) => [re.exec(path), name, render]).find(([m]) => m);
  for (const link of document.querySelectorAll("#nav a")) {
    link.classList.toggle("active", Boolean(match) && link.dataset.section === match[1]);
  }
  if (!match) {
    section.append(h("p", {}, `No page at ${path}. `, h("a", { href: "#/runs" }, "Runs")));
    return;
  }
  const [m, , render] = match;
  const alive = () => mine === generation;
  // A page left behind while it was loading must not take the feed from the page shown.
  const watch = (...args) => (alive() ? live.watch(...args) : Promise.resolve());
  const ctx = { live: { watch }, go, alive, params, onLeave: (fn) => (cleanup = fn) };
  try {
    await render(section, decodeURIComponent(m[1] || ""), ctx);
  } catch (err) {
    if (ctx.alive()) {
      showError(err);
      section.append(h("p", { class: "failed" }, `This page could not be loaded: ${err.message}`));
    }
  }
}

function renderSignIn(section) {
  const token = h("textarea", { name: "token", rows: 4, required: true, spellcheck: "false", autocomplete: "off", placeholder: "eyJhbGciOi…" });
  const problem = h("p", { class: "failed", role: "alert", hidden: true });
  const form = h(
    "form",
    {
      class: "sign-in",
      onsubmit: async (event) => {
        event.preventDefault();
        problem.hidden = true;
        try {
          await start(token.value.trim());
        } catch (err) {
          problem.textContent = `Not signed in: ${err.message}`;
          problem.hidden = false;
        }
      },
    },
    h("h1", {}, "Sign in"),
    h("label", {}, "Paste your access token (make run prints a dev token; agentry token --role viewer makes one)", token),
    h("button", { type: "submit" }, "Sign in"),
    problem,
  );
  section.append(form);
  token.focus();
}

/** Signs in with `token`: asks the gateway who it names; raises when it refuses. */
async function start(token) {
  signIn(token);
  try {
    session.me = await api("GET", "/v1/me");
  } catch (err) {
    signOut();
    throw err;
  }
  document.getElementById("who").textContent = `${session.me.subject} · ${session.me.role}`;
  document.getElementById("who").dataset.role = session.me.role;
  document.getElementById("nav").hidden = false;
  document.getElementById("sign-out").hidden = false;
  live.start(token);
  if (!location.hash || location.hash === "#/login") location.hash = "#/runs";
  else route();
}

function stop() {
  signOut();
  live.stop();
  document.getElementById("who").textContent = "";
  document.getElementById("nav").hidden = true;
  document.getElementById("sign-out").hidden = true;
  route();
}

document.getElementById("sign-out").addEventListener("click", stop);
window.addEventListener("hashchange", route);

if (session.token) {
  start(session.token).catch((err) => {
    showError(err, "signing in again");
    route();
  });
} else {
  route();
}
