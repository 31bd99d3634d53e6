// The fair scale's screen: receipt, line, measured weight, verdict.  Every value from the
// scale goes into the page with textContent only.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  let state = null;

  for (const node of document.querySelectorAll("[data-zh]")) {
    node.append(WM.bi(node.dataset.zh, node.dataset.en));
  }

  const RECEIPT = {
    genuine: ["收据真实", "genuine receipt"],
    forged: ["收据无效：本市场没有这张收据，或收据被改动", "not a receipt of this market, or altered"],
    unverified: ["收据签名或收据链校验失败", "the receipt's signature or chain fails"],
    offline: ["服务器暂不可达，收据稍后核对", "server away: the receipt is checked later"],
    none: ["请扫描小票", "scan a receipt"],
  };
  const WEIGHT = {not_ready: ["秤未就绪", "scale not ready"], motion: ["称重中…", "weighing…"],
                  stable_zero: ["请放商品", "put the goods on"], stable_net: ["稳定", "stable"],
                  under_zero: ["低于零点", "below zero"], over_capacity: ["超出量程", "over capacity"]};

  function chosenReceiptG(s) {
    const lines = (s.receipt && s.receipt.lines) || [];
    const pick = s.line_no === null ? lines.filter((l) => !l.refunded) : lines.filter((l) => l.line_no === s.line_no);
    const weighed = pick.filter((l) => l.weight_g !== null);
    return weighed.length ? weighed.reduce((a, l) => a + l.weight_g, 0) : null;
  }

  function renderLines(s) {
    const box = $("lines");
    // Rebuilt only when the receipt or the chosen line changes: the weight pushes several
    // times a second, and a button replaced under a finger loses the tap (WM.changed).
    if (!WM.changed(box, JSON.stringify([s.receipt, s.line_no]))) return;
    WM.clear(box);
    const lines = (s.receipt && s.receipt.lines) || [];
    if (!s.receipt || s.receipt.state === "forged") return;
    const whole = WM.el("button", "line" + (s.line_no === null ? " here" : ""));
    whole.dataset.line = "all";
    whole.append(WM.bi("整单", "whole receipt"));
    box.append(whole);
    for (const l of lines) {
      const b = WM.el("button", "line" + (s.line_no === l.line_no ? " here" : ""));
      b.dataset.line = String(l.line_no);
      b.append(WM.el("span", "name", l.line_no + ". " + l.name));
      b.append(WM.el("span", "w", l.weight_g !== null ? WM.kg(l.weight_g) + " kg" : l.quantity + " 件"));
      if (l.refunded) { b.disabled = true; b.append(WM.bi("已退款", "refunded")); }
      if (l.weight_g === null) b.disabled = true;
      box.append(b);
    }
  }

  function render(s) {
    state = s;
    WM.clear($("device"));
    $("device").append(WM.el("span", "", s.device.market + " · " + s.device.name));
    $("legal").textContent = "legal " + s.device.legal + " · e = " + s.device.e_g + " g";
    const srv = s.server;
    WM.clear($("server"));
    $("server").dataset.online = String(srv.online);
    $("server").append(srv.online === false ? WM.bi("离线，待发送 " + srv.queue, "offline, " + srv.queue + " queued")
                                            : WM.bi("在线", "online"));
    const msg = $("message");
    msg.textContent = s.message ? WM.tr(s.message) : "";
    msg.className = "message" + (s.message ? " bad" : "");

    const rs = s.receipt ? s.receipt.state : "none";
    const r = $("receipt");
    r.dataset.state = rs;
    WM.clear(r);
    const label = RECEIPT[rs] || [rs, rs];
    r.append(WM.bi(label[0], label[1], "big"));
    if (s.receipt && s.receipt.stall_name) {
      r.append(WM.el("div", "sub", s.receipt.stall_id + " " + s.receipt.stall_name + " · " + s.receipt.trace_code));
    } else if (s.receipt) {
      r.append(WM.el("div", "sub", s.receipt.trace_code));
    }
    renderLines(s);

    const receiptG = s.result && s.result.receipt_g !== undefined && s.result.receipt_g !== null
      ? s.result.receipt_g : chosenReceiptG(s);
    $("receipt-g").textContent = WM.kg(receiptG);
    const w = s.weight;
    const shown = w.stable_g !== null ? w.stable_g : w.net_g;
    $("measured-g").textContent = WM.kg(shown);
    $("measured-g").dataset.stable = String(w.stable_g !== null);
    $("diff-g").textContent = receiptG !== null && w.stable_g !== null ? String(w.stable_g - receiptG) : "—";
    // A forged receipt is checked too: the market keeps the record of it.
    $("btn-check").disabled = !(s.receipt && w.stable_g !== null);

    const v = $("verdict");
    WM.clear(v);
    const res = s.result;
    v.dataset.verdict = res ? (res.verdict || (res.queued ? "queued" : "none")) : "none";
    v.dataset.check = res && res.check_id ? res.check_id : "";
    if (res && res.verdict) {
      v.append(WM.bi(res.message_zh, res.message_en, "big"));
      if (res.receipt_g !== null) {
        v.append(WM.el("div", "sub", WM.kg(res.receipt_g) + " kg → " + WM.kg(res.measured_g) + " kg · " +
          (res.diff_g > 0 ? "+" : "") + res.diff_g + " g · ±" + res.tolerance_mg / 1000 + " g"));
      }
    } else if (res && res.queued) {
      v.append(WM.bi("已记录，待服务器判定", "recorded: judged when the server is back", "big"));
    } else {
      const ws = WEIGHT[w.state] || [w.state, w.state];
      v.append(WM.bi(ws[0], ws[1]));
    }
  }

  // The code reader types the QR content and Enter into the focused field.
  const scan = $("scan");
  scan.addEventListener("keydown", async (ev) => {
    if (ev.key !== "Enter") return;
    ev.preventDefault();
    const text = scan.value.trim();
    scan.value = "";
    if (text) await WM.call("POST", "/api/scan", {text});
  });
  // Keep the field focused for the reader, whatever the shopper tapped.
  document.addEventListener("click", () => { if (document.activeElement !== scan) scan.focus(); });

  $("lines").addEventListener("click", (ev) => {
    const b = ev.target.closest("button.line");
    if (!b || b.disabled) return;
    WM.call("POST", "/api/line", {line_no: b.dataset.line === "all" ? null : Number(b.dataset.line)});
  });
  $("btn-check").addEventListener("click", () => WM.call("POST", "/api/check"));
  $("btn-reset").addEventListener("click", () => WM.call("POST", "/api/reset"));

  WM.connect(render);
})();
