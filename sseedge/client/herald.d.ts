// Type declarations of herald.js, the browser client of Herald's SSE edge.
// Served by the edge at /v1/herald.d.ts, beside /v1/herald.js.

/** Where a client is: it is "open" while it reads a stream. */
export type HeraldState = "connecting" | "open" | "reconnecting" | "replaced" | "closed";

/** One notification as the edge wrote it. */
export interface HeraldEvent {
  /** The SSE id: the client's cursor just past this event. */
  id: string;
  /** The event name the backend gave, or "message". */
  event: string;
  /** The payload, as text (lines joined with "\n"). */
  data: string;
}

/** What a herald.reset event says: events were lost; re-fetch the state. */
export interface HeraldReset {
  /** Why, for example "history_gap". */
  reason: string;
  /** The streams that lost events: "user" or "topic:<name>". */
  streams: string[];
}

/** What one POST /v1/ack did. */
export interface HeraldAckResult {
  /** Acknowledged in time: they will not be pushed. */
  acked: number;
  /** Acknowledged after their fallback push. */
  late: number;
  /** With no receipt: fire-and-forget events, or acknowledged before. */
  unknown: number;
}

export interface HeraldOptions {
  /**
   * The client's token (a JWT), or a function that returns one. A function
   * is called before the first stream, shortly before the token expires
   * (from its exp claim) and after the edge refuses it with 401; a string
   * token cannot be refreshed.
   */
  token: string | (() => string | Promise<string>);
  /**
   * The edge's base URL; /v1/events and /v1/ack are under it. Default: the
   * edge this module was loaded from.
   */
  url?: string | URL;
  /** Topics to read besides the user's own stream. */
  topics?: string[];
  /** A cursor to resume from, as lastEventId gave it (after a reload, say). */
  lastEventId?: string;

  /** Each notification, once, in order. */
  onEvent?: (event: HeraldEvent) => void;
  /** herald.reset: events were lost beyond history; re-fetch the state. */
  onReset?: (reset: HeraldReset) => void;
  /**
   * herald.replaced: the user opened more streams than the edge allows and
   * a newer one took this one's place. The client stops; it comes back by
   * itself when the user returns to the tab (resumeOnVisible), or on
   * reconnect().
   */
  onReplaced?: (info: { reason: string } | null) => void;
  onStateChange?: (state: HeraldState) => void;
  /** Errors the client recovers from, and the one that closed it. */
  onError?: (error: Error) => void;
  /** The outcome of each acknowledgement sent. */
  onAck?: (result: HeraldAckResult) => void;

  /** Acknowledge the user's notifications automatically. Default true. */
  autoAck?: boolean;
  /** How long acknowledgements wait to be sent in one batch, in ms. Default 250. */
  ackDelay?: number;
  /** The wait before reconnecting until the edge sends retry:, in ms. Default 1000. */
  retry?: number;
  /** The longest backoff between failed attempts, in ms (never below the edge's retry:). Default 30000. */
  maxRetry?: number;
  /** How long before expiry a token is refreshed, in ms (at most a quarter of its life). Default 60000. */
  refreshMargin?: number;
  /** How long a stream request may take to be answered, in ms. Default 15000. */
  connectTimeout?: number;
  /** How long a stream may stay silent before it is reopened, in ms; keep it above the edge's heartbeat. Default 45000. */
  stallTimeout?: number;
  /** The deadline of each acknowledgement request, in ms. Default 10000. */
  requestTimeout?: number;
  /** How long the token function may take, in ms. Default 30000. */
  tokenTimeout?: number;
  /** After herald.replaced, reconnect when the user comes back to the tab. Default true. */
  resumeOnVisible?: boolean;
}

/** An error from the edge (status and code from its JSON body) or the client (status 0). */
export declare class HeraldError extends Error {
  constructor(message: string, status?: number, code?: string);
  readonly status: number;
  readonly code: string;
}

/** One stream from a Herald edge, kept open until close(). */
export declare class HeraldClient {
  constructor(options: HeraldOptions);
  readonly state: HeraldState;
  /** The id of the last event handed to onEvent (or onReset). */
  readonly lastEventId: string;
  /** Reconnects at once: after herald.replaced, or to cut a backoff short. */
  reconnect(): void;
  /** Sends the pending acknowledgements and closes the stream for good. */
  close(): void;
}

/** Opens a stream at once. */
export declare function connect(options: HeraldOptions): HeraldClient;
