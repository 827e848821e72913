// chatd's service worker: shows Web Push notifications (PROTOCOL §7) while no tab is open,
// and focuses (or opens) the client when one is clicked. It caches nothing.
self.addEventListener('push', (event) => {
  let data = {};
  try { data = event.data ? event.data.json() : {}; } catch (e) { data = {}; }
  const title = data.channel_name ? `${data.sender_name || 'Someone'} in ${data.channel_name}` : (data.sender_name || 'chatd');
  const body = data.preview == null ? 'New message' : data.preview;
  event.waitUntil(self.registration.showNotification(title, {
    body, tag: `chatd-${data.channel_id || 0}`, data: {channel_id: data.channel_id || null},
  }));
});

self.addEventListener('notificationclick', (event) => {
  event.notification.close();
  const id = event.notification.data && event.notification.data.channel_id;
  const url = id ? `/#c${id}` : '/';
  event.waitUntil(self.clients.matchAll({type: 'window', includeUncontrolled: true}).then((list) => {
    for (const client of list) {
      if ('focus' in client) { client.postMessage({open_channel: id}); return client.focus(); }
    }
    return self.clients.openWindow(url);
  }));
});
