// The Encore listener app: the public API with the listener's token, nothing else.
// Open /app/#token=<token> (`encore token USER` prints the link). Optional: &speed=N plays N× faster
// than real time (a simulated player: listened time = wall time × speed).
"use strict";

const params = new URLSearchParams(location.hash.slice(1));
if (params.get("token")) sessionStorage.setItem("encore-token", params.get("token"));
const TOKEN = sessionStorage.getItem("encore-token");
const SPEED = Number(params.get("speed") || 20);
const SESSION = "app-" + crypto.randomUUID().slice(0, 8);
const $ = (id) => document.getElementById(id);

function userOf(token) {  // display only: the server checks the token on every call
  try { return JSON.parse(atob(token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/"))).sub; }
  catch (e) { return null; }
}
const USER = TOKEN ? userOf(TOKEN) : null;

const state = { slate: null, tracks: {}, playing: null, slates: 0, profile: null, pending: null };

function notice(text, error = false) {
  const n = $("notice");
  n.hidden = !text;
  n.textContent = text || "";
  n.className = error ? "notice error" : "notice";
}

async function api(method, path, body) {
  const res = await fetch(path, {
    method, headers: { "Authorization": "Bearer " + TOKEN, "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const data = await res.json().catch(() => ({}));
  if (res.status === 401) notice("Your sign-in has expired or is not valid: open a fresh link (`encore token " + USER + "`).", true);
  return { status: res.status, data };
}

function context() {
  const now = new Date();
  return { device: "web", activity: $("activity").value, local_hour: now.getHours(),
           weekday: (now.getDay() + 6) % 7, timezone: Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC" };
}

// every action is one event on the pipeline
async function send(kind, extra = {}) {
  const event = { event_id: crypto.randomUUID(), user_id: USER, session_id: SESSION, kind,
                  occurred_at: new Date().toISOString(), context: context(), ...extra };
  const res = await api("POST", "/v1/events", event);
  if (res.status !== 202) notice(`The ${kind} was not accepted (${res.status}): ${res.data.error || ""}`, true);
  return event;
}

function about(item) {
  return { track_id: item.track_id, rec_id: state.slate.rec_id, position: item.position };
}

// --- slates -----------------------------------------------------------------------------------
async function nextSlate() {
  const request = await send("rec_request", { slate_size: 8 });
  state.pending = request.event_id;
  const deadline = Date.now() + 20000;
  while (Date.now() < deadline && state.pending === request.event_id) {
    const res = await api("GET", `/v1/recommendations/${encodeURIComponent(USER)}`);
    if (res.status === 200 && res.data.request_id === request.event_id) {
      await showSlate(res.data);
      return;
    }
    await new Promise((r) => setTimeout(r, 150));
  }
  if (state.pending === request.event_id) notice("No new slate yet: the recommender is busy or away. Try again in a moment.", true);
}

async function showSlate(slate) {
  const before = new Set((state.slate ? state.slate.items : []).map((i) => i.track_id));
  state.slate = slate;
  state.slates += 1;
  const missing = slate.items.map((i) => i.track_id).filter((t) => !state.tracks[t]);
  if (missing.length) {
    const res = await api("GET", `/v1/tracks?ids=${missing.map(encodeURIComponent).join(",")}`);
    for (const t of res.data.tracks || []) state.tracks[t.track_id] = t;
  }
  const body = $("slate").querySelector("tbody");
  body.innerHTML = "";
  for (const item of slate.items) {
    const t = state.tracks[item.track_id] || { artist_id: "?", genre: "?", duration_ms: 180000 };
    const row = body.insertRow();
    row.dataset.track = item.track_id;
    if (!before.has(item.track_id) && state.slates > 1) row.classList.add("fresh");
    row.insertCell().textContent = item.position + 1;
    const what = row.insertCell();
    what.innerHTML = `<b></b><br><small></small>`;
    what.querySelector("b").textContent = item.track_id;
    what.querySelector("small").textContent = `${t.artist_id} · ${t.genre} · ${clock(t.duration_ms)}`;
    const why = row.insertCell();
    why.innerHTML = `<span></span><br><small></small>`;
    why.querySelector("span").textContent = item.explanation;
    const features = (item.why_features || []).filter((f) => f !== "bias").slice(0, 3);
    why.querySelector("small").textContent = features.length ? "weighed most: " + features.join(", ").replace(/_/g, " ") : "";
    const actions = row.insertCell();
    for (const [label, act] of [["▶ Play", "play"], ["Like", "like"], ["Thumbs up", "thumbs_up"], ["Thumbs down", "thumbs_down"], ["+ Playlist", "playlist_add"]]) {
      const b = document.createElement("button");
      b.textContent = label;
      b.dataset.action = act;
      b.title = act.replace("_", " ");
      b.onclick = () => act === "play" ? play(item, t) : react(item, act, b);
      actions.appendChild(b);
    }
  }
  $("slate-box").dataset.recId = slate.rec_id;
  $("slate-box").dataset.slates = state.slates;
  $("slate-meta").textContent = `slate ${state.slates} · ${slate.policy_id}` + (slate.experiment_arm ? ` · ${slate.experiment_arm}` : "");
  document.body.dataset.ready = "1";
}

async function react(item, kind, button) {
  const extra = kind === "playlist_add" ? { playlist_id: "favourites" } : {};
  await send(kind, { ...about(item), ...extra });
  button.classList.add("on");
  if (kind === "thumbs_down") await nextSlate();  // less of that, now
  refreshProfile();
}

// --- the simulated player ---------------------------------------------------------------------
function clock(ms) {
  const s = Math.floor(ms / 1000);
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
}

async function play(item, track) {
  if (state.playing) await stop("skip");
  const duration = track.duration_ms;
  await send("play_start", { ...about(item), track_duration_ms: duration });
  state.playing = { item, duration, started: performance.now(), rec: state.slate.rec_id };
  $("now").textContent = `${item.track_id} — ${track.artist_id}`;
  $("skip").disabled = false;
  $("player").className = "player playing";
  for (const r of $("slate").querySelectorAll("tr")) r.classList.toggle("playing", r.dataset.track === item.track_id);
  state.playing.timer = setInterval(tick, 100);
}

function listened(p) {
  return Math.min(p.duration, Math.round((performance.now() - p.started) * SPEED));
}

function tick() {
  const p = state.playing;
  if (!p) return;
  const ms = listened(p);
  $("progress").value = ms / p.duration;
  $("clock").textContent = `${clock(ms)} / ${clock(p.duration)}`;
  if (ms >= p.duration) stop("play_end");
}

async function stop(kind) {
  const p = state.playing;
  if (!p) return;
  clearInterval(p.timer);
  state.playing = null;
  const ms = kind === "play_end" ? p.duration : listened(p);
  $("skip").disabled = true;
  $("player").className = "player idle";
  $("now").textContent = kind === "play_end" ? `Finished ${p.item.track_id}.` : `Skipped ${p.item.track_id} after ${clock(ms)}.`;
  await send(kind, { track_id: p.item.track_id, rec_id: p.rec, position: p.item.position, listened_ms: ms,
                     track_duration_ms: p.duration });
  refreshProfile();
  setTimeout(refreshJourney, 1000);
  await nextSlate();
}

// --- profile, avatar, board -------------------------------------------------------------------
async function refreshProfile() {
  const res = await api("GET", `/v1/users/${encodeURIComponent(USER)}/profile`);
  if (res.status === 404) return;  // nothing earned yet
  if (res.status !== 200) return;
  const p = res.data;
  state.profile = p;
  $("karma").textContent = p.karma;
  $("tier").textContent = p.tier || "–";
  $("streak").textContent = p.streak;
  $("rank").textContent = p.rank || "–";
  $("avatar").textContent = p.avatar || "no avatar";
  $("me").dataset.karma = p.karma;
  const box = $("avatars");
  const items = p.avatar_items.join(",");
  if (box.dataset.items !== items || box.dataset.worn !== String(p.avatar)) {
    box.dataset.items = items;
    box.dataset.worn = String(p.avatar);
    box.innerHTML = "";
    for (const item of p.avatar_items) {
      const b = document.createElement("button");
      b.textContent = item;
      b.dataset.item = item;
      b.className = item === p.avatar ? "on" : "";
      b.onclick = async () => {
        const r = await api("PUT", `/v1/users/${encodeURIComponent(USER)}/avatar`, { item });
        if (r.status !== 200) notice(r.data.error || "could not wear it", true);
        refreshProfile(); refreshBoard();
      };
      box.appendChild(b);
    }
  }
}

async function refreshBoard() {
  const res = await fetch(`/v1/leaderboards/global?n=10`).then((r) => r.json()).catch(() => null);
  if (!res || !res.entries) return;
  const body = $("board").querySelector("tbody");
  body.innerHTML = "";
  for (const e of res.entries) {
    const row = body.insertRow();
    if (e.user_id === USER) row.className = "me";
    row.insertCell().textContent = e.rank;
    row.insertCell().textContent = e.user_id + (e.avatar ? `  [${e.avatar}]` : "");
    row.insertCell().textContent = Math.round(e.score);
  }
}

// --- lists ------------------------------------------------------------------------------------
async function refreshLists(rebuild = false) {
  const res = await api(rebuild ? "POST" : "GET", `/v1/users/${encodeURIComponent(USER)}/lists`);
  if (res.status !== 200) return;
  state.lists = [];
  for (const name of ["daily_mix", "discovery_weekly", "artists_you_may_like", "hidden_gems"])
    for (const one of res.data.lists[name] || []) state.lists.push(one);
  const tabs = $("list-tabs");
  tabs.innerHTML = "";
  state.lists.forEach((one, n) => {
    const b = document.createElement("button");
    b.textContent = `${one.title} (${one.items.length})`;
    b.dataset.list = one.name;
    b.onclick = () => showList(n);
    tabs.appendChild(b);
  });
  $("lists-box").dataset.lists = state.lists.length;
  if (state.lists.length) showList(Math.min(state.shownList || 0, state.lists.length - 1));
}

function showList(n) {
  state.shownList = n;
  const one = state.lists[n];
  for (const [i, b] of [...$("list-tabs").children].entries()) b.className = i === n ? "on" : "";
  const body = $("list").querySelector("tbody");
  body.innerHTML = "";
  one.items.forEach((item, i) => {
    const row = body.insertRow();
    row.insertCell().textContent = i + 1;
    row.insertCell().textContent = item.id;
    row.insertCell().textContent = item.why;
  });
}

// --- journeys ---------------------------------------------------------------------------------
async function refreshJourney(method = "GET", body) {
  const res = await api(method, `/v1/users/${encodeURIComponent(USER)}/journey`, body);
  if (res.status !== 200) return;
  const select = $("journey-target");
  if (!select.options.length)
    for (const t of res.data.targets) select.add(new Option(t.replace(":", ": "), t));
  const ol = $("journey");
  ol.innerHTML = "";
  const j = res.data.journey;
  $("journey-box").dataset.position = j ? j.position : "";
  if (!j) return;
  j.steps.forEach((step, k) => {
    const li = document.createElement("li");
    li.textContent = `${step.track_id}: ${step.why}` + (k < j.position ? " ✓" : k === j.position ? "  ← now" : "");
    ol.appendChild(li);
  });
}

// --- friends ----------------------------------------------------------------------------------
async function refreshFriends() {
  const me = encodeURIComponent(USER);
  const [friends, board, feed, privacy] = await Promise.all([
    api("GET", `/v1/users/${me}/friends`), api("GET", `/v1/users/${me}/friends/board`),
    api("GET", `/v1/users/${me}/feed`), api("GET", `/v1/users/${me}/privacy`)]);
  if (friends.status === 200) {
    const ul = $("following");
    ul.innerHTML = "";
    for (const f of friends.data.following) {
      const li = document.createElement("li");
      li.textContent = f + " ";
      const b = document.createElement("button");
      b.textContent = "Unfollow";
      b.onclick = async () => { await send("unfollow_user", { friend_id: f }); setTimeout(refreshFriends, 800); };
      li.appendChild(b);
      ul.appendChild(li);
    }
    $("friends-box").dataset.following = friends.data.following.join(",");
  }
  if (board.status === 200) {
    const body = $("friends-board").querySelector("tbody");
    body.innerHTML = "";
    for (const e of board.data.entries) {
      const row = body.insertRow();
      if (e.user_id === USER) row.className = "me";
      row.insertCell().textContent = e.rank;
      row.insertCell().textContent = e.user_id + (e.avatar ? `  [${e.avatar}]` : "");
      row.insertCell().textContent = Math.round(e.score);
    }
  }
  if (feed.status === 200) {
    const ul = $("feed");
    ul.innerHTML = "";
    for (const item of feed.data.items.slice(0, 10)) {
      const li = document.createElement("li");
      li.textContent = item.kind === "like" ? `${item.user_id} liked ${item.track_id}`
        : `${item.user_id} unlocked ${item.achievement}`;
      ul.appendChild(li);
    }
  }
  if (privacy.status === 200)
    for (const sel of document.querySelectorAll("[data-privacy]")) sel.value = privacy.data[sel.dataset.privacy];
}

async function setPrivacy(event) {
  const res = await api("PUT", `/v1/users/${encodeURIComponent(USER)}/privacy`,
                        { [event.target.dataset.privacy]: event.target.value });
  if (res.status !== 200) notice(res.data.error || "not saved", true);
  else document.body.dataset.privacySaved = JSON.stringify(res.data);
}

async function offlinePack() {
  const mb = Number($("offline-mb").value);
  let res = await api("POST", `/v1/users/${encodeURIComponent(USER)}/offline`, { max_mb: mb, tracks: 50 });
  for (let n = 0; res.status === 202 && n < 30; n++) {  // being made: fetch it when it is there
    await new Promise((r) => setTimeout(r, 500));
    const again = await api("GET", `/v1/users/${encodeURIComponent(USER)}/offline/${res.data.rec_id}?max_mb=${mb}`);
    if (again.status === 200) res = { status: 201, data: again.data };
  }
  if (res.status !== 201) { notice(res.data.error || "no pack yet: try again", true); return; }
  const p = res.data;
  localStorage.setItem("encore-offline-pack", JSON.stringify(p));  // the device keeps it
  $("offline-info").textContent = `${p.items.length} tracks, ${(p.total_bytes / 1e6).toFixed(1)} MB `
    + `(of ${(p.max_bytes / 1e6).toFixed(0)}); plays count until ${p.valid_until.slice(0, 10)}`;
  $("offline-box").dataset.tracks = p.items.length;
}

async function forgetMe() {
  if (!confirm("Erase everything Encore holds about you? This cannot be undone.")) return;
  const res = await api("DELETE", `/v1/users/${encodeURIComponent(USER)}`);
  if (res.status === 202) {
    sessionStorage.removeItem("encore-token");
    notice("Your data is being erased from every store. You can close this page.");
    document.body.dataset.forgotten = "1";
  } else notice(res.data.error || "the erasure was not accepted", true);
}

async function main() {
  if (!TOKEN || !USER) {
    notice("Open this page with your link: `encore token YOUR_ID` prints it.", true);
    document.body.dataset.ready = "1";
    return;
  }
  $("who").textContent = USER;
  $("skip").onclick = () => stop("skip");
  $("forget").onclick = forgetMe;
  $("lists-refresh").onclick = () => refreshLists(true);
  $("offline-get").onclick = offlinePack;
  $("journey-start").onclick = async () => { await refreshJourney("POST", { target: $("journey-target").value }); await nextSlate(); };
  $("journey-stop").onclick = () => refreshJourney("DELETE");
  $("follow-form").onsubmit = async (e) => {
    e.preventDefault();
    const friend = $("follow-id").value.trim();
    if (friend && friend !== USER) await send("follow_user", { friend_id: friend });
    $("follow-id").value = "";
    setTimeout(refreshFriends, 800);
  };
  for (const sel of document.querySelectorAll("[data-privacy]")) sel.onchange = setPrivacy;
  await Promise.all([refreshProfile(), refreshBoard(), nextSlate(), refreshLists(), refreshFriends(), refreshJourney()]);
  setInterval(() => { refreshProfile(); refreshBoard(); }, 2000);
  setInterval(refreshFriends, 5000);
  setInterval(() => refreshLists(), 30000);
}

main();
