// One message as an <article> (PROTOCOL §11): sender and text, media, reactions, the
// reader's own ticks in a status, and the Edit / Delete / React / Reply buttons.
import {h, timeOf} from './dom.js';

export const REACTIONS = ['👍', '❤️', '😂', '🎉', '😮', '👀'];
const TICKS = {sending: '…', sent: '✓', delivered: '✓✓', read: '✓✓', 'not sent': '!'};

/** ctx: {me, isAdmin, nameOf(uid), quote(seq) -> string|null, tick(m) -> state,
 *  editing: key|null, picker: key|null, media(item, el), act(action, m, arg)} */
export function renderMessage(m, ctx) {
  const own = m.sender_id === ctx.me;
  const key = keyOf(m);
  const classes = ['msg'];
  if (own) classes.push('own');
  if (m.deleted) classes.push('deleted');
  if (m.failed) classes.push('failed');
  if ((m.mentions || []).includes(ctx.me)) classes.push('mention');
  const body = [];
  if (m.reply_to) {
    const quoted = ctx.quote(m.reply_to);
    body.push(h('p', {class: 'quote'}, '↪ ', quoted || `reply to message ${m.reply_to}`));
  }
  if (ctx.editing === key) {
    body.push(editor(m, ctx));
  } else if (m.deleted) {
    body.push(h('p', {class: 'text'}, 'This message was deleted.'));
  } else {
    if (m.text) body.push(h('p', {class: 'text'}, m.text));
    for (const item of m.media || []) body.push(ctx.media(item));
  }
  const reactions = (m.reactions || []).filter((r) => r.count > 0);
  if (reactions.length && !m.deleted) {
    body.push(h('div', {class: 'reactions'}, reactions.map((r) => h('button', {
      type: 'button', class: 'chip', 'aria-pressed': String(Boolean(r.me)), 'aria-label': `${r.emoji} ${r.count}`,
      title: r.me ? 'Remove your reaction' : 'React', onclick: () => ctx.act(r.me ? 'unreact' : 'react', m, r.emoji),
    }, `${r.emoji} ${r.count}`))));
  }
  if (m.reply_count > 0) {
    body.push(h('button', {type: 'button', class: 'replies', onclick: () => ctx.act('thread', m)},
      m.reply_count === 1 ? '1 reply' : `${m.reply_count} replies`));
  }
  if (ctx.picker === key) {
    body.push(h('div', {class: 'picker', role: 'group', 'aria-label': 'Choose a reaction'},
      REACTIONS.map((e) => h('button', {type: 'button', 'aria-label': e, onclick: () => ctx.act('react', m, e)}, e))));
  }
  const footer = h('footer', {},
    h('time', {datetime: m.created_at || ''}, m.created_at ? timeOf(m.created_at) : ''),
    m.edited_at && !m.deleted ? h('span', {class: 'edited'}, ' (edited)') : null,
    own ? tickEl(ctx.tick(m)) : null);
  const actions = m.seq && !m.deleted && ctx.editing !== key ? h('div', {class: 'actions'},
    h('button', {type: 'button', onclick: () => ctx.act('picker', m)}, 'React'),
    h('button', {type: 'button', onclick: () => ctx.act('reply', m)}, 'Reply'),
    own ? h('button', {type: 'button', onclick: () => ctx.act('edit', m)}, 'Edit') : null,
    own || ctx.canDelete ? h('button', {type: 'button', onclick: () => ctx.act('delete', m)}, 'Delete') : null,
  ) : null;
  if (m.failed) {
    body.push(h('p', {class: 'error'}, `Not sent: ${m.failed}`));
  }
  return h('article', {class: classes.join(' '), 'data-key': key, 'data-seq': m.seq || null},
    h('header', {}, h('strong', {class: 'sender'}, ctx.nameOf(m.sender_id))), body, footer, actions);
}

export function keyOf(m) { return `${m.sender_id}:${m.client_msg_id}`; }

export function tickEl(state) {
  return h('span', {class: `tick tick-${state.replace(' ', '-')}`, role: 'status', 'aria-label': state}, TICKS[state] || '');
}

function editor(m, ctx) {
  const box = h('textarea', {class: 'edit', 'aria-label': 'Edit message', rows: 2});
  box.value = ctx.draft ?? m.text;
  box.addEventListener('input', () => ctx.act('draft', m, box.value));
  box.addEventListener('keydown', (e) => {
    if (e.key === 'Escape') { e.preventDefault(); ctx.act('cancel-edit', m); }
    else if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) { e.preventDefault(); ctx.act('save', m, box.value); }
  });
  queueMicrotask(() => { box.focus(); box.setSelectionRange(box.value.length, box.value.length); });
  return h('div', {class: 'editor'}, box,
    h('button', {type: 'button', onclick: () => ctx.act('save', m, box.value)}, 'Save'),
    h('button', {type: 'button', onclick: () => ctx.act('cancel-edit', m)}, 'Cancel'));
}
