// The live event feed: one WebSocket to /v1/events (protocol in
// services/gateway/routes/events.py). The page watches one set of topics at a time; a
// dropped connection comes back and resumes after the last event it got, so nothing is
// missed.

import { showError } from "./api.js";

const RETRY_MIN_MS = 500;
const RETRY_MAX_MS = 10000;
const UNAUTHENTICATED = 4401;

export class LiveFeed {
  /** `onStatus(status, text)`: "connecting", "live", "off"; `onWatching(topics)` once the
   * gateway confirms a subscription, `onWatching(null)` while one waits for it. */
  constructor(onStatus, onWatching = () => {}) {
    this.onStatus = onStatus;
    this.onWatching = onWatching;
    this.ws = null;
    this.token = null;
    this.topics = [];
    this.handler = null;
    // Where a resumed subscription starts: the last event it delivered, else where the
    // replay asked for began, else the position the gateway confirmed.
    this.lastEvent = null;
    this.replayFrom = null;
    this.position = null;
    this.waiting = [];
    this.retryMs = RETRY_MIN_MS;
    this.timer = null;
  }

  start(token) {
    this.stop();
    this.token = token;
    this.connect();
  }

  stop() {
    this.token = null;
    clearTimeout(this.timer);
    if (this.ws) {
      this.ws.onclose = null;
      this.ws.close(1000);
      this.ws = null;
    }
    this.onStatus("off", "offline");
  }

  /** Watches `topics` ("run:<id>", "type:run.started", ...) from now on, or from `after`
   * (an event id) when given; `handler(event)` gets each event. Answers a promise that
   * settles once the gateway has confirmed the subscription (or after `timeoutMs`, so a
   * page never waits on a feed that is down). */
  watch(topics, handler, { after = null, timeoutMs = 3000 } = {}) {
    this.topics = topics;
    this.handler = handler;
    this.lastEvent = null;
    this.replayFrom = after;
    this.position = null;
    this.onWatching(null);
    for (const resolve of this.waiting.splice(0)) resolve();
    const confirmed = new Promise((resolve) => {
      this.waiting.push(resolve);
      setTimeout(resolve, timeoutMs);
    });
    this.send();
    return confirmed;
  }

  unwatch() {
    this.watch([], null, { timeoutMs: 0 });
  }

  send() {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return;
    const after = this.lastEvent || this.replayFrom || this.position;
    this.ws.send(JSON.stringify({ subscribe: this.topics, after }));
  }

  connect() {
    if (!this.token) return;
    this.onStatus("connecting", "connecting…");
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const ws = new WebSocket(`${scheme}://${location.host}/v1/events?token=${encodeURIComponent(this.token)}`);
    this.ws = ws;
    ws.onopen = () => {
      this.retryMs = RETRY_MIN_MS;
      this.onStatus("live", "live");
      this.send();
    };
    ws.onmessage = (message) => this.receive(message.data);
    ws.onclose = (event) => {
      this.ws = null;
      if (event.code === UNAUTHENTICATED) {
        this.onStatus("off", "signed out");
        showError(`the live feed closed: ${event.reason || "unauthenticated"}`);
        return;
      }
      this.onStatus("connecting", `reconnecting (${event.reason || `closed ${event.code}`})`);
      this.timer = setTimeout(() => this.connect(), this.retryMs);
      this.retryMs = Math.min(RETRY_MAX_MS, this.retryMs * 2);
    };
  }

  receive(text) {
    let frame;
    try {
      frame = JSON.parse(text);
    } catch {
      return;
    }
    if (frame.id) {
      // A resumed connection may repeat what the last one delivered.
      if (this.lastEvent && comparePositions(frame.id, this.lastEvent) <= 0) return;
      this.lastEvent = frame.id;
      if (this.handler) this.handler(frame);
    } else if (frame.type === "subscribed") {
      // The answer to an earlier subscription confirms nothing about the current one.
      if (JSON.stringify(frame.subscribe) !== JSON.stringify(this.topics)) return;
      this.position = this.position || frame.position;
      this.onWatching(frame.subscribe);
      for (const resolve of this.waiting.splice(0)) resolve();
    } else if (frame.error) {
      showError(`live feed: ${frame.error}`);
    }
  }
}

/** Orders event ids and positions: "<ms>-<seq>" (a whole stream entry) or
 * "<ms>-<seq>:<index in the entry>". */
export function comparePositions(a, b) {
  const parse = (id) => {
    const [entry, index] = id.split(":");
    const [ms, seq] = entry.split("-").map(Number);
    return [ms, seq, index === undefined ? Infinity : Number(index)];
  };
  const [x, y] = [parse(a), parse(b)];
  for (let i = 0; i < 3; i++) if (x[i] !== y[i]) return x[i] < y[i] ? -1 : 1;
  return 0;
}

/** The stream position of a moment, to replay events from it ("<ms>-0"). */
export function positionAt(iso, marginMs = 60000) {
  return `${Math.max(0, Date.parse(iso) - marginMs)}-0`;
}
