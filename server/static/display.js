// Big screen: figures from /api/v1/stats/today, then live from /api/v1/events (SSE).
"use strict";
const I18N = {
  en: { screen: "Market board", total: "Sales today", count: "Transactions", avg: "Average",
        stalls: "Stalls trading", ranking: "Stall ranking", trend: "Sales by hour", items: "Top items",
        item: "Item", weight: "Sold", amount: "Amount (CNY)", recent: "Live sales",
        live: "live", offline: "offline", list: ", ",
        sales: n => `${n} ${n === 1 ? "sale" : "sales"}`, pieces: n => `${n} ${n === 1 ? "pc" : "pcs"}` },
  zh: { live: "实时", offline: "离线", list: "、", sales: n => `${n}笔`, pieces: n => `${n}件` },
};
const lang = new URLSearchParams(location.search).get("lang") === "en" ? "en" : "zh";
const t = (k, fallback) => (I18N[lang] && I18N[lang][k]) || fallback;
const counted = (k, n) => I18N[lang][k](n);  // "41 sales" / "1 sale" / "41笔"
// The English name a stall sent with the line (name_en), where there is one.
const named = (zh, en) => (lang === "en" && en) || zh;
if (lang === "en") {
  document.documentElement.lang = "en";
  document.querySelectorAll("[data-i18n]").forEach(el => { el.textContent = t(el.dataset.i18n, el.textContent); });
}
const yuan = fen => "￥" + (Math.floor(fen / 100)).toLocaleString("zh-CN") + "." + String(fen % 100).padStart(2, "0");
const sold = it => [it.weight_g ? (it.weight_g / 1000).toFixed(2) + " kg" : "",
  it.quantity ? counted("pieces", it.quantity) : ""].filter(Boolean).join(" + ");
const tz = document.body.dataset.tz || undefined;
const $ = id => document.getElementById(id);
const esc = s => String(s).replace(/[&<>"']/g, c => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));

function renderToday(d) {
  $("total").textContent = yuan(d.total_fen);
  $("count").textContent = d.sales;
  $("avg").textContent = yuan(d.sales ? Math.round(d.total_fen / d.sales) : 0);
  $("stalls").textContent = d.ranking.length;
  const top = d.ranking.length ? d.ranking[0].total_fen : 1;
  $("ranking").innerHTML = d.ranking.slice(0, 10).map((r, i) =>
    `<li data-stall="${esc(r.stall_id)}"><span class="pos">${i + 1}</span><span>${esc(r.stall_id)} ${esc(r.name)}</span>` +
    `<span>${counted("sales", r.sales)}</span><span class="amt">${yuan(r.total_fen)}</span>` +
    `<div class="bar" style="width:${Math.max(2, 100 * r.total_fen / top)}%"></div></li>`).join("");
  const maxH = Math.max(1, ...d.hours.map(h => h.total_fen));
  const byHour = Object.fromEntries(d.hours.map(h => [h.hour, h]));
  let bars = "";
  const hs = d.hours.map(h => h.hour);
  for (let h = Math.min(5, ...hs); h <= Math.max(20, ...hs); h++) {
    const v = byHour[h] ? byHour[h].total_fen : 0;
    bars += `<div title="${h}:00 ${yuan(v)}" style="height:${100 * v / maxH}%"><span>${h}</span></div>`;
  }
  $("hours").innerHTML = bars;
  $("items").querySelector("tbody").innerHTML = d.items.map(it =>
    `<tr><td>${esc(named(it.name, it.name_en))}</td><td>${sold(it)}</td><td>${yuan(it.amount_fen)}</td></tr>`).join("");
}

function renderRecent(list, fresh) {
  $("recent").innerHTML = list.map((s, i) =>
    `<li class="${i < fresh ? "fresh" : ""}"><span>${esc(s.sold_at.slice(11, 19))}</span><span>${esc(s.stall_id)}</span>` +
    `<span>${esc(s.items.map((name, j) => named(name, (s.items_en || [])[j])).join(t("list", "、")))}</span>` +
    `<span class="amt">${yuan(s.total_fen)}</span></li>`).join("");
}

async function refresh() {
  const [today, recent] = await Promise.all([
    fetch("/api/v1/stats/today").then(r => r.json()),
    fetch("/api/v1/sales-recent").then(r => r.json()),
  ]);
  renderToday(today);
  renderRecent(recent, 0);
}

function connect() {
  const es = new EventSource("/api/v1/events");
  es.addEventListener("hello", () => { $("live").className = "live on"; $("live").textContent = t("live", "实时"); refresh(); });
  es.addEventListener("sales", ev => { const d = JSON.parse(ev.data); renderToday(d.today); renderRecent(d.recent, d.new); });
  es.onerror = () => { $("live").className = "live off"; $("live").textContent = t("offline", "离线"); };
}

setInterval(() => { $("clock").textContent = new Date().toLocaleString(lang === "en" ? "en-GB" : "zh-CN", { timeZone: tz }); }, 1000);
refresh().catch(() => {});
connect();
