"""The page script, part 2: the knockout flow view, the evaluation view, start-up and the self-test
(`#selftest` in the address clicks the first token, waits for its maps to be decoded and drawn,
and writes what happened into the page)."""

from __future__ import annotations

SCRIPT_CHARTS = r"""
VT.SVG = 'http' + '://www.w3.org/2000/svg';
VT.svg = function (tag, attrs) {
  var node = document.createElementNS(VT.SVG, tag);
  for (var key in attrs) { node.setAttribute(key, attrs[key]); }
  return node;
};
VT.PALETTE = ['#1f77b4', '#ff7f0e', '#2ca02c', '#d62728', '#9467bd', '#8c564b', '#e377c2', '#7f7f7f'];
VT.table = function (header, rows, onclick) {
  var table = VT.el('table'), head = VT.el('tr');
  header.forEach(function (h) { head.appendChild(VT.el('th', null, h)); });
  table.appendChild(head);
  rows.forEach(function (row, i) {
    var tr = VT.el('tr');
    row.forEach(function (cell) {
      if (cell && typeof cell === 'object' && 'img' in cell) {
        var td = VT.el('td'), img = VT.el('img', {alt: 'image', 'class': 'thumb'}); img.src = cell.img; td.appendChild(img); tr.appendChild(td);
      } else { tr.appendChild(VT.el('td', null, cell === null || cell === undefined ? '' : cell)); }
    });
    if (onclick) { tr.className = 'clickable'; tr.addEventListener('click', function () { onclick(i, tr); }); }
    table.appendChild(tr);
  });
  return table;
};

VT.trace = function (run, root) {
  var keys = {}, state = {filter: true, clip: true, group: null, sample: null};
  run.results.forEach(function (r) { r.categories.forEach(function (c) {
    keys[JSON.stringify([r.dataset, c, r.mode, r.k])] = true;
  }); });
  var groups = Object.keys(keys).sort();
  state.group = groups[0];
  var controls = VT.el('div', {'class': 'controls'}), chart = VT.el('div', {'class': 'chart'}), readout = VT.el('p', {'class': 'info'});
  var picture = VT.el('div', {'class': 'sample-image'});
  root.appendChild(controls); root.appendChild(chart); root.appendChild(readout); root.appendChild(picture);
  if (!groups.length) { chart.appendChild(VT.el('p', null, 'No knockout result in this run.')); return; }
  controls.appendChild(VT.select('dataset · category · mode · k', groups.map(function (g) {
    var p = JSON.parse(g); return [g, p[0] + ' · ' + p[1] + ' · ' + p[2] + ' · k=' + p[3]];
  }), state.group, function (v) { state.group = v; draw(); }));
  function toggle(label, key) {
    var box = VT.el('input', {type: 'checkbox', 'class': key === 'filter' ? 'paper-filter' : 'clip'}), wrap = VT.el('label');
    box.checked = state[key]; box.addEventListener('change', function () { state[key] = box.checked; draw(); });
    wrap.appendChild(box); wrap.appendChild(document.createTextNode(' ' + label)); controls.appendChild(wrap);
  }
  toggle('paper filter: p_full \u2265 ' + run.min_p_full, 'filter');
  toggle('clip increases at 0', 'clip');
  function change(r) {
    return r.probs.map(function (p) { var c = (p - r.p_full) / r.p_full * 100; return state.clip ? Math.min(c, 0) : c; });
  }
  function curves() {
    var g = JSON.parse(state.group), out = {}, cross = [];
    run.results.forEach(function (r) {
      if (r.dataset !== g[0] || r.categories.indexOf(g[1]) < 0 || r.mode !== g[2] || r.k !== g[3]) { return; }
      if (state.sample !== null && r.id !== state.sample) { return; }
      if (state.sample === null && state.filter && r.p_full < run.min_p_full) { return; }
      if (!(r.p_full > 0)) { return; }
      var c = change(r), cur = out[r.pathway] || (out[r.pathway] = {sum: c.map(function () { return 0; }), n: 0});
      c.forEach(function (v, i) { cur.sum[i] += v; }); cur.n += 1; cross = r.cross;
    });
    Object.keys(out).forEach(function (p) { out[p].mean = out[p].sum.map(function (v) { return v / out[p].n; }); });
    return {curves: out, cross: cross};
  }
  function draw() {
    chart.textContent = ''; readout.textContent = '';
    var data = curves(), names = Object.keys(data.curves).sort();
    if (!names.length) { chart.appendChild(VT.el('p', null, 'No sample passes the filter; switch the filter off to see every sample.')); return; }
    var W = 680, H = 320, L = 60, R = 170, T = 20, B = 40, nl = data.curves[names[0]].mean.length, lo = 0, hi = 0;
    names.forEach(function (p) { data.curves[p].mean.forEach(function (v) { lo = Math.min(lo, v); hi = Math.max(hi, v); }); });
    if (hi - lo < 1e-9) { lo -= 1; hi += 1; }
    var x = function (i) { return L + (nl > 1 ? i / (nl - 1) : 0.5) * (W - L - R); };
    var y = function (v) { return T + (hi - v) / (hi - lo) * (H - T - B); };
    var svg = VT.svg('svg', {width: String(W), height: String(H), 'class': 'flow'});
    svg.appendChild(VT.svg('line', {x1: L, x2: W - R, y1: y(0), y2: y(0), stroke: '#000', 'stroke-width': 0.6}));
    svg.appendChild(VT.svg('line', {x1: L, x2: L, y1: T, y2: H - B, stroke: '#000'}));
    [lo, 0, hi].forEach(function (v) {
      var t = VT.svg('text', {x: L - 6, y: y(v) + 4, 'text-anchor': 'end', 'font-size': 11}); t.textContent = v.toFixed(1); svg.appendChild(t);
    });
    for (var i = 0; i < nl; i += Math.max(1, Math.ceil(nl / 10))) {
      var t = VT.svg('text', {x: x(i), y: H - B + 16, 'text-anchor': 'middle', 'font-size': 11}); t.textContent = String(i); svg.appendChild(t);
    }
    var xl = VT.svg('text', {x: (L + W - R) / 2, y: H - 6, 'text-anchor': 'middle', 'font-size': 12}); xl.textContent = 'centre layer of the window'; svg.appendChild(xl);
    var yl = VT.svg('text', {x: 14, y: H / 2, transform: 'rotate(-90 14 ' + H / 2 + ')', 'text-anchor': 'middle', 'font-size': 12});
    yl.textContent = 'change in answer probability (%)'; svg.appendChild(yl);
    data.cross.forEach(function (c) { svg.appendChild(VT.svg('line', {x1: x(c), x2: x(c), y1: T, y2: H - B, stroke: '#999', 'stroke-dasharray': '4 3', 'class': 'cross'})); });
    names.forEach(function (p, j) {
      var cur = data.curves[p], color = VT.PALETTE[j % VT.PALETTE.length];
      svg.appendChild(VT.svg('polyline', {points: cur.mean.map(function (v, i) { return x(i) + ',' + y(v); }).join(' '),
        fill: 'none', stroke: color, 'stroke-width': 2, 'class': 'flow-line', 'data-pathway': p}));
      var lt = VT.svg('text', {x: W - R + 10, y: T + 14 + 16 * j, fill: color, 'font-size': 12}); lt.textContent = p + ' (n=' + cur.n + ')'; svg.appendChild(lt);
    });
    var cursor = VT.svg('line', {x1: 0, x2: 0, y1: T, y2: H - B, stroke: '#444', visibility: 'hidden'}); svg.appendChild(cursor);
    svg.addEventListener('mousemove', function (ev) {
      var box = svg.getBoundingClientRect(), px = ev.clientX - box.left;
      var i = Math.max(0, Math.min(nl - 1, Math.round((px - L) / (W - L - R) * (nl - 1))));
      cursor.setAttribute('x1', x(i)); cursor.setAttribute('x2', x(i)); cursor.setAttribute('visibility', 'visible');
      readout.textContent = 'layer ' + i + (data.cross.indexOf(i) >= 0 ? ' (cross-attention)' : '') + ': ' + names.map(function (p) {
        return p + ' ' + data.curves[p].mean[i].toFixed(2) + '% (n=' + data.curves[p].n + ')'; }).join(' · ');
    });
    chart.appendChild(svg);
    chart.appendChild(VT.el('p', {'class': 'note'}, state.sample !== null ? 'Showing sample ' + state.sample + ' only (click its row again for the means).' :
      'Mean over samples; dashed lines: cross-attention layers. Hover for values.'));
  }
  draw();
  root.appendChild(VT.el('h3', null, 'Samples'));
  root.appendChild(VT.table(['id', 'question', 'answer', 'p_full', 'category'], run.samples.map(function (s) {
    return [s.id, s.question, s.answer, s.p_full, s.category];
  }), function (i, tr) {
    var sample = run.samples[i], id = sample.id; state.sample = state.sample === id ? null : id;
    picture.textContent = '';
    if (state.sample !== null && sample.image) {
      var img = VT.el('img', {alt: 'image of sample ' + id, 'class': 'sample'}); img.src = sample.image; picture.appendChild(img);
    }
    Array.prototype.forEach.call(tr.parentNode.children, function (row) { row.classList.remove('sel'); });
    if (state.sample !== null) { tr.classList.add('sel'); }
    draw();
  }));
};

VT.evaluation = function (run, root) {
  root.appendChild(VT.el('p', null, 'dataset ' + run.dataset + ' · metric ' + run.metric));
  root.appendChild(VT.table(['category', 'count', run.metric + ' (%)'], run.scores.map(function (s) {
    return [s.category, s.count, s.score === null ? '' : (100 * s.score).toFixed(2)];
  })));
  root.appendChild(VT.el('h3', null, 'Mistakes (score below 1): ' + run.n_mistakes + (run.n_mistakes > run.mistakes.length ? ', the first ' + run.mistakes.length + ' listed' : '')));
  root.appendChild(VT.table(['image', 'id', 'category', 'question', 'prediction', 'answers', 'score'], run.mistakes.map(function (m) {
    return [m.image ? {img: m.image} : null, m.id, m.category, m.question, m.prediction, m.answers.join(' | '), m.score];
  })));
};

VT.selftest = function () {
  var out = {tokens: document.querySelectorAll('.tok').length, flow_lines: document.querySelectorAll('.flow-line').length};
  function painted(canvas) {
    var px = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data, n = 0, sum = 0;
    for (var i = 3; i < px.length; i += 4) { if (px[i] > 0) { n++; sum += px[i - 3] + 3 * px[i - 2] + 7 * px[i - 1]; } }
    return [n, sum];
  }
  // Every map being decoded has been decoded and drawn.
  function settle() {
    return Promise.all(VT.pending.splice(0)).then(function () { return new Promise(function (done) { setTimeout(done, 0); }); });
  }
  // Per attention run: painted pixels before and after a click on the first token (and the time
  // from the click to the overlay drawn), then on the last token, then with the first layer group.
  out.overlays = [];
  var chain = Promise.resolve();
  Array.prototype.forEach.call(document.querySelectorAll('section.run-attend'), function (section) {
    chain = chain.then(function () {
      var canvas = section.querySelector('canvas.overlay'), toks = section.querySelectorAll('.tok'), r = {}, first, start;
      if (!canvas || !toks.length) { out.overlays.push(null); return null; }
      r.before = painted(canvas)[0]; start = performance.now(); toks[0].click();
      return settle().then(function () {
        r.map_ms = Math.round(performance.now() - start);
        first = painted(canvas); r.after = first[0]; r.selected = section.querySelectorAll('.tok.sel').length;
        toks[toks.length - 1].click(); return settle();
      }).then(function () {
        var layers = section.querySelector('select.layers');
        r.changed = first[1] !== painted(canvas)[1]; r.group = null; r.layer_options = layers ? layers.options.length : 0;
        if (!layers || layers.options.length < 2) { return null; }
        layers.value = layers.options[1].value; layers.dispatchEvent(new Event('change'));
        return settle().then(function () { r.group = painted(canvas)[0]; });
      }).then(function () { out.overlays.push(r); });
    });
  });
  chain.then(function () {
    // The maps of the first stage of the first attention run's first instance, as the page decodes
    // them (when they hold at most 20,000 values), for the tests to compare with the pooling.
    var run = VT.data.runs.filter(function (x) { return x.kind === 'attend' && x.instances.length; })[0];
    if (!run) { return null; }
    // Decoded again from its base64, timed.
    var name = Object.keys(run.instances[0].stages)[0], packed = run.instances[0].stages[name].maps, start = performance.now();
    delete packed._promise; delete packed._values;
    return VT.maps(packed).then(function (values) {
      out.decode_ms = Math.round(performance.now() - start);
      if (packed.sets * packed.rows * packed.cols > 20000) { return; }
      var sets = [];
      packed.groups.forEach(function (g) { run.pools.forEach(function (p) { sets.push([g, p]); }); });
      out.decoded = {run: run.name, stage: name, sets: sets, values: sets.map(function (k) { return Array.prototype.slice.call(values[VT.key(k[0], k[1])]); })};
    });
  }).then(function () {
    var filter = document.querySelector('input.paper-filter');
    if (filter && filter.checked) { filter.click(); }
    out.flow_lines_unfiltered = document.querySelectorAll('.flow-line').length;
    var row = document.querySelector('section.run-trace tr.clickable');
    if (row) { row.click(); out.sample_lines = document.querySelectorAll('.flow-line').length; out.sample_image = !!document.querySelector('img.sample'); }
  }).catch(function (e) { VT.errors.push('selftest: ' + e); }).then(function () {
    out.ready_ms = Math.round(VT.readyMs);
    out.errors = VT.errors;
    out.pwned = window.__pwned === undefined ? null : window.__pwned;
    document.body.appendChild(VT.el('pre', {id: 'selftest-result'}, JSON.stringify(out)));
  });
};

(function () {
  var data = JSON.parse(document.getElementById('vistrace-data').textContent), app = document.getElementById('app');
  VT.data = data;
  var views = {attend: VT.attend, trace: VT.trace, eval: VT.evaluation};
  var titles = {attend: 'Attention to the image', trace: 'Knockout flow', eval: 'Evaluation'};
  data.runs.forEach(function (run) {
    var section = VT.el('section', {'class': 'run run-' + run.kind});
    section.appendChild(VT.el('h2', null, titles[run.kind] + ' \u2014 ' + run.name));
    app.appendChild(section);
    try { views[run.kind](run, section); } catch (e) { VT.errors.push(String(e)); section.appendChild(VT.el('p', {'class': 'error'}, String(e))); }
  });
  VT.readyMs = performance.now();
  if (location.hash.indexOf('selftest') >= 0) { VT.selftest(); }
})();
"""  # noqa: E501 (one line of script per statement reads best)

__all__ = ["SCRIPT_CHARTS"]
