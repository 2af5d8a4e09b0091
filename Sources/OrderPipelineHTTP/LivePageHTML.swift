/// The live page: one self-contained document (inline CSS, JavaScript and SVG; no external asset, works offline).
/// Data arrives as JSON (`/ui/api/snapshot` once, then `snapshot` events on `/ui/api/events`) and is put in the
/// DOM with `textContent` only, never as markup. `?order=ID` opens an order's journey.
enum LivePageHTML {
    static let document = #"""
        <!doctype html>
        <html lang="en">
        <head>
        <meta charset="utf-8">
        <meta name="viewport" content="width=device-width, initial-scale=1">
        <title>OrderPipeline · live</title>
        <style>
        :root { --ok:#1a7f37; --warn:#b26b00; --bad:#c62828; --ink:#1c2230; --dim:#5d6678; --line:#dfe3ea; --card:#fff;
          --created:#2f6fdd; --published:#8a4fd8; --fulfilled:#1a7f37; --sent:#0f8b8d; }
        * { box-sizing: border-box; }
        body { margin: 0; font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--ink); background: #f3f5f8; }
        header { display: flex; align-items: center; gap: 12px; padding: 10px 16px; background: #1c2230; color: #fff; flex-wrap: wrap; }
        header h1 { font-size: 17px; margin: 0; font-weight: 600; }
        #conn { display: flex; align-items: center; gap: 6px; font-size: 13px; color: #c9d1e0; margin-left: auto; }
        #conn i { width: 9px; height: 9px; border-radius: 50%; background: var(--warn); display: inline-block; }
        #conn.live i { background: #3ddc84; }
        main { padding: 12px; max-width: 1280px; margin: 0 auto; }
        section { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 12px; margin-bottom: 12px; }
        h2 { font-size: 13px; text-transform: uppercase; letter-spacing: .04em; color: var(--dim); margin: 0 0 8px; }
        #banner { display: none; background: #fde7e7; color: var(--bad); border: 1px solid #f4b4b4; }
        #summary { font-size: 15px; font-weight: 600; padding: 6px 10px; border-radius: 6px; margin-bottom: 10px; background: #e7f6ec; color: var(--ok); }
        #summary.warn { background: #fff1d6; color: var(--warn); } #summary.bad { background: #fde7e7; color: var(--bad); }
        .flow { display: flex; align-items: stretch; gap: 4px; }
        .stage { flex: 1 1 0; min-width: 0; border: 1px solid var(--line); border-top: 4px solid var(--ok); border-radius: 6px; padding: 8px; background: #fbfcfd; }
        .stage.warn { border-top-color: var(--warn); } .stage.bad { border-top-color: var(--bad); background: #fff7f7; }
        .stage h3 { margin: 0; font-size: 12px; color: var(--dim); font-weight: 600; white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
        .big { font-size: 26px; font-weight: 650; font-variant-numeric: tabular-nums; }
        .big small { font-size: 12px; font-weight: 400; color: var(--dim); margin-left: 3px; }
        .sub { font-size: 12px; color: var(--dim); font-variant-numeric: tabular-nums; }
        .arrow { align-self: center; color: #9aa3b5; font-size: 18px; }
        .chips span { display: inline-block; font-size: 11px; border: 1px solid var(--line); border-radius: 10px; padding: 0 6px; margin: 2px 2px 0 0; }
        .grid { display: grid; grid-template-columns: 1fr 1fr; gap: 12px; }
        svg { width: 100%; height: auto; display: block; }
        .legend span { font-size: 12px; margin-right: 10px; white-space: nowrap; } .legend b { display: inline-block; width: 10px; height: 3px; vertical-align: middle; margin-right: 4px; }
        table { width: 100%; border-collapse: collapse; font-variant-numeric: tabular-nums; }
        th, td { text-align: left; padding: 5px 6px; border-bottom: 1px solid var(--line); font-size: 13px; white-space: nowrap; }
        th { color: var(--dim); font-weight: 600; font-size: 12px; }
        td.hop { color: var(--dim); } td.hop.done { color: var(--ink); } td.hop:not(.done)::after { content: "·"; }
        code, .id { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 12px; }
        .badge { display: inline-block; padding: 0 7px; border-radius: 10px; font-size: 12px; font-weight: 600; background: #e8ecf3; }
        .badge.Fulfilled { background: #dcf3e3; color: var(--ok); } .badge.Failed { background: #fde7e7; color: var(--bad); }
        .badge.Pending, .badge.Processing { background: #fff1d6; color: var(--warn); }
        form { display: flex; gap: 6px; flex-wrap: wrap; } input { flex: 1 1 260px; padding: 6px 8px; border: 1px solid #c5ccd8; border-radius: 5px; font: inherit; }
        button { padding: 6px 12px; border: 0; border-radius: 5px; background: #1c2230; color: #fff; font: inherit; cursor: pointer; }
        ol.journey { list-style: none; display: flex; flex-wrap: wrap; gap: 6px; padding: 0; margin: 10px 0 0; }
        ol.journey li { border: 1px solid var(--line); border-radius: 6px; padding: 4px 8px; min-width: 110px; color: var(--dim); }
        ol.journey li.done { border-color: var(--ok); color: var(--ink); background: #f3fbf5; }
        ol.journey li b { display: block; font-size: 12px; }
        .note { font-size: 12px; color: var(--dim); }
        @media (max-width: 760px) {
          .flow { flex-direction: column; } .arrow { transform: rotate(90deg); margin: -4px 0; }
          .stage { display: grid; grid-template-columns: 38% 1fr; column-gap: 8px; align-items: baseline; }
          .stage h3 { grid-row: span 3; white-space: normal; font-size: 13px; color: var(--ink); }
          .grid { grid-template-columns: 1fr; }
          #latest thead { display: none; } #latest tr { display: grid; grid-template-columns: 1fr 1fr; border-bottom: 1px solid var(--line); padding: 4px 0; }
          #latest td { border: 0; padding: 2px 4px; white-space: normal; }
          #dead td { white-space: normal; word-break: break-word; } #latest td.hop::before { content: attr(data-label) " "; color: var(--dim); font-size: 11px; }
        }
        </style>
        </head>
        <body>
        <header><h1>OrderPipeline · live</h1><span class="note" style="color:#c9d1e0">API → Kafka outbox → Kafka → consumer → Service Bus outbox → Service Bus</span>
          <span id="conn"><i></i><span id="connText">connecting…</span></span></header>
        <main>
        <section id="banner"></section>
        <section><h2>Pipeline now <span class="note" id="windowNote">(counts: last 60 s)</span></h2><div id="summary">waiting for the first snapshot…</div><div class="flow" id="flow"></div></section>
        <div class="grid">
          <section><h2>Throughput per second · last 60 s</h2><div id="throughput"></div><div class="legend" id="legend"></div></section>
          <section><h2>Create → fulfilled latency · last 60 s</h2><div id="latency"></div></section>
        </div>
        <section><h2>Find an order</h2>
          <form id="find"><input id="orderId" placeholder="order id, e.g. 3fa85f64-5717-4562-b3fc-2c963f66afa6" autocomplete="off"><button>Show journey</button></form>
          <div id="journey"></div></section>
        <section><h2>Latest orders</h2><table id="latest"><thead><tr><th>Order</th><th>Status</th><th>Created</th><th>Published</th><th>Consumed</th><th>Fulfilled</th><th>Sent</th></tr></thead><tbody></tbody></table></section>
        <section><h2>Dead letters <span id="dlCount" class="note"></span></h2><div id="replayBox"></div><table id="dead"><tbody></tbody></table></section>
        <p class="note">Times from the database. Read-only unless the server sets UI_REPLAY_TOKEN. <a href="/metrics">/metrics</a> · <a href="/openapi.json">/openapi.json</a></p>
        </main>
        <script>
        "use strict";
        const $ = (id) => document.getElementById(id);
        function h(tag, attrs, ...kids) {
          const e = document.createElement(tag);
          for (const [k, v] of Object.entries(attrs || {})) if (v !== null && v !== undefined) e.setAttribute(k, v);
          for (const k of kids) if (k !== null && k !== undefined) e.append(k instanceof Node ? k : String(k));
          return e;
        }
        const sum = (a) => a.reduce((x, y) => x + y, 0);
        function ms(v) { if (v === null || v === undefined) return "–"; if (v < 1) return v.toFixed(2) + " ms"; if (v < 1000) return v.toFixed(v < 10 ? 1 : 0) + " ms"; return (v / 1000).toFixed(2) + " s"; }
        function age(s) { if (!s) return "–"; if (s < 1) return Math.round(s * 1000) + " ms"; if (s < 120) return s.toFixed(1) + " s"; if (s < 7200) return (s / 60).toFixed(1) + " min"; return (s / 3600).toFixed(1) + " h"; }
        function clock(us) { const d = new Date(us / 1000); return d.toTimeString().slice(0, 8) + "." + String(d.getMilliseconds()).padStart(3, "0"); }
        function since(us, from) { return us === null ? "" : "+" + ms((us - from) / 1000); }
        const HOPS = [["createdAt", "created"], ["publishedAt", "published"], ["consumedAt", "consumed"], ["fulfilledAt", "fulfilled"], ["sentAt", "sent"]];
        const COLORS = { created: "var(--created)", published: "var(--published)", fulfilled: "var(--fulfilled)", sent: "var(--sent)" };
        let replayEnabled = false, shownOrder = null;

        function stage(title, value, unit, lines, level) {
          return h("div", { class: "stage " + (level || "") }, h("h3", {}, title), h("div", { class: "big" }, value, unit ? h("small", {}, unit) : null),
            ...lines.map((l) => l instanceof Node ? l : h("div", { class: "sub" }, l)));
        }
        function outboxStage(title, o) {
          const level = o.deadLettered > 0 || o.oldestAgeSeconds > 60 ? "bad" : o.oldestAgeSeconds > 5 || o.retrying > 0 ? "warn" : "";
          return stage(title, o.pending, "pending", ["oldest " + age(o.pending ? o.oldestAgeSeconds : 0), o.retrying + " retrying · " + o.deadLettered + " dead-lettered"], level);
        }
        function renderFlow(s) {
          const m = s.minute, ob = Object.fromEntries(s.outboxes.map((o) => [o.outbox, o]));
          const lag = s.consumerLag, lagTotal = lag ? sum(lag.map((p) => p.lag)) : null;
          const chips = lag ? h("div", { class: "sub chips" }, ...lag.map((p) => h("span", { "data-partition": p.partition }, "p" + p.partition + " lag " + p.lag)))
            : h("div", { class: "sub" }, "lag: consumer runs in another process");
          const parts = [
            stage("API", sum(m.created), "/min", ["orders created"]),
            outboxStage("Kafka outbox", ob["kafka"]),
            stage("Kafka", sum(m.published), "/min", ["published · " + m.awaitingConsumer + " awaiting consumer", chips], lagTotal > 100 || m.awaitingConsumer > 100 ? "warn" : ""),
            stage("Consumer", sum(m.fulfilled), "/min", ["fulfilled · p50 " + ms(m.latency.p50) + " · p99 " + ms(m.latency.p99),
              poison(s) + " poison record(s) dead-lettered"], poison(s) ? "bad" : ""),
            outboxStage("Service Bus outbox", ob["service-bus"]),
            stage("Service Bus", sum(m.sent), "/min", ["fulfilment messages sent"]),
          ];
          const flow = $("flow");
          flow.replaceChildren();
          parts.forEach((p, i) => { if (i) flow.append(h("div", { class: "arrow" }, "→")); flow.append(p); });
          renderSummary(s, lagTotal);
          $("windowNote").textContent = m.capped ? "(counts: last 60 s, capped: at least)" : "(counts: last 60 s)";
        }
        // Waiting dead letters that are not outbox rows: records the consumer could not decode.
        const poison = (s) => Math.max(0, s.deadLetterCount - sum(s.outboxes.map((o) => o.deadLettered)));
        function renderSummary(s, lagTotal) {
          const m = s.minute, bad = [], warn = [];
          for (const o of s.outboxes) {
            const name = o.outbox === "kafka" ? "Kafka outbox" : "Service Bus outbox";
            if (o.deadLettered) bad.push(`${o.deadLettered} dead-lettered in the ${name}`);
            if (o.pending && o.oldestAgeSeconds > 60) bad.push(`${name}: ${o.pending} waiting, oldest ${age(o.oldestAgeSeconds)}`);
            else if (o.pending && o.oldestAgeSeconds > 5) warn.push(`${name}: ${o.pending} waiting, oldest ${age(o.oldestAgeSeconds)}`);
            if (o.retrying) warn.push(`${name}: ${o.retrying} retrying`);
          }
          if (poison(s)) bad.push(`${poison(s)} poison record(s) dead-lettered by the consumer (see Dead letters)`);
          if (lagTotal > 100) warn.push(`consumer lag ${lagTotal}`);
          const waiting = sum(s.outboxes.map((o) => o.pending)) + m.awaitingConsumer;
          const text = bad.length || warn.length ? [...bad, ...warn].join(" · ")
            : `Healthy · ${sum(m.created)} orders in the last minute · p50 ${ms(m.latency.p50)} create → fulfilled · ` + (waiting ? `${waiting} in flight` : "nothing waiting");
          $("summary").className = bad.length ? "bad" : warn.length ? "warn" : "";
          $("summary").textContent = text;
        }
        function svg(tag, attrs, ...kids) {
          const e = document.createElementNS("http://www.w3.org/2000/svg", tag);
          for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
          for (const k of kids) e.append(k);
          return e;
        }
        function renderThroughput(m) {
          const W = 540, H = 120, series = ["created", "published", "fulfilled", "sent"];
          const max = Math.max(1, ...series.flatMap((k) => m[k]));
          const root = svg("svg", { viewBox: `0 0 ${W} ${H + 14}`, role: "img", "aria-label": "orders per second" });
          root.append(svg("line", { x1: 0, y1: H, x2: W, y2: H, stroke: "#dfe3ea" }), svg("text", { x: 2, y: 10, "font-size": 12, fill: "#5d6678" }, max + "/s"),
            svg("text", { x: 2, y: H + 12, "font-size": 12, fill: "#5d6678" }, "−60 s"), svg("text", { x: W - 24, y: H + 12, "font-size": 12, fill: "#5d6678" }, "now"));
          for (const k of series) {
            const pts = m[k].slice().reverse().map((v, i) => `${(i * W / 59).toFixed(1)},${(H - v * (H - 14) / max).toFixed(1)}`).join(" ");
            // Orders in: a filled area; what each later stage let through: lines on top of it.
            root.append(k === "created" ? svg("polygon", { points: `0,${H} ${pts} ${W},${H}`, fill: "#dbe7fb", stroke: COLORS[k], "stroke-width": 1, "data-series": k })
              : svg("polyline", { points: pts, fill: "none", stroke: COLORS[k], "stroke-width": 1.6, "data-series": k }));
          }
          $("throughput").replaceChildren(root);
          $("legend").replaceChildren(...series.map((k) => h("span", {}, h("b", { style: "background:" + COLORS[k] }), k + " " + sum(m[k]))));
        }
        function renderLatency(m) {
          const W = 540, H = 100, b = m.latencyBuckets.slice().reverse();
          const max = Math.max(1, ...b.map((x) => x.p99 || 0));
          const root = svg("svg", { viewBox: `0 0 ${W} ${H + 14}`, role: "img", "aria-label": "latency per 10 seconds" });
          b.forEach((x, i) => {
            const bw = W / 6, x0 = i * bw + 6;
            if (x.count) {
              root.append(svg("rect", { x: x0, y: H - x.p99 * (H - 12) / max, width: bw - 12, height: x.p99 * (H - 12) / max, fill: "#d7e6fb" }),
                svg("rect", { x: x0, y: H - x.p50 * (H - 12) / max, width: bw - 12, height: Math.max(1, x.p50 * (H - 12) / max), fill: "var(--created)" }));
            }
            root.append(svg("text", { x: x0, y: H + 12, "font-size": 12, fill: "#5d6678" }, i === 5 ? "now" : `−${(6 - i) * 10} s`));
          });
          root.append(svg("text", { x: W - 2, y: 10, "font-size": 12, fill: "#5d6678", "text-anchor": "end" }, "max p99 " + ms(max)));
          $("latency").replaceChildren(h("div", { class: "big" }, ms(m.latency.p50), h("small", {}, "p50"), " ", ms(m.latency.p99), h("small", {}, "p99 · " + m.latency.count + " orders")), root,
            h("div", { class: "legend" }, h("span", {}, h("b", { style: "background:var(--created)" }), "p50"), h("span", {}, h("b", { style: "background:#d7e6fb" }), "p99")));
        }
        function orderRow(j) {
          const tr = h("tr", { "data-order-id": j.orderId, "data-status": j.status, "data-stage": j.stage },
            h("td", {}, h("a", { href: "?order=" + j.orderId, class: "id", title: j.orderId + (j.traceId ? "\ntrace " + j.traceId : "") }, j.orderId.slice(0, 8))),
            h("td", {}, h("span", { class: "badge " + j.status }, j.status)));
          for (const [key, name] of HOPS) {
            const at = j[key];
            tr.append(h("td", { class: "hop" + (at ? " done" : ""), "data-hop": name, "data-label": name, "data-at": at, title: at ? clock(at) + where(j, name) : "not yet" },
              at ? (name === "created" ? clock(at) : since(at, j.createdAt)) : ""));
          }
          return tr;
        }
        // "published (partition 2, offset 117)": where Kafka appended the order's event.
        function where(j, name) {
          const p = name === "published" && j.publishedPosition;
          return p ? ` (partition ${p.partition}, offset ${p.offset})` : "";
        }
        function renderDead(s) {
          $("dlCount").textContent = s.deadLetterCount ? "(" + s.deadLetterCount + " waiting)" : "(none)";
          $("replayBox").replaceChildren(replayEnabled
            ? h("form", { id: "tokenForm" }, h("input", { id: "token", type: "password", placeholder: "replay token (UI_REPLAY_TOKEN)", autocomplete: "off" }))
            : h("p", { class: "note" }, "Read-only: replay with ", h("code", {}, "orderpipeline outbox replay ID"), " (or start the server with UI_REPLAY_TOKEN)."));
          $("dead").tBodies[0].replaceChildren(...s.deadLetters.map((d) => h("tr", { "data-dead-letter": d.id },
            h("td", {}, "#" + d.id), h("td", { class: "id" }, d.source), h("td", { style: "white-space:normal" }, d.reason), h("td", {}, d.at.slice(11, 23)),
            h("td", {}, replayEnabled ? replayButton(d.id) : h("code", {}, "orderpipeline outbox replay " + d.id)))));
        }
        function replayButton(id) {
          const b = h("button", { type: "button" }, "Replay");
          b.onclick = async () => {
            const r = await fetch(`/ui/api/dead-letters/${id}/replay`, { method: "POST", headers: { "X-Replay-Token": ($("token") || {}).value || "" } });
            const body = await r.json().catch(() => ({}));
            b.replaceWith(h("span", { class: "note" }, r.ok ? body.result : (body.detail || r.status)));
          };
          return b;
        }
        function render(s) {
          if (s.error) { $("banner").style.display = "block"; $("banner").textContent = s.error; return; }
          $("banner").style.display = "none";
          replayEnabled = s.replayEnabled;
          renderFlow(s); renderThroughput(s.minute); renderLatency(s.minute);
          $("latest").tBodies[0].replaceChildren(...s.latest.map(orderRow));
          renderDead(s);
          $("connText").textContent = "live · " + clock(s.now).slice(0, 8);
          if (shownOrder && !["sent", "dead-lettered", "failed"].includes(shownOrder.stage)) showOrder(shownOrder.orderId);
        }
        async function showOrder(id) {
          id = id.trim();
          const box = $("journey");
          const r = await fetch("/ui/api/orders/" + encodeURIComponent(id) + "/journey");
          const j = await r.json().catch(() => ({}));
          if (!r.ok) { shownOrder = null; box.replaceChildren(h("p", { class: "note", "data-error": r.status }, j.detail || "lookup failed")); return; }
          shownOrder = j;
          const rows = [j.kafka && ["Kafka outbox row", j.kafka], j.serviceBus && ["Service Bus outbox row", j.serviceBus]].filter(Boolean);
          box.replaceChildren(h("div", { "data-order-id": j.orderId, "data-status": j.status, "data-stage": j.stage, style: "margin-top:10px" },
            h("span", { class: "id" }, j.orderId), " ", h("span", { class: "badge " + j.status }, j.status), " ", h("span", { class: "note" }, j.stage),
            j.traceId ? h("div", { class: "note" }, "trace ", h("code", { "data-trace-id": j.traceId }, j.traceId)) : null,
            j.failureReason ? h("div", { class: "note" }, "failure: " + j.failureReason) : null,
            h("ol", { class: "journey" }, ...HOPS.map(([key, name]) => h("li", { class: j[key] ? "done" : "", "data-hop": name, "data-at": j[key] },
              h("b", { "data-position": name === "published" && j.publishedPosition ? j.publishedPosition.partition + "@" + j.publishedPosition.offset : null },
                name + where(j, name)),
              j[key] ? clock(j[key]) + (name === "created" ? "" : " (" + since(j[key], j.createdAt) + ")") : "not yet"))),
            ...rows.map(([label, o]) => h("div", { class: "note" }, `${label} #${o.sequence}: ${o.attempts} attempt(s)` + (o.lastError ? ", last error: " + o.lastError : "")
              + (o.deadLetteredAt ? `, dead-lettered (dead letter #${o.deadLetterId ?? "?"})` : "") + (o.claimedBy && !o.publishedAt ? ", claimed by " + o.claimedBy : "")))));
        }
        $("find").onsubmit = (e) => { e.preventDefault(); const id = $("orderId").value; history.replaceState(null, "", "?order=" + encodeURIComponent(id.trim())); showOrder(id); };
        const wanted = new URLSearchParams(location.search).get("order");
        if (wanted) { $("orderId").value = wanted; showOrder(wanted); }
        fetch("/ui/api/snapshot").then((r) => r.json()).then(render).catch(() => {});
        const events = new EventSource("/ui/api/events");
        let received = 0;
        events.addEventListener("snapshot", (e) => { document.body.dataset.events = ++received; render(JSON.parse(e.data)); });
        events.onopen = () => $("conn").classList.add("live");
        events.onerror = () => { $("conn").classList.remove("live"); $("connText").textContent = "reconnecting…"; };
        </script>
        </body>
        </html>
        """#
}
