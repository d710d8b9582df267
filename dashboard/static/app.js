// Encore dashboard: fetches /api/dashboard/<name> and draws Plotly charts.
// Every chart element gets data-points=<number of points drawn>; body gets data-ready when done.
"use strict";

const main = document.getElementById("main");
const params = new URLSearchParams(location.search);
const LAYOUT = { margin: { t: 10, r: 10, b: 40, l: 50 }, paper_bgcolor: "#fff", plot_bgcolor: "#fff" };
const CONFIG = { displayModeBar: false, responsive: true };

async function get(name, query = {}) {
  const url = `/api/dashboard/${name}?` + new URLSearchParams(query);
  const response = await fetch(url);
  const body = await response.json();
  if (!response.ok) throw new Error(`${name}: ${body.error || response.status}`);
  return body;
}

function section(title, id, extraClass = "chart") {
  const s = document.createElement("section");
  if (extraClass === "wide") s.className = "wide";  // a table that needs the page's width
  s.innerHTML = `<h2>${title}</h2><div id="${id}" class="${extraClass === "wide" ? "profile" : extraClass}"></div>`;
  main.appendChild(s);
  return document.getElementById(id);
}

function plot(el, traces, layout = {}) {
  const points = traces.reduce((n, t) => n + (t.z ? t.z.flat().filter(v => v > 0).length : (t.x || t.y || []).length), 0);
  el.dataset.points = points;
  if (points === 0) {
    el.innerHTML = '<div class="empty">no data yet</div>';
    return;
  }
  Plotly.newPlot(el, traces, { ...LAYOUT, ...layout }, CONFIG);
}

function heatmap(el, data) {
  plot(el, [{ type: "heatmap", z: data.plays, x: data.hours, y: data.weekdays, colorscale: "YlGnBu" }],
       { xaxis: { title: "local hour" } });
}

function activity(el, data) {
  const traces = Object.entries(data.series).map(([name, ys]) => ({ type: "scatter", mode: "lines", name, x: data.hours, y: ys }));
  plot(el, traces, { xaxis: { title: "local hour" }, yaxis: { title: "plays" } });
}

async function opsView() {
  const jobs = [
    ["Throughput (events ingested per second, 10 s buckets)", "throughput", async el => {
      const rows = await get("throughput");
      plot(el, [{ type: "scatter", mode: "lines+markers", x: rows.map(r => r.at), y: rows.map(r => r.events_per_s) }]);
    }],
    ["Recommendation quality by policy", "quality", async el => {
      const rows = await get("recommendation_rates");
      const metrics = ["play_rate", "completion_rate", "skip_rate", "like_rate"];
      plot(el, metrics.map(m => ({ type: "bar", name: m.replace("_", " "), x: rows.map(r => r.policy), y: rows.map(r => r[m]) })),
           { barmode: "group", yaxis: { tickformat: ".0%" } });
    }],
    ["Leaderboard (global karma)", "leaderboard", async el => {
      const rows = (await get("leaderboard")).reverse();
      plot(el, [{ type: "bar", orientation: "h", x: rows.map(r => r.score), y: rows.map(r => `#${r.rank} ${r.user_id}`) }],
           { margin: { ...LAYOUT.margin, l: 110 } });
    }],
    ["Leaderboard history (today's top 5)", "leaderboard_history", async el => {
      const data = await get("leaderboard_history");
      plot(el, Object.entries(data.series).map(([user, s]) => ({ type: "scatter", mode: "lines+markers", name: user, x: s.at, y: s.score })));
    }],
    ["Rising artists (completions, last 6 h of data vs the 6 h before)", "rising", async el => {
      const rows = await get("rising_artists");
      plot(el, [{ type: "bar", x: rows.map(r => r.artist_id), y: rows.map(r => r.growth) }]);
    }],
    ["Top tracks (completions, last 24 h of data)", "top_tracks", async el => {
      const rows = await get("top_tracks");
      plot(el, [{ type: "bar", x: rows.map(r => `${r.track_id} (${r.genre})`), y: rows.map(r => r.completions) }]);
    }],
    ["Listening heatmap (all listeners)", "heatmap", async el => heatmap(el, await get("heatmap"))],
    ["Activity over the day", "activity", async el => activity(el, await get("activity"))],
  ];
  await run(jobs);
}

async function listenerView() {
  let user = params.get("user");
  if (!user) {
    const listeners = await get("listeners");
    if (!listeners.length) { main.innerHTML = '<section class="empty">no listeners yet: run the simulator (make demo)</section>'; return finish(); }
    user = listeners[0];
  }
  const pick = document.createElement("section");
  pick.innerHTML = `<h2>Listener ${user}</h2><div id="picker"></div>`;
  main.appendChild(pick);
  get("listeners").then(ls => {
    document.getElementById("picker").innerHTML = "Others: " + ls.slice(0, 10).map(u => `<a href="?user=${encodeURIComponent(u)}">${u}</a>`).join(" · ");
  });
  const jobs = [
    ["Karma, rank and badges", "profile", async el => {
      const p = await get("profile", { user });
      const badges = p.achievements.map(a => `<li class="${a.unlocked ? "badge-on" : "badge-off"}">${a.unlocked ? "★" : "☆"} ${a.title}
        <progress max="${a.target}" value="${a.progress}"></progress> ${a.progress}/${a.target}</li>`).join("");
      const around = p.around.map(r => `<tr class="${r.user_id === user ? "me" : ""}"><td>#${r.rank}</td><td>${r.user_id}</td><td>${r.score}</td></tr>`).join("");
      el.innerHTML = `<div class="card">
        <div class="stat"><b>${p.karma}</b>karma</div><div class="stat"><b>${p.tier || "-"}</b>tier</div>
        <div class="stat"><b>${p.rank ? "#" + p.rank : "-"}</b>global rank</div>
        <div class="stat"><b>${p.streak}</b>day streak (best ${p.best_streak})</div></div>
        <p>Avatar: ${p.avatar_items.map(a => `<span class="avatar">${a}</span>`).join("") || "-"}</p>
        <ul class="badges">${badges}</ul><table>${around}</table>`;
      el.dataset.points = p.achievements.length + p.around.length;
    }, "profile"],
    ["Karma progression (listener's time)", "karma", async el => {
      const rows = await get("karma", { user });
      plot(el, [{ type: "scatter", mode: "lines", line: { shape: "hv" }, x: rows.map(r => r.at), y: rows.map(r => r.karma) }]);
    }],
    ["Listening heatmap", "heatmap", async el => heatmap(el, await get("heatmap", { user }))],
    ["Artist connections (linked by co-listening)", "graph", async el => {
      // positions and communities come laid out by the server (force layout, Louvain communities)
      const g = await get("artist_graph", { user });
      const n = g.nodes.length;
      const pos = Object.fromEntries(g.nodes.map(node => [node.id, [node.x, node.y]]));
      const maxJ = Math.max(1e-9, ...g.edges.map(e => e.jaccard));
      const edges = g.edges.map(e => ({ type: "scatter", mode: "lines", hoverinfo: "skip", showlegend: false,
        x: [pos[e.source][0], pos[e.target][0]], y: [pos[e.source][1], pos[e.target][1]],
        line: { width: 0.5 + 4 * e.jaccard / maxJ, color: "#9ab" } }));
      const nodes = { type: "scatter", mode: "markers+text", showlegend: false, text: g.nodes.map(x => x.id), textposition: "top center",
        x: g.nodes.map(x => pos[x.id][0]), y: g.nodes.map(x => pos[x.id][1]),
        hovertext: g.nodes.map(x => `${x.id}: ${x.plays} finished plays, community ${x.community + 1}`), hoverinfo: "text",
        marker: { size: g.nodes.map(x => 10 + 3 * Math.sqrt(x.plays)), color: g.nodes.map(x => x.community), colorscale: "Portland" } };
      plot(el, n ? [...edges, nodes] : [], { xaxis: { visible: false }, yaxis: { visible: false } });
      el.dataset.points = n;
    }],
    ["Activity over the day", "activity", async el => activity(el, await get("activity", { user }))],
    ["The catalogue by sound (PCA of audio features; ★ = finished by this listener)", "trackmap", async el => {
      const m = await get("track_map", { user });
      const genres = [...new Set(m.tracks.map(t => t.genre))].sort();
      const traces = genres.map(g => {
        const ts = m.tracks.filter(t => t.genre === g);
        return { type: "scattergl", mode: "markers", name: g, x: ts.map(t => t.x), y: ts.map(t => t.y),
          text: ts.map(t => t.id), hoverinfo: "text+name", marker: { size: 4, opacity: 0.5 } };
      });
      const mine = m.tracks.filter(t => t.finished);
      traces.push({ type: "scatter", mode: "markers", name: "finished", x: mine.map(t => t.x), y: mine.map(t => t.y),
        text: mine.map(t => t.id), marker: { symbol: "star", size: 10, color: "#111" } });
      const ev = m.explained_variance || [0, 0];
      plot(el, traces, { xaxis: { title: `PC1 (${(100 * ev[0]).toFixed(0)}% of variance)` },
                         yaxis: { title: `PC2 (${(100 * ev[1]).toFixed(0)}%)` } });
      el.dataset.points = m.tracks.length;
    }],
    ["Latest slate, and why (top contributions: feature value × learned weight)", "why", async el => {
      const s = await get("latest_slate", { user });
      const audio = a => Object.entries(a).map(([k, v]) => `${k} ${num(v, 2)}`).join(", ");
      const why = w => w.map(c => `<span class="${c.value >= 0 ? "up" : "down"}">${c.feature} ${c.value >= 0 ? "+" : ""}${num(c.value, 2)}</span>`).join(" ");
      const rows = s.items.map(i => `<tr><td>${i.position + 1}</td><td>${i.track_id}</td><td>${i.genre || "-"}</td><td>${i.source}</td>
        <td>${i.explanation}</td><td>${why(i.why) || "-"}</td><td class="small">${audio(i.audio)}</td></tr>`).join("");
      el.innerHTML = s.items.length ? `<p>${s.policy_id} slate ${s.rec_id} at ${s.created_at}</p><table class="results">
        <tr><th>#</th><th>track</th><th>genre</th><th>source</th><th>explanation</th><th>why</th><th>sound</th></tr>${rows}</table>`
        : "<p>no slate for this listener yet</p>";
      el.dataset.points = s.items.length;
    }, "wide"],
    ["How they listen (session clusters, learned online)", "behaviour", async el => {
      const b = await get("behaviour", { user });
      const me = b.listener && b.listener.behaviour_cluster;
      const rows = b.clusters.map(c => `<tr class="${c.cluster === me ? "me" : ""}"><td>${c.cluster}</td><td>${c.sessions}</td><td>${c.describe}</td>
        <td>${num(c.centre.skip_ratio, 2)}</td><td>${num(c.centre.replay_ratio, 2)}</td><td>${num(c.centre.genre_spread, 2)}</td></tr>`).join("");
      const l = b.listener || {};
      el.innerHTML = `<p>${user}: ${l.behaviour || "not clustered yet"}${l.taste_shifts ? ` — taste shift flagged ${l.taste_shifts}×` : ""}
        (${b.taste_shifts} taste shifts flagged on this worker)</p>
        <table class="results"><tr><th>cluster</th><th>sessions</th><th>in a few words</th><th>skips</th><th>replays</th><th>genre spread</th></tr>${rows}</table>`;
      el.dataset.points = b.clusters.filter(c => c.sessions > 0).length;
    }, "wide"],
  ];
  await run(jobs);
}

function pct(x) { return x === null || x === undefined || Number.isNaN(x) ? "-" : (x >= 0 ? "+" : "") + (100 * x).toFixed(1) + "%"; }
function num(x, d = 3) { return x === null || x === undefined || Number.isNaN(x) ? "-" : Number(x).toPrecision(d); }

async function experimentsView() {
  const seen = await get("experiments");
  const names = [...new Set(seen.map(r => r.experiment))];
  const name = params.get("name") || names[0];
  const pick = document.createElement("section");
  pick.innerHTML = `<h2>Experiment ${name || "-"}</h2><p>${names.map(n => `<a href="?name=${encodeURIComponent(n)}">${n}</a>`).join(" · ") ||
    "no experiment has exposed anyone yet: start one (python -m experiments start NAME)"}</p>`;
  main.appendChild(pick);
  if (!name) return finish();
  let a;
  try { a = await get("experiment", { name, churn_days: params.get("churn_days") || 3 }); } catch (err) {
    pick.insertAdjacentHTML("beforeend", `<div class="error" data-error="${err.message}">${err.message}</div>`);
    return finish();
  }
  const jobs = [
    ["Allocation and verdict", "allocation", async el => {
      const arms = Object.entries(a.arms).map(([k, v]) => `<div class="stat"><b>${v}</b>${k}${k === a.control ? " (control)" : ""}</div>`).join("");
      el.innerHTML = `<div class="card">${arms}</div>
        <p class="${a.srm.mismatch ? "error" : ""}">Sample-ratio check: chi-square p = ${num(a.srm.p_value)} —
        ${a.srm.mismatch ? "MISMATCH: the split is not as configured; do not read the results" : "the split is as configured"}</p>
        <pre class="verdict">${a.verdict}</pre>`;
      el.dataset.points = Object.keys(a.arms).length;
    }, "profile"],
    ["Metrics (fixed horizon; p adjusted with Holm)", "metrics", async el => {
      const rows = a.results.map(r => `<tr class="${(r.p_adjusted ?? r.p_value) < a.alpha ? "me" : ""}"><td>${r.arm}</td><td>${r.metric}</td><td>${r.test}</td>
        <td>${num(r.control)}</td><td>${num(r.treatment)}</td><td>${pct(r.lift)}</td><td>[${pct(r.lift_low)}, ${pct(r.lift_high)}]</td>
        <td>${num(r.p_value)}</td><td>${num(r.p_adjusted)}</td></tr>`).join("");
      const seq = a.sequential.map(r => `<tr><td>${r.arm}</td><td>${r.metric}</td><td>[${pct(r.lift_low)}, ${pct(r.lift_high)}]</td><td>${num(r.p_value)}</td></tr>`).join("");
      el.innerHTML = `<table class="results"><tr><th>arm</th><th>metric</th><th>test</th><th>${a.control}</th><th>treatment</th><th>lift</th><th>95% CI</th><th>p</th><th>p adj.</th></tr>${rows}</table>
        <h3>Always valid (mSPRT): safe to read at any time</h3><table class="results"><tr><th>arm</th><th>metric</th><th>lift CI</th><th>p</th></tr>${seq}</table>`;
      el.dataset.points = a.results.length;
    }, "profile"],
    ["Retention (Kaplan–Meier, days since exposure)", "retention", async el => {
      const traces = [];
      const drawn = new Set();
      for (const s of Object.values(a.survival)) {
        for (const [arm, c] of Object.entries(s.curves)) {
          if (drawn.has(arm)) continue;
          drawn.add(arm);
          traces.push({ type: "scatter", mode: "lines", line: { shape: "hv" }, name: arm, x: c.timeline, y: c.survival });
        }
      }
      plot(el, traces, { xaxis: { title: "days since first exposure" }, yaxis: { title: "still active", range: [0, 1.02] } });
    }],
  ];
  await run(jobs);
}

async function run(jobs) {
  await Promise.all(jobs.map(async ([title, id, draw, cls]) => {
    const el = section(title, id, cls === "profile" || cls === "wide" ? cls : "chart");
    try { await draw(el); } catch (err) { el.innerHTML = `<div class="error">${err.message}</div>`; el.dataset.error = err.message; console.error(err); }
  }));
  finish();
}

function finish() { document.body.dataset.ready = "1"; }

({ listener: listenerView, experiments: experimentsView }[document.body.dataset.view] || opsView)();
