// Desktop notifications (Notification API) while the tab is open, and Web Push
// (PROTOCOL §7: service worker + GET /v1/push/vapid + a "webpush" subscription) for when it
// is closed. Push is best effort: a browser or network that cannot subscribe means no push,
// and the user is not bothered about it.

export class Notifier {
  constructor(api, deviceId) {
    this.api = api;
    this.deviceId = deviceId;
  }

  supported() { return 'Notification' in window; }

  canAsk() { return this.supported() && Notification.permission === 'default'; }

  start(openChannel) {
    if ('serviceWorker' in navigator) {
      navigator.serviceWorker.addEventListener('message', (e) => {
        if (e.data && e.data.open_channel) openChannel(Number(e.data.open_channel));
      });
    }
    this.openChannel = openChannel;
    if (this.supported() && Notification.permission === 'granted') this.subscribePush();
  }

  async ask() {
    if (!this.supported()) return false;
    const answer = await Notification.requestPermission();
    if (answer === 'granted') this.subscribePush();
    return answer === 'granted';
  }

  message(m, channelName, senderName, isOpen) {
    if (!this.supported() || Notification.permission !== 'granted') return;
    if (isOpen && document.visibilityState === 'visible' && document.hasFocus()) return;
    const n = new Notification(`${senderName} in ${channelName}`, {
      body: m.deleted ? '' : (m.text || 'sent an attachment').slice(0, 140), tag: `chatd-${m.channel_id}`,
    });
    n.onclick = () => { window.focus(); this.openChannel(m.channel_id); n.close(); };
  }

  async subscribePush() {
    const done = `chatd.push.${this.deviceId}`;
    if (localStorage.getItem(done) || !('serviceWorker' in navigator) || !('PushManager' in window)) return;
    try {
      const reg = await navigator.serviceWorker.register('/sw.js');
      await navigator.serviceWorker.ready;
      const {public_key: key} = await this.api.get('/v1/push/vapid');
      const sub = (await reg.pushManager.getSubscription())
        || await reg.pushManager.subscribe({userVisibleOnly: true, applicationServerKey: fromBase64Url(key)});
      const json = sub.toJSON();
      await this.api.post('/v1/push/subscriptions', {kind: 'webpush', endpoint: json.endpoint, keys: json.keys});
      localStorage.setItem(done, '1');
    } catch (e) {
      // No push service reachable, no permission, or a server without Web Push: no push.
    }
  }
}

function fromBase64Url(text) {
  const b64 = text.replace(/-/g, '+').replace(/_/g, '/') + '==='.slice((text.length + 3) % 4);
  return Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
}
