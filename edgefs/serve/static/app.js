// edgefs serve: the pages' script (plain JS, no build step, no external code).
"use strict";

const API = "/api/v1";
const $ = (sel, root = document) => root.querySelector(sel);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (v !== false && v !== null && v !== undefined) node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) if (c !== null && c !== undefined) node.append(c);
  return node;
}

// The result of the user's last action: it stays until the user acts again (the polling that
// refreshes the page never clears it). Connection trouble is shown beside the navigation instead.
function showError(text) { $("#error").textContent = text || ""; }

let signedOut = false;  // once the device asks for its token, nothing polls until the user signs in

function showLogin(reason) {
  signedOut = true;
  $("#login").hidden = false;
  $("#conn").textContent = "not signed in";
  if (reason) $("#login-error").textContent = reason;
}

// Every API call: same-origin cookie (or none), JSON in and out; a 401 shows the sign-in form.
async function api(path, { method = "GET", body, raw } = {}) {
  const opts = { method, headers: {} };
  if (raw !== undefined) { opts.body = raw; opts.headers["Content-Type"] = "application/octet-stream"; }
  else if (body !== undefined) { opts.body = JSON.stringify(body); opts.headers["Content-Type"] = "application/json"; }
  const res = await fetch(API + path, opts);
  const doc = (res.headers.get("content-type") || "").includes("json") ? await res.json() : null;
  if (res.status === 401 && path !== "/login") showLogin();
  if (!res.ok) {
    const err = new Error((doc && doc.error) || `${res.status} ${res.statusText}`);
    err.status = res.status;
    throw err;
  }
  $("#conn").textContent = "connected";
  return doc;
}

function fmtDate(t) { return new Date(t * 1000).toLocaleString(); }
function pct(x) { return (100 * x).toFixed(0) + "%"; }

function setupLogin() {
  $("#login").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    try {
      await api("/login", { method: "POST", body: { token: $("#login-token").value } });
      location.reload();
    } catch (e) { $("#login-error").textContent = e.message; }
  });
}

// Poll a function every `ms`, never two at once, and not while signed out; a failure is shown
// beside the navigation (the device may be restarting), polling goes on.
function poll(fn, ms) {
  let busy = false;
  const tick = async () => {
    if (busy || signedOut) return;
    busy = true;
    try { await fn(); } catch (e) { if (e.status !== 401) $("#conn").textContent = `offline? (${e.message})`; }
    busy = false;
  };
  tick();
  return setInterval(tick, ms);
}

// What a rendered (synthetic) camera shows: the truth to compare the label with, and what to enroll.
function sceneLine(scene) {
  if (!scene) return null;
  const held = scene.held ? ` · holding "${scene.held}" up for an enrollment` : "";
  return el("p", { class: "scene muted", text: `synthetic camera shows "${scene.showing ?? "nothing"}" ` +
    `(each object ${scene.hold_s} s, next in ${scene.next_in_s.toFixed(1)} s${held})` });
}

function resultLine(r) {
  if (!r) return el("span", { class: "muted", text: "no frame yet" });
  return el("span", {},
    el("b", { class: r.label === "unknown" ? "label unknown" : "label", text: r.label }),
    el("span", { class: "muted", text: ` ${r.confidence.toFixed(2)} · best cosine ${r.best_sim.toFixed(3)}` }));
}

// ---- Live ---------------------------------------------------------------------------------------
function initLive() {
  const cards = [];
  const chart = $("#chart");
  poll(async () => {
    const st = await api("/status");
    if (!cards.length) {
      for (const s of st.sources) {
        const card = el("article", { class: "card" },
          el("img", { class: "view", src: `${API}/stream/${s.index}`, alt: `live view of ${s.name}` }),
          el("h3", { class: "src", text: s.name }),
          el("div", { class: "result" }), el("ol", { class: "top" }), el("p", { class: "meta muted" }));
        card.dataset.source = s.index;
        $("#sources").append(card);
        cards.push(card);
      }
    }
    st.sources.forEach((s, i) => {
      const card = cards[i];
      $(".result", card).replaceChildren(resultLine(s.result), sceneLine(s.scene));
      $(".top", card).replaceChildren(...(s.result ? s.result.top : []).map(([n, p]) => el("li", { text: `${n} ${p.toFixed(2)}` })));
      $(".meta", card).textContent = `frame ${s.result ? s.result.frame : "-"} · ${s.fps.toFixed(1)} FPS · ` +
        `${s.dropped} dropped · ${s.reconnects} reconnects · ${s.status}`;
      card.dataset.frame = s.result ? s.result.frame : -1;
    });
    const rows = Object.entries(st.stages_ms || {}).filter(([, q]) => q && q.p50 !== undefined);
    $("#stages tbody").replaceChildren(...rows.map(([name, q]) => el("tr", {},
      el("td", { text: name === "total" ? "capture to result" : name }), el("td", { text: q.p50.toFixed(2) }),
      el("td", { text: q.p90.toFixed(2) }), el("td", { text: q.p99.toFixed(2) }))));
  }, 500);
  poll(async () => drawChart(chart, (await api("/history")).points), 1000);
}

function drawChart(canvas, points) {
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height, pad = 28;
  ctx.clearRect(0, 0, w, h);
  ctx.strokeStyle = "#ccc";
  ctx.strokeRect(pad, 4, w - pad - 4, h - pad);
  if (points.length < 2) return;
  const fps = points.map((p) => p.fps.reduce((a, b) => a + b, 0));
  const p50 = points.map((p) => (p.stages.total ? p.stages.total.p50 : 0));
  const p99 = points.map((p) => (p.stages.total ? p.stages.total.p99 : 0));
  const series = [[fps, "#1a7f37"], [p50, "#0969da"], [p99, "#cf222e"]];
  const top = Math.max(1, ...fps, ...p99) * 1.1;
  const x = (i) => pad + (i / (points.length - 1)) * (w - pad - 4);
  const y = (v) => 4 + (h - pad) * (1 - v / top);
  for (const [vals, color] of series) {
    ctx.strokeStyle = color;
    ctx.beginPath();
    vals.forEach((v, i) => (i ? ctx.lineTo(x(i), y(v)) : ctx.moveTo(x(i), y(v))));
    ctx.stroke();
  }
  ctx.fillStyle = "#555";
  ctx.fillText(top.toFixed(0), 2, 12);
  ctx.fillText("0", 2, h - pad + 4);
  ctx.fillText(`last ${points.length} s`, w - 70, h - 8);
}

// ---- Enroll -------------------------------------------------------------------------------------
async function initEnroll() {
  const [st, defaults] = await Promise.all([api("/status"), api("/enroll/defaults")]);
  $("#shots").value = defaults.shots;
  $("#interval").value = defaults.interval_s;
  $("#delay").value = defaults.delay_s;
  $("#views-note").textContent = `each shot is enrolled as the mean of ${defaults.shot_views} view` +
    `${defaults.shot_views === 1 ? "" : "s"} of it (Settings)`;
  const select = $("#source");
  st.sources.forEach((s) => select.append(el("option", { value: s.index, text: `${s.index}: ${s.name}` })));
  const view = $("#view");
  const setView = () => { view.src = `${API}/stream/${select.value}`; };
  select.addEventListener("change", setView);
  setView();
  const known = async () => {
    const cls = await api("/classes");
    $("#known").replaceChildren(...cls.classes.map((c) => el("option", { value: c.name })));
  };
  known();
  $("#enroll-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    showError("");
    try {
      await api("/enroll", { method: "POST", body: {
        label: $("#label").value.trim(), shots: Number($("#shots").value), source: Number(select.value),
        append: $("#append").checked, delay_s: Number($("#delay").value),
        interval_s: Number($("#interval").value) } });
    } catch (e) { showError(e.message); }
  });
  $("#cancel").addEventListener("click", async () => {
    showError("");
    try { await api("/enroll/cancel", { method: "POST", body: {} }); } catch (e) { showError(e.message); }
  });
  let lastPhase = null;
  poll(async () => {
    const [doc, now] = await Promise.all([api("/enroll"), api("/status")]);
    const src = now.sources[Number(select.value)];
    const r = src.result;
    $("#now-label").textContent = r ? r.label : "-";
    $("#now-conf").textContent = r ? `${r.confidence.toFixed(2)}` : "";
    $("#scene").replaceChildren(...[sceneLine(src.scene)].filter(Boolean));
    const e = doc.enrollment;
    $("#start").disabled = doc.active;
    $("#cancel").hidden = !doc.active;
    if (!e) return;
    const phases = {
      countdown: `Get ready: first shot in ${e.countdown_s.toFixed(1)} s`,
      collecting: `Taking shots of "${e.label}": ${e.taken} / ${e.shots}` +
        (e.taken ? ` · move or turn it a little: next shot in ${e.next_shot_s.toFixed(1)} s` : ""),
      committing: `Committing "${e.label}"...`,
      done: `"${e.label}" ${e.append ? "updated" : "enrolled"}: live now`,
      failed: `"${e.label}" not enrolled`,
    };
    const phase = $("#phase");
    phase.textContent = phases[e.phase] || e.phase;
    phase.dataset.phase = e.phase;
    $("#message").textContent = e.message;
    $("#shots-grid").replaceChildren(...e.records.map((s) => el("figure", {
      class: s.accepted === true ? "shot ok" : s.accepted === false ? "shot bad" : "shot pending" },
      el("img", { src: s.thumbnail, alt: `shot ${s.index}` }),
      el("figcaption", { text: s.accepted === true ? "accepted" : s.accepted === false ? `rejected: ${s.reason}` : "taken, judged at commit" }))));
    if (e.phase !== lastPhase && (e.phase === "done")) known();
    lastPhase = e.phase;
  }, 300);
}

// ---- Classes ------------------------------------------------------------------------------------
async function initClasses() {
  const list = $("#class-list");
  const render = async () => {
    const doc = await api("/classes");
    $("#count").textContent = `${doc.classes.length} classes, ${doc.classes.reduce((a, c) => a + c.shots, 0)} shots`;
    list.replaceChildren(...doc.classes.map((c) => classCard(c, render)));
  };
  $("#import-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const file = $("#pack").files[0];
    if (!file) return;
    try {
      const res = await api(`/classes/import?on_conflict=${encodeURIComponent($("#on-conflict").value)}`,
        { method: "POST", raw: file });
      $("#import-result").textContent = `imported: ${res.summary}`;
      showError("");
      await render();
    } catch (e) { $("#import-result").textContent = ""; showError(`import refused: ${e.message}`); }
  });
  await render().catch((e) => showError(e.message));
}

function classCard(c, refresh) {
  const act = (fn) => async () => { try { await fn(); showError(""); await refresh(); } catch (e) { showError(e.message); } };
  const nameInput = el("input", { class: "new-name", value: c.name, maxlength: 128, "aria-label": `new name for ${c.name}` });
  const thumbs = c.samples.map((s) => el("figure", { class: "thumb" },
    s.thumbnail ? el("img", { src: s.thumbnail, alt: `${c.name} shot ${s.id}`, title: `${s.source} · ${fmtDate(s.created)}` })
                : el("span", { class: "muted", text: "no image" }),
    c.shots > 1 ? el("button", { class: "remove-shot", type: "button", title: "remove this shot",
      "aria-label": `remove shot ${s.id} of ${c.name}`, text: "×",
      onclick: act(() => api("/classes/remove-shots", { method: "POST", body: { name: c.name, ids: [s.id] } })) }) : null));
  const card = el("article", { class: "panel class" },
    el("h3", { class: "class-name", text: c.name }),
    el("p", { class: "muted", text: `${c.shots} shots · enrolled ${fmtDate(c.created)} · updated ${fmtDate(c.updated)}` }),
    el("div", { class: "thumbs" }, ...thumbs),
    el("div", { class: "row" }, nameInput,
      el("button", { class: "rename", type: "button", text: "Rename",
        onclick: act(() => api("/classes/rename", { method: "POST", body: { name: c.name, new_name: nameInput.value.trim() } })) }),
      el("a", { class: "button export", href: `${API}/classes/export?name=${encodeURIComponent(c.name)}`, download: true, text: "Export pack" }),
      el("button", { class: "remove danger", type: "button", text: "Remove",
        onclick: act(async () => { if (confirm(`Remove "${c.name}" and its ${c.shots} shots?`)) await api("/classes/remove", { method: "POST", body: { name: c.name } }); }) })));
  card.dataset.name = c.name;
  return card;
}

// ---- Settings -----------------------------------------------------------------------------------
async function initSettings() {
  const slider = $("#threshold");
  const show = (s) => {
    for (const r of document.querySelectorAll("input[name=mode]")) r.checked = r.value === s.threshold_mode;
    slider.disabled = s.threshold_mode !== "manual";
    if (s.threshold !== null) slider.value = s.threshold;
    $("#threshold-value").textContent = s.threshold_mode === "manual" ? Number(slider.value).toFixed(2) : "";
    $("#in-force").textContent = s.threshold !== null ? `cosine < ${s.threshold.toFixed(3)} is unknown` +
      (s.threshold_mode === "auto" ? " (calibrated)" : "") : s.threshold_mode === "auto"
      ? "not calibrated yet (it needs more enrolled shots): nothing is called unknown" : "off (never unknown)";
    $("#smooth").max = s.max_smooth;
    $("#smooth").value = s.smooth;
    $("#roi").value = s.roi;
    $("#shot-views").replaceChildren(...s.shot_view_choices.map((n) => el("option", { value: String(n), text: String(n) })));
    $("#shot-views").value = String(s.shot_views);
  };
  const put = async (body) => {
    showError("");
    try {
      const doc = await api("/settings", { method: "PUT", body });
      show(doc);
      $("#saved").textContent = "saved with the store" + (doc.roi_note ? `. ${doc.roi_note}` : "");
    }
    catch (e) { showError(e.message); }
  };
  show(await api("/settings"));
  for (const r of document.querySelectorAll("input[name=mode]")) {
    r.addEventListener("change", () => put({ threshold: r.value === "manual" ? Number(slider.value) : r.value }));
  }
  slider.addEventListener("input", () => { $("#threshold-value").textContent = Number(slider.value).toFixed(2); });
  slider.addEventListener("change", () => put({ threshold: Number(slider.value) }));
  $("#save-smooth").addEventListener("click", () => put({ smooth: Number($("#smooth").value) }));
  $("#save-roi").addEventListener("click", () => put({ roi: $("#roi").value }));
  $("#save-views").addEventListener("click", () => put({ shot_views: Number($("#shot-views").value) }));
  poll(async () => {
    const st = await api("/status");
    $("#live-results").replaceChildren(...st.sources.map((s) => el("p", {}, el("span", { class: "muted src-name", text: `${s.name}: ` }), resultLine(s.result))));
  }, 500);
}

document.addEventListener("DOMContentLoaded", async () => {
  setupLogin();
  const page = document.body.dataset.page;
  for (const a of document.querySelectorAll("nav a")) if (a.dataset.nav === page) a.classList.add("here");
  if (new URLSearchParams(location.search).has("token")) {
    // The device answers a link with the right token by storing it and redirecting: one still here is wrong.
    history.replaceState(null, "", location.pathname);
    showLogin("The access token in that link is wrong (an old link, or the token was rotated): type the one " +
      "edgefs serve printed, or read it from STORE.token on the device.");
    return;
  }
  try { await api("/status"); } catch (e) { if (signedOut) return; }  // signed out: the form, no polling
  const init = { live: initLive, enroll: initEnroll, classes: initClasses, settings: initSettings }[page];
  Promise.resolve(init()).catch((e) => { if (!signedOut) showError(e.message); });
});
