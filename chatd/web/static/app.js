// The signed-in client: channel list, open channel, composer, and the protocol state behind them.
//
// State rules (PROTOCOL §1, §3-§5, §10): a channel's unread count is last_seq - read_seq, both
// only moving forward, so replayed events never count twice; messages are keyed by
// (sender, client_msg_id), so the echo of a send, its ack and a retry's duplicate ack all land
// on one message; pending sends live in localStorage until acknowledged and are resent with
// the same client_msg_id after every reconnect (the server answers a retry with the original ack).
import {Api} from './api.js';
import {Connection} from './conn.js';
import {h, clear, randomId} from './dom.js';
import {keyOf, renderMessage, tickEl} from './messages.js';
import {PeoplePicker} from './people.js';
import {runSearch, showThread} from './panels.js';
import {Notifier} from './notify.js';

const PAGE = 50;
const MAX_REPLAY = 2000;      // further behind than this: a fresh snapshot beats replaying
const TYPING_SEND_MS = 3000;  // at most one typing frame per channel this often
const TYPING_SHOW_MS = 6000;  // how long "typing…" stays without a new frame

export class App {
  constructor(root, session, onLogout) {
    this.root = root;
    this.session = session;
    this.me = session.user_id;
    this.onLogout = onLogout;
    this.api = new Api(session.token);
    this.api.onUnauthorized = () => this.onLogout();
    this.users = new Map();
    this.channels = new Map();
    this.presence = new Map();
    this.snapshot = false;
    this.view = null;          // the open channel: {id, msgs, members, receipts, ...}
    this.inflight = new Set();
    this.outbox = this.load('outbox', []);
    this.pendingDelivered = new Map();
    this.deliveredTimer = null;
    this.lastTyping = 0;
    this.typers = new Map();
    this.replyTo = null;
    this.failures = 0;
    this.mediaUrls = new Map();
    this.notifier = new Notifier(this.api, session.device_id);
    this.buildShell();
    this.conn = new Connection(session.token, {
      welcome: (w) => this.onWelcome(w),
      event: (e) => this.onEvent(e),
      live: () => this.flushOutbox(),  // a retry at once: a lost ack comes back as a duplicate
      synced: () => this.onSynced(),
      frame: (f) => this.onFrame(f),
      state: (s) => this.onConnState(s),
      closed: () => this.onLogout(),
    });
  }

  // --- persistence (per user, so two accounts in one browser do not mix) -----------------

  load(name, fallback) {
    try { return JSON.parse(localStorage.getItem(`chatd.${name}.${this.me}`)) ?? fallback; } catch (e) { return fallback; }
  }

  save(name, value) { localStorage.setItem(`chatd.${name}.${this.me}`, JSON.stringify(value)); }

  // --- start and stop ----------------------------------------------------------------------

  async start() {
    this.conn.start();  // in parallel with /v1/me: the channel list waits for the welcome, not for this
    this.loadProfile();
    this.onFocus = () => this.maybeRead();
    window.addEventListener('focus', this.onFocus);
    document.addEventListener('visibilitychange', this.onFocus);
    this.onHash = () => this.openFromHash();
    window.addEventListener('hashchange', this.onHash);
    this.notifier.start((id) => this.openChannel(id));
  }

  stop() {
    this.conn.stop();
    window.removeEventListener('focus', this.onFocus);
    document.removeEventListener('visibilitychange', this.onFocus);
    window.removeEventListener('hashchange', this.onHash);
    for (const url of this.mediaUrls.values()) if (typeof url === 'string') URL.revokeObjectURL(url);
  }

  async loadProfile() {
    try {
      this.profile = await this.api.get('/v1/me');
      this.meName.textContent = this.profile.display_name || this.profile.username;
    } catch (e) { /* a 401 logs out (Api.onUnauthorized); otherwise the name shows after a reconnect */ }
  }

  async logout() {
    try { await this.api.post('/v1/logout'); } catch (e) { /* the token is dropped either way */ }
    this.onLogout();
  }

  // --- the connection ----------------------------------------------------------------------

  async onWelcome(w) {
    let cursor = Number(this.load('cursor', 0));
    const stale = cursor <= 0 || cursor > w.inbox_head || w.inbox_head - cursor > MAX_REPLAY;
    if (!this.snapshot || stale) {
      await this.loadSnapshot();
      if (stale) {
        cursor = w.inbox_head;
        this.save('cursor', cursor);
        if (this.view) this.openChannel(this.view.id);
      }
    }
    return cursor;
  }

  onSynced() {
    this.save('cursor', this.conn.cursor);
    this.flushOutbox();
    this.flushDelivered();
    this.subscribePresence();
    this.maybeRead();
  }

  onConnState(state) {
    if (state !== 'online') this.inflight.clear();
    if (state === 'online') {
      this.failures = 0;
      if (!this.profile) this.loadProfile();
    } else if (state === 'offline' && ++this.failures % 3 === 0) {
      // A refused upgrade (a revoked token) looks like a network failure to a page:
      // ask over HTTP, whose 401 logs out.
      this.api.get('/v1/me').catch(() => {});
    }
    this.setConn(state === 'online' ? '' : state === 'connecting' ? 'Connecting…' : 'Offline — reconnecting…');
  }

  setConn(text) {
    this.connLine.textContent = text;
    this.connLine.hidden = !text;
  }

  async loadSnapshot() {
    for (;;) {
      try {
        const [chans, people] = await Promise.all([this.api.get('/v1/channels'), this.api.get('/v1/users?query=&limit=200')]);
        for (const u of people.users) this.users.set(u.user_id, u);
        const seen = new Set();
        for (const c of chans.channels) {
          seen.add(c.channel_id);
          const old = this.channels.get(c.channel_id);
          this.channels.set(c.channel_id, {...old, ...c, unread: Math.max(0, c.last_seq - c.read_seq)});
          if (c.unread > 0) this.queueDelivered(c.channel_id, c.last_seq);
        }
        for (const id of [...this.channels.keys()]) if (!seen.has(id)) this.channels.delete(id);
        this.snapshot = true;
        this.renderChannels();
        this.fillDetails();
        if (!this.view) this.openFromHash();
        return;
      } catch (e) {
        if (e.status === 401) throw e;
        await new Promise((r) => setTimeout(r, 1000 + Math.random() * 2000));
      }
    }
  }

  /** What the channel object lacks: a DM's other member and each channel's last activity. */
  async fillDetails() {
    const todo = [...this.channels.values()].filter((c) => !c.detailed);
    const worker = async () => {
      for (let c = todo.shift(); c; c = todo.shift()) {
        c.detailed = true;
        try {
          if (c.kind === 'dm') {
            const full = await this.api.get(`/v1/channels/${c.channel_id}`);
            c.members = full.members;
          }
          if (c.last_seq > 0 && !c.lastAt) {
            const {messages} = await this.api.get(`/v1/channels/${c.channel_id}/messages?limit=1`);
            if (messages.length) c.lastAt = Date.parse(messages[0].created_at);
          }
        } catch (e) { c.detailed = false; }
      }
    };
    await Promise.all([worker(), worker(), worker(), worker()]);
    this.renderChannels();
    this.subscribePresence();
    if (this.view) this.renderHeader();
  }

  // --- inbox events and live frames --------------------------------------------------------

  onEvent(e) {
    switch (e.kind) {
      case 'message': this.onMessage(e); break;
      case 'receipt': this.onReceipt(e); break;
      case 'member': this.onMember(e); break;
      case 'channel': this.onChannelEvent(e); break;
      case 'edit': this.patchMessage(e.channel_id, e.seq, {text: e.text, edited_at: e.edited_at, mentions: e.mentions}); break;
      case 'delete': this.patchMessage(e.channel_id, e.seq, {deleted: true, text: '', media: []}); break;
      case 'reaction': this.refetchMessage(e.channel_id, e.seq); break;
      default: break;
    }
    this.save('cursor', e.inbox_seq);
  }

  onFrame(f) {
    switch (f.type) {
      case 'ack': this.onAck(f); break;
      case 'error': this.onError(f); break;
      case 'message': this.onMessage(f); break;  // a large channel's live message
      case 'receipt_update': this.onReceipt(f); break;
      case 'presence': this.presence.set(f.user_id, f); this.renderChannels(); this.renderStatus(); break;
      case 'typing': this.onTyping(f); break;
      default: break;
    }
  }

  onMessage(m) {
    const ch = this.channels.get(m.channel_id);
    if (!ch) { this.refreshChannels(); return; }
    const isNew = m.seq > ch.last_seq;
    ch.last_seq = Math.max(ch.last_seq, m.seq);
    if (isNew) ch.lastAt = Date.parse(m.created_at) || Date.now();
    if (m.sender_id === this.me) {
      ch.read_seq = Math.max(ch.read_seq, m.seq);
      this.settle(m.client_msg_id, m);
    } else {
      this.queueDelivered(m.channel_id, m.seq);
      this.stopTyping(m.channel_id, m.sender_id);
      if (isNew && this.conn.synced) this.notifier.message(m, this.channelName(ch), this.nameOf(m.sender_id),
        this.view && this.view.id === m.channel_id);
    }
    ch.unread = Math.max(0, ch.last_seq - ch.read_seq);
    if (this.view && this.view.id === m.channel_id) {
      this.upsert(m);
      if (m.reply_to) this.refetchMessage(m.channel_id, m.reply_to);
      this.maybeRead();
    }
    this.renderChannels();
  }

  onReceipt(r) {
    const ch = this.channels.get(r.channel_id);
    if (r.user_id === this.me) {
      if (ch && r.state === 'read' && r.seq > ch.read_seq) {
        ch.read_seq = r.seq;
        ch.unread = Math.max(0, ch.last_seq - ch.read_seq);
        this.renderChannels();
      }
      return;
    }
    const v = this.view;
    if (!v || v.id !== r.channel_id) return;
    const w = v.receipts.get(r.user_id) || {d: 0, r: 0};
    if (r.state === 'read') w.r = Math.max(w.r, r.seq);
    w.d = Math.max(w.d, r.seq);
    v.receipts.set(r.user_id, w);
    this.refreshTicks();
  }

  onMember(e) {
    if (e.user_id === this.me) {
      if (e.change === 'removed') {
        this.channels.delete(e.channel_id);
        if (this.view && this.view.id === e.channel_id) this.closeChannel();
        this.renderChannels();
      } else {
        this.refreshChannels();
      }
    } else if (this.view && this.view.id === e.channel_id) {
      this.loadMembers(this.view);
    }
  }

  onChannelEvent(e) {
    const ch = this.channels.get(e.channel_id);
    if (!ch) { this.refreshChannels(); return; }
    if (e.name !== undefined) ch.name = e.name;
    this.renderChannels();
    if (this.view && this.view.id === e.channel_id) this.renderHeader();
  }

  async refreshChannels() {
    if (this.refreshing) { this.refreshAgain = true; return; }
    this.refreshing = true;
    try {
      const {channels} = await this.api.get('/v1/channels');
      for (const c of channels) {
        const old = this.channels.get(c.channel_id);
        this.channels.set(c.channel_id, {...old, ...c, unread: Math.max(0, c.last_seq - c.read_seq)});
      }
      this.renderChannels();
      await this.fillDetails();
    } catch (e) { /* the next event retries */ } finally {
      this.refreshing = false;
      if (this.refreshAgain) { this.refreshAgain = false; this.refreshChannels(); }
    }
  }

  // --- sending -----------------------------------------------------------------------------

  send(text, media = []) {
    const v = this.view;
    if (!v) return;
    const entry = {
      channel_id: v.id, client_msg_id: randomId(), text, media_ids: media.map((x) => x.media_id),
      reply_to: this.replyTo ? this.replyTo.seq : null, created_at: new Date().toISOString(), media,
    };
    this.outbox.push(entry);
    this.save('outbox', this.outbox);
    this.setReply(null);
    this.upsert(this.pendingMessage(entry), true);
    this.flushOutbox();
  }

  pendingMessage(e) {
    return {channel_id: e.channel_id, seq: null, sender_id: this.me, client_msg_id: e.client_msg_id, text: e.text,
      media: e.media || [], created_at: e.created_at, reply_to: e.reply_to, reactions: [], pending: true};
  }

  flushOutbox() {
    if (!this.conn.ready) return;
    for (const e of this.outbox) {
      if (this.inflight.has(e.client_msg_id)) continue;
      const frame = {type: 'send', channel_id: e.channel_id, client_msg_id: e.client_msg_id, text: e.text,
        ref: e.client_msg_id};
      if (e.media_ids && e.media_ids.length) frame.media_ids = e.media_ids;
      if (e.reply_to) frame.reply_to = e.reply_to;
      if (this.conn.send(frame)) this.inflight.add(e.client_msg_id);
    }
  }

  onAck(a) {
    const ch = this.channels.get(a.channel_id);
    if (ch) {
      if (a.seq > ch.last_seq) ch.lastAt = Date.parse(a.created_at) || Date.now();
      ch.last_seq = Math.max(ch.last_seq, a.seq);
      ch.read_seq = Math.max(ch.read_seq, a.seq);
      ch.unread = Math.max(0, ch.last_seq - ch.read_seq);
      this.renderChannels();
    }
    this.settle(a.client_msg_id, {seq: a.seq, created_at: a.created_at, channel_id: a.channel_id});
  }

  /** A send is done (its ack, or its own message event): out of the outbox, its seq known. */
  settle(clientMsgId, fields) {
    const i = this.outbox.findIndex((e) => e.client_msg_id === clientMsgId);
    const entry = i >= 0 ? this.outbox[i] : null;
    if (entry) {
      this.outbox.splice(i, 1);
      this.save('outbox', this.outbox);
    }
    this.inflight.delete(clientMsgId);
    const v = this.view;
    if (!v || v.id !== fields.channel_id) return;
    const key = `${this.me}:${clientMsgId}`;
    const known = v.msgs.get(key) || (entry ? this.pendingMessage(entry) : null);
    if (known) this.upsert({...known, ...fields, pending: false, sender_id: this.me, client_msg_id: clientMsgId});
  }

  onError(f) {
    const entry = f.ref && this.outbox.find((e) => e.client_msg_id === f.ref);
    if (!entry) return;
    this.inflight.delete(entry.client_msg_id);
    if (f.code === 'unavailable' || f.code === 'rate_limited') {
      setTimeout(() => this.flushOutbox(), f.retry_after_ms || 1000 + Math.random() * 1000);
      return;
    }
    this.outbox.splice(this.outbox.indexOf(entry), 1);
    this.save('outbox', this.outbox);
    if (this.view && this.view.id === entry.channel_id) {
      this.upsert({...this.pendingMessage(entry), failed: f.message || f.code});
    }
  }

  // --- receipts, typing, presence ------------------------------------------------------------

  queueDelivered(channelId, seq) {
    if ((this.pendingDelivered.get(channelId) || 0) >= seq) return;
    this.pendingDelivered.set(channelId, seq);
    if (!this.deliveredTimer) this.deliveredTimer = setTimeout(() => this.flushDelivered(), 200);
  }

  flushDelivered() {
    clearTimeout(this.deliveredTimer);
    this.deliveredTimer = null;
    if (!this.conn.ready) return;
    for (const [channelId, seq] of this.pendingDelivered) {
      this.conn.send({type: 'receipt', channel_id: channelId, seq, state: 'delivered'});
    }
    this.pendingDelivered.clear();
  }

  /** Read up to the end when the channel is open, the page visible and focused. */
  maybeRead() {
    const v = this.view;
    if (!v || !v.loaded || document.visibilityState !== 'visible' || !document.hasFocus()) return;
    const ch = this.channels.get(v.id);
    if (!ch || ch.last_seq <= (v.sentRead || 0)) return;
    if (!this.conn.ready) return;
    this.conn.send({type: 'receipt', channel_id: v.id, seq: ch.last_seq, state: 'read'});
    v.sentRead = ch.last_seq;
    ch.read_seq = Math.max(ch.read_seq, ch.last_seq);
    ch.unread = 0;
    this.renderChannels();
  }

  typed() {
    const v = this.view;
    const now = Date.now();
    if (!v || !this.conn.ready || now - this.lastTyping < TYPING_SEND_MS) return;
    this.lastTyping = now;
    this.conn.send({type: 'typing', channel_id: v.id});
  }

  onTyping(f) {
    if (f.user_id === this.me || !this.view || this.view.id !== f.channel_id) return;
    clearTimeout(this.typers.get(f.user_id));
    this.typers.set(f.user_id, setTimeout(() => this.stopTyping(f.channel_id, f.user_id), TYPING_SHOW_MS));
    this.renderStatus();
  }

  stopTyping(channelId, userId) {
    if (!this.typers.has(userId)) return;
    clearTimeout(this.typers.get(userId));
    this.typers.delete(userId);
    this.renderStatus();
  }

  subscribePresence() {
    const ids = new Set();
    for (const c of this.channels.values()) {
      const other = this.partner(c);
      if (other) ids.add(other);
    }
    if (this.view && this.view.members) for (const id of this.view.members) if (id !== this.me) ids.add(id);
    const list = [...ids].slice(0, 500).sort((a, b) => a - b);
    const signature = list.join(',');
    if (!this.conn.ready || signature === this.presenceSignature) return;
    this.presenceSignature = signature;
    this.conn.send({type: 'presence_subscribe', user_ids: list});
  }

  // --- names ---------------------------------------------------------------------------------

  nameOf(userId) {
    const u = this.users.get(userId);
    return u ? u.display_name || u.username : `User ${userId}`;
  }

  partner(c) {
    if (c.kind !== 'dm' || !c.members) return null;
    return c.members.find((id) => id !== this.me) ?? this.me;
  }

  channelName(c) {
    if (c.kind === 'dm') {
      const other = this.partner(c);
      return other ? this.nameOf(other) : 'Direct message';
    }
    return c.name || `Group ${c.channel_id}`;
  }

  // --- layout --------------------------------------------------------------------------------

  buildShell() {
    this.meName = h('strong', {class: 'me'});
    this.connLine = h('p', {class: 'conn', 'aria-live': 'polite', hidden: true});
    this.search = h('input', {type: 'search', 'aria-label': 'Search', placeholder: 'Search messages'});
    this.search.addEventListener('keydown', (e) => {
      if (e.key === 'Enter') { e.preventDefault(); this.runSearch(this.search.value.trim()); }
      if (e.key === 'Escape') { this.search.value = ''; this.closeSearch(); }
    });
    this.list = h('ul', {});
    this.nav = h('nav', {'aria-label': 'Channels'}, this.list);
    const dmPicker = new PeoplePicker(this, 'New message', false);
    const groupPicker = new PeoplePicker(this, 'New group', true);
    this.notifyButton = h('button', {type: 'button', hidden: !this.notifier.canAsk(),
      onclick: async () => { this.notifyButton.hidden = !(await this.notifier.ask()) && !this.notifier.canAsk(); }},
    'Enable notifications');
    const side = h('aside', {class: 'side'},
      h('header', {}, this.meName, this.connLine),
      this.search,
      h('div', {class: 'new'},
        h('button', {type: 'button', onclick: () => dmPicker.open()}, 'New message'),
        h('button', {type: 'button', onclick: () => groupPicker.open()}, 'New group')),
      this.nav,
      h('footer', {}, this.notifyButton, h('button', {type: 'button', onclick: () => this.logout()}, 'Log out')),
      dmPicker.dialog, groupPicker.dialog);

    this.title = h('h2', {}, 'chatd');
    this.presenceLine = h('span', {class: 'presence'});
    this.typingLine = h('span', {class: 'typing'});
    this.statusRegion = h('p', {role: 'status', class: 'status'}, this.presenceLine, ' ', this.typingLine);
    const back = h('button', {type: 'button', class: 'back', 'aria-label': 'Back to channels',
      onclick: () => this.closeChannel()}, '←');
    this.log = h('div', {role: 'log', class: 'log', 'aria-label': 'Messages', tabindex: 0});
    this.log.addEventListener('scroll', () => { if (this.log.scrollTop < 120) this.loadOlder(); });
    this.empty = h('p', {class: 'placeholder'}, 'Choose a channel, or start one with New message.');
    this.composer = this.buildComposer();
    this.results = h('section', {class: 'results', 'aria-label': 'Search results', hidden: true});
    this.chat = h('section', {class: 'chat', hidden: true},
      h('header', {}, back, h('div', {}, this.title, this.statusRegion)), this.log, this.composer);
    this.main = h('main', {class: 'main'}, this.empty, this.chat, this.results);
    this.shell = h('div', {class: 'shell'}, side, this.main);
    clear(this.root).append(this.shell);
  }

  buildComposer() {
    this.input = h('textarea', {'aria-label': 'Message', rows: 1, placeholder: 'Message', enterkeyhint: 'send'});
    this.input.addEventListener('keydown', (e) => {
      if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) { e.preventDefault(); this.submit(); }
      else if (e.key === 'Escape' && this.replyTo) { e.preventDefault(); this.setReply(null); }
    });
    this.input.addEventListener('input', () => { this.typed(); this.saveDraft(); });
    this.file = h('input', {type: 'file', id: 'attach', class: 'sr-only', multiple: true});
    this.file.addEventListener('change', () => this.uploadFiles([...this.file.files]));
    this.progress = h('div', {class: 'uploads'});
    this.replyBanner = h('div', {class: 'replying', hidden: true});
    return h('form', {class: 'composer', onsubmit: (e) => { e.preventDefault(); this.submit(); }},
      this.replyBanner, this.progress,
      h('div', {class: 'row'},
        h('label', {for: 'attach', class: 'attach', title: 'Attach file'}, h('span', {'aria-hidden': 'true'}, '📎'),
          h('span', {class: 'sr-only'}, 'Attach file')),
        this.file, this.input, h('button', {type: 'submit'}, 'Send')));
  }

  submit() {
    const text = this.input.value.trim();
    if (!text || !this.view) return;
    this.input.value = '';
    this.saveDraft();
    this.send(text);
  }

  saveDraft() {
    if (this.view) this.view.draft = this.input.value;
  }

  setReply(m) {
    this.replyTo = m;
    clear(this.replyBanner);
    this.replyBanner.hidden = !m;
    if (!m) return;
    this.replyBanner.append(h('span', {}, `Replying to ${this.nameOf(m.sender_id)}: ${(m.text || '').slice(0, 80)}`),
      h('button', {type: 'button', onclick: () => { this.setReply(null); this.input.focus(); }}, 'Cancel reply'));
    this.input.focus();
  }

  async uploadFiles(files) {
    this.file.value = '';
    const v = this.view;
    if (!v) return;
    for (const f of files) {
      const bar = h('progress', {max: 1, value: 0, 'aria-label': `Uploading ${f.name}`});
      const row = h('p', {}, f.name, ' ', bar);
      this.progress.append(row);
      try {
        const res = await this.api.upload(f, (p) => { bar.value = p; });
        row.remove();
        if (this.view !== v) continue;
        const text = this.input.value.trim();
        this.input.value = '';
        this.send(text, [{media_id: res.media_id, content_type: res.content_type || f.type, size: res.size,
          filename: f.name}]);
      } catch (e) {
        clear(row).append(h('span', {class: 'error', role: 'alert'}, `${f.name}: ${e.message}`));
        setTimeout(() => row.remove(), 8000);
      }
    }
  }

  // --- the channel list ---------------------------------------------------------------------

  renderChannels() {
    const focused = document.activeElement && this.list.contains(document.activeElement)
      ? document.activeElement.getAttribute('href') : null;
    const sorted = [...this.channels.values()].sort((a, b) =>
      (b.lastAt || 0) - (a.lastAt || 0) || (b.last_seq > 0) - (a.last_seq > 0) || b.channel_id - a.channel_id);
    clear(this.list);
    let total = 0;
    for (const c of sorted) {
      const id = c.channel_id;
      const open = this.view && this.view.id === id;
      const unread = c.unread || 0;
      total += unread;
      const other = this.partner(c);
      const status = other && this.presence.get(other);
      const dot = c.kind === 'dm'
        ? h('span', {class: `dot ${status && status.status === 'online' ? 'online' : ''}`, 'aria-hidden': 'true'})
        : h('span', {class: 'hash', 'aria-hidden': 'true'});  // '#' drawn by the stylesheet
      const link = h('a', {href: `#c${id}`, 'aria-current': open ? 'page' : null,
        'aria-describedby': unread ? `badge-${id}` : null}, dot, this.channelName(c));
      this.list.append(h('li', {class: open ? 'current' : ''}, link,
        unread ? h('span', {class: 'badge', id: `badge-${id}`, 'aria-label': `${unread} unread`},
          unread > 99 ? '99+' : String(unread)) : null));
      if (focused === `#c${id}`) link.focus();
    }
    document.title = total ? `(${total}) chatd` : 'chatd';
  }

  openFromHash() {
    const m = /^#c(\d+)$/.exec(location.hash);
    if (m && this.snapshot) this.openChannel(Number(m[1]));
  }

  // --- the open channel -----------------------------------------------------------------------

  async openChannel(id) {
    const ch = this.channels.get(id);
    if (!ch) return;
    if (location.hash !== `#c${id}`) history.replaceState(null, '', `#c${id}`);
    this.closeSearch();
    const v = {id, msgs: new Map(), seqKey: new Map(), els: new Map(), receipts: new Map(), members: ch.members || null,
      oldest: null, hasMore: true, loaded: false, editing: null, picker: null, draft: ''};
    if (this.view) this.view.draft = this.input.value;
    this.view = v;
    this.typers.clear();
    this.setReply(null);
    this.input.value = '';
    clear(this.log);
    this.empty.hidden = true;
    this.chat.hidden = false;
    this.shell.classList.add('show-chat');
    this.renderHeader();
    this.renderChannels();
    for (const e of this.outbox) if (e.channel_id === id) this.upsert(this.pendingMessage(e));
    try {
      const [page] = await Promise.all([
        this.api.get(`/v1/channels/${id}/messages?limit=${PAGE}`),
        this.loadMembers(v),
        this.loadReceipts(v, ch.last_seq),
      ]);
      if (this.view !== v) return;
      for (const m of page.messages) this.upsert(m);
      v.hasMore = page.messages.length === PAGE;
      v.loaded = true;
      this.log.scrollTop = this.log.scrollHeight;
      this.maybeRead();
      this.subscribePresence();
      if (!matchMedia('(hover: none)').matches) this.input.focus();
    } catch (e) {
      if (this.view === v) this.log.append(h('p', {class: 'error'}, 'Could not load this channel.'));
    }
  }

  closeChannel() {
    this.view = null;
    this.chat.hidden = true;
    this.empty.hidden = false;
    this.shell.classList.remove('show-chat');
    history.replaceState(null, '', location.pathname);
    this.renderChannels();
  }

  async loadMembers(v) {
    try {
      const full = await this.api.get(`/v1/channels/${v.id}`);
      v.members = full.members;
      const ch = this.channels.get(v.id);
      if (ch) { ch.members = full.members; ch.member_count = full.member_count; }
      if (this.view === v) { this.renderHeader(); this.subscribePresence(); this.refreshTicks(); }
    } catch (e) { /* the header shows less */ }
  }

  async loadReceipts(v, seq) {
    if (seq <= 0) return;
    try {
      const r = await this.api.get(`/v1/channels/${v.id}/receipts?seq=${seq}`);
      for (const m of r.members || []) {
        const w = v.receipts.get(m.user_id) || {d: 0, r: 0};
        w.d = Math.max(w.d, m.delivered_seq || 0, m.read_seq || 0);
        w.r = Math.max(w.r, m.read_seq || 0);
        v.receipts.set(m.user_id, w);
      }
      if (this.view === v) this.refreshTicks();
    } catch (e) { /* ticks then come from receipt events only */ }
  }

  async loadOlder() {
    const v = this.view;
    if (!v || !v.loaded || !v.hasMore || v.loadingOlder || !v.oldest || v.oldest <= 1) return;
    v.loadingOlder = true;
    try {
      const page = await this.api.get(`/v1/channels/${v.id}/messages?before=${v.oldest}&limit=${PAGE}`);
      if (this.view !== v) return;
      const before = this.log.scrollHeight;
      for (const m of page.messages) this.upsert(m, false);
      this.log.scrollTop += this.log.scrollHeight - before;
      v.hasMore = page.messages.length === PAGE;
    } catch (e) { /* scrolling up again retries */ } finally { v.loadingOlder = false; }
  }

  renderHeader() {
    const v = this.view;
    const ch = v && this.channels.get(v.id);
    if (!ch) return;
    const name = this.channelName(ch);
    this.title.textContent = name;
    this.log.setAttribute('aria-label', name);
    this.renderStatus();
  }

  renderStatus() {
    const v = this.view;
    const ch = v && this.channels.get(v.id);
    if (!ch) return;
    const other = this.partner(ch);
    if (other && other !== this.me) {
      const p = this.presence.get(other);
      this.presenceLine.textContent = !p ? '' : p.status === 'online' ? `${this.nameOf(other)} is online`
        : p.last_seen ? `${this.nameOf(other)} was last seen ${new Date(p.last_seen).toLocaleString()}`
          : `${this.nameOf(other)} is offline`;
    } else if (ch.kind !== 'dm') {
      const online = (v.members || []).filter((id) => id !== this.me && this.presence.get(id)?.status === 'online').length;
      this.presenceLine.textContent = `${ch.member_count} members` + (online ? `, ${online} online` : '');
    }
    const names = [...this.typers.keys()].map((id) => this.nameOf(id));
    this.typingLine.textContent = names.length === 0 ? '' : names.length === 1 ? `${names[0]} is typing…`
      : names.length === 2 ? `${names[0]} and ${names[1]} are typing…` : 'Several people are typing…';
  }

  // --- messages in the open channel ----------------------------------------------------------

  context() {
    const v = this.view;
    return {
      me: this.me,
      canDelete: Boolean(this.profile && this.profile.is_admin),
      nameOf: (id) => this.nameOf(id),
      quote: (seq) => {
        const m = v.msgs.get(v.seqKey.get(seq));
        return m ? `${this.nameOf(m.sender_id)}: ${m.deleted ? 'deleted message' : (m.text || 'attachment').slice(0, 80)}` : null;
      },
      tick: (m) => this.tickState(m),
      editing: v.editing,
      picker: v.picker,
      draft: v.editDraft,
      media: (item) => this.mediaEl(item),
      act: (action, m, arg) => this.act(action, m, arg),
    };
  }

  tickState(m) {
    if (m.failed) return 'not sent';
    if (!m.seq) return 'sending';
    const others = (this.view.members || []).filter((id) => id !== this.me);
    if (!others.length) return 'sent';
    const marks = others.map((id) => this.view.receipts.get(id) || {d: 0, r: 0});
    if (marks.every((w) => w.r >= m.seq)) return 'read';
    if (marks.every((w) => w.d >= m.seq)) return 'delivered';
    return 'sent';
  }

  refreshTicks() {
    const v = this.view;
    if (!v) return;
    for (const [key, el] of v.els) {
      const m = v.msgs.get(key);
      const tick = m && m.sender_id === this.me ? el.querySelector(':scope > footer .tick') : null;
      if (!tick) continue;
      const state = this.tickState(m);
      if (tick.getAttribute('aria-label') !== state) tick.replaceWith(tickEl(state));
    }
  }

  /** Put a message in the open channel's log, once, in seq order (pending ones last). */
  upsert(m, stick) {
    const v = this.view;
    if (!v || m.channel_id !== v.id) return;
    const key = keyOf(m);
    const old = v.msgs.get(key);
    const merged = old ? {...old, ...m} : m;
    if (old && old.seq && !m.seq) merged.seq = old.seq;  // a late pending copy never undoes an ack
    v.msgs.set(key, merged);
    if (merged.seq) {
      v.seqKey.set(merged.seq, key);
      if (!v.oldest || merged.seq < v.oldest) v.oldest = merged.seq;
    }
    const atBottom = this.log.scrollHeight - this.log.scrollTop - this.log.clientHeight < 80;
    const el = renderMessage(merged, this.context());
    const prev = v.els.get(key);
    v.els.set(key, el);
    if (prev && (prev.dataset.seq || '') === String(merged.seq || '')) {
      prev.replaceWith(el);
    } else {
      if (prev) prev.remove();
      this.log.insertBefore(el, this.nextElement(merged));
    }
    if (stick === true || (stick === undefined && atBottom)) this.log.scrollTop = this.log.scrollHeight;
  }

  nextElement(m) {
    const v = this.view;
    for (const el of this.log.children) {
      const other = v.msgs.get(el.dataset.key);
      if (!other) continue;
      if (!m.seq) continue;  // pending: after everything
      if (!other.seq || other.seq > m.seq) return el;
    }
    return null;
  }

  rerender(key) {
    const v = this.view;
    const m = v && v.msgs.get(key);
    if (m) this.upsert(m, false);
  }

  patchMessage(channelId, seq, fields) {
    const v = this.view;
    if (!v || v.id !== channelId) return;
    const key = v.seqKey.get(seq);
    const m = key && v.msgs.get(key);
    if (m) this.upsert({...m, ...fields}, false);
  }

  /** The message's current state from history: reactions and reply counts are counts, not replayable deltas. */
  async refetchMessage(channelId, seq) {
    const v = this.view;
    if (!v || v.id !== channelId || !v.seqKey.has(seq)) return;
    try {
      const {messages} = await this.api.get(`/v1/channels/${channelId}/messages?after=${seq - 1}&limit=1`);
      if (this.view === v && messages.length && messages[0].seq === seq) this.upsert(messages[0], false);
    } catch (e) { /* keeps the older state */ }
  }

  async act(action, m, arg) {
    const v = this.view;
    const key = keyOf(m);
    const path = `/v1/channels/${m.channel_id}/messages/${m.seq}`;
    try {
      switch (action) {
        case 'picker': v.picker = v.picker === key ? null : key; this.rerender(key); break;
        case 'react':
          v.picker = null;
          await this.api.put(`${path}/reactions/${encodeURIComponent(arg)}`);
          await this.refetchMessage(m.channel_id, m.seq);
          break;
        case 'unreact':
          await this.api.del(`${path}/reactions/${encodeURIComponent(arg)}`);
          await this.refetchMessage(m.channel_id, m.seq);
          break;
        case 'reply': this.setReply(m); break;
        case 'thread': await this.showThread(m); break;
        case 'edit': v.editing = key; v.editDraft = null; this.rerender(key); break;
        case 'draft': v.editDraft = arg; break;
        case 'cancel-edit': v.editing = null; this.rerender(key); this.input.focus(); break;
        case 'save': {
          const text = String(arg).trim();
          if (!text) return;
          const updated = await this.api.patch(path, {text});
          v.editing = null;
          this.upsert({...m, ...updated}, false);
          this.input.focus();
          break;
        }
        case 'delete':
          await this.api.del(path);
          this.upsert({...m, deleted: true, text: '', media: []}, false);
          break;
        default: break;
      }
    } catch (e) {
      this.flash(`Could not ${action.replace('-', ' ')}: ${e.message}`);
    }
  }

  flash(text) {
    const note = h('p', {class: 'flash', role: 'alert'}, text);
    this.chat.append(note);
    setTimeout(() => note.remove(), 5000);
  }

  mediaEl(item) {
    const name = item.filename || `file ${item.media_id}`;
    if ((item.content_type || '').startsWith('image/')) {
      const img = h('img', {class: 'media', alt: name, width: item.width || null, height: item.height || null,
        loading: 'lazy'});
      this.mediaUrl(item.media_id).then((url) => { if (url) img.src = url; });
      return img;
    }
    return h('button', {type: 'button', class: 'file', onclick: async () => {
      const url = await this.mediaUrl(item.media_id);
      if (!url) return;
      const a = h('a', {href: url, download: name});
      document.body.append(a);
      a.click();
      a.remove();
    }}, `Download ${name}`);
  }

  mediaUrl(id) {
    if (!this.mediaUrls.has(id)) this.mediaUrls.set(id, this.api.mediaUrl(id).catch(() => null));
    return this.mediaUrls.get(id);
  }

  // --- the side panel: a thread or search results (panels.js) --------------------------------

  showThread(root) { return showThread(this, root); }

  runSearch(q) { return runSearch(this, q); }

  closeSearch() {
    if (this.results.hidden) return;
    this.results.hidden = true;
    clear(this.results);
    if (this.view) this.chat.hidden = false; else { this.empty.hidden = false; this.shell.classList.remove('show-chat'); }
  }
}
