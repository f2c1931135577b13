// pulmo CT slice viewer without NiiVue: axial, coronal and sagittal slices rendered by the server
// (GET /api/v1/jobs/{id}/slices/{plane}/{index}.png, pulmo.service.slices), any slice on demand.
// Scroll with the wheel, the slider or the arrow keys; drag on a slice for window / level (right: wider,
// down: lower level); click to put the other planes through that point; window presets lung / mediastinum /
// bone; lung, infection and nodule masks on/off with opacity; a numbered circle with the probability on every
// slice a nodule spans, in every plane (solid on its centre slice, dashed elsewhere).
// Used by viewer.js: window.PulmoSlices.create(...) returns the viewer (also window.pulmoSlices, for tests).
"use strict";

(() => {
  const API = "/api/v1";
  const PLANES = ["axial", "coronal", "sagittal"];
  const AXIS = { axial: 0, coronal: 1, sagittal: 2 };  // the index axis (z, y, x) each plane cuts
  const MASK_LABELS = { lungs: "lung mask", infection: "infection", nodules: "nodule mask" };
  const MASK_OPACITY = { lungs: 0.3, infection: 0.55, nodules: 0.6 };
  const NS = "http://www.w3.org/2000/svg";

  function el(tag, props = {}, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(props)) {
      if (k === "class") e.className = v;
      else if (k === "dataset") Object.assign(e.dataset, v);
      else e[k] = v;
    }
    e.append(...children);
    return e;
  }
  function svg(tag, attrs = {}) {
    const e = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    return e;
  }

  // world LPS mm -> continuous voxel index (z, y, x): index_xyz = D^T (p - origin) / spacing (D orthonormal)
  function worldToIndex(info, p) {
    const d = info.direction, o = info.origin_mm, s = [info.spacing_mm[2], info.spacing_mm[1], info.spacing_mm[0]];
    const q = [p[0] - o[0], p[1] - o[1], p[2] - o[2]];
    const ijk = [0, 1, 2].map((k) => (d[k] * q[0] + d[3 + k] * q[1] + d[6 + k] * q[2]) / s[k]);
    return [ijk[2], ijk[1], ijk[0]];
  }

  function create({ container, jobId, info, findings }) {
    const [Z, Y, X] = info.shape;
    const [sz, sy, sx] = info.spacing_mm;
    const flip = info.flip;
    const pos = [Math.floor(Z / 2), Math.floor(Y / 2), Math.floor(X / 2)];  // the point the three planes cross
    let win = { ...info.windows[info.default_window || "lung"], name: info.default_window || "lung" };
    const layers = {};  // mask name -> { on, opacity }
    for (const m of info.masks) layers[m] = { on: m !== "nodules", opacity: MASK_OPACITY[m] || 0.5 };
    const panes = {};
    const nodules = noduleMarkers();

    // ---- display coordinates: mm from the picture's top-left, for a voxel index (z, y, x)
    const col = (x) => ((flip.x ? X - 1 - x : x) + 0.5) * sx;
    const rowY = (y) => ((flip.y ? Y - 1 - y : y) + 0.5) * sy;
    const rowZ = (z) => ((flip.z ? Z - 1 - z : z) + 0.5) * sz;
    const toDisplay = {
      axial: ([, y, x]) => [col(x), rowY(y)],
      coronal: ([z, , x]) => [col(x), rowZ(z)],
      sagittal: ([z, y]) => [((flip.y ? Y - 1 - y : y) + 0.5) * sy, rowZ(z)],
    };
    // a click on a picture (fractions of its width / height) -> the two in-plane voxel indices
    const fromDisplay = {
      axial: (fx, fy) => ({ 2: unflip(fx * X, X, flip.x), 1: unflip(fy * Y, Y, flip.y) }),
      coronal: (fx, fy) => ({ 2: unflip(fx * X, X, flip.x), 0: unflip(fy * Z, Z, flip.z) }),
      sagittal: (fx, fy) => ({ 1: unflip(fx * Y, Y, flip.y), 0: unflip(fy * Z, Z, flip.z) }),
    };
    function unflip(v, n, flipped) {
      const i = Math.min(n - 1, Math.max(0, Math.floor(v)));
      return flipped ? n - 1 - i : i;
    }

    function noduleMarkers() {
      const boxes = new Map((info.nodules || []).map((n) => [n.number, n.bbox_zyx]));
      return (findings.nodules || []).map((n, i) => {
        const number = i + 1;
        const box = boxes.get(number) || null;
        let centre = Array.isArray(n.center_zyx_index) ? n.center_zyx_index : null;
        const world = n.center_xyz_mm || n.center_mm;
        if (!centre && Array.isArray(world) && info.direction) centre = worldToIndex(info, world);
        if (!centre && box) centre = [0, 1, 2].map((a) => (box[0][a] + box[1][a]) / 2);
        if (!centre) return null;
        const d = typeof n.diameter_mm === "number" && n.diameter_mm > 0 ? n.diameter_mm : null;
        return { number, centre, box, diameter: d, probability: n.probability };
      }).filter(Boolean);
    }

    // does the slice `index` of `plane` cut nodule m? (its mask's extent, else the sphere of its diameter)
    function spans(m, plane, index) {
      const a = AXIS[plane];
      if (m.box) return index >= m.box[0][a] && index <= m.box[1][a];
      const spacing = info.spacing_mm[a];
      return Math.abs(index - m.centre[a]) * spacing <= Math.max((m.diameter || 0) / 2, spacing / 2);
    }

    // the marker's radius in mm on `plane`: the nodule's in-plane extent (mask box, else diameter) x 1.2 + 2 mm
    function radiusMm(m, plane) {
      const axes = [0, 1, 2].filter((a) => a !== AXIS[plane]);
      let extent = m.diameter || 0;
      if (m.box) extent = Math.max(...axes.map((a) => (m.box[1][a] - m.box[0][a] + 1) * info.spacing_mm[a]));
      return Math.max(3, 0.6 * extent + 2);
    }

    // ---- controls
    const controls = el("div", { class: "controls ct2d-controls" });
    const presets = el("span", { class: "group", id: "window-presets" }, "window:");
    for (const name of Object.keys(info.windows)) {
      const b = el("button", { type: "button", dataset: { window: name } }, name);
      b.addEventListener("click", () => setWindow({ ...info.windows[name], name }));
      presets.append(b);
    }
    const wlText = el("span", { class: "muted wl-readout", id: "wl-readout" });
    presets.append(wlText);
    controls.append(presets);
    const maskGroup = el("span", { class: "group", id: "mask-toggles" });
    for (const m of info.masks) {
      const box = el("input", { type: "checkbox", checked: layers[m].on });
      box.addEventListener("change", () => { layers[m].on = box.checked; paintMasks(); });
      const slider = el("input", { type: "range", min: "0", max: "1", step: "0.05", value: String(layers[m].opacity),
        title: `${MASK_LABELS[m] || m} opacity` });
      slider.addEventListener("input", () => { layers[m].opacity = Number(slider.value); paintMasks(); });
      maskGroup.append(el("label", { dataset: { layer: m } }, box, ` ${MASK_LABELS[m] || m}`), slider);
    }
    if (nodules.length) {
      const box = el("input", { type: "checkbox", checked: true });
      box.addEventListener("change", () => { container.classList.toggle("markers-off", !box.checked); });
      maskGroup.append(el("label", { dataset: { layer: "markers" } }, box, " nodule markers"));
    }
    controls.append(maskGroup);
    const help = el("p", { class: "muted ct2d-help" },
      "Scroll: mouse wheel, slider or arrow keys over a view. Drag on a view: window (left/right) and level " +
      "(up/down). Click: put the other views through that point.");
    const grid = el("div", { class: "ct2d-grid" });
    container.replaceChildren(controls, help, grid);

    // ---- the three panes
    for (const plane of PLANES) {
      const p = info.planes[plane];
      const title = el("span", { class: "ct2d-title" });
      const base = el("img", { class: "ct2d-base", alt: `${plane} CT slice`, draggable: false });
      const masks = {};
      const stage = el("div", { class: "ct2d-stage", tabIndex: 0, dataset: { plane } }, base);
      stage.style.aspectRatio = `${p.width_mm} / ${p.height_mm}`;
      for (const m of info.masks) {
        masks[m] = el("img", { class: "ct2d-mask", alt: `${m} mask`, draggable: false, dataset: { layer: m } });
        stage.append(masks[m]);
      }
      const overlay = svg("svg", { class: "ct2d-overlay", viewBox: `0 0 ${p.width_mm} ${p.height_mm}`,
        preserveAspectRatio: "none" });
      stage.append(overlay);
      const slider = el("input", { type: "range", min: "0", max: String(p.count - 1), step: "1", class: "ct2d-slider",
        title: `${plane} slice` });
      slider.addEventListener("input", () => setIndex(plane, Number(slider.value)));
      const pane = el("figure", { class: "ct2d-pane", dataset: { plane } }, el("figcaption", {}, title), stage, slider);
      grid.append(pane);
      panes[plane] = { plane, p, pane, stage, base, masks, overlay, slider, title, pending: null };
      base.addEventListener("load", () => {
        pane.dataset.loaded = base.dataset.index;
        base.dataset.loadedIndex = base.dataset.index;
      });
      stage.addEventListener("wheel", (ev) => {
        ev.preventDefault();
        const step = (ev.deltaY > 0 ? 1 : -1) * (ev.shiftKey ? 5 : 1);
        setIndex(plane, pos[AXIS[plane]] + step);
      }, { passive: false });
      stage.addEventListener("keydown", (ev) => {
        const step = { ArrowUp: 1, ArrowRight: 1, ArrowDown: -1, ArrowLeft: -1, PageUp: 10, PageDown: -10 }[ev.key];
        if (step) { ev.preventDefault(); setIndex(plane, pos[AXIS[plane]] + step); }
      });
      attachDrag(panes[plane]);
    }

    function attachDrag(pane) {
      let start = null;
      pane.stage.addEventListener("pointerdown", (ev) => {
        if (ev.button !== 0) return;
        pane.stage.setPointerCapture(ev.pointerId);
        start = { x: ev.clientX, y: ev.clientY, win: { ...win }, moved: false };
      });
      pane.stage.addEventListener("pointermove", (ev) => {
        if (!start) return;
        const dx = ev.clientX - start.x, dy = ev.clientY - start.y;
        if (!start.moved && Math.hypot(dx, dy) < 4) return;
        start.moved = true;
        // 4 HU of width per pixel right, 2 HU of level per pixel down (lower level = brighter)
        setWindow({ center: start.win.center - 2 * dy, width: Math.max(1, start.win.width + 4 * dx), name: "custom" }, true);
      });
      const end = (ev) => {
        if (!start) return;
        const s = start;
        start = null;
        if (s.moved) { setWindow(win); return; }
        const r = pane.stage.getBoundingClientRect();
        const set = fromDisplay[pane.plane]((ev.clientX - r.left) / r.width, (ev.clientY - r.top) / r.height);
        for (const [a, v] of Object.entries(set)) pos[Number(a)] = v;
        refreshAll();
      };
      pane.stage.addEventListener("pointerup", end);
      pane.stage.addEventListener("pointercancel", () => { start = null; });
    }

    // ---- drawing
    const sliceUrl = (plane, index, params) =>
      `${API}/jobs/${encodeURIComponent(jobId)}/slices/${plane}/${index}.png?${new URLSearchParams(params)}`;

    function paintBase(pane, throttled) {
      const index = pos[AXIS[pane.plane]];
      const url = sliceUrl(pane.plane, index, { center: Math.round(win.center), width: Math.round(win.width) });
      if (throttled) {  // while dragging the window: at most one request per view every 120 ms
        pane.pending = url;
        if (pane.timer) return;
        pane.timer = setTimeout(() => { pane.timer = null; if (pane.pending) { pane.base.src = pane.pending; pane.pending = null; } }, 120);
        return;
      }
      pane.pending = null;
      pane.base.dataset.index = String(index);
      if (pane.base.getAttribute("src") !== url) pane.base.src = url;
    }

    function paintMasks() {
      for (const pane of Object.values(panes)) {
        const index = pos[AXIS[pane.plane]];
        for (const [m, img] of Object.entries(pane.masks)) {
          const { on, opacity } = layers[m];
          img.hidden = !on;
          img.style.opacity = String(opacity);
          if (on) {
            const url = sliceUrl(pane.plane, index, { layer: m });
            if (img.getAttribute("src") !== url) img.src = url;
          }
        }
      }
    }

    function paintOverlay(pane) {
      const { plane, overlay, p } = pane;
      overlay.replaceChildren();
      const [cx, cy] = toDisplay[plane](pos);
      // where the other two planes cut this one
      overlay.append(svg("line", { class: "ct2d-cross", x1: cx, y1: 0, x2: cx, y2: p.height_mm }),
        svg("line", { class: "ct2d-cross", x1: 0, y1: cy, x2: p.width_mm, y2: cy }));
      const index = pos[AXIS[plane]];
      const scaleY = p.height_mm / Math.max(1, pane.stage.clientHeight || 1);  // mm per screen px (vertical)
      const scaleX = p.width_mm / Math.max(1, pane.stage.clientWidth || 1);
      for (const m of nodules) {
        if (!spans(m, plane, index)) continue;
        const [x, y] = toDisplay[plane](m.centre);
        const r = radiusMm(m, plane);
        const key = Math.round(m.centre[AXIS[plane]]) === index;
        const g = svg("g", { class: `ct2d-marker${key ? "" : " off-key"}`, "data-nodule": String(m.number),
          "data-plane": plane });
        g.append(svg("ellipse", { cx: x, cy: y, rx: r, ry: r }));
        const label = svg("text", { x: x + r * 0.75, y: Math.max(y - r * 0.75, 14 * scaleY), "text-anchor": "start",
          transform: `translate(${x + r * 0.75} ${Math.max(y - r * 0.75, 14 * scaleY)}) scale(${scaleX} ${scaleY}) ` +
            `translate(${-(x + r * 0.75)} ${-Math.max(y - r * 0.75, 14 * scaleY)})` });
        label.textContent = `${m.number} p=${typeof m.probability === "number" ? m.probability.toFixed(2) : "?"}`;
        g.append(label);
        overlay.append(g);
      }
    }

    function paintPane(pane) {
      const index = pos[AXIS[pane.plane]];
      pane.slider.value = String(index);
      pane.title.textContent = `${pane.plane} ${index + 1} / ${pane.p.count}`;
      pane.pane.dataset.index = String(index);
      paintBase(pane, false);
      paintOverlay(pane);
    }

    function refreshAll() {
      for (const pane of Object.values(panes)) paintPane(pane);
      paintMasks();
    }

    function setIndex(plane, index) {
      const n = info.planes[plane].count;
      const i = Math.min(n - 1, Math.max(0, Math.round(index)));
      if (i === pos[AXIS[plane]]) return;
      pos[AXIS[plane]] = i;
      for (const pane of Object.values(panes)) pane === panes[plane] ? paintPane(pane) : paintOverlay(pane);
      paintMasks();
    }

    function setWindow(w, dragging = false) {
      win = { center: w.center, width: w.width, name: w.name || "custom" };
      wlText.textContent = `C ${Math.round(win.center)} / W ${Math.round(win.width)} HU`;
      for (const b of presets.querySelectorAll("button")) b.classList.toggle("active", b.dataset.window === win.name);
      container.dataset.window = win.name;
      for (const pane of Object.values(panes)) paintBase(pane, dragging);
      if (viewer.onWindow) viewer.onWindow(win);
    }

    // the three planes through voxel (z, y, x) (continuous indices are rounded)
    function goTo(zyx) {
      for (let a = 0; a < 3; a++) pos[a] = Math.min(info.shape[a] - 1, Math.max(0, Math.round(zyx[a])));
      refreshAll();
    }

    function goToNodule(number) {
      const m = nodules.find((n) => n.number === number);
      if (m) goTo(m.centre);
    }

    window.addEventListener("resize", () => { for (const pane of Object.values(panes)) paintOverlay(pane); });
    const viewer = { goTo, goToNodule, setIndex, setWindow, redraw: refreshAll, position: () => [...pos],
      window: () => ({ ...win }), nodules, onWindow: null };
    if (nodules.length) goTo(nodules[0].centre);  // open on the most probable nodule
    else refreshAll();
    setWindow(win);
    return viewer;
  }

  async function load(container, jobId, findings) {
    const r = await fetch(`${API}/jobs/${encodeURIComponent(jobId)}/volume`, { credentials: "same-origin" });
    const info = await r.json().catch(() => ({}));
    if (!r.ok) throw new Error(info.detail || `HTTP ${r.status}`);
    const viewer = create({ container, jobId, info, findings });
    window.pulmoSlices = viewer;
    return viewer;
  }

  window.PulmoSlices = { create, load, worldToIndex };
})();
