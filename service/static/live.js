// ptychoscan live view: sessions from /api/v1, updated by the server-sent events of /api/v1/events.
// Plain JS, no dependencies. The API key (if the service needs one) comes from the page's #key=... fragment
// (never sent to the server as part of the URL) or the key field, is kept in sessionStorage and sent as
// "Authorization: Apikey <key>", also on the event stream (read with fetch: EventSource cannot send headers).
'use strict';

const API = '/api/v1';
const TERMINAL = new Set(['done', 'stopped', 'failed']);
const PLASMA = [[13, 8, 135], [126, 3, 168], [204, 71, 120], [248, 149, 64], [240, 249, 33]];
const ISSUED = '#00e5ff';
const SVG_NS = 'http://www.w3.org/2000/svg';

const st = {
  key: '', sessions: new Map(), selected: null, userSelected: false,
  positionsKey: '', positionsBusy: false, positionsAgain: false, positions: null,
  reconCount: -1, recon: null, keyWaiters: [],
};

const $ = (id) => document.getElementById(id);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function hashParams() { return new URLSearchParams(location.hash.replace(/^#/, '')); }

function readKey() {
  const p = hashParams();
  if (p.has('key')) {
    sessionStorage.setItem('ptychoscan-key', p.get('key'));
    p.delete('key');
    history.replaceState(null, '', location.pathname + location.search + (p.toString() ? '#' + p : ''));
  }
  st.key = sessionStorage.getItem('ptychoscan-key') || '';
  if (p.has('session')) { st.selected = p.get('session'); st.userSelected = true; }
}

function headers(extra) {
  const h = Object.assign({}, extra || {});
  if (st.key) h.Authorization = 'Apikey ' + st.key;
  return h;
}

function notice(text) { const n = $('notice'); n.textContent = text || ''; n.hidden = !text; }

function askKey(detail) {
  notice('The service refused the request (' + detail + '). Enter an API key above: a read key to watch, a control key to stop sessions.');
  $('key').focus();
}

function waitForKey() { return new Promise((r) => st.keyWaiters.push(r)); }

async function problemDetail(r) {
  try { const p = await r.json(); return p.detail || ('HTTP ' + r.status); } catch (e) { return 'HTTP ' + r.status; }
}

async function api(path, opts) {
  const o = Object.assign({ cache: 'no-store' }, opts || {});
  o.headers = headers(o.headers);
  const r = await fetch(API + path, o);
  if (r.status === 401 || r.status === 403) askKey(await problemDetail(r.clone()));
  return r;
}

// ---- the event stream -------------------------------------------------------------------------------

function setConn(on, text) {
  const c = $('conn');
  c.className = 'conn ' + (on ? 'on' : 'off');
  c.textContent = text;
}

function handleBlock(block) {
  let ev = 'message', data = '';
  for (const line of block.split('\n')) {
    if (!line || line.startsWith(':')) continue;
    const c = line.indexOf(':');
    const field = c < 0 ? line : line.slice(0, c);
    let v = c < 0 ? '' : line.slice(c + 1);
    if (v.startsWith(' ')) v = v.slice(1);
    if (field === 'event') ev = v;
    else if (field === 'data') data += (data ? '\n' : '') + v;
  }
  if (!data) return;
  const obj = JSON.parse(data);
  if (ev === 'session') onSession(obj);
  else if (ev === 'service') onService(obj);
  else if (ev === 'end') setConn(false, 'service stopped');
}

async function streamEvents() {
  for (;;) {
    try {
      const r = await fetch(API + '/events', { headers: headers(), cache: 'no-store' });
      if (r.status === 401 || r.status === 403) {
        askKey(await problemDetail(r));
        setConn(false, 'needs an API key');
        await waitForKey();
        continue;
      }
      if (!r.ok) throw new Error('HTTP ' + r.status);
      notice('');
      setConn(true, 'live');
      const reader = r.body.getReader();
      const dec = new TextDecoder();
      let buf = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += dec.decode(value, { stream: true });
        let i;
        while ((i = buf.indexOf('\n\n')) >= 0) { handleBlock(buf.slice(0, i)); buf = buf.slice(i + 2); }
      }
    } catch (e) {
      console.warn('event stream:', e);
    }
    if ($('conn').textContent !== 'service stopped') setConn(false, 'reconnecting…');
    await sleep(2000);
  }
}

// ---- the session list -------------------------------------------------------------------------------

function measured(s) { return s.frames_received; }

function errorsText(s) {
  const n = Object.values(s.stream_errors || {}).reduce((a, b) => a + b, 0);
  return (s.error ? s.error + (n ? '; ' : '') : '') + (n ? n + ' stream problem(s)' : '');
}

function el(tag, attrs, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

function renderList() {
  const body = $('sessions').tBodies[0];
  body.textContent = '';
  const all = [...st.sessions.values()].sort((a, b) => b.created_unix - a.created_unix);
  $('empty').hidden = all.length > 0;
  for (const s of all) {
    const tr = el('tr', { 'data-session': s.session_id });
    if (s.session_id === st.selected) tr.className = 'selected';
    tr.append(el('td', {}, s.session_id));
    const state = el('td'); state.append(el('span', { class: 'state ' + s.state }, s.state)); tr.append(state);
    const prog = el('td');
    const bar = el('span', { class: 'bar' }); const fill = el('span');
    fill.style.width = (100 * Math.min(1, measured(s) / s.budget)).toFixed(1) + '%';
    bar.append(fill); prog.append(bar, document.createTextNode(measured(s) + ' / ' + s.budget));
    tr.append(prog);
    const strat = s.strategy || {};
    tr.append(el('td', {}, (strat.used || '?') + (strat.fallback ? ' (fallback from ' + strat.requested + ')' : '')));
    tr.append(el('td', {}, strat.planner_version == null ? '' : String(strat.planner_version)));
    tr.append(el('td', {}, s.batches_reconstructed + ' / ' + s.batches_issued));
    tr.append(el('td', { class: s.error ? 'err' : '' }, errorsText(s)));
    tr.addEventListener('click', () => select(s.session_id, true));
    body.append(tr);
  }
}

function onService(sv) {
  const parts = [];
  for (const [ep, d] of Object.entries(sv.ingest || {})) {
    parts.push(ep + ': ' + (d.connected ? 'connected' : 'not connected') + ', ' + d.messages + ' messages' + (d.error ? ', ' + d.error : ''));
  }
  const lost = Object.entries(sv.endpoint_errors || {}).map(([ep, c]) => ep + ' ' + JSON.stringify(c));
  $('service').textContent = 'Detector streams: ' + (parts.join('; ') || 'none') + ' · frames waiting for their tell: ' + sv.buffered_frames +
    (lost.length ? ' · problems no session took: ' + lost.join(', ') : '');
}

function onSession(s) {
  st.sessions.set(s.session_id, s);
  if (!st.userSelected && (st.selected === null || (TERMINAL.has(st.sessions.get(st.selected)?.state) && !TERMINAL.has(s.state)))) {
    st.selected = s.session_id;
  }
  renderList();
  if (s.session_id === st.selected) updateDetail(s);
}

function select(id, byUser) {
  st.selected = id; st.userSelected = byUser;
  st.positionsKey = ''; st.reconCount = -1; st.recon = null; st.positions = null;
  const p = hashParams(); p.set('session', id); history.replaceState(null, '', '#' + p);
  renderList();
  const s = st.sessions.get(id);
  if (s) updateDetail(s);
}

// ---- one session --------------------------------------------------------------------------------------

function updateDetail(s) {
  $('detail').hidden = false;
  $('d-id').textContent = s.session_id;
  const badge = $('d-state'); badge.textContent = s.state; badge.className = 'state ' + s.state;
  const ended = TERMINAL.has(s.state);
  $('stop').disabled = ended;
  $('dl-file').disabled = !ended;
  $('dl-file').title = ended ? '' : 'the file can be downloaded once the session has ended';
  $('dl-recon').disabled = !(s.batches_reconstructed > 0 || s.reconstruction);
  renderChunks(s);
  renderProblems(s);
  const key = [s.positions_issued, s.frames_received, s.state].join('/');
  if (key !== st.positionsKey) { st.positionsKey = key; refreshPositions(s.session_id); }
  // a new chunk's reconstruction, or a done session's converged one: fetch the image again
  const reconKey = s.batches_reconstructed + '/' + ((s.converged_reconstruction || {}).state || '');
  if (reconKey !== st.reconCount && s.batches_reconstructed > 0) { st.reconCount = reconKey; refreshRecon(s.session_id); }
  renderView();
}

async function refreshPositions(id) {
  if (st.positionsBusy) { st.positionsAgain = true; return; }
  st.positionsBusy = true;
  try {
    do {
      st.positionsAgain = false;
      const r = await api('/sessions/' + id + '/positions');
      if (r.ok && id === st.selected) { st.positions = await r.json(); renderView(); }
    } while (st.positionsAgain && id === st.selected);
  } catch (e) { console.warn('positions:', e); } finally { st.positionsBusy = false; }
}

function parseNpy(buf) {
  const bytes = new Uint8Array(buf), dv = new DataView(buf);
  const major = bytes[6];
  const hlen = major === 1 ? dv.getUint16(8, true) : dv.getUint32(8, true);
  const off = major === 1 ? 10 : 12;
  const header = new TextDecoder().decode(bytes.slice(off, off + hlen));
  if (!/'descr':\s*'<f4'/.test(header)) throw new Error('expected float32 .npy, got ' + header);
  const shape = header.match(/'shape':\s*\(([^)]*)\)/)[1].split(',').map((v) => v.trim()).filter(Boolean).map(Number);
  return { shape, data: new Float32Array(buf.slice(off + hlen)) };
}

async function refreshRecon(id) {
  try {
    const r = await api('/sessions/' + id + '/reconstruction', { headers: { Accept: 'application/x-npy' } });
    if (!r.ok || id !== st.selected) return;
    const pixel = parseFloat(r.headers.get('X-Pixel-Nm'));
    const origin = r.headers.get('X-Origin-Nm').split(',').map(Number);
    const count = Number(r.headers.get('X-Reconstructions'));
    const kind = r.headers.get('X-Reconstruction-Kind') || 'live';
    const { shape, data } = parseNpy(await r.arrayBuffer());
    let lo = Infinity, hi = -Infinity;
    for (const v of data) { if (Number.isFinite(v)) { if (v < lo) lo = v; if (v > hi) hi = v; } }
    if (!(hi > lo)) { lo = Number.isFinite(lo) ? lo : 0; hi = lo + 1e-6; }
    const [ny, nx] = shape;
    const canvas = document.createElement('canvas'); canvas.width = nx; canvas.height = ny;
    const ctx = canvas.getContext('2d'); const img = ctx.createImageData(nx, ny);
    for (let i = 0; i < data.length; i++) {
      const g = Number.isFinite(data[i]) ? Math.round(255 * (data[i] - lo) / (hi - lo)) : 0;
      img.data[4 * i] = img.data[4 * i + 1] = img.data[4 * i + 2] = g; img.data[4 * i + 3] = 255;
    }
    ctx.putImageData(img, 0, 0);
    st.recon = { url: canvas.toDataURL('image/png'), nx, ny, pixel, origin, lo, hi, count, kind };
    renderView();
  } catch (e) { console.warn('reconstruction:', e); }
}

function batchColour(i, n) {
  const t = n <= 1 ? 0 : Math.min(1, i / (n - 1));
  const x = t * (PLASMA.length - 1), k = Math.min(PLASMA.length - 2, Math.floor(x)), f = x - k;
  const c = PLASMA[k].map((v, j) => Math.round(v + f * (PLASMA[k + 1][j] - v)));
  return 'rgb(' + c.join(',') + ')';
}

function svg(tag, attrs, text) {
  const e = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

function fmt(v) { return Math.abs(v) >= 100 || v === 0 ? v.toFixed(0) : v.toPrecision(3); }

function niceLength(span) {
  const raw = span / 4, p = Math.pow(10, Math.floor(Math.log10(raw)));
  for (const m of [5, 2, 1]) if (m * p <= raw) return m * p;
  return p;
}

function renderView() {
  const s = st.sessions.get(st.selected);
  const view = $('view');
  view.textContent = '';
  if (!s) return;
  const fov = (st.positions && st.positions.fov_nm) || (s.params && s.params.fov_nm) || [0, 0, 1, 1];
  // the field of view and a margin: the reconstruction grid's padding beyond it holds nothing an operator needs
  const [x0, y0, x1, y1] = [fov[0], fov[1], fov[0] + fov[2], fov[1] + fov[3]];
  const rc = st.recon;
  const span = Math.max(x1 - x0, y1 - y0), m = 0.1 * span;
  view.setAttribute('viewBox', [x0 - m, y0 - m, x1 - x0 + 2 * m, y1 - y0 + 2 * m].join(' '));
  const font = 0.032 * span, r = 0.009 * span;
  if (rc) {
    view.append(svg('image', {
      href: rc.url, x: rc.origin[0] - rc.pixel / 2, y: rc.origin[1] - rc.pixel / 2, width: rc.nx * rc.pixel, height: rc.ny * rc.pixel,
      preserveAspectRatio: 'none', style: 'image-rendering: pixelated',
    }));
  }
  view.append(svg('rect', { x: fov[0], y: fov[1], width: fov[2], height: fov[3], fill: 'none', stroke: '#ffb000', 'stroke-width': 0.004 * span, 'stroke-dasharray': 0.02 * span }));
  view.append(svg('text', { x: fov[0], y: fov[1] - 0.012 * span, 'font-size': font, fill: '#b07800' }, 'field of view ' + fmt(fov[2]) + ' × ' + fmt(fov[3]) + ' nm'));
  const nChunks = Math.max(1, Math.ceil(s.budget / ((s.params && s.params.chunk) || s.budget)));
  let drawn = 0, issued = 0;
  const pos = st.positions;
  if (pos) {
    const g = svg('g', { id: 'measured' });
    pos.positions_nm.forEach((p, i) => {
      if (!pos.received[i]) return;
      g.append(svg('circle', { class: 'measured', cx: p[0], cy: p[1], r, fill: batchColour(pos.batch[i], nChunks), stroke: '#fff', 'stroke-width': r * 0.25 }));
      drawn++;
    });
    view.append(g);
    if (!TERMINAL.has(s.state) && pos.latest_batch !== null) {
      const gi = svg('g', { id: 'issued' });
      pos.positions_nm.forEach((p, i) => {
        if (pos.batch[i] !== pos.latest_batch || pos.received[i]) return;
        gi.append(svg('circle', { class: 'issued', cx: p[0], cy: p[1], r: r * 1.3, fill: 'none', stroke: ISSUED, 'stroke-width': r * 0.45 }));
        issued++;
      });
      view.append(gi);
    }
  }
  const bar = niceLength(x1 - x0), by = y1 + 0.6 * m;
  view.append(svg('line', { x1: x0, x2: x0 + bar, y1: by, y2: by, stroke: '#222', 'stroke-width': 0.008 * span }));
  view.append(svg('text', { x: x0 + bar + 0.015 * span, y: by + font / 3, 'font-size': font, fill: '#222' }, fmt(bar) + ' nm'));
  view.dataset.drawn = String(drawn);
  view.dataset.issued = String(issued);
  renderColourbar();
  renderLegend(s, nChunks, pos);
  const last = (s.chunks || []).filter((c) => c.frames_per_s).slice(-1)[0];
  $('d-caption').textContent = drawn + ' of ' + s.budget + ' positions measured (' + s.batches_issued + ' of ' + nChunks + ' chunks issued)' +
    (issued ? '; rings: ' + issued + ' positions the planner has just issued, not measured yet' : '') +
    (rc ? (rc.kind === 'converged' ? '; converged reconstruction of every measured position'
      : '; phase after ' + rc.count + ' reconstruction(s)') + ', ' + fmt(rc.pixel) + ' nm pixels' : '; no reconstruction yet') +
    probeCaption(s) +
    (last ? '; ingest ' + Math.round(last.frames_per_s) + ' frames/s in the last chunk' : '') +
    '; strategy ' + ((s.strategy && s.strategy.used) || '?') + '.';
}

function probeCaption(s) {
  const p = s.probe || {};
  if (p.source === 'retrieved') {
    return '; probe retrieved: defocus ' + fmt(p.defocus_nm) + ' nm, astigmatism ' + fmt(p.astigmatism_nm) + ' nm at ' +
      fmt(p.astigmatism_angle_deg) + ' deg, Cs ' + fmt(p.cs_um) + ' um';
  }
  if (p.state === 'queued' || p.state === 'running') return '; probe retrieval ' + p.state;
  if (p.state === 'failed') return '; probe retrieval failed (nominal probe): ' + (p.error || '');
  return '';
}

function renderColourbar() {
  const cb = $('colorbar');
  cb.textContent = '';
  const rc = st.recon;
  cb.append(svg('text', { x: 0, y: 14, 'font-size': 12 }, 'phase (rad)'));
  if (!rc) { cb.append(svg('text', { x: 0, y: 34, 'font-size': 11, fill: '#666' }, 'none yet')); return; }
  const defs = svg('defs');
  const grad = svg('linearGradient', { id: 'cbgrad', x1: 0, y1: 1, x2: 0, y2: 0 });
  grad.append(svg('stop', { offset: 0, 'stop-color': '#000' }), svg('stop', { offset: 1, 'stop-color': '#fff' }));
  defs.append(grad); cb.append(defs);
  const top = 24, h = 220;
  cb.append(svg('rect', { x: 2, y: top, width: 18, height: h, fill: 'url(#cbgrad)', stroke: '#444' }));
  for (const t of [0, 0.5, 1]) {
    const v = rc.lo + t * (rc.hi - rc.lo), y = top + h * (1 - t);
    cb.append(svg('line', { x1: 20, x2: 25, y1: y, y2: y, stroke: '#444' }));
    cb.append(svg('text', { x: 28, y: y + 4, 'font-size': 11 }, v.toPrecision(3)));
  }
}

function renderLegend(s, nChunks, pos) {
  const lg = $('legend');
  lg.textContent = '';
  lg.append(el('div', {}, 'sub-sequence order:'));
  const seen = pos ? [...new Set(pos.batch.filter((b, i) => pos.received[i]))].sort((a, b) => a - b) : [];
  const show = seen.length > 8 ? [...seen.slice(0, 3), null, ...seen.slice(-3)] : seen;
  for (const b of show) {
    const row = el('div');
    if (b === null) { row.textContent = '…'; } else {
      const sw = el('span', { class: 'sw' }); sw.style.background = batchColour(b, nChunks);
      row.append(sw, document.createTextNode('chunk ' + (b + 1)));
    }
    lg.append(row);
  }
  if (!TERMINAL.has(s.state)) {
    const row = el('div'); row.append(el('span', { class: 'ring' }), document.createTextNode('just issued')); lg.append(row);
  }
}

function renderChunks(s) {
  const chunks = s.chunks || [];
  const body = $('chunks').tBodies[0];
  body.textContent = '';
  const ms = (v) => (v == null ? '–' : (1000 * v).toFixed(0));
  for (const c of chunks) {
    const tr = el('tr');
    for (const v of [c.batch_id + 1, c.positions, c.status, c.acquisition_s == null ? '–' : c.acquisition_s.toFixed(2),
      c.frames_per_s == null ? '–' : Math.round(c.frames_per_s), ms(c.decision_latency_s)]) tr.append(el('td', {}, String(v)));
    body.append(tr);
  }
  const chart = $('latency');
  chart.textContent = '';
  const W = 360, H = 150, L = 44, B = 22, T = 8;
  const vals = chunks.map((c) => c.decision_latency_s);
  const acq = chunks.map((c) => c.acquisition_s);
  const max = Math.max(1e-3, ...vals.filter((v) => v != null), ...acq.filter((v) => v != null));
  const bw = (W - L - 4) / Math.max(1, chunks.length);
  chart.append(svg('line', { x1: L, x2: L, y1: T, y2: H - B, stroke: '#444' }), svg('line', { x1: L, x2: W, y1: H - B, y2: H - B, stroke: '#444' }));
  chart.append(svg('text', { x: 2, y: T + 10, 'font-size': 10 }, (1000 * max).toFixed(0) + ' ms'));
  chart.append(svg('text', { x: 2, y: H - B, 'font-size': 10 }, '0'));
  chart.append(svg('text', { x: L, y: H - 4, 'font-size': 10 }, 'chunks →  bars: decision; grey: acquisition'));
  chunks.forEach((c, i) => {
    const x = L + 2 + i * bw;
    if (c.decision_latency_s != null) {
      const h = (H - B - T) * c.decision_latency_s / max;
      chart.append(svg('rect', { x, y: H - B - h, width: Math.max(1, bw - 2), height: h, fill: '#3a78b5' }));
    }
    if (c.acquisition_s != null) {
      const y = H - B - (H - B - T) * c.acquisition_s / max;
      chart.append(svg('line', { x1: x, x2: x + Math.max(1, bw - 2), y1: y, y2: y, stroke: '#888', 'stroke-width': 2 }));
    }
  });
}

function renderProblems(s) {
  const box = $('problems');
  box.textContent = '';
  const counts = Object.entries(s.stream_errors || {});
  if (!counts.length && !s.error) { box.textContent = 'none'; return; }
  if (s.error) box.append(el('p', { class: 'err' }, s.error));
  if (counts.length) box.append(el('p', {}, counts.map(([k, v]) => k + ': ' + v).join(', ')));
  const ul = el('ul');
  for (const e of (s.recent_errors || []).slice(-8)) ul.append(el('li', {}, new Date(e.at_unix * 1000).toLocaleTimeString() + ' ' + e.kind + ': ' + e.detail));
  box.append(ul);
}

// ---- controls -------------------------------------------------------------------------------------------

async function download(path, accept, fallbackName) {
  const id = st.selected;
  $('d-msg').textContent = 'downloading…';
  const r = await api('/sessions/' + id + path, { headers: accept ? { Accept: accept } : {} });
  if (!r.ok) { $('d-msg').textContent = 'refused: ' + await problemDetail(r); return; }
  const cd = r.headers.get('Content-Disposition') || '';
  const m = cd.match(/filename="?([^";]+)"?/);
  const a = el('a', { href: URL.createObjectURL(await r.blob()), download: m ? m[1] : fallbackName });
  document.body.append(a); a.click(); a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 10000);
  $('d-msg').textContent = '';
}

async function stopSession() {
  const id = st.selected;
  if (!confirm('Stop session ' + id + '? Its file keeps every frame received so far.')) return;
  const r = await api('/sessions/' + id, { method: 'DELETE' });
  $('d-msg').textContent = r.ok ? 'stopped' : 'refused: ' + await problemDetail(r);
}

function init() {
  readKey();
  $('key').value = st.key;
  $('keyform').addEventListener('submit', (e) => {
    e.preventDefault();
    st.key = $('key').value.trim();
    sessionStorage.setItem('ptychoscan-key', st.key);
    notice('');
    const waiters = st.keyWaiters; st.keyWaiters = [];
    waiters.forEach((w) => w());
  });
  $('stop').addEventListener('click', stopSession);
  $('dl-file').addEventListener('click', () => download('/file', null, st.selected + '.h5'));
  $('dl-recon').addEventListener('click', () => download('/reconstruction', 'application/x-npy', st.selected + '_reconstruction.npy'));
  streamEvents();
}

init();
