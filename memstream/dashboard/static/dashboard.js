// memstream dashboard: plain JavaScript over the REST API (no framework, no CDN).
//
// Every call goes to this server's REST endpoints with `Authorization: Token <key>`, as an
// SDK would; the key lives in this tab's sessionStorage only. The filters JSON the page shows
// is exactly the `filters` it sends, so what a person clicks is what their code will send.
"use strict";

(() => {
  const KEY_STORE = "memstream.apiKey";
  const ENTITY_FIELDS = ["user_id", "agent_id", "app_id", "run_id"];
  const PAGE_SIZE = 20;
  const SEARCH_TOP_K = 100;
  const LAG_POLL_MS = 10000;
  const LAG_SAMPLES = 30;
  // pill choices (option values); concrete ids are "=" + id so no id can collide with them
  const UNSET = "";
  const ANY = "any";
  const NONE = "none";
  const BOTH = "both";

  const $ = (id) => document.getElementById(id);
  const state = {
    key: null,
    page: 1,
    count: 0,
    query: "",
    mode: "semantic",
    asOf: "",
    searchResults: null,
    lag: [],
    lagTimer: null,
    loadSeq: 0,
  };

  // -- DOM helpers (text always goes in as text, never as markup) -------------------------
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") el.className = v;
      else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
      else el.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return el;
  }
  const SVG = "http://www.w3.org/2000/svg";
  function s(tag, attrs, ...children) {
    const el = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
    for (const c of children) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    return el;
  }
  function setStatus(text, isError) {
    const el = $("status");
    el.textContent = text || "";
    el.classList.toggle("error", !!isError);
  }
  function when(iso) {
    if (!iso) return "—";
    const d = new Date(iso);
    return Number.isNaN(d.getTime()) ? iso : d.toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
  }

  // -- the REST API ---------------------------------------------------------------------
  class ApiError extends Error {
    constructor(status, detail) {
      super(detail);
      this.status = status;
    }
  }
  async function api(method, path, body, { raw = false } = {}) {
    const headers = { Authorization: `Token ${state.key}`, "X-Mem0-Source": "dashboard" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    let r;
    try {
      r = await fetch(path, {
        method, headers, body: body === undefined ? undefined : JSON.stringify(body),
        cache: "no-store",
      });
    } catch (e) {
      throw new ApiError(0, `the server did not answer (${e.message})`);
    }
    if (!r.ok) {
      let detail = `${r.status} ${r.statusText}`;
      try {
        const j = await r.json();
        if (j && typeof j.detail === "string") detail = j.detail;
      } catch (_) { /* not JSON */ }
      if (r.status === 401 && state.key) signOut(`Signed out: ${detail}`);
      throw new ApiError(r.status, detail);
    }
    return raw ? r : r.json();
  }

  // -- sign in --------------------------------------------------------------------------
  async function signIn(key) {
    state.key = key;
    let who;
    try {
      who = await api("GET", "/v1/ping/");
    } catch (e) {
      state.key = null;
      sessionStorage.removeItem(KEY_STORE);
      const why = e.status === 401
        ? `Sign-in failed: this server refused that API key (${e.message}). Check that it was copied whole, or make one with "memstream keys create".`
        : `Sign-in failed: ${e.message}`;
      showSignIn(why);
      return;
    }
    sessionStorage.setItem(KEY_STORE, key);
    $("org-id").textContent = who.org_id;
    $("project-id").textContent = who.project_id;
    $("key-id").textContent = who.key_id || "";
    $("whoami").hidden = false;
    $("signin").hidden = true;
    $("app").hidden = false;
    $("api-key").value = "";
    startLagPolling();
    await reloadAll();
  }
  function showSignIn(error) {
    $("whoami").hidden = true;
    $("app").hidden = true;
    $("signin").hidden = false;
    const el = $("signin-error");
    el.textContent = error || "";
    el.hidden = !error;
    $("api-key").focus();
  }
  function signOut(message) {
    state.key = null;
    sessionStorage.removeItem(KEY_STORE);
    if (state.lagTimer) clearInterval(state.lagTimer);
    state.lagTimer = null;
    showSignIn(message);
  }

  // -- filters ---------------------------------------------------------------------------
  function pillValue(field) {
    return $(`pill-${field.replace(/_id$/, "")}`).value;
  }
  function parseMetaValue(text) {
    // numbers, booleans and null as JSON; anything else is the literal string
    const t = text.trim();
    if (/^(true|false|null|-?\d+(\.\d+)?([eE][+-]?\d+)?)$/.test(t)) return JSON.parse(t);
    return text;
  }
  // The filters of the current pills (without the keyword search): {filters, note}.
  function currentFilters({ withKeywords = true } = {}) {
    const f = {};
    let named = 0;
    for (const field of ENTITY_FIELDS) {
      const v = pillValue(field);
      if (v === UNSET) continue;
      named += 1;
      if (v === ANY) f[field] = "*";
      else if (v === NONE) f[field] = null;
      else if (v === BOTH) f[field] = ["*", null];
      else f[field] = v.slice(1);
    }
    const cat = $("pill-category").value;
    if (cat) f.categories = { in: [cat.slice(1)] };
    const from = $("date-from").value;
    const to = $("date-to").value;
    if (from || to) {
      const range = {};
      if (from) range.gte = from;
      if (to) range.lte = to;
      f[$("date-field").value] = range;
    }
    const mk = $("meta-key").value.trim();
    if (mk) f.metadata = { [mk]: parseMetaValue($("meta-value").value) };
    if (withKeywords && state.query && state.mode === "keyword") f.keywords = state.query;
    let note = "Pills left unset are not named, so they must be null (implicit null scoping).";
    if (named === 0) {
      // nothing picked: the whole project (every memory has at least one id)
      f.OR = ENTITY_FIELDS.map((field) => ({ [field]: "*" }));
      note = "No entity pill set: the whole project (every memory has at least one id).";
    }
    return { filters: f, note };
  }
  // One top-level key a line, each value compact: short, and still exactly the JSON sent.
  function showJson(obj) {
    const lines = Object.entries(obj).map(([k, v]) => `  ${JSON.stringify(k)}: ${JSON.stringify(v)}`);
    return lines.length ? `{\n${lines.join(",\n")}\n}` : "{}";
  }
  function renderFiltersJson() {
    const { filters, note } = currentFilters();
    $("filters-json").textContent = showJson(filters);
    let extra = "";
    if (state.query && state.mode === "semantic") extra = ` Semantic search: "${state.query}" (top ${SEARCH_TOP_K}, no threshold).`;
    if (state.asOf) extra += ` As of ${state.asOf}.`;
    $("filter-note").textContent = note + extra;
    const past = !!state.asOf;
    const semantic = !!(state.query && state.mode === "semantic");
    const del = $("delete-filter");
    del.disabled = past || semantic;
    del.title = past ? "Deleting acts on the present: clear 'As of' first"
      : semantic ? "Deleting acts on the filters, not on search results: clear the search or use keyword mode"
      : "Delete every memory these filters select";
    return filters;
  }

  // -- pills -----------------------------------------------------------------------------
  function fillPill(select, counts, total, { entity }) {
    const keep = select.value;
    const none = counts.find((c) => c.key === null);
    const noneCount = none ? none.count : 0;
    const options = [];
    if (entity) {
      options.push(h("option", { value: UNSET }, "unset = none"));
      options.push(h("option", { value: ANY }, `any (*) · ${total - noneCount}`));
      options.push(h("option", { value: NONE }, `none (null) · ${noneCount}`));
      options.push(h("option", { value: BOTH }, `any or none · ${total}`));
    } else {
      options.push(h("option", { value: UNSET }, "— (any)"));
    }
    const values = counts.filter((c) => c.key !== null)
      .sort((a, b) => String(a.key).localeCompare(String(b.key)));
    const seen = new Set();
    for (const c of values) {
      seen.add(`=${c.key}`);
      options.push(h("option", { value: `=${c.key}` }, `${c.key} · ${c.count}`));
    }
    if (keep.startsWith("=") && !seen.has(keep)) {
      // the chosen value has no memories (any more): keep it selected, with its count 0
      options.push(h("option", { value: keep }, `${keep.slice(1)} · 0`));
    }
    select.replaceChildren(...options);
    select.value = keep;
    if (select.value !== keep) select.value = UNSET;
  }
  async function loadPills() {
    const body = { by: ["user", "agent", "app", "run", "category"] };
    if (state.asOf) body.as_of = state.asOf;
    const st = await api("POST", "/v1/stats/", body);
    for (const kind of ["user", "agent", "app", "run"]) {
      fillPill($(`pill-${kind}`), st.groups[kind] || [], st.total, { entity: true });
    }
    fillPill($("pill-category"), st.groups.category || [], st.total, { entity: false });
    pushLag(st.projector);
    return st;
  }

  // -- the list --------------------------------------------------------------------------
  function chip(field, value) {
    const kind = field.replace(/_id$/, "");
    return h("button", {
      type: "button", class: `chip chip-${kind}`, title: `filter by ${field} = ${value}`,
      onclick: () => pickPill(kind, value),
    }, h("span", { class: "chip-k" }, kind), " ", value);
  }
  function pickPill(kind, value) {
    const sel = $(`pill-${kind}`);
    if (![...sel.options].some((o) => o.value === `=${value}`)) {
      sel.append(h("option", { value: `=${value}` }, value));
    }
    sel.value = `=${value}`;
    state.page = 1;
    reloadAll();
  }
  function memoryItem(m) {
    const chips = ENTITY_FIELDS.filter((f) => m[f]).map((f) => chip(f, m[f]));
    const cats = (m.categories || []).map((c) => h("span", { class: "tag" }, c));
    const meta = m.metadata && Object.keys(m.metadata).length
      ? h("code", { class: "metadata" }, JSON.stringify(m.metadata)) : null;
    const times = [
      `created ${when(m.created_at)}`,
      `updated ${when(m.updated_at)}`,
      m.expiration_date ? `expires ${m.expiration_date}` : null,
      typeof m.score === "number" ? `score ${m.score.toFixed(3)}` : null,
    ].filter(Boolean).join(" · ");
    return h("li", { class: "memory", "data-id": m.id },
      h("p", { class: "text" }, m.memory),
      h("div", { class: "chips" }, chips, cats),
      meta,
      h("div", { class: "foot" },
        h("span", { class: "times" }, times),
        h("button", {
          type: "button", class: "timeline-btn", "aria-label": `timeline of "${m.memory}"`,
          onclick: () => openTimeline(m),
        }, "Timeline")));
  }
  async function loadList() {
    const { filters } = currentFilters();
    let results;
    if (state.query && state.mode === "semantic") {
      const body = { query: state.query, filters, top_k: SEARCH_TOP_K, threshold: 0 };
      if (state.asOf) body.as_of = state.asOf;
      const all = (await api("POST", "/v3/memories/search/", body)).results;
      state.count = all.length;
      results = all.slice((state.page - 1) * PAGE_SIZE, state.page * PAGE_SIZE);
    } else {
      const body = { filters };
      if (state.asOf) body.as_of = state.asOf;
      const page = await api("POST", `/v3/memories/?page=${state.page}&page_size=${PAGE_SIZE}`, body);
      state.count = page.count;
      results = page.results;
    }
    const list = $("memory-list");
    list.replaceChildren(...results.map(memoryItem));
    if (!results.length) list.append(h("li", { class: "empty" }, "No memories match."));
    const first = state.count ? (state.page - 1) * PAGE_SIZE + 1 : 0;
    const last = Math.min(state.page * PAGE_SIZE, state.count);
    $("list-count").textContent = `(${state.count})`;
    $("page-info").textContent = `${first}–${last} of ${state.count}`;
    $("prev-page").disabled = state.page <= 1;
    $("next-page").disabled = last >= state.count;
  }

  // -- charts (inline SVG) ---------------------------------------------------------------
  function barsChart(el, rows, label) {
    const top = rows.slice(0, 8);
    if (!top.length) {
      el.replaceChildren(h("p", { class: "empty" }, "nothing to count"));
      return;
    }
    const max = Math.max(...top.map((r) => r.count));
    const rowH = 22;
    const W = 300;
    const svg = s("svg", {
      viewBox: `0 0 ${W} ${top.length * rowH}`, role: "img",
      "aria-label": `${label}: ` + top.map((r) => `${r.key ?? "none"} ${r.count}`).join(", "),
    });
    top.forEach((r, i) => {
      const w = Math.max(2, Math.round((r.count / max) * 150));
      const g = s("g", {}, s("title", {}, `${r.key ?? "(none)"}: ${r.count}`));
      g.append(
        s("text", { x: 0, y: i * rowH + 15, class: "lbl" }, String(r.key ?? "(none)").slice(0, 18)),
        s("rect", { x: 120, y: i * rowH + 4, width: w, height: rowH - 8, rx: 3, class: "bar" }),
        s("text", { x: 126 + w, y: i * rowH + 15, class: "num" }, r.count),
      );
      svg.append(g);
    });
    el.replaceChildren(svg);
  }
  function daysChart(el, rows) {
    // every UTC day from the first to the last (at most the last 30), empty days as 0
    const byDay = new Map(rows.filter((r) => r.key).map((r) => [r.key, r.count]));
    const keys = [...byDay.keys()].sort();
    const days = [];
    if (keys.length) {
      const last = Date.parse(`${keys[keys.length - 1]}T00:00:00Z`);
      const first = Math.max(Date.parse(`${keys[0]}T00:00:00Z`), last - 29 * 86400000);
      for (let t = first; t <= last; t += 86400000) {
        const key = new Date(t).toISOString().slice(0, 10);
        days.push({ key, count: byDay.get(key) || 0 });
      }
    }
    if (!days.length) {
      el.replaceChildren(h("p", { class: "empty" }, "nothing to count"));
      return;
    }
    const W = 300;
    const H = 90;
    const max = Math.max(...days.map((d) => d.count));
    const bw = Math.min(24, W / days.length);
    const svg = s("svg", {
      viewBox: `0 0 ${W} ${H + 16}`, role: "img",
      "aria-label": "created per day: " + days.map((d) => `${d.key} ${d.count}`).join(", "),
    });
    days.forEach((d, i) => {
      const bh = d.count ? Math.max(2, Math.round((d.count / max) * H)) : 0;
      svg.append(s("g", {}, s("title", {}, `${d.key}: ${d.count}`),
        s("rect", { x: i * bw + 1, y: H - bh, width: bw - 2, height: bh, rx: 2, class: "bar" })));
    });
    svg.append(s("text", { x: 0, y: H + 13, class: "lbl" }, days[0].key),
      s("text", { x: W, y: H + 13, class: "lbl", "text-anchor": "end" }, days[days.length - 1].key));
    el.replaceChildren(svg);
  }
  function pushLag(projector) {
    if (!projector) return;
    state.lag.push(projector.lag);
    if (state.lag.length > LAG_SAMPLES) state.lag.shift();
    const W = 300;
    const H = 40;
    const max = Math.max(1, ...state.lag);
    const step = W / Math.max(1, LAG_SAMPLES - 1);
    const pts = state.lag.map((v, i) => `${(i * step).toFixed(1)},${(H - (v / max) * H + 1).toFixed(1)}`);
    const svg = s("svg", {
      viewBox: `0 0 ${W} ${H + 2}`, role: "img",
      "aria-label": `projector lag now ${projector.lag} events`,
    }, s("polyline", { points: pts.join(" "), class: "line" }));
    $("chart-lag").replaceChildren(
      h("p", { class: "big" }, `${projector.lag}`, h("span", { class: "unit" }, " events behind")),
      svg);
  }
  async function loadCharts() {
    const { filters } = currentFilters();
    const body = { filters, by: ["agent", "app", "day"] };
    if (state.asOf) body.as_of = state.asOf;
    const st = await api("POST", "/v1/stats/", body);
    daysChart($("chart-days"), st.groups.day || []);
    barsChart($("chart-agents"), st.groups.agent || [], "by agent");
    barsChart($("chart-apps"), st.groups.app || [], "by app");
  }
  function startLagPolling() {
    if (state.lagTimer) clearInterval(state.lagTimer);
    state.lagTimer = setInterval(async () => {
      if (!state.key || document.hidden) return;
      try {
        pushLag(await api("GET", "/v1/projector/"));
      } catch (_) { /* shown by the next load */ }
    }, LAG_POLL_MS);
  }

  // -- loading ---------------------------------------------------------------------------
  async function reloadAll({ pills = true } = {}) {
    const seq = ++state.loadSeq;
    renderFiltersJson();
    setStatus("Loading…");
    document.body.setAttribute("aria-busy", "true");
    try {
      if (pills) await loadPills();
      renderFiltersJson(); // the pills may have been rebuilt
      await Promise.all([loadList(), loadCharts()]);
      if (seq === state.loadSeq) setStatus(state.asOf ? `Showing the memories as of ${state.asOf}.` : "");
    } catch (e) {
      if (seq === state.loadSeq) setStatus(`Could not load: ${e.message}`, true);
    } finally {
      if (seq === state.loadSeq) document.body.setAttribute("aria-busy", "false");
    }
  }

  // -- timeline --------------------------------------------------------------------------
  const EVENT_LABELS = {
    MemoryAdded: "added", MemoryUpdated: "updated", MemoryDeleted: "deleted",
    MemoryExpired: "expired", SubjectErased: "erased", MemoryErased: "erased",
    FeedbackGiven: "feedback",
  };
  function timelineEntry(e) {
    const label = EVENT_LABELS[e.event_type] || e.event_type || e.event;
    const who = [e.actor && e.actor.key_id ? `key ${e.actor.key_id}` : null,
      e.actor && e.actor.source ? e.actor.source : null].filter(Boolean).join(" · ") || "—";
    const body = [];
    if (e.old_memory && e.new_memory && e.old_memory !== e.new_memory) {
      body.push(h("p", { class: "change" }, h("del", {}, e.old_memory), h("span", { "aria-hidden": "true" }, " → "),
        h("span", { class: "sr-only" }, " changed to "), h("ins", {}, e.new_memory)));
    } else if (e.new_memory || e.old_memory) {
      body.push(h("p", { class: "change" }, e.new_memory || e.old_memory));
    }
    if (e.old_metadata && e.metadata && JSON.stringify(e.old_metadata) !== JSON.stringify(e.metadata)) {
      body.push(h("p", { class: "meta-change" }, "metadata ", h("code", {}, JSON.stringify(e.old_metadata)),
        " → ", h("code", {}, JSON.stringify(e.metadata))));
    }
    const extra = e.event === "FEEDBACK"
      ? `feedback: ${e.feedback ?? "cleared"}${e.feedback_reason ? ` (${e.feedback_reason})` : ""}` : null;
    return h("li", { class: `ev ev-${label}` },
      h("div", { class: "ev-head" },
        h("span", { class: "ev-type" }, label),
        h("time", { datetime: e.created_at }, when(e.created_at)),
        e.position ? h("span", { class: "pos" }, `log ${e.position.partition}:${e.position.offset}`) : null),
      body,
      h("p", { class: "ev-who" }, `who: ${who}`),
      e.reason ? h("p", { class: "ev-why" }, `why: ${e.reason}`) : null,
      extra ? h("p", { class: "ev-why" }, extra) : null);
  }
  async function openTimeline(m) {
    const dlg = $("timeline-dialog");
    $("timeline-memory").textContent = `memory ${m.id}`;
    const list = $("timeline");
    list.replaceChildren(h("li", {}, "Loading…"));
    dlg.showModal();
    try {
      const entries = await api("GET", `/v1/memories/${encodeURIComponent(m.id)}/history/`);
      list.replaceChildren(...entries.map(timelineEntry));
    } catch (e) {
      list.replaceChildren(h("li", { class: "error" }, `Could not load the history: ${e.message}`));
    }
  }

  // -- clean up and export ---------------------------------------------------------------
  async function confirmDelete() {
    const { filters } = currentFilters();
    let st;
    try {
      st = await api("POST", "/v1/stats/", { filters, by: ["user", "agent", "app", "run"] });
    } catch (e) {
      setStatus(`Could not count what would be deleted: ${e.message}`, true);
      return;
    }
    if (!st.total) {
      setStatus("Nothing to delete: these filters select no memories.");
      return;
    }
    $("confirm-text").textContent =
      `Delete ${st.total} ${st.total === 1 ? "memory" : "memories"} selected by the filters shown? Their scopes:`;
    const scopes = [];
    for (const kind of ["user", "agent", "app", "run"]) {
      for (const c of st.groups[kind] || []) {
        scopes.push(h("li", {}, `${kind}_id ${c.key === null ? "none (null)" : c.key}: ${c.count}`));
      }
    }
    $("confirm-scopes").replaceChildren(...scopes);
    $("confirm-delete").textContent = `Delete ${st.total} ${st.total === 1 ? "memory" : "memories"}`;
    const dlg = $("confirm-dialog");
    dlg.returnValue = "";
    dlg.showModal();
    const answer = await new Promise((resolve) => dlg.addEventListener("close", () => resolve(dlg.returnValue), { once: true }));
    if (answer !== "delete") {
      setStatus("Nothing deleted.");
      return;
    }
    try {
      const q = new URLSearchParams({ filters: JSON.stringify(filters) });
      const out = await api("DELETE", `/v1/memories/?${q}`);
      state.page = 1;
      await reloadAll();
      setStatus(`Deleted ${out.count} ${out.count === 1 ? "memory" : "memories"}.`);
    } catch (e) {
      setStatus(`Delete failed (nothing was deleted unless the server said so): ${e.message}`, true);
    }
  }
  async function exportAs(format) {
    const { filters } = currentFilters();
    const body = { filters, format };
    if (state.asOf) body.as_of = state.asOf;
    setStatus(`Exporting ${format.toUpperCase()}…`);
    try {
      const r = await api("POST", "/v1/exports/download/", body, { raw: true });
      const blob = await r.blob();
      const url = URL.createObjectURL(blob);
      const stamp = new Date().toISOString().slice(0, 19).replace(/[:T]/g, "-");
      const a = h("a", { href: url, download: `memories-${$("project-id").textContent}-${stamp}.${format}` });
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10000);
      setStatus(`Exported ${r.headers.get("X-Memstream-Count") ?? "?"} memories as ${format.toUpperCase()}.`);
    } catch (e) {
      setStatus(`Export failed: ${e.message}`, true);
    }
  }

  // -- wiring ----------------------------------------------------------------------------
  function onFilterChange() {
    state.page = 1;
    reloadAll({ pills: false });
  }
  document.addEventListener("DOMContentLoaded", () => {
    $("signin-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const key = $("api-key").value.trim();
      if (!key) {
        showSignIn("Enter an API key.");
        return;
      }
      signIn(key);
    });
    $("sign-out").addEventListener("click", () => signOut(""));
    for (const id of ["pill-user", "pill-agent", "pill-app", "pill-run", "pill-category",
      "date-field", "date-from", "date-to"]) {
      $(id).addEventListener("change", onFilterChange);
    }
    for (const id of ["meta-key", "meta-value"]) {
      $(id).addEventListener("change", onFilterChange);
      $(id).addEventListener("keydown", (ev) => { if (ev.key === "Enter") onFilterChange(); });
    }
    $("reset-filters").addEventListener("click", () => {
      for (const id of ["pill-user", "pill-agent", "pill-app", "pill-run", "pill-category"]) $(id).value = UNSET;
      for (const id of ["date-from", "date-to", "meta-key", "meta-value", "search-q"]) $(id).value = "";
      state.query = "";
      onFilterChange();
    });
    $("search-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      state.query = $("search-q").value.trim();
      state.mode = $("search-mode").value;
      onFilterChange();
    });
    $("search-mode").addEventListener("change", () => {
      state.mode = $("search-mode").value;
      if (state.query) onFilterChange();
    });
    $("asof-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      state.asOf = $("as-of").value.trim();
      state.page = 1;
      reloadAll();
    });
    $("as-of-now").addEventListener("click", () => {
      $("as-of").value = "";
      state.asOf = "";
      state.page = 1;
      reloadAll();
    });
    $("prev-page").addEventListener("click", () => { state.page = Math.max(1, state.page - 1); reloadAll({ pills: false }); });
    $("next-page").addEventListener("click", () => { state.page += 1; reloadAll({ pills: false }); });
    $("delete-filter").addEventListener("click", confirmDelete);
    for (const btn of document.querySelectorAll("[data-export]")) {
      btn.addEventListener("click", () => exportAs(btn.dataset.export));
    }
    $("copy-json").addEventListener("click", async () => {
      const text = $("filters-json").textContent;
      try {
        await navigator.clipboard.writeText(text);
        $("copy-status").textContent = "copied";
      } catch (_) {
        const range = document.createRange();
        range.selectNodeContents($("filters-json"));
        const sel = getSelection();
        sel.removeAllRanges();
        sel.addRange(range);
        $("copy-status").textContent = "selected: press Ctrl+C";
      }
      setTimeout(() => { $("copy-status").textContent = ""; }, 3000);
    });
    const saved = sessionStorage.getItem(KEY_STORE);
    if (saved) {
      // this tab signed in before: hide the form until the key is checked again
      $("signin").hidden = true;
      signIn(saved);
    } else {
      showSignIn("");
    }
  });
})();
