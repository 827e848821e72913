// The WebSocket of PROTOCOL §3: connect, sync from a cursor, reconnect with jittered backoff.
//
// The cursor (the highest inbox_seq applied) is saved by the app after each event, so a
// reconnect — or a reload — asks only for what it missed. Backoff is "full jitter":
// a random delay up to min(cap, base * 2^attempt), so a restarted server is not hit by
// every client at the same instant.

const BACKOFF_BASE_MS = 500;
const BACKOFF_CAP_MS = 15000;

export class Connection {
  /**
   * handlers: welcome(frame) -> Promise<cursor to sync after>, live() once sync is asked,
   * event(frame), synced(frame),
   * frame(frame) for every other type, state('connecting'|'online'|'offline'), closed(code).
   */
  constructor(token, handlers) {
    this.token = token;
    this.on = handlers;
    this.ws = null;
    this.attempt = 0;
    this.timer = null;
    this.stopped = false;
    this.cursor = 0;
    this.synced = false;
    this.heartbeatMs = 30000;
    this.lastRx = 0;
    this.lastTx = 0;
    this.ticker = setInterval(() => this.tick(), 1000);
    this.onOnline = () => { if (!this.ws) this.connectNow(); };
    window.addEventListener('online', this.onOnline);
  }

  url() {
    const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
    return `${scheme}//${location.host}/v1/ws?token=${encodeURIComponent(this.token)}`;
  }

  start() { this.connectNow(); }

  stop() {
    this.stopped = true;
    clearInterval(this.ticker);
    clearTimeout(this.timer);
    window.removeEventListener('online', this.onOnline);
    if (this.ws) { this.ws.onclose = null; this.ws.close(1000, 'bye'); this.ws = null; }
  }

  connectNow() {
    clearTimeout(this.timer);
    this.timer = null;
    if (this.stopped || this.ws) return;
    this.synced = false;
    this.live = false;
    this.lastRx = Date.now();
    this.on.state('connecting');
    const ws = new WebSocket(this.url(), 'chatd.v1.json');
    this.ws = ws;
    ws.onmessage = (msg) => this.receive(ws, msg.data);
    ws.onclose = (ev) => this.closed(ws, ev.code);
    ws.onerror = () => {};  // onclose follows; the browser already reports the failure
  }

  closed(ws, code) {
    if (this.ws !== ws) return;
    this.ws = null;
    this.synced = false;
    this.live = false;
    this.on.state('offline');
    if (code === 4001) { this.on.closed(code); return; }  // the token no longer works
    this.schedule();
  }

  schedule(maxMs) {
    if (this.stopped || this.timer) return;
    const ceiling = maxMs ?? Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** this.attempt);
    this.attempt = Math.min(this.attempt + 1, 10);
    this.timer = setTimeout(() => { this.timer = null; this.connectNow(); }, 100 + Math.random() * ceiling);
  }

  send(frame) {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return false;
    this.ws.send(JSON.stringify(frame));
    this.lastTx = Date.now();
    return true;
  }

  /** Welcomed and sync asked: sends (retries included), receipts and typing may go. */
  get ready() { return this.live && this.ws && this.ws.readyState === WebSocket.OPEN; }

  async receive(ws, data) {
    if (this.ws !== ws) return;
    this.lastRx = Date.now();
    let frame;
    try { frame = JSON.parse(data); } catch (e) { return; }
    switch (frame.type) {
      case 'welcome': {
        this.heartbeatMs = Math.max(5, frame.heartbeat_s || 30) * 1000;
        const after = await this.on.welcome(frame);
        if (this.ws !== ws) return;
        this.cursor = after;
        this.send({type: 'sync', after});
        this.live = true;
        this.on.live();
        break;
      }
      case 'event':
        if (frame.inbox_seq <= this.cursor) return;  // already applied
        this.cursor = frame.inbox_seq;
        this.on.event(frame);
        break;
      case 'synced':
        this.synced = true;
        this.attempt = 0;
        this.on.state('online');
        this.on.synced(frame);
        break;
      case 'reconnect':
        // The node drains: leave now, come back after a random part of after_ms.
        this.ws = null;
        ws.onclose = null;
        ws.close(1000, 'reconnecting');
        this.synced = false;
        this.live = false;
        this.on.state('offline');
        this.attempt = 0;
        this.schedule(frame.after_ms || 1000);
        break;
      default:
        this.on.frame(frame);
    }
  }

  tick() {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return;
    const now = Date.now();
    if (now - this.lastTx > this.heartbeatMs / 3) this.send({type: 'ping', t: now});
    // No answer to two pings: the connection is dead even if the socket has not noticed.
    if (this.lastRx && now - this.lastRx > this.heartbeatMs) {
      const ws = this.ws;
      ws.close(4000, 'no answer');
      this.closed(ws, 4000);
    }
  }
}
