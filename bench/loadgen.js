'use strict';
/*
 * Load generator for bench/run.py.  One scenario per process:
 *
 *   node loadgen.js '<json config>'
 *
 * The result is one JSON line on stdout, prefixed with "RESULT ".  Progress
 * goes to stderr.  With "pause": true the generator prints "READY <json>"
 * once its connections are open and waits for a line on stdin before it
 * starts the load (or, for "connections", before it closes them), so that
 * run.py can measure memory or attach a profiler at the right moment.
 *
 * Deliveries are matched by a marker in the record id ("<marker>-<i>"), not
 * by message format, so the same code counts Yeti's and HarperDB's
 * WebSocket and SSE messages.  The generator's own CPU time is measured over
 * the load window (process.cpuUsage) and reported, so a saturated generator
 * is visible in the table.  The fan-out scenario spreads its subscribers over
 * `generators` forked processes (this file, scenario "subscribers") so that
 * one Node process is not the bottleneck; see fanout().
 *
 * Config fields: scenario (fanout | fanin | rest | connections | durability),
 * host, port, tls, wsPath, ssePath, postPath, getPath (prefix for /<id>),
 * auth (Authorization header value or null), transport (ws | sse),
 * subscribers, generators, records, clients, requests, connections,
 * probePath/probePort, marker, idleTimeout (s), concurrency (connection opens
 * in flight, per process).
 */

const { fork } = require('child_process');
const http = require('http');
const https = require('https');
const { performance } = require('perf_hooks');
const readline = require('readline');
const WebSocket = require('ws');

const cfg = JSON.parse(process.argv[2]);
const lib = cfg.tls ? https : http;
const scheme = cfg.tls ? 'wss' : 'ws';
const baseHeaders = cfg.auth ? { Authorization: cfg.auth } : {};

function log(...args) {
  process.stderr.write(`[loadgen] ${args.join(' ')}\n`);
}

function finish(result) {
  process.stdout.write('RESULT ' + JSON.stringify(result) + '\n', () => process.exit(0));
}

function waitForGo(info) {
  if (!cfg.pause) return Promise.resolve();
  process.stdout.write('READY ' + JSON.stringify(info || {}) + '\n');
  return new Promise((resolve) => {
    const rl = readline.createInterface({ input: process.stdin });
    rl.once('line', () => { rl.close(); resolve(); });
  });
}

/* Milliseconds on CLOCK_MONOTONIC (process.hrtime): comparable across processes on Linux. */
function now() {
  return Number(process.hrtime.bigint()) / 1e6;
}

/* The next IPC message of `type` from `peer` (a child, or `process` in a child). */
function message(peer, type) {
  return new Promise((resolve, reject) => {
    const onMessage = (m) => { if (m && m.type === type) { off(); resolve(m); } };
    const onExit = (code) => { off(); reject(new Error(`subscriber process exited with ${code} before "${type}"`)); };
    const off = () => { peer.off('message', onMessage); peer.off('exit', onExit); };
    peer.on('message', onMessage);
    if (peer !== process) peer.on('exit', onExit);
  });
}

function sleep(ms) {
  return new Promise((r) => setTimeout(r, ms));
}

function percentiles(values, count) {
  const n = count === undefined ? values.length : count;
  if (n === 0) return { p50: null, p99: null, max: null };
  const sorted = values.subarray ? values.subarray(0, n).sort() : values.slice(0, n).sort((a, b) => a - b);
  const at = (q) => sorted[Math.min(n - 1, Math.floor(q * n))];
  return { p50: at(0.5), p99: at(0.99), max: sorted[n - 1] };
}

function cpuWindow() {
  const start = process.cpuUsage();
  const t0 = performance.now();
  return () => {
    const used = process.cpuUsage(start);
    const wall = performance.now() - t0;
    const cpuMs = (used.user + used.system) / 1000;
    return { cpu_ms: cpuMs, wall_ms: wall, cpu_pct: wall > 0 ? (100 * cpuMs) / wall : 0 };
  };
}

function agent(maxSockets) {
  const opts = { keepAlive: true, maxSockets };
  if (cfg.tls) opts.rejectUnauthorized = false;
  return new lib.Agent(opts);
}

/* One HTTP request on a keep-alive agent; resolves {status, body}. */
function request(ag, method, path, body, port) {
  return new Promise((resolve, reject) => {
    const headers = Object.assign({}, baseHeaders);
    let data = null;
    if (body !== undefined) {
      data = Buffer.from(JSON.stringify(body));
      headers['Content-Type'] = 'application/json';
      headers['Content-Length'] = data.length;
    }
    const req = lib.request({
      host: cfg.host, port: port || cfg.port, path, method, headers, agent: ag,
      rejectUnauthorized: false,
    }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode, body: Buffer.concat(chunks) }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(data);
  });
}

/* Find "<marker>-<digits>" in a buffer or string; return the index or -1. */
function makeMatcher(marker) {
  const needle = Buffer.from(marker + '-');
  return function indexOf(buf, from) {
    const at = buf.indexOf(needle, from || 0);
    if (at < 0) return -1;
    let i = at + needle.length;
    let n = 0;
    let digits = 0;
    while (i < buf.length) {
      const c = buf[i];
      if (c < 48 || c > 57) break;
      n = n * 10 + (c - 48);
      i++;
      digits++;
    }
    return digits ? n : -1;
  };
}

/* Open `count` connections with at most `cfg.concurrency` handshakes in flight. */
async function openMany(count, openOne) {
  const conns = new Array(count);
  let next = 0;
  let failed = 0;
  const errors = {};
  async function worker() {
    while (next < count) {
      const k = next++;
      try {
        conns[k] = await openOne(k);
      } catch (e) {
        failed++;
        const key = String(e && (e.code || e.message) || e);
        errors[key] = (errors[key] || 0) + 1;
      }
    }
  }
  const workers = [];
  for (let w = 0; w < (cfg.concurrency || 50); w++) workers.push(worker());
  await Promise.all(workers);
  return { conns: conns.filter(Boolean), failed, errors };
}

function openWs(path, onMessage) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`${scheme}://${cfg.host}:${cfg.port}${path}`, {
      headers: baseHeaders, rejectUnauthorized: false, perMessageDeflate: false,
    });
    ws.closedEarly = false;
    const timer = setTimeout(() => { ws.terminate(); reject(new Error('open timeout')); }, 30000);
    ws.once('open', () => { clearTimeout(timer); resolve(ws); });
    ws.once('error', (e) => { clearTimeout(timer); reject(e); });
    if (onMessage) ws.on('message', onMessage);
  });
}

/*
 * An SSE subscriber: calls onEvent(buffer) once per complete event.  It counts
 * as open once its request is sent: some servers (HarperDB) send no response
 * headers until the first event, so run.py waits a moment after opening.
 */
function openSse(path, onEvent) {
  return new Promise((resolve, reject) => {
    const stream = { req: null, res: null, status: null, closedEarly: false };
    const req = lib.get({
      host: cfg.host, port: cfg.port, path, agent: false, rejectUnauthorized: false,
      headers: Object.assign({ Accept: 'text/event-stream' }, baseHeaders),
    }, (res) => {
      stream.res = res;
      stream.status = res.statusCode;
      if (res.statusCode !== 200) {
        res.resume();
        return;
      }
      let pending = null;
      const sep = Buffer.from('\n\n');
      res.on('data', (chunk) => {
        const buf = pending ? Buffer.concat([pending, chunk]) : chunk;
        let start = 0;
        for (;;) {
          const end = buf.indexOf(sep, start);
          if (end < 0) break;
          onEvent(buf.subarray(start, end));
          start = end + 2;
        }
        pending = start < buf.length ? buf.subarray(start) : null;
      });
    });
    stream.req = req;
    stream.close = () => req.destroy();
    stream.terminate = () => req.destroy();
    req.on('error', (e) => { if (!stream.sent) reject(e); });
    req.on('finish', () => { stream.sent = true; resolve(stream); });
    req.on('close', () => { if (stream.sent) stream.closedEarly = true; });
  });
}

// -- scenarios ---------------------------------------------------------------

/*
 * Fan-out, writer side: this process forks `generators` subscriber processes
 * (this file again, scenario "subscribers"), each holding a share of the N
 * subscribers; once all are connected (a barrier) it POSTs the M records and
 * merges their reports.  Times are process.hrtime (CLOCK_MONOTONIC on Linux:
 * one clock for every process), so latency = POST sent (here) -> message
 * received (there).  Every subscriber lives in exactly one process, so the
 * summed delivered / missing / duplicated counts are exact.
 */
async function fanout() {
  const N = cfg.subscribers;
  const M = cfg.records;
  const K = Math.max(1, Math.min(cfg.generators || 1, N));
  const children = [];
  for (let g = 0; g < K; g++) {
    const share = Math.floor(N / K) + (g < N % K ? 1 : 0);
    const childCfg = Object.assign({}, cfg, { scenario: 'subscribers', subscribers: share, pause: false });
    children.push(fork(__filename, [JSON.stringify(childCfg)], {
      serialization: 'advanced', stdio: ['ignore', 'ignore', 'inherit', 'ipc'],
    }));
  }
  const ready = await Promise.all(children.map((c) => message(c, 'ready')));
  const open = ready.reduce((a, r) => a + r.open, 0);
  await waitForGo({ open });

  const reports = Promise.all(children.map((c) => message(c, 'report')));
  for (const c of children) c.send({ type: 'go' });
  const writer = agent(1);
  const sentAt = new Float64Array(M);
  let postErrors = 0;
  const cpu = cpuWindow();
  const firstPost = now();
  for (let i = 0; i < M; i++) {
    sentAt[i] = now();
    try {
      const r = await request(writer, 'POST', cfg.postPath,
        { id: `${cfg.marker}-${i}`, title: cfg.marker, content: 'benchmark record with a short body' });
      if (r.status !== 200 && r.status !== 201 && r.status !== 204) {
        postErrors++;
        if (postErrors < 3) log(`POST status ${r.status}: ${r.body.toString().slice(0, 200)}`);
      }
    } catch (e) {
      postErrors++;
      if (postErrors < 3) log(`POST failed: ${e.message}`);
    }
  }
  const lastPost = now();
  for (const c of children) c.send({ type: 'drain', sentAt });
  const parts = await reports;
  const gen = cpu();

  const sum = (key) => parts.reduce((a, p) => a + p[key], 0);
  const delivered = sum('delivered');
  const latency = new Float32Array(delivered);
  let at = 0;
  for (const p of parts) { latency.set(p.latency, at); at += p.latency.length; }
  const closeCodes = {};
  const openErrors = {};
  for (const p of parts) {
    for (const [k, v] of Object.entries(p.close_codes)) closeCodes[k] = (closeCodes[k] || 0) + v;
    for (const [k, v] of Object.entries(p.open_errors)) openErrors[k] = (openErrors[k] || 0) + v;
  }
  const lastDelivery = Math.max(0, ...parts.map((p) => p.last_delivery));
  const elapsed = (lastDelivery || lastPost) - firstPost;
  // Generator CPU: the sum over the writer and every subscriber process, over the writer's window.
  const processes = [Object.assign({ role: 'writer' }, gen)]
    .concat(parts.map((p) => Object.assign({ role: 'subscribers', subscribers: p.subscribers }, p.generator)));
  const cpuMs = processes.reduce((a, p) => a + p.cpu_ms, 0);
  finish({
    subscribers: open, generators: K, failed_opens: sum('failed_opens'), open_errors: openErrors,
    records: M, delivered, expected: open * M, missing: Math.max(0, N * M - delivered),
    duplicated: sum('duplicated'), foreign: sum('foreign'),
    post_errors: postErrors, bad_status: sum('bad_status'), closed_early: sum('closed_early'), close_codes: closeCodes,
    post_seconds: (lastPost - firstPost) / 1000, seconds: elapsed / 1000,
    msgs_per_s: elapsed > 0 ? delivered / (elapsed / 1000) : 0,
    posts_per_s: M / ((lastPost - firstPost) / 1000),
    latency_ms: percentiles(latency, delivered),
    generator: { cpu_ms: cpuMs, wall_ms: gen.wall_ms, cpu_pct: gen.wall_ms > 0 ? (100 * cpuMs) / gen.wall_ms : 0, processes },
  });
}

/* Fan-out, subscriber side (a process forked by fanout()): talks to it over IPC. */
async function subscribers() {
  process.on('disconnect', () => process.exit(1)); // the writer is gone
  const N = cfg.subscribers;
  const M = cfg.records;
  const match = makeMatcher(cfg.marker);
  const seen = new Uint8Array(N * M);
  const base = now();
  const receivedAt = new Float32Array(N * M); // ms after `base`, per (subscriber, record)
  let delivered = 0;
  let duplicated = 0;
  let foreign = 0;
  let lastDelivery = 0;
  let closedEarly = 0;
  const closeCodes = {};
  let doneResolve = null;
  const done = new Promise((r) => { doneResolve = r; });

  function onPayload(k, buf) {
    const t = now();
    const i = match(buf);
    if (i < 0 || i >= M) { foreign++; return; }
    const slot = k * M + i;
    if (seen[slot]) { duplicated++; return; }
    seen[slot] = 1;
    receivedAt[slot] = t - base;
    delivered++;
    lastDelivery = t;
    if (delivered === N * M) doneResolve();
  }

  const t0 = now();
  const opened = await openMany(N, (k) => {
    if (cfg.transport === 'sse') {
      return openSse(cfg.ssePath, (ev) => onPayload(k, ev));
    }
    return openWs(cfg.wsPath, (data) => onPayload(k, data)).then((ws) => {
      ws.on('close', (code) => { closedEarly++; closeCodes[code] = (closeCodes[code] || 0) + 1; });
      return ws;
    });
  });
  log(`fanout: ${opened.conns.length}/${N} ${cfg.transport} subscribers open in ${((now() - t0) / 1000).toFixed(1)} s (pid ${process.pid})`);
  // Let the server finish its side of the handshakes (SSE: process the requests).
  await sleep(cfg.transport === 'sse' ? 2000 : 500);
  const go = message(process, 'go');
  const drain = message(process, 'drain');
  process.send({ type: 'ready', open: opened.conns.length });
  await go;
  const cpu = cpuWindow();
  const { sentAt } = await drain; // the writer has sent its last POST
  // Wait for the rest, until nothing arrives for idleTimeout seconds.
  const idleMs = (cfg.idleTimeout || 10) * 1000;
  for (;;) {
    const before = delivered;
    const r = await Promise.race([done.then(() => 'done'), sleep(idleMs).then(() => 'idle')]);
    if (r === 'done' || delivered === before) break;
  }
  const gen = cpu();
  if (cfg.transport === 'sse') {
    for (const st of opened.conns) if (st.closedEarly) closedEarly++;
  }
  const latency = new Float32Array(delivered);
  let j = 0;
  for (let slot = 0; slot < N * M; slot++) {
    if (seen[slot]) latency[j++] = base + receivedAt[slot] - sentAt[slot % M];
  }
  const badStatus = opened.conns.filter((st) => st.status !== undefined && st.status !== null && st.status !== 200 && st.status !== 101).length;
  for (const c of opened.conns) {
    if (c.terminate) c.terminate(); else c.close();
  }
  process.send({
    type: 'report', subscribers: opened.conns.length, failed_opens: opened.failed, open_errors: opened.errors,
    delivered, duplicated, foreign, bad_status: badStatus, closed_early: closedEarly, close_codes: closeCodes,
    last_delivery: lastDelivery, latency, generator: gen,
  }, () => process.exit(0));
}

async function fanin() {
  const C = cfg.clients;
  const K = cfg.records; // per client
  const match = makeMatcher(cfg.marker);
  const total = C * K;
  const seen = new Uint8Array(total);
  let observed = 0;
  let lastObserved = 0;
  let doneResolve = null;
  const done = new Promise((r) => { doneResolve = r; });
  const observer = await openWs(cfg.wsPath, (data) => {
    const i = match(data);
    if (i < 0 || i >= total || seen[i]) return;
    seen[i] = 1;
    observed++;
    lastObserved = performance.now();
    if (observed === total) doneResolve();
  });
  const errorsSeen = { count: 0, sample: null };
  const opened = await openMany(C, () => openWs(cfg.wsPath, (data) => {
    if (data.indexOf('"Error"') >= 0 || data.indexOf('"error"') >= 0) {
      errorsSeen.count++;
      if (!errorsSeen.sample) errorsSeen.sample = data.toString().slice(0, 200);
    }
  }));
  await sleep(300);
  const cpu = cpuWindow();
  const t0 = performance.now();
  opened.conns.forEach((ws, c) => {
    for (let j = 0; j < K; j++) {
      const i = c * K + j;
      ws.send(JSON.stringify({ id: `${cfg.marker}-${i}`, title: cfg.marker, content: 'fan-in record' }));
    }
  });
  const idleMs = (cfg.idleTimeout || 10) * 1000;
  for (;;) {
    const before = observed;
    const r = await Promise.race([done.then(() => 'done'), sleep(idleMs).then(() => 'idle')]);
    if (r === 'done' || observed === before) break;
  }
  const gen = cpu();
  const elapsed = (lastObserved || performance.now()) - t0;
  observer.terminate();
  for (const ws of opened.conns) ws.terminate();
  finish({
    clients: opened.conns.length, sent: opened.conns.length * K, observed,
    seconds: elapsed / 1000, observed_per_s: observed ? observed / (elapsed / 1000) : 0,
    error_messages: errorsSeen.count, error_sample: errorsSeen.sample, generator: gen,
  });
}

async function restLoad(kind, ids) {
  const C = cfg.clients;
  const total = cfg.requests;
  const lat = new Float64Array(total);
  let issued = 0;
  let done = 0;
  let errors = 0;
  let sample = null;
  const written = [];
  async function client(c) {
    const ag = agent(1);
    while (issued < total) {
      const n = issued++;
      const t = performance.now();
      try {
        let r;
        if (kind === 'write') {
          const id = `${cfg.marker}-${n}`;
          r = await request(ag, 'POST', cfg.postPath, { id, title: cfg.marker, content: 'rest write' });
          written.push(id);
        } else {
          r = await request(ag, 'GET', cfg.getPath + '/' + encodeURIComponent(ids[n % ids.length]));
        }
        if (r.status >= 300) {
          errors++;
          if (!sample) sample = `${r.status} ${r.body.toString().slice(0, 200)}`;
        }
      } catch (e) {
        errors++;
        if (!sample) sample = e.message;
      }
      lat[done++] = performance.now() - t;
    }
    ag.destroy();
  }
  const cpu = cpuWindow();
  const t0 = performance.now();
  // Reactor probe: a trivial request, back to back, on its own connection.
  const probe = { lat: [], stop: false };
  let probeDone = Promise.resolve();
  if (cfg.probePort) {
    const pag = new http.Agent({ keepAlive: true, maxSockets: 1 });
    probeDone = (async () => {
      while (!probe.stop) {
        const t = performance.now();
        try {
          await new Promise((resolve, reject) => {
            http.get({ host: cfg.host, port: cfg.probePort, path: cfg.probePath, agent: pag }, (res) => {
              res.resume();
              res.on('end', resolve);
            }).on('error', reject);
          });
        } catch (e) { /* counted as a gap */ }
        probe.lat.push(performance.now() - t);
        await sleep(2);
      }
      pag.destroy();
    })();
  }
  const clients = [];
  for (let c = 0; c < C; c++) clients.push(client(c));
  await Promise.all(clients);
  const seconds = (performance.now() - t0) / 1000;
  probe.stop = true;
  await probeDone;
  const gen = cpu();
  return {
    requests: done, errors, error_sample: sample, seconds, per_s: done / seconds,
    latency_ms: percentiles(lat, done), generator: gen, written,
    probe_ms: cfg.probePort ? Object.assign({ samples: probe.lat.length }, percentiles(probe.lat)) : null,
  };
}

async function rest() {
  const writes = await restLoad('write');
  const ids = writes.written;
  delete writes.written;
  const reads = await restLoad('read', ids.length ? ids : ['missing']);
  delete reads.written;
  finish({ writes, reads });
}

async function durability() {
  const ag = agent(1);
  const n = cfg.requests;
  const lat = new Float64Array(n);
  let errors = 0;
  const cpu = cpuWindow();
  const t0 = performance.now();
  for (let i = 0; i < n; i++) {
    const t = performance.now();
    const r = await request(ag, 'POST', cfg.postPath, { id: `${cfg.marker}-${i}`, title: cfg.marker, content: 'durable write' });
    if (r.status >= 300) errors++;
    lat[i] = performance.now() - t;
  }
  const seconds = (performance.now() - t0) / 1000;
  finish({ requests: n, errors, seconds, per_s: n / seconds, latency_ms: percentiles(lat), generator: cpu() });
}

async function connections() {
  const N = cfg.connections;
  const t0 = performance.now();
  let closedEarly = 0;
  const opened = await openMany(N, () => openWs(cfg.wsPath).then((ws) => {
    ws.on('close', () => { closedEarly++; });
    ws.on('error', () => {});
    return ws;
  }));
  const openSeconds = (performance.now() - t0) / 1000;
  log(`connections: ${opened.conns.length}/${N} open in ${openSeconds.toFixed(1)} s`);
  await sleep(1000);
  await waitForGo({ open: opened.conns.length - closedEarly });
  const stillOpen = opened.conns.filter((ws) => ws.readyState === WebSocket.OPEN).length;
  for (const ws of opened.conns) ws.terminate();
  finish({ requested: N, opened: opened.conns.length, failed: opened.failed, errors: opened.errors,
    closed_early: closedEarly, still_open: stillOpen, open_seconds: openSeconds });
}

const scenarios = { fanout, subscribers, fanin, rest, durability, connections };
scenarios[cfg.scenario]().catch((e) => {
  log('failed:', e && e.stack || e);
  process.exit(2);
});
