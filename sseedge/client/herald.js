// herald.js: the browser client of Herald's SSE edge.
//
// It reads the edge's event stream (GET /v1/events) with fetch, so that the
// token travels in the Authorization header and the client sees every status
// code and retry: field, and it:
//   - resumes from its cursor (Last-Event-ID) after any break, and drops an
//     event it already had, so the application sees each event once, in order;
//   - hands herald.reset to onReset, so the application re-fetches its state;
//   - acknowledges the user's notifications in batches (POST /v1/ack), so that
//     an ack-or-push notification it received is not pushed too;
//   - asks the application for a new token before the current one expires,
//     and after a 401, and moves the stream to it without a gap;
//   - waits between attempts at least the edge's retry:, backing off with
//     jitter, and stops on herald.replaced instead of taking its place back.
//
// A dependency-free ES module, served by the edge at /v1/herald.js, with its
// declarations at /v1/herald.d.ts. It defines no globals.

const RESET_EVENT = "herald.reset";
const REPLACED_EVENT = "herald.replaced";

// The most ids one POST /v1/ack takes (the edge's maxAckIDs).
const MAX_ACK_IDS = 256;
// The most ids waiting to be acknowledged; older ones are dropped (a
// reconnect's Last-Event-ID acknowledges them anyway).
const MAX_PENDING_ACKS = 4 * MAX_ACK_IDS;
// The most text one event, or one line, may hold before the client calls the
// stream broken; the edge's events are far smaller.
const MAX_EVENT_CHARS = 4 << 20;

const DEFAULTS = Object.freeze({
  ackDelay: 250,
  autoAck: true,
  retry: 1000,
  maxRetry: 30000,
  refreshMargin: 60000,
  connectTimeout: 15000,
  stallTimeout: 45000,
  requestTimeout: 10000,
  tokenTimeout: 30000,
  resumeOnVisible: true,
});

/** An error from the edge (with its HTTP status and error code) or the client. */
export class HeraldError extends Error {
  constructor(message, status = 0, code = "") {
    super(message);
    this.name = "HeraldError";
    this.status = status;
    this.code = code;
  }
}

/** Opens a stream at once; see HeraldClient. */
export function connect(options) {
  return new HeraldClient(options);
}

/** One stream from a Herald edge, kept open until close(). */
export class HeraldClient {
  #o;
  #events; // URL of /v1/events, with the topics
  #ackURL;
  #state = "";
  #closed = false;
  #cursor = "";
  #pos = new Map(); // stream name ("" for the user's) -> BigInt position
  #retry = null; // ms, from the last retry: field
  #failures = 0; // attempts in a row that did not open a stream

  #token = "";
  #tokenExpires = 0; // ms since the epoch, by this clock; 0 when unknown
  #tokenFlight = null;
  #refreshTimer = 0;

  #stream = null; // {ctrl, why} of the stream being read
  #wake = null; // cuts a wait short
  #offVisible = null;

  #acks = [];
  #ackTimer = 0;
  #offPageHide = null;

  constructor(options) {
    if (options === null || typeof options !== "object") {
      throw new TypeError("herald: connect needs an options object");
    }
    const o = { ...DEFAULTS };
    for (const [k, v] of Object.entries(options)) {
      if (v !== undefined) o[k] = v; // an option given as undefined keeps its default
    }
    if (typeof o.token !== "string" && typeof o.token !== "function") {
      throw new TypeError("herald: options.token must be a token string or a function that returns one");
    }
    if (o.token === "") {
      throw new TypeError("herald: options.token is empty");
    }
    const topics = o.topics ?? [];
    if (!Array.isArray(topics) || topics.some((t) => typeof t !== "string" || t === "")) {
      throw new TypeError("herald: options.topics must be an array of topic names");
    }
    if (new Set(topics).size !== topics.length) {
      throw new TypeError("herald: options.topics repeats a topic");
    }
    for (const k of ["ackDelay", "retry", "maxRetry", "refreshMargin", "connectTimeout", "stallTimeout", "requestTimeout", "tokenTimeout"]) {
      if (typeof o[k] !== "number" || !(o[k] >= 0)) {
        throw new TypeError(`herald: options.${k} must be a number of milliseconds`);
      }
    }
    if (o.lastEventId != null && typeof o.lastEventId !== "string") {
      throw new TypeError("herald: options.lastEventId must be a string");
    }
    this.#o = o;
    // The edge that served this module, unless told otherwise.
    const base = o.url != null ? new URL(o.url, globalThis.location?.href) : new URL("../", import.meta.url);
    if (!base.pathname.endsWith("/")) base.pathname += "/";
    this.#events = new URL("v1/events", base);
    for (const t of topics) this.#events.searchParams.append("topic", t);
    this.#ackURL = new URL("v1/ack", base);
    if (typeof o.token === "string") this.#setToken(o.token);
    if (o.lastEventId) this.#advance(o.lastEventId);

    if (typeof globalThis.addEventListener === "function") {
      const flush = () => this.#flushAcks();
      globalThis.addEventListener("pagehide", flush);
      this.#offPageHide = () => globalThis.removeEventListener("pagehide", flush);
    }
    this.#setState("connecting");
    this.#run();
  }

  /** "connecting", "open", "reconnecting", "replaced" or "closed". */
  get state() {
    return this.#state;
  }

  /** The cursor: the id of the last event handed to the application. */
  get lastEventId() {
    return this.#cursor;
  }

  /**
   * Reconnects at once: after herald.replaced (when the user is back on this
   * tab), or to cut a backoff short. It does nothing once closed.
   */
  reconnect() {
    if (this.#closed) return;
    if (this.#stream === null) this.#wakeUp();
  }

  /** Closes the stream for good, after sending the acknowledgements it holds. */
  close() {
    if (this.#closed) return;
    this.#closed = true;
    this.#flushAcks();
    clearTimeout(this.#ackTimer);
    clearTimeout(this.#refreshTimer);
    this.#offPageHide?.();
    this.#offVisible?.();
    this.#abortStream("close");
    this.#wakeUp();
    this.#setState("closed");
  }

  // --- the connection loop ---

  async #run() {
    while (!this.#closed) {
      let delay;
      try {
        delay = await this.#attempt();
      } catch (err) {
        if (this.#closed) break;
        this.#report(err);
        this.#failures++;
        delay = this.#backoff();
      }
      if (this.#closed) break;
      if (this.#state === "replaced") {
        await this.#waitForUser();
        this.#retry = null; // the next stream sends its own
        this.#failures = 0;
        continue;
      }
      if (delay > 0) {
        this.#setState("reconnecting");
        await this.#sleep(delay);
      }
    }
  }

  // #attempt opens one stream and reads it to its end. It returns how long to
  // wait before the next attempt.
  async #attempt() {
    const token = await this.#currentToken();
    if (this.#closed) return 0;
    const ctrl = new AbortController();
    const stream = { ctrl, why: "" };
    this.#stream = stream;
    try {
      return await this.#read(stream, token);
    } finally {
      this.#stream = null;
    }
  }

  async #read(stream, token) {
    const headers = { Accept: "text/event-stream", Authorization: "Bearer " + token };
    if (this.#cursor !== "") headers["Last-Event-ID"] = this.#cursor;
    const connectTimer = setTimeout(() => this.#abortStream("timeout", stream), this.#o.connectTimeout);
    let res;
    try {
      res = await fetch(this.#events, { headers, cache: "no-store", signal: stream.ctrl.signal });
    } catch (err) {
      if (stream.why === "refresh" || stream.why === "close") return 0;
      throw new HeraldError("herald: cannot reach the edge: " + (stream.why === "timeout" ? "no answer within connectTimeout" : err.message));
    } finally {
      clearTimeout(connectTimer);
    }
    if (res.status !== 200) {
      return this.#refused(res, token);
    }
    this.#authFailed = false;
    const type = res.headers.get("Content-Type") ?? "";
    if (!type.startsWith("text/event-stream")) {
      res.body?.cancel().catch(() => {});
      throw new HeraldError(`herald: the edge answered ${type || "no content type"}, not text/event-stream`);
    }

    // Read the stream, cut it if nothing arrives within stallTimeout.
    const parser = new Parser((ev) => this.#dispatch(ev), (ms) => { this.#retry = ms; });
    let stall = 0;
    const armStall = () => {
      clearTimeout(stall);
      stall = setTimeout(() => this.#abortStream("stall", stream), this.#o.stallTimeout);
    };
    armStall();
    const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
    let opened = false;
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        armStall();
        if (!opened) {
          opened = true;
          this.#failures = 0;
          this.#setState("open");
        }
        parser.push(value);
        if (this.#state === "replaced") {
          this.#abortStream("replaced", stream);
          return 0;
        }
      }
    } catch (err) {
      if (stream.why === "") throw new HeraldError("herald: the stream broke: " + err.message);
      if (stream.why === "stall") throw new HeraldError("herald: the stream went silent for stallTimeout");
    } finally {
      clearTimeout(stall);
      reader.cancel().catch(() => {});
    }
    if (stream.why === "refresh" || stream.why === "close") return 0;
    // The edge ended the stream (draining, a slow client, a lost broker...):
    // come back after its retry:, with some jitter.
    if (!opened) this.#failures++;
    return this.#backoff();
  }

  #authFailed = false;

  // #refused handles a stream request the edge did not accept.
  async #refused(res, token) {
    let code = "", message = "";
    try {
      const body = await res.json();
      code = String(body.error ?? "");
      message = String(body.message ?? "");
    } catch {
      // not JSON: a proxy's page, say
    }
    const err = new HeraldError(`herald: the edge refused the stream: ${res.status} ${code || res.statusText}${message ? ": " + message : ""}`, res.status, code);
    if (res.status === 401 && typeof this.#o.token === "function") {
      // A token the edge no longer takes: ask for a new one and come back at
      // once, but only once in a row.
      if (!this.#authFailed && this.#token === token) {
        this.#authFailed = true;
        this.#tokenExpires = 1; // stale: #currentToken asks again
        return 0;
      }
      this.#authFailed = false;
      this.#tokenExpires = 1;
    }
    const fatal = [400, 403, 404, 405, 414].includes(res.status) ||
      (res.status === 401 && typeof this.#o.token !== "function");
    if (fatal) {
      // Asking again would get the same answer.
      this.#report(err);
      this.close();
      return 0;
    }
    this.#report(err);
    this.#failures++;
    let delay = this.#backoff();
    const after = Number(res.headers.get("Retry-After"));
    if (after > 0) delay = Math.max(delay, after * 1000 * (1 + Math.random() / 2));
    return delay;
  }

  // #backoff is the wait before the next attempt: at least the edge's
  // retry:, doubled for each failure in a row up to maxRetry, plus up to half
  // again of jitter, so that clients cut off together do not come back
  // together.
  #backoff() {
    const base = this.#retry ?? this.#o.retry;
    const n = Math.min(this.#failures, 16);
    const d = Math.max(base, Math.min(this.#o.maxRetry, base * 2 ** n));
    return d * (1 + Math.random() / 2);
  }

  #sleep(ms) {
    return new Promise((resolve) => {
      const t = setTimeout(done, ms);
      const self = this;
      function done() {
        clearTimeout(t);
        if (self.#wake === done) self.#wake = null;
        resolve();
      }
      this.#wake = done;
    });
  }

  #wakeUp() {
    const w = this.#wake;
    this.#wake = null;
    w?.();
  }

  // #waitForUser waits, after herald.replaced, until reconnect() is called
  // or (with resumeOnVisible) the user comes back to a tab they had left.
  #waitForUser() {
    return new Promise((resolve) => {
      const done = () => {
        this.#offVisible?.();
        this.#offVisible = null;
        if (this.#wake === done) this.#wake = null;
        resolve();
      };
      this.#wake = done;
      const doc = globalThis.document;
      if (this.#o.resumeOnVisible && doc && typeof doc.addEventListener === "function") {
        let left = doc.visibilityState === "hidden";
        const on = () => {
          if (doc.visibilityState === "hidden") left = true;
          else if (left && !this.#closed) {
            this.#setState("reconnecting");
            done();
          }
        };
        doc.addEventListener("visibilitychange", on);
        this.#offVisible = () => doc.removeEventListener("visibilitychange", on);
      }
    });
  }

  #abortStream(why, stream = this.#stream) {
    if (stream === null || stream.why !== "") return;
    stream.why = why;
    stream.ctrl.abort();
  }

  // --- events ---

  #dispatch(ev) {
    // close() from a callback: the rest of the chunk is not handed on.
    if (this.#closed) return;
    if (ev.data === null) {
      // An id alone (the edge's first frame): the cursor, nothing to hand on.
      if (ev.id !== "") this.#advance(ev.id);
      return;
    }
    if (ev.event === REPLACED_EVENT) {
      this.#setState("replaced");
      this.#call("onReplaced", parseJSON(ev.data));
      return;
    }
    if (ev.event === RESET_EVENT) {
      // The positions jump to the newest events: take them as they are.
      this.#pos.clear();
      this.#advance(ev.id);
      const info = parseJSON(ev.data) ?? {};
      this.#call("onReset", { reason: String(info.reason ?? "unknown"), streams: Array.isArray(info.streams) ? info.streams : [] });
      return;
    }
    const moved = this.#advance(ev.id);
    if (moved === null) return; // had it: a duplicate
    if (moved === "" && this.#o.autoAck) this.#queueAck(ev.id);
    this.#call("onEvent", { id: ev.id, event: ev.event, data: ev.data });
  }

  // #advance moves the cursor to id if id is past it. It returns the name of
  // the stream the event moved ("" for the user's), or null when the event
  // is not past the cursor (a duplicate). An id it cannot read moves the
  // cursor, and is handed on.
  #advance(id) {
    const next = parseCursor(id);
    if (next === null) {
      this.#cursor = id;
      return "?";
    }
    let moved = null;
    for (const [name, p] of next) {
      const had = this.#pos.get(name);
      if (had === undefined || p > had) {
        if (moved === null || name === "") moved = name;
        this.#pos.set(name, p);
      }
    }
    if (moved !== null || this.#cursor === "") this.#cursor = id;
    return moved;
  }

  #call(name, arg) {
    const f = this.#o[name];
    if (typeof f !== "function") return;
    try {
      f(arg);
    } catch (err) {
      if (name === "onError") throw err;
      this.#report(err);
    }
  }

  #report(err) {
    if (typeof this.#o.onError === "function") this.#call("onError", err);
    else console.warn(err);
  }

  #setState(s) {
    if (this.#state === s) return;
    this.#state = s;
    this.#call("onStateChange", s);
  }

  // --- acknowledgements ---

  #queueAck(id) {
    this.#acks.push(id);
    if (this.#acks.length > MAX_PENDING_ACKS) this.#acks.splice(0, this.#acks.length - MAX_PENDING_ACKS);
    if (this.#acks.length >= MAX_ACK_IDS) {
      this.#flushAcks();
    } else if (this.#ackTimer === 0) {
      this.#ackTimer = setTimeout(() => this.#flushAcks(), this.#o.ackDelay);
    }
  }

  #flushAcks() {
    clearTimeout(this.#ackTimer);
    this.#ackTimer = 0;
    while (this.#acks.length > 0 && this.#token !== "") {
      this.#postAcks(this.#acks.splice(0, MAX_ACK_IDS), true);
    }
  }

  async #postAcks(ids, again) {
    let res;
    try {
      res = await fetch(this.#ackURL, {
        method: "POST",
        headers: { Authorization: "Bearer " + this.#token, "Content-Type": "application/json" },
        body: JSON.stringify({ ids }),
        keepalive: true,
        cache: "no-store",
        signal: AbortSignal.timeout(this.#o.requestTimeout),
      });
    } catch (err) {
      this.#report(new HeraldError("herald: acknowledging failed: " + err.message));
      if (again && !this.#closed) setTimeout(() => this.#postAcks(ids, false), this.#backoff());
      return;
    }
    if (res.ok) {
      const out = await res.json().catch(() => null);
      if (out) this.#call("onAck", { acked: out.acked | 0, late: out.late | 0, unknown: out.unknown | 0 });
      return;
    }
    this.#report(new HeraldError(`herald: acknowledging failed: ${res.status}`, res.status));
    if (!again || this.#closed) return;
    if (res.status === 401 && typeof this.#o.token === "function") {
      try {
        await this.#currentToken(true);
      } catch {
        return;
      }
      this.#postAcks(ids, false);
    } else if (res.status >= 500) {
      setTimeout(() => this.#postAcks(ids, false), this.#backoff());
    }
  }

  // --- tokens ---

  // #currentToken returns the token to use, asking the application for a
  // new one when it has none, it is about to expire, or force is set. Calls
  // made while one is being fetched share it.
  async #currentToken(force = false) {
    const source = this.#o.token;
    if (typeof source === "string") return source;
    if (!force && this.#token !== "" && (this.#tokenExpires === 0 || this.#tokenExpires - Date.now() > 1000)) {
      return this.#token;
    }
    if (this.#tokenFlight === null) {
      this.#tokenFlight = this.#fetchToken(source).finally(() => {
        this.#tokenFlight = null;
      });
    }
    return this.#tokenFlight;
  }

  async #fetchToken(source) {
    let timer = 0;
    const timeout = new Promise((_, reject) => {
      timer = setTimeout(() => reject(new HeraldError("herald: options.token did not return within tokenTimeout")), this.#o.tokenTimeout);
    });
    try {
      const tok = await Promise.race([Promise.resolve().then(() => source()), timeout]);
      if (typeof tok !== "string" || tok === "") {
        throw new HeraldError("herald: options.token returned no token");
      }
      this.#setToken(tok);
      // A stream open with the old token moves to the new one.
      this.#abortStream("refresh");
      return tok;
    } finally {
      clearTimeout(timer);
    }
  }

  // #setToken keeps tok and, when tok is a JWT with an exp claim and the
  // client can ask for another, schedules its refresh: refreshMargin before
  // it expires, or a quarter of its lifetime for a short-lived one.
  #setToken(tok) {
    this.#token = tok;
    this.#tokenExpires = 0;
    clearTimeout(this.#refreshTimer);
    const claims = jwtClaims(tok);
    if (!claims || typeof claims.exp !== "number") return;
    const now = Date.now();
    let left = claims.exp * 1000 - now;
    if (typeof claims.iat === "number" && claims.exp > claims.iat) {
      // A clock far off the issuer's would refresh much too early or late;
      // then trust the token's lifetime over this clock.
      const life = (claims.exp - claims.iat) * 1000;
      if (left > life + 60000 || left <= 0) left = life;
    }
    this.#tokenExpires = now + left;
    if (typeof this.#o.token !== "function" || this.#closed) return;
    const margin = Math.min(this.#o.refreshMargin, left / 4);
    // setTimeout takes at most 2^31-1 ms (24.8 days).
    this.#refreshTimer = setTimeout(() => this.#refresh(), Math.min(2 ** 31 - 1, Math.max(0, left - margin)));
  }

  // #refresh gets a new token, which moves the stream to it: the stream is
  // closed and opened again at once from the cursor, so nothing is lost and,
  // with one stream at a time, nothing comes twice nor makes another tab
  // give way.
  async #refresh() {
    try {
      await this.#currentToken(true);
    } catch (err) {
      this.#report(err);
      // Try again before the token runs out; the loop asks anyway when a
      // stream must be opened.
      if (!this.#closed && this.#tokenExpires - Date.now() > 2000) {
        this.#refreshTimer = setTimeout(() => this.#refresh(), 1000);
      }
    }
  }
}

// Parser reads the event-stream format (WHATWG HTML, "Server-sent events")
// from chunks of text and calls onEvent for each event: {id, event, data},
// where data is null for a block that carried no data: field.
class Parser {
  #buf = "";
  #first = true;
  #id = "";
  #event = "";
  #data = [];
  #size = 0;
  #onEvent;
  #onRetry;

  constructor(onEvent, onRetry) {
    this.#onEvent = onEvent;
    this.#onRetry = onRetry;
  }

  push(text) {
    let buf = this.#buf + text;
    if (this.#first && buf.length > 0) {
      this.#first = false;
      if (buf.charCodeAt(0) === 0xfeff) buf = buf.slice(1);
    }
    let i = 0;
    for (;;) {
      const lf = buf.indexOf("\n", i);
      const cr = buf.indexOf("\r", i);
      let end, next;
      if (cr >= 0 && (lf < 0 || cr < lf)) {
        if (cr + 1 === buf.length) break; // a CRLF may be cut in two
        end = cr;
        next = buf.charCodeAt(cr + 1) === 10 ? cr + 2 : cr + 1;
      } else if (lf >= 0) {
        end = lf;
        next = lf + 1;
      } else {
        break;
      }
      this.#line(buf.slice(i, end));
      i = next;
    }
    this.#buf = buf.slice(i);
    if (this.#buf.length + this.#size > MAX_EVENT_CHARS) {
      throw new HeraldError("herald: an event over the size limit");
    }
  }

  #line(line) {
    if (line === "") {
      this.#dispatch();
      return;
    }
    if (line.charCodeAt(0) === 58) return; // ":": a comment (heartbeat)
    const colon = line.indexOf(":");
    let field = line, value = "";
    if (colon >= 0) {
      field = line.slice(0, colon);
      value = line.slice(colon + 1);
      if (value.charCodeAt(0) === 32) value = value.slice(1);
    }
    switch (field) {
      case "data":
        this.#data.push(value);
        this.#size += value.length + 1;
        if (this.#size > MAX_EVENT_CHARS) throw new HeraldError("herald: an event over the size limit");
        break;
      case "event":
        this.#event = value;
        break;
      case "id":
        if (!value.includes("\0")) this.#id = value;
        break;
      case "retry":
        if (/^[0-9]+$/.test(value)) this.#onRetry(Number(value));
        break;
    }
  }

  #dispatch() {
    const ev = {
      id: this.#id,
      event: this.#event || "message",
      data: this.#data.length > 0 ? this.#data.join("\n") : null,
    };
    this.#event = "";
    this.#data = [];
    this.#size = 0;
    // The id carries over to the next event, as in EventSource; a block
    // with neither id nor data moves nothing.
    if (ev.data !== null || ev.id !== "") this.#onEvent(ev);
  }
}

// parseCursor reads an SSE id of the edge ("<user pos>" then ";topic=pos"
// for each topic) into a Map of BigInt positions by stream ("" is the
// user's), or null if it is not one.
function parseCursor(id) {
  if (typeof id !== "string" || id === "") return null;
  const parts = id.split(";");
  const out = new Map();
  if (!/^[0-9]+$/.test(parts[0])) return null;
  out.set("", BigInt(parts[0]));
  for (const p of parts.slice(1)) {
    const eq = p.lastIndexOf("=");
    const pos = p.slice(eq + 1);
    if (eq <= 0 || !/^[0-9]+$/.test(pos)) return null;
    out.set(p.slice(0, eq), BigInt(pos));
  }
  return out;
}

// jwtClaims returns the claims of a JWT, unverified (only to read exp), or
// null if tok is not one.
function jwtClaims(tok) {
  const parts = tok.split(".");
  if (parts.length !== 3) return null;
  try {
    const b64 = parts[1].replace(/-/g, "+").replace(/_/g, "/");
    const bin = atob(b64 + "=".repeat((4 - (b64.length % 4)) % 4));
    const bytes = Uint8Array.from(bin, (c) => c.charCodeAt(0));
    const claims = JSON.parse(new TextDecoder().decode(bytes));
    return claims !== null && typeof claims === "object" ? claims : null;
  } catch {
    return null;
  }
}

function parseJSON(s) {
  try {
    return JSON.parse(s);
  } catch {
    return null;
  }
}
