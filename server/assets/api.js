// The dashboard's only way to the server: same-origin fetch with the admin key in the
// Authorization header. Bearer auth (no cookies) is what makes the dashboard CSRF-safe: another
// origin can make the browser send requests here, but never with this header.

const STORAGE_KEY = 'memoryrouter.adminKey';

/** An error answer from the API, carrying the server's own `error.message`. */
export class ApiError extends Error {
  constructor(status, message, code) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.code = code ?? null;
  }
}

// A copy for when sessionStorage is unavailable (some privacy modes throw on access).
let memoryKey = null;

// sessionStorage: survives a reload of this tab, is forgotten when the tab closes, and is
// never sent anywhere by the browser on its own.
export function storedKey() {
  try {
    return sessionStorage.getItem(STORAGE_KEY) ?? memoryKey;
  } catch {
    return memoryKey;
  }
}

export function storeKey(key) {
  memoryKey = key;
  try {
    sessionStorage.setItem(STORAGE_KEY, key);
  } catch {
    // Storage disabled: the in-memory copy still works until the page is closed.
  }
}

export function forgetKey() {
  memoryKey = null;
  try {
    sessionStorage.removeItem(STORAGE_KEY);
  } catch {
    // Nothing stored.
  }
}

function buildUrl(path, query) {
  const url = new URL(path, window.location.origin);
  for (const [name, value] of Object.entries(query ?? {})) {
    if (value !== undefined && value !== null && value !== '') url.searchParams.set(name, String(value));
  }
  return url;
}

/**
 * Calls the API. Returns the parsed JSON body (or the Response itself with `raw: true`);
 * throws ApiError with the server's message on any non-2xx answer.
 */
export async function api(method, path, { query, body, key, raw = false } = {}) {
  const token = key ?? storedKey();
  const headers = { Accept: raw ? '*/*' : 'application/json' };
  if (token) headers.Authorization = `Bearer ${token}`;
  const init = { method, headers, cache: 'no-store', credentials: 'omit', redirect: 'error' };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(buildUrl(path, query), init);
  } catch (err) {
    throw new ApiError(0, `The server could not be reached (${err.message}).`, 'network_error');
  }
  if (response.ok && raw) return response;
  const text = await response.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = null;
    }
  }
  if (!response.ok) {
    const message = data?.error?.message || `${response.status} ${response.statusText || 'error'}`.trim();
    throw new ApiError(response.status, message, data?.error?.code);
  }
  return data ?? {};
}

/** The first array found under one of `names` in a response body. */
export function listIn(body, ...names) {
  if (Array.isArray(body)) return body;
  for (const name of names) {
    if (Array.isArray(body?.[name])) return body[name];
  }
  return [];
}
