// The "New message" (a DM with one person) and "New group" dialogs: search users, pick, open.
import {h, clear} from './dom.js';

export class PeoplePicker {
  constructor(app, title, group) {
    this.app = app;
    this.group = group;
    this.chosen = new Map();
    this.query = h('input', {type: 'search', 'aria-label': 'Find people', placeholder: 'Find people'});
    this.query.addEventListener('input', () => this.find());
    this.list = h('ul', {class: 'people'});
    this.error = h('p', {class: 'error', role: 'alert'});
    this.name = group ? h('input', {type: 'text', 'aria-label': 'Group name', placeholder: 'Group name', maxlength: 100}) : null;
    // Enter in the search picks the first person (a DM) or does nothing (a group); the form
    // itself never submits anywhere.
    const form = h('form', {onsubmit: (e) => { e.preventDefault(); if (!group) this.list.querySelector('button')?.click(); }},
      h('h2', {}, title), this.name, this.query, this.list, this.error,
      h('div', {class: 'buttons'},
        group ? h('button', {type: 'button', onclick: () => this.createGroup()}, 'Create group') : null,
        h('button', {type: 'button', onclick: () => this.dialog.close()}, 'Cancel')));
    this.dialog = h('dialog', {'aria-label': title}, form);
  }

  open() {
    this.chosen.clear();
    this.query.value = '';
    if (this.name) this.name.value = '';
    this.error.textContent = '';
    this.dialog.showModal();
    (this.name || this.query).focus();
    this.find();
  }

  async find() {
    const q = this.query.value.trim();
    try {
      const {users} = await this.app.api.get(`/v1/users?query=${encodeURIComponent(q)}&limit=20`);
      if (q !== this.query.value.trim()) return;  // a newer search is on its way
      clear(this.list);
      for (const u of users) {
        if (u.user_id === this.app.me) continue;
        this.app.users.set(u.user_id, u);
        const label = `${u.display_name || u.username} (@${u.username})`;
        if (this.group) {
          const box = h('input', {type: 'checkbox', checked: this.chosen.has(u.user_id)});
          box.addEventListener('change', () => { if (box.checked) this.chosen.set(u.user_id, u); else this.chosen.delete(u.user_id); });
          this.list.append(h('li', {}, h('label', {}, box, ' ', label)));
        } else {
          this.list.append(h('li', {}, h('button', {type: 'button', onclick: () => this.openDm(u)}, label)));
        }
      }
      if (!this.list.firstChild) this.list.append(h('li', {class: 'none'}, 'Nobody found.'));
    } catch (e) {
      this.error.textContent = `Search failed: ${e.message}`;
    }
  }

  async openDm(user) {
    try {
      const ch = await this.app.api.post('/v1/channels', {kind: 'dm', members: [user.user_id]});
      this.opened({...ch, members: [this.app.me, user.user_id]});
    } catch (e) {
      this.error.textContent = `Could not open the conversation: ${e.message}`;
    }
  }

  async createGroup() {
    const name = this.name.value.trim();
    if (!name) { this.error.textContent = 'Give the group a name.'; this.name.focus(); return; }
    try {
      const ch = await this.app.api.post('/v1/channels', {kind: 'group', name, members: [...this.chosen.keys()]});
      this.opened(ch);
    } catch (e) {
      this.error.textContent = `Could not create the group: ${e.message}`;
    }
  }

  opened(ch) {
    const old = this.app.channels.get(ch.channel_id);
    this.app.channels.set(ch.channel_id, {...old, ...ch, unread: Math.max(0, ch.last_seq - ch.read_seq),
      lastAt: (old && old.lastAt) || Date.now(), detailed: Boolean(ch.members)});
    this.dialog.close();
    this.app.renderChannels();
    this.app.openChannel(ch.channel_id);
  }
}
