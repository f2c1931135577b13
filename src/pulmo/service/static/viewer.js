// pulmo viewer: polls the job, then shows its findings.
// X-ray / 2D slice: the image with toggleable mask layers (lung, infection), heatmaps and labelled boxes when
// the findings have them. CT volume: NiiVue (from npm, served at /static/niivue/) with axial / coronal /
// sagittal slices and a 3D rendering, lung / infection / nodule overlays, window presets, a numbered marker on
// each nodule in every 2D view, and a nodule list (volume in mm³, key-slice picture, "go to"); and, with or without
// NiiVue, every slice of the three planes rendered by the server (ct2d.js; the only CT view without NiiVue).
"use strict";

(() => {
  const API = "/api/v1";
  const $ = (id) => document.getElementById(id);
  const jobId = decodeURIComponent(location.pathname.split("/").filter(Boolean).pop() || "");
  const fileUrl = (name) => `${API}/jobs/${encodeURIComponent(jobId)}/files/${encodeURIComponent(name)}`;
  const MASK_LAYERS = [
    // [findings key, label, colour rgb, default opacity]
    ["lungs", "lung mask", [0, 200, 120], 0.35],
    ["infection", "infection", [230, 40, 40], 0.6],
    ["nodules", "nodules", [250, 200, 0], 0.7],
  ];

  class ViewerError extends Error {}

  function setState(state) { document.body.dataset.state = state; }

  function showMessage(text) {
    const box = $("message");
    box.textContent = text;
    box.hidden = false;
  }

  function takeTokenFromHash() {
    const m = location.hash.match(/token=([^&]+)/);
    if (m) {
      document.cookie = `pulmo_token=${m[1]}; path=/; SameSite=Strict`;
      history.replaceState(null, "", location.pathname);
    }
  }

  function showAuth() {
    $("auth").hidden = false;
    setState("auth");
    $("auth-form").onsubmit = (ev) => {
      ev.preventDefault();
      const token = encodeURIComponent($("auth-token").value.trim());
      document.cookie = `pulmo_token=${token}; path=/; SameSite=Strict`;
      location.reload();
    };
  }

  async function api(path) {
    const r = await fetch(API + path, { credentials: "same-origin", cache: "no-store" });
    if (r.status === 401) {
      showAuth();
      throw new ViewerError("a valid token is required");
    }
    const body = await r.json().catch(() => ({}));
    if (!r.ok) throw new ViewerError(body.detail || `HTTP ${r.status}`);
    return body;
  }

  function setStatus(job) {
    const el = $("status");
    el.textContent = job.status + (job.modality ? ` · ${job.modality}` : "");
    el.className = `status ${job.status}`;
  }

  // ---------------------------------------------------------------- findings table
  const fmt = (v) => {
    if (v === null || v === undefined || v === "") return "—";
    if (Array.isArray(v)) return v.map(fmt).join(" × ");
    if (typeof v === "object") return Object.entries(v).map(([k, x]) => `${k} ${fmt(x)}`).join(", ");
    return String(v);
  };

  function findingRows(f) {
    const rows = [];
    const add = (label, value) => { if (value !== undefined) rows.push([label, value]); };
    const inp = f.input || {};
    add("modality", f.modality === "cxr" ? "chest X-ray (cxr)" : f.modality === "ct" ? "CT (ct)" : f.modality);
    add("input format", inp.format);
    if (inp.image_size) add("image size (px)", `${inp.image_size.width} × ${inp.image_size.height}`);
    if (inp.volume_size) add("volume size (slices × rows × columns)",
      `${inp.volume_size.slices} × ${inp.volume_size.rows} × ${inp.volume_size.columns}`);
    if ("spacing_mm" in inp) add(inp.volume_size ? "voxel spacing (z, y, x mm)" : "pixel spacing (row, column mm)",
      inp.spacing_mm === null ? "unknown" : inp.spacing_mm);
    const gate = inp.gate;
    if (gate) {
      const as = { cxr: "frontal chest radiograph", ct_slice: "axial CT slice", ct_volume: "chest CT volume" }[gate.as] || gate.as;
      add("input gate", `${gate.decision} as ${as}`);
      for (const [label, p] of Object.entries(gate.scores || {})) add(`input gate p(${label})`, Number(p).toFixed(3));
    }
    const lungs = f.lungs || {};
    add("lung area (px)", lungs.area_px);
    add("lung area (cm²)", lungs.area_cm2 === null ? "unknown (no pixel spacing)" : lungs.area_cm2);
    add("lung components", lungs.n_components);
    add("lung volume (mL)", lungs.volume_ml);
    if (lungs.coverage) add("lung coverage", lungs.coverage.complete ? "the whole lung field is in the scan" : `PARTIAL: ${lungs.coverage.note}`);
    add("lung mask convention", lungs.convention);
    add("lung method", lungs.method);
    const inf = f.infection;
    if (inf) {
      add("infection volume (mL)", inf.volume_ml);
      add("infection area (px)", inf.area_px);
      add("infection area (cm²)", inf.area_cm2);
      add("infection (% of lung)", inf.percent_of_lung);
      add("slices with infection", inf.n_slices_with_infection);
      add("key slice (axial index)", inf.key_slice);
      for (const [k, v] of Object.entries(inf)) if (/_(ml|px)$/.test(k) && !/^(volume|area)_/.test(k)) add(`infection: ${k}`, v);
    }
    if (f.classification) {
      const c = f.classification;
      if (c.in_scope === false) {
        add("finding", "outside the classifier's classes (no diagnosis among normal / bacterial / viral / COVID-19)");
        if (typeof c.out_of_scope_score === "number") add("out-of-scope score", `${c.out_of_scope_score.toFixed(3)} (threshold ${c.out_of_scope_threshold})`);
      } else {
        add("predicted class", c.predicted);
      }
      if (c.heatmap_energy_in_lungs) {
        for (const [m, e] of Object.entries(c.heatmap_energy_in_lungs)) if (typeof e === "number") add(`heatmap weight inside the lungs (${m})`, `${(100 * e).toFixed(0)} %`);
      }
    }
    const probs = f.classification && (f.classification.probabilities || f.classification);
    if (probs && typeof probs === "object") {
      for (const [label, p] of Object.entries(probs)) if (typeof p === "number") add(`probability: ${label}`, p.toFixed(3));
    }
    if (Array.isArray(f.nodules)) add("nodules", f.nodules.length);
    if (Array.isArray(detections(f))) add("detections", detections(f).length);
    for (const m of f.models || []) {
      add(`model (${m.task})`, `${m.name || "?"} · ${m.architecture || "?"}${m.sha256 ? ` · sha256 ${m.sha256.slice(0, 12)}` : ""}`);
      if (m.scope) add(`scope (${m.task})`, `knows only ${(m.scope.classes || []).join(", ")}; cannot see: ${m.scope.cannot_see || "?"}`);
      if (m.scope && m.scope.external_check) add(`on a source it never saw (${m.task})`, m.scope.external_check);
      if (typeof m.calibration_ece === "number") add(`calibration (${m.task})`, `held-out ECE ${m.calibration_ece.toFixed(3)}`);
    }
    add("pulmo version", f.pulmo_version);
    add("analysed (UTC)", f.created);
    return rows.filter(([, v]) => v !== undefined);
  }

  function renderFindings(f) {
    const body = $("findings-table").tBodies[0];
    body.replaceChildren();
    for (const [label, value] of findingRows(f)) {
      const tr = body.insertRow();
      const th = document.createElement("th");
      th.textContent = label;
      tr.appendChild(th);
      tr.insertCell().textContent = fmt(value);
    }
    $("findings-section").hidden = false;
  }

  // ---------------------------------------------------------------- 2D image with layers
  function detections(f) { return f.detections || f.boxes || null; }

  function loadImage(src) {
    return new Promise((resolve, reject) => {
      const img = new Image();
      img.onload = () => resolve(img);
      img.onerror = () => reject(new ViewerError(`cannot load ${src}`));
      img.src = src;
    });
  }

  function toggle(container, label, checked, onChange, opacity) {
    const wrap = document.createElement("label");
    const box = document.createElement("input");
    box.type = "checkbox";
    box.checked = checked;
    box.addEventListener("change", () => onChange(box.checked));
    wrap.append(box, ` ${label}`);
    container.appendChild(wrap);
    if (opacity) {
      const slider = document.createElement("input");
      slider.type = "range"; slider.min = "0"; slider.max = "1"; slider.step = "0.05";
      slider.value = String(opacity.value);
      slider.title = `${label} opacity`;
      slider.addEventListener("input", () => opacity.onInput(Number(slider.value)));
      container.appendChild(slider);
    }
    return box;
  }

  async function maskCanvas(name, colour, width, height) {
    const mask = await loadImage(fileUrl(name));
    const canvas = document.createElement("canvas");
    canvas.width = width;
    canvas.height = height;
    canvas.className = "layer";
    canvas.dataset.mask = name;
    const ctx = canvas.getContext("2d");
    ctx.drawImage(mask, 0, 0, width, height);
    const data = ctx.getImageData(0, 0, width, height);
    const px = data.data;
    for (let i = 0; i < px.length; i += 4) {
      const on = px[i] > 127;
      px[i] = colour[0]; px[i + 1] = colour[1]; px[i + 2] = colour[2]; px[i + 3] = on ? 255 : 0;
    }
    ctx.putImageData(data, 0, 0);
    return canvas;
  }

  async function render2D(f, names) {
    const section = $("view2d");
    section.hidden = false;
    $("view2d-title").textContent = f.modality === "cxr" ? "Chest X-ray" : "CT slice";
    const base = $("base-image");
    const controls = $("controls2d");
    const overlays = (f.files && f.files.overlays) || [];
    const baseName = names.has("image.png") ? "image.png" : overlays.find((n) => names.has(n));
    if (!baseName) throw new ViewerError("the job has no image to show");
    base.alt = baseName === "image.png" ? "the uploaded image" : `overlay ${baseName}`;
    base.src = fileUrl(baseName);
    await base.decode().catch(() => { throw new ViewerError(`cannot load ${baseName}`); });
    if (baseName !== "image.png") return;  // an old job: the overlay already has the masks painted in
    const w = base.naturalWidth, h = base.naturalHeight;
    const stage = $("stage2d");
    for (const [key, label, colour, opacity] of MASK_LAYERS) {
      const mask = key === "nodules" ? f.nodule_mask : f[key] && f[key].mask;
      if (!mask || !/\.png$/.test(mask) || !names.has(mask)) continue;
      try {
        const canvas = await maskCanvas(mask, colour, w, h);
        canvas.style.opacity = String(opacity);
        stage.insertBefore(canvas, $("box-layer"));
        toggle(controls, label, true, (on) => { canvas.hidden = !on; },
          { value: opacity, onInput: (v) => { canvas.style.opacity = String(v); } });
      } catch (err) {
        showMessage(`${label}: ${err.message}`);
      }
    }
    renderHeatmaps(f, names, stage, controls);
    renderBoxes(f, controls);
  }

  function renderHeatmaps(f, names, stage, controls) {
    // classification.heatmaps (or heatmaps): {method: file.png} or [{label, file}]; each PNG is the image with the
    // heatmap blended in (pulmo.report.heatmap_overlay), shown over the base image, fully opaque by default
    let maps = f.heatmaps || (f.classification && f.classification.heatmaps);
    if (!maps) return;
    if (!Array.isArray(maps)) maps = Object.entries(maps).map(([label, file]) => ({ label, file }));
    if (maps.some(({ file }) => file && names.has(file))) {
      // the colour scale of pulmo.report.heatmap_overlay (same stops), normalised over the whole image
      const legend = document.createElement("div");
      legend.className = "heat-legend";
      legend.id = "heat-legend";
      const bar = document.createElement("div");
      bar.className = "heat-bar";
      bar.style.background = "linear-gradient(to right, #ccc 0%, #ccc 20%, rgb(0,82,230) 20%, " +
        "rgb(0,102,255) 25%, rgb(0,230,153) 50%, rgb(255,230,0) 75%, rgb(255,26,0) 100%)";
      const text = document.createElement("span");
      text.textContent = "heatmap: 0 (grey: not drawn below 0.2) … 1 = the map's maximum over the whole image";
      legend.append(bar, text);
      controls.appendChild(legend);
    }
    for (const { label, file } of maps) {
      if (!file || !names.has(file)) continue;
      const img = document.createElement("img");
      img.className = "layer";
      img.src = fileUrl(file);
      img.alt = `heatmap ${label}`;
      img.style.opacity = "1";
      img.hidden = true;
      stage.insertBefore(img, $("box-layer"));
      toggle(controls, `heatmap: ${label}`, false, (on) => { img.hidden = !on; },
        { value: 1, onInput: (v) => { img.style.opacity = String(v); } });
    }
  }

  function renderBoxes(f, controls) {
    const boxes = detections(f);
    if (!Array.isArray(boxes) || !boxes.length || !f.input || !f.input.image_size) return;
    const { width, height } = f.input.image_size;
    const svg = $("box-layer");
    const ns = "http://www.w3.org/2000/svg";
    svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
    svg.setAttribute("preserveAspectRatio", "none");
    const rows = $("box-rows");
    for (const b of boxes) {
      const xyxy = b.box_xyxy || b.box || b.bbox;
      if (!Array.isArray(xyxy) || xyxy.length !== 4) continue;
      const [x0, y0, x1, y1] = xyxy;
      const score = typeof b.score === "number" ? `${(100 * b.score).toFixed(0)} %` : "";
      const rect = document.createElementNS(ns, "rect");
      rect.setAttribute("x", x0); rect.setAttribute("y", y0);
      rect.setAttribute("width", x1 - x0); rect.setAttribute("height", y1 - y0);
      const text = document.createElementNS(ns, "text");
      text.setAttribute("x", x0 + 4); text.setAttribute("y", Math.max(20, y0 - 6));
      const name = b.name || b.label || "finding";  // the detector's clinical name ("latent TB"), else its class
      text.textContent = `${name} ${score}`;
      svg.append(rect, text);
      const tr = rows.insertRow();
      tr.insertCell().textContent = name;
      tr.insertCell().textContent = score || "—";
      tr.insertCell().textContent = xyxy.map((v) => Math.round(v)).join(", ");
    }
    // an SVG element has no `hidden` IDL property: setting svg.hidden leaves the attribute (display: none)
    svg.removeAttribute("hidden");
    $("boxes-section").hidden = false;
    toggle(controls, "boxes", true, (on) => { svg.toggleAttribute("hidden", !on); });
  }

  // ---------------------------------------------------------------- CT volume with NiiVue
  function loadScript(src) {
    return new Promise((resolve) => {
      const s = document.createElement("script");
      s.src = src;
      s.onload = () => resolve(true);
      s.onerror = () => resolve(false);
      document.head.appendChild(s);
    });
  }

  // the window presets of the CT views (HU), as pulmo.service.slices.WINDOWS
  const CT_WINDOWS = { lung: { center: -600, width: 1500 }, mediastinum: { center: 40, width: 400 },
    bone: { center: 400, width: 1800 } };

  async function render3D(f, names) {
    $("view3d").hidden = false;
    // every slice of the three planes from the server (ct2d.js): the whole 2D viewer without NiiVue, a tab with it
    let slices = null;
    try {
      slices = await window.PulmoSlices.load($("ct2d"), jobId, f);
    } catch (err) {
      showMessage(`the 2D slices cannot be shown: ${err.message || err}`);
    }
    const forced2d = new URLSearchParams(location.search).get("niivue") === "off";  // ?niivue=off: the 2D viewer only
    const ok = !forced2d && await loadScript("/static/niivue/niivue.umd.js");
    if (!ok || !window.niivue) {
      $("niivue-missing").hidden = forced2d;
      $("niivue-box").hidden = true;
      $("controls3d").hidden = true;
      $("ct2d").hidden = false;
      if (slices) slices.redraw();
      document.body.dataset.niivue = forced2d ? "off" : "missing";
      renderNodules(f, null, names, slices);
      return;
    }
    const NV = window.niivue;
    const nv = new NV.Niivue({
      backColor: [0.04, 0.05, 0.07, 1], show3Dcrosshair: true, isColorbar: false, dragAndDropEnabled: false,
      multiplanarShowRender: NV.SHOW_RENDER ? NV.SHOW_RENDER.ALWAYS : 1, loadingText: "loading the CT",
      isRadiologicalConvention: true,  // the patient's right on the screen's left, as chest CT is read
    });
    await nv.attachToCanvas($("niivue-canvas"));
    const volumes = [{ url: fileUrl("volume.nii.gz"), name: "volume.nii.gz", colormap: "gray", cal_min: -1350, cal_max: 150 }];
    const layers = [];
    for (const [key, label, colour, opacity] of MASK_LAYERS) {
      const mask = key === "nodules" ? f.nodule_mask : f[key] && f[key].mask;
      if (!mask || !/\.nii(\.gz)?$/.test(mask) || !names.has(mask)) continue;
      const colormap = { lungs: "green", infection: "red", nodules: "warm" }[key];
      layers.push({ index: volumes.length, label, opacity });
      volumes.push({ url: fileUrl(mask), name: mask, colormap, opacity, cal_min: 0.5, cal_max: 1 });
    }
    try {
      await nv.loadVolumes(volumes);
    } catch (err) {
      $("niivue-error").textContent = `NiiVue could not load the volumes: ${err.message || err}`;
      $("niivue-error").hidden = false;
      document.body.dataset.niivue = "error";
      return;
    }
    nv.setSliceType(nv.sliceTypeMultiplanar);
    const slice = { multiplanar: nv.sliceTypeMultiplanar, axial: nv.sliceTypeAxial, coronal: nv.sliceTypeCoronal,
      sagittal: nv.sliceTypeSagittal, render: nv.sliceTypeRender };
    for (const btn of $("slice-buttons").querySelectorAll("button")) {
      btn.addEventListener("click", () => {
        nv.setSliceType(slice[btn.dataset.slice]);
        for (const b of $("slice-buttons").querySelectorAll("button")) b.classList.toggle("active", b === btn);
      });
    }
    for (const layer of layers) {
      let current = layer.opacity;
      toggle($("layer-toggles"), layer.label, true, (on) => nv.setOpacity(layer.index, on ? current : 0),
        { value: layer.opacity, onInput: (v) => { current = v; nv.setOpacity(layer.index, v); } });
    }
    // window presets: NiiVue's display range of the CT; the 2D slices follow (and a window set there, NiiVue)
    const applyWindow = (w) => {
      nv.volumes[0].cal_min = w.center - w.width / 2;
      nv.volumes[0].cal_max = w.center + w.width / 2;
      nv.updateGLVolume();
      for (const b of $("nv-window").querySelectorAll("button")) b.classList.toggle("active", b.dataset.window === w.name);
    };
    for (const [name, w] of Object.entries(CT_WINDOWS)) {
      const b = document.createElement("button");
      b.type = "button";
      b.dataset.window = name;
      b.textContent = name;
      b.addEventListener("click", () => (slices ? slices.setWindow({ ...w, name }) : applyWindow({ ...w, name })));
      $("nv-window").appendChild(b);
    }
    if (slices) slices.onWindow = applyWindow;
    // tabs: NiiVue (3D + its slices) or the server's 2D slices
    $("view-tabs").hidden = !slices;
    for (const btn of $("view-tabs").querySelectorAll("button")) {
      btn.addEventListener("click", () => {
        const two = btn.dataset.view === "slices";
        $("niivue-box").hidden = two;
        $("controls3d").hidden = two;
        $("ct2d").hidden = !two;
        for (const b of $("view-tabs").querySelectorAll("button")) b.classList.toggle("active", b === btn);
        if (two && slices) slices.redraw();
        if (!two) nv.drawScene();
      });
    }
    renderNodules(f, nv, names, slices);
    addNoduleMarkers(f, nv);
    window.pulmoNiivue = nv;
    document.body.dataset.niivue = "loaded";
  }

  // nodules[*].volume_mm3 (mm³); findings written before it have volume_ml (mL)
  const noduleVolumeMm3 = (n) => (typeof n.volume_mm3 === "number" ? n.volume_mm3
    : typeof n.volume_ml === "number" ? 1000 * n.volume_ml : null);

  function renderNodules(f, nv, names, slices) {
    if (!Array.isArray(f.nodules) || !f.nodules.length) return;
    const rows = $("nodule-rows");
    const head = rows.closest("table").tHead.rows[0];
    head.replaceChildren();
    for (const label of ["#", "centre x, y, z (LPS mm)", "diameter (mm)", "volume (mm³)", "probability",
      "key slice (axial index)", "key-slice picture", ""]) {
      const th = document.createElement("th");
      th.textContent = label;
      head.appendChild(th);
    }
    f.nodules.forEach((n, i) => {
      const c = n.center_xyz_mm || n.center_mm;
      const tr = rows.insertRow();
      tr.dataset.nodule = String(i + 1);
      tr.insertCell().textContent = String(i + 1);
      tr.insertCell().textContent = Array.isArray(c) ? c.map((v) => v.toFixed(1)).join(", ") : "—";
      tr.insertCell().textContent = typeof n.diameter_mm === "number" ? n.diameter_mm.toFixed(1) : "—";
      const volume = noduleVolumeMm3(n);
      tr.insertCell().textContent = volume === null ? "—" : volume.toFixed(0);
      tr.insertCell().textContent = typeof n.probability === "number" ? n.probability.toFixed(2) : "—";
      tr.insertCell().textContent = Number.isInteger(n.slice_index) ? String(n.slice_index) : "—";
      const pic = tr.insertCell();
      if (n.key_slice_image && names && names.has(n.key_slice_image)) {
        const a = document.createElement("a");
        a.href = fileUrl(n.key_slice_image);
        const img = document.createElement("img");
        img.src = fileUrl(n.key_slice_image);
        img.alt = `nodule ${i + 1}: key axial slice with its marker`;
        img.loading = "lazy";
        img.className = "nodule-thumb";
        a.appendChild(img);
        pic.appendChild(a);
      } else {
        pic.textContent = "—";
      }
      const cell = tr.insertCell();
      if ((Array.isArray(c) && nv) || slices) {
        const btn = document.createElement("button");
        btn.type = "button";
        btn.textContent = "go to";
        btn.title = `show nodule ${i + 1} in every view`;
        btn.addEventListener("click", () => {
          if (slices) slices.goToNodule(i + 1);
          if (Array.isArray(c) && nv) {
            // findings are in LPS mm; NiiVue's world space is RAS (the NIfTI convention)
            nv.scene.crosshairPos = nv.mm2frac([-c[0], -c[1], c[2]]);
            if (!$("niivue-box").hidden) $("slice-buttons").querySelector("button[data-slice='axial']").click();
            nv.drawScene();
          }
        });
        cell.appendChild(btn);
        tr.classList.add("jump");
        tr.addEventListener("dblclick", () => btn.click());
      }
    });
    $("nodules").hidden = false;
  }

  // A numbered circle on each nodule in NiiVue's axial, coronal and sagittal tiles, sized by its diameter (radius:
  // 1.2 x the nodule's radius + 2 px, at least 6 px, as the report's key-slice pictures), labelled "<n> p=<probability>".
  // Shown while a tile's plane crosses the nodule's sphere: solid within half a voxel of its centre (its key slice),
  // dashed on the other slices through it. One SVG group per nodule and plane (data-nodule, data-plane) over the
  // canvas, placed again after every NiiVue draw from the tiles' geometry (nv.screenSlices, canvas pixels; the RAS
  // point swizzled per plane as NiiVue's frac2canvasPos does).
  function addNoduleMarkers(f, nv) {
    const ns = "http://www.w3.org/2000/svg";
    const PLANES = ["axial", "coronal", "sagittal"];
    const SWIZZLE = [[0, 1, 2], [0, 2, 1], [1, 2, 0]];
    const nodules = (f.nodules || []).map((n, i) => {
      const c = n.center_xyz_mm || n.center_mm;
      return { n, i, ras: Array.isArray(c) && c.length === 3 ? [-c[0], -c[1], c[2]] : null };
    }).filter(({ n, ras }) => ras && typeof n.diameter_mm === "number" && n.diameter_mm > 0);
    if (!nodules.length) return;
    const svg = document.createElementNS(ns, "svg");
    svg.id = "nodule-markers";
    svg.setAttribute("preserveAspectRatio", "none");
    const marks = nodules.map(({ n, i }) => PLANES.map((plane) => {
      const g = document.createElementNS(ns, "g");
      g.setAttribute("class", "nodule-marker");
      g.setAttribute("data-nodule", String(i + 1));
      g.setAttribute("data-plane", plane);
      const circle = document.createElementNS(ns, "circle");
      const label = document.createElementNS(ns, "text");
      label.setAttribute("text-anchor", "middle");
      label.textContent = `${i + 1} p=${typeof n.probability === "number" ? n.probability.toFixed(2) : "?"}`;
      g.append(circle, label);
      g.style.display = "none";
      svg.appendChild(g);
      return g;
    }));
    $("niivue-box").appendChild(svg);
    const place = () => {
      const canvas = nv.canvas || $("niivue-canvas");
      if (!canvas || !canvas.width) return;
      svg.setAttribute("viewBox", `0 0 ${canvas.width} ${canvas.height}`);
      const dpr = canvas.clientWidth ? canvas.width / canvas.clientWidth : 1;
      const vol = nv.volumes[0];
      const dims = vol && (vol.pixDimsRAS || (vol.hdr && vol.hdr.pixDims));
      const tiles = (nv.screenSlices || []).filter((t) => t.axCorSag <= 2 && t.AxyzMxy && t.AxyzMxy.length >= 5);
      nodules.forEach(({ n, ras }, k) => {
        PLANES.forEach((plane, a) => {
          const g = marks[k][a];
          g.style.display = "none";
          const halfVoxel = (dims && dims[3 - a] > 0 ? dims[3 - a] : 1) / 2;  // through-plane: z, y or x
          const s = SWIZZLE[a];
          const p = [ras[s[0]], ras[s[1]], ras[s[2]]];
          for (const t of tiles) {
            if (t.axCorSag !== a) continue;
            const v = t.AxyzMxy;  // the tile's plane: p2 = v2 + v4 (p1 - v1) - v3 (p0 - v0), swizzled RAS mm
            const dz = Math.abs(p[2] - (v[2] + v[4] * (p[1] - v[1]) - v[3] * (p[0] - v[0])));
            if (dz > Math.max(n.diameter_mm / 2, halfVoxel)) continue;
            const fx = (p[0] - t.leftTopMM[0]) / t.fovMM[0];
            const fy = (p[1] - t.leftTopMM[1]) / t.fovMM[1];
            if (!(fx >= 0 && fx <= 1 && fy >= 0 && fy <= 1)) continue;
            let [left, top, width, height] = t.leftTopWidthHeight;
            let sx = fx;
            if (width < 0) { left += width; width = -width; sx = 1 - fx; }  // mirrored (radiological) tile
            const x = left + sx * width, y = top + (1 - fy) * height;
            const r = Math.max(6 * dpr, (1.2 * n.diameter_mm / 2) * (width / Math.abs(t.fovMM[0])) + 2 * dpr);
            const [circle, label] = g.children;
            circle.setAttribute("cx", x); circle.setAttribute("cy", y); circle.setAttribute("r", r);
            const above = y - r - 5 * dpr > top + 14 * dpr;
            label.setAttribute("x", x);
            label.setAttribute("y", above ? y - r - 5 * dpr : y + r + 15 * dpr);
            label.setAttribute("font-size", 14 * dpr);
            g.classList.toggle("off-key", dz > halfVoxel);
            g.style.display = "";
            break;
          }
        });
      });
    };
    const draw = nv.drawScene.bind(nv);
    nv.drawScene = (...args) => {
      const result = draw(...args);
      place();
      return result;
    };
    place();
  }

  // ---------------------------------------------------------------- overlays and files
  function renderOverlays(f, names) {
    const overlays = ((f.files && f.files.overlays) || []).filter((n) => names.has(n));
    const gallery = $("overlays");
    for (const name of overlays) {
      const fig = document.createElement("figure");
      const a = document.createElement("a");
      a.href = fileUrl(name);
      const img = document.createElement("img");
      img.src = fileUrl(name);
      img.alt = `overlay ${name}`;
      img.loading = "lazy";
      img.className = "overlay-image";
      const cap = document.createElement("figcaption");
      cap.textContent = name;
      a.appendChild(img);
      fig.append(a, cap);
      gallery.appendChild(fig);
    }
    $("overlays-section").hidden = !overlays.length;
  }

  function renderFiles(files) {
    const list = $("file-links");
    for (const file of files) {
      const li = document.createElement("li");
      const a = document.createElement("a");
      a.href = file.url;
      a.textContent = file.name;
      li.append(a, ` (${(file.bytes / 1024).toFixed(1)} KiB)`);
      list.appendChild(li);
    }
    $("files-section").hidden = !files.length;
  }

  // ---------------------------------------------------------------- main
  async function show() {
    const [findings, files] = await Promise.all([api(`/jobs/${jobId}/findings`), api(`/jobs/${jobId}/files`)]);
    const names = new Set(files.files.map((x) => x.name));
    renderFindings(findings);
    renderOverlays(findings, names);
    renderFiles(files.files);
    if (findings.modality === "ct" && names.has("volume.nii.gz")) await render3D(findings, names);
    else await render2D(findings, names);
    setState("ready");
  }

  async function poll() {
    let delay = 500;
    for (;;) {
      const job = await api(`/jobs/${jobId}`);
      setStatus(job);
      if (job.status === "done") return show();
      if (job.status === "failed") {
        showMessage(`The analysis failed: ${job.error}`);
        setState("failed");
        return undefined;
      }
      await new Promise((r) => setTimeout(r, delay));
      delay = Math.min(3000, delay * 1.5);
    }
  }

  $("job-id").textContent = `job ${jobId}`;
  takeTokenFromHash();
  poll().catch((err) => {
    if (document.body.dataset.state !== "auth") {
      showMessage(err.message || String(err));
      setState("error");
    }
  });
})();
