// pulmo home page: send a study (files, a folder or a zip; drag and drop or pick), watch the job list update
// live (status, stage, progress), open each job's viewer, download its results, delete it.
// Vanilla JS, no build step. With `pulmo serve --token`, the token is asked once and kept in a same-site cookie
// (pulmo_token) that the API and the viewer accept; `/#token=...` works too.
"use strict";

(() => {
  const API = "/api/v1";
  const MAX_FILES = 2000;  // the service's limit of files per upload (ServiceConfig.max_files): zip more
  const $ = (id) => document.getElementById(id);
  const state = { selection: [], label: "", uploading: false, files: new Map(), fresh: null, timer: null };

  class AuthNeeded extends Error {}

  function setCookie(token) {
    document.cookie = `pulmo_token=${encodeURIComponent(token)}; path=/; SameSite=Strict`;
  }

  function takeTokenFromHash() {
    const m = location.hash.match(/token=([^&]+)/);
    if (m) {
      setCookie(decodeURIComponent(m[1]));
      history.replaceState(null, "", location.pathname);
    }
  }

  function showAuth(message) {
    $("auth").hidden = false;
    $("upload-section").hidden = true;
    $("jobs-section").hidden = true;
    document.body.dataset.state = "auth";
    if (message) { $("auth-error").textContent = message; $("auth-error").hidden = false; }
    $("auth-token").focus();
  }

  $("auth-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    setCookie($("auth-token").value.trim());
    $("auth").hidden = true;
    $("upload-section").hidden = false;
    $("jobs-section").hidden = false;
    $("auth-error").hidden = true;
    refresh();
  });

  async function api(path, options = {}) {
    const r = await fetch(API + path, { credentials: "same-origin", cache: "no-store", ...options });
    const body = await r.json().catch(() => ({}));
    if (r.status === 401) {
      showAuth(document.cookie.includes("pulmo_token=") ? "The token was not accepted; try again." : "");
      throw new AuthNeeded(body.detail || "a valid token is required");
    }
    if (!r.ok) throw new Error(body.detail || `HTTP ${r.status}`);
    return body;
  }

  // ------------------------------------------------------------------ selection: drop or pick
  const hiddenName = (name) => name.startsWith(".") || name === "Thumbs.db" || name === "desktop.ini";

  function readEntries(reader) {
    return new Promise((resolve, reject) => reader.readEntries(resolve, reject));
  }

  async function walk(entry, out) {
    if (hiddenName(entry.name)) return;
    if (entry.isFile) {
      out.push(await new Promise((resolve, reject) => entry.file(resolve, reject)));
    } else if (entry.isDirectory) {
      const reader = entry.createReader();
      for (;;) {  // readEntries answers in batches (100 in Chromium) until an empty one
        const batch = await readEntries(reader);
        if (!batch.length) break;
        for (const child of batch) await walk(child, out);
      }
    }
  }

  function human(bytes) {
    if (bytes < 1024) return `${bytes} B`;
    if (bytes < 1024 ** 2) return `${(bytes / 1024).toFixed(1)} KiB`;
    if (bytes < 1024 ** 3) return `${(bytes / 1024 ** 2).toFixed(1)} MiB`;
    return `${(bytes / 1024 ** 3).toFixed(2)} GiB`;
  }

  function setSelection(files, label) {
    state.selection = files.filter((f) => !hiddenName(f.name));
    const n = state.selection.length;
    const bytes = state.selection.reduce((s, f) => s + f.size, 0);
    state.label = label || (n === 1 ? state.selection[0].name : `${n} files`);
    $("selection").textContent = n ? `${state.label}: ${n} file${n === 1 ? "" : "s"}, ${human(bytes)}` : "nothing selected";
    $("selection").classList.toggle("muted", !n);
    $("send").disabled = !n || state.uploading;
    $("clear").disabled = !n || state.uploading;
    hideMessage();
    if (n > MAX_FILES) showMessage(`${n} files is more than the ${MAX_FILES} one upload may hold: zip the series and send the .zip`);
  }

  function showMessage(text, ok = false) {
    const el = $("upload-message");
    el.textContent = text;
    el.classList.toggle("ok", ok);
    el.hidden = false;
  }
  function hideMessage() { $("upload-message").hidden = true; }

  const zone = $("drop-zone");
  for (const name of ["dragenter", "dragover"]) {
    zone.addEventListener(name, (ev) => { ev.preventDefault(); zone.classList.add("over"); });
  }
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", async (ev) => {
    ev.preventDefault();
    zone.classList.remove("over");
    const items = [...(ev.dataTransfer.items || [])].filter((i) => i.kind === "file");
    const entries = items.map((i) => (i.webkitGetAsEntry ? i.webkitGetAsEntry() : null)).filter(Boolean);
    if (entries.length) {
      const files = [];
      try {
        for (const entry of entries) await walk(entry, files);
      } catch (err) {
        showMessage(`cannot read the dropped folder: ${err.message || err}`);
        return;
      }
      const folder = entries.length === 1 && entries[0].isDirectory ? `folder ${entries[0].name}` : "";
      setSelection(files, folder);
    } else {
      setSelection([...ev.dataTransfer.files]);
    }
  });
  // a drop beside the zone must not make the browser open the file instead of the page
  for (const name of ["dragover", "drop"]) window.addEventListener(name, (ev) => ev.preventDefault());

  $("pick-files").addEventListener("change", (ev) => setSelection([...ev.target.files]));
  $("pick-folder").addEventListener("change", (ev) => {
    const files = [...ev.target.files];
    const top = files.length && files[0].webkitRelativePath ? files[0].webkitRelativePath.split("/")[0] : "";
    setSelection(files, top ? `folder ${top}` : "");
  });
  $("clear").addEventListener("click", () => {
    $("pick-files").value = "";
    $("pick-folder").value = "";
    setSelection([]);
  });

  // ------------------------------------------------------------------ upload with a progress bar
  function send() {
    if (!state.selection.length || state.uploading) return;
    if (state.selection.length > MAX_FILES) {
      showMessage(`${state.selection.length} files is more than the ${MAX_FILES} one upload may hold: zip the series`);
      return;
    }
    const form = new FormData();
    for (const f of state.selection) form.append("files", f, f.name);
    const hint = $("modality").value;
    if (hint) form.append("modality", hint);
    const xhr = new XMLHttpRequest();
    xhr.open("POST", `${API}/jobs`);
    xhr.withCredentials = true;
    state.uploading = true;
    $("send").disabled = true;
    $("clear").disabled = true;
    hideMessage();
    $("upload-progress").hidden = false;
    $("upload-bar").removeAttribute("value");  // indeterminate until the first progress event
    $("upload-text").textContent = "uploading…";
    document.body.dataset.upload = "sending";
    xhr.upload.onprogress = (ev) => {
      if (!ev.lengthComputable) return;
      const f = ev.loaded / ev.total;
      $("upload-bar").value = f;
      $("upload-text").textContent = f < 1 ? `uploading ${human(ev.loaded)} of ${human(ev.total)} (${Math.floor(100 * f)} %)`
        : "uploaded; the server is checking the files…";
    };
    const done = (ok, text) => {
      state.uploading = false;
      $("upload-progress").hidden = true;
      document.body.dataset.upload = ok ? "accepted" : "refused";
      showMessage(text, ok);
      if (ok) {
        $("pick-files").value = "";
        $("pick-folder").value = "";
        const label = state.label;
        setSelection([]);
        showMessage(text.replace("%s", label), true);
      } else {
        setSelection(state.selection, state.label);
        showMessage(text);
      }
    };
    xhr.onload = () => {
      let body = {};
      try { body = JSON.parse(xhr.responseText); } catch (_) { /* not JSON */ }
      if (xhr.status === 202) {
        state.fresh = body.id;
        done(true, `%s: accepted as job ${body.id.slice(0, 8)}…; it is in the list below.`);
        refresh();
      } else if (xhr.status === 401) {
        done(false, "a token is required");
        showAuth();
      } else {
        done(false, `not accepted (${xhr.status}${body.code ? ` ${body.code}` : ""}): ${body.detail || xhr.statusText}`);
      }
    };
    xhr.onerror = () => done(false, "the upload failed: the server could not be reached");
    xhr.send(form);
  }
  $("send").addEventListener("click", send);

  // ------------------------------------------------------------------ the job list
  const STAGES = { reading: "reading the input", lungs: "lungs", infection: "infection", nodules: "nodules",
    classify: "classification", detect: "detection", report: "writing the report" };
  const when = (iso) => (iso ? new Date(iso).toLocaleString() : "—");
  const seconds = (a, b) => (a && b ? (new Date(b) - new Date(a)) / 1000 : null);

  function modalityText(job) {
    if (job.modality === "cxr") return "chest X-ray";
    if (job.modality === "ct") return "CT";
    return { image: "image", volume: "CT volume", "dicom-series": "DICOM series", zip: "zip" }[job.kind] || job.kind || "—";
  }

  function el(tag, props = {}, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(props)) {
      if (k === "class") e.className = v;
      else if (k === "dataset") Object.assign(e.dataset, v);
      else e[k] = v;
    }
    e.append(...children.filter((c) => c !== null && c !== undefined));
    return e;
  }

  function statusCell(job) {
    const td = el("td", { class: "status-cell" }, el("span", { class: `badge ${job.status}` }, job.status));
    if (job.status === "running") {
      const p = typeof job.progress === "number" ? job.progress : 0;
      td.append(el("span", { class: "stage" }, `${STAGES[job.stage] || job.stage || "starting"} · ${Math.round(100 * p)} %`),
        el("progress", { class: "job-bar", max: 1, value: p }));
    } else if (job.status === "queued") {
      td.append(el("span", { class: "stage" }, "waiting for a worker"));
    } else if (job.status === "failed") {
      td.append(el("span", { class: "error-text" }, `${job.error_code ? `${job.error_code}: ` : ""}${job.error || ""}`));
    }
    return td;
  }

  // result links of a done job: the report, findings, masks and DICOM SEG / SR when it has them, then all files
  function resultLinks(td, job) {
    const files = state.files.get(job.id);
    if (!files) return;
    const names = new Map(files.map((f) => [f.name, f]));
    const pick = [["report.html", "report"], ["findings.json", "findings"], ["seg.dcm", "DICOM SEG"], ["sr.dcm", "DICOM SR"]];
    for (const [name, label] of pick) {
      if (names.has(name)) td.append(el("a", { href: names.get(name).url, title: name, download: name === "report.html" ? "" : name }, label));
    }
    const masks = files.filter((f) => /mask\.(png|nii\.gz)$/.test(f.name));
    for (const f of masks) td.append(el("a", { href: f.url, download: f.name, title: f.name }, f.name.replace(/\.(png|nii\.gz)$/, "")));
    const list = el("ul", {}, ...files.map((f) => el("li", {}, el("a", { href: f.url, download: f.name }, f.name), ` (${human(f.bytes)})`)));
    td.append(el("details", {}, el("summary", {}, `all files (${files.length})`), list));
  }

  async function loadFiles(job) {
    if (state.files.has(job.id)) return;
    state.files.set(job.id, null);
    try {
      const body = await api(`/jobs/${job.id}/files`);
      state.files.set(job.id, body.files);
      const row = document.querySelector(`#job-rows tr[data-job="${job.id}"]`);
      if (row) {
        const td = row.querySelector("td.results");
        td.replaceChildren();
        resultLinks(td, job);
      }
    } catch (err) {
      state.files.delete(job.id);
    }
  }

  function jobRow(job) {
    const tr = el("tr", { dataset: { job: job.id, status: job.status } });
    const took = seconds(job.started, job.finished);
    tr.append(
      el("td", { class: "when", title: job.created || "" }, when(job.created)),
      statusCell(job),
      el("td", {}, modalityText(job)),
      el("td", { class: "when", title: job.finished || "" }, job.finished ? `${when(job.finished)}${took !== null ? ` (${took.toFixed(0)} s)` : ""}` : "—"),
      el("td", { class: "finding" }, job.key_finding || (job.status === "done" ? "—" : "")),
    );
    const results = el("td", { class: "results" });
    if (job.status === "done") resultLinks(results, job);
    tr.append(results);
    const actions = el("td", { class: "actions" });
    if (job.status === "done") actions.append(el("a", { href: `/viewer/${job.id}`, class: "open-viewer" }, "open viewer"));
    const del = el("button", { type: "button", class: "danger delete-job", title: "delete the job and its files" }, "delete");
    del.addEventListener("click", () => removeJob(job));
    actions.append(del);
    tr.append(actions);
    return tr;
  }

  async function removeJob(job) {
    if (!window.confirm(`Delete job ${job.id.slice(0, 8)}… (${modalityText(job)}, ${when(job.created)}) and its files?`)) return;
    try {
      await api(`/jobs/${job.id}`, { method: "DELETE" });
      state.files.delete(job.id);
    } catch (err) {
      if (!(err instanceof AuthNeeded)) $("jobs-error").textContent = `delete failed: ${err.message}`;
      $("jobs-error").hidden = err instanceof AuthNeeded;
    }
    refresh();
  }

  let signature = "";
  function render(body) {
    const jobs = body.jobs || [];
    const c = body.counts || {};
    $("job-counts").textContent = jobs.length
      ? `(${["queued", "running", "done", "failed"].filter((s) => c[s]).map((s) => `${c[s]} ${s}`).join(", ")})` : "";
    $("jobs-empty").hidden = jobs.length > 0;
    $("jobs-table").hidden = jobs.length === 0;
    const next = JSON.stringify(jobs.map((j) => [j.id, j.status, j.stage, j.progress, j.key_finding]));
    if (next === signature && !jobs.some((j) => j.status === "done" && state.files.get(j.id) === undefined)) return;
    signature = next;
    const body_ = $("job-rows");
    const open = new Set([...body_.querySelectorAll("details[open]")].map((d) => d.closest("tr").dataset.job));
    const rows = jobs.map((job) => {
      const tr = jobRow(job);
      if (open.has(job.id)) { const d = tr.querySelector("details"); if (d) d.open = true; }
      if (job.id === state.fresh) { tr.classList.add("fresh"); state.fresh = null; }
      return tr;
    });
    body_.replaceChildren(...rows);
    for (const job of jobs) if (job.status === "done") loadFiles(job);
  }

  async function refresh() {
    clearTimeout(state.timer);
    let busy = false;
    try {
      const body = await api("/jobs?limit=100");
      render(body);
      $("jobs-error").hidden = true;
      busy = (body.jobs || []).some((j) => j.status === "queued" || j.status === "running");
      document.body.dataset.state = "ready";
    } catch (err) {
      if (err instanceof AuthNeeded) return;  // refreshed again once a token is given
      $("jobs-error").textContent = `cannot list the jobs: ${err.message}`;
      $("jobs-error").hidden = false;
    }
    // poll fast while something runs (the stage and progress move), slowly otherwise (jobs of other clients)
    state.timer = setTimeout(refresh, busy || state.uploading ? 1000 : 5000);
  }

  document.addEventListener("visibilitychange", () => { if (!document.hidden) refresh(); });

  takeTokenFromHash();
  fetch(`${API}/health`).then((r) => r.json()).then((h) => { $("version").textContent = `v${h.version}`; }).catch(() => {});
  refresh();
})();
