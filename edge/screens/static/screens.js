// Shared by /vendor and /customer: the live channel, money and weight as text, the
// language choice.  Every value from the stall goes into the page with textContent only.
"use strict";

const WM = (() => {
  const params = new URLSearchParams(location.search);
  const lang = ["zh", "en"].includes(params.get("lang")) ? params.get("lang") : "both";
  document.documentElement.lang = lang === "en" ? "en" : "zh-CN";
  document.documentElement.dataset.lang = lang;

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }

  // A Chinese and an English text, as the page's language asks (both: two lines).
  function bi(zh, en, cls) {
    const e = el("span", "bi" + (cls ? " " + cls : ""));
    if (lang !== "en") e.append(el("span", "zh", zh));
    if (lang !== "zh") e.append(el("span", "en", en));
    return e;
  }

  // The stall's messages are "中文 / English": one half, or both.
  function tr(text) {
    const at = String(text).indexOf(" / ");
    if (at < 0 || lang === "both") return String(text);
    return lang === "en" ? String(text).slice(at + 3) : String(text).slice(0, at);
  }

  function yuan(fen) {
    if (fen === null || fen === undefined) return "—";
    const sign = fen < 0 ? "-" : "";
    const a = Math.abs(fen);
    return sign + Math.floor(a / 100) + "." + String(a % 100).padStart(2, "0");
  }

  function kg(grams) {
    if (grams === null || grams === undefined) return "—";
    const sign = grams < 0 ? "-" : "";
    const a = Math.abs(grams);
    return sign + Math.floor(a / 1000) + "." + String(a % 1000).padStart(3, "0");
  }

  // The legal units: per kg, per 500 g or per piece, never per 斤.
  const UNITS = {kg: ["元/kg", "yuan/kg"], "500g": ["元/500g", "yuan/500 g"], piece: ["元/件", "yuan/piece"]};
  function unit(priceUnit) { return UNITS[priceUnit] || [priceUnit, priceUnit]; }
  // One unit in a narrow column (a basket line): the legal Chinese one unless English only.
  function unitShort(priceUnit) { const u = unit(priceUnit); return lang === "en" ? u[1] : u[0]; }
  // A basket line's unit price: it may wrap between the number and its unit, never inside.
  function priceCell(line) {
    const cell = el("span", "price", yuan(line.unit_price_fen) + " ");
    cell.append(el("span", "unit", unitShort(line.price_unit)));
    return cell;
  }

  const INSPECTION = {passed: ["快检合格", "rapid test passed"], failed: ["快检不合格", "rapid test failed"],
                      pending: ["待检", "test pending"], "not-tested": ["未检测", "not tested"]};
  function inspection(value) { return INSPECTION[value] || [value, value]; }

  const STATES = {not_ready: ["秤未就绪", "scale not ready"], idle: ["请放商品", "place an item"],
                  settling: ["称重中…", "weighing…"], choosing: ["稳定，请选商品", "stable: choose the item"],
                  priced: ["已计价，请取走", "priced: take it off"]};
  function flowState(value) { return STATES[value] || [value, value]; }

  function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); }

  // True, and remembered, when what ``node`` should show differs from what it shows. A list
  // rebuilt on every state push (the weight moves several times a second) would replace the
  // button under a finger between touch-down and touch-up, and the tap would be lost.
  function changed(node, key) {
    if (node.wmKey === key) return false;
    node.wmKey = key;
    return true;
  }

  // The live channel: the stall's whole state on every change.
  function connect(onState, onEcho) {
    const live = document.getElementById("live");
    const es = new EventSource("/api/events");
    es.addEventListener("state", (ev) => onState(JSON.parse(ev.data)));
    if (onEcho) es.addEventListener("echo", (ev) => onEcho(Number(ev.data)));
    es.onopen = () => live && live.classList.add("on");
    es.onerror = () => live && live.classList.remove("on");
    return es;
  }

  async function call(method, path, body) {
    const init = {method, headers: {"Content-Type": "application/json"}};
    if (body !== undefined) init.body = JSON.stringify(body);
    let res;
    try {
      res = await fetch(path, init);
    } catch (e) {
      return {status: 0, ok: false, data: {reason: "连接断开 / stall not reachable"}};
    }
    let data = null;
    try { data = await res.json(); } catch (e) { data = null; }
    return {status: res.status, ok: res.ok, data};
  }

  return {lang, el, bi, tr, yuan, kg, unit, priceCell, inspection, flowState, clear, changed, connect, call};
})();
