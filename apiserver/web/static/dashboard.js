// Gateway operations dashboard. Plain JavaScript, no build step.
//
// It polls GET v1/stats every 2 s and keeps the history of the queue
// depths here, in memory, for the charts; it lists GET v1/dead and
// replays with POST v1/dead/{id}/replay; it looks up one command with
// GET v1/commands/{id}?client= and one device (how it connects, its
// ordered lanes) with GET v1/devices/{d} (#device= in the URL). The operator token comes from the sign-in
// form or from the URL fragment (#token=...), lives in sessionStorage and
// goes out only as "Authorization: Bearer". Every value from the server
// is written with textContent, never as HTML.
"use strict";

(function () {
  const POLL_MS = 2000;
  const DEAD_MS = 10000;
  const KEEP = 1800; // samples of history: one hour at 2 s
  const DEAD_PAGE = 20;
  const TOKEN_KEY = "gw.operatorToken";

  // The queues of a namespace, by suffix, with their chart colours.
  // Device answers do not cross RabbitMQ (the push server completes
  // them), so there is no results queue.
  const QUEUES = [
    { suffix: "commands", color: "--c-commands" },
    { suffix: "commands.dead", color: "--c-commands-dead" },
  ];
  const FAILURES = ["failed", "timeout", "expired", "rejected", "dead"];
  const OTHERS = ["queued", "sent", "delivered", "succeeded", "cancelled"];

  const $ = (id) => document.getElementById(id);
  const nf = new Intl.NumberFormat();
  const nf1 = new Intl.NumberFormat(undefined, { maximumFractionDigits: 1 });

  let token = null;
  let ns = null;
  let pollTimer = null;
  let deadTimer = null;
  let groupsTimer = null;
  let deadCursor = "";
  let deadPaged = false; // the operator loaded more pages: no auto refresh
  let depthChart = null;
  let rateChart = null;
  const hist = { t: [], ready: QUEUES.map(() => []), publish: [], deliver: [] };

  // ---- helpers -------------------------------------------------------

  function el(tag, props, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (k === "class") e.className = v;
      else if (k === "text") e.textContent = v;
      else if (k === "style") Object.assign(e.style, v); // CSSOM: allowed by the CSP, unlike style=""
      else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v);
    }
    for (const c of children) {
      if (c == null) continue;
      e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return e;
  }

  function cssVar(name) {
    return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  }

  function withAlpha(hex, a) {
    const m = /^#([0-9a-f]{6})$/i.exec(hex);
    if (!m) return hex;
    const n = parseInt(m[1], 16);
    return `rgba(${(n >> 16) & 255}, ${(n >> 8) & 255}, ${n & 255}, ${a})`;
  }

  function num(v) {
    return v == null ? "—" : nf.format(v);
  }

  function rate(v) {
    return v == null ? "—" : nf1.format(v);
  }

  function age(s) {
    if (s == null) return "—";
    if (s < 90) return `${Math.round(s)} s`;
    if (s < 5400) return `${Math.round(s / 60)} min`;
    if (s < 172800) return `${nf1.format(s / 3600)} h`;
    return `${nf1.format(s / 86400)} d`;
  }

  function clock(iso) {
    if (!iso) return "";
    const d = new Date(iso);
    return d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  }

  function dateTime(iso) {
    if (!iso) return "";
    const d = new Date(iso);
    return d.toLocaleString([], { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", second: "2-digit" });
  }

  function plural(n, one, many) {
    return n === 1 ? one : many;
  }

  // latest is the last non-null value of a chart series.
  function latest(arr) {
    for (let i = arr.length - 1; i >= 0; i--) if (arr[i] != null) return arr[i];
    return null;
  }

  function setText(id, text) {
    const e = $(id);
    if (e) e.textContent = text;
  }

  // ---- the API ---------------------------------------------------------

  class APIError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  async function api(path, opts) {
    const res = await fetch(path, Object.assign({ cache: "no-store" }, opts, {
      headers: { Authorization: "Bearer " + token, Accept: "application/json" },
    }));
    let body = null;
    try {
      body = await res.json();
    } catch (_) {
      body = null;
    }
    if (!res.ok) {
      const msg = (body && body.error && body.error.message) || `${res.status} ${res.statusText}`;
      if (res.status === 401) signOut("The token was refused: " + msg);
      throw new APIError(res.status, msg);
    }
    return body;
  }

  // ---- the token -------------------------------------------------------

  // tokenFromFragment moves #token=... into sessionStorage and removes it
  // from the address bar and the history (the rest of the fragment stays).
  function tokenFromFragment() {
    const p = new URLSearchParams(location.hash.slice(1));
    const t = p.get("token");
    if (!t) return;
    sessionStorage.setItem(TOKEN_KEY, t.trim());
    p.delete("token");
    const rest = p.toString();
    history.replaceState(null, "", location.pathname + (rest ? "#" + rest : ""));
  }

  // lookupFromFragment looks up #client=...&id=... (a link to a command).
  function lookupFromFragment() {
    const p = new URLSearchParams(location.hash.slice(1));
    const client = p.get("client");
    const id = p.get("id");
    const device = p.get("device");
    if (device) {
      $("device-id").value = device;
      lookupDevice(device);
    }
    if (!client || !id) return;
    $("lookup-client").value = client;
    $("lookup-id").value = id;
    lookup(client, id);
  }

  // claims decodes the token's payload for display only; the server checks it.
  function claims(t) {
    try {
      const p = t.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
      return JSON.parse(atob(p + "===".slice((p.length + 3) % 4)));
    } catch (_) {
      return {};
    }
  }

  function signOut(message) {
    sessionStorage.removeItem(TOKEN_KEY);
    token = null;
    clearTimeout(pollTimer);
    clearTimeout(deadTimer);
    clearTimeout(groupsTimer);
    $("dashboard").hidden = true;
    $("signin").hidden = false;
    $("sign-out").hidden = true;
    setLive("", "not signed in");
    const err = $("signin-error");
    err.hidden = !message;
    err.textContent = message || "";
    $("token-input").focus();
  }

  function signIn(t) {
    token = t;
    const c = claims(t);
    $("signin").hidden = true;
    $("dashboard").hidden = false;
    $("sign-out").hidden = false;
    $("sign-out").title = c.sub ? `signed in as ${c.sub} (${c.role || "?"})` : "";
    makeCharts();
    poll();
    loadDead(true);
    loadGroups();
    lookupFromFragment();
  }

  function setLive(kind, text) {
    $("live-dot").className = "dot " + kind;
    $("live-text").textContent = text;
  }

  // ---- polling /v1/stats -------------------------------------------------

  async function poll() {
    clearTimeout(pollTimer);
    if (!token) return;
    try {
      const s = await api("v1/stats");
      render(s);
      setLive("ok", "live · updated " + clock(s.at));
    } catch (e) {
      if (!token) return;
      setLive("bad", "cannot reach the API: " + e.message + " · retrying");
      record(Date.now() / 1000, null);
    }
    pollTimer = setTimeout(poll, POLL_MS);
  }

  function queueOf(s, suffix) {
    return (s.queues || {})[s.namespace + "." + suffix] || {};
  }

  function render(s) {
    ns = s.namespace;
    setText("namespace", ns);
    const cmd = queueOf(s, "commands");
    setText("commands-ready", num(cmd.ready));
    setText("commands-consumers", num(cmd.consumers));
    setText("commands-unacked", num(cmd.unacked));
    setText("commands-queues", cmd.queues ? num(cmd.queues.length) + plural(cmd.queues.length, " queue", " queues") : "—");
    const dq = queueOf(s, "commands.dead").ready;
    setText("dead-count", num(s.dead));
    setText("dead-queued", dq == null ? "—" : num(dq));
    $("tile-dead").classList.toggle("alert", (s.dead || 0) > 0);
    setText("mailbox-entries", num(s.mailboxes && s.mailboxes.entries));
    const boxes = s.mailboxes && s.mailboxes.mailboxes;
    setText("mailbox-count", num(boxes) + plural(boxes, " mailbox", " mailboxes"));
    setText("timers", num(s.timers));
    const push = s.push_servers || [];
    const known = push.filter((p) => p.sessions != null);
    setText("sessions-total", known.length || !push.length ? num(known.reduce((a, p) => a + p.sessions, 0)) : "—");
    setText("push-count", num(push.length) + plural(push.length, " push server", " push servers"));

    renderBanner(s);
    renderQueues(s);
    renderOutcomes(s.statuses || {});
    renderPush(push);
    record(Date.now() / 1000, s);
  }

  function renderBanner(s) {
    const problems = [];
    const errs = s.errors || {};
    if (errs.rabbitmq) problems.push("RabbitMQ: " + errs.rabbitmq);
    if (errs.redis) problems.push("Redis: " + errs.redis);
    const mgmt = s.management || {};
    const b = $("banner");
    if (!mgmt.available) {
      problems.push("Management API unavailable (" + (mgmt.error || "no answer") + "): unacked, rates and ages are not shown.");
    }
    b.hidden = problems.length === 0;
    b.className = "banner" + (errs.rabbitmq || errs.redis ? " bad" : "");
    b.replaceChildren(...problems.flatMap((p, i) => (i ? [el("br"), p] : [p])));
    setText("mgmt-note", mgmt.available ? "management API: sampled every 5 s" : "management API unavailable");
  }

  // renderQueues lists the queues. The commands row is the sum of the
  // GW_QUEUES command queues ({ns}.commands.{q}), each in a row of its own
  // below it (ids q-commands.{q}-ready and so on).
  function renderQueues(s) {
    const row = (id, name, v, swatch, sub) => {
      const cell = (field, text, isNull) =>
        el("td", { class: "num" + (isNull ? " null" : ""), id: `q-${id}-${field}` }, text);
      return el("tr", sub ? { class: "sub" } : {},
        el("td", {}, el("span", { class: "qname" },
          swatch ? el("span", { class: "swatch", style: { background: cssVar(swatch) } }) : null,
          el("span", { class: "mono" }, name))),
        cell("ready", num(v.ready), v.ready == null),
        cell("consumers", num(v.consumers), v.consumers == null),
        cell("unacked", num(v.unacked), v.unacked == null),
        cell("publish", rate(v.publish_rate), v.publish_rate == null),
        cell("deliver", rate(v.deliver_rate), v.deliver_rate == null),
        cell("oldest", age(v.oldest_age_s), v.oldest_age_s == null));
    };
    const rows = QUEUES.flatMap((q) => {
      const name = s.namespace + "." + q.suffix;
      const v = (s.queues || {})[name] || {};
      return [row(q.suffix, name, v, q.color, false)].concat(
        (v.queues || []).map((c) => row(`${q.suffix}.${c.index}`, c.name, c, null, true)));
    });
    $("queues").tBodies[0].replaceChildren(...rows);
  }

  function renderOutcomes(st) {
    const counts = st.counts || {};
    const events = st.events || {};
    setText("window", st.window_minutes || 15);
    $("failures").replaceChildren(...FAILURES.map((k) =>
      el("div", { class: "failure" + ((counts[k] || 0) > 0 ? " hot" : ""), id: "outcome-" + k },
        el("span", { class: "n" }, num(counts[k] || 0)),
        el("span", { class: "k" }, k))));
    const parts = OTHERS.map((k) => el("span", {}, k + " ", el("b", {}, num(counts[k] || 0))));
    for (const [k, v] of Object.entries(events)) {
      parts.push(el("span", {}, k.replace("_", " ") + " ", el("b", {}, num(v))));
    }
    $("statuses").replaceChildren(...parts);
  }

  function renderPush(push) {
    const most = Math.max(1, ...push.map((p) => p.sessions || 0));
    $("push").tBodies[0].replaceChildren(...push.map((p) =>
      el("tr", {},
        el("td", { class: "mono" }, p.node),
        el("td", { class: "mono" }, p.mqtt_url),
        el("td", { class: "num" }, num(p.sessions)),
        el("td", {}, el("div", { class: "bar" },
          el("span", { style: { width: `${Math.round((100 * (p.sessions || 0)) / most)}%` } }))))));
    $("push-empty").hidden = push.length > 0;
    $("push").hidden = push.length === 0;
  }

  // ---- history and charts ------------------------------------------------

  // record appends one sample (s null: the poll failed, a gap).
  function record(t, s) {
    hist.t.push(t);
    QUEUES.forEach((q, i) => {
      const v = s ? queueOf(s, q.suffix).ready : null;
      hist.ready[i].push(v == null ? null : v);
    });
    const cmd = s ? queueOf(s, "commands") : {};
    hist.publish.push(cmd.publish_rate == null ? null : cmd.publish_rate);
    hist.deliver.push(cmd.deliver_rate == null ? null : cmd.deliver_rate);
    if (hist.t.length > KEEP) {
      hist.t.shift();
      hist.ready.forEach((a) => a.shift());
      hist.publish.shift();
      hist.deliver.shift();
    }
    if (depthChart) depthChart.setData([hist.t, ...hist.ready]);
    if (rateChart) rateChart.setData([hist.t, hist.publish, hist.deliver]);
    for (const c of [depthChart, rateChart]) {
      // Refresh the legend's latest values unless the cursor is reading one.
      if (c && !(c.cursor.left >= 0)) c.setLegend({ idx: null });
    }
  }

  function chart(target, series, height, decimals) {
    const box = $(target);
    if (typeof uPlot === "undefined") {
      box.textContent = "The chart library did not load.";
      return null;
    }
    const axis = {
      stroke: cssVar("--muted"),
      grid: { stroke: cssVar("--grid"), width: 1 },
      ticks: { stroke: cssVar("--grid"), width: 1 },
      font: "11px system-ui, sans-serif",
    };
    const fmt = decimals ? nf1 : nf;
    const opts = {
      width: Math.max(200, box.clientWidth),
      height: height,
      cursor: { drag: { x: false, y: false }, points: { size: 6 } },
      legend: { live: true },
      scales: {
        x: { time: true },
        y: { range: (u, lo, hi) => [0, Math.max(decimals ? 1 : 4, (hi || 0) * 1.15)] },
      },
      axes: [
        Object.assign({}, axis),
        Object.assign({}, axis, { size: 56, values: (u, vals) => vals.map((v) => fmt.format(v)) }),
      ],
      // Away from the cursor the legend shows the latest values.
      series: [{
        value: (u, v, si, idx) => {
          const t = idx == null ? latest(u.data[0]) : v;
          return t == null ? "—" : clock(new Date(t * 1000).toISOString());
        },
      }].concat(series.map((s) => {
        const c = cssVar(s.color);
        return {
          label: s.label,
          stroke: c,
          width: 2,
          fill: s.fill ? withAlpha(c, 0.08) : undefined,
          points: { show: false },
          value: (u, v, si, idx) => {
            const x = idx == null ? latest(u.data[si]) : v;
            return x == null ? "—" : fmt.format(x);
          },
        };
      })),
    };
    const data = [[]].concat(series.map(() => []));
    box.replaceChildren();
    // eslint-disable-next-line no-undef
    return new uPlot(opts, data, box);
  }

  function makeCharts() {
    if (depthChart) return;
    const label = (q) => q.suffix;
    depthChart = chart("depth-chart",
      QUEUES.map((q, i) => ({ label: label(q), color: q.color, fill: i === 0 })), 260, false);
    rateChart = chart("rate-chart", [
      { label: "publish", color: "--c-commands", fill: true },
      { label: "deliver", color: "--c-deliver" },
    ], 260, true);
    window.addEventListener("resize", resize);
  }

  function resize() {
    for (const [c, id] of [[depthChart, "depth-chart"], [rateChart, "rate-chart"]]) {
      if (c) c.setSize({ width: Math.max(200, $(id).clientWidth), height: 260 });
    }
  }

  // ---- group commands ----------------------------------------------------

  async function loadGroups() {
    clearTimeout(groupsTimer);
    if (!token) return;
    try {
      const d = await api("v1/group-commands?limit=20");
      const gs = d.groups || [];
      $("groups").tBodies[0].replaceChildren(...gs.map(groupRow));
      $("groups-empty").hidden = gs.length > 0;
      $("groups").hidden = gs.length === 0;
    } catch (e) {
      if (!token) return;
      $("groups").hidden = true;
      $("groups-empty").hidden = false;
      $("groups-empty").textContent = "Cannot list group commands: " + e.message;
    }
    groupsTimer = setTimeout(loadGroups, POLL_MS);
  }

  // groupRow is one group command: its progress bar has a segment per
  // final status (succeeded, failures, cancelled) over its children.
  function groupRow(g) {
    const counts = g.counts || {};
    const total = Math.max(1, g.total || 0);
    const seg = (n, cls) => n > 0
      ? el("span", { class: "seg " + cls, style: { width: `${(100 * n) / total}%` } }) : null;
    const failed = Object.entries(counts)
      .filter(([k]) => k !== "succeeded" && k !== "cancelled")
      .reduce((a, [, n]) => a + n, 0);
    const text = Object.keys(counts).sort().map((k) => `${k} ${num(counts[k])}`).join(", ");
    return el("tr", {},
      el("td", {}, dateTime(g.created_at)),
      el("td", {}, el("span", { class: "badge " + g.status }, g.status)),
      el("td", { class: "mono" }, g.client),
      el("td", { class: "mono" }, typeof g.id === "string" ? g.id : JSON.stringify(g.id)),
      el("td", { class: "mono" }, g.method),
      el("td", { class: "num", id: "group-final-" + g.client + "-" + g.id }, `${num(g.final)} / ${num(g.total)}`),
      el("td", {}, el("div", { class: "bar stacked", title: `released ${num(g.released)} of ${num(g.total)}` },
        seg(counts.succeeded || 0, "ok"), seg(failed, "bad"), seg(counts.cancelled || 0, "muted"))),
      el("td", {}, text + (g.stop_reason ? ` · ${g.stop_reason}` : "")));
  }

  // ---- dead letters ------------------------------------------------------

  async function loadDead(reset) {
    clearTimeout(deadTimer);
    if (!token) return;
    const q = new URLSearchParams({ limit: String(DEAD_PAGE) });
    if (!reset && deadCursor) q.set("cursor", deadCursor);
    try {
      const d = await api("v1/dead?" + q.toString());
      const body = $("dead").tBodies[0];
      if (reset) body.replaceChildren();
      for (const c of d.commands || []) body.append(deadRow(c));
      deadCursor = d.next_cursor || "";
      $("dead-more").hidden = !deadCursor;
      $("dead-empty").hidden = body.rows.length > 0;
      $("dead").hidden = body.rows.length === 0;
    } catch (e) {
      if (!token) return;
      $("dead-empty").hidden = false;
      $("dead-empty").textContent = "Cannot list dead letters: " + e.message;
    }
    if (!deadPaged) deadTimer = setTimeout(() => loadDead(true), DEAD_MS);
  }

  function deadRow(c) {
    const id = String(c.id);
    // A replayed command stays listed, queued, until a worker takes it.
    const replayed = c.status !== "dead";
    const badge = el("span", { class: "badge " + c.status }, replayed ? "replayed" : c.status);
    const status = el("span", { class: "toast" });
    const btn = el("button", {
      type: "button",
      class: "small" + (replayed ? " ghost" : ""),
      text: replayed ? "Publish again" : "Replay",
      title: replayed ? "replayed, not taken by a worker yet: publish it once more" : "put it back on the commands queue",
    });
    btn.addEventListener("click", async () => {
      btn.disabled = true;
      btn.textContent = "Replaying…";
      status.className = "toast";
      status.textContent = "";
      try {
        const r = await api(`v1/dead/${encodeURIComponent(id)}/replay?client=${encodeURIComponent(c.client)}`, { method: "POST" });
        btn.textContent = "Replayed";
        status.textContent = "→ " + r.status;
        badge.className = "badge " + r.status;
        badge.textContent = "replayed";
      } catch (e) {
        btn.disabled = false;
        btn.textContent = replayed ? "Publish again" : "Replay";
        status.className = "toast error";
        status.textContent = e.message;
      }
    });
    const idLink = el("a", { href: "#", class: "mono", title: "look up this command" }, id);
    idLink.addEventListener("click", (ev) => {
      ev.preventDefault();
      $("lookup-client").value = c.client;
      $("lookup-id").value = id;
      lookup(c.client, id);
      $("lookup-form").scrollIntoView({ behavior: "smooth" });
    });
    return el("tr", {},
      el("td", {}, dateTime(c.finished_at || c.queued_at)),
      el("td", {}, badge),
      el("td", { class: "mono" }, c.client),
      el("td", {}, idLink),
      el("td", { class: "mono" }, c.device),
      el("td", { class: "mono" }, c.method),
      el("td", { class: "reason", title: c.reason || "" }, c.reason || ""),
      el("td", { class: "num" }, num(c.attempts)),
      el("td", {}, btn, status));
  }

  // ---- command lookup ----------------------------------------------------

  const STEPS = [
    ["created", "created_at"],
    ["queued", "queued_at"],
    ["on the wire", "sending_at"],
    ["sent", "sent_at"],
    ["delivered", "delivered_at"],
  ];

  async function lookup(client, id) {
    const out = $("lookup-result");
    const link = new URLSearchParams({ client: client, id: id }).toString();
    history.replaceState(null, "", location.pathname + "#" + link);
    out.replaceChildren(el("p", { class: "empty" }, "Looking up…"));
    try {
      const c = await api(`v1/commands/${encodeURIComponent(id)}?client=${encodeURIComponent(client)}`);
      out.replaceChildren(...commandDetail(c));
    } catch (e) {
      const msg = e.status === 404 ? `No command ${id} for client ${client}.` : e.message;
      out.replaceChildren(el("p", { class: "error" }, msg));
    }
  }

  function commandDetail(c) {
    const final = ["succeeded", "failed", "timeout", "expired", "cancelled", "rejected", "dead"].includes(c.status);
    const steps = STEPS.map(([label, f]) => [label, c[f]]);
    steps.push([final ? c.status : "final", c.finished_at]);
    const t0 = c.created_at ? Date.parse(c.created_at) : null;
    const timeline = el("ol", { class: "timeline" }, ...steps.map(([label, at]) => {
      const since = at && t0 != null ? ` (+${nf1.format((Date.parse(at) - t0) / 1000)} s)` : "";
      return el("li", { class: at ? "" : "todo" }, label,
        el("span", { class: "t" }, at ? clock(at) + since : "—"));
    }));
    const parts = [
      el("div", { class: "result-head" },
        el("span", { class: "badge " + c.status }, c.status),
        el("span", { class: "mono" }, `${c.client} → ${c.device}`),
        el("span", {}, "method ", el("b", { class: "mono" }, c.method)),
        el("span", {}, "attempts ", el("b", {}, c.retries ? `${num(c.attempts)} of ${num(c.retries + 1)}` : num(c.attempts))),
        c.retries ? el("span", {}, "retried on ", el("b", { class: "mono" }, c.retry_on)) : null,
        c.deliver_by ? el("span", { class: "null" }, "deliver by " + dateTime(c.deliver_by)) : null),
      timeline,
    ];
    // A retried command's timeline shows its current (or last) attempt;
    // the line says how the previous one ended.
    if (c.retried_on) parts.push(el("p", {}, `Attempt ${num(c.attempts)}: the previous attempt ended ${c.retried_on}; ` +
      `the device saw the id "${c.client}:${c.id}#${c.attempts}". PUBLISHes: ${num(c.publishes)}.`));
    if (c.reason) parts.push(el("p", {}, "Reason: ", c.reason));
    if (c.result_dropped) parts.push(el("p", { class: "error" }, "The result was dropped: the client's mailbox was full."));
    if (c.response) parts.push(el("pre", { class: "json" }, JSON.stringify(c.response, null, 2)));
    return parts;
  }

  // ---- device lookup -----------------------------------------------------

  const CONNECTIONS = {
    mqtt: "MQTT session",
    http_poll: "HTTP polls",
    offline: "offline (last over MQTT)",
  };

  async function lookupDevice(device) {
    const out = $("device-result");
    out.replaceChildren(el("p", { class: "empty" }, "Looking up…"));
    try {
      const d = await api(`v1/devices/${encodeURIComponent(device)}`);
      out.replaceChildren(...deviceDetail(d));
    } catch (e) {
      out.replaceChildren(el("p", { class: "error" }, e.message));
    }
  }

  // deviceDetail shows how a device connects (GET v1/devices/{d}) and
  // its ordered lanes: what each waits for.
  function deviceDetail(d) {
    const conn = d.connection || "never seen";
    const parts = [
      el("div", { class: "result-head" },
        el("span", { class: "badge conn-" + conn.replace(/ /g, "-"), id: "device-connection" }, CONNECTIONS[conn] || conn),
        el("span", { class: "mono" }, d.device),
        d.node ? el("span", {}, "on ", el("b", { class: "mono" }, d.node)) : null,
        el("span", {}, "waiting ", el("b", { id: "device-pending" }, num(d.pending))),
        el("span", { class: "null" }, "last seen " + (d.last_seen ? dateTime(d.last_seen) : "—")),
        d.last_poll ? el("span", { class: "null" }, "last poll " + dateTime(d.last_poll)) : null),
    ];
    const lanes = d.lanes || [];
    if (lanes.length === 0) {
      parts.push(el("p", { class: "empty" }, "No ordered lane holds a command."));
      return parts;
    }
    parts.push(el("table", { class: "grid", id: "device-lanes" },
      el("thead", {}, el("tr", {},
        el("th", {}, "lane"), el("th", { class: "num" }, "commands"), el("th", { class: "num" }, "waiting"),
        el("th", {}, "head"), el("th", {}, "head status"), el("th", {}, "since"), el("th", {}, "expires by"))),
      el("tbody", {}, ...lanes.map((l) => el("tr", {},
        el("td", { class: "mono" }, l.name),
        el("td", { class: "num" }, num(l.commands)),
        el("td", { class: "num" }, num(l.waiting)),
        el("td", { class: "mono" }, l.head_id != null ? `${l.head_client} · ${l.head_id}` : "—"),
        el("td", {}, l.head_status ? el("span", { class: "badge " + l.head_status }, l.head_status) : "—"),
        el("td", {}, l.head_since ? dateTime(l.head_since) : "—"),
        el("td", {}, l.head_deliver_by ? dateTime(l.head_deliver_by) : "—"))))));
    return parts;
  }

  // ---- start -------------------------------------------------------------

  function start() {
    $("signin-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const t = $("token-input").value.trim();
      if (!t) return;
      sessionStorage.setItem(TOKEN_KEY, t);
      $("token-input").value = "";
      signIn(t);
    });
    $("sign-out").addEventListener("click", () => signOut(""));
    $("dead-refresh").addEventListener("click", () => {
      deadPaged = false;
      loadDead(true);
    });
    $("dead-more").addEventListener("click", () => {
      deadPaged = true;
      loadDead(false);
    });
    $("device-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      lookupDevice($("device-id").value.trim());
    });
    $("lookup-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      lookup($("lookup-client").value.trim(), $("lookup-id").value.trim());
    });
    window.addEventListener("hashchange", () => {
      tokenFromFragment();
      const t = sessionStorage.getItem(TOKEN_KEY);
      if (t && t !== token) signIn(t);
      else if (token) lookupFromFragment();
    });

    tokenFromFragment();
    const t = sessionStorage.getItem(TOKEN_KEY);
    if (t) signIn(t);
    else signOut("");
  }

  start();
})();
