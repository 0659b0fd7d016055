// forms.js renders a plugin's settings form from its JSON Schema (and,
// when the plugin ships one, its JSON Forms UI schema) — no plugin code
// runs in the host page. It knows the shapes settings take: booleans,
// enums, numbers, strings (writeOnly ones as secrets), lists, nested
// objects; anything else gets a JSON editor. Validation is the daemon's:
// the form sends what changed and shows each field the daemon refuses
// (the middleware's 422 answer lists them) next to that field.
"use strict";

const DimForms = (() => {
  const MASK = "********"; // how the daemon shows a stored secret

  // el makes an element: attributes (text: its text content; true: a
  // bare attribute; false, null or undefined: left out) and children.
  // Nothing it is given is ever parsed as HTML.
  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === "text") e.textContent = v;
      else e.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children) if (c) e.append(c);
    return e;
  }

  // order lists the properties of an object schema, with labels, as the UI
  // schema lays them out (Controls, in VerticalLayout/Group elements), or
  // in the schema's own order.
  function order(schema, ui) {
    const props = schema.properties || {};
    const out = [];
    const seen = new Set();
    const walk = (node) => {
      if (!node || typeof node !== "object") return;
      if (node.type === "Control" && typeof node.scope === "string") {
        const m = /^#\/properties\/([^/]+)$/.exec(node.scope);
        if (m && props[m[1]] && !seen.has(m[1])) {
          seen.add(m[1]);
          out.push({ key: m[1], label: typeof node.label === "string" ? node.label : undefined, options: node.options || {} });
        }
      }
      for (const c of node.elements || []) walk(c);
    };
    walk(ui);
    for (const k of Object.keys(props)) if (!seen.has(k)) out.push({ key: k, options: {} });
    return out;
  }

  function typeOf(s) {
    if (Array.isArray(s.type)) return s.type.find((t) => t !== "null") || "string";
    if (s.type) return s.type;
    if (s.properties) return "object";
    return undefined;
  }

  function choices(s) {
    if (Array.isArray(s.enum)) return s.enum.map((v) => ({ value: v, title: v === "" ? "(none)" : String(v) }));
    if (Array.isArray(s.oneOf) && s.oneOf.every((o) => o && "const" in o))
      return s.oneOf.map((o) => ({ value: o.const, title: o.title || String(o.const) }));
    return null;
  }

  // field builds the input for one value; it returns the element and a
  // read() giving the value to send ({skip: true} for "unchanged").
  function field(path, s, label, value, opts) {
    const id = "f-" + path.replace(/[^a-zA-Z0-9_-]/g, "_");
    const t = typeOf(s);
    const help = s.description ? el("span", { class: "help", id: id + "-help", text: s.description }) : null;
    const problem = el("span", { class: "problem", id: id + "-problem", role: "alert", "data-problem-for": path });
    const wrap = (input, cls) => {
      input.id = id;
      input.setAttribute("data-field", path);
      if (help) input.setAttribute("aria-describedby", id + "-help");
      const lab = el("label", { for: id, text: label });
      return cls === "check"
        ? el("div", { class: "field check" }, input, lab, help, problem)
        : el("div", { class: "field" }, lab, input, help, problem);
    };
    const ch = choices(s);
    if (ch) {
      const sel = el("select", {});
      for (const c of ch) {
        const o = el("option", { value: JSON.stringify(c.value), text: c.title });
        if (JSON.stringify(c.value) === JSON.stringify(value)) o.selected = true;
        sel.append(o);
      }
      return { node: wrap(sel), read: () => JSON.parse(sel.value) };
    }
    switch (t) {
      case "boolean": {
        const cb = el("input", { type: "checkbox" });
        cb.checked = value === true;
        return { node: wrap(cb, "check"), read: () => cb.checked };
      }
      case "integer":
      case "number": {
        const inp = el("input", { type: "number", step: t === "integer" ? "1" : "any", min: s.minimum, max: s.maximum, inputmode: "decimal" });
        inp.value = value === undefined || value === null ? "" : String(value);
        return {
          node: wrap(inp),
          read: () => {
            const v = inp.value.trim();
            if (v === "") return null;
            const n = Number(v);
            return Number.isFinite(n) ? n : v; // the daemon says what is wrong
          },
        };
      }
      case "string": {
        const secret = s.writeOnly === true;
        const multi = opts && opts.multi;
        const inp = multi ? el("textarea", { rows: 4 }) : el("input", { type: secret ? "password" : s.format === "uri" ? "url" : "text", maxlength: s.maxLength, autocomplete: secret ? "new-password" : "off" });
        inp.value = value === undefined || value === null ? "" : String(value);
        if (secret) inp.placeholder = value === MASK ? "(set — leave as is to keep it)" : "(not set)";
        return { node: wrap(inp), read: () => inp.value };
      }
      case "array": {
        const items = s.items || {};
        const ich = choices(items);
        const cur = Array.isArray(value) ? value : [];
        if (ich) {
          const box = el("fieldset", { id, "data-field": path }, el("legend", { text: label }));
          const cbs = ich.map((c) => {
            const cb = el("input", { type: "checkbox", id: id + "-" + String(c.value).replace(/\W/g, "_") });
            cb.checked = cur.some((v) => JSON.stringify(v) === JSON.stringify(c.value));
            box.append(el("div", { class: "field check" }, cb, el("label", { for: cb.id, text: c.title })));
            return [cb, c.value];
          });
          if (help) box.append(help);
          box.append(problem);
          return { node: box, read: () => cbs.filter(([cb]) => cb.checked).map(([, v]) => v) };
        }
        if (["string", "integer", "number"].includes(typeOf(items))) {
          const ta = el("textarea", { rows: Math.min(8, Math.max(3, cur.length + 1)) });
          ta.value = cur.join("\n");
          const num = typeOf(items) !== "string";
          return {
            node: wrap(ta),
            read: () => ta.value.split("\n").map((l) => l.trim()).filter((l) => l !== "").map((l) => (num && Number.isFinite(Number(l)) ? Number(l) : l)),
          };
        }
        break;
      }
      case "object": {
        if (s.properties && !s.additionalProperties) {
          const box = el("fieldset", { id, "data-field": path }, el("legend", { text: label }));
          if (help) box.append(help);
          box.append(problem);
          const obj = value && typeof value === "object" ? value : {};
          const kids = order(s, null).map(({ key }) => {
            const k = field(path + "." + key, s.properties[key], s.properties[key].title || key, obj[key], {});
            box.append(k.node);
            return [key, k];
          });
          return {
            node: box,
            read: () => {
              const out = {};
              for (const [key, k] of kids) out[key] = k.read();
              return out;
            },
          };
        }
        break;
      }
    }
    // Anything else: edit it as JSON.
    const ta = el("textarea", { rows: 6, spellcheck: "false" });
    ta.value = JSON.stringify(value === undefined ? null : value, null, 2);
    return {
      node: wrap(ta),
      read: () => {
        try {
          return JSON.parse(ta.value);
        } catch (e) {
          throw { field: path, reason: "not valid JSON: " + e.message };
        }
      },
    };
  }

  // render fills container with the form for settings ({schema, ui,
  // values}, as the middleware's GET answers) and calls save(changes)
  // on submit; save resolves to the new settings, or rejects with the
  // middleware's refusal ({error, problems}).
  function render(container, settings, save) {
    const schema = settings.schema || {};
    const values = settings.values || {};
    const form = el("form", { novalidate: true, class: "settings-form" });
    if (schema.title) form.append(el("h2", { text: schema.title }));
    if (schema.description) form.append(el("p", { class: "muted", text: schema.description }));
    const fields = order(schema, settings.ui).map(({ key, label, options }) => {
      const s = schema.properties[key];
      const f = field(key, s, label || s.title || key, values[key], options);
      form.append(f.node);
      return [key, f];
    });
    const status = el("span", { class: "form-status", role: "status" });
    const summary = el("p", { class: "error", role: "alert", hidden: true });
    form.append(summary, el("button", { type: "submit", text: "Save" }), status);
    container.replaceChildren(form);

    const showProblems = (problems, message) => {
      for (const p of form.querySelectorAll("[data-problem-for]")) p.textContent = "";
      for (const i of form.querySelectorAll("[aria-invalid]")) i.removeAttribute("aria-invalid");
      const unplaced = [];
      for (const p of problems || []) {
        // The nearest field: "a.b[2]" shows on a.b, then on a.
        let path = (p.field || "").replace(/\[\d+\]$/, "");
        let slot = null;
        while (path && !(slot = form.querySelector(`[data-problem-for="${CSS.escape(path)}"]`))) path = path.includes(".") ? path.slice(0, path.lastIndexOf(".")) : "";
        if (slot) {
          slot.textContent = slot.textContent ? slot.textContent + "; " + p.reason : p.reason;
          const input = form.querySelector(`[data-field="${CSS.escape(path)}"]`);
          if (input) input.setAttribute("aria-invalid", "true");
        } else unplaced.push((p.field ? p.field + ": " : "") + p.reason);
      }
      summary.hidden = !message;
      summary.textContent = message ? message + (unplaced.length ? " — " + unplaced.join("; ") : "") : "";
    };

    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      status.textContent = "";
      const changes = {};
      try {
        for (const [key, f] of fields) {
          const v = f.read();
          const before = values[key] === undefined ? null : values[key];
          if (JSON.stringify(v) !== JSON.stringify(before)) changes[key] = v;
        }
      } catch (p) {
        showProblems([p], "Not saved: fix the field marked below.");
        return;
      }
      if (Object.keys(changes).length === 0) {
        showProblems([], "");
        status.textContent = "Nothing changed.";
        return;
      }
      try {
        const next = await save(changes);
        Object.assign(values, next.values || {});
        showProblems([], "");
        status.className = "form-status ok";
        status.textContent = "Saved.";
      } catch (refusal) {
        status.textContent = "";
        showProblems(refusal.problems, "Not saved: " + (refusal.problems && refusal.problems.length ? "fix the fields marked below." : refusal.error || "the server refused the change."));
      }
    });
    return form;
  }

  return { render, el, MASK };
})();
