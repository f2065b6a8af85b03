// The MAMS console (api/console.py serves the pages; this file fills them in).
// Vanilla JavaScript, no build step, no library. Every text an agent or a person wrote is
// put into the page with textContent (el() below), never as HTML.
"use strict";
(() => {
  const KEY = "mams.token";
  const $ = (sel) => document.querySelector(sel);

  // el("p", {class: "x"}, "text", child): an element; strings become text nodes.
  function el(tag, attrs, ...kids) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "onclick") node.addEventListener("click", v);
      else node.setAttribute(k, v === true ? "" : String(v));
    }
    for (const kid of kids) {
      if (kid === null || kid === undefined) continue;
      node.append(typeof kid === "string" ? document.createTextNode(kid) : kid);
    }
    return node;
  }
  const money = (v) => (v === null || v === undefined ? "—" : "$" + Number(v).toFixed(2));
  const enc = encodeURIComponent;

  // -- the token: typed once, kept in this tab (sessionStorage); a link may carry it in
  // its #fragment (never sent to a server), which is moved to storage and cleared.
  function token() {
    return sessionStorage.getItem(KEY) || "";
  }
  function takeHashToken() {
    const m = /(?:^#|&)token=([^&]+)/.exec(location.hash);
    if (m) {
      sessionStorage.setItem(KEY, decodeURIComponent(m[1]));
      history.replaceState(null, "", location.pathname + location.search);
    }
  }
  // `as` (optional) is the token to call with instead of the tab's: a play page's buyer token.
  function headers(extra, as) {
    const h = Object.assign({ Accept: "application/json" }, extra || {});
    const t = as || token();
    if (t) h.Authorization = "Bearer " + t;
    return h;
  }

  class ApiError extends Error {
    constructor(status, message, problems) {
      super(message);
      this.status = status;
      this.problems = problems || [];
    }
  }
  async function failure(response) {
    let body = null;
    try {
      body = await response.json();
    } catch (_) {
      body = null;
    }
    const message = (body && body.error) || `${response.status} ${response.statusText}`;
    return new ApiError(response.status, message, body && body.problems);
  }
  async function api(method, path, body, as) {
    const init = { method, headers: headers({}, as) };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const response = await fetch(path, init);
    if (!response.ok) throw await failure(response);
    return response.json();
  }
  function showError(err) {
    const box = $("#error");
    box.textContent = err ? String(err.message || err) : "";
    box.hidden = !err;
  }

  // -- Server-Sent Events over fetch: an EventSource cannot send the Authorization header,
  // and a token in the URL would land in logs and history. Resumes with Last-Event-ID.
  async function follow(path, onEvent, as) {
    let last = null;
    let ended = false;
    for (;;) {
      const extra = { Accept: "text/event-stream" };
      if (last !== null) extra["Last-Event-ID"] = last;
      let response;
      try {
        response = await fetch(path, { headers: headers(extra, as), cache: "no-store" });
      } catch (_) {
        await new Promise((r) => setTimeout(r, 1000));
        continue;
      }
      if (!response.ok) throw await failure(response);
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = "";
      let ev = { type: "message", data: [], id: null };
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value;
        for (;;) {
          const i = buf.search(/[\r\n]/);
          if (i < 0 || (buf[i] === "\r" && i === buf.length - 1)) break; // wait for \n
          const line = buf.slice(0, i);
          buf = buf.slice(i + (buf[i] === "\r" && buf[i + 1] === "\n" ? 2 : 1));
          if (line === "") {
            if (ev.data.length) {
              if (ev.id !== null) last = ev.id;
              if (ev.type === "negotiation.ended" || ev.type === "room.closed") ended = true;
              onEvent(ev.type, JSON.parse(ev.data.join("\n")), ev.id);
            }
            ev = { type: "message", data: [], id: null };
          } else if (!line.startsWith(":")) {
            const c = line.indexOf(":");
            const field = c < 0 ? line : line.slice(0, c);
            let v = c < 0 ? "" : line.slice(c + 1);
            if (v.startsWith(" ")) v = v.slice(1);
            if (field === "data") ev.data.push(v);
            else if (field === "event") ev.type = v;
            else if (field === "id") ev.id = v;
          }
        }
      }
      if (ended) return;
      await new Promise((r) => setTimeout(r, 1000)); // closed early: resume where it was
    }
  }

  // -- the end of a room: the outcome, the debrief (hidden facts), the analysis ----------
  function outcomeText(outcome, nameOf) {
    if (!outcome) return "The room has ended.";
    if (outcome.type === "deal") {
      const who = nameOf ? nameOf(outcome.seller) : outcome.seller;
      return `Deal with ${who} at ${money(outcome.unit_price)} × ${outcome.quantity} ` +
        `after ${outcome.rounds} round(s).`;
    }
    return `No deal (${outcome.type.replace(/_/g, " ")}) after ${outcome.rounds} round(s).`;
  }
  function renderDebrief(d) {
    const box = $("#debrief");
    box.replaceChildren();
    if (!d) return;
    const rows = d.sellers.map((s) =>
      el("tr", {}, el("th", { scope: "row" }, s.handle), el("td", {}, s.style),
        el("td", {}, money(s.cost_price)), el("td", {}, money(s.least_price)),
        el("td", {}, money(s.selling_price)), el("td", {}, money(s.final_offer))));
    box.append(
      el("p", {}, `Your range was ${money(d.your_range[0])} to ${money(d.your_range[1])} ` +
        `per unit. The zone of agreement: ${money(d.zone.floor)} (${d.zone.floor_seller}'s ` +
        `floor) to ${money(d.zone.ceiling)}. ${d.zone.note || ""}`),
      el("table", { id: "revealed" },
        el("caption", {}, "Each seller's hidden terms, revealed"),
        el("thead", {}, el("tr", {}, ...["Seller", "Style", "Cost", "Floor", "Asked",
          "Last offer"].map((h) => el("th", { scope: "col" }, h)))),
        el("tbody", {}, ...rows)),
      el("p", { class: "lesson" }, d.lesson));
  }
  function renderAnalysis(a) {
    const dl = $("#analysis");
    dl.replaceChildren();
    const pairs = [
      ["Rounds", a.rounds],
      ["Messages", a.messages],
      ["Outcome", String(a.outcome).replace(/_/g, " ")],
      ["Saving against the first ask", a.savings_vs_first_ask === null ? "—" :
        money(a.savings_vs_first_ask)],
      ["Within budget", a.within_budget === null ? "—" : a.within_budget ? "yes" : "no"],
      ["Quality flags", a.quality ? a.quality.flags : 0],
    ];
    for (const [k, v] of pairs) dl.append(el("dt", {}, k), el("dd", {}, String(v)));
  }
  async function showEnd(nid, outcome, nameOf, as) {
    const end = $("#end");
    if (end.dataset.shown) return;
    end.dataset.shown = "1";
    end.hidden = false;
    $("#outcome").textContent = outcomeText(outcome, nameOf);
    try {
      const a = await api("GET", `/api/negotiations/${enc(nid)}/analytics`, undefined, as);
      if (!outcome) $("#outcome").textContent = `The room has ended: ${a.outcome}.`;
      renderDebrief(a.debrief);
      renderAnalysis(a);
    } catch (err) {
      $("#analysis").replaceChildren(el("dd", {}, `No analysis for this token: ${err.message}`));
    }
    end.focus();
  }

  // -- play as the buyer ------------------------------------------------------------------
  // The page always plays with a buyer token, so it holds only what the buyer may see: an
  // operator's tab mints one for the session (kept in this tab) and plays with it.
  async function buyerToken(sid) {
    const key = `mams.play.${sid}`;
    let as = sessionStorage.getItem(key);
    if (as) return as;
    // Asking for one reads nothing of the session: only an operator may mint, and any
    // other token is refused (403) and plays as itself (a buyer token; a seller's cannot).
    try {
      as = (await api("POST", `/api/sessions/${enc(sid)}/tokens`, { role: "buyer" })).token;
    } catch (err) {
      if (err.status === 403) return null;
      throw err;
    }
    sessionStorage.setItem(key, as);
    return as;
  }
  async function playPage() {
    const sid = document.body.dataset.session;
    const as = await buyerToken(sid);
    const nid = new URLSearchParams(location.search).get("nid");
    if (nid) return playRoom(nid, as);
    const session = await api("GET", `/api/sessions/${enc(sid)}`, undefined, as);
    const items = (session.buyer && session.buyer.items) || [];
    const select = $("#item");
    for (const item of items) select.append(el("option", {}, item.item_name));
    $("#start-form").addEventListener("submit", async (e) => {
      e.preventDefault();
      showError(null);
      try {
        const started = await api("POST", "/api/negotiations/start",
          { session_id: sid, item_name: select.value, buyer: "human" }, as);
        history.replaceState(null, "", `?nid=${enc(started.negotiation_id)}`);
        playRoom(started.negotiation_id, as);
      } catch (err) {
        showError(err);
      }
    });
  }

  function playRoom(nid, as) {
    $("#setup").hidden = true;
    $("#room").hidden = false;
    const st = { round: 0, final: false, turn: false, ended: false, quantity: 0,
      offers: new Map(), names: new Map(), pending: 0 };
    const log = $("#log");
    const say = (who, cls, ...parts) => {
      log.append(el("li", { class: cls }, el("strong", {}, who + ": "), ...parts));
    };
    function setTurn(on) {
      st.turn = on && !st.ended;
      $("#send").disabled = !st.turn || st.final;
      $("#say-text").disabled = !st.turn || st.final;
      $("#counter").disabled = !st.turn || st.final;
      $("#walk").disabled = !st.turn;
      for (const b of document.querySelectorAll("#offers button")) b.disabled = !st.turn;
      $("#turn").textContent = st.ended ? "The room has ended." :
        !st.turn ? "Waiting for the sellers…" :
        st.final ? `Round ${st.round}, the last: accept an offer or walk away.` :
        `Round ${st.round}: your turn. Write to the sellers, counter, or accept an offer.`;
    }
    function offerRow(handle) {
      const o = st.offers.get(handle);
      const row = document.getElementById("offer-" + handle.replace(/\W/g, "_"));
      const cells = [el("th", { scope: "row" }, handle)];
      if (o && o.offer) {
        const label = `Accept ${money(o.offer.unit_price)} from ${handle}`;
        cells.push(el("td", {}, `${money(o.offer.unit_price)} × ${o.offer.quantity}`),
          el("td", {}, String(o.round)),
          el("td", {}, el("button", { type: "button", class: "accept", "aria-label": label,
            disabled: !st.turn, onclick: () => accept(handle) }, "Accept")));
      } else {
        cells.push(el("td", {}, "no offer yet"), el("td", {}, ""), el("td", {}, ""));
      }
      row.replaceChildren(...cells);
    }
    async function act(path, body) {
      const box = $("#say-problems");
      box.hidden = true;
      setTurn(false);
      try {
        return await api("POST", `/api/negotiations/${enc(nid)}/${path}`, body, as);
      } catch (err) {
        box.textContent = err.message +
          err.problems.map((p) => ` ${p.path}: ${p.message}.`).join("");
        box.hidden = false;
        if (err.status !== 409 || !/ended/.test(err.message)) setTurn(true);
        return null;
      }
    }
    async function accept(handle) {
      const o = st.offers.get(handle);
      say("You", "mine", `accept ${money(o.offer.unit_price)} from ${handle}`);
      const done = await sent("decide", { decision: "accept", seller_id: handle,
        price: Number(o.offer.unit_price).toFixed(2), quantity: o.offer.quantity });
      if (done) finish(done.outcome);
    }
    // Words this page sent are shown as sent; the stream also carries the buyer's own
    // words (so a reloaded page shows them): those of this page's sends are skipped.
    async function sent(kind, body) {
      st.pending = (st.pending || 0) + 1;
      const answer = await act(kind, body);
      if (!answer) st.pending -= 1; // refused: nothing was said
      return answer;
    }
    function mine(line) {
      if (st.pending > 0) st.pending -= 1;
      else say("You", "mine", line);
    }
    function finish(outcome) {
      st.ended = true;
      setTurn(false);
      showEnd(nid, outcome, (id) => st.names.get(id) || id, as);
    }
    $("#walk").addEventListener("click", async () => {
      say("You", "mine", "walk away");
      const done = await sent("decide", { decision: "walk_away" });
      if (done) finish(done.outcome);
    });
    $("#say-form").addEventListener("submit", async (e) => {
      e.preventDefault();
      const text = $("#say-text").value.trim();
      if (!text) {
        $("#say-problems").textContent = "Write a message first.";
        $("#say-problems").hidden = false;
        $("#say-text").focus();
        return;
      }
      const chosen = [...document.querySelectorAll("#to input:checked")].map((i) => i.value);
      const to = chosen.length === 0 || chosen.includes("all") ? ["all"] : chosen;
      const body = { text, recipients: to };
      const counter = $("#counter").value.trim();
      if (counter) body.counter_price = counter;
      say("You", "mine", `(to ${to.join(", ")}${counter ? `, counter ${money(counter)}` : ""}) `,
        text);
      const answered = await sent("message", body);
      if (answered) {
        $("#say-text").value = "";
        $("#counter").value = "";
      }
    });
    setTurn(false);
    follow(`/api/negotiations/${enc(nid)}/events`, (type, d) => {
      if (type === "room.opened.buyer") {
        st.quantity = d.quantity;
        $("#brief").textContent = `${d.item_name} × ${d.quantity}. Your range: ` +
          `${money(d.min_price)} to ${money(d.max_price)} per unit (only you see it). ` +
          `Up to ${d.max_rounds} rounds.`;
        const body = $("#offers tbody");
        for (const p of d.sellers) {
          st.names.set(p.agent_id, p.handle);
          $("#to").append(el("label", {}, el("input", { type: "checkbox", name: "to",
            value: p.handle }), " " + p.handle));
          body.append(el("tr", { id: "offer-" + p.handle.replace(/\W/g, "_") }));
          offerRow(p.handle);
        }
      } else if (type === "turn.started") {
        st.round = d.round;
        st.final = d.final;
        for (const id of d.unanswered || []) {
          say(st.names.get(id) || id, "note", "did not answer in time");
        }
        setTurn(true);
      } else if (type === "seller.message" ||
                 (type === "recap" && d.message.type === "seller.message")) {
        const m = type === "recap" ? d.message : d;
        const offer = m.offer ? ` [offer ${money(m.offer.unit_price)} × ${m.offer.quantity}]` : "";
        say(m.seller.handle, "seller", m.text, offer);
        if (m.offer) st.offers.set(m.seller.handle, { offer: m.offer, round: m.round });
        offerRow(m.seller.handle);
      } else if (type === "recap" && d.message.type === "buyer.message") {
        say("You", "mine", d.message.text);
      } else if (type === "buyer.said") {
        const to = d.to.length ? d.to.map((id) => st.names.get(id) || id).join(", ") : "all";
        const counter = d.counter_price ? `, counter ${money(d.counter_price)}` : "";
        mine(`(to ${to}${counter}) ${d.text}`);
      } else if (type === "deal.closed") {
        mine(`accept ${money(d.unit_price)} from ${st.names.get(d.seller) || d.seller}`);
      } else if (type === "buyer.walked_away") {
        mine("walk away");
      } else if (type === "room.closed") {
        finish(d.outcome);
      }
    }, as).catch(showError);
  }

  // -- a live room: lanes, round markers, the offers-by-round chart -------------------------
  const SVG = "http://www.w3.org/2000/svg";
  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
    if (text !== undefined) node.textContent = text;
    return node;
  }
  const PALETTE = ["#1b5e9e", "#b35900", "#2e7d32", "#8e24aa", "#c62828", "#00695c"];

  function drawChart(series, maxRounds) {
    const W = 560, H = 240, L = 56, R = 150, T = 12, B = 32;
    const points = series.flatMap((s) => s.points);
    const fig = $("#chart");
    if (!points.length) {
      fig.replaceChildren(el("p", {}, "No offers yet."));
      return;
    }
    const prices = points.map((p) => p.price);
    let lo = Math.min(...prices), hi = Math.max(...prices);
    if (hi - lo < 1) { lo -= 0.5; hi += 0.5; }
    const rounds = Math.max(maxRounds || 1, ...points.map((p) => p.round));
    const x = (r) => L + ((r - 1) / Math.max(rounds - 1, 1)) * (W - L - R);
    const y = (p) => T + (1 - (p - lo) / (hi - lo)) * (H - T - B);
    const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: "img" });
    const summary = series.filter((s) => s.points.length).map((s) =>
      `${s.name}: ${s.points.map((p) => money(p.price)).join(", ")}`).join("; ");
    root.append(svg("title", {}, "Offers by round. " + summary));
    root.append(svg("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, stroke: "#555" }));
    root.append(svg("line", { x1: L, y1: T, x2: L, y2: H - B, stroke: "#555" }));
    for (let r = 1; r <= rounds; r++) {
      root.append(svg("text", { x: x(r), y: H - B + 16, "text-anchor": "middle",
        "font-size": 11 }, String(r)));
    }
    for (const p of [lo, (lo + hi) / 2, hi]) {
      root.append(svg("text", { x: L - 6, y: y(p) + 4, "text-anchor": "end",
        "font-size": 11 }, money(p)));
    }
    series.forEach((s, i) => {
      if (!s.points.length) return;
      const color = s.buyer ? "#222" : PALETTE[i % PALETTE.length];
      const pts = s.points.map((p) => `${x(p.round)},${y(p.price)}`).join(" ");
      root.append(svg("polyline", { points: pts, fill: "none", stroke: color,
        "stroke-width": 2, "stroke-dasharray": s.buyer ? "5 3" : "none" }));
      for (const p of s.points) {
        root.append(svg("circle", { cx: x(p.round), cy: y(p.price), r: 3, fill: color }));
      }
      root.append(svg("text", { x: W - R + 8, y: T + 14 + 16 * i, fill: color,
        "font-size": 12 }, s.name));
    });
    fig.replaceChildren(root);
  }

  // A room drawn from its events, one at a time: lanes, round markers, the chart, the end.
  // `room(nid, status)` clears the page's room and returns the function each event is fed
  // to (`type`, its JSON, its seq); `draw` false defers the chart until `redraw()`.
  function room(nid, status, draw = true) {
    $("#lanes").replaceChildren();
    const end = $("#end");
    end.hidden = true;
    delete end.dataset.shown;
    const lanes = new Map(); // agent id or handle -> lane list
    const series = new Map(); // agent id or handle -> {name, buyer, points}
    const names = new Map();
    let maxRounds = 0, timeout = 0;
    let at = null; // the seq of the committed event being shown (data-seq on what it adds)
    function lane(key, title) {
      if (!lanes.has(key)) {
        const list = el("ol", { class: "lane-log", "aria-label": title });
        $("#lanes").append(el("section", { class: "lane", "aria-label": title },
          el("h3", {}, title), list));
        lanes.set(key, list);
        series.set(key, { name: title, buyer: key === "@buyer", points: [] });
      }
      return lanes.get(key);
    }
    const put = (key, cls, ...parts) =>
      lane(key, key).append(el("li", { class: cls, "data-seq": at }, ...parts));
    const redraw = () => drawChart([...series.values()], maxRounds);
    function offer(key, round, price) {
      series.get(key).points.push({ round, price: Number(price) });
      if (draw) redraw();
    }
    function marker(round, final) {
      for (const list of lanes.values()) {
        list.append(el("li", { class: "round", "data-seq": at },
          `Round ${round}${final ? " (final)" : ""}` +
          (timeout ? ` · answers due within ${timeout} s` : "")));
      }
    }
    function opened(buyer, sellers) {
      lane("@buyer", buyer);
      for (const [id, handle] of sellers) {
        names.set(id, handle);
        lane(id, handle);
      }
    }
    redraw();
    function feed(type, d, seq) {
      at = seq;
      if (type === "negotiation.started") {
        maxRounds = d.max_rounds;
        timeout = d.round_timeout;
        $("#brief").textContent = `${d.item_name} × ${d.buyer.quantity}; ` +
          `up to ${d.max_rounds} rounds.`;
        opened(d.buyer.handle, d.sellers.map((s) => [s.agent_id, s.handle]));
        status("Live: following the room as it commits.");
      } else if (type === "room.opened.buyer") {
        maxRounds = d.max_rounds;
        timeout = d.round_timeout;
        $("#brief").textContent = `${d.item_name} × ${d.quantity}; up to ${d.max_rounds} rounds.`;
        opened("Buyer (you)", d.sellers.map((p) => [p.handle, p.handle]));
        status("Live: following the room as it commits.");
      } else if (type === "room.opened.seller") { // a seller token: its own view only
        maxRounds = d.max_rounds;
        timeout = d.round_timeout;
        $("#brief").textContent = `${d.item_name} × ${d.quantity}, as ${d.handle || "a seller"} ` +
          "sees it (the buyer's messages to it).";
        opened(d.buyer.handle, []);
        status("Live: following the room as it commits.");
      } else if (type === "buyer.message") {
        const counter = d.counter_price !== null && d.counter_price !== undefined;
        marker(d.round, false);
        put("@buyer", "buyer", d.text, counter ? ` [counter ${money(d.counter_price)}]` : "");
        if (counter) offer("@buyer", d.round, d.counter_price);
      } else if (type === "round.opened" || type === "turn.started") {
        marker(d.round, d.final);
      } else if (type === "buyer.said") {
        const to = d.to.length ? d.to.map((a) => names.get(a) || a).join(", ") : "all";
        const counter = d.counter_price !== null && d.counter_price !== undefined;
        put("@buyer", "buyer", `to ${to}: `, d.text,
          counter ? ` [counter ${money(d.counter_price)}]` : "");
        if (counter) offer("@buyer", d.round, d.counter_price);
      } else if (type === "seller.replied" || type === "seller.message") {
        const key = type === "seller.replied" ? d.seller : d.seller.handle;
        put(key, "seller", d.text, d.offer ? ` [offer ${money(d.offer.unit_price)}]` : "");
        if (d.offer) offer(key, d.round, d.offer.unit_price);
      } else if (type === "round.closed") {
        for (const id of d.unanswered || []) put(id, "note", "no answer by the deadline");
      } else if (type === "deal.closed") {
        put("@buyer", "buyer", `accepts ${names.get(d.seller) || d.seller}'s ` +
          `${money(d.unit_price)}: `, d.text);
      } else if (type === "buyer.walked_away") {
        put("@buyer", "buyer", "walks away: ", d.text);
      } else if (type === "negotiation.ended" || type === "room.closed") {
        status(`Ended (${d.status}).`);
        showEnd(nid, d.outcome, (id) => names.get(id) || id);
      }
    }
    feed.redraw = redraw;
    return feed;
  }

  function roomPage() {
    const nid = document.body.dataset.negotiation;
    const status = (t) => { $("#room-status").textContent = t; };
    $("#replay-link").href = `/replay/${enc(nid)}`;
    follow(`/api/negotiations/${enc(nid)}/events`, room(nid, status))
      .catch((err) => { status(""); showError(err); });
  }

  // -- replay: any stored room, stepped or scrubbed event by event ------------------------
  async function replayPage() {
    const nid = document.body.dataset.negotiation;
    const { events } = await api("GET", `/api/negotiations/${enc(nid)}/replay`);
    const scrub = $("#scrub");
    scrub.max = String(events.length);
    const status = () => {};
    function show(n) {
      const feed = room(nid, status, false);
      events.slice(0, n).forEach((e) => feed(e.type, e, String(e.seq)));
      feed.redraw();
      const e = events[n - 1];
      $("#position").textContent = n === 0 ? `Before the first event (of ${events.length}).` :
        `Event ${n} of ${events.length}: seq ${e.seq}, ${e.type}` +
        (e.round !== undefined ? `, round ${e.round}` : "") + ".";
      $("#event").textContent = e ? JSON.stringify(e, null, 2) : "";
      scrub.value = String(n);
      scrub.setAttribute("aria-valuetext", $("#position").textContent);
    }
    // Beside the whole event, what one agent was delivered of it: read with a token minted
    // for that agent's view (an operator's tab only) and revoked once read.
    const views = new Map();
    const first = events[0];
    async function viewOf(key) {
      if (!views.has(key)) {
        const [role, handle] = key.split(" ");
        const minted = await api("POST", `/api/sessions/${enc(first.session_id)}/tokens`,
          role === "buyer" ? { role } : { role, handle });
        try {
          const seen = await api("GET", `/api/negotiations/${enc(nid)}/replay`, undefined,
            minted.token);
          views.set(key, seen.events);
        } finally {
          await api("DELETE", `/api/tokens/${enc(minted.token_id)}`);
        }
      }
      return views.get(key);
    }
    async function showView() {
      const key = $("#as").value;
      const box = $("#view");
      if (!key) { box.textContent = ""; return; }
      const n = Number(scrub.value);
      const seq = n > 0 ? events[n - 1].seq : null;
      try {
        const items = (await viewOf(key)).filter((e) => e.seq === seq);
        box.textContent = items.length ? items.map((e) => JSON.stringify(e, null, 2))
          .join("\n\n") : "Nothing: this agent was delivered nothing of this event.";
      } catch (err) {
        box.textContent = `Cannot read this agent's view: ${err.message}`;
      }
    }
    if (first && first.type === "negotiation.started") {
      const as = $("#as");
      as.append(el("option", { value: "buyer" }, `${first.buyer.handle} (the buyer)`));
      for (const seller of first.sellers) {
        as.append(el("option", { value: `seller ${seller.handle}` }, seller.handle));
      }
      as.addEventListener("change", showView);
      $("#views").hidden = false;
    }
    scrub.addEventListener("input", () => { show(Number(scrub.value)); showView(); });
    $("#prev").addEventListener("click", () => {
      show(Math.max(0, Number(scrub.value) - 1));
      showView();
    });
    $("#next").addEventListener("click", () => {
      show(Math.min(events.length, Number(scrub.value) + 1));
      showView();
    });
    const at = Number(new URLSearchParams(location.search).get("at") || events.length);
    show(Math.max(0, Math.min(events.length, at)));
  }

  // -- study: a session's rooms and figures, refreshed as the rooms it follows end ---------
  const FOLLOW = 4; // event streams at once (a browser keeps 6 connections per server)
  function barChart(rows) {
    const W = 420, bar = 22, L = 90;
    const fig = $("#styles-chart");
    const shown = rows.filter((r) => r.deal_rate !== null);
    if (!shown.length) { fig.replaceChildren(el("p", {}, "No ended room yet.")); return; }
    const H = shown.length * (bar + 8) + 8;
    const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: "img" });
    root.append(svg("title", {}, "Deal rate by seller style: " +
      shown.map((r) => `${r.key} ${Math.round(r.deal_rate * 100)}%`).join(", ")));
    shown.forEach((r, i) => {
      const y = 8 + i * (bar + 8);
      root.append(svg("text", { x: L - 8, y: y + 15, "text-anchor": "end", "font-size": 12 },
        r.key));
      root.append(svg("rect", { x: L, y, width: Math.max(1, r.deal_rate * (W - L - 60)),
        height: bar, fill: "#1b5e9e" }));
      root.append(svg("text", { x: L + r.deal_rate * (W - L - 60) + 6, y: y + 15,
        "font-size": 12 }, `${Math.round(r.deal_rate * 100)}% of ${r.rooms}`));
    });
    fig.replaceChildren(root);
  }
  // The report's PNGs, fetched with the tab's token (an <img src> cannot send it).
  const PLOT_TEXT = {
    "by_model.png": "Deal rate, surplus split and flags by buyer and seller model",
    "by_style.png": "Deal rate, surplus split and flags by seller style",
  };
  async function drawPlots(sid) {
    const listed = await api("GET", `/api/sessions/${enc(sid)}/report/plots`);
    const figures = [];
    for (const p of listed.plots) {
      const response = await fetch(p.url, { headers: headers({}) });
      if (!response.ok) throw await failure(response);
      const src = URL.createObjectURL(await response.blob());
      const alt = PLOT_TEXT[p.name] || `Offers by round, room by room (${p.name})`;
      figures.push(el("figure", { class: "plot" }, el("img", { src, alt, "data-plot": p.name }),
        el("figcaption", {}, alt)));
    }
    const box = $("#plots");
    for (const img of box.querySelectorAll("img")) URL.revokeObjectURL(img.src);
    box.replaceChildren(...figures);
  }
  function studyPage() {
    const sid = document.body.dataset.session;
    const followed = new Set();
    let busy = null, again = false;
    async function refresh() {
      if (busy) { again = true; return busy; }
      busy = (async () => {
        do {
          again = false;
          const [list, report] = await Promise.all([
            api("GET", `/api/negotiations?session_id=${enc(sid)}&limit=500`),
            api("GET", `/api/sessions/${enc(sid)}/report`),
          ]);
          render(list.negotiations, report);
        } while (again);
        busy = null;
      })();
      return busy;
    }
    function render(rooms, report) {
      const running = rooms.filter((r) => r.status === "running" && !r.interrupted);
      const o = report.overall;
      const dl = $("#figures");
      dl.replaceChildren();
      for (const [k, v] of [
        ["Rooms", `${rooms.length} (${rooms.length - running.length} ended, ` +
          `${running.length} running)`],
        ["Deals", `${o.deals} of ${o.rooms} ended`],
        ["Deal rate", o.deal_rate === null ? "—" : `${Math.round(o.deal_rate * 100)}%`],
        ["Mean saving against the first ask", o.mean_saving_pct === null ? "—" :
          `${o.mean_saving_pct.toFixed(1)}%`],
      ]) dl.append(el("dt", {}, k), el("dd", {}, v));
      barChart(report.by_seller_style);
      drawPlots(sid).catch(showError);
      $("#rooms tbody").replaceChildren(...rooms.map((r) => el("tr", {},
        el("td", {}, r.item_name), el("td", {}, r.status.replace(/_/g, " ")),
        el("td", {}, r.outcome ? r.outcome.replace(/_/g, " ") : "—"),
        el("td", {}, r.unit_price === null ? "—" : money(r.unit_price)),
        el("td", {}, el("a", { href: `/room/${enc(r.negotiation_id)}` }, "room"), " · ",
          el("a", { href: `/replay/${enc(r.negotiation_id)}` }, "replay")))));
      for (const r of running) {
        if (followed.size >= FOLLOW) break;
        if (followed.has(r.negotiation_id)) continue;
        followed.add(r.negotiation_id);
        follow(`/api/negotiations/${enc(r.negotiation_id)}/events`, () => {})
          .catch(() => {})
          .finally(() => { followed.delete(r.negotiation_id); refresh().catch(showError); });
      }
      $("#study-status").textContent = running.length ?
        `Running: following ${followed.size} room(s) live.` : "No room is running.";
    }
    $("#refresh").addEventListener("click", () => refresh().catch(showError));
    return refresh();
  }

  // -- sessions ---------------------------------------------------------------------------
  async function listSessions() {
    const status = $("#sessions-status");
    try {
      const data = await api("GET", "/api/sessions?limit=100");
      const body = $("#sessions tbody");
      body.replaceChildren(...data.sessions.map((s) => el("tr", {},
        el("td", {}, s.description || "(no description)"),
        el("td", {}, s.created_at ? s.created_at.replace("T", " ").slice(0, 19) : ""),
        el("td", {}, String(s.negotiations)),
        el("td", {},
          el("a", { href: `/play/${enc(s.session_id)}` }, "Play as the buyer"), " ",
          el("a", { href: `/study/${enc(s.session_id)}`,
            "aria-label": `Study of ${s.description || s.session_id}` }, "Study"), " ",
          el("button", { type: "button", onclick: () => runAgents(s.session_id),
            "aria-label": `Run agent rooms of ${s.description || s.session_id}` },
          "Run agent rooms"), " ",
          el("button", { type: "button", onclick: () => showRooms(s.session_id),
            "aria-label": `List rooms of ${s.description || s.session_id}` }, "Rooms")))));
      $("#sessions").hidden = false;
      status.textContent = `${data.sessions.length} session(s).`;
    } catch (err) {
      status.textContent = `Cannot list sessions: ${err.message}`;
    }
  }
  async function runAgents(sid) {
    const box = $("#started");
    try {
      const runs = Math.max(1, Number($("#runs").value) || 1);
      const started = await api("POST", "/api/negotiations/start", { session_id: sid, runs });
      box.replaceChildren(el("p", {}, "Started: ",
        el("a", { href: `/study/${enc(sid)}` }, "follow the study")),
      el("ul", {}, ...started.negotiation_ids.map(
        (n) => el("li", {}, el("a", { href: `/room/${enc(n)}` }, `room ${n.slice(0, 8)}`)))));
    } catch (err) {
      box.replaceChildren(el("p", { class: "error" }, err.message));
    }
  }
  async function showRooms(sid) {
    const box = $("#started");
    try {
      const data = await api("GET", `/api/negotiations?session_id=${enc(sid)}&limit=100`);
      box.replaceChildren(el("ul", {}, ...data.negotiations.map((n) => el("li", {},
        el("a", { href: `/room/${enc(n.negotiation_id)}` },
          `${n.item_name}: ${n.status}${n.outcome ? ", " + n.outcome : ""}`), " · ",
        el("a", { href: `/replay/${enc(n.negotiation_id)}`,
          "aria-label": `Replay ${n.item_name} ${n.negotiation_id.slice(0, 8)}` }, "replay")))));
      if (!data.negotiations.length) box.replaceChildren(el("p", {}, "No rooms yet."));
    } catch (err) {
      box.replaceChildren(el("p", { class: "error" }, err.message));
    }
  }

  const NUMBER = /^-?\d+(\.\d+)?$/;
  const value = (path) => {
    const input = document.querySelector(`#new-session [data-path="${path}"]`);
    const text = input.value.trim();
    return NUMBER.test(text) && input.tagName !== "SELECT" && !/handle|name|desc/.test(path) ?
      Number(text) : text;
  };
  function formScenario() {
    const item = value("buyer.items[0].item_name");
    const sellers = [];
    for (let i = 0; document.getElementById(`s${i}-handle`); i++) {
      const r = value(`sellers[${i}].customer_retention_weight`);
      sellers.push({
        handle: value(`sellers[${i}].handle`),
        style: value(`sellers[${i}].style`),
        customer_retention_weight: r,
        profit_maximization_weight: typeof r === "number" ? (100 - Math.round(r * 100)) / 100 : 0,
        model: "baseline",
        inventory: [{
          item_name: item,
          cost_price: value(`sellers[${i}].inventory[0].cost_price`),
          selling_price: value(`sellers[${i}].inventory[0].selling_price`),
          least_price: value(`sellers[${i}].inventory[0].least_price`),
        }],
      });
    }
    return {
      name: "console session",
      description: value("description"),
      buyer: { handle: "@Buyer", model: "baseline", items: [{
        item_name: item,
        quantity: value("buyer.items[0].quantity"),
        min_price: value("buyer.items[0].min_price"),
        max_price: value("buyer.items[0].max_price"),
      }] },
      sellers,
    };
  }
  function clearProblems(form) {
    for (const p of form.querySelectorAll(".field-error")) p.remove();
    for (const i of form.querySelectorAll("[aria-invalid]")) {
      i.removeAttribute("aria-invalid");
      i.removeAttribute("aria-describedby");
    }
  }
  // Each problem at the field its path names; the rest in the form's summary.
  function showProblems(form, summary, err) {
    clearProblems(form);
    const rest = [];
    let first = null;
    for (const p of err.problems) {
      const path = p.path.replace(/^scenario\./, "");
      const input = form.querySelector(`[data-path="${CSS.escape(path)}"]`);
      if (!input) {
        rest.push(`${path}: ${p.message}`);
        continue;
      }
      const id = "err-" + input.id;
      let note = document.getElementById(id);
      if (!note) {
        note = el("p", { id, class: "field-error" });
        input.after(note);
      }
      note.textContent = (note.textContent ? note.textContent + " " : "") + p.message;
      input.setAttribute("aria-invalid", "true");
      input.setAttribute("aria-describedby", id);
      first = first || input;
    }
    summary.textContent = err.message + (rest.length ? ": " + rest.join("; ") : "");
    summary.hidden = false;
    if (first) first.focus();
  }
  function created(sid) {
    $("#started").replaceChildren(el("p", {}, "Session created. ",
      el("a", { href: `/play/${enc(sid)}` }, "Play as the buyer")));
    listSessions();
  }
  function sessionsPage() {
    listSessions();
    const form = $("#new-session");
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      const summary = $("#form-problems");
      summary.hidden = true;
      clearProblems(form);
      try {
        const scenario = formScenario();
        const done = await api("POST", "/api/sessions",
          { description: scenario.description, scenario });
        created(done.session_id);
      } catch (err) {
        if (err.problems) showProblems(form, summary, err);
        else showError(err);
      }
    });
    const paste = $("#paste-session");
    paste.addEventListener("submit", async (e) => {
      e.preventDefault();
      const list = $("#paste-problems");
      const note = $("#paste-problems-note");
      list.replaceChildren();
      note.hidden = true;
      try {
        const { scenario } = await api("POST", "/console/scenario",
          { text: $("#p-text").value, format: $("#p-format").value });
        const done = await api("POST", "/api/sessions",
          { description: scenario.description || "", scenario });
        created(done.session_id);
      } catch (err) {
        note.textContent = err.message;
        note.hidden = false;
        for (const p of err.problems || []) {
          list.append(el("li", {}, el("code", {}, p.path.replace(/^scenario\./, "")),
            ": " + p.message));
        }
        $("#p-text").focus();
      }
    });
  }

  // -- start ------------------------------------------------------------------------------
  function init() {
    takeHashToken();
    const form = $("#token-form");
    const note = $("#token-note");
    note.textContent = token() ? "A token is in use in this tab." : "";
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      const t = $("#token").value.trim();
      if (t) sessionStorage.setItem(KEY, t);
      else sessionStorage.removeItem(KEY);
      $("#token").value = "";
      location.reload();
    });
    const page = document.body.dataset.page;
    const run = { sessions: sessionsPage, play: playPage, room: roomPage, replay: replayPage,
      study: studyPage }[page];
    Promise.resolve(run && run()).catch(showError);
  }
  init();
})();
