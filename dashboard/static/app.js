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
  s.innerHTML = `<h2>${title}</h2><div id="${id}" class="${extraClass}"></div>`;
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
      const g = await get("artist_graph", { user });
      const n = g.nodes.length;
      const pos = Object.fromEntries(g.nodes.map((node, i) => [node.id, [Math.cos(2 * Math.PI * i / n), Math.sin(2 * Math.PI * i / n)]]));
      const maxW = Math.max(1, ...g.edges.map(e => e.weight));
      const edges = g.edges.map(e => ({ type: "scatter", mode: "lines", hoverinfo: "skip", showlegend: false,
        x: [pos[e.source][0], pos[e.target][0]], y: [pos[e.source][1], pos[e.target][1]],
        line: { width: 1 + 5 * e.weight / maxW, color: "#9ab" } }));
      const nodes = { type: "scatter", mode: "markers+text", showlegend: false, text: g.nodes.map(x => x.id), textposition: "top center",
        x: g.nodes.map(x => pos[x.id][0]), y: g.nodes.map(x => pos[x.id][1]),
        marker: { size: g.nodes.map(x => 10 + 3 * Math.sqrt(x.plays)), color: "#2a6fdb" } };
      plot(el, n ? [...edges, nodes] : [], { xaxis: { visible: false }, yaxis: { visible: false } });
      el.dataset.points = n;
    }],
    ["Activity over the day", "activity", async el => activity(el, await get("activity", { user }))],
  ];
  await run(jobs);
}

async function run(jobs) {
  await Promise.all(jobs.map(async ([title, id, draw, cls]) => {
    const el = section(title, id, cls === "profile" ? "profile" : "chart");
    try { await draw(el); } catch (err) { el.innerHTML = `<div class="error">${err.message}</div>`; el.dataset.error = err.message; console.error(err); }
  }));
  finish();
}

function finish() { document.body.dataset.ready = "1"; }

(document.body.dataset.view === "listener" ? listenerView : opsView)();
