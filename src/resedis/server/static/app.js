// resedis web page: search box, hit grid with boxes, threshold slider, large view.
// Framework-free, no build step. Boxes are SVG paths in ORIGINAL image pixels inside an
// SVG whose viewBox is the original image size and which exactly covers the displayed
// image, so the browser does the scaling (see .frame in style.css).
"use strict";

(() => {
  const SVG_NS = "http://www.w3.org/2000/svg";
  const THUMB_SIZE = 384;
  const KEY_STORAGE = "resedis-api-key";
  const $ = (id) => document.getElementById(id);

  const state = {
    result: null, // last /api/search response
    threshold: 0.1,
    thresholdTouched: false,
    apiKey: sessionStorage.getItem(KEY_STORAGE) || "",
    blobUrls: new Map(),
    seq: 0,
    viewerIndex: null,
    lastFocus: null,
    lastQuery: null,
  };

  // ---- helpers --------------------------------------------------------------
  function el(tag, props = {}, children = []) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(props)) {
      if (k === "dataset") Object.assign(node.dataset, v);
      else if (k in node) node[k] = v;
      else node.setAttribute(k, v);
    }
    for (const c of children) node.append(c);
    return node;
  }

  function svg(tag, attrs = {}) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
    return node;
  }

  /** Image ids are POSIX paths: encode each segment, keep the slashes. */
  function encodeId(id) {
    return String(id).split("/").map(encodeURIComponent).join("/");
  }

  const fmt = (x) => Number(x).toFixed(3);

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  async function api(path) {
    const headers = { Accept: "application/json" };
    if (state.apiKey) headers["X-API-Key"] = state.apiKey;
    let resp;
    try {
      resp = await fetch(path, { headers });
    } catch (err) {
      throw new ApiError(0, `cannot reach the server (${err.message})`);
    }
    let body = null;
    try {
      body = await resp.json();
    } catch (_) {
      body = null;
    }
    if (!resp.ok) {
      if (resp.status === 401) showKeyForm();
      const detail = body && body.detail !== undefined ? body.detail : resp.statusText;
      throw new ApiError(resp.status, typeof detail === "string" ? detail : JSON.stringify(detail));
    }
    return body;
  }

  /** URL for an <img>: direct without an API key, else a blob URL fetched with the key header. */
  async function imageSrc(id, size) {
    const url = size ? `/api/images/${encodeId(id)}/thumb?size=${size}` : `/api/images/${encodeId(id)}`;
    if (!state.apiKey) return url;
    if (state.blobUrls.has(url)) return state.blobUrls.get(url);
    const resp = await fetch(url, { headers: { "X-API-Key": state.apiKey } });
    if (!resp.ok) throw new ApiError(resp.status, `image ${id}: HTTP ${resp.status}`);
    const blobUrl = URL.createObjectURL(await resp.blob());
    state.blobUrls.set(url, blobUrl);
    return blobUrl;
  }

  function setImage(img, id, size) {
    imageSrc(id, size).then(
      (src) => { img.src = src; },
      () => { img.alt = `${id} (image unavailable)`; img.classList.add("broken"); },
    );
  }

  /** A mask as an SVG <image> in original pixels (one colour; presence is shown by the box). */
  function maskImage(rle) {
    const [h, w] = rle.size;
    const bits = window.resedisRle.decodeRle(rle);
    const canvas = document.createElement("canvas");
    canvas.width = w;
    canvas.height = h;
    const ctx = canvas.getContext("2d");
    const data = ctx.createImageData(w, h);
    for (let i = 0; i < bits.length; i++) {
      if (bits[i]) data.data.set([36, 88, 214, 255], i * 4);
    }
    ctx.putImageData(data, 0, 0);
    return svg("image", { class: "mask", href: canvas.toDataURL(), x: 0, y: 0, width: w, height: h, preserveAspectRatio: "none" });
  }

  // ---- drawing --------------------------------------------------------------
  /** A box as a closed path (a degenerate, zero-height box still shows as a line). */
  function boxPath(box, cls, index) {
    const [x0, y0, x1, y1] = box;
    const d = `M${x0} ${y0}H${x1}V${y1}H${x0}Z`;
    const group = svg("g", { "data-index": index });
    group.append(svg("path", { d, class: "box-halo" }), svg("path", { d, class: `box ${cls}` }));
    return group;
  }

  /** Frame (aspect ratio of the original image) holding the image and its overlay. */
  function frame(dims) {
    const node = el("div", { className: "frame" });
    node.style.setProperty("--ar", String(dims.width / dims.height));
    const overlay = svg("svg", {
      class: "overlay",
      viewBox: `0 0 ${dims.width} ${dims.height}`,
      preserveAspectRatio: "none",
      "aria-hidden": "true",
    });
    return { node, overlay };
  }

  const isPresent = (hit) => hit.score >= state.threshold;
  const dimsOf = (hit) => (state.result.images || {})[String(hit.image_id)] || null;

  /** Hits grouped by image, images in the order of their best hit: [{imageId, indices}]. */
  function groupHits(hits) {
    const groups = new Map();
    hits.forEach((h, i) => {
      const key = String(h.image_id);
      if (!groups.has(key)) groups.set(key, { imageId: h.image_id, indices: [] });
      groups.get(key).indices.push(i);
    });
    return [...groups.values()];
  }

  /** One card per image with every box of its hits; opens the large view at its best hit. */
  function makeCard(group, rank) {
    const index = group.indices[0];
    const hit = state.result.hits[index];
    const dims = dimsOf(hit);
    const img = el("img", { alt: `image ${hit.image_id}`, decoding: "async", loading: "lazy" });
    const stage = el("div", { className: "stage" });
    if (dims) {
      const f = frame(dims);
      for (const i of [...group.indices].reverse()) { // the best box drawn last, on top
        const h = state.result.hits[i];
        f.overlay.append(boxPath(h.box, "present", i));
        if (h.mask) f.overlay.prepend(maskImage(h.mask));
      }
      f.node.append(img, f.overlay);
      stage.append(f.node);
    } else {
      stage.append(img);
    }
    setImage(img, hit.image_id, THUMB_SIZE);
    const badge = el("span", { className: "badge" });
    const n = group.indices.length;
    const card = el("button", { type: "button", className: "card", dataset: { index: String(index), image: String(hit.image_id) } }, [
      stage,
      el("div", { className: "meta" }, [
        el("span", { className: "rank", textContent: `#${rank + 1}` }),
        el("span", { className: "score", textContent: fmt(hit.score), title: "best detector score in this image (sigmoid of the logit)" }),
        el("span", { className: "boxes hint", textContent: `${n} box${n === 1 ? "" : "es"}` }),
        badge,
      ]),
      el("div", { className: "name", textContent: String(hit.image_id), title: String(hit.image_id) }),
    ]);
    card.addEventListener("click", () => openViewer(index));
    const cell = el("li", { className: "cell" }, [card]);
    if (hit.explain) {  // subject logit and each cue's contribution (they sum to "total")
      const rows = Object.entries(hit.explain).map(([k, v]) => `${k}: ${v >= 0 ? "+" : ""}${v.toFixed(3)}`);
      cell.append(el("details", { className: "explain" }, [
        el("summary", { textContent: "why this score" }), el("pre", { textContent: rows.join("\n") })]));
    }
    return cell;
  }

  function renderResults() {
    const grid = $("results");
    grid.replaceChildren();
    const r = state.result;
    $("empty").hidden = Boolean(r);
    if (!r) return;
    state.groups = groupHits(r.hits);
    state.groups.forEach((g, rank) => grid.append(makeCard(g, rank)));
    applyThreshold();
  }

  /** Re-label every card for the current slider value; nothing is fetched. */
  function applyThreshold() {
    const r = state.result;
    if (!r) return;
    const showBelow = $("show-below").checked;
    let present = 0;
    for (const card of $("results").querySelectorAll(".card")) {
      const hit = r.hits[Number(card.dataset.index)];
      const yes = isPresent(hit); // the best hit of the image: present iff any of its hits is
      for (const g of card.querySelectorAll(".overlay g")) {
        const h = r.hits[Number(g.dataset.index)];
        present += isPresent(h) ? 1 : 0;
        g.querySelector("path.box").setAttribute("class", `box ${isPresent(h) ? "present" : "below"}`);
      }
      if (!card.querySelector(".overlay g")) present += yes ? 1 : 0;
      card.dataset.present = String(yes);
      card.classList.toggle("below", !yes);
      const badge = card.querySelector(".badge");
      badge.className = `badge ${yes ? "present" : "below"}`;
      badge.textContent = yes ? "present" : "below threshold";
      card.setAttribute("aria-label", `Hit ${Number(card.dataset.index) + 1}: ${hit.image_id}, score ${fmt(hit.score)}, ${yes ? "present" : "below threshold"}`);
      card.parentElement.hidden = !yes && !showBelow;
    }
    const below = r.hits.length - present;
    const status = $("status");
    status.dataset.present = String(present);
    status.dataset.below = String(below);
    status.dataset.total = String(r.hits.length);
    const notes = (r.notes || []).length ? ` (${r.notes.join("; ")})` : "";
    if (r.hits.length === 0) {
      status.textContent = `No region in the index matches “${r.query}”${notes}.`;
    } else {
      const ms = r.timings && r.timings.total_ms !== undefined ? ` in ${Math.round(r.timings.total_ms)} ms` : "";
      status.replaceChildren(
        el("strong", { textContent: `${present} present` }),
        ` · ${below} below threshold ${fmt(state.threshold)}${showBelow || below === 0 ? "" : " (hidden)"} — top ${r.hits.length} hits in ${state.groups.length} image${state.groups.length === 1 ? "" : "s"} for “${r.query}”${ms}`,
      );
      if (present === 0 && !showBelow) {
        status.append(" — nothing reaches the threshold: lower it or show below-threshold hits.");
      }
    }
    if (state.viewerIndex !== null) renderViewer();
  }

  // ---- large view -------------------------------------------------------------
  function openViewer(index) {
    state.viewerIndex = index;
    state.lastFocus = document.activeElement;
    renderViewer();
    const dialog = $("viewer");
    if (!dialog.open) dialog.showModal();
    $("viewer-close").focus();
  }

  function renderViewer() {
    const r = state.result;
    const hit = r.hits[state.viewerIndex];
    const dims = dimsOf(hit);
    const same = r.hits.map((h, i) => [h, i]).filter(([h]) => String(h.image_id) === String(hit.image_id));
    $("viewer-title").textContent = `${hit.image_id} — ${same.length} hit${same.length === 1 ? "" : "s"} in this image`;
    const stage = $("viewer-stage");
    const img = el("img", { alt: `image ${hit.image_id}` });
    stage.replaceChildren();
    if (dims) {
      const f = frame(dims);
      // Other hits first, the selected one last so it is drawn on top.
      for (const [h, i] of [...same.filter(([, i]) => i !== state.viewerIndex), [hit, state.viewerIndex]]) {
        const cls = `${isPresent(h) ? "present" : "below"} ${i === state.viewerIndex ? "selected" : "other"}`;
        if (h.mask && i === state.viewerIndex) f.overlay.prepend(maskImage(h.mask));
        f.overlay.append(boxPath(h.box, cls, i));
      }
      f.node.append(img, f.overlay);
      stage.append(f.node);
    } else {
      stage.append(img);
    }
    setImage(img, hit.image_id, 0);
    const list = $("viewer-list");
    list.replaceChildren();
    for (const [h, i] of same) {
      const yes = isPresent(h);
      const item = el("li", { className: i === state.viewerIndex ? "selected" : "" }, [
        el("button", {
          type: "button", className: "pick", ariaCurrent: i === state.viewerIndex ? "true" : "false", textContent: `#${i + 1}  ${fmt(h.score)}`,
          title: `box [${h.box.map((v) => Math.round(v)).join(", ")}]`,
          onclick: () => { state.viewerIndex = i; renderViewer(); },
        }),
        el("span", { className: `badge ${yes ? "present" : "below"}`, textContent: yes ? "present" : "below threshold" }),
        el("button", {
          type: "button", className: "like", textContent: "Find more like this",
          title: "search the index for regions like this box (query by example)",
          onclick: () => { $("viewer").close(); runSearch({ like: { imageId: h.image_id, box: h.box } }, Number($("top-k").value)); },
        }),
      ]);
      list.append(item);
    }
  }

  // ---- search ---------------------------------------------------------------
  function setLoading(on) {
    document.body.classList.toggle("loading", on);
    $("results").setAttribute("aria-busy", String(on));
    $("search-button").disabled = on;
    if (on) {
      $("status").replaceChildren(el("span", { className: "spinner", "aria-hidden": "true" }), "Searching…");
    }
  }

  function showError(message) {
    const box = $("error");
    box.textContent = message;
    box.hidden = false;
  }

  /** The filter row's values as /api/search parameters. */
  function filterParams(params) {
    for (const [id, name] of [["f-folder", "folder"], ["f-min-width", "min_width"], ["f-max-width", "max_width"],
      ["f-min-height", "min_height"], ["f-max-height", "max_height"], ["f-after", "modified_after"], ["f-before", "modified_before"]]) {
      const v = $(id) ? $(id).value.trim() : "";
      if (v) params.set(name, v);
    }
  }

  /** q: the description, or {like: {imageId, box}} (find more like this region). */
  async function runSearch(q, topK) {
    const seq = ++state.seq;
    state.lastQuery = { q, topK };
    $("error").hidden = true;
    setLoading(true);
    try {
      const params = new URLSearchParams({ top_k: String(topK) });
      if (typeof q === "string") {
        params.set("q", q);
        if ($("pipeline").value) params.set("pipeline", $("pipeline").value);
      } else {
        params.set("like_image_id", String(q.like.imageId));
        params.set("box", q.like.box.map((v) => v.toFixed(2)).join(","));
      }
      if ($("masks").checked) params.set("masks", "true");
      filterParams(params);
      $("not").value.split(",").map((t) => t.trim()).filter(Boolean).forEach((t) => params.append("not", t));
      if ($("explain").checked) params.set("explain", "true");
      const result = await api(`/api/search?${params}`);
      if (seq !== state.seq) return; // a newer search was started meanwhile
      for (const url of state.blobUrls.values()) URL.revokeObjectURL(url);
      state.blobUrls.clear();
      state.result = result;
      if (!state.thresholdTouched) setThreshold(result.threshold);
      if (typeof q === "string") history.replaceState(null, "", `?${new URLSearchParams({ q })}`);
      renderResults();
    } catch (err) {
      if (seq !== state.seq) return;
      state.result = null;
      $("results").replaceChildren();
      $("status").textContent = "";
      showError(err.status ? `Search failed (HTTP ${err.status}): ${err.message}` : `Search failed: ${err.message}`);
    } finally {
      if (seq === state.seq) setLoading(false);
    }
  }

  function setThreshold(value) {
    if (typeof value !== "number" || !Number.isFinite(value)) return;
    state.threshold = value;
    $("threshold").value = String(value);
    $("threshold-value").textContent = fmt(value);
  }

  async function loadStats() {
    try {
      const s = await api("/api/stats");
      if (!state.thresholdTouched && typeof s.threshold === "number") setThreshold(s.threshold);
      const info = s.ready
        ? `${s.images} images · ${s.regions} regions indexed · model ${s.model} · threshold ${fmt(s.threshold)} (${s.threshold_source})`
        : "The index is empty.";
      $("index-info").textContent = info;
      const names = Object.keys(s.pipelines || {});
      const select = $("pipeline");
      select.replaceChildren(...names.map((name) => el("option", {
        value: name, textContent: name, selected: name === s.default_pipeline, title: s.pipelines[name].description,
      })));
      select.hidden = names.length < 2;
    } catch (err) {
      $("index-info").textContent = `Index information unavailable: ${err.message}`;
    }
  }

  function showKeyForm() {
    $("key-form").hidden = false;
    $("api-key").focus();
  }

  // ---- wiring -----------------------------------------------------------------
  $("search-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const q = $("q").value.trim();
    if (!q) {
      showError("Type a description first, e.g. “red circle”.");
      $("q").focus();
      return;
    }
    runSearch(q, Number($("top-k").value));
  });

  $("threshold").addEventListener("input", (ev) => {
    state.thresholdTouched = true;
    state.threshold = Number(ev.target.value);
    $("threshold-value").textContent = fmt(state.threshold);
    applyThreshold();
  });
  $("show-below").addEventListener("change", applyThreshold);
  for (const id of ["masks", "pipeline", "f-folder", "f-min-width", "f-max-width", "f-min-height", "f-max-height", "f-after", "f-before"]) {
    $(id).addEventListener("change", () => { if (state.lastQuery) runSearch(state.lastQuery.q, state.lastQuery.topK); });
  }

  $("viewer-close").addEventListener("click", () => $("viewer").close());
  $("viewer").addEventListener("click", (ev) => {
    if (ev.target === $("viewer")) $("viewer").close(); // click on the backdrop
  });
  $("viewer").addEventListener("close", () => {
    state.viewerIndex = null;
    if (state.lastFocus) state.lastFocus.focus();
  });

  $("key-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    state.apiKey = $("api-key").value;
    sessionStorage.setItem(KEY_STORAGE, state.apiKey);
    $("key-form").hidden = true;
    $("error").hidden = true;
    loadStats();
    if (state.lastQuery) runSearch(state.lastQuery.q, state.lastQuery.topK);
  });

  document.addEventListener("keydown", (ev) => {
    const typing = ev.target instanceof HTMLInputElement || ev.target instanceof HTMLSelectElement;
    if (ev.key === "/" && !typing && !$("viewer").open) {
      ev.preventDefault();
      $("q").focus();
      $("q").select();
    }
  });

  // Exposed for tests and the console.
  window.resedis = { decodeRle: window.resedisRle.decodeRle, encodeId, state };

  loadStats();
  const initial = new URLSearchParams(location.search).get("q");
  if (initial) {
    $("q").value = initial;
    runSearch(initial, Number($("top-k").value));
  }
})();
