// REST calls of PROTOCOL §2 and §10: JSON in, JSON out, the contract's error shape thrown.

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message || code);
    this.status = status;
    this.code = code;
  }
}

export class Api {
  constructor(token = null) { this.token = token; this.onUnauthorized = null; }

  async call(method, path, body) {
    const headers = {};
    if (this.token) headers.Authorization = `Bearer ${this.token}`;
    let payload;
    if (body !== undefined) { headers['Content-Type'] = 'application/json'; payload = JSON.stringify(body); }
    let res;
    try {
      res = await fetch(path, {method, headers, body: payload, cache: 'no-store'});
    } catch (e) {
      throw new ApiError(0, 'network', 'the server cannot be reached');
    }
    if (res.status === 204) return null;
    let data = null;
    try { data = await res.json(); } catch (e) { data = null; }
    if (!res.ok) {
      const err = (data && data.error) || {};
      if (res.status === 401 && this.token && this.onUnauthorized) this.onUnauthorized();
      throw new ApiError(res.status, err.code || 'http_' + res.status, err.message || res.statusText);
    }
    return data;
  }

  get(path) { return this.call('GET', path); }
  post(path, body) { return this.call('POST', path, body); }
  patch(path, body) { return this.call('PATCH', path, body); }
  put(path) { return this.call('PUT', path); }
  del(path) { return this.call('DELETE', path); }

  /** Upload raw bytes (POST /v1/media) with progress: XMLHttpRequest, since fetch reports none. */
  upload(file, onProgress) {
    return new Promise((resolve, reject) => {
      const xhr = new XMLHttpRequest();
      xhr.open('POST', '/v1/media?filename=' + encodeURIComponent(file.name || 'file'));
      xhr.setRequestHeader('Authorization', `Bearer ${this.token}`);
      xhr.setRequestHeader('Content-Type', file.type || 'application/octet-stream');
      xhr.upload.onprogress = (e) => { if (e.lengthComputable) onProgress(e.loaded / e.total); };
      xhr.onload = () => {
        let data = null;
        try { data = JSON.parse(xhr.responseText); } catch (e) { data = null; }
        if (xhr.status >= 200 && xhr.status < 300 && data) resolve(data);
        else {
          const err = (data && data.error) || {};
          reject(new ApiError(xhr.status, err.code || 'http_' + xhr.status, err.message || 'upload failed'));
        }
      };
      xhr.onerror = () => reject(new ApiError(0, 'network', 'the server cannot be reached'));
      xhr.send(file);
    });
  }

  /** Media bytes as an object URL (an <img> cannot send the bearer token). */
  async mediaUrl(mediaId) {
    const res = await fetch(`/v1/media/${mediaId}`, {headers: {Authorization: `Bearer ${this.token}`}});
    if (!res.ok) throw new ApiError(res.status, 'http_' + res.status, 'media unavailable');
    return URL.createObjectURL(await res.blob());
  }
}
