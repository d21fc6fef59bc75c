// lmscope lab page: tabs, forms -> JSON API, Plotly figures, jobs with progress and cancel.
// Every text from the server is put in the page with textContent (never innerHTML), so it is always escaped.
"use strict";
const $ = (id) => document.getElementById(id);
let INFO = null;
const JOB_DONE = {};          // job id -> callback(payload)
let polling = false;
// Plotly.js (4 MB) loads asynchronously: the forms work at once, a figure waits for it
const plotlyReady = new Promise((ok) => {
  if (window.Plotly) ok(); else document.getElementById("plotly-js").addEventListener("load", () => ok());
});
plotlyReady.then(() => document.body.setAttribute("data-plotly", "1"));

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v; else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}
function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); return node; }
// a generation can be empty (the first token generated ended the text): say so rather than show an empty box
const shown = (text) => (text.trim() ? text : "(no text: the generation ended at its first token)");

async function call(path, body) {
  const opts = body === undefined ? {} : {method: "POST", headers: {"Content-Type": "application/json"},
                                           body: JSON.stringify(body)};
  let res, data;
  try { res = await fetch(path, opts); data = await res.json(); }
  catch (e) { return {ok: false, data: {error: "the lab did not answer (" + e + ")", field: null}}; }
  return {ok: res.ok, data};
}

function showError(formId, data) {
  const form = $(formId);
  for (const s of form.querySelectorAll(".err")) s.textContent = "";
  if (!data) return;
  const slot = form.querySelector(`.err[data-err="${CSS.escape(data.field || "_")}"]`) ||
               form.querySelector('.err[data-err="_"]');
  slot.textContent = data.error;
}

async function plot(div, fig, extra) {
  await plotlyReady;
  const layout = Object.assign({}, fig.layout || {}, {autosize: true});
  delete layout.width;
  return Plotly.react(div, fig.data, layout, Object.assign({responsive: true, displaylogo: false}, extra || {}));
}

function plots(container, figures) {
  clear(container);
  for (const f of figures) { const d = el("div", {class: "plot"}); container.append(d); plot(d, f); }
}

function recipes(container, payload) {
  clear(container);
  for (const [label, key] of [["Copy as Python", "python"], ["Copy as CLI", "cli"]]) {
    const pre = el("pre", {class: "code", "data-kind": key}, payload[key]);
    const btn = el("button", {class: "copy", "data-kind": key, onclick: () => {
      pre.classList.toggle("shown");
      if (navigator.clipboard) navigator.clipboard.writeText(payload[key]).catch(() => {});
    }}, label);
    container.append(btn);
    container.append(pre);
  }
}

function table(headers, rows) {
  const t = el("table", {class: "grid"});
  t.append(el("tr", {}, ...headers.map((h) => el("th", {}, h))));
  for (const r of rows) t.append(el("tr", {}, ...r.map((c) => c instanceof Node ? el("td", {}, c) : el("td", {}, c))));
  return t;
}
const fmt = (x, d = 3) => (typeof x === "number" ? x.toFixed(d) : String(x));

// ---------------------------------------------------------------------------------------------------- jobs
async function submitJob(kind, formId, body, onDone) {
  showError(formId, null);
  const r = await call(`/api/jobs/${kind}`, body);
  if (!r.ok) { showError(formId, r.data); return; }
  const job = r.data;
  if (job.status === "done") { onDone(job.payload, job); renderJobs(); return; }
  JOB_DONE[job.id] = {onDone, formId};
  pollJobs();
}

async function pollJobs() {
  if (polling) return;
  polling = true;
  try {
    while (true) {
      const pending = await renderJobs();
      for (const id of Object.keys(JOB_DONE)) {
        const r = await call(`/api/job/${id}`);
        if (!r.ok) { delete JOB_DONE[id]; continue; }
        const job = r.data;
        if (job.status === "done") { const cb = JOB_DONE[id]; delete JOB_DONE[id]; cb.onDone(job.payload, job); }
        else if (job.status === "failed" || job.status === "cancelled") {
          const cb = JOB_DONE[id]; delete JOB_DONE[id];
          showError(cb.formId, {error: `job ${job.title}: ${job.status}${job.error ? ": " + job.error : ""}`,
                                field: null});
        }
      }
      if (!pending && Object.keys(JOB_DONE).length === 0) break;
      await new Promise((ok) => setTimeout(ok, 400));
    }
  } finally { polling = false; await renderJobs(); }
}

async function renderJobs() {
  const r = await call("/api/jobs");
  if (!r.ok) return false;
  const box = clear($("jobs"));
  let pending = false;
  for (const j of r.data.jobs.slice(0, 6)) {
    const p = j.progress;
    const active = j.status === "queued" || j.status === "running";
    pending = pending || active;
    const bar = el("progress", {max: "1"});
    if (p.fraction !== null) bar.value = p.fraction; else if (j.status !== "running") bar.value = 0;
    let text = `${j.title}: ${j.status}`;
    if (j.status === "queued") text += ` (${j.ahead} ahead)`;
    if (j.status === "running") text += ` ${p.tokens} tokens, ${fmt(p.tokens_per_s, 0)} tok/s` +
                                        (p.eta_s !== null ? `, ETA ${fmt(p.eta_s, 0)} s` : "");
    if (j.status === "done") text += j.cached ? " (from cache)" : ` in ${fmt(p.seconds, 1)} s`;
    if (j.error) text += ": " + j.error;
    const row = el("div", {class: "job " + j.status, "data-job": j.id}, el("span", {}, text), bar);
    if (active) row.append(el("button", {class: "cancel", onclick: () => call(`/api/job/${j.id}/cancel`, {})
                                          .then(pollJobs)}, "Cancel"));
    box.append(row);
  }
  return pending;
}

// ----------------------------------------------------------------------------------------------- workbench
let LENS = null;
async function runLens() {
  await plotlyReady;
  const body = {prompt: $("wb-prompt").value, target: $("wb-target").value || null, top_k: +$("wb-topk").value};
  showError("wb-form", null);
  const r = await call("/api/run/lens", body);
  if (!r.ok) { showError("wb-form", r.data); return; }
  LENS = r.data;
  const div = $("wb-lens-plot");
  await plot(div, r.data.figures[0]);
  div.removeAllListeners && div.removeAllListeners("plotly_hover");
  div.on("plotly_hover", (ev) => lensHover(ev.points[0]));
  div.on("plotly_click", (ev) => lensClick(ev.points[0]));
  if (r.data.figures[1]) plot($("wb-target-plot"), r.data.figures[1]); else Plotly.purge($("wb-target-plot"));
  recipes($("wb-recipes"), r.data);
  div.setAttribute("data-ready", "1");
}
function lensCell(pt) {
  const layer = pt.pointIndex[0], pos = pt.pointIndex[1];
  return {layer, pos, top: LENS.result.top[layer][pos]};
}
function lensHover(pt) {
  const c = lensCell(pt);
  const box = clear($("wb-hover"));
  box.append(el("b", {}, `layer ${c.layer}, position ${c.pos} (${JSON.stringify(LENS.result.tokens[c.pos])})`));
  box.append(table(["token", "prob"], c.top.map((t) => [JSON.stringify(t.token), fmt(t.prob)])));
}
function lensClick(pt) {
  const c = lensCell(pt);
  $("wb-target").value = c.top[0].token;
  runLens();
}
async function runAttention() {
  showError("wb-form", null);
  const r = await call("/api/run/attention", {prompt: $("wb-prompt").value, layer: +$("wb-layer").value});
  if (!r.ok) { showError("wb-form", r.data); return; }
  const res = r.data.result, sel = clear($("wb-head"));
  for (let h = 0; h < res.n_heads; h++) sel.append(el("option", {value: h}, `head ${h}`));
  const draw = () => {
    const h = +sel.value || 0, labels = res.tokens.map((t, i) => `${i}: ${JSON.stringify(t)}`);
    plot($("wb-attn-plot"), {data: [{type: "heatmap", z: res.patterns[h], x: labels, y: labels, colorscale: "Greens",
      zmin: 0, zmax: 1, hovertemplate: "query %{y}<br>key %{x}<br>%{z:.3f}<extra></extra>"}],
      layout: {title: {text: `Attention pattern, layer ${res.layer}, head ${h}`}, yaxis: {autorange: "reversed"},
               xaxis: {title: {text: "key"}}, height: 420}});
  };
  sel.onchange = draw;
  draw();
  recipes($("wb-recipes"), r.data);
}
async function runDla() {
  showError("wb-form", null);
  const r = await call("/api/run/dla", {prompt: $("wb-prompt").value, target: $("wb-target").value,
                                        position: +$("wb-position").value});
  if (!r.ok) { showError("wb-form", r.data.field === "prompt" || r.data.field === "target" ||
                                    r.data.field === "position" ? r.data : r.data); return; }
  plots($("wb-dla-plots"), r.data.figures);
  recipes($("wb-recipes"), r.data);
}

// ------------------------------------------------------------------------------------------------ steering
async function runSteer() {
  const src = $("st-source").value;
  const body = {prompt: $("st-prompt").value, coef: +$("st-coef").value, layer: +$("st-layer").value,
                mode: $("st-ablate").checked ? "ablate" : "add", max_new_tokens: +$("st-new").value};
  if (src.startsWith("vector:")) body.vector = src.slice(7); else body.set = src.slice(4);
  showError("st-form", null);
  $("st-form").setAttribute("data-busy", "1");
  const r = await call("/api/run/steer", body);
  $("st-form").removeAttribute("data-busy");
  if (!r.ok) { showError("st-form", r.data); return; }
  const res = r.data.result;
  $("st-base").textContent = shown(res.baseline);
  $("st-steered").textContent = shown(res.steered);
  $("st-kl").textContent = `KL(edited || clean) on the prompt's next-token distributions: ${res.kl_prompt.toExponential(3)}` +
    ` nats per token | ${res.mode} at ${res.site} | coefficient ${body.coef} x ${fmt(res.vector_norm)} (scale ${res.scale})`;
  recipes($("st-recipes"), r.data);
}

// ------------------------------------------------------------------------------------------------- neuron
function runNeuron() {
  const body = {layer: +$("ne-layer").value, index: +$("ne-index").value, corpus: $("ne-corpus").value,
                n_tokens: +$("ne-tokens").value, top_k: +$("ne-topk").value};
  submitJob("neuron", "ne-form", body, showNeuron);
}
function showNeuron(p) {
  const r = p.result, s = r.stats;
  clear($("ne-stats")).append(el("h3", {}, `Neuron ${r.layer}.${r.index}: ${r.n_tokens} tokens of ${r.corpus}`),
    table(["mean", "std", "active (>0)", "max", "min"], [[fmt(s.mean, 4), fmt(s.std, 4),
      (100 * s.frac_active).toFixed(1) + "%", fmt(s.max), fmt(s.min)]]));
  const rows = r.top_contexts.map((c) => [fmt(c.value), el("span", {class: "ctx"}, c.left,
    el("mark", {}, c.token), c.right), `${c.doc_id}:${c.position}`]);
  clear($("ne-contexts")).append(el("h3", {}, "Top contexts (the firing token highlighted)"),
                                 table(["value", "context", "document:position"], rows));
  const a = r.ablation;
  clear($("ne-ablation")).append(el("p", {}, `Zero ablation at these contexts: mean KL ${a.mean_kl.toExponential(3)}, ` +
    `argmax flips ${(100 * a.argmax_flip_fraction).toFixed(0)}%; rises most: ` +
    a.top_up.slice(0, 5).map((t) => JSON.stringify(t.token)).join(", ") + "; falls most: " +
    a.top_down.slice(0, 5).map((t) => JSON.stringify(t.token)).join(", ") +
    `. Mean ablation: mean KL ${r.mean_ablation.mean_kl.toExponential(3)}.`));
  plots($("ne-plots"), p.figures);
  recipes($("ne-recipes"), p);
}

// ----------------------------------------------------------------------------------------------- circuits
let CIRCUIT = null, PATCHING = null;
function circuitBody() {
  return {task: $("ci-task").value, method: $("ci-method").value, n: +$("ci-n").value,
          max_heads: $("ci-heads").value ? +$("ci-heads").value : undefined};
}
function showCircuit(p) {
  CIRCUIT = p.result;
  const div = $("ci-graph");
  plot(div, p.figures[0]).then(() => {
    div.on("plotly_click", (ev) => {       // a node, or the end of an edge drawn at a node's place
      const pt = ev.points[0];
      const node = pt && CIRCUIT.graph.nodes.find((n) => n.layer === pt.x && n.y === pt.y);
      if (node) showNode(node.name);
    });
    div.setAttribute("data-ready", "1");
  });
  plot($("ci-curve"), p.figures[1]);
  const f = p.result.faithfulness;
  clear($("ci-summary")).append(el("p", {}, `Circuit ${p.result.saved}: ${p.result.circuit.heads.length} heads, ` +
    `${p.result.circuit.mlps.length} MLPs; faithfulness ${fmt(f.faithfulness)} on ${f.n_prompts} held-out prompts ` +
    `(random circuits of the same size: ${fmt(f.random_faithfulness)} ± ${fmt(f.random_std)}).`));
  recipes($("ci-recipes"), p);
  loadInfo();
}
function showNode(name) {
  const g = CIRCUIT.graph, box = clear($("ci-node"));
  box.append(el("h3", {}, `Node ${name}`));
  const m = /^head\.(\d+)\.(\d+)$/.exec(name);
  const scores = CIRCUIT.circuit.scores;
  if (m && scores && scores.heads) box.append(el("p", {}, `${scores.kind}: ${fmt(scores.heads[+m[1]][+m[2]], 4)}`));
  if (m && PATCHING && PATCHING.effects.z) {
    const row = PATCHING.layers.indexOf(+m[1]);
    if (row >= 0) box.append(el("p", {}, `activation patching (z, ${PATCHING.direction}): normalised effect ` +
                                          fmt(PATCHING.effects.z[row][+m[2]])));
  }
  const into = g.edges.filter((e) => e.dst === name).slice(0, 8), out = g.edges.filter((e) => e.src === name).slice(0, 8);
  box.append(el("p", {}, "Strongest edges in (EAP score):"), table(["from", "score"], into.map((e) => [e.src, fmt(e.score, 4)])));
  box.append(el("p", {}, "Strongest edges out:"), table(["to", "score"], out.map((e) => [e.dst, fmt(e.score, 4)])));
  box.setAttribute("data-node", name);
}
function showPatching(p) { PATCHING = p.result; plots($("ci-patching"), p.figures); recipes($("ci-recipes"), p); }

// ---------------------------------------------------------------------------------------------------- SAE
let SAE = null, FEATURE = null;
function showSae(p, job) {
  SAE = {id: job.params.id, features: p.result.features, meta: p.result};
  plot($("sae-density"), p.figures[0]);
  renderFeatures();
  recipes($("sae-recipes"), p);
}
function renderFeatures() {
  if (!SAE) return;
  const q = $("sae-search").value.toLowerCase(), key = $("sae-sort").value;
  let fs = SAE.features.filter((f) => !q || f.top_token.toLowerCase().includes(q));
  fs = fs.slice().sort((a, b) => key === "index" ? a.index - b.index : b[key] - a[key]);
  const box = clear($("sae-list"));
  box.append(el("p", {}, `${SAE.meta.architecture} SAE at ${SAE.meta.site}, ${SAE.meta.features.length} live of ` +
                         `${SAE.meta.d_sae} latents over ${SAE.meta.n_tokens} tokens`));
  const t = table(["latent", "density", "max", "top token"], []);
  for (const f of fs.slice(0, 300)) {
    const tr = el("tr", {class: "feat", "data-latent": f.index, onclick: () => openFeature(f.index)},
      el("td", {}, f.index), el("td", {}, (100 * f.density).toFixed(2) + "%"), el("td", {}, fmt(f.max)),
      el("td", {}, JSON.stringify(f.top_token)));
    t.append(tr);
  }
  box.append(t);
}
async function openFeature(index) {
  showError("sae-form", null);
  const r = await call("/api/run/sae_feature", {id: SAE.id, index});
  if (!r.ok) { showError("sae-form", r.data); return; }
  FEATURE = index;
  const f = r.data.result, box = clear($("sae-dash"));
  box.append(el("h3", {}, `Latent ${f.index}`), el("p", {}, `fires on ${(100 * f.density).toFixed(3)}% of tokens; ` +
    `mean when firing ${fmt(f.mean_active)}, max ${fmt(f.max)}`));
  const rows = f.contexts.map((c) => [fmt(c.value), el("span", {class: "ctx"}, ...c.tokens.map((t, i) => {
    const a = f.max > 0 ? Math.max(0, Math.min(1, c.acts[i] / f.max)) : 0;
    const s = el("span", {title: fmt(c.acts[i]), style: `background: rgba(230,126,34,${a.toFixed(2)})`}, t);
    if (i === c.centre) s.className = "centre";
    return s; }))]);
  box.append(el("h4", {}, "Top contexts"), table(["max", "context"], rows));
  box.append(el("div", {class: "sidebyside"},
    table(["promoted", "effect"], f.promoted.map(([t, v]) => [JSON.stringify(t), fmt(v)])),
    table(["suppressed", "effect"], f.suppressed.map(([t, v]) => [JSON.stringify(t), fmt(v)]))));
  const h = el("div", {class: "plot"}); box.append(h); plot(h, r.data.figures[0]);
  box.setAttribute("data-latent", index);
  recipes($("sae-recipes"), r.data);
}
async function steerFeature() {
  if (FEATURE === null) { showError("sae-form", {error: "open a feature first", field: "index"}); return; }
  showError("sae-form", null);
  const r = await call("/api/run/sae_steer", {id: SAE.id, index: FEATURE, prompt: $("sae-prompt").value,
                                              value: +$("sae-value").value});
  if (!r.ok) { showError("sae-form", r.data); return; }
  const s = r.data.result;
  clear($("sae-steer-out")).append(el("div", {class: "sidebyside"},
    el("div", {}, el("h3", {}, "Clean"), el("pre", {class: "gen"}, shown(s.clean))),
    el("div", {}, el("h3", {}, `Latent ${s.latent} ${s.mode} ${s.value}`), el("pre", {class: "gen"}, shown(s.steered)))));
  recipes($("sae-recipes"), r.data);
}

// ------------------------------------------------------------------------------------------------- papers
function showIntrospection(p) {
  const r = p.result;
  clear($("pa-summary")).append(el("p", {}, r.verdict));
  plots($("pa-plots"), p.figures);
  const byTrial = {};
  for (const [kind, list] of [["injected", r.trials], ["control", r.controls], ["random", r.random_controls]])
    for (const t of list) {
      const key = `${t.trial}|${t.layer === null ? "" : t.layer}|${t.strength === null ? "" : t.strength}`;
      (byTrial[t.trial] = byTrial[t.trial] || []).push([kind, t]);
    }
  const rows = [];
  for (const t of r.trials) {
    const ctl = r.controls.find((c) => c.trial === t.trial);
    const rnd = r.random_controls.find((c) => c.trial === t.trial && c.layer === t.layer && c.strength === t.strength);
    rows.push([`${t.trial}`, `L${t.layer} x${t.strength} ${t.concept}`, t.answer + (t.detected ? "  [detected]" : ""),
               ctl ? ctl.answer : "", rnd ? rnd.answer : ""]);
  }
  clear($("pa-transcripts")).append(el("h3", {}, "Transcripts: injected, control (same prompt, no edit), random direction"),
    table(["trial", "injection", "injected", "control", "random direction"], rows));
  recipes($("pa-recipes"), p);
}
function showIcl(p) {
  const r = p.result;
  clear($("pa-summary")).append(el("p", {}, `Implicit update: rank ${r.rank}; the MLP with context equals the MLP ` +
    `with W + dW without context up to ${r.max_abs_error_mlp.toExponential(2)} (${r.dtype}); block ` +
    `${r.max_abs_error_block.toExponential(2)}.`));
  plots($("pa-plots"), p.figures);
  clear($("pa-transcripts"));
  recipes($("pa-recipes"), p);
}

// --------------------------------------------------------------------------------------------------- runs
async function loadRuns() {
  const [r, runs] = await Promise.all([call("/api/jobs"), call("/api/runs")]);
  if (!r.ok || !runs.ok) return;
  Object.assign(r.data, runs.data);
  clear($("runs-jobs")).append(table(["id", "job", "status", "parameters"],
    r.data.jobs.map((j) => [j.id, j.title, j.status + (j.cached ? " (cache)" : ""), JSON.stringify(j.params)])));
  clear($("runs-cached")).append(table(["job", "parameters", "seconds", ""],
    r.data.cached.map((c) => [c.title, JSON.stringify(c.params), c.seconds,
      el("button", {onclick: () => openCached(c.key, c.title)}, "Re-open")])));
  clear($("runs-files")).append(table(["kind", "file", ""], r.data.files.map((f) => [f.kind, f.name,
    (f.kind === "result" || f.kind === "circuit") ? el("button", {onclick: () => openFile(f.id, f.name)}, "Show") : ""])));
}
async function openCached(key, title) {
  const r = await call(`/api/cached/${encodeURIComponent(key)}`);
  if (!r.ok) return;
  $("runs-open-title").textContent = title;
  const box = clear($("runs-open"));
  const figs = el("div"); box.append(figs); plots(figs, r.data.payload.figures);
  const rec = el("div", {class: "recipes"}); box.append(rec); recipes(rec, r.data.payload);
  box.append(el("pre", {class: "json"}, JSON.stringify(r.data.payload.result, null, 1).slice(0, 20000)));
}
async function openFile(id, name) {
  const r = await call(`/api/runs/${encodeURIComponent(id)}`);
  if (!r.ok) return;
  $("runs-open-title").textContent = name;
  clear($("runs-open")).append(el("pre", {class: "json"}, JSON.stringify(r.data.content, null, 1).slice(0, 20000)));
}

// ------------------------------------------------------------------------------------------------- set-up
function fill(select, items, preferred) {
  const keep = select.options.length ? select.value : preferred;
  clear(select);
  for (const [value, label] of items) select.append(el("option", {value}, label));
  if ([...select.options].some((o) => o.value === keep)) select.value = keep;
}
async function loadInfo() {
  const r = await call("/api/info");
  if (!r.ok) { $("model-info").textContent = r.data.error; return; }
  INFO = r.data;
  $("model-info").textContent = `${INFO.model}: ${INFO.n_layers} layers, ${INFO.n_heads} heads, d_model ` +
                                `${INFO.d_model}, d_mlp ${INFO.d_mlp} | runs folder ${INFO.runs}`;
  fill($("st-source"), INFO.contrast_sets.map((s) => ["set:" + s, "contrast set: " + s])
                       .concat(INFO.vectors.map((v) => ["vector:" + v.id, "vector file: " + v.name])));
  fill($("ne-corpus"), INFO.corpora.map((c) => [c, c]), "wiki");
  fill($("sae-corpus"), INFO.corpora.map((c) => [c, c]), "wiki");
  fill($("ci-task"), INFO.tasks.files.map((t) => [t.id, "task file: " + t.name])
                     .concat(INFO.tasks.builtin.map((t) => [t, t])), "ioi");
  fill($("ci-file"), INFO.circuits.map((c) => [c.id, c.name]));
  fill($("sae-id"), INFO.saes.map((s) => [s.id, s.name]));
  for (const id of ["wb-layer", "st-layer", "ne-layer"]) $(id).max = INFO.n_layers - 1;
  if (!$("pa-layers").value) $("pa-layers").value = [...new Set([Math.floor(INFO.n_layers / 4),
                                                                  Math.floor(INFO.n_layers / 2)])].join(",");
  document.body.setAttribute("data-ready", "1");
}

function tabs() {
  for (const b of document.querySelectorAll("#tabs button")) b.addEventListener("click", () => {
    for (const x of document.querySelectorAll("#tabs button, .view")) x.classList.remove("active");
    b.classList.add("active");
    $(b.dataset.tab).classList.add("active");
    if (b.dataset.tab === "runs") loadRuns();
    window.dispatchEvent(new Event("resize"));
  });
}

window.addEventListener("DOMContentLoaded", () => {
  tabs();
  for (const f of document.querySelectorAll("form")) f.addEventListener("submit", (e) => e.preventDefault());
  $("wb-lens").onclick = runLens;
  $("wb-attn").onclick = runAttention;
  $("wb-dla").onclick = runDla;
  $("st-run").onclick = runSteer;
  $("st-coef").addEventListener("input", () => { $("st-coef-value").textContent = $("st-coef").value; });
  $("st-coef").addEventListener("change", runSteer);
  $("st-ablate").addEventListener("change", runSteer);
  $("ne-run").onclick = runNeuron;
  $("ci-find").onclick = () => submitJob("circuit_find", "ci-form", circuitBody(), showCircuit);
  $("ci-patch").onclick = () => submitJob("patching", "ci-form", circuitBody(), showPatching);
  $("ci-open").onclick = () => submitJob("circuit_open", "ci-form",
    {id: $("ci-file").value, n: +$("ci-n").value, task: $("ci-task").value}, showCircuit);
  $("sae-open").onclick = () => submitJob("sae_open", "sae-form", {id: $("sae-id").value, corpus: $("sae-corpus").value,
                                                                   n_tokens: +$("sae-tokens").value}, showSae);
  $("sae-search").addEventListener("input", renderFeatures);
  $("sae-sort").addEventListener("change", renderFeatures);
  $("sae-steer").onclick = steerFeature;
  $("pa-intro").onclick = () => submitJob("introspect", "pa-form", {concepts: $("pa-concepts").value,
    layers: $("pa-layers").value, strengths: $("pa-strengths").value, max_new_tokens: +$("pa-new").value},
    showIntrospection);
  $("pa-icl").onclick = () => submitJob("icl_update", "pa-form", {prompt: $("pa-prompt").value,
                                                                  orders: +$("pa-orders").value}, showIcl);
  $("runs-refresh").onclick = loadRuns;
  loadInfo().then(renderJobs);
});
