// The API reference page (/docs): renders the service's own /openapi.json with plain DOM
// calls. Self-contained (no CDN, no inline script): it works offline and under the page's
// Content-Security-Policy.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);

  function el(tag, props = {}, children = []) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(props)) {
      if (k === "className") node.className = v;
      else if (k === "text") node.textContent = v;
      else node.setAttribute(k, v);
    }
    for (const c of children) node.append(c);
    return node;
  }

  function resolve(spec, schema) {
    let s = schema || {};
    for (let i = 0; i < 10 && s.$ref; i++) {
      s = s.$ref.replace(/^#\//, "").split("/").reduce((o, k) => (o ? o[k] : undefined), spec) || {};
    }
    return s;
  }

  function typeOf(spec, schema) {
    const s = resolve(spec, schema);
    if (s.anyOf) return s.anyOf.map((x) => typeOf(spec, x)).join(" | ");
    if (s.type === "array") return `array of ${typeOf(spec, s.items)}`;
    if (s.type) return s.type;
    if (schema && schema.$ref) return schema.$ref.split("/").pop();
    return "any";
  }

  function limits(spec, schema) {
    const s = resolve(spec, schema);
    const parts = [];
    const all = [s, ...(s.anyOf || []).map((x) => resolve(spec, x))];
    for (const x of all) {
      if (x.minimum !== undefined) parts.push(`≥ ${x.minimum}`);
      if (x.exclusiveMinimum !== undefined) parts.push(`> ${x.exclusiveMinimum}`);
      if (x.maximum !== undefined) parts.push(`≤ ${x.maximum}`);
      if (x.exclusiveMaximum !== undefined) parts.push(`< ${x.exclusiveMaximum}`);
      if (x.minLength !== undefined) parts.push(`length ≥ ${x.minLength}`);
      if (x.maxLength !== undefined) parts.push(`length ≤ ${x.maxLength}`);
    }
    if (s.default !== undefined) parts.push(`default ${JSON.stringify(s.default)}`);
    return parts.join(", ");
  }

  function table(head, rows) {
    return el("table", {}, [
      el("thead", {}, [el("tr", {}, head.map((h) => el("th", { text: h })))]),
      el("tbody", {}, rows.map((r) => el("tr", {}, r.map((c) => el("td", {}, [c]))))),
    ]);
  }

  function endpoint(spec, path, method, op, id) {
    const box = el("section", { className: "endpoint", id });
    const title = el("h2", {}, [el("span", { className: `method ${method}`, text: method.toUpperCase() }), path]);
    for (const t of op.tags || []) title.append(el("span", { className: "tag", text: t }));
    box.append(title);
    if (op.summary) box.append(el("p", { text: op.summary }));
    if (op.description) box.append(el("p", { className: "muted", text: op.description }));
    const params = op.parameters || [];
    if (params.length) {
      box.append(el("h3", { text: "Parameters" }));
      box.append(table(["name", "in", "type", "required", "limits / default", "description"], params.map((p) => [
        el("code", { text: p.name }), p.in, typeOf(spec, p.schema), p.required ? "yes" : "no",
        limits(spec, p.schema), p.description || resolve(spec, p.schema).description || "",
      ])));
    }
    const body = op.requestBody && op.requestBody.content;
    if (body) {
      for (const [ctype, media] of Object.entries(body)) {
        const s = resolve(spec, media.schema);
        box.append(el("h3", { text: `Request body (${ctype})` }));
        const required = new Set(s.required || []);
        box.append(table(["field", "type", "required", "limits / default", "description"],
          Object.entries(s.properties || {}).map(([name, f]) => [
            el("code", { text: name }), typeOf(spec, f), required.has(name) ? "yes" : "no", limits(spec, f),
            resolve(spec, f).description || "",
          ])));
      }
    }
    const responses = Object.entries(op.responses || {});
    if (responses.length) {
      box.append(el("h3", { text: "Responses" }));
      box.append(table(["status", "description", "content"], responses.map(([code, r]) => [
        el("code", { text: code }), r.description || "", Object.keys(r.content || {}).join(", "),
      ])));
    }
    return box;
  }

  async function main() {
    const status = $("docs-status");
    let spec;
    try {
      const resp = await fetch("/openapi.json", { headers: { Accept: "application/json" } });
      if (!resp.ok) throw new Error(`HTTP ${resp.status}`);
      spec = await resp.json();
    } catch (err) {
      status.textContent = `Could not load /openapi.json: ${err.message}`;
      status.className = "error";
      return;
    }
    const info = spec.info || {};
    $("title").textContent = `${info.title || "API"} ${info.version || ""} — HTTP API`;
    $("description").textContent = info.description || "";
    document.title = $("title").textContent;
    const list = el("ul");
    const boxes = $("endpoints");
    let n = 0;
    for (const [path, ops] of Object.entries(spec.paths || {})) {
      for (const [method, op] of Object.entries(ops)) {
        const id = `op-${n++}`;
        list.append(el("li", {}, [el("a", { href: `#${id}` }, [el("span", { className: `method ${method}`, text: method.toUpperCase() }), path])]));
        boxes.append(endpoint(spec, path, method, op, id));
      }
    }
    $("toc").append(list);
    status.textContent = `${n} endpoints`;
  }

  main();
})();
