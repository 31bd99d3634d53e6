// The shopper's ordering page (线上买菜): stalls and items with live prices in legal units, a
// cart of estimates, a pickup slot, her own orders live (SSE).  Every value from the server
// goes into the page with textContent only.
"use strict";

(() => {
  const en = new URLSearchParams(location.search).get("lang") === "en";
  document.documentElement.lang = en ? "en" : "zh-CN";
  const T = (zh, english) => (en ? english : zh);
  // The server's messages are "中文 / English": the half the page speaks.
  const half = (text) => {
    const s = String(text || ""); const at = s.indexOf(" / ");
    return at < 0 ? s : (en ? s.slice(at + 3) : s.slice(0, at));
  };
  for (const e of document.querySelectorAll("[data-zh]")) e.textContent = T(e.dataset.zh, e.dataset.en);
  const langLink = document.getElementById("lang");
  langLink.textContent = en ? "中文" : "English";
  langLink.href = en ? "?lang=zh" : "?lang=en";

  const $ = (id) => document.getElementById(id);
  const el = (tag, cls, text) => {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  };
  const clear = (n) => { while (n.firstChild) n.removeChild(n.firstChild); };
  // True, and remembered, when what a list should show differs from what it shows: the
  // 30 s refresh and the live orders redraw only then, so a tap on "Add" or "Cancel" during
  // a redraw, or an open amount picker, is never lost to an identical redraw.
  const changed = (node, data) => {
    const key = JSON.stringify(data);
    if (node.wmKey === key) return false;
    node.wmKey = key;
    return true;
  };
  const yuan = (fen) => (fen === null || fen === undefined) ? "—"
    : Math.floor(fen / 100) + "." + String(fen % 100).padStart(2, "0");
  // The legal units of 明码标价: per kg, per 500 g or per piece, never per 斤.
  const UNIT = {kg: ["元/kg", "yuan/kg"], "500g": ["元/500g", "yuan/500 g"], piece: ["元/件", "yuan/piece"]};
  const unit = (u) => T(...(UNIT[u] || [u, u]));
  const grams = (g) => (g >= 1000 && g % 100 === 0) ? T(`约 ${g / 1000} 千克`, `about ${g / 1000} kg`)
    : T(`约 ${g} 克`, `about ${g} g`);
  const weighed = (g) => T(`${g} 克`, `${g} g`);
  const GRAMS = {kg: 1000, "500g": 500};
  // The estimate as the stall's pricing rounds it (half-up to the 分); the server prices it again.
  const estimate = (item, line) => item.price_unit === "piece" ? line.quantity * item.unit_price_fen
    : Math.floor((2 * line.est_weight_g * item.unit_price_fen + GRAMS[item.price_unit]) / (2 * GRAMS[item.price_unit]));
  const hhmm = (iso) => iso ? iso.slice(11, 16) : "";
  const day = (iso) => iso ? iso.slice(5, 10) : "";

  let stalls = [];
  let current = null;            // the stall shown
  const cart = new Map();        // plu -> {item, est_weight_g | quantity}
  let signedIn = false;
  let events = null;

  function say(text, ok) {
    const m = $("message");
    m.textContent = half(text);
    m.className = "message" + (ok ? " ok" : "");
  }

  async function api(method, path, body) {
    const init = {method, headers: {"Content-Type": "application/json"}, credentials: "same-origin"};
    if (body !== undefined) init.body = JSON.stringify(body);
    let res;
    try { res = await fetch(path, init); } catch (e) {
      return {ok: false, status: 0, data: {detail: "网络断开，请重试 / network down: try again"}};
    }
    let data = null;
    try { data = await res.json(); } catch (e) { data = null; }
    return {ok: res.ok, status: res.status, data};
  }

  function detail(data) {
    if (!data) return T("出错了", "something went wrong");
    if (typeof data.detail === "string") return data.detail;
    if (Array.isArray(data.detail) && data.detail.length) {
      const d = data.detail[0];
      return (d.loc || []).filter((p) => p !== "body").join(".") + ": " + d.msg;
    }
    return JSON.stringify(data);
  }

  // -- account ---------------------------------------------------------------------------
  function showAccount(masked) {
    signedIn = !!masked;
    $("sign-in-form").hidden = signedIn;
    $("signed-in").hidden = !signedIn;
    $("my-orders").hidden = !signedIn;
    $("me").textContent = masked || "";
    if (signedIn) listen(); else if (events) { events.close(); events = null; }
  }

  const typedPhone = () => $("phone").value.replace(/[\s-]/g, "");
  // The number is proven by a code sent to it (SMS); a market trying the system out shows the
  // code on the page instead (shown_code).
  $("send-code").addEventListener("click", async () => {
    const r = await api("POST", "/api/v1/shop/code", {phone: typedPhone()});
    if (!r.ok) { say(detail(r.data)); return; }
    $("code-row").hidden = false;
    $("sign-in").hidden = false;
    const shown = $("shown-code");
    shown.hidden = !r.data.shown_code;
    shown.textContent = r.data.shown_code
      ? T(`演示模式：验证码 ${r.data.shown_code}（正式使用时以短信发送）`,
          `trial mode: your code is ${r.data.shown_code} (sent by SMS in real use)`) : "";
    say(T(`验证码已发送到 ${r.data.phone}，${Math.round(r.data.expires_s / 60)} 分钟内有效`,
          `a code was sent to ${r.data.phone}, good for ${Math.round(r.data.expires_s / 60)} minutes`), true);
    $("code").focus();
  });
  $("sign-in-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    if ($("sign-in").hidden) { $("send-code").click(); return; }  // Enter in the phone field
    const r = await api("POST", "/api/v1/shop/sign-in", {phone: typedPhone(), code: $("code").value.trim()});
    if (!r.ok) { say(detail(r.data)); return; }
    $("code").value = "";
    $("code-row").hidden = true;
    $("sign-in").hidden = true;
    $("shown-code").hidden = true;
    say(T("已登录", "signed in"), true);
    showAccount(r.data.phone);
  });
  $("sign-out").addEventListener("click", async () => {
    await api("POST", "/api/v1/shop/sign-out");
    showAccount(null);
    clear($("orders"));
  });

  // -- stalls and items --------------------------------------------------------------------
  function renderStalls() {
    const list = $("stalls");
    if (!changed(list, stalls)) return;
    clear(list);
    for (const s of stalls) {
      const li = el("li", "stall");
      li.dataset.stall = s.stall_id;
      const b = el("button", null, `${s.stall_id} ${s.name}`);
      b.type = "button";
      b.addEventListener("click", () => loadStall(s.stall_id));
      li.append(b);
      li.append(el("span", "badge " + (s.open ? (s.online ? "on" : "off") : "off"),
        !s.open ? T("暂停接单", "closed") : s.online ? T("在线", "online") : T("离线，上线后接单", "offline: accepts when back")));
      list.append(li);
    }
  }

  const picked = new Map();  // "stall/plu" -> the amount chosen in its list, kept across redraws

  function renderItems() {
    if (!current) return;
    $("items-card").hidden = false;
    $("stall-name").textContent = `${current.stall_id} ${current.name}`;
    const list = $("items");
    if (!changed(list, current)) { renderCart(); return; }
    clear(list);
    for (const it of current.items) {
      const li = el("li", "item");
      li.dataset.plu = it.plu;
      const name = el("div");
      name.append(el("span", "name", en ? it.name_en : it.name));
      if (!en) name.append(el("span", "fine", " " + it.name_en));
      if (it.special_title) name.append(el("span", "badge special", T("特价", "special")));
      if (it.inspection === "pass") name.append(el("span", "badge pass", T("快检合格", "test passed")));
      if (it.inspection === "fail") name.append(el("span", "badge fail", T("快检不合格 禁售", "failed test: not for sale")));
      if (it.origin) name.append(el("div", "fine", T("产地 ", "origin ") + it.origin));
      li.append(name);
      const price = el("div", "price", `${yuan(it.unit_price_fen)} ${unit(it.price_unit)}`);
      if (it.unit_price_fen < it.regular_price_fen) { price.append(" "); price.append(el("s", null, yuan(it.regular_price_fen))); }
      li.append(price);
      const row = el("div", "add-row");
      if (it.orderable) {
        const pick = el("select", "amount");
        const choices = it.price_unit === "piece" ? [1, 2, 3, 4, 5, 6, 8, 10] : [250, 500, 750, 1000, 1500, 2000, 3000];
        for (const v of choices) {
          const o = el("option", null, it.price_unit === "piece" ? T(`${v} 件`, `${v} pc`) : grams(v));
          o.value = String(v);
          pick.append(o);
        }
        if (it.price_unit !== "piece") pick.value = "500";
        // A live update redraws the list: what she picked stays picked.
        const key = `${current.stall_id}/${it.plu}`;
        if (picked.has(key) && choices.includes(Number(picked.get(key)))) pick.value = picked.get(key);
        pick.addEventListener("change", () => picked.set(key, pick.value));
        const add = el("button", "add", T("加入", "Add"));
        add.type = "button";
        add.addEventListener("click", () => {
          const v = Number(pick.value);
          cart.set(it.plu, it.price_unit === "piece" ? {item: it, quantity: v} : {item: it, est_weight_g: v});
          renderCart();
        });
        row.append(pick, add);
      } else {
        row.append(el("span", "fine", half(it.why_not)));
      }
      li.append(row);
      list.append(li);
    }
    renderCart();
  }

  async function loadStalls() {
    const r = await api("GET", "/api/v1/shop/stalls");
    if (!r.ok) { say(detail(r.data)); return; }
    stalls = r.data;
    renderStalls();
  }

  // One stall's items, with the prices, specials and tests of now.
  async function loadStall(stallId) {
    const r = await api("GET", `/api/v1/shop/stalls/${encodeURIComponent(stallId)}`);
    if (!r.ok) { say(detail(r.data)); return; }
    current = r.data;
    renderItems();
  }

  // -- the cart ------------------------------------------------------------------------------
  function renderCart() {
    const lines = [...cart.values()].filter((l) => current && current.items.some((i) => i.plu === l.item.plu));
    $("cart-card").hidden = lines.length === 0;
    const list = $("cart");
    clear(list);
    let total = 0;
    for (const l of lines) {
      const li = el("li", "line");
      li.dataset.plu = l.item.plu;
      const amount = estimate(l.item, l);
      total += amount;
      const what = l.quantity ? T(`${l.quantity} 件`, `${l.quantity} pc`) : grams(l.est_weight_g);
      li.append(el("span", null, `${en ? l.item.name_en : l.item.name} ${what}`));
      const right = el("span", null, `≈ ¥${yuan(amount)} `);
      const drop = el("button", "link", "✕");
      drop.type = "button";
      drop.setAttribute("aria-label", T("删除", "remove"));
      drop.addEventListener("click", () => { cart.delete(l.item.plu); renderCart(); });
      right.append(drop);
      li.append(right);
      list.append(li);
    }
    $("cart-total").textContent = yuan(total);
  }

  async function loadSlots() {
    const r = await api("GET", "/api/v1/shop/slots");
    if (!r.ok) return;
    const sel = $("slot");
    clear(sel);
    for (const s of r.data.slots) {
      const o = el("option", null, `${day(s.start)} ${hhmm(s.start)}–${hhmm(s.end)}`);
      o.value = s.start;
      sel.append(o);
    }
  }

  $("place").addEventListener("click", async () => {
    if (!signedIn) { say(T("请先用手机号登录", "sign in with your phone number first")); $("phone").focus(); return; }
    const lines = [...cart.values()].filter((l) => current.items.some((i) => i.plu === l.item.plu))
      .map((l) => l.quantity ? {plu: l.item.plu, quantity: l.quantity} : {plu: l.item.plu, est_weight_g: l.est_weight_g});
    const body = {stall_id: current.stall_id, slot_start: $("slot").value, lines};
    if ($("note").value.trim()) body.note = $("note").value.trim();
    const r = await api("POST", "/api/v1/orders", body);
    if (!r.ok) { say(detail(r.data)); if (r.status === 422) loadSlots(); return; }
    for (const l of lines) cart.delete(l.plu);
    renderCart();
    say(T(`已下单，取货码 ${r.data.pickup_code}`, `ordered: pickup code ${r.data.pickup_code}`), true);
  });

  // -- my orders, live -------------------------------------------------------------------------
  function renderOrders(list) {
    const ol = $("orders");
    if (!changed(ol, list)) return;
    clear(ol);
    for (const o of list) {
      const li = el("li", "order");
      li.dataset.id = String(o.id);
      li.dataset.state = o.state;
      const head = el("div", "head");
      head.append(el("span", null, `#${o.id} ${o.stall_id} ${o.stall_name}`));
      head.append(el("span", "state " + o.state, en ? o.state_en : o.state_zh));
      li.append(head);
      if (o.state === "placed" && o.stall_online === false) {
        li.append(el("div", "fine", T("摊位暂时离线，上线后接单", "the stall is offline: it will see the order when it is back")));
      }
      const code = el("div", null, T("取货码 ", "pickup code "));
      code.append(el("span", "code", o.pickup_code));
      code.append(el("span", "fine", `  ${day(o.slot_start)} ${hhmm(o.slot_start)}–${hhmm(o.slot_end)}`));
      li.append(code);
      const lines = el("ul", "lines");
      for (const ln of o.lines) {
        const row = el("li", ln.state);
        const name = en ? ln.name_en : ln.name;
        const est = ln.price_unit === "piece" ? T(`${ln.quantity} 件`, `${ln.quantity} pc`) : grams(ln.est_weight_g);
        row.append(el("span", null, `${name} ${est}`));
        let right = `≈ ¥${yuan(ln.est_amount_fen)}`;
        if (ln.state === "declined") right = T("摊位缺货", "declined by the stall");
        else if (ln.state === "missing") right = T("未配货", "not supplied");
        else if (ln.final_amount_fen !== null) {
          const got = ln.price_unit === "piece" ? T(`${ln.final_quantity} 件`, `${ln.final_quantity} pc`) : weighed(ln.final_weight_g);
          right = T(`实称 ${got} ¥${yuan(ln.final_amount_fen)}`, `weighed ${got} ¥${yuan(ln.final_amount_fen)}`);
        }
        row.append(el("span", "amount", right));
        lines.append(row);
        if (ln.over_tolerance) {
          const pct = ln.est_amount_fen ? Math.round(100 * (ln.final_amount_fen - ln.est_amount_fen) / ln.est_amount_fen) : 0;
          lines.append(el("li", "diff", T(`与预估相差 ${pct > 0 ? "+" : ""}${pct}%（超过 ±${o.tolerance_pct}%）`,
            `${pct > 0 ? "+" : ""}${pct}% from the estimate (beyond ±${o.tolerance_pct}%)`)));
        }
      }
      li.append(lines);
      if (o.final_fen !== null) {
        li.append(el("div", "final", T(`实付金额 ¥${yuan(o.final_fen)}`, `final amount ¥${yuan(o.final_fen)}`)));
      } else {
        li.append(el("div", null, T(`预估 ¥${yuan(o.estimate_fen)}`, `estimate ¥${yuan(o.estimate_fen)}`)));
      }
      if (o.partly_declined) li.append(el("div", "diff", T("部分商品摊位无货", "partly declined by the stall")));
      if (o.cancel_reason) li.append(el("div", "fine", half(o.cancel_reason)));
      const times = [["placed_at", "下单", "placed"], ["accepted_at", "接单", "accepted"], ["weighing_at", "称重", "weighing"],
        ["ready_at", "备好", "ready"], ["picked_up_at", "取货", "picked up"], ["cancelled_at", "取消", "cancelled"]]
        .filter(([k]) => o[k]).map(([k, zh, e]) => `${T(zh, e)} ${hhmm(o[k])}`);
      li.append(el("div", "times", times.join(" · ")));
      if (o.state === "placed") {
        const c = el("button", "cancel", T("取消订单", "Cancel"));
        c.type = "button";
        c.addEventListener("click", async () => {
          const r = await api("POST", `/api/v1/orders/${o.id}/cancel`);
          if (!r.ok) say(detail(r.data));
        });
        li.append(c);
      }
      ol.append(li);
    }
  }

  function listen() {
    if (events) return;
    events = new EventSource("/api/v1/shop/events");
    events.addEventListener("orders", (ev) => renderOrders(JSON.parse(ev.data)));
  }

  (async () => {
    const me = await api("GET", "/api/v1/shop/me");
    showAccount(me.ok ? me.data.phone : null);
    await Promise.all([loadStalls(), loadSlots()]);
    // Prices, badges and the stalls' state follow the market.
    setInterval(() => { loadStalls(); if (current) loadStall(current.stall_id); }, 30000);
  })();
})();
