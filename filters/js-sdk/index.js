// weir-filter: write Weir filters in JavaScript.
//
// A filter module exports what its world asks for (`configure` and, for
// HTTP, `httpHandler`); `httpFilter` and `dnsFilter` build both from plain
// functions and take care of what the component model wants: the
// configuration parsed as JSON, exceptions turned into a refused
// configuration or a logged failure, decisions in the WIT's shape.
//
// The component has no WASI (it is built "pure"): no console, no clock, no
// network. Everything outside the filter is `host` (weir:filter/host):
// logs, counters, a monotonic clock, shared state and token buckets.

import * as host from 'weir:filter/host@0.1.0';

export { host };

const decoder = new TextDecoder();
const encoder = new TextEncoder();

// A request head as the host hands it over: the line `METHOD path
// authority scheme`, then one `name: value` line per header (names in
// lower case). Parsed once, on first use.
export class HttpRequest {
  constructor(request) {
    this.id = request.id;
    this.raw = request.head;
    this._lines = null;
  }

  _parse() {
    if (this._lines === null) {
      this._lines = decoder.decode(this.raw).split('\n');
      const first = this._lines[0].split(' ');
      this._first = { method: first[0] ?? '', path: first[1] ?? '', authority: first[2] ?? '', scheme: first[3] ?? '' };
    }
    return this._first;
  }

  get method() { return this._parse().method; }
  // The normalized path with the query string as received (`/a/b?x=1`).
  get path() { return this._parse().path; }
  // The path without its query string.
  get pathOnly() { const p = this.path; const q = p.indexOf('?'); return q < 0 ? p : p.slice(0, q); }
  get authority() { return this._parse().authority; }
  get scheme() { return this._parse().scheme; }

  // Every header as `[name, value]`, in order.
  headers() {
    this._parse();
    const out = [];
    for (let i = 1; i < this._lines.length; i++) {
      const line = this._lines[i];
      const colon = line.indexOf(': ');
      if (colon > 0) out.push([line.slice(0, colon), line.slice(colon + 2)]);
    }
    return out;
  }

  // The first value of header `name` (any case), or undefined.
  header(name) {
    const wanted = name.toLowerCase();
    const found = this.headers().find(([n]) => n === wanted);
    return found ? found[1] : undefined;
  }
}

// Allow the request; `edits` (from `setHeader`, `appendHeader`,
// `removeHeader`) change it before it goes upstream, `matched` names what
// allowed it in the flow record.
export function allow({ edits = [], matched } = {}) {
  return { tag: 'allow', val: { edits, matched } };
}

// Refuse the request: weir answers 403 `Access denied`, or `reply`
// (from `reply(status, body, headers)`). `reason` goes to the flow.
export function deny(reason, replyWith) {
  return { tag: 'deny', val: { reason: String(reason), reply: replyWith } };
}

export function reply(status, body = '', headers = {}) {
  return {
    status,
    headers: Object.entries(headers).map(([name, value]) => ({ name, value: String(value) })),
    body: typeof body === 'string' ? encoder.encode(body) : body,
  };
}

export const setHeader = (name, value) => ({ tag: 'set', val: { name, value: String(value) } });
export const appendHeader = (name, value) => ({ tag: 'append', val: { name, value: String(value) } });
export const removeHeader = (name) => ({ tag: 'remove', val: name });

// The caller's or the callee's labels as `key=value` without their source
// (`k8s:app=web` → `app=web`), for matching against configuration.
export function labels(identity) {
  return identity.labels.map((l) => { const i = l.indexOf(':'); return i < 0 ? l : l.slice(i + 1); });
}

function message(error) {
  return error instanceof Error ? `${error.message}\n${error.stack ?? ''}`.trim() : String(error);
}

// `configure` as the component model wants it: the text parsed as JSON
// (an empty text is `{}`), a throw becomes the refusal of the
// configuration with its message.
function configurer(name, configure) {
  return function (text) {
    let config;
    try {
      config = text.trim() === '' ? {} : JSON.parse(text);
    } catch (e) {
      throw `${name} config is not JSON: ${e.message ?? e}`;
    }
    try {
      configure?.(config);
    } catch (e) {
      throw `${name} config: ${e instanceof Error ? e.message : String(e)}`;
    }
  };
}

// A call that throws is logged with its message and stack (the filter has
// no stderr), then fails as a trap: weir counts it and applies the rule's
// failure policy.
function guarded(name, call) {
  return function (...args) {
    try {
      return call(...args);
    } catch (e) {
      host.log('error', `${name}: ${message(e)}`);
      throw e;
    }
  };
}

// An HTTP filter. `onRequest(request, conn)` gets an `HttpRequest` and the
// connection (`conn.source()`, `conn.destination()`, `conn.port()`, ...)
// and returns `allow(...)` or `deny(...)`. `onResponse(response, conn)`,
// if given, returns `pass([...edits])` or `replace(reply(...))`.
//
//     const filter = httpFilter({ configure, onRequest });
//     export const configure = filter.configure;
//     export const httpHandler = filter.httpHandler;
export function httpFilter({ name = 'filter', configure, onRequest, onResponse }) {
  return {
    configure: configurer(name, configure),
    httpHandler: {
      onRequest: guarded(name, (conn, request) => onRequest(new HttpRequest(request), conn)),
      onResponse: onResponse
        ? guarded(name, (conn, response) => onResponse(response, conn))
        : () => ({ tag: 'ignore-responses' }),
    },
  };
}

export const pass = (edits = []) => ({ tag: 'pass', val: edits });
export const replace = (withReply) => ({ tag: 'replace', val: withReply });

// A DNS filter. `onQuery(query, conn)` gets `{id, questions: [{name,
// qtype, qclass}], transport}` and returns `allowQuery()` or
// `refuse(reason, 'refused' | 'nxdomain')`.
export function dnsFilter({ name = 'filter', configure, onQuery }) {
  return {
    configure: configurer(name, configure),
    dnsHandler: { onQuery: guarded(name, (conn, query) => onQuery(query, conn)) },
  };
}

export const allowQuery = (matched) => ({ tag: 'allow', val: { matched } });
export const refuse = (reason, rcode = 'refused') => ({ tag: 'deny', val: { reason: String(reason), rcode } });
