// The panel that takes the log's place: a thread (GET ...messages?thread=) or search
// results (GET /v1/search). Both leave with app.closeSearch(), back to the open channel.
import {h, clear} from './dom.js';
import {renderMessage} from './messages.js';

export async function showThread(app, root) {
  const {messages} = await app.api.get(`/v1/channels/${root.channel_id}/messages?thread=${root.seq}&limit=200`);
  const ctx = {...app.context(), editing: null, picker: null, act: (action, m) => {
    if (action === 'reply') { app.closeSearch(); app.setReply(root); }
  }};
  const close = h('button', {type: 'button', onclick: () => app.closeSearch()}, 'Close thread');
  clear(app.results).append(
    h('header', {}, h('h2', {}, `Thread: ${app.nameOf(root.sender_id)}`), close),
    h('div', {class: 'thread'}, [root, ...messages].map((m) => {
      const el = renderMessage({...m, reply_count: 0}, ctx);
      el.querySelector('.actions')?.replaceChildren(
        h('button', {type: 'button', onclick: () => { app.closeSearch(); app.setReply(root); }}, 'Reply'));
      return el;
    })));
  app.results.setAttribute('aria-label', 'Thread');
  app.results.hidden = false;
  app.chat.hidden = true;
  close.focus();
}

export async function runSearch(app, q) {
  if (!q) { app.closeSearch(); return; }
  app.results.setAttribute('aria-label', 'Search results');
  clear(app.results).append(h('header', {}, h('h2', {}, `Results for “${q}”`),
    h('button', {type: 'button', onclick: () => app.closeSearch()}, 'Close search')));
  app.results.hidden = false;
  app.chat.hidden = true;
  app.empty.hidden = true;
  app.shell.classList.add('show-chat');
  try {
    const {results} = await app.api.get(`/v1/search?q=${encodeURIComponent(q)}&limit=50`);
    const list = h('ul', {});
    for (const r of results) {
      const ch = app.channels.get(r.channel_id);
      list.append(h('li', {}, h('button', {type: 'button', class: 'result', onclick: () => app.openChannel(r.channel_id)},
        h('span', {class: 'where'}, `${ch ? app.channelName(ch) : 'channel'} · ${app.nameOf(r.sender_id)}`),
        h('span', {class: 'text'}, r.text))));
    }
    app.results.append(results.length ? list : h('p', {}, 'No messages found.'));
  } catch (e) {
    app.results.append(h('p', {class: 'error'}, `Search failed: ${e.message}`));
  }
}
