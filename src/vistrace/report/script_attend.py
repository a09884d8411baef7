"""The page script, part 1: shared helpers and the attention view (vanilla JavaScript, inlined).

Every string from a run is put into the page with `textContent` or an attribute value, never as
HTML."""

from __future__ import annotations

SCRIPT_ATTEND = r"""
'use strict';
var VT = {errors: []};
window.addEventListener('error', function (e) { VT.errors.push(String(e.message)); });
// Anything the page tried to load or run against its Content-Security-Policy is an error too.
document.addEventListener('securitypolicyviolation', function (e) { VT.errors.push('blocked ' + e.violatedDirective + ' ' + e.blockedURI); });
VT.el = function (tag, attrs, text) {
  var node = document.createElement(tag);
  if (attrs) { for (var key in attrs) { node.setAttribute(key, attrs[key]); } }
  if (text !== undefined && text !== null) { node.textContent = String(text); }
  return node;
};
// An 8-bit map of encode.quantize_rows (the Figure 5 averages), decoded once.
VT.decode = function (packed) {
  if (packed._values) { return packed._values; }
  var bin = atob(packed.data), out = new Float32Array(packed.rows * packed.cols);
  for (var r = 0; r < packed.rows; r++) {
    var step = packed.scale[r] / 255;
    for (var c = 0; c < packed.cols; c++) { var i = r * packed.cols + c; out[i] = bin.charCodeAt(i) * step; }
  }
  packed._values = out;
  return out;
};
// The bytes of a base64 zlib stream, inflated by the browser (a Promise).
VT.inflate = function (b64) {
  if (typeof DecompressionStream === 'undefined') {
    return Promise.reject(new Error('this browser cannot decompress the maps: it lacks DecompressionStream (Chrome 80, Firefox 113, Safari 16.4 or later have it)'));
  }
  var bin = atob(b64), bytes = new Uint8Array(bin.length);
  for (var i = 0; i < bin.length; i++) { bytes[i] = bin.charCodeAt(i); }
  var stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream('deflate'));
  return new Response(stream).arrayBuffer().then(function (buffer) { return new Uint8Array(buffer); });
};
// A stage's maps (encode.pack_maps), by VT.key(layer set, pooling): Float32Arrays of T x N
// values, token after token. The bytes hold the S x T scales (float32), then per map its bit
// planes, most significant first, each the codes feature after feature (the T tokens of a feature
// together), eight bits to a byte. The all-layer max, when not stored, is the maximum of the
// groups' max maps (attend.stored_sets).
VT.key = function (label, pool) { return JSON.stringify([label, pool]); };
VT.unpackMaps = function (packed, bytes) {
  var T = packed.rows, N = packed.cols, S = packed.sets, B = packed.bits, n = T * N, plane = Math.ceil(n / 8);
  var view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength), off = 4 * S * T, levels = (1 << B) - 1, out = {};
  if (bytes.length !== off + S * B * plane) { throw new Error('maps: ' + bytes.length + ' bytes, expected ' + (off + S * B * plane)); }
  for (var s = 0; s < S; s++) {
    var codes = new Uint8Array(n);
    for (var p = B - 1; p >= 0; p--, off += plane) {
      for (var i = 0; i < n; i++) { if (bytes[off + (i >> 3)] & (128 >> (i & 7))) { codes[i] |= 1 << p; } }
    }
    var values = new Float32Array(n);
    for (var t = 0; t < T; t++) {
      var step = view.getFloat32(4 * (s * T + t), true) / levels;
      for (var j = 0; j < N; j++) { values[t * N + j] = codes[j * T + t] * step; }
    }
    out[VT.key(packed.stored[s][0], packed.stored[s][1])] = values;
  }
  var groupMax = packed.stored.filter(function (k) { return k[0] !== 'all' && k[1] === 'max'; });
  if (!out[VT.key('all', 'max')] && groupMax.length) {
    var all = new Float32Array(n);
    groupMax.forEach(function (k) { var v = out[VT.key(k[0], k[1])]; for (var i = 0; i < n; i++) { if (v[i] > all[i]) { all[i] = v[i]; } } });
    out[VT.key('all', 'max')] = all;
  }
  return out;
};
// The decoded maps of a stage (a Promise, made once; VT.pending holds it until it settles).
VT.pending = [];
VT.maps = function (packed) {
  if (!packed._promise) {
    packed._promise = VT.inflate(packed.data).then(function (bytes) { packed._values = VT.unpackMaps(packed, bytes); return packed._values; });
    VT.pending.push(packed._promise.catch(function () { return null; }));
  }
  return packed._promise;
};
VT.forget = function (inst) {
  Object.keys(inst.stages).forEach(function (name) { var m = inst.stages[name].maps; delete m._promise; delete m._values; });
};
VT.STOPS = [[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]];
VT.color = function (t) {
  t = Math.max(0, Math.min(1, isFinite(t) ? t : 0)) * (VT.STOPS.length - 1);
  var i = Math.min(Math.floor(t), VT.STOPS.length - 2), f = t - i, a = VT.STOPS[i], b = VT.STOPS[i + 1];
  return [0, 1, 2].map(function (k) { return Math.round(a[k] + (b[k] - a[k]) * f); });
};
VT.select = function (label, options, value, onchange) {
  var wrap = VT.el('label', null, label + ' '), sel = VT.el('select');
  options.forEach(function (o) {
    var opt = VT.el('option', {value: o[0]}, o[1]);
    if (o[0] === value) { opt.selected = true; }
    sel.appendChild(opt);
  });
  sel.addEventListener('change', function () { onchange(sel.value); });
  wrap.appendChild(sel);
  return wrap;
};

VT.attend = function (run, root) {
  var state = {inst: 0, pool: run.pools[0], layers: 'all', opacity: 0.6, stage: null, from: 0, to: -1, anchor: null};
  var controls = VT.el('div', {'class': 'controls'}), body = VT.el('div'), fig5 = VT.el('div');
  root.appendChild(controls); root.appendChild(body); root.appendChild(fig5);
  if (!run.instances.length) { body.appendChild(VT.el('p', null, 'No finished instance in this run.')); return; }
  controls.appendChild(VT.select('instance', run.instances.map(function (inst, i) {
    return [String(i), '#' + inst.index + ' ' + inst.image_id];
  }), '0', function (v) { VT.forget(run.instances[state.inst]); state.inst = +v; state.stage = null; renderInstance(); }));
  controls.appendChild(VT.select('head pooling', run.pools.map(function (p) { return [p, p]; }), state.pool,
    function (v) { state.pool = v; draw(); drawFigure5(); }));
  var firstStage = run.instances[0].stages[Object.keys(run.instances[0].stages)[0]];
  var groups = firstStage.maps.groups;
  if (groups.length > 1) {
    var layerControl = VT.select('layers', groups.map(function (g) { return [g, g]; }), 'all',
      function (v) { state.layers = v; draw(); });
    layerControl.querySelector('select').className = 'layers';
    controls.appendChild(layerControl);
  }
  var opacity = VT.el('input', {type: 'range', min: '0', max: '1', step: '0.05', value: String(state.opacity)});
  opacity.addEventListener('input', function () { state.opacity = +opacity.value; draw(); });
  var olabel = VT.el('label', null, 'opacity '); olabel.appendChild(opacity); controls.appendChild(olabel);
  var canvas, scaleF, info, spans = {};

  function renderInstance() {
    body.textContent = ''; spans = {};
    var inst = run.instances[state.inst], names = Object.keys(inst.stages);
    var first = inst.stages[names[0]], geo = run.geometries[first.geometry];
    var wrap = VT.el('div', {'class': 'instance'}), pic = VT.el('div', {'class': 'picture'});
    scaleF = 420 / Math.max(geo.size[0], geo.size[1]);
    var w = Math.round(geo.size[0] * scaleF), h = Math.round(geo.size[1] * scaleF);
    pic.style.width = w + 'px'; pic.style.height = h + 'px';
    if (inst.image) { var img = VT.el('img', {alt: 'instance image', width: String(w), height: String(h)}); img.src = inst.image; pic.appendChild(img); }
    canvas = VT.el('canvas', {'class': 'overlay', width: String(w), height: String(h)});
    pic.appendChild(canvas);
    var text = VT.el('div', {'class': 'texts'});
    text.appendChild(VT.el('p', {'class': 'question'}, 'Q: ' + inst.question));
    if (inst.gold !== null && inst.gold !== undefined) { text.appendChild(VT.el('p', {'class': 'gold'}, 'gold answer: ' + inst.gold)); }
    if (inst.adopted_round) { text.appendChild(VT.el('p', null, 'revision adopted in round ' + inst.adopted_round)); }
    names.forEach(function (name) {
      var st = inst.stages[name], para = VT.el('p', {'class': 'stage', 'data-stage': name});
      text.appendChild(VT.el('h4', null, name));
      var top = Math.max.apply(null, st.scores.map(function (s) { return s || 0; }).concat([1e-12]));
      spans[name] = st.pieces.map(function (piece, i) {
        var c = VT.color((st.scores[i] || 0) / top), span = VT.el('span', {'class': 'tok', 'data-i': String(i)}, piece);
        span.style.backgroundColor = 'rgba(' + c.join(',') + ',0.45)';
        span.title = 'image attention ' + st.scores[i] + (st.eos && i === st.pieces.length - 1 ? ' (EOS)' : '');
        span.addEventListener('click', function (ev) { pick(name, i, ev.shiftKey); });
        para.appendChild(span);
        return span;
      });
      para.addEventListener('mouseup', function () { selectSpan(name); });
      text.appendChild(para);
    });
    info = VT.el('p', {'class': 'info'}, 'Click a token, shift-click or select a span of tokens, to see its attention over the image.');
    text.appendChild(info);
    wrap.appendChild(pic); wrap.appendChild(text); body.appendChild(wrap);
    names.forEach(function (name) { VT.maps(inst.stages[name].maps).catch(function () { return null; }); });  // decoded ahead of a click
    draw();
  }
  function pick(name, i, extend) {
    if (extend && state.stage === name && state.anchor !== null) {
      state.from = Math.min(state.anchor, i); state.to = Math.max(state.anchor, i);
    } else { state.stage = name; state.anchor = i; state.from = i; state.to = i; }
    draw();
  }
  function selectSpan(name) {
    var sel = window.getSelection();
    if (!sel || sel.isCollapsed) { return; }
    var hit = [];
    spans[name].forEach(function (span, i) { if (sel.containsNode(span, true)) { hit.push(i); } });
    if (hit.length > 1) { state.stage = name; state.anchor = hit[0]; state.from = hit[0]; state.to = hit[hit.length - 1]; draw(); }
  }
  function draw() {
    if (!canvas) { return; }
    var ctx = canvas.getContext('2d');
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    Object.keys(spans).forEach(function (n) { spans[n].forEach(function (s, i) {
      s.classList.toggle('sel', n === state.stage && i >= state.from && i <= state.to);
    }); });
    if (state.stage === null) { return; }
    var inst = run.instances[state.inst], st = inst.stages[state.stage], geo = run.geometries[st.geometry], packed = st.maps;
    if (!packed._values) {
      info.textContent = 'decoding the maps\u2026';
      VT.maps(packed).then(draw, function (e) { VT.errors.push(String(e)); info.textContent = String(e); });
      return;
    }
    var layers = packed.groups.indexOf(state.layers) >= 0 ? state.layers : 'all';
    var values = packed._values[VT.key(layers, state.pool)], n = packed.cols, mean = new Float32Array(n), top = 0;
    for (var t = state.from; t <= state.to; t++) { for (var j = 0; j < n; j++) { mean[j] += values[t * n + j] / (state.to - state.from + 1); } }
    for (var m = 0; m < n; m++) { top = Math.max(top, mean[m]); }
    var off = document.createElement('canvas'); off.width = canvas.width; off.height = canvas.height;
    var octx = off.getContext('2d'), f = canvas.width / geo.size[0], g = canvas.height / geo.size[1];
    for (var o = 0; o < geo.order.length; o++) {  // larger boxes first: the finest view shows
      var k = geo.order[o], b = geo.boxes.slice(4 * k, 4 * k + 4);
      octx.fillStyle = 'rgb(' + VT.color(top > 0 ? mean[k] / top : 0).join(',') + ')';
      octx.fillRect(b[0] * f, b[1] * g, (b[2] - b[0]) * f, (b[3] - b[1]) * g);
    }
    ctx.globalAlpha = state.opacity; ctx.drawImage(off, 0, 0); ctx.globalAlpha = 1;
    var words = st.pieces.slice(state.from, state.to + 1).join('');
    info.textContent = state.stage + ', tokens ' + state.from + '-' + state.to + ' "' + words + '" · ' + state.pool + ' · layers ' + layers +
      ' · max ' + top.toPrecision(3) + ' (colour scaled to this map)';
  }
  function drawFigure5() {
    fig5.textContent = '';
    var f5 = run.figure5;
    if (!f5) { return; }
    fig5.appendChild(VT.el('h3', null, 'Average attention to the image per stage (Figure 5)'));
    var groups = Object.keys(f5.maps), top = 0, row = VT.el('div', {'class': 'fig5'});
    var which = f5.selection === 'adopted' ? ' instances with the revision adopted' :
      (groups.length > 1 ? ' instances (none had its revision adopted: all are averaged)' : ' instances');
    fig5.appendChild(VT.el('p', null, 'n = ' + f5.n + which + '; image stretched to a square; mean over tokens; one colour scale.'));
    groups.forEach(function (gname) { var p = f5.maps[gname][state.pool]; if (p) { top = Math.max(top, p.scale[0]); } });
    groups.forEach(function (gname) {
      var p = f5.maps[gname][state.pool]; if (!p) { return; }
      var v = VT.decode(p), cv = VT.el('canvas', {width: String(f5.size), height: String(f5.size)}), cx = cv.getContext('2d');
      var im = cx.createImageData(f5.size, f5.size);
      for (var i = 0; i < v.length; i++) { var c = VT.color(top > 0 ? v[i] / top : 0); im.data.set([c[0], c[1], c[2], 255], 4 * i); }
      cx.putImageData(im, 0, 0);
      var fig = VT.el('figure'); fig.appendChild(cv); fig.appendChild(VT.el('figcaption', null, gname)); row.appendChild(fig);
    });
    fig5.appendChild(row);
  }
  renderInstance(); drawFigure5();
};
"""  # noqa: E501 (one line of script per statement reads best)

__all__ = ["SCRIPT_ATTEND"]
