// The GistNet dashboard. Every number shown comes from the JSON routes a script would use
// (/datasets, /jobs, /jobs/{id}/events, /models, /evaluations, /gist, /score, /generate); nothing here
// computes what the server knows, only what it is asked to show (norms and cosines of the
// gists /gist returned).

import { lineChart } from "./chart.js";

const KEY_STORE = "gistnet-api-key";
const TERMINAL = ["succeeded", "failed", "cancelled"];
const page = document.getElementById("page");
let cleanup = () => {};

// ------------------------------------------------------------------ HTTP

class ApiError extends Error {
  constructor(status, detail) {
    super(typeof detail === "string" ? detail : JSON.stringify(detail));
    this.status = status;
  }
}

function authHeaders() {
  const key = localStorage.getItem(KEY_STORE);
  return key ? { Authorization: `Bearer ${key}` } : {};
}

let keyPrompt = null; // one prompt however many requests were refused at once

function askForKey(message) {
  if (keyPrompt) return keyPrompt;
  const dialog = document.getElementById("key-dialog");
  const form = document.getElementById("key-form");
  const input = document.getElementById("key-input");
  const error = document.getElementById("key-error");
  error.hidden = !message;
  error.textContent = message || "";
  input.value = "";
  keyPrompt = new Promise((resolve) => {
    form.onsubmit = (event) => {
      event.preventDefault();
      localStorage.setItem(KEY_STORE, input.value.trim());
      dialog.close();
      keyPrompt = null;
      showKeyButton();
      resolve();
    };
  });
  dialog.showModal();
  return keyPrompt;
}

async function api(method, path, { json, form } = {}) {
  for (let tries = 0; ; tries++) {
    const headers = authHeaders();
    let body;
    if (form) body = form;
    else if (json !== undefined) {
      headers["Content-Type"] = "application/json";
      body = JSON.stringify(json);
    }
    const response = await fetch(path, { method, headers, body });
    if (response.status === 401 && tries < 5) {
      await askForKey(tries ? "That key was refused." : "");
      continue;
    }
    const type = response.headers.get("content-type") || "";
    const data = type.includes("json") ? await response.json() : await response.text();
    if (!response.ok) throw new ApiError(response.status, data.detail ?? data);
    return data;
  }
}

// Server-Sent Events read through fetch: EventSource cannot send the bearer header.
async function streamEvents(path, onEvent, signal) {
  const response = await fetch(path, { headers: authHeaders(), signal });
  if (!response.ok || !response.body) throw new ApiError(response.status, "no event stream");
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let event = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith(":")) continue;
        const at = line.indexOf(":");
        const field = at < 0 ? line : line.slice(0, at);
        const text = at < 0 ? "" : line.slice(at + 1).replace(/^ /, "");
        if (field === "event") event = text;
        else if (field === "data") data.push(text);
      }
      if (data.length) onEvent(event, JSON.parse(data.join("\n")));
    }
  }
}

// ------------------------------------------------------------------ helpers

const esc = (v) =>
  String(v ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
const num = (v, digits = 4) => (v === null || v === undefined ? "" : Number(v).toFixed(digits));
const int = (v) => (v === null || v === undefined ? "" : Number(v).toLocaleString("en-US"));
const badge = (s) => `<span class="badge ${esc(s)}">${esc(s)}</span>`;
const when = (t) => (t ? new Date(t).toLocaleString() : "");

function bytes(n) {
  if (n === null || n === undefined) return "";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

function flash(message, isError = false) {
  const box = document.getElementById("flash");
  box.textContent = message;
  box.className = isError ? "error" : "";
  box.hidden = !message;
}

function showKeyButton() {
  const button = document.getElementById("forget-key");
  button.hidden = !localStorage.getItem(KEY_STORE);
  button.onclick = () => {
    localStorage.removeItem(KEY_STORE);
    button.hidden = true;
    route();
  };
}

function progressBar(job, wide = false) {
  const p = job.progress || {};
  if (!p.max_steps) {
    const d = p.detail || {};
    const text = d.tokens !== undefined ? `${d.split || ""} ${int(d.documents)} docs, ${int(d.tokens)} tokens` : "";
    return `<span class="muted">${esc(text)}</span>`;
  }
  const share = Math.min(1, (p.step || 0) / p.max_steps);
  return `<span class="progress${wide ? " wide" : ""}" title="${p.step || 0} / ${p.max_steps}"><div style="width:${(share * 100).toFixed(1)}%"></div></span>
    <span class="muted">${int(p.step || 0)} / ${int(p.max_steps)}</span>`;
}

// Re-run `load` every `ms` while the page is shown.
function every(ms, load) {
  let stopped = false;
  let timer;
  const tick = async () => {
    if (stopped) return;
    try { await load(); } catch (err) { flash(err.message, true); }
    if (!stopped) timer = setTimeout(tick, ms);
  };
  tick();
  return () => { stopped = true; clearTimeout(timer); };
}

function formValues(form) {
  return Object.fromEntries([...new FormData(form).entries()].filter(([, v]) => typeof v === "string"));
}

// ------------------------------------------------------------------ datasets

function datasetsPage() {
  page.innerHTML = `
    <h1>Datasets</h1>
    <table id="datasets-table"><thead><tr>
      <th>ID</th><th>Name</th><th>Status</th><th>Splits</th><th class="num">Documents</th>
      <th class="num">Examples</th><th class="num">Bytes</th><th>Source</th><th>Job</th><th></th>
    </tr></thead><tbody></tbody></table>
    <h2>New dataset</h2>
    <div class="card">
      <form id="dataset-form" class="grid">
        <label for="ds-name">Name</label><input id="ds-name" name="dataset_name" type="text" required pattern="[A-Za-z0-9._\\-]+">
        <label for="ds-teacher">Teacher model</label><input id="ds-teacher" name="teacher_model" type="text" required placeholder="a Hugging Face id or a folder the server can read">
        <label for="ds-tokenizer">Tokenizer</label><input id="ds-tokenizer" name="tokenizer" type="text" placeholder="default: the teacher's">
        <label for="ds-block">Block size</label><input id="ds-block" name="block_size" type="number" value="32" min="1">
        <label for="ds-horizon">Horizon</label><input id="ds-horizon" name="horizon" type="number" value="64" min="1">
        <label for="ds-train-files">Train files</label><input id="ds-train-files" name="train_files" type="file" multiple accept=".txt,.jsonl">
        <label for="ds-validation-files">Validation files</label><input id="ds-validation-files" name="validation_files" type="file" multiple accept=".txt,.jsonl">
        <span class="muted full">…or name files already under the server's data root (a file or glob):</span>
        <label for="ds-train-source">Train source</label><input id="ds-train-source" name="train_source" type="text" placeholder="corpus/train/*.txt">
        <label for="ds-validation-source">Validation source</label><input id="ds-validation-source" name="validation_source" type="text" placeholder="corpus/validation.jsonl">
        <span></span><div><button type="submit" id="ds-submit">Create dataset</button></div>
      </form>
    </div>`;

  const form = document.getElementById("dataset-form");
  form.onsubmit = async (event) => {
    event.preventDefault();
    const v = formValues(form);
    const config = {
      dataset_name: v.dataset_name,
      teacher_model: v.teacher_model,
      tokenizer: v.tokenizer || v.teacher_model,
      block_size: Number(v.block_size),
      horizon: Number(v.horizon),
      splits: {},
    };
    const upload = new FormData();
    let files = 0;
    for (const split of ["train", "validation"]) {
      const picked = document.getElementById(`ds-${split}-files`).files;
      for (const file of picked) { upload.append(split, file, file.name); files++; }
      if (!picked.length && v[`${split}_source`]) config.splits[split] = { source: v[`${split}_source`] };
    }
    try {
      let accepted;
      if (files) {
        upload.append("config", JSON.stringify(config));
        accepted = await api("POST", "/datasets", { form: upload });
      } else {
        accepted = await api("POST", "/datasets", { json: config });
      }
      flash(`Dataset ${accepted.dataset_id} queued for preparation (job ${accepted.job_id}).`);
      form.reset();
      await load();
    } catch (err) {
      flash(err.message, true);
    }
  };

  const body = page.querySelector("#datasets-table tbody");
  async function load() {
    const { data } = await api("GET", "/datasets");
    body.innerHTML = data.map((d) => {
      const splits = Object.values(d.splits || {});
      const sum = (key) => (splits.length ? splits.reduce((a, s) => a + (s[key] || 0), 0) : null);
      const sources = Object.entries(d.sources || {}).map(([k, s]) => `${esc(k)}: ${esc(s)}`).join("<br>");
      return `<tr data-dataset="${d.id}">
        <td>${d.id}</td><td>${esc(d.name)}</td><td>${badge(d.status)}${d.error ? `<div class="error">${esc(d.error)}</div>` : ""}</td>
        <td>${esc(Object.keys(d.splits || {}).join(", "))}</td>
        <td class="num">${int(sum("documents"))}</td><td class="num">${int(sum("examples"))}</td>
        <td class="num">${bytes(sum("bytes"))}</td><td class="muted">${sources}</td>
        <td>${d.job_id ? `<a href="#/jobs/${d.job_id}">${d.job_id}</a>` : ""}</td>
        <td>${d.status === "ready" ? `<a class="button" href="#/train/${d.id}">Train</a>` : ""}</td>
      </tr>`;
    }).join("") || `<tr><td colspan="10" class="muted">No datasets yet.</td></tr>`;
  }
  return every(3000, load);
}

// ------------------------------------------------------------------ training form

function trainPage(datasetId) {
  page.innerHTML = `
    <h1>Train on dataset ${esc(datasetId)}</h1>
    <div class="card">
      <form id="train-form" class="grid">
        <label for="tr-split">Split</label><input id="tr-split" name="split" type="text" value="train">
        <label for="tr-objective">Objective</label>
        <select id="tr-objective" name="objective"><option>mse</option><option>substitution</option></select>
        <label for="tr-steps">Max steps</label><input id="tr-steps" name="max_steps" type="number" value="200" min="1">
        <label for="tr-batch">Batch size</label><input id="tr-batch" name="batch_size" type="number" value="64" min="1">
        <label for="tr-lr">Learning rate</label><input id="tr-lr" name="lr" type="number" value="0.001" step="any">
        <label for="tr-eval">Validate every</label><input id="tr-eval" name="eval_every" type="number" value="50" min="1">
        <label for="tr-heads">Heads</label><input id="tr-heads" name="num_heads" type="number" value="4" min="1">
        <label for="tr-layers">Layers</label><input id="tr-layers" name="num_layers" type="number" value="1" min="1">
        <span></span><div><button type="submit" id="tr-submit">Start training</button></div>
      </form>
    </div>`;
  const form = document.getElementById("train-form");
  form.onsubmit = async (event) => {
    event.preventDefault();
    const v = formValues(form);
    const body = {
      dataset_id: Number(datasetId),
      split: v.split,
      model: { num_heads: Number(v.num_heads), num_layers: Number(v.num_layers) },
      training: {
        objective: v.objective,
        max_steps: Number(v.max_steps),
        batch_size: Number(v.batch_size),
        lr: Number(v.lr),
        eval_every: Number(v.eval_every),
      },
    };
    try {
      const accepted = await api("POST", "/train", { json: body });
      flash(`Training queued: job ${accepted.job_id}.`);
      location.hash = `#/jobs/${accepted.job_id}`;
    } catch (err) {
      flash(err.message, true);
    }
  };
  return () => {};
}

// ------------------------------------------------------------------ jobs

async function cancelJob(id) {
  try {
    await api("POST", `/jobs/${id}/cancel`);
    flash(`Asked job ${id} to stop.`);
  } catch (err) {
    flash(err.message, true);
  }
}

function jobsPage() {
  page.innerHTML = `
    <h1>Jobs</h1>
    <table id="jobs-table"><thead><tr>
      <th>ID</th><th>Kind</th><th>Status</th><th>Progress</th><th class="num">Attempt</th>
      <th>Worker</th><th>Error</th><th>Created</th><th></th>
    </tr></thead><tbody></tbody></table>`;
  const body = page.querySelector("#jobs-table tbody");
  body.onclick = (event) => {
    const id = event.target.dataset.cancel;
    if (id) cancelJob(id);
  };
  return every(2000, async () => {
    const { data } = await api("GET", "/jobs");
    body.innerHTML = data.map((j) => `<tr data-job="${j.id}">
      <td><a href="#/jobs/${j.id}">${j.id}</a></td><td>${esc(j.kind)}</td><td>${badge(j.status)}</td>
      <td>${progressBar(j)}</td><td class="num">${j.attempt}</td><td class="muted">${esc(j.worker)}</td>
      <td class="error">${esc(j.error?.message)}</td><td class="muted">${when(j.created_at)}</td>
      <td>${TERMINAL.includes(j.status) ? "" : `<button class="danger" data-cancel="${j.id}">Cancel</button>`}</td>
    </tr>`).join("") || `<tr><td colspan="9" class="muted">No jobs yet.</td></tr>`;
  });
}

function jobPage(jobId) {
  page.innerHTML = `
    <h1>Job ${esc(jobId)} <span id="job-status"></span> <span id="live" class="live"></span></h1>
    <div class="card">
      <div id="job-progress"></div>
      <dl class="kv" id="job-facts"></dl>
      <div id="job-actions" style="margin-top:0.8rem"></div>
    </div>
    <div id="curves" hidden>
      <h2>Loss</h2><div class="chart" id="loss-chart"></div>
      <h2>Learning rate</h2><div class="chart" id="lr-chart"></div>
    </div>`;
  const points = new Map(); // step -> point: a resent point replaces the old one
  let job = null;
  let lastDrawn = -1;

  function showJob(j) {
    job = j;
    document.getElementById("job-status").innerHTML = badge(j.status);
    document.getElementById("job-progress").innerHTML = progressBar(j, true);
    const p = j.progress || {};
    const result = Object.entries(j.result || {}).filter(([, v]) => v !== null);
    const facts = [
      ["Kind", esc(j.kind)], ["Queue", esc(j.queue)], ["Attempt", j.attempt],
      ["Worker", esc(j.worker)], ["Device", esc(j.device)],
      ["Loss", num(p.loss)], ["Examples/s", num(p.examples_per_sec, 1)],
      ["Started", when(j.started_at)], ["Finished", when(j.finished_at)],
      ...result.map(([k, v]) => [k, k === "model_id" ? `<a href="#/models/${v}">${v}</a>` : v]),
    ];
    if (j.error) facts.push(["Error", `<span class="error">${esc(j.error.message)}</span>`]);
    document.getElementById("job-facts").innerHTML = facts.map(([k, v]) => `<dt>${k}</dt><dd>${v ?? ""}</dd>`).join("");
    document.getElementById("job-actions").innerHTML = TERMINAL.includes(j.status)
      ? "" : `<button class="danger" id="cancel-job">Cancel</button>`;
    const cancel = document.getElementById("cancel-job");
    if (cancel) cancel.onclick = () => cancelJob(j.id);
    if (j.kind === "train") document.getElementById("curves").hidden = false;
  }

  function addPoints(list) {
    for (const point of list) points.set(point.step, point);
    draw();
  }

  function draw() {
    if (points.size === lastDrawn || !job || job.kind !== "train") return;
    lastDrawn = points.size;
    const sorted = [...points.values()].sort((a, b) => a.step - b.step);
    const loss = lineChart([
      { name: "train loss", points: sorted.map((p) => [p.step, p.loss]) },
      { name: "validation loss", points: sorted.filter((p) => p.val_loss !== null).map((p) => [p.step, p.val_loss]), dots: true },
    ], { xLabel: "step", yLabel: "loss" });
    document.getElementById("loss-chart").replaceChildren(loss);
    const lr = lineChart([{ name: "lr", points: sorted.filter((p) => p.lr !== null).map((p) => [p.step, p.lr]) }],
      { xLabel: "step", yLabel: "learning rate", height: 180 });
    document.getElementById("lr-chart").replaceChildren(lr);
  }

  const abort = new AbortController();
  let stopPolling = () => {};
  const live = document.getElementById("live");

  function poll() {
    live.textContent = "polling";
    stopPolling = every(2000, async () => {
      const [j, metrics] = await Promise.all([
        api("GET", `/jobs/${jobId}`), api("GET", `/jobs/${jobId}/metrics`),
      ]);
      showJob(j);
      addPoints(metrics.data);
      if (TERMINAL.includes(j.status)) stopPolling();
    });
  }

  (async () => {
    try {
      await api("GET", `/jobs/${jobId}`).then(showJob); // also asks for the key if needed
      live.textContent = "live";
      await streamEvents(`/jobs/${jobId}/events`, (event, data) => {
        if (event === "state" || event === "end") showJob(data);
        if (event === "metrics") addPoints(data.data);
        if (event === "end") live.textContent = "";
      }, abort.signal);
      if (job && !TERMINAL.includes(job.status)) poll(); // the stream ended early
    } catch (err) {
      if (abort.signal.aborted) return;
      if (err instanceof ApiError && err.status === 404) { flash(err.message, true); return; }
      console.warn(`event stream of job ${jobId} unavailable, polling instead: ${err}`);
      poll(); // no stream: read the same routes every few seconds
    }
  })();
  return () => { abort.abort(); stopPolling(); };
}

// ------------------------------------------------------------------ models

function modelsPage() {
  page.innerHTML = `
    <h1>Models</h1>
    <table id="models-table"><thead><tr>
      <th>ID</th><th>Dataset</th><th class="num">Steps</th><th class="num">Final loss</th>
      <th class="num">Validation loss</th><th>Objective</th><th>Job</th><th>Created</th>
    </tr></thead><tbody></tbody></table>`;
  const body = page.querySelector("#models-table tbody");
  return every(5000, async () => {
    const { data } = await api("GET", "/models");
    body.innerHTML = data.map((m) => `<tr data-model="${m.id}">
      <td><a href="#/models/${m.id}">${m.id}</a></td><td>${m.dataset_id}</td><td class="num">${int(m.steps)}</td>
      <td class="num">${num(m.final_loss)}</td><td class="num">${num(m.val_loss)}</td>
      <td>${esc(m.training_config?.objective)}</td><td><a href="#/jobs/${m.job_id}">${m.job_id}</a></td>
      <td class="muted">${when(m.created_at)}</td></tr>`).join("") || `<tr><td colspan="8" class="muted">No models yet: train one from a dataset.</td></tr>`;
  });
}

function interval(stat) {
  if (!stat || stat.value === null || stat.value === undefined) return "";
  const ci = stat.ci95 && stat.ci95[0] !== null ? ` <span class="muted">[${num(stat.ci95[0], 3)}, ${num(stat.ci95[1], 3)}]</span>` : "";
  return `${num(stat.value, 3)}${ci}`;
}

function evaluationView(evaluation) {
  if (!evaluation) return `<p class="muted">Not evaluated yet.</p>`;
  const head = `<p>Evaluation ${evaluation.id} on dataset ${evaluation.dataset_id} (${esc(evaluation.split)}): ${badge(evaluation.status)}</p>`;
  const report = evaluation.report;
  if (!report) return head;
  const rows = Object.entries(report.conditions).map(([name, c]) => `<tr data-condition="${esc(name)}">
    <td>${esc(name)}</td><td class="num">${interval(c.nll)}</td><td class="num">${interval(c.delta_nll)}</td>
    <td class="num">${interval(c.gap_recovered ?? c.gap_recovered_long)}</td></tr>`).join("");
  const comparisons = Object.entries(report.comparisons || {}).map(([k, v]) => `<dt>${esc(k.replaceAll("_", " "))}</dt><dd>${interval(v)}</dd>`).join("");
  const bars = Object.entries(report.quality_bars || {}).map(([k, v]) => `<dt>${esc(k.replaceAll("_", " "))}</dt><dd>${v === null ? "n/a" : v ? "✔ yes" : "✘ no"}</dd>`).join("");
  return `${head}
    <p class="muted">${int(report.n_examples)} examples, ${report.mode === "long" ? `${report.context_tokens} context tokens (GR long: of what truncation to ${report.compressed_positions} positions loses), ${report.score_tokens} scored` : `${report.horizon_tokens} horizon tokens`}, 95% bootstrap intervals over ${int(report.bootstrap_samples)} resamples.</p>
    <table id="gap-table"><thead><tr><th>Condition</th><th class="num">NLL</th><th class="num">ΔNLL</th><th class="num">Gap recovered</th></tr></thead>
    <tbody>${rows}</tbody></table>
    <div class="row" style="margin-top:1rem"><dl class="kv">${comparisons}</dl><dl class="kv">${bars}</dl></div>
    <h2>NLL per horizon position</h2><div class="chart" id="position-chart"></div>`;
}

function modelPage(modelId) {
  page.innerHTML = `<h1>Model ${esc(modelId)}</h1><div id="model-body">Loading…</div>`;
  let stopWatch = () => {};
  async function load() {
    const m = await api("GET", `/models/${modelId}`);
    const evaluation = m.latest_evaluation;
    document.getElementById("model-body").innerHTML = `
      <div class="row">
        <div class="card"><h2>Metrics</h2><dl class="kv">
          <dt>Dataset</dt><dd>${m.dataset_id} (${esc(m.split)})</dd><dt>Steps</dt><dd>${int(m.steps)}</dd>
          <dt>Final loss</dt><dd>${num(m.final_loss)}</dd><dt>Validation loss</dt><dd>${num(m.val_loss)}</dd>
          <dt>Gist width</dt><dd>${m.hidden_size}</dd><dt>Block size</dt><dd>${m.block_size}</dd>
          <dt>Teacher</dt><dd>${esc(m.teacher)}</dd><dt>Trained by</dt><dd><a href="#/jobs/${m.job_id}">job ${m.job_id}</a></dd>
        </dl></div>
        <div class="card"><h2>Config</h2><pre>${esc(JSON.stringify({ model: m.model_config, training: m.training_config }, null, 2))}</pre></div>
      </div>
      <div class="card"><h2>Evaluation</h2>
        <form id="eval-form" class="row">
          <label>Dataset <input name="dataset_id" type="number" value="${m.dataset_id}" style="width:6rem"></label>
          <label>Split <input name="split" type="text" value="validation" style="width:8rem"></label>
          <label>Max examples <input name="max_examples" type="number" value="256" min="1" style="width:7rem"></label>
          <label>Bootstrap samples <input name="bootstrap_samples" type="number" value="200" min="10" style="width:7rem"></label>
          <button type="submit" id="eval-submit">Evaluate</button>
        </form>
        <div id="evaluation">${evaluationView(evaluation)}</div>
      </div>`;
    if (evaluation?.report) {
      const series = Object.entries(evaluation.report.conditions).map(([name, c]) => ({
        name, points: c.nll_per_position.map((v, i) => [i + 1, v]),
      }));
      document.getElementById("position-chart").replaceChildren(
        lineChart(series, { xLabel: "horizon position", yLabel: "NLL (nats/token)", height: 260 }));
    }
    const form = document.getElementById("eval-form");
    form.onsubmit = async (event) => {
      event.preventDefault();
      const v = formValues(form);
      try {
        const accepted = await api("POST", "/evaluations", { json: {
          model_id: Number(modelId), dataset_id: Number(v.dataset_id), split: v.split,
          max_examples: v.max_examples ? Number(v.max_examples) : null,
          bootstrap_samples: Number(v.bootstrap_samples),
        } });
        flash(`Evaluation ${accepted.evaluation_id} queued (job ${accepted.job_id}).`);
        watch(accepted.job_id);
      } catch (err) {
        flash(err.message, true);
      }
    };
    return evaluation;
  }
  // Follow a running evaluation's job, then show its report.
  function watch(jobId) {
    stopWatch();
    stopWatch = every(1500, async () => {
      const j = await api("GET", `/jobs/${jobId}`);
      document.getElementById("evaluation").innerHTML = `<p>Evaluating (job <a href="#/jobs/${j.id}">${j.id}</a>): ${badge(j.status)} ${progressBar(j)}</p>`;
      if (TERMINAL.includes(j.status)) {
        stopWatch();
        if (j.status !== "succeeded") flash(`Evaluation job ${j.id} ${j.status}: ${j.error?.message || ""}`, true);
        await load();
      }
    });
  }
  load().then((evaluation) => {
    if (evaluation && !evaluation.report && !["failed", "cancelled"].includes(evaluation.status)) watch(evaluation.job_id);
  }).catch((err) => flash(err.message, true));
  return () => stopWatch();
}

// ------------------------------------------------------------------ try it

function tryPage() {
  page.innerHTML = `
    <h1>Try it</h1>
    <div class="card">
      <form id="try-form" class="grid">
        <label for="try-model">Model</label><select id="try-model" name="model_id"></select>
        <label for="try-text">Text</label><textarea id="try-text" name="text" placeholder="Paste a few sentences: every full block of tokens becomes one gist."></textarea>
        <span></span><div><button type="submit" id="try-submit">Gist it</button></div>
      </form>
    </div>
    <div id="try-result"></div>
    <h2>A long text as context: full, truncated and compressed</h2>
    <div class="card">
      <form id="context-form" class="grid">
        <label for="context-model">Model</label><select id="context-model" name="model_id"></select>
        <label for="context-text">Long text</label><textarea id="context-text" name="text" placeholder="Paste a long document: it is read whole (full), as its last tokens only (truncated, at the compressed budget), and as its blocks' gists (compressed)."></textarea>
        <label for="context-prompt">Prompt</label><input type="text" id="context-prompt" name="prompt" placeholder="Read after the context; the continuation follows it">
        <label for="context-expected">Continuation to score</label><input type="text" id="context-expected" name="expected" placeholder="Scored after the context and the prompt (empty: the prompt is scored after the context)">
        <label for="context-tokens">New tokens</label><input type="number" id="context-tokens" name="max_new_tokens" value="32" min="1">
        <span></span><div><button type="submit" id="context-submit">Compare</button></div>
      </form>
    </div>
    <div id="context-result"></div>`;
  const selects = [document.getElementById("try-model"), document.getElementById("context-model")];
  api("GET", "/models").then(({ data }) => {
    const options = data.map((m) => `<option value="${m.id}">model ${m.id} (dataset ${m.dataset_id}, ${m.steps} steps)</option>`).join("")
      || `<option value="">no model yet</option>`;
    selects.forEach((select) => { select.innerHTML = options; });
  }).catch((err) => flash(err.message, true));
  const contextForm = document.getElementById("context-form");
  contextForm.onsubmit = async (event) => {
    event.preventDefault();
    document.getElementById("context-submit").disabled = true;
    try {
      showContexts(await compareContexts(formValues(contextForm)));
    } catch (err) {
      flash(err.message, true);
    } finally {
      document.getElementById("context-submit").disabled = false;
    }
  };

  const form = document.getElementById("try-form");
  form.onsubmit = async (event) => {
    event.preventDefault();
    const v = formValues(form);
    try {
      const answer = await api("POST", "/gist", { json: {
        text: v.text, model_id: v.model_id ? Number(v.model_id) : null, encoding: "float",
      } });
      showGists(answer);
    } catch (err) {
      flash(err.message, true);
    }
  };
  return () => {};
}

// The three readings of one long text, each through POST /generate and POST /score: the
// truncated one keeps as many of the text's last tokens as the compressed one reads.
async function compareContexts(v) {
  const model_id = v.model_id ? Number(v.model_id) : null;
  const prompt = v.prompt || "";
  const generate = (part) => api("POST", "/generate", { json: {
    model_id, context: [part], prompt, max_new_tokens: Number(v.max_new_tokens) || 32,
  } });
  const score = (part) => api("POST", "/score", { json: v.expected
    ? { model_id, context: [part, { text: prompt }], continuation: v.expected }
    : { model_id, context: [part], continuation: prompt } });
  const run = async (name, part) => {
    try {
      const [generation, scored] = await Promise.all([generate(part), score(part)]);
      return { name, generation, scored };
    } catch (err) {
      return { name, error: err.message };
    }
  };
  const compressed = await run("compressed", { compress: v.text });
  const budget = compressed.generation
    ? compressed.generation.context_length - compressed.generation.prompt_tokens : null;
  const full = await run("full", { text: v.text });
  const truncated = budget === null
    ? { name: "truncated", error: "no budget: the compressed reading failed" }
    : await run("truncated", { text: v.text, keep_last: budget });
  return { scoredText: v.expected ? "the continuation" : "the prompt", rows: [full, truncated, compressed] };
}

function showContexts({ scoredText, rows }) {
  const cells = rows.map((r) => r.error
    ? `<tr><td>${esc(r.name)}</td><td colspan="4" class="error">${esc(r.error)}</td></tr>`
    : `<tr data-context="${esc(r.name)}"><td>${esc(r.name)}</td>
        <td class="num">${int(r.generation.context_length)}</td>
        <td class="num">${int(r.generation.uncompressed_length)}</td>
        <td class="num">${num(r.scored.mean_nll)}</td>
        <td class="block-text">${esc(r.generation.text ?? "")}</td></tr>`).join("");
  document.getElementById("context-result").innerHTML = `
    <table id="context-table"><thead><tr><th>Context</th><th class="num">Positions read</th>
      <th class="num">Positions of its text</th><th class="num">Mean NLL of ${esc(scoredText)}</th>
      <th>Continuation</th></tr></thead><tbody>${cells}</tbody></table>
    <p class="muted">Positions read include the prompt: what the teacher's prefill and KV cache hold.</p>`;
}

function showGists(answer) {
  const gists = answer.gists;
  const norms = gists.map((g) => Math.hypot(...g));
  const cosine = (i, j) => gists[i].reduce((a, x, k) => a + x * gists[j][k], 0) / (norms[i] * norms[j] || 1);
  const texts = answer.block_texts || gists.map(() => "");
  const blocks = gists.map((_, i) => `<tr data-block="${i}"><td>${i}</td><td class="block-text">${esc(texts[i])}</td>
    <td class="num">${num(norms[i])}</td></tr>`).join("");
  const heat = (c) => {
    const t = Math.max(0, Math.min(1, (c + 1) / 2));
    return `rgb(${Math.round(255 - 200 * t)}, ${Math.round(255 - 120 * t)}, 255)`;
  };
  const matrix = gists.map((_, i) => `<tr><th>${i}</th>${gists.map((__, j) => {
    const c = cosine(i, j);
    return `<td style="background:${heat(c)}" title="blocks ${i} and ${j}">${c.toFixed(2)}</td>`;
  }).join("")}</tr>`).join("");
  document.getElementById("try-result").innerHTML = `
    <p>Model ${answer.model_id}: ${gists.length} block(s) of ${answer.block_size} tokens, gists of dimension ${answer.dim}
      (${answer.tokens} tokens; ${answer.unused_tokens} left over, too few for a block).</p>
    <h2>Blocks</h2>
    <table id="blocks-table"><thead><tr><th>#</th><th>Text of the block</th><th class="num">Gist norm</th></tr></thead><tbody>${blocks}</tbody></table>
    <h2>Cosine similarity between gists</h2>
    <table class="heat" id="cosine-table" style="width:auto"><thead><tr><th></th>${gists.map((_, j) => `<th>${j}</th>`).join("")}</tr></thead><tbody>${matrix}</tbody></table>`;
}

// ------------------------------------------------------------------ router

const ROUTES = [
  [/^#\/datasets$/, datasetsPage, "datasets"],
  [/^#\/train\/(\d+)$/, trainPage, "datasets"],
  [/^#\/jobs$/, jobsPage, "jobs"],
  [/^#\/jobs\/(\d+)$/, jobPage, "jobs"],
  [/^#\/models$/, modelsPage, "models"],
  [/^#\/models\/(\d+)$/, modelPage, "models"],
  [/^#\/try$/, tryPage, "try"],
];

function route() {
  cleanup();
  flash("");
  const hash = location.hash || "#/datasets";
  for (const [pattern, render, section] of ROUTES) {
    const match = hash.match(pattern);
    if (match) {
      document.querySelectorAll("nav a").forEach((a) => a.classList.toggle("active", a.dataset.page === section));
      cleanup = render(...match.slice(1)) || (() => {});
      return;
    }
  }
  location.hash = "#/datasets";
}

window.addEventListener("hashchange", route);
showKeyButton();
route();
