// The vendor's screen: renders the stall's state and sends one HTTP call per action.
// Nothing is decided here: the stall answers each call with what it did or why it refused.
"use strict";

(() => {
  const {el, bi, tr, yuan, kg, unit, priceCell, flowState, clear, changed, call} = WM;
  const $ = (id) => document.getElementById(id);
  let state = null;
  let results = [];
  let qtyItem = null;
  let priceItem = null;
  let shownTaught = "[]"; // the forget buttons shown: the items the gallery held then
  // Forget throws away every photo the stall learnt of an item and withdraws its offers to the
  // market: one tap arms it, a second within FORGET_ARMED_MS does it (a finger slips).
  const FORGET_ARMED_MS = 4000;
  let forgetArmed = {code: null, until: 0};

  for (const node of document.querySelectorAll("[data-zh]")) {
    node.replaceChildren(bi(node.dataset.zh, node.dataset.en));
  }

  // -- what the stall answered -------------------------------------------------------------
  function say(res, okText) {
    const box = $("message");
    const d = res.data || {};
    let text;
    if (res.ok) text = okText || "✓";
    else if (res.status === 422) text = "输入有误 / invalid input: " + (d.message || "");
    else text = tr(d.reason || ("HTTP " + res.status));
    box.textContent = text;
    box.className = "message " + (res.ok ? "ok" : "bad");
    return res;
  }

  async function act(path, body, okText) {
    const res = await call("POST", path, body);
    return say(res, typeof okText === "function" ? okText(res.data || {}) : okText);
  }

  // -- picking ---------------------------------------------------------------------------
  function pick(item) {
    if (item.price_unit === "piece") {
      qtyItem = item;
      $("qty-item").replaceChildren(bi(item.name_zh, item.name_en));
      $("qty").value = "1";
      $("qty-panel").hidden = false;
      $("qty").focus();
      $("qty").select();
      return;
    }
    act("/api/confirm", {code: item.code}, (d) => d.pending ? tr("稳定后计价 / priced once stable")
      : d.line ? (d.line.name + " " + yuan(d.line.amount_fen)) : "✓");
  }

  async function addPieces() {
    if (!qtyItem) return;
    const n = Number.parseInt($("qty").value, 10);
    // An empty or odd entry is sent as it is: the stall says what is wrong with it.
    const res = await act("/api/confirm", {code: qtyItem.code, quantity: Number.isNaN(n) ? $("qty").value : n},
                          (d) => d.line ? (d.line.name + " × " + d.line.quantity + " " + yuan(d.line.amount_fen)) : "✓");
    if (res.ok) closePanels();
  }

  function openPrice(item) {
    priceItem = item;
    $("price-item").replaceChildren(bi(item.name_zh, item.name_en));
    const u = unit(item.price_unit);
    $("price-unit").replaceChildren(bi(u[0], u[1]));
    $("price").value = yuan(item.unit_price_fen);
    $("price-why").value = "";
    $("price-panel").hidden = false;
    $("price").focus();
    $("price").select();
  }

  async function sendPrice() {
    if (!priceItem) return;
    const m = /^(\d{1,6})(?:\.(\d{1,2}))?$/.exec($("price").value.trim());
    if (!m) {
      say({ok: false, status: 0, data: {reason: "请输入价格，如 3.20 / enter a price such as 3.20"}});
      return;
    }
    const fen = Number.parseInt(m[1], 10) * 100 + Number.parseInt((m[2] || "0").padEnd(2, "0"), 10);
    const body = {code: priceItem.code, unit_price_fen: fen};
    if ($("price-why").value.trim()) body.why = $("price-why").value.trim();
    const res = await act("/api/price", body, (d) => tr(d.applies || "✓"));
    if (res.ok) closePanels();
  }

  function closePanels() {
    qtyItem = priceItem = null;
    $("qty-panel").hidden = true;
    $("price-panel").hidden = true;
  }

  // -- search and keypad ------------------------------------------------------------------
  let searchTimer = null;
  let searchSeq = 0;
  // The query the shown results answer. Enter (or OK) picks the first match of what was typed:
  // typed fast, as a keypad or a code reader does, the results shown may still answer a shorter
  // prefix ("2" lists 西红柿 first, "2004" is 茄子), so Enter then waits for its own answer.
  let resultsFor = "";
  let pickWhenAnswered = false;
  async function runSearch() {
    const q = $("q").value.trim();
    const seq = ++searchSeq;
    const res = q ? await call("GET", "/api/search?q=" + encodeURIComponent(q)) : {ok: true, data: {items: []}};
    if (seq !== searchSeq) return; // an older answer
    results = res.ok ? res.data.items : [];
    resultsFor = res.ok ? q : null;
    renderResults();
    if (pickWhenAnswered && q === $("q").value.trim()) {
      pickWhenAnswered = false;
      if (results.length) pick(results[0]);
    }
  }

  function search() {
    clearTimeout(searchTimer);
    pickWhenAnswered = false; // typed on: the Enter before was for another query
    searchTimer = setTimeout(runSearch, 60);
  }

  function pickFirst() {
    if ($("q").value.trim() === resultsFor) {
      if (results.length) pick(results[0]);
      return;
    }
    clearTimeout(searchTimer);
    pickWhenAnswered = true;
    runSearch();
  }

  function itemButton(item, extraClass) {
    const b = el("button", "item " + (extraClass || ""));
    b.type = "button";
    b.dataset.code = item.code;
    const u = unit(item.price_unit);
    b.append(el("span", "code", item.code), bi(item.name_zh, item.name_en, "name"),
             el("span", "price", yuan(item.unit_price_fen) + " " + tr(u[0] + " / " + u[1])));
    if (item.blocked_reason) {
      b.classList.add("blocked");
      b.append(el("span", "why", tr(item.blocked_reason)));
    }
    b.addEventListener("click", () => pick(item));
    return b;
  }

  function renderResults() {
    const ul = $("results");
    clear(ul);
    for (const item of results) {
      const li = el("li");
      li.append(itemButton(item));
      const price = el("button", "small price-btn");
      price.type = "button";
      price.append(bi("改价", "Price"));
      price.addEventListener("click", () => openPrice(item));
      li.append(price);
      if (state && state.camera) {
        const teach = el("button", "small teach-btn");
        teach.type = "button";
        teach.append(bi("拍照学习", "Teach"));
        teach.addEventListener("click", () => act("/api/teach", {code: item.code},
          (d) => tr("已学习 / taught: ") + (d.label || item.code)));
        li.append(teach);
      }
      if (state && (state.taught_items || []).includes(item.code)) {
        // an item taught wrong so often that its guesses go astray: start it over
        const forget = el("button", "small forget-btn");
        forget.type = "button";
        showForget(forget, item.code);
        forget.addEventListener("click", () => {
          if (forgetArmed.code === item.code && Date.now() < forgetArmed.until) {
            forgetArmed = {code: null, until: 0};
            act("/api/teach/forget", {code: item.code},
              (d) => tr("已忘掉学过的照片 / forgot the photos taught: ") + (d.label || item.code));
            return;
          }
          forgetArmed = {code: item.code, until: Date.now() + FORGET_ARMED_MS};
          showForget(forget, item.code);
          setTimeout(() => showForget(forget, item.code), FORGET_ARMED_MS + 50);
        });
        li.append(forget);
      }
      ul.append(li);
    }
  }

  function showForget(button, code) {
    const armed = forgetArmed.code === code && Date.now() < forgetArmed.until;
    button.classList.toggle("armed", armed);
    button.replaceChildren(armed ? bi("再按一次确认忘掉", "Tap again to forget") : bi("忘掉学习", "Forget"));
  }

  function keypadTarget() {
    if (!$("qty-panel").hidden) return $("qty");
    if (!$("price-panel").hidden) return $("price");
    return $("q");
  }

  function keypadOk() {
    if (!$("qty-panel").hidden) addPieces();
    else if (!$("price-panel").hidden) sendPrice();
    else pickFirst();
  }

  $("keypad").addEventListener("click", (ev) => {
    const key = ev.target.closest("button")?.dataset.key;
    if (!key) return;
    const input = keypadTarget();
    if (key === "ok") return keypadOk();
    if (key === "C") input.value = "";
    else if (key === "back") input.value = input.value.slice(0, -1);
    else input.value += key;
    if (input === $("q")) search();
  });
  $("q").addEventListener("input", search);
  $("q").addEventListener("keydown", (ev) => {
    if (ev.key === "Enter") { ev.preventDefault(); keypadOk(); }
  });
  $("qty").addEventListener("keydown", (ev) => { if (ev.key === "Enter") { ev.preventDefault(); addPieces(); } });
  $("price").addEventListener("keydown", (ev) => { if (ev.key === "Enter") { ev.preventDefault(); sendPrice(); } });
  $("qty-ok").addEventListener("click", addPieces);
  $("qty-cancel").addEventListener("click", closePanels);
  $("price-ok").addEventListener("click", sendPrice);
  $("price-cancel").addEventListener("click", closePanels);

  // -- other actions -------------------------------------------------------------------
  $("btn-tare").addEventListener("click", () => act("/api/tare", {}, (d) => tr("皮重 / tare ") + d.tare_g + " g"));
  $("btn-clear-tare").addEventListener("click", () => act("/api/tare/clear", {}));
  $("btn-checkout").addEventListener("click", checkout);
  $("btn-discard").addEventListener("click", () => act("/api/discard", {reason: $("void-reason").value}));
  $("btn-reprint").addEventListener("click", () => act("/api/reprint", {}, (d) => tr("已补打 / reprinted ") + d.receipt_no));
  $("btn-print-queue").addEventListener("click", () => act("/api/reprint/queue", {}));

  function checkout() {
    act("/api/checkout", {}, (d) => d.sale ? (tr("已结账 / paid ") + yuan(d.sale.total_fen) +
      (d.printed ? "" : " — " + tr("小票未打印，已排队 / receipt queued"))) : "✓");
  }

  document.addEventListener("keydown", (ev) => {
    const inInput = ev.target instanceof HTMLInputElement;
    const f = /^F([1-4])$/.exec(ev.key);
    if (f && state) {
      ev.preventDefault();
      const g = state.flow.guesses[Number(f[1]) - 1];
      if (g) pick(g.item);
    } else if (ev.key === "F9") {
      ev.preventDefault();
      checkout();
    } else if (ev.key === "Escape") {
      closePanels();
      $("q").value = "";
      search();
    } else if (!inInput && ev.key.length === 1 && /[0-9a-zA-Z]/.test(ev.key)) {
      // Typing anywhere goes to the search box (a hardware keypad types digits).
      $("q").focus();
    } else if (!inInput && ev.key === "Enter" && !(ev.target instanceof HTMLButtonElement)) {
      keypadOk();
    }
  });

  // -- rendering -------------------------------------------------------------------------
  function picture(code, name, pictures) {
    const box = el("span", "pic");
    if (pictures.includes(code)) {
      const img = el("img");
      img.alt = "";
      img.src = "/api/items/" + encodeURIComponent(code) + "/picture?v=" + (state ? state.flow.taught : 0);
      box.append(img);
    } else {
      // No photo in the catalogue: the name's first character on a tile of its own colour.
      let h = 0;
      for (const ch of code) h = (h * 31 + ch.charCodeAt(0)) % 360;
      box.style.background = "hsl(" + h + " 45% 42%)";
      box.append(el("span", "initial", Array.from(name)[0] || "?"));
    }
    return box;
  }

  function renderBasket(basket, lines) {
    clear(basket);
    for (const line of lines) {
      const li = el("li", line.voided ? "voided" : "");
      const qty = line.weight_g !== null ? kg(line.weight_g) + " kg" : "× " + line.quantity;
      li.append(el("span", "no", line.line_no), bi(line.name, line.name_en, "name"), el("span", "qty", qty),
                priceCell(line),
                el("span", "amt", yuan(line.amount_fen)));
      if (!line.voided) {
        const b = el("button", "small void-btn");
        b.type = "button";
        b.append(bi("作废", "Void"));
        b.addEventListener("click", () => act("/api/void", {line_no: line.line_no, reason: $("void-reason").value},
          (d) => d.untaught ? tr("已作废，学习已撤回 / voided, its teaching taken back") : tr("已作废 / voided")));
        li.append(b);
      }
      basket.append(li);
    }
  }

  function render(s) {
    state = s;
    const f = s.flow;
    $("stall").replaceChildren(bi(s.stall.name + " · " + s.stall.id, s.stall.id + " · " + (s.stall.vendor || "")));
    const st = flowState(f.state);
    $("state").replaceChildren(bi(st[0], st[1]));
    $("state").dataset.state = f.state;
    document.body.dataset.state = f.state;

    const warnings = $("warnings");
    clear(warnings);
    for (const w of s.warnings) warnings.append(el("li", null, tr(w)));

    $("weight").textContent = f.net_g === null ? "—" : kg(f.net_g);
    $("weigh-state").textContent = f.weigh_state + (f.recognizing ? " · " + tr("识别中 / recognising") : "");
    $("tare").textContent = f.tare_g ? tr("皮重 / tare ") + f.tare_g + " g" : "";
    // The buttons below are rebuilt only when what they show changes (see WM.changed).
    const presets = $("presets");
    if (changed(presets, JSON.stringify(s.tare_presets_g))) {
      clear(presets);
      for (const g of s.tare_presets_g) {
        const b = el("button", "small", tr("预置皮重 / preset ") + g + " g");
        b.type = "button";
        b.addEventListener("click", () => act("/api/tare/preset", {grams: g}, (d) => tr("皮重 / tare ") + d.tare_g + " g"));
        presets.append(b);
      }
    }

    const guesses = $("guesses");
    if (changed(guesses, JSON.stringify([f.guesses, f.unknown, Boolean(s.camera), s.pictures, f.taught]))) {
      clear(guesses);
      f.guesses.forEach((g, i) => {
        const b = itemButton(g.item, "guess");
        b.prepend(picture(g.item.code, g.item.name_zh, s.pictures));
        b.append(el("span", "conf", "F" + (i + 1) + " · " + Math.round(g.confidence * 100) + "%"));
        guesses.append(b);
      });
      if (!f.guesses.length) {
        guesses.append(el("div", "empty", f.unknown ? tr("未识别，请手动选品 / not recognised: pick by hand")
          : s.camera ? "" : tr("无摄像头，请手动选品 / no camera: pick by hand")));
      }
    }

    const basket = $("basket");
    if (changed(basket, JSON.stringify(f.basket))) renderBasket(basket, f.basket);
    $("total").textContent = yuan(f.total_fen);
    $("btn-print-queue").hidden = !s.printer.reprints;
    $("last-receipt").textContent = f.last_receipt ? tr("上一张小票 / last receipt ") + f.last_receipt : "";
    $("legal").textContent = "计量软件 / legal software " + s.stall.legal;
    // The teach buttons depend on the camera, the forget buttons on what the gallery holds.
    const hasTeach = Boolean(document.querySelector("#results .teach-btn"));
    const forgettable = JSON.stringify(s.taught_items || []);
    if (results.length && (hasTeach !== Boolean(s.camera) || forgettable !== shownTaught)) renderResults();
    shownTaught = forgettable;

    // Paint times, read by bench/stall_bench.py: when the guesses were on screen.
    const v = s.v;
    requestAnimationFrame(() => {
      window.paints.push({v, t: performance.timeOrigin + performance.now(), state: f.state,
                          guesses: f.guesses.length, stable_at_ms: s.stable_at_ms});
      if (window.paints.length > 500) window.paints.shift();
    });
  }

  window.paints = [];
  // The online orders' panel renders from the same state (orders.js).
  WM.connect((s) => { render(s); if (window.WMOrders) window.WMOrders.render(s); });
})();
