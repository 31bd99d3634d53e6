// The customer's screen (明码标价): weight, unit price in its legal unit, amount, the basket
// and total, the item's origin and inspection result.  Only renders the stall's state.
"use strict";

(() => {
  const {el, bi, tr, yuan, kg, unit, priceCell, inspection, flowState, clear} = WM;
  const $ = (id) => document.getElementById(id);
  // Paint times, read by bench/stall_bench.py: each state's version and when it was painted.
  window.paints = [];
  window.screenState = null;

  for (const node of document.querySelectorAll("[data-zh]")) {
    node.replaceChildren(bi(node.dataset.zh, node.dataset.en));
  }

  function lineText(line) {
    if (line.weight_g !== null && line.weight_g !== undefined) return kg(line.weight_g) + " kg";
    return line.quantity + (WM.lang === "en" ? " pcs" : " 件");
  }

  function render(s) {
    const f = s.flow;
    window.screenState = s;
    $("stall").replaceChildren(bi(s.stall.market + " · " + s.stall.name,
                                  s.stall.id + " · " + s.stall.name));
    const st = flowState(f.state);
    $("status").replaceChildren(bi(st[0], st[1]));
    document.body.classList.toggle("not-ready", f.state === "not_ready");
    $("weight").textContent = f.state === "not_ready" ? "—" : kg(f.net_g);

    const cur = s.current;
    const item = $("item");
    clear(item);
    if (cur) {
      const u = unit(cur.item.price_unit);
      item.append(bi(cur.item.name_zh, cur.item.name_en, "name"));
      $("unit-price").textContent = yuan(cur.item.unit_price_fen);
      $("unit").replaceChildren(bi(u[0], u[1]));
      $("amount").textContent = cur.line ? yuan(cur.line.amount_fen) : "—";
      if (cur.line && cur.line.weight_g !== null) $("weight").textContent = kg(cur.line.weight_g);
      const origin = cur.item.origin;
      $("origin").replaceChildren(bi("产地：" + (origin || "未注明"), "Origin: " + (origin || "not stated")));
      const ins = inspection(cur.item.inspection);
      $("inspection").replaceChildren(bi(ins[0], ins[1]));
      $("inspection").className = "ins-" + cur.item.inspection;
    } else {
      item.append(bi(f.state === "not_ready" ? "秤未就绪，不能计价" : "",
                     f.state === "not_ready" ? "scale not ready: no price" : "", "name"));
      $("unit-price").textContent = "—";
      clear($("unit"));
      $("amount").textContent = "—";
      clear($("origin"));
      clear($("inspection"));
    }

    const basket = $("basket");
    clear(basket);
    for (const line of f.basket) {
      if (line.voided) continue;
      const li = el("li");
      li.append(bi(line.name, line.name_en, "name"), el("span", "qty", lineText(line)),
                priceCell(line),
                el("span", "amt", yuan(line.amount_fen)));
      basket.append(li);
    }
    $("total").textContent = yuan(f.total_fen);

    // Faults, one short line each (the vendor's screen says what to do).
    const notices = $("notices");
    clear(notices);
    for (const fault of s.faults || []) notices.append(el("li", "fault-" + fault.kind, tr(fault.customer)));
    $("legal").textContent = "计量软件 / legal software " + s.stall.legal;

    const v = s.v;
    requestAnimationFrame(() => {
      window.paints.push({v, t: performance.timeOrigin + performance.now(), state: f.state,
                          amount_fen: cur && cur.line ? cur.line.amount_fen : null,
                          stable_at_ms: s.stable_at_ms});
      if (window.paints.length > 500) window.paints.shift();
    });
  }

  window.echoes = [];
  WM.connect(render, (sent) => window.echoes.push(performance.timeOrigin + performance.now() - sent));
})();
