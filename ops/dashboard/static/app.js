"use strict";
// Renders the snapshot frames of /dashboard/events. Every value goes through
// textContent (no HTML parsing of data): reasons and messages are operator- or
// producer-controlled text. null means "not observed" and is shown as such.
(function () {
  const params = new URLSearchParams(window.location.search);
  const token = params.get("token");
  const q = token ? "?token=" + encodeURIComponent(token) : "";
  const stats = { frames: 0, version: null, lastFrameAt: null, errors: 0 };
  window.__dashboard = stats;

  function el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls && /^[a-z0-9_ -]+$/.test(cls)) e.className = cls;
    return e;
  }
  function badge(text) { return el("span", text === null ? "unknown" : text, "badge " + (text === null ? "unknown" : text)); }
  function num(v, digits) {
    if (v === null || v === undefined) return "n/a";
    return Number(v).toLocaleString("en-US", { minimumFractionDigits: digits, maximumFractionDigits: digits });
  }
  // the first 12 hex digits of a control event id (`tradeflow control` prints the whole id)
  function shortId(id) { return id ? String(id).slice(0, 12) : ""; }
  function pct(v) { return v === null || v === undefined ? "n/a" : (v * 100).toFixed(2) + "%"; }
  function ts(ns) {
    if (ns === null || ns === undefined) return "n/a";
    return new Date(Math.floor(ns / 1e6)).toISOString().replace("T", " ").slice(0, 19);
  }
  function row(cells) {
    const tr = document.createElement("tr");
    for (const c of cells) {
      if (c instanceof Node) { const td = el("td"); td.appendChild(c); tr.appendChild(td); }
      else if (typeof c === "object" && c !== null) { tr.appendChild(el("td", c.text, c.cls)); }
      else tr.appendChild(el("td", c));
    }
    return tr;
  }
  function fill(tbody, rows, empty, cols) {
    const body = typeof tbody === "string" ? document.querySelector(tbody) : tbody;
    body.replaceChildren();
    if (!rows.length) { const td = el("td", empty, "empty"); td.colSpan = cols; const tr = el("tr"); tr.appendChild(td); body.appendChild(tr); return; }
    for (const r of rows) body.appendChild(r);
  }
  function kv(label, value, cls) { const d = el("div", null, "kv " + (cls || "")); d.appendChild(el("span", label, "muted")); d.appendChild(el("b", value)); return d; }

  function equitySvg(points) {
    const ns = "http://www.w3.org/2000/svg";
    const svg = document.createElementNS(ns, "svg");
    svg.setAttribute("class", "equity");
    svg.setAttribute("viewBox", "0 0 600 160");
    svg.setAttribute("preserveAspectRatio", "none");
    if (points.length < 2) {
      const t = document.createElementNS(ns, "text"); t.setAttribute("x", "10"); t.setAttribute("y", "20");
      t.textContent = points.length ? "one point so far" : "no equity points yet"; svg.appendChild(t); return svg;
    }
    const xs = points.map(p => p[0]), ys = points.map(p => p[1]);
    const x0 = Math.min(...xs), x1 = Math.max(...xs), y0 = Math.min(...ys), y1 = Math.max(...ys);
    const sx = x => 40 + (x1 === x0 ? 0 : (x - x0) / (x1 - x0) * 550);
    const sy = y => 145 - (y1 === y0 ? 65 : (y - y0) / (y1 - y0) * 130);
    const d = points.map((p, i) => (i ? "L" : "M") + sx(p[0]).toFixed(1) + "," + sy(p[1]).toFixed(1)).join(" ");
    const path = document.createElementNS(ns, "path"); path.setAttribute("d", d); svg.appendChild(path);
    for (const [y, v] of [[12, y1], [155, y0]]) {
      const t = document.createElementNS(ns, "text"); t.setAttribute("x", "2"); t.setAttribute("y", String(y));
      t.textContent = num(v, 0); svg.appendChild(t);
    }
    svg.dataset.points = String(points.length);
    return svg;
  }

  function renderHealth(h, clients) {
    const s = document.getElementById("health-status");
    s.replaceChildren(
      kv("broker", h.broker.status || "unknown", h.broker.status || "unknown"),
      kv("database", (h.database.status || "unknown") + (h.database.detail ? " (" + h.database.detail + ")" : ""), h.database.status || "unknown"),
      kv("dead letters", String(h.dead_letters_total), h.dead_letters_total ? "warn" : "ok"),
      kv("dashboard clients", clients.connected + " (dropped " + clients.dropped + ")"));
    fill("#health-topics tbody", h.topics.map(t => row([t.topic, { text: t.rate === null ? "n/a" : t.rate.toFixed(1), cls: "num" },
      { text: String(t.consumed), cls: "num" }, { text: t.lag === null || t.lag === undefined ? "n/a" : String(t.lag), cls: "num" }])), "", 4);
    document.getElementById("dead-total").textContent = String(h.dead_letters_total);
    fill("#dead-letters tbody", h.dead_letters.map(d => row([d.consumer, d.topic, d.reason, { text: String(d.count), cls: "num" }])), "none", 4);
  }

  function renderPrices(list) {
    fill("#prices tbody", list.map(p => {
      const tr = row([p.symbol, p.timeframe, { text: num(p.close, 2), cls: "num" },
        { text: p.change === null ? "n/a" : (p.change >= 0 ? "+" : "") + pct(p.change), cls: "num " + (p.change === null ? "" : p.change >= 0 ? "up-move" : "down-move") },
        { text: num(p.high, 2), cls: "num" }, { text: num(p.low, 2), cls: "num" }, { text: num(p.volume, 2), cls: "num" },
        ts(p.ts_ns), { text: String(p.bars), cls: "num" }]);
      tr.dataset.symbol = p.symbol; return tr;
    }), "no bars yet", 9);
  }

  function reasonTable(title, rows, total, empty) {
    const box = el("div");
    box.appendChild(el("h3", title));
    const t = el("table"); const head = el("tr");
    for (const h of ["reason", "signals", "share"]) head.appendChild(el("th", h));
    const thead = el("thead"); thead.appendChild(head); t.appendChild(thead); const tb = el("tbody"); t.appendChild(tb);
    fill(tb, rows.map(r => row([{ text: r.reason, cls: "wrap" }, { text: String(r.n), cls: "num" },
      { text: total ? (100 * r.n / total).toFixed(1) + "%" : "n/a", cls: "num" }])), empty, 3);
    box.appendChild(t);
    return box;
  }

  function renderTrading(t) {
    const box = document.getElementById("trading-body");
    box.replaceChildren();
    if (!t.accounts.length) box.appendChild(el("p", t.error ? "not read: " + t.error : "no signal reached the trading agent yet", "empty"));
    for (const a of t.accounts) {
      const div = el("div"); div.dataset.account = a.account;
      div.appendChild(el("h3", "account " + a.account));
      const kvs = el("div", null, "row");
      const notTraded = a.signals_in - a.intents_out - a.held;
      kvs.append(kv("signals in", String(a.signals_in)), kv("intents out", String(a.intents_out)),
        kv("held for their bar", String(a.held)), kv("not traded", String(notTraded), notTraded ? "warn" : ""),
        ...Object.entries(a.verdicts).map(([k, n]) => kv("intents " + k, String(n))));
      div.appendChild(kvs);
      div.appendChild(reasonTable("top reasons signals were not traded", a.skipped, a.signals_in, "none: every signal made an intent"));
      div.appendChild(reasonTable("top reasons intents were denied or reduced", a.denied, a.intents_out, "none"));
      box.appendChild(div);
    }
    document.getElementById("trading-meta").textContent = "from the trading agent's input journal (as `tradeflow status`), read " +
      ts(t.checked_at_ns) + (t.error ? " \u00b7 last read failed: " + t.error : "");
  }

  function renderOrders(o) {
    const s = document.getElementById("order-statuses");
    s.replaceChildren(kv("fills", String(o.fills)),
      ...Object.entries(o.fees).map(([c, v]) => kv("fees " + c, num(v, 2))),
      ...Object.entries(o.statuses).filter(([, n]) => n > 0).map(([k, n]) => kv("orders " + k, String(n), k === "rejected" ? "bad" : "")));
    fill("#fills tbody", o.fills_recent.map(f => row([ts(f.ts_ns), f.symbol, badge(f.side), { text: num(f.quantity, 6), cls: "num" },
      { text: num(f.price, 2), cls: "num" }, { text: num(f.fee, 4) + " " + f.fee_currency, cls: "num" }, f.liquidity])), "no fills yet", 7);
    fill("#order-updates tbody", o.recent.map(u => row([ts(u.ts_ns), u.symbol, badge(u.side), { text: num(u.quantity, 6), cls: "num" },
      { text: num(u.filled_quantity, 6), cls: "num" }, { text: num(u.avg_fill_price, 2), cls: "num" }, badge(u.status),
      { text: u.reason || "", cls: "wrap" }])), "no orders yet", 8);
  }

  function renderSignals(list) {
    fill("#signals tbody", list.map(s => {
      const tr = row([s.symbol, s.model_id + " v" + s.model_version + (s.shadow ? " (shadow)" : ""), { text: num(s.score, 4), cls: "num" },
        { text: num(s.p_up, 3), cls: "num" }, { text: num(s.p_down, 3), cls: "num" }, { text: pct(s.expected_return), cls: "num" }, ts(s.ts_ns)]);
      tr.dataset.symbol = s.symbol; return tr;
    }), "no signals yet", 7);
  }

  function renderPortfolios(list) {
    const box = document.getElementById("portfolio-body");
    box.replaceChildren();
    if (!list.length) { box.appendChild(el("p", "no portfolio state yet", "empty")); return; }
    for (const p of list) {
      const div = el("div"); div.dataset.account = p.account;
      div.appendChild(el("h3", "account " + p.account + " \u00b7 as of " + ts(p.as_of_ns)));
      const kvs = el("div", null, "row");
      kvs.append(kv("equity", num(p.equity, 2) + " " + p.quote_currency), kv("cash", num(p.cash, 2)),
        kv("realized PnL", num(p.realized_pnl, 2)), kv("unrealized PnL", num(p.unrealized_pnl, 2)),
        kv("daily PnL", num(p.daily_pnl, 2)), kv("fees", num(p.fees_paid, 2)),
        kv("drawdown", pct(p.drawdown), p.drawdown >= 0.08 ? "bad" : ""), kv("intraday dd", pct(p.intraday_drawdown)),
        kv("loss streak", String(p.consecutive_losses)), kv("closed trades", String(p.closed_trades)));
      div.appendChild(kvs);
      const t = el("table"); const head = el("tr");
      for (const h of ["symbol", "quantity", "avg price", "mark", "unrealized", "realized", "fees"]) head.appendChild(el("th", h));
      const thead = el("thead"); thead.appendChild(head); t.appendChild(thead); const tb = el("tbody"); t.appendChild(tb);
      fill(tb, p.positions.map(x => row([x.symbol, { text: num(x.quantity, 6), cls: "num" }, { text: num(x.avg_price, 2), cls: "num" },
        { text: num(x.mark_price, 2), cls: "num" }, { text: num(x.unrealized_pnl, 2), cls: "num" },
        { text: num(x.realized_pnl, 2), cls: "num" }, { text: num(x.fees, 2), cls: "num" }])), "flat", 7);
      div.appendChild(t);
      div.appendChild(el("h3", "equity curve (" + p.equity_curve.length + " points)"));
      div.appendChild(equitySvg(p.equity_curve));
      box.appendChild(div);
    }
  }

  function renderRisk(r) {
    const v = document.getElementById("risk-verdicts");
    v.replaceChildren(kv("kill switches", String(r.kill_switches.length), r.kill_switches.length ? "bad" : "ok"),
      ...Object.entries(r.verdicts).map(([k, n]) => kv(k, String(n))));
    fill("#kill-switches tbody", r.kill_switches.map(s => row([s.scope, s.target, { text: s.reason, cls: "wrap" }, s.set_by,
      s.expires_at_ns === null ? "until released" : ts(s.expires_at_ns)])), "none engaged", 5);
    fill("#opening tbody", (r.opening || []).flatMap(o => o.allowed
      ? [row([o.account, badge("allowed"), "", "", "", "opening new positions is allowed"])]
      : o.blockers.map(b => row([o.account, { text: b.code, cls: "bad-text" }, b.scope + ":" + b.target,
        b.until_ns === null ? (b.code.startsWith("kill_switch") ? "until released" : "until the limit is back")
          : ts(b.until_ns) + " (" + b.domain + " time)",
        b.remaining_ns === null ? "" : Math.round(b.remaining_ns / 1e9) + " s", { text: b.detail, cls: "wrap" }]))),
      "no status yet", 6);
    fill("#risk-recent tbody", r.recent.map(d => row([ts(d.ts_ns), d.symbol, badge(d.verdict), { text: d.reasons.join(", "), cls: "wrap" }])), "none", 4);
    document.getElementById("rejected-total").textContent = String(r.control_rejected);
    fill("#control-rejected tbody", r.control_rejected_recent.map(c => row([ts(c.ts_ns), shortId(c.control_event_id), c.component,
      c.command + " " + c.scope + ":" + c.target, c.key_id + " / " + c.operator,
      { text: c.reason + (c.detail ? " (" + c.detail + ")" : ""), cls: "wrap bad-text" }])), "none", 6);
    const halt = document.getElementById("halt");
    if (r.kill_switches.length) {
      halt.textContent = "HALTED: " + r.kill_switches.map(s => s.scope + ":" + s.target + " (" + s.set_by + ")").join(", ");
      halt.className = "badge bad";
    } else { halt.textContent = "no kill switch engaged"; halt.className = "badge ok"; }
    fill("#control-audit tbody", r.control.map(c => row([ts(c.ts_ns), shortId(c.control_event_id), c.component, c.command, c.scope + ":" + c.target, c.operator, badge(c.outcome),
      { text: c.reason + (c.detail ? " (" + c.detail + ")" : "") + (c.changes.length ? ": " + c.changes.join("; ") : ""), cls: "wrap" }])), "none", 8);
    fill("#alerts tbody", r.alerts.slice(0, 10).map(a => row([ts(a.ts_ns), badge(a.severity), a.code, { text: a.message, cls: "wrap" }])), "none", 4);
  }

  function renderGates(list) {
    fill("#gates tbody", list.map(g => {
      const tr = row([g.gate, g.track, g.metric, badge(g.status), { text: g.value === null ? "not observed" : num(g.value, 4), cls: "num" },
        g.comparator + " " + num(g.threshold, 4), { text: String(g.observations), cls: "num" },
        { text: g.blockers.length ? g.blockers.join(", ") : "none", cls: "wrap" }]);
      tr.dataset.gate = g.gate + "|" + g.track + "|" + g.metric; return tr;
    }), "no gate results yet", 8);
  }

  function renderModels(list, serving, rollouts) {
    fill("#serving tbody", serving.map(m => {
      const tr = row([m.model_id, m.version, badge(m.stage), { text: (m.capital_fraction * 100).toFixed(0) + "%", cls: "num" }, ts(m.since_ns)]);
      tr.dataset.model = m.model_id + "|" + m.version; return tr;
    }), "no model serves: signals trade no capital", 5);
    const sb = document.getElementById("serving-badge");
    sb.textContent = serving.length ? "serving " + serving.map(m => m.model_id + " v" + m.version + " (" + m.stage + ")").join(", ") : "no model serving";
    sb.className = "badge " + (serving.length ? "ok" : "warn");
    fill("#rollouts tbody", rollouts.map(d => row([d.model_id, d.symbol || "*", d.version, badge(d.to_stage), d.action, d.actor,
      { text: d.reason, cls: "wrap" }])), "no governance decision yet", 7);
    fill("#versions tbody", list.map(m => {
      const tr = row([m.model_id, m.version, badge(m.stage), m.feature_set_version, m.checkpoint_sha256, ts(m.ts_ns)]);
      tr.dataset.model = m.model_id + "|" + m.version; return tr;
    }), "no models registered", 6);
  }

  function render(snap) {
    renderHealth(snap.health, snap.clients || { connected: 0, dropped: 0 });
    renderPrices(snap.prices);
    renderSignals(snap.signals);
    document.getElementById("signals-seen").textContent = String(snap.signals_seen) + " seen";
    renderTrading(snap.trading);
    renderOrders(snap.orders);
    renderPortfolios(snap.portfolios);
    renderRisk(snap.risk);
    renderGates(snap.gates);
    renderModels(snap.models, snap.serving, snap.rollouts);
    document.getElementById("meta").textContent = "update #" + snap.version + " \u00b7 event time " + ts(snap.event_now_ns) +
      " \u00b7 server " + ts(snap.generated_at_ns);
    stats.frames += 1; stats.version = snap.version; stats.lastFrameAt = Date.now();
    document.body.dataset.version = String(snap.version);
  }

  function connect() {
    const conn = document.getElementById("conn");
    const es = new EventSource("/dashboard/events" + q);
    es.addEventListener("snapshot", ev => {
      try { render(JSON.parse(ev.data)); conn.textContent = "live"; conn.className = "badge ok"; }
      catch (e) { stats.errors += 1; console.error(e); }
    });
    es.onerror = () => { conn.textContent = "reconnecting"; conn.className = "badge warn"; };
  }
  connect();
})();
