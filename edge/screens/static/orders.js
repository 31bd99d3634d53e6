// The vendor screen's online orders (edge.orders): a badge and a sound when one arrives,
// accept or decline lines, weigh an order on the scale (each line through the normal flow:
// POST /api/confirm), hand it over with the payment.  Rendered from the stall's state.
"use strict";

window.WMOrders = (() => {
  const {el, bi, tr, yuan, clear, call} = WM;
  const $ = (id) => document.getElementById(id);
  let arrived = null;   // orders.arrived last rendered: a rise rings
  let rings = 0;
  let audio = null;
  let shown = "";                 // the orders last rendered (the state changes with every reading)
  const declined = new Map();     // order id -> line numbers the vendor unticked
  const codes = new Map();        // order id -> the pickup code typed so far (kept across redraws)

  function say(res, okText) {
    const box = $("message");
    const d = res.data || {};
    box.textContent = res.ok ? (okText || "✓")
      : res.status === 422 ? "输入有误 / invalid input: " + (d.message || "") : tr(d.reason || ("HTTP " + res.status));
    box.className = "message " + (res.ok ? "ok" : "bad");
    return res;
  }

  async function act(path, body, okText) {
    return say(await call("POST", path, body), okText);
  }

  // A short two-tone chime (Web Audio: no file, no network); a browser that has not been
  // touched yet may keep it silent: the badge still rings.
  function chime() {
    rings += 1;
    const badge = $("orders-badge");
    badge.dataset.rings = String(rings);
    badge.classList.remove("ring");
    void badge.offsetWidth;  // restart the animation
    badge.classList.add("ring");
    try {
      audio = audio || new (window.AudioContext || window.webkitAudioContext)();
      [880, 1320].forEach((hz, i) => {
        const osc = audio.createOscillator();
        const gain = audio.createGain();
        osc.frequency.value = hz;
        gain.gain.value = 0.2;
        osc.connect(gain).connect(audio.destination);
        osc.start(audio.currentTime + i * 0.18);
        osc.stop(audio.currentTime + i * 0.18 + 0.15);
      });
    } catch (e) { /* no audio device: the badge is the signal */ }
  }

  const amountText = (ln) => ln.price_unit === "piece" ? `${ln.quantity} 件 / pc` : `约 ${ln.est_weight_g} 克 / ~${ln.est_weight_g} g`;

  function button(text, cls, onClick) {
    const b = el("button", "small " + cls, text);
    b.type = "button";
    b.addEventListener("click", onClick);
    return b;
  }

  function renderOrder(o, orders) {
    const attached = orders.attached === o.id;
    const li = el("li", attached ? "attached" : "");
    li.dataset.id = String(o.id);
    li.dataset.state = o.state;
    const head = el("div", "o-head");
    head.append(el("span", null, `#${o.id}`));
    head.append(el("span", null, `${o.slot_start.slice(11, 16)}–${o.slot_end.slice(11, 16)}`));
    head.append(bi(o.state_zh, o.state_en, "o-state"));
    li.append(head);
    li.append(el("div", "sub", `${o.phone_masked || ""}  ${o.note || ""}`));
    const lines = el("ul", "o-lines");
    const progress = new Map((orders.progress || []).map((p) => [p.line_no, p]));
    for (const ln of o.lines) {
      const row = el("li", ln.state);
      row.dataset.line = String(ln.line_no);
      row.dataset.plu = ln.plu;
      const name = bi(ln.name, ln.name_en);
      if (o.state === "placed") {
        const box = el("input", "keep");
        box.type = "checkbox";
        const out = declined.get(o.id) || new Set();
        box.checked = !out.has(ln.line_no);
        box.addEventListener("change", () => {
          if (box.checked) out.delete(ln.line_no); else out.add(ln.line_no);
          declined.set(o.id, out);
        });
        box.setAttribute("aria-label", `供货 / supply ${ln.name}`);
        const label = el("label");
        label.append(box, name);
        row.append(label);
      } else {
        row.append(name);
      }
      row.append(el("span", null, amountText(ln)));
      const p = progress.get(ln.line_no);
      if (attached && p) {
        const got = p.weighed ? (ln.price_unit === "piece" ? `${p.quantity} 件` : `${p.weight_g} 克`) + ` ¥${yuan(p.amount_fen)}` : "—";
        row.append(el("span", p.over_tolerance ? "over" : p.weighed ? "done" : "", got));
        row.append(button(`称 ${ln.name} / weigh`, "weigh-line", () => {
          const body = {code: ln.plu};
          if (ln.price_unit === "piece") body.quantity = ln.quantity;
          act("/api/confirm", body);
        }));
      } else if (ln.state === "declined") {
        row.append(el("span", null, "缺货 / declined"));
      } else if (ln.final_amount_fen !== null && ln.final_amount_fen !== undefined) {
        row.append(el("span", "done", `¥${yuan(ln.final_amount_fen)}`));
      }
      lines.append(row);
    }
    li.append(lines);
    li.append(el("div", null, o.final_fen !== null && o.final_fen !== undefined
      ? `实收 / final ¥${yuan(o.final_fen)}` : `预估 / estimate ¥${yuan(o.estimate_fen)}`));
    const actions = el("div", "o-actions");
    if (o.state === "placed") {
      actions.append(button("接单 / Accept", "accept", () => {
        act(`/api/orders/${o.id}/accept`, {declined: [...(declined.get(o.id) || [])]}, "已接单 / accepted");
      }));
      actions.append(button("拒单 / Decline", "decline", () =>
        act(`/api/orders/${o.id}/cancel`, {reason: "摊位无法供货 / the stall cannot supply it"})));
    } else if ((o.state === "accepted" || o.state === "weighing") && !attached) {
      actions.append(button("开始称重 / Weigh now", "weigh", () =>
        act(`/api/orders/${o.id}/weigh`, undefined, "逐项称重后结账打印 / weigh each line, then check out")));
    } else if (attached) {
      actions.append(el("span", "sub", "称完后点“结账打印” / weigh each line, then Checkout"));
      actions.append(button("暂不配货 / Not now", "detach", () => act("/api/orders/detach")));
    } else if (o.state === "ready") {
      // The shopper's page shows her pickup code; the stall never sees it, the server checks it.
      const code = el("input", "pickup-code");
      Object.assign(code, {type: "text", inputMode: "numeric", maxLength: 8, autocomplete: "off",
                           placeholder: "取货码 / pickup code"});
      code.dataset.id = String(o.id);
      code.value = codes.get(o.id) || "";
      code.addEventListener("input", () => {
        code.value = code.value.replace(/[^0-9]/g, "");
        codes.set(o.id, code.value);
      });
      actions.append(code);
      const handOver = (payment) => () => {
        const typed = codes.get(o.id) || "";
        if (typed.length < 4) {
          say({ok: false, status: 0, data: {reason: "请输入顾客的取货码 / type the shopper's pickup code"}});
          code.focus();
          return;
        }
        act(`/api/orders/${o.id}/picked-up`, {payment, pickup_code: typed}, "已取货 / picked up");
      };
      actions.append(button("现金已付 / Paid cash", "paid-cash", handOver("cash")));
      actions.append(button("扫码已付 / Paid by QR", "paid-qr", handOver("qr")));
    }
    li.append(actions);
    return li;
  }

  function render(s) {
    const orders = s.orders;
    const panel = $("orders-panel");
    const badge = $("orders-badge");
    if (!orders) { panel.hidden = true; badge.hidden = true; return; }
    panel.hidden = false;
    badge.hidden = false;
    badge.onclick = () => panel.scrollIntoView({behavior: "smooth"});  // the panel is below the scale
    $("orders-count").textContent = String(orders.waiting);
    if (arrived !== null && orders.arrived > arrived) chime();
    arrived = orders.arrived;
    const key = JSON.stringify(orders);
    if (key === shown) return;
    shown = key;
    const open = $("orders-open");
    open.textContent = orders.open ? "暂停接单 / Pause orders" : "恢复接单 / Resume orders";
    open.onclick = () => act("/api/orders/open", {open: !orders.open});
    const list = $("orders-list");
    const typing = document.activeElement && document.activeElement.classList.contains("pickup-code")
      ? document.activeElement.dataset.id : null;
    clear(list);
    for (const o of orders.list) list.append(renderOrder(o, orders));
    if (typing !== null) {  // a new order arriving must not take the code field from the vendor
      const again = list.querySelector(`input.pickup-code[data-id="${typing}"]`);
      if (again) { again.focus(); again.setSelectionRange(again.value.length, again.value.length); }
    }
  }

  return {render, get rings() { return rings; }};
})();
