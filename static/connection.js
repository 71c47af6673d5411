// One WebSocket to the jam server speaking protocol v2 (binary msgpack maps), with automatic
// reconnect: a dropped connection re-joins the same room, so a flaky network costs a gap in the
// stream, not the session.
import { Stateful } from "./state.js";
import { encode, decode } from "./vendor/msgpack/index.mjs";

const PROTOCOL_VERSION = 2;
const FIRST_RETRY_MS = 500;
const MAX_RETRY_MS = 8000;
// Errors after which retrying cannot help: the page shows them and stops.
const FATAL_ERROR_CODES = new Set(["room_not_found", "bad_token", "unsupported_protocol", "room_full", "too_many_rooms"]);

export function socketUrl(location) {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}/ws`;
}

export class JamConnection extends Stateful {
  /**
   * @param {string} url WebSocket URL of the server's /ws endpoint.
   * @param {{room?: string, token?: string}} join Room to join (none creates one) and host token.
   */
  constructor(url, join) {
    super("connecting");
    this.url = url;
    this.room = join.room || null;
    this.token = join.token || null;
    this.onmessage = () => {};
    this.socket = null;
    this.retryMs = FIRST_RETRY_MS;
    this.retryTimer = null;
    this.stopped = false;
  }

  open() {
    this.stopped = false;
    if (this.state !== "reconnecting") this.setState("connecting");
    const socket = new WebSocket(this.url);
    socket.binaryType = "arraybuffer";
    socket.addEventListener("open", () => {
      this.retryMs = FIRST_RETRY_MS;
      const join = { type: "join", protocol: PROTOCOL_VERSION };
      if (this.room) join.room = this.room;
      if (this.token) join.token = this.token;
      socket.send(encode(join));
    });
    socket.addEventListener("message", (event) => this.receive(event.data));
    socket.addEventListener("close", () => this.scheduleReconnect(socket));
    socket.addEventListener("error", () => {}); // "close" follows and handles it.
    this.socket = socket;
  }

  /** Send one control message; returns false when there is no open connection to carry it. */
  send(message) {
    if (!this.socket || this.socket.readyState !== WebSocket.OPEN) return false;
    this.socket.send(encode(message));
    return true;
  }

  close() {
    this.stopped = true;
    clearTimeout(this.retryTimer);
    if (this.socket) this.socket.close();
    this.setState("closed");
  }

  receive(data) {
    let message;
    try {
      message = decode(new Uint8Array(data));
    } catch (error) {
      this.onmessage({ type: "error", code: "bad_message", message: `undecodable message: ${error.message}` });
      return;
    }
    if (!message || typeof message.type !== "string") return;
    if (message.type === "welcome") {
      // Remember the room the server created, so a reconnect lands in the same one.
      this.room = message.room;
      if (message.token) this.token = message.token;
      this.setState("connected");
    }
    if (message.type === "error" && FATAL_ERROR_CODES.has(message.code)) this.close();
    this.onmessage(message);
  }

  scheduleReconnect(socket) {
    if (socket !== this.socket || this.stopped) return;
    this.setState("reconnecting");
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => this.open(), this.retryMs);
    this.retryMs = Math.min(this.retryMs * 2, MAX_RETRY_MS);
  }
}
