// The entrance big screen.  Everything comes from GET /api/v1/display (server/display.py),
// then live from /api/v1/events (Server-Sent Events): a `sales` event carries today's
// figures and the latest sales; a `market` event (a special, a rapid test, a price or the
// catalogue changed, by any path: server/events.py) makes the screen fetch /api/v1/display
// again; so does a special starting or ending, and every minute.  The stream reconnects by itself
// when the server comes back.  Text from the server only ever goes in as text
// (textContent): a stall named <script> stays a name.
"use strict";

const I18N = {
  en: {
    screen: "Market board", total: "Sales today", count: "Transactions", avg: "Average sale",
    stalls: "Stalls trading", passRate: "Rapid tests passed", specialsNow: "Specials now",
    specials: "Today's specials", noSpecials: "No specials today", inspections: "Pesticide rapid tests",
    inspectionsNote: "today", batches: "Batches", passed: "Passed", failed: "Failed", rate: "Pass rate",
    noTests: "No tests yet today", trend: "Sales by hour", trendNote: "amount per hour",
    seriesToday: "Today", seriesYesterday: "Yesterday", seriesLastWeek: "Same day last week",
    prices: "Prices of the main items", item: "Item", trendDays: "Average price, recent days",
    avgPrice: "Average", dod: "Day on day", wow: "Week on week", risers: "Risers", fallers: "Fallers",
    ranking: "Stall ranking", week: "This week", month: "This month", categories: "Hot categories",
    items: "Top items", weight: "Sold", amount: "Amount (CNY)", recent: "Live sales",
    live: "live", offline: "offline", list: ", ", special: "Special", regular: "Regular",
    until: time => `until ${time}`, from: time => `from ${time}`, batch: "batch", inhibition: "inhibition",
    fail: "failed", pass: "passed", blocked: "blocked for sale", retested: "passed a retest",
    vsLastWeek: pct => `${pct} vs same time last week`, more: n => `${n} more`, days: n => `last ${n} days`,
    otherCategory: "Other", noMovers: "Not enough sales yet",
    tested: (n, b) => `${n} ${n === 1 ? "test" : "tests"} of ${b} ${b === 1 ? "batch" : "batches"}`,
    sales: n => `${n} ${n === 1 ? "sale" : "sales"}`, pieces: n => `${n} ${n === 1 ? "pc" : "pcs"}`,
    unit: { kg: "/kg", "500g": "/500 g", piece: "/pc" },
  },
  zh: {
    live: "实时", offline: "离线", list: "、", special: "特价", regular: "原价",
    until: time => `至 ${time}`, from: time => `${time} 开始`, batch: "批次", inhibition: "抑制率",
    fail: "不合格", pass: "合格", blocked: "已禁售", retested: "复检合格",
    vsLastWeek: pct => `较上周同日同时段 ${pct}`, more: n => `另有 ${n} 项`, days: n => `近${n}日`,
    otherCategory: "其他", noMovers: "成交尚少",
    tested: (n, b) => `${b} 批次，共检测 ${n} 次`,
    sales: n => `${n}笔`, pieces: n => `${n}件`,
    unit: { kg: "元/kg", "500g": "元/500g", piece: "元/件" },
  },
};
const lang = new URLSearchParams(location.search).get("lang") === "en" ? "en" : "zh";
const L = I18N[lang];
const t = (k, fallback) => (L[k] !== undefined ? L[k] : fallback);
// The English name where the server has one (catalogue name_en, or the stall's line name_en).
const named = (zh, en) => (lang === "en" && en) || zh;
if (lang === "en") {
  document.documentElement.lang = "en";
  document.title = document.title.replace("数据大屏", L.screen);
  document.querySelectorAll("[data-i18n]").forEach(el => { el.textContent = t(el.dataset.i18n, el.textContent); });
}
const tz = document.body.dataset.tz || undefined;
const $ = id => document.getElementById(id);

// ---- formatting ----------------------------------------------------------------------------
const fen2 = fen => `${Math.floor(Math.abs(fen) / 100).toLocaleString("zh-CN")}.${String(Math.abs(fen) % 100).padStart(2, "0")}`;
const yuan = fen => (fen < 0 ? "-" : "") + "￥" + fen2(fen);
// A price in its legal unit (元/kg, 元/500g, per piece): never 斤.
const unitPrice = (fen, unit) => (lang === "en" ? `¥${fen2(fen)}${L.unit[unit] || ""}` : `${fen2(fen)}${L.unit[unit] || ""}`);
const sold = it => [it.weight_g ? (it.weight_g / 1000).toFixed(2) + " kg" : "",
  it.quantity ? L.pieces(it.quantity) : ""].filter(Boolean).join(" + ");
const hhmm = iso => iso.slice(11, 16);  // the server writes market time: shown as it is
const pct = v => (v === null || v === undefined ? "—" : `${v > 0 ? "+" : v < 0 ? "−" : "±"}${Math.abs(v).toFixed(1)}%`);
const trendClass = v => (v > 0 ? "up" : v < 0 ? "down" : "flat");
const stallText = (id, name) => (name ? `${id} ${name}` : id);

// An element with its properties and children; strings become text nodes, never markup.
function h(tag, props, ...kids) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "style") el.style.cssText = v;
    else el.setAttribute(k, v);
  }
  for (const kid of kids.flat()) if (kid !== null && kid !== undefined && kid !== false) el.append(kid);
  return el;
}
function fill(el, rows) { el.replaceChildren(...rows); }

// Drop the last rows of a list until it fits its box, and say how many of `total` are not
// shown (no marker without `total`): the screen never scrolls and never cuts a row in half.
function fit(list, total) {
  const over = () => list.scrollHeight > list.clientHeight + 1;
  while (list.children.length && over()) list.lastElementChild.remove();
  const hidden = () => total - list.querySelectorAll(":scope > li:not(.more)").length;
  if (total === undefined || hidden() <= 0) return;
  const more = h("li", { class: "more" }, L.more(hidden()));
  list.append(more);
  while (list.children.length > 1 && over()) { more.previousElementSibling.remove(); more.textContent = L.more(hidden()); }
  if (over()) more.remove();
}

// ---- charts (uPlot, vendored in /static/vendor/uplot) -------------------------------------
const charts = { hours: null, sparks: {} };
window.display = { charts, data: null };  // what is drawn, for a look from the console or a test
const axisStyle = { stroke: "#8fb0d0", grid: { stroke: "#15406a", width: 1 }, ticks: { show: false },
  font: "13px sans-serif" };

function hoursChart(today, compare) {
  const box = $("hours-chart");
  const all = [today.hours, compare.yesterday.hours, compare.last_week.hours].flat().map(x => x.hour);
  const first = Math.min(6, ...all), last = Math.max(20, ...all);
  const xs = [];
  for (let x = first; x <= last; x++) xs.push(x);
  const series = hours => { const by = Object.fromEntries(hours.map(x => [x.hour, x.total_fen / 100])); return xs.map(x => by[x] ?? null); };
  const todayYuan = xs.map(x => { const m = today.hours.find(y => y.hour === x); return m ? m.total_fen / 100 : 0; });
  const data = [xs, todayYuan, series(compare.yesterday.hours), series(compare.last_week.hours)];
  const size = { width: Math.max(100, box.clientWidth), height: Math.max(60, box.clientHeight) };
  if (charts.hours && charts.hours.width === size.width && charts.hours.height === size.height) {
    charts.hours.setData(data);
    return;
  }
  if (charts.hours) charts.hours.destroy();
  const px = parseFloat(getComputedStyle(document.documentElement).fontSize);
  charts.hours = new uPlot({
    ...size, legend: { show: false }, cursor: { show: false }, padding: [8, 8, 0, 0],
    scales: { x: { time: false, range: [first - 0.6, last + 0.6] }, y: { range: (u, lo, hi) => [0, Math.max(1, hi) * 1.1] } },
    axes: [{ ...axisStyle, font: `${Math.round(px * 0.8)}px sans-serif`, values: (u, v) => v.map(x => (Number.isInteger(x) ? `${x}` : "")), incrs: [1, 2] },
      { ...axisStyle, font: `${Math.round(px * 0.8)}px sans-serif`, size: px * 4, values: (u, v) => v.map(x => `￥${x.toLocaleString("zh-CN")}`) }],
    series: [{}, { label: "today", stroke: "#3aa0ff", fill: "rgba(58,160,255,.75)", width: 0,
      paths: uPlot.paths.bars({ size: [0.6, 60] }), points: { show: false } },
    { label: "yesterday", stroke: "#ffc53d", width: 2, dash: [6, 4], points: { show: false }, spanGaps: false },
    { label: "last week", stroke: "#b37feb", width: 2, points: { show: false }, spanGaps: false }],
  }, data, box);
}

function sparkline(box, prices, up) {
  const xs = prices.map((_, i) => i);
  const ys = prices.map(p => (p === null ? null : p / 100));
  return new uPlot({
    width: Math.max(40, box.clientWidth), height: Math.max(16, box.clientHeight), legend: { show: false },
    cursor: { show: false }, padding: [4, 2, 4, 2], axes: [{ show: false }, { show: false }],
    scales: { x: { time: false } },
    series: [{}, { stroke: up ? "#ff7875" : "#73d13d", width: 2, spanGaps: true, points: { show: true, size: 3 } }],
  }, [xs, ys], box);
}

// ---- panels ---------------------------------------------------------------------------------
function renderKpis(today, data) {
  $("total").textContent = yuan(today.total_fen);
  $("count").textContent = today.sales;
  $("avg").textContent = yuan(today.sales ? Math.round(today.total_fen / today.sales) : 0);
  $("stalls").textContent = today.ranking.length;
  // Against the same weekday a week before, up to this hour of the market's day.
  const hour = Number(new Intl.DateTimeFormat("en-GB", { timeZone: tz, hour: "numeric", hourCycle: "h23" }).format(new Date()));
  const before = data.compare.last_week.hours.filter(x => x.hour <= hour).reduce((s, x) => s + x.total_fen, 0);
  const change = before ? Math.round((today.total_fen - before) * 1000 / before) / 10 : null;
  const sub = $("total-change");
  sub.textContent = change === null ? "" : L.vsLastWeek ? L.vsLastWeek(pct(change)) : "";
  sub.className = "sub " + (change === null ? "" : trendClass(change));
}

function renderRanking(today) {
  const top = today.ranking.length ? today.ranking[0].total_fen : 1;
  fill($("ranking"), today.ranking.slice(0, 12).map((r, i) => h("li", { "data-stall": r.stall_id },
    h("span", { class: "pos" }, String(i + 1)), h("span", { class: "name" }, stallText(r.stall_id, r.name)),
    h("span", { class: "num" }, L.sales(r.sales)), h("span", { class: "amt" }, yuan(r.total_fen)),
    h("div", { class: "bar", style: `width:${Math.max(2, 100 * r.total_fen / Math.max(1, top))}%` }))));
  fit($("ranking"), today.ranking.length);
}

function renderItems(today) {
  fill($("items").querySelector("tbody"), today.items.map(it => h("tr", { "data-plu": it.plu },
    h("td", {}, named(it.name, it.name_en)), h("td", {}, sold(it)), h("td", {}, yuan(it.amount_fen)))));
  const rows = $("items").querySelectorAll("tbody tr");
  const box = $("items-panel");
  for (let i = rows.length - 1; i >= 0 && box.scrollHeight > box.clientHeight + 1; i--) rows[i].remove();
}

function renderHours(today, compare) {
  const sum = hours => hours.reduce((s, x) => s + x.total_fen, 0);
  $("sum-today").textContent = yuan(today.total_fen);
  $("sum-yesterday").textContent = yuan(sum(compare.yesterday.hours));
  $("sum-lastweek").textContent = yuan(sum(compare.last_week.hours));
  hoursChart(today, compare);
}

function renderToday(today, data) {
  renderKpis(today, data);
  renderRanking(today);
  renderItems(today);
  renderHours(today, data.compare);
}

function specialRow(p, later, day) {
  // Until a time today, or a date and time (both in market time, as the server writes them).
  const ends = p.ends_at.slice(0, 10) === day ? hhmm(p.ends_at) : `${p.ends_at.slice(5, 10)} ${hhmm(p.ends_at)}`;
  const when = later ? L.from(hhmm(p.starts_at)) : L.until(ends);
  return h("li", { class: later ? "later" : "", "data-special": p.id },
    h("div", { class: "item name" }, h("span", { class: later ? "tag later" : "tag" }, L.special), named(p.name, p.name_en)),
    h("div", { class: "price" }, unitPrice(p.special_price_fen, p.price_unit)),
    h("div", { class: "stall name" }, [stallText(p.stall_id, p.stall_name), p.title ? ` · ${p.title}` : "", ` · ${when}`].join("")),
    h("div", { class: "regular" }, p.regular_price_fen === null ? "" : [`${L.regular} `, h("s", {}, unitPrice(p.regular_price_fen, p.price_unit))]));
}

function renderSpecials(now, later, day) {
  $("specials-empty").hidden = now.length + later.length > 0;
  fill($("specials"), [...now.map(p => specialRow(p, false, day)), ...later.map(p => specialRow(p, true, day))]);
  $("kpi-specials").textContent = now.length;
  fit($("specials"), now.length + later.length);
}

function testDetail(r) {
  return [`${L.batch} ${r.batch_code}`, r.inhibition_percent === null ? "" : `${L.inhibition} ${r.inhibition_percent.toFixed(1)}%`,
    hhmm(r.tested_at), r.method].filter(Boolean).join(" · ");
}

function renderInspections(s) {
  $("insp-batches").textContent = s.batches;
  $("insp-passed").textContent = s.passed;
  $("insp-failed").textContent = s.failed;
  const rate = s.pass_rate_percent === null ? "—" : `${s.pass_rate_percent.toFixed(1)}%`;
  $("insp-rate").textContent = rate;
  $("kpi-pass").textContent = rate;
  $("kpi-pass-sub").textContent = s.batches ? L.tested(s.tests, s.batches) : "";
  $("insp-empty").hidden = s.tests > 0;
  fill($("insp-failed-list"), s.failed_batches.map(r => h("li", { class: r.blocking ? "" : "retested", "data-batch": r.batch_code },
    h("div", { class: "head" }, h("span", { class: "badge fail" }, L.fail), h("span", { class: "name" }, named(r.name, r.name_en) || r.plu),
      h("span", { class: "name" }, stallText(r.stall_id, r.stall_name)),
      h("span", { class: r.blocking ? "badge blocked" : "badge retested" }, r.blocking ? L.blocked : L.retested)),
    h("div", { class: "detail" }, testDetail(r)))));
  fit($("insp-failed-list"), s.failed_batches.length);
  fill($("insp-latest"), s.latest.map(r => h("li", { "data-batch": r.batch_code },
    h("span", { class: "time" }, hhmm(r.tested_at)), h("span", { class: "name" }, stallText(r.stall_id, r.stall_name)),
    h("span", { class: "name" }, `${named(r.name, r.name_en) || r.plu} · ${r.batch_code}`),
    h("span", { class: `badge ${r.result}` }, L[r.result]))));
  fit($("insp-latest"));
}

function renderPrices(trend, latest, movers) {
  $("prices-note").textContent = L.days(trend.days.length);
  for (const u of Object.values(charts.sparks)) u.destroy();
  charts.sparks = {};
  const byPlu = Object.fromEntries(latest.map(r => [r.plu, r]));
  const tbody = $("main-items").querySelector("tbody");
  const boxes = [];
  fill(tbody, trend.items.map(it => {
    const r = byPlu[it.plu];
    const box = h("div", { class: "spark" });
    boxes.push([it, box]);
    return h("tr", { "data-plu": it.plu },
      h("td", { class: "name" }, named(it.name, it.name_en)),
      h("td", {}, box),
      h("td", {}, r && r.avg_price_fen !== null ? unitPrice(r.avg_price_fen, r.price_unit) : "—"),
      h("td", { class: r ? trendClass(r.dod_pct) : "" }, pct(r ? r.dod_pct : null)),
      h("td", { class: r ? trendClass(r.wow_pct) : "" }, pct(r ? r.wow_pct : null)));
  }));
  for (const [it, box] of boxes) {
    const known = it.prices.filter(p => p !== null);
    charts.sparks[it.plu] = sparkline(box, it.prices, known.length > 1 && known[known.length - 1] >= known[0]);
  }
  const moverRow = r => h("li", { "data-plu": r.plu }, h("span", { class: "name" }, named(r.name, r.name_en)),
    h("span", { class: "num" }, unitPrice(r.avg_price_fen, r.price_unit)), h("span", { class: `num ${trendClass(r.dod_pct)}` }, pct(r.dod_pct)));
  const none = () => [h("li", { class: "more" }, L.noMovers)];
  fill($("risers"), movers.risers.length ? movers.risers.map(moverRow) : none());
  fill($("fallers"), movers.fallers.length ? movers.fallers.map(moverRow) : none());
  fit($("risers"));
  fit($("fallers"));
}

function renderPeriods(ranking) {
  for (const period of ["week", "month"]) {
    const r = ranking[period];
    $(`${period}-label`).textContent = r.label;
    fill($(`ranking-${period}`), r.ranking.slice(0, 3).map(x => h("li", { "data-stall": x.stall_id },
      h("span", { class: "pos" }, String(x.rank)), h("span", { class: "name" }, stallText(x.stall_id, x.name)),
      h("span", { class: "amt" }, yuan(x.total_fen)))));
  }
}

function renderCategories(c) {
  fill($("categories"), c.categories.map(x => h("li", { "data-category": x.category ?? "" },
    h("div", { class: "row" }, h("span", { class: "name" }, x.category ?? L.otherCategory),
      h("span", { class: "amt" }, `${yuan(x.amount_fen)} · ${x.share_pct.toFixed(1)}%`)),
    h("div", { class: "share", style: `width:${Math.max(1, x.share_pct)}%` }))));
  fit($("categories"), c.categories.length);
}

function renderRecent(list, fresh) {
  fill($("recent"), list.map((s, i) => h("li", { class: i < fresh ? "fresh" : "" },
    h("span", { class: "time" }, s.sold_at.slice(11, 19)),
    h("span", { class: "name" }, stallText(s.stall_id, s.stall_name)),
    h("span", { class: "name" }, s.items.map((name, j) => named(name, (s.items_en || [])[j])).join(L.list || "、")),
    h("span", { class: "amt" }, yuan(s.total_fen)))));
  fit($("recent"));
}

function renderDate(day) {
  const date = new Date(`${day}T12:00:00Z`);
  $("today-date").textContent = date.toLocaleDateString(lang === "en" ? "en-GB" : "zh-CN",
    { timeZone: "UTC", year: "numeric", month: "long", day: "numeric", weekday: "long" });
}

function renderAll(d) {
  window.display.data = d;
  for (const r of d.today.ranking) stallNames[r.stall_id] = r.name;
  for (const s of d.recent) stallNames[s.stall_id] = s.stall_name;
  renderDate(d.day);
  renderPeriods(d.ranking);  // before the day's ranking fits the room they leave
  renderToday(d.today, d);
  renderSpecials(d.specials, d.specials_later, d.day);
  renderInspections(d.inspections);
  renderPrices(d.price_trend, d.main_items, d.movers);
  renderCategories(d.categories);
  renderRecent(d.recent, 0);
  if (d.next_change_at) refreshSoon(Math.max(0, Date.parse(d.next_change_at) - Date.now()) + 1000);
}

// ---- data and the live stream ---------------------------------------------------------------
const stallNames = {};
let refreshTimer = null, refreshAt = Infinity;

let liveSeq = 0, lastSales = null;  // the sales events seen, the latest one

async function refresh() {
  const seq = liveSeq;
  const r = await fetch("/api/v1/display");
  if (!r.ok) throw new Error(`/api/v1/display: ${r.status}`);
  renderAll(await r.json());
  // A sales event that came while this answer was on its way is newer than its day figures
  // (the answer may have been read before that sale was stored): put the event's back.
  if (liveSeq !== seq && lastSales) applySales(lastSales, 0);
}

// Fetch again in `ms` at the latest: an earlier request wins, a later one waits for it.
function refreshSoon(ms) {
  const at = Date.now() + ms;
  if (refreshTimer !== null && refreshAt <= at) return;
  clearTimeout(refreshTimer);
  refreshAt = at;
  refreshTimer = setTimeout(() => { refreshTimer = null; refreshAt = Infinity; refresh().catch(() => {}); },
    Math.min(ms, 2 ** 31 - 1));
}

function onSales(ev) {
  const d = JSON.parse(ev.data);
  liveSeq += 1;
  lastSales = d;
  if (!window.display.data) return;
  applySales(d, d.new);
  refreshSoon(15000);  // categories, prices, week and month follow, at most every 15 s
}

function applySales(d, fresh) {
  const data = window.display.data;
  for (const r of d.today.ranking) stallNames[r.stall_id] = r.name;
  if (d.today.day === data.today.day) {
    data.today = d.today;
    renderToday(d.today, data);
  } else {
    refreshSoon(0);  // a new market day: everything moves on
  }
  data.recent = d.recent.map(s => ({ ...s, stall_name: stallNames[s.stall_id] || "" }));
  renderRecent(data.recent, fresh);
}

function setLive(on) {
  $("live").className = on ? "live on" : "live off";
  $("live").textContent = on ? L.live || "实时" : L.offline || "离线";
}

let retry = 1000;
function connect() {
  const es = new EventSource("/api/v1/events");
  es.addEventListener("hello", () => { setLive(true); retry = 1000; refreshSoon(0); });
  es.addEventListener("sales", onSales);
  es.addEventListener("market", () => refreshSoon(200));
  es.onerror = () => {
    setLive(false);
    // The browser retries by itself after a dropped connection; after an answer it cannot
    // use (a proxy's error page while the server restarts) it gives up: start again.
    if (es.readyState === EventSource.CLOSED) {
      setTimeout(connect, retry);
      retry = Math.min(retry * 2, 30000);
    }
  };
}

function tick() {
  $("clock").textContent = new Date().toLocaleTimeString(lang === "en" ? "en-GB" : "zh-CN", { timeZone: tz, hour12: false });
}

let resized = null;
window.addEventListener("resize", () => {
  clearTimeout(resized);
  resized = setTimeout(() => { if (window.display.data) renderAll(window.display.data); }, 200);
});
tick();
setInterval(tick, 1000);
setInterval(() => refreshSoon(0), 60000);
refresh().catch(() => {});
connect();
